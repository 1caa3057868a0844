"""Reporters and lifecycle events: the public side.

A **reporter** turns a finished run folder into something: a text for the terminal, a
report.md, an HTML page, JUnit XML, or an entry in an experiment tracker (MLflow). It reads
the run folder only, through the :class:`RunView` the engine hands it. Register one with the
``register_reporters`` hook; ``harness report RUN --format NAME`` renders it, ``harness run
--report NAME`` runs it after the run.

**Lifecycle hooks** let a plugin package follow a run as it goes: ``harness_run_started``,
``harness_case_finished``, ``harness_run_finished``, with the typed arguments below.

This module imports nothing from the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from .base import Plugin

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class Table:
    """A table of a report: a title, headers, rows of formatted cells, notes under it and
    figures (paths inside the run folder) that belong with it."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)


@dataclass
class RunView:
    """A run folder as reporters see it (read-only).

    ``folder``: the run folder; ``summary``: summary.json as a dict (suite, seed, device,
    versions, cases, models, gates, verdict, exit code...); ``tables``: the report's tables,
    as the terminal shows them; ``results()``: results.csv as a pandas DataFrame (test, model,
    param, metric, value, n, low, high); ``ledger()``: the per-image ledger (an empty frame for
    folders written before ledgers); ``file(name)``: the path of a file inside the folder
    (refusing any that leaves it)."""

    folder: Path
    summary: dict[str, Any]
    tables: list[Table]
    results: Callable[[], "pd.DataFrame"]
    ledger: Callable[[], "pd.DataFrame"]
    file: Callable[[str], Path]

    @property
    def suite_name(self) -> str:
        return (self.summary.get("suite") or {}).get("name", "")

    @property
    def figures(self) -> list[str]:
        """Every figure of the run (paths inside the folder), each once."""
        out: list[str] = []
        for t in self.tables:
            out += [f for f in t.figures if f not in out]
        for case in self.summary.get("cases") or []:
            out += [f for f in case.get("figures") or [] if f not in out]
        for paths in (self.summary.get("figures") or {}).values():
            out += [f for f in paths if f not in out]
        return out


class Reporter(Plugin):
    """Base of reporters. A reporter that makes a document sets :attr:`suffix` and
    implements :meth:`render` (text); one that sends the run elsewhere (an experiment
    tracker) implements :meth:`publish` and returns one line saying where it went."""

    kind: ClassVar[str] = "reporter"
    #: the file suffix of what :meth:`render` makes ("md", "html", "xml", "txt"); None for a
    #: reporter that only publishes
    suffix: ClassVar[str | None] = "txt"

    def render(self, run: RunView) -> str:
        raise NotImplementedError(f"reporter {type(self).__name__} makes no document")

    def publish(self, run: RunView) -> str:
        """Send the run somewhere; return a line saying where. The default writes
        :meth:`render`'s text into the run folder (``report.<suffix>``)."""
        text = self.render(run)
        path = run.folder / f"report.{self.suffix or 'txt'}"
        from .store_io import atomic_write_text

        atomic_write_text(path, text)
        return f"wrote {path}"


# ---------------------------------------------------------------------------- lifecycle events

@dataclass(frozen=True)
class RunStarted:
    """A run began: its suite, seed and device, its run folder, how many cases it will run
    (this shard's, for ``--shard``), and how many chunks a resumed run had finished."""

    suite: str
    suite_file: str
    seed: int
    device: str
    folder: Path
    cases: int
    shard: tuple[int, int] | None = None
    resumed_chunks: int = 0


@dataclass(frozen=True)
class CaseFinished:
    """A case (a test on a model) finished: its status ("ok", "error" or "partial"), time,
    images, error (if any), and its result rows (dicts of test, model, param, metric, value,
    n, low, high)."""

    test: str
    model: str
    status: str
    seconds: float
    images: int
    error: str | None
    rows: list[dict[str, Any]]


@dataclass(frozen=True)
class RunFinished:
    """The run ended: its exit code and one-line verdict, its time, and the gates' verdicts
    (dicts of test, model, metric, passed, reason...)."""

    folder: Path
    exit_code: int
    verdict: str
    seconds: float
    interrupted: bool
    gates: list[dict[str, Any]]
