"""The run folder: everything needed to re-render a run's report or compare it with another.

```
reports/<suite>-<timestamp>/
  suite.yaml      the suite as it was run
  results.csv     one row per test x model x metric [x param]: test, model, param, metric, value, n
  summary.json    suite, seed, device, versions, timings, cases, models, gates, exit code
                  (a versioned schema, :class:`RunSummary`, checked on every read)
  report.md       the tables, as the terminal shows them
  errors.log      tracebacks of internal errors, if any
  .lock           held (flock) by the process writing the folder; the OS releases it when that
                  process ends, however it ends
```
Every file is written atomically (a temporary file renamed into place), after each case, so
an interrupted run keeps what it finished; files get the mode the umask gives (usually 0644).

A run folder is untrusted input when read: every file is checked (the summary against its
schema, the results against the summary's cases, the suite against the summary's digest),
every path read from it must stay inside it (symbolic links out of it are refused), and
anything wrong is a :class:`~harness.errors.HarnessError` naming the file.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import math
import os
import secrets
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import pydantic
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from .errors import HarnessError
from .store_io import atomic_write_bytes
from .suite import BASELINE, check_line, check_name

from .records import RESULT_COLUMNS

#: the format of summary.json this version writes; a summary without ``format`` is format 1
#: (written before the field existed). Format 2: ``n`` in results.csv is the number of images
#: a value is taken over (before: the images of the test). Format 3: the per-image ledger
#: (``ledger/``, ``chunks/``), the plan's chunks, and 95% intervals (``low``, ``high``) in
#: results.csv.
SUMMARY_FORMAT = 3

#: the files every finished or interrupted run folder holds
RUN_FILES = ("summary.json", "results.csv", "suite.yaml")
LOCK_NAME = ".lock"

_DAMAGED = "the folder was changed or damaged after the run; run the suite again"


# ---------------------------------------------------------------------------- writing files

def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write ``path`` atomically (see :func:`harness.store_io.atomic_write_bytes`)."""
    atomic_write_bytes(Path(path), data.encode("utf-8") if isinstance(data, str) else data)


def default_run_dir(suite_name: str, root: Path = Path("reports")) -> Path:
    """``root/<suite name>-<timestamp>`` (with ``-2``, ``-3``... when taken); the name is
    checked as strictly as a suite's name, so it cannot leave ``root``."""
    try:
        check_name(suite_name)
    except ValueError as exc:
        raise HarnessError(f"{suite_name!r} cannot name a run folder: {exc}",
                           hint="give the folder with --out") from None
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = root / f"{suite_name}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = root / f"{suite_name}-{stamp}-{n}"
    return path


# ---------------------------------------------------------------------------- summary schema

def _name(v: str) -> str:
    check_name(v)
    return v


def _case_model(v: str) -> str:
    return v if v == BASELINE else _name(v)


def _inside(v: str) -> str:
    """A path inside the run folder: relative, with no '..', written with '/'."""
    check_line(v)
    p = PurePosixPath(v)
    if not v or p.is_absolute() or "\\" in v or any(part in ("..", "") for part in v.split("/")):
        raise ValueError(f"{v!r} is not a path inside the run folder")
    return v


Line = Annotated[str, AfterValidator(check_line)]
Name = Annotated[str, AfterValidator(_name)]
InsidePath = Annotated[str, AfterValidator(_inside)]
Number = float | None


class _Record(BaseModel):
    # strict types; keys a later version adds are kept (and ignored), not refused
    model_config = ConfigDict(strict=True, extra="allow")


class SuiteInfo(_Record):
    name: Name
    file: str = ""
    sha256: str | None = None


class CaseRecord(_Record):
    """One case (test x model) of a run."""

    test: Name
    model: Annotated[str, AfterValidator(_case_model)]
    status: Literal["ok", "error", "partial"]
    seconds: float = 0.0
    error: str | None = None
    error_kind: Literal["input", "internal"] | None = None
    traceback: str | None = None
    images: int = Field(default=0, ge=0)
    #: chunks of the case this run was to run, and how many it finished (format 3)
    chunks: int | None = Field(default=None, ge=0)
    chunks_done: int | None = Field(default=None, ge=0)
    #: the attack batch size that fitted in the device's memory, when it had to shrink
    batch_size: int | None = Field(default=None, ge=1)
    notes: list[str] = []
    figures: list[InsidePath] = []
    #: rows of results.csv it wrote (rows are in case order); absent before the field existed
    records: int | None = Field(default=None, ge=0)
    resumed: bool = False


