"""Run a plan: every chunk of every case, in order, each chunk's ledger rows and record saved
as soon as it finishes, each case summarized once its chunks are in. No printing, no click:
progress goes through the ``on_event`` callback, the result comes back as an object."""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .context import Context, ProgressFactory, default_cache_dir, resolve_device, silent_progress
from .errors import HarnessError
from .records import ChunkRecord, ResultRow

if TYPE_CHECKING:
    import pandas as pd

    from .data import DataSource
    from .kinds import ChunkOutput, TestKind
    from .model import Model
    from .plan import Case, Chunk, Plan

EventHandler = Callable[[str, dict[str, Any]], None]


@dataclass
class RunOptions:
    """Command-line overrides and environment of one run."""

    device: str | None = None        # overrides the suite's device
    seed: int | None = None          # overrides the suite's seed
    data_dir: Path | None = None
    limit: int | None = None         # at most this many images per test
    reuse: Path | None = None        # an earlier run folder whose saved examples may be reused
    resume: bool = False             # continue the run already in the run folder
    shard: tuple[int, int] | None = None   # (k, n): run only shard k of n of the chunks
    cache_dir: Path | None = None
    use_cache: bool = True
    workers: int | None = None       # DataLoader worker processes (None: the dataset's own)
    executor: str = "local"          # "local" or "ray"
    address: str | None = None       # the Ray cluster to join (None: start a local one)
    progress: ProgressFactory = silent_progress
    on_event: EventHandler = field(default=lambda kind, info: None)


@dataclass
class CaseResult:
    test: str
    model: str
    status: str                       # "ok", "error", or "partial" (chunks not run yet)
    seconds: float = 0.0
    error: str | None = None
    error_kind: str | None = None     # "input" (the user's to fix) or "internal" (a bug)
    traceback: str | None = None
    images: int = 0
    notes: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)   # paths inside the run folder
    records: int = 0                  # rows of results.csv it wrote (rows are in case order)
    resumed: bool = False             # taken over from the interrupted run it resumed
    chunks: int = 0                   # chunks of the case this run was to run
    chunks_done: int = 0
    batch_size: int | None = None     # the attack batch that fitted, when it had to shrink


@dataclass
class ModelInfo:
    id: str
    spec: dict[str, Any]
    status: str = "ok"
    seconds: float = 0.0
    error: str | None = None
    error_kind: str | None = None
    traceback: str | None = None
    gradients: str | None = None      # how the model's gradients are obtained
    note: str = ""


@dataclass
class RunResult:
    plan: "Plan"
    seed: int
    device: str
    started: str
    finished: str | None = None
    seconds: float = 0.0
    cases: list[CaseResult] = field(default_factory=list)
    rows: dict[str, list[ResultRow]] = field(default_factory=dict)   # case key -> its rows
    models: dict[str, ModelInfo] = field(default_factory=dict)
    interrupted: bool = False
    shard: tuple[int, int] | None = None

    @property
    def suite(self) -> Any:
        return self.plan.suite

    @property
    def errors(self) -> list[CaseResult]:
        return [c for c in self.cases if c.status == "error"]

    @property
    def records(self) -> list[dict[str, Any]]:
        """Every result row, in case order, as dicts (results.csv)."""
        out = []
        for case in self.plan.cases:
            out += [r.as_dict() for r in self.rows.get(case.key, [])]
        return out