class ModelRecord(_Record):
    id: Name
    spec: dict[str, Any] = {}
    status: Literal["ok", "error"] = "ok"
    seconds: float = 0.0
    error: str | None = None
    error_kind: Literal["input", "internal"] | None = None
    traceback: str | None = None
    gradients: str | None = None
    note: str = ""


class GateVerdict(_Record):
    test: Line
    model: Line
    metric: Line
    param: Line | None = None
    min: float | None = None
    max: float | None = None
    max_drop: float | None = None
    drop: str | None = None
    value: Number | list[Number] = None
    baseline: Number | list[Number] = None
    passed: bool
    skipped: bool = False
    reason: str = ""
    bound: str | None = None
    paired: bool = False
    alpha: float | None = None
    #: a paired gate's test: p-value, the smallest worsening it could have detected, the
    #: images it paired and its method
    p_value: float | None = None
    detectable: float | None = None
    paired_n: int | None = None
    test_method: str | None = None


class PlanCase(_Record):
    """A case of the plan and its chunks (ranges of image positions)."""

    test: Name
    model: Annotated[str, AfterValidator(_case_model)]
    images: int = Field(ge=0)
    chunks: list[list[int]]

    @field_validator("chunks")
    @classmethod
    def _ranges(cls, v: list[list[int]]) -> list[list[int]]:
        for r in v:
            if len(r) != 2 or not 0 <= r[0] <= r[1]:
                raise ValueError(f"{r} is not a range [start, stop]")
        return v


class ChunkFile(_Record):
    """A chunk's record (``chunks/c<case>-k<chunk>.json``): checked on every read."""

    case: Line
    chunk: int = Field(ge=0)
    start: int = Field(ge=0)
    stop: int = Field(ge=0)
    order: int = Field(ge=0)
    seconds: float = Field(default=0.0, ge=0)
    partials: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    files: list[InsidePath] = []
    info: dict[str, Any] = {}
    error: str | None = None


class ShardInfo(_Record):
    path: str
    shard: list[int]
    seconds: float | None = None