def now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def describe_error(exc: BaseException) -> tuple[str, str, str | None]:
    """(message, kind, traceback) for an exception raised inside a case."""
    if isinstance(exc, HarnessError):
        return str(exc), "input", None
    return (f"{type(exc).__name__}: {exc}", "internal",
            "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


class ModelUnavailable(Exception):
    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


# ---------------------------------------------------------------------------- environment

class LocalEnv:
    """What the kinds' ``run_chunk`` asks for, in this process: the context, each model
    loaded once, each test's data opened once (with the run's limit)."""

    def __init__(self, plan: "Plan", options: RunOptions, device: Any, seed: int,
                 models: dict[str, ModelInfo] | None = None):
        self.plan = plan
        self.options = options
        self.reuse = options.reuse
        self.ctx = Context(device=device, seed=seed, data_dir=options.data_dir,
                           cache_dir=options.cache_dir or default_cache_dir(),
                           use_cache=options.use_cache, progress=options.progress,
                           registry=plan.registry)
        self.infos: dict[str, ModelInfo] = models if models is not None else {}
        self._models: dict[str, "Model | None"] = {}
        self._data: dict[str, Any] = {}

    def context(self, position: int) -> Context:
        return replace(self.ctx, position=position) if position else self.ctx

    # ------------------------------------------------------------------ data

    def data(self, test: "TestKind") -> "DataSource":
        key = json.dumps(test.data_spec, sort_keys=True, default=str)
        if key not in self._data:
            try:
                source = test.data_plugin.load(self.ctx)
                if self.options.workers is not None and hasattr(source, "workers"):
                    source.workers = self.options.workers
                self._data[key] = source.head(self.options.limit)
            except HarnessError as exc:
                loc = (("tests", test.index, "data") if test.config.data is not None
                       else ("data",))
                line = self.plan.suite.line(loc)
                where = f"{self.plan.suite.file}:{line}: " if line else ""
                self._data[key] = type(exc)(f"{where}{exc.message}", hint=exc.hint)
        found = self._data[key]
        if isinstance(found, BaseException):
            raise found
        return found

    def try_data(self, test: "TestKind") -> "DataSource | None":
        """The test's data, or None when it cannot be read (its cases then fail with why)."""
        try:
            return self.data(test)
        except HarnessError:
            return None

    # ------------------------------------------------------------------ models

    def model(self, mid: str) -> "Model":
        from .model import Model

        if mid not in self._models:
            info = ModelInfo(mid, dict(self.plan.suite.models[mid]))
            self.infos[mid] = info
            self.options.on_event("model_start", {"model": mid})
            t0 = time.perf_counter()
            try:
                model = self.plan.models[mid].load(self._model_context(mid))
                if not isinstance(model, Model):
                    raise TypeError(f"model plugin {info.spec['use']!r} returned "
                                    f"{type(model).__name__}, not a harness.Model")
                model.name = mid
                info.gradients = getattr(model, "gradient_source", None)
                info.note = getattr(model, "gradient_note", "") or ""
                self._models[mid] = model
            except KeyboardInterrupt:
                raise
            except BaseException as exc:   # SystemExit from a plugin fails the model only
                info.error, info.error_kind, info.traceback = describe_error(exc)
                info.status = "error"
                self._models[mid] = None
            info.seconds = time.perf_counter() - t0
            self.options.on_event("model_end", {"model": mid, "status": info.status,
                                                "seconds": info.seconds, "error": info.error})
        model = self._models[mid]
        if model is None:
            info = self.infos[mid]
            raise ModelUnavailable(f"model {mid!r} could not be loaded: {info.error}",
                                   info.error_kind or "internal")
        return model

    def _model_context(self, mid: str) -> Context:
        """The context, with the input shape and class count of the data the model's first
        test feeds it (so that a model plugin need not be told them)."""
        for test in self.plan.tests:
            if mid in test.case_models() or any(mid in test.models_of_case(m)
                                                for m in test.case_models()):
                if not test.reads_data:
                    continue
                data = self.try_data(test)
                if data is None or not len(data):
                    return self.ctx
                return replace(self.ctx, input_shape=tuple(data.input_shape),
                               num_classes=data.num_classes)
        return self.ctx


# ---------------------------------------------------------------------------- running

class Runner:
    """Runs the chunks of a plan through an executor (in this process, or on Ray), saves each
    as it comes back, and summarizes each case once its chunks are in. A failing case is
    recorded and the others still run; an interrupt stops after saving what finished."""

    def __init__(self, plan: "Plan", options: RunOptions | None = None):
        self.plan = plan
        self.options = options or RunOptions()
        self.device = resolve_device(self.options.device or plan.suite.device)
        self.seed = plan.seed
        self.env = LocalEnv(plan, self.options, self.device, self.seed)
        plan.chunked(self.env.try_data)

    def executor(self) -> Any:
        from .executors import LocalExecutor

        if self.options.executor == "ray":
            from .executors.ray import RayExecutor

            return RayExecutor(self.plan, self.options, str(self.device))
        return LocalExecutor(self.env)

    def run(self, store: Any, todo: set[str] | None = None,
            done: dict[str, ChunkRecord] | None = None,
            on_case: Callable[[RunResult], None] | None = None) -> RunResult:
        """Run the chunks whose ids are in ``todo`` (all when None), except those ``done``
        already holds (a resumed run's); write each to ``store`` as it finishes, and call
        ``on_case(result)`` after each case."""
        emit = self.options.on_event
        done = dict(done or {})
        result = RunResult(self.plan, self.seed, str(self.device), now(),
                           shard=self.options.shard)
        result.models = self.env.infos
        t_start = time.perf_counter()
        cases = [c for c in self.plan.cases
                 if todo is None or any(ch.id in todo for ch in c.chunks)]
        outcomes = {c.key: CaseResult(c.test.name, c.model, "ok", images=c.images,
                                      chunks=len(self._mine(c, todo))) for c in cases}
        result.cases = [outcomes[c.key] for c in cases]
        number = {c.key: n for n, c in enumerate(cases, 1)}
        waiting = {c.key: [ch.id for ch in self._mine(c, todo) if ch.id not in done]
                   for c in cases}
        emit("start", {"cases": len(cases), "device": str(self.device), "seed": self.seed,
                       "resumed": sum(1 for c in cases if not waiting[c.key])})
        started: dict[str, float] = {}

        def finish(case: "Case") -> None:
            outcome = outcomes[case.key]
            if case.key in started:
                outcome.seconds = time.perf_counter() - started[case.key]
            self._finish_case(case, outcome, store, done, self._mine(case, todo), result)
            emit("case_end", {"n": number[case.key], "of": len(cases), **asdict(outcome)})
            result.seconds = time.perf_counter() - t_start
            if on_case:
                on_case(result)

        work = []
        for case in cases:
            if not waiting[case.key]:
                outcomes[case.key].resumed = True
            work += [(case, ch) for ch in self._mine(case, todo) if ch.id not in done]
        executor = self.executor()
        try:
            for case in cases:   # cases the resumed run finished: summarized from its folder
                if not waiting[case.key]:
                    finish(case)

            def wanted(case: "Case") -> bool:
                if case.key not in started:
                    started[case.key] = time.perf_counter()
                    emit("case_start", {"n": number[case.key], "of": len(cases),
                                        "test": case.test.name, "model": case.model,
                                        "images": case.images,
                                        "chunks": len(waiting[case.key])})
                return outcomes[case.key].status != "error"

            for item in executor.run(work, wanted):
                case, chunk = item.case, item.chunk
                outcome = outcomes[case.key]
                for mid, info in item.models.items():
                    result.models.setdefault(mid, ModelInfo(**info))
                if item.output is not None:
                    store.write_chunk(case.order, item.output)
                    done[chunk.id] = item.output.record
                    emit("chunk_end", {"case": case.key, "test": case.test.name,
                                       "model": case.model, "chunk": chunk.index,
                                       "images": chunk.images,
                                       "seconds": item.output.record.seconds})
                    if item.output.error and outcome.status != "error":
                        outcome.status, outcome.error, outcome.error_kind = \
                            "error", item.output.error, "input"
                elif outcome.status != "error":
                    outcome.status, outcome.error = "error", item.error
                    outcome.error_kind, outcome.traceback = item.error_kind, item.traceback
                waiting[case.key].remove(chunk.id)
                if not waiting[case.key] or outcome.status == "error" \
                        and self.options.executor == "local":
                    finish(case)
        except KeyboardInterrupt:
            result.interrupted = True
        finally:
            executor.close()
        for case in cases:   # cases cut short (an interrupt, a failed chunk): what they have
            if waiting[case.key] and case.key not in result.rows:
                self._finish_case(case, outcomes[case.key], store, done,
                                  self._mine(case, todo), result)
        result.finished = now()
        result.seconds = time.perf_counter() - t_start
        return result

    def _mine(self, case: "Case", todo: set[str] | None) -> list["Chunk"]:
        return [ch for ch in case.chunks if todo is None or ch.id in todo]

    def _finish_case(self, case: "Case", outcome: CaseResult, store: Any,
                     done: dict[str, ChunkRecord], mine: list["Chunk"],
                     result: RunResult) -> None:
        """Summarize the case from the ledger rows and records of its finished chunks."""
        records = [done[ch.id] for ch in case.chunks if ch.id in done]
        outcome.chunks_done = sum(1 for ch in mine if ch.id in done)
        for rec in records:
            outcome.notes += [n for n in rec.notes if n not in outcome.notes]
            outcome.figures += [f for f in rec.files if f.startswith("figures/")
                                and f not in outcome.figures]
            if rec.info.get("batch_size"):
                outcome.batch_size = min(outcome.batch_size or rec.info["batch_size"],
                                         rec.info["batch_size"])
        if outcome.status == "ok" and outcome.chunks_done < len(mine):
            outcome.status = "partial"
        rows: list[ResultRow] = []
        if records:
            try:
                rows = case.test.aggregate(case, store.ledger(case.order), records, self.seed)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                outcome.status = "error"
                outcome.error, outcome.error_kind, outcome.traceback = describe_error(exc)
        result.rows[case.key] = rows
        outcome.records = len(rows)