class RunSummary(_Record):
    """summary.json: what ran, how, and how it ended. ``format`` versions the schema."""

    format: int = Field(default=1, ge=1)
    suite: SuiteInfo
    command: list[str] = []
    options: dict[str, Any] = {}
    versions: dict[str, str] = {}
    device_info: dict[str, Any] = {}
    plugins: list[dict[str, str]] = []
    merged: list[ShardInfo] | None = None
    seed: int
    device: Line
    started: Line
    finished: Line | None = None
    seconds: float = Field(default=0.0, ge=0)
    interrupted: bool = False
    shard: list[int] | None = None
    cases: list[CaseRecord]
    models: list[ModelRecord] = []
    #: the plan's cases and chunks (format 3; None before)
    plan: list[PlanCase] | None = None
    #: figures drawn from the ledger, per test
    figures: dict[str, list[InsidePath]] = {}
    gates: list[GateVerdict] = []
    exit_code: int | None = None
    verdict: Line = ""

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: int) -> int:
        if v > SUMMARY_FORMAT:
            raise ValueError(f"format {v} is newer than this harness reads ({SUMMARY_FORMAT}): "
                             "upgrade robustness-harness")
        return v

    @field_validator("shard")
    @classmethod
    def _shard(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and not (len(v) == 2 and 1 <= v[0] <= v[1]):
            raise ValueError("must be [K, N] with 1 <= K <= N")
        return v

    @property
    def running(self) -> bool:
        """Whether the run was stopped while running (killed before its final save)."""
        return self.exit_code is None


def _first_error(exc: pydantic.ValidationError) -> str:
    err = exc.errors()[0]
    loc = ""
    for part in err["loc"]:
        loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    got = err.get("input")
    if err["type"] == "missing":
        return f"{loc}: missing"
    if isinstance(got, (dict, list)):
        shown = "a mapping" if isinstance(got, dict) else "a list"
    else:
        shown = repr(got)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
    where = f"{loc}: " if loc else ""
    return f"{where}{msg[0].lower()}{msg[1:]} (got {shown})"


# ---------------------------------------------------------------------------- the folder

class RunStore:
    """Reads and writes one run folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock_fd: int | None = None
        self._lock_depth = 0

    def __repr__(self) -> str:
        return f"RunStore({str(self.path)!r})"

    # ------------------------------------------------------------------ the lock

    def lock(self) -> "RunStore":
        """Take the folder for this process (creating it if needed): an exclusive, non-blocking
        ``flock`` on ``.lock`` inside it. Another process holding it is an error; the OS
        releases the lock when its holder ends, even by SIGKILL, so no stale lock survives.
        Nested calls are counted; :meth:`unlock` releases at the outermost."""
        if self._lock_depth:
            self._lock_depth += 1
            return self
        if self.path.exists() and not self.path.is_dir():
            raise HarnessError(f"{self.path} exists and is not a folder",
                               hint="give --out a folder path")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK_NAME,
                         os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except OSError as exc:
            raise HarnessError(f"cannot create run folder {self.path}: "
                               f"{exc.strerror or exc}") from None
        try:
            import fcntl
        except ImportError:  # no flock (Windows): no protection against a second writer
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = ""
                try:
                    holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                except OSError:
                    pass
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise HarnessError(f"cannot lock run folder {self.path}: "
                                       f"{exc.strerror}") from None
                who = f" (pid {holder})" if holder.isdigit() else ""
                raise HarnessError(f"{self.path} is in use by another harness process{who}",
                                   hint="wait for it to end, or give --out another folder"
                                   ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd, self._lock_depth = fd, 1
        return self

    def unlock(self) -> None:
        if not self._lock_depth:
            return
        self._lock_depth -= 1
        if self._lock_depth == 0 and self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    @property
    def locked(self) -> bool:
        return self._lock_depth > 0

    # ------------------------------------------------------------------ writing

    def create(self, resume: bool = False) -> "RunStore":
        """Make (and lock) the run folder; an existing run there is an error unless
        ``resume``. A folder that holds no summary (a run killed before it saved one) is
        taken over."""
        self.lock()
        if not resume and (self.path / "summary.json").exists():
            self.unlock()
            raise HarnessError(f"{self.path} already holds a run",
                               hint="give --out a new folder, or --resume it to finish the cases "
                                    "it did not")
        return self

    def write_suite(self, text: str) -> None:
        atomic_write(self.path / "suite.yaml", text)

    def write_results(self, records: list[dict[str, Any]]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for rec in records:
            row = dict(rec)
            row["value"] = repr(float(rec["value"]))
            for key in ("low", "high"):   # an interval where the metric has one, else empty
                v = row.get(key)
                row[key] = "" if v is None or v != v else repr(float(v))
            writer.writerow({k: row.get(k, "") for k in RESULT_COLUMNS})
        atomic_write(self.path / "results.csv", buf.getvalue())

    def write_summary(self, summary: dict[str, Any] | RunSummary) -> None:
        """Write summary.json, checked against :class:`RunSummary` first (format
        :data:`SUMMARY_FORMAT`)."""
        data = summary.model_dump(mode="python") if isinstance(summary, RunSummary) \
            else {"format": SUMMARY_FORMAT, **summary}
        data = json.loads(json.dumps(data, default=str))
        try:
            RunSummary.model_validate(data)
        except pydantic.ValidationError as exc:  # a bug: the harness wrote a bad summary
            raise ValueError(f"summary.json would not be valid: {_first_error(exc)}") from None
        atomic_write(self.path / "summary.json", json.dumps(data, indent=2) + "\n")

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode("utf-8"))

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write ``name`` (a path inside the run folder, such as ``figures/t/m/x.png``)."""
        atomic_write(self.file(name, must_exist=False), data)

    # ------------------------------------------------------------------ paths

    def file(self, name: str, must_exist: bool = True) -> Path:
        """The path of ``name`` inside the run folder, refusing any that leaves it: absolute
        paths, ``..``, and symbolic links that resolve outside the folder (never followed)."""
        try:
            _inside(name)
        except ValueError:
            raise HarnessError(f"{self.path}: {name!r} is not a path inside the run folder",
                               hint=f"refused; {_DAMAGED}") from None
        path = self.path / name
        root = self.path.resolve()
        target = path.resolve()
        if target != root and root not in target.parents:
            raise HarnessError(f"{path} leads outside the run folder (to {target})",
                               hint="symbolic links out of a run folder are refused")
        if must_exist and not path.exists():
            raise HarnessError(f"{path} is missing", hint=_DAMAGED)
        return path

    def _read_bytes(self, name: str) -> bytes:
        path = self.file(name)
        if not path.is_file():
            raise HarnessError(f"{path} is not a regular file", hint=_DAMAGED)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise HarnessError(f"{path} cannot be read: {exc.strerror or exc}") from None

    def _read_text(self, name: str) -> str:
        try:
            return self._read_bytes(name).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise HarnessError(f"{self.path / name} is not UTF-8 text (byte {exc.start})",
                               hint=_DAMAGED) from None

    def check_tree(self, sub: str) -> list[Path]:
        """The regular files under folder ``sub`` of the run (none if it is absent); a
        symbolic link or any other kind of file there is an error (never followed)."""
        import stat

        root = self.path / sub
        if not os.path.lexists(root):
            return []
        if not stat.S_ISDIR(os.lstat(root).st_mode):
            raise HarnessError(f"{root} is not a folder (a link or a file)",
                               hint=f"refused; {_DAMAGED}")
        out = []
        for folder, dirs, files in os.walk(root):  # does not follow links to folders
            for name in sorted(dirs + files):
                path = Path(folder) / name
                mode = os.lstat(path).st_mode
                if stat.S_ISDIR(mode):
                    continue
                if not stat.S_ISREG(mode):
                    kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
                    raise HarnessError(f"{path} is {kind}", hint=f"refused; {_DAMAGED}")
                out.append(path)
        return out

    # ------------------------------------------------------------------ reading

    def exists(self) -> bool:
        return self.path.is_dir()

    def started_only(self) -> bool:
        """Whether the folder holds a run stopped before it saved a summary (killed while it
        started or while its first case ran): no summary.json, and nothing but suite.yaml,
        results.csv, the lock and temporary files."""
        if not self.path.is_dir() or os.path.lexists(self.path / "summary.json"):
            return False
        return all(p.name in ("suite.yaml", "results.csv", LOCK_NAME)
                   or (p.name.startswith(".") and p.name.endswith(".tmp"))
                   for p in self.path.iterdir())

    def check(self) -> None:
        """Check the whole folder (files, summary schema, suite, results against the
        summary); any problem is a one-line :class:`HarnessError` naming the file."""
        if not self.path.is_dir():
            raise HarnessError(f"{self.path} is not a run folder (no such folder)",
                               hint="give the folder a 'harness run' wrote, e.g. "
                                    "reports/<suite>-<time>")
        for name in RUN_FILES:
            if not os.path.lexists(self.path / name):
                if self.started_only() and os.path.lexists(self.path / LOCK_NAME):
                    raise HarnessError(
                        f"{self.path} holds a run stopped before its first case finished "
                        f"({name} is missing)",
                        hint="finish it with 'harness run SUITE --resume "
                             f"{self.path}'")
                raise HarnessError(f"{self.path} is not a complete run folder ({name} is missing)",
                                   hint="give the folder a 'harness run' wrote")
        self.results()  # reads and checks the summary and the suite's digest too
        self.suite()

    def read_summary(self) -> RunSummary:
        """summary.json, checked against :class:`RunSummary` (a summary without a
        ``format`` is read as format 1)."""
        name = "summary.json"
        text = self._read_text(name)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise HarnessError(f"{self.path / name} is not valid JSON: {exc.msg} (line "
                               f"{exc.lineno}, column {exc.colno})", hint=_DAMAGED) from None
        except RecursionError:
            raise HarnessError(f"{self.path / name} is nested too deeply", hint=_DAMAGED) from None
        if not isinstance(data, dict):
            raise HarnessError(f"{self.path / name} holds {type(data).__name__ if data is not None else 'null'}"
                               ", not a run summary (a JSON object)", hint=_DAMAGED)
        try:
            return RunSummary.model_validate(data)
        except pydantic.ValidationError as exc:
            raise HarnessError(f"{self.path / name}: {_first_error(exc)}", hint=_DAMAGED) from None
        except RecursionError:
            raise HarnessError(f"{self.path / name} is nested too deeply", hint=_DAMAGED) from None

    def summary(self) -> dict[str, Any]:
        """summary.json as a dict, checked (see :meth:`read_summary`); every field of the
        schema is present."""
        return self.read_summary().model_dump(mode="python")

    def suite_text(self) -> str:
        """suite.yaml, checked against the digest the summary recorded."""
        text = self._read_text("suite.yaml")
        if "\x00" in text:
            raise HarnessError(f"{self.path / 'suite.yaml'} holds NUL bytes; it is not a suite",
                               hint=_DAMAGED)
        if (self.path / "summary.json").exists():
            digest = self.read_summary().suite.sha256
            if digest and hashlib.sha256(text.encode()).hexdigest() != digest:
                raise HarnessError(f"{self.path / 'suite.yaml'} is not the suite that ran (its "
                                   "digest differs from the one summary.json recorded)",
                                   hint=_DAMAGED)
        return text

    def suite(self) -> Any:
        """suite.yaml as a :class:`~harness.suite.Suite` (schema-checked; its plugins are not
        built)."""
        from .suite import parse_suite

        try:
            return parse_suite(self.suite_text(), str(self.path / "suite.yaml"))
        except HarnessError as exc:
            if str(self.path / "suite.yaml") in str(exc):
                raise HarnessError(f"the run's suite cannot be read again: {exc.message}",
                                   hint=exc.hint) from None
            raise

    def results(self):
        """The results as a pandas DataFrame with :data:`RESULT_COLUMNS`, checked against the
        summary's cases: every row belongs to a case, and each case has the rows it wrote (a
        run killed while saving may hold rows of a case it had not recorded yet: they are
        left out)."""
        import pandas as pd

        summary = self.read_summary()
        self.suite_text()
        path = self.file("results.csv")
        text = self._read_text("results.csv")
        try:
            df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
        except pd.errors.EmptyDataError:
            raise HarnessError(f"{path} is empty (not even a header)", hint=_DAMAGED) from None
        except (ValueError, csv.Error) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise HarnessError(f"{path} is not a valid CSV file: {first}", hint=_DAMAGED) from None
        missing = [c for c in ("test", "model", "metric", "value") if c not in df.columns]
        if missing:
            raise HarnessError(f"{path} lacks the column(s) {', '.join(missing)}", hint=_DAMAGED)
        if "param" not in df.columns:
            df["param"] = ""
        for column in ("n", "low", "high"):   # absent from folders of earlier formats
            if column not in df.columns:
                df[column] = ""
        df = df[RESULT_COLUMNS].copy()
        for column in ("low", "high"):
            try:
                df[column] = [float(v) if v.strip() else math.nan for v in df[column]]
            except (ValueError, AttributeError):
                raise HarnessError(f"{path}: column {column} holds a value that is not a "
                                   "number", hint=_DAMAGED) from None
        values, counts = [], []
        for i, (value, n) in enumerate(zip(df["value"], df["n"]), start=2):
            try:
                v = float(value) if value.strip() else math.nan
            except ValueError:
                raise HarnessError(f"{path}, line {i}: value {value[:30]!r} is not a number",
                                   hint=_DAMAGED) from None
            values.append(v)
            n = n.strip()
            if n and not (n.isdigit() or (n.endswith(".0") and n[:-2].isdigit())):
                raise HarnessError(f"{path}, line {i}: n {n[:30]!r} is not a count of images",
                                   hint=_DAMAGED)
            counts.append(int(float(n)) if n else math.nan)
        df["value"] = pd.Series(values, index=df.index, dtype="float64")
        df["n"] = pd.Series(counts, index=df.index, dtype="float64")
        for column in ("test", "model", "param", "metric"):
            bad = df[column].map(lambda s: any(ord(ch) < 32 for ch in s))
            if bad.any():
                line = int(bad.to_numpy().argmax()) + 2
                raise HarnessError(f"{path}, line {line}: {column} holds a control character",
                                   hint=_DAMAGED)
        return self._match_cases(df, summary, path)

    def _match_cases(self, df: Any, summary: RunSummary, path: Path) -> Any:
        cases = summary.cases
        if any(c.records is None for c in cases):
            # written before cases counted their rows: every row must belong to a case's test
            tests = {c.test for c in cases}
            stray = [t for t in df["test"] if t not in tests]
            if stray:
                raise HarnessError(f"{path} holds rows of test {stray[0]!r}, which no case in "
                                   "summary.json ran", hint=_DAMAGED)
            return df
        expected = sum(c.records or 0 for c in cases)
        if len(df) < expected or (len(df) > expected and not summary.running):
            raise HarnessError(f"{path} holds {len(df)} row(s), and the cases in summary.json "
                               f"wrote {expected}", hint=_DAMAGED)
        start = 0
        tests = df["test"].tolist()
        for c in cases:
            part = tests[start:start + (c.records or 0)]
            if any(t != c.test for t in part):
                line = start + 2 + next(k for k, t in enumerate(part) if t != c.test)
                raise HarnessError(f"{path}, line {line}: a row of test {tests[line - 2]!r} "
                                   f"where summary.json has case {c.test} x {c.model}",
                                   hint=_DAMAGED)
            start += c.records or 0
        return df.iloc[:expected].reset_index(drop=True)

    # ------------------------------------------------------------------ chunks and ledger

    LEDGER = "ledger"
    CHUNKS = "chunks"

    @staticmethod
    def chunk_name(order: int, chunk: int) -> str:
        return f"c{order:04d}-k{chunk:05d}"

    def write_chunk(self, order: int, out: Any) -> None:
        """Save a finished chunk: its files, its ledger rows (Parquet), then its record (the
        record last: a chunk counts as done once its record is there)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from .records import ledger_schema

        for path, blob in out.files.items():
            self.write_bytes(path, blob)
        name = self.chunk_name(order, out.record.chunk)
        table = pa.Table.from_pandas(out.ledger, schema=ledger_schema(), preserve_index=False)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        atomic_write(self.path / self.LEDGER / f"{name}.parquet", sink.getvalue().to_pybytes())
        record = {**out.record.as_dict(), "order": order, "error": out.error}
        atomic_write(self.path / self.CHUNKS / f"{name}.json",
                     json.dumps(record, indent=1, default=str) + "\n")

    def chunk_records(self) -> dict[tuple[int, int], Any]:
        """Every saved chunk's record, by (case order, chunk index); each checked (a chunk
        whose ledger file is missing does not count as saved)."""
        from .records import ChunkRecord

        ledger = {p.stem for p in self.check_ledger()}
        out = {}
        for path in self.check_tree(self.CHUNKS):
            if path.suffix != ".json" or not path.name.startswith("c"):
                continue
            name = path.relative_to(self.path).as_posix()
            try:
                data = ChunkFile.model_validate_json(self._read_bytes(name))
            except pydantic.ValidationError as exc:
                raise HarnessError(f"{path} is not a chunk record: {_first_error(exc)}",
                                   hint=_DAMAGED) from None
            if path.stem != self.chunk_name(data.order, data.chunk) or data.stop < data.start:
                raise HarnessError(f"{path} does not hold the chunk its name says",
                                   hint=_DAMAGED)
            if path.stem not in ledger:
                continue
            rec = ChunkRecord.from_dict(data.model_dump())
            rec.info["error"] = data.error
            out[data.order, data.chunk] = rec
        return out

    def check_ledger(self) -> list[Path]:
        """The ledger's Parquet files, each checked to be one with the ledger's columns (its
        schema only is read)."""
        import pyarrow.parquet as pq

        from .records import LEDGER_COLUMNS

        files = [p for p in self.check_tree(self.LEDGER) if p.suffix == ".parquet"]
        for f in files:
            try:
                names = pq.read_schema(f).names
            except Exception as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise HarnessError(f"{f} is not a ledger file ({type(exc).__name__}: {first})",
                                   hint=_DAMAGED) from None
            if names != list(LEDGER_COLUMNS):
                raise HarnessError(f"{f} does not have the ledger's columns", hint=_DAMAGED)
        return files

    def ledger(self, order: int | None = None):
        """The ledger rows of case ``order`` (all cases when None), as a pandas DataFrame."""
        import pandas as pd
        import pyarrow.parquet as pq

        from .records import empty_ledger

        from .records import LEDGER_COLUMNS

        prefix = f"c{order:04d}-k" if order is not None else "c"
        files = [p for p in self.check_tree(self.LEDGER)
                 if p.suffix == ".parquet" and p.name.startswith(prefix)]
        if not files:
            return empty_ledger()
        frames = []
        for f in sorted(files):
            try:
                frame = pq.read_table(f).to_pandas()
            except Exception as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise HarnessError(f"{f} is not a ledger file ({type(exc).__name__}: {first})",
                                   hint=_DAMAGED) from None
            if list(frame.columns) != list(LEDGER_COLUMNS):
                raise HarnessError(f"{f} does not have the ledger's columns", hint=_DAMAGED)
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)
