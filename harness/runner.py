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

from .base import blame, plugin_label
from .context import Context, ProgressFactory, default_cache_dir, resolve_device, silent_progress
from .errors import HarnessError, ParamError, PluginCrash, PluginError
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
    #: the exit code of an interrupted run: 128 + the signal (130: SIGINT, 143: SIGTERM)
    interrupt_code: int = 130
    shard: tuple[int, int] | None = None
    #: figures made from the ledger per test (paths inside the run folder)
    figures: dict[str, list[str]] = field(default_factory=dict)

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
    """(message, kind, traceback) for an exception raised inside a case: the user's input
    (a :class:`HarnessError`), or a bug (a plugin's own exception, named, or the harness's)."""
    if isinstance(exc, PluginCrash):
        orig = exc.original
        return str(exc), "internal", "".join(
            traceback.format_exception(type(orig), orig, orig.__traceback__))
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
        ctx_args: dict[str, Any] = {}
        if options.data_dir is not None:   # else the Context's default: $HARNESS_DATA_DIR
            ctx_args["data_dir"] = options.data_dir
        self.ctx = Context(device=device, seed=seed,
                           cache_dir=options.cache_dir or default_cache_dir(),
                           use_cache=options.use_cache, progress=options.progress,
                           loader=self._load_dataset, registry=plan.registry, **ctx_args)
        self.infos: dict[str, ModelInfo] = models if models is not None else {}
        self._models: dict[str, "Model | None"] = {}
        self._data: dict[str, Any] = {}

    def _load_dataset(self, use: str, params: dict[str, Any], ctx: Context) -> Any:
        """What ``ctx.dataset`` calls: a dataset plugin built from the installed plugins."""
        plugin = self.plan.registry.build("dataset", use, params)
        with blame(plugin, "loading data"):
            return plugin.load(ctx)

    def context(self, position: int) -> Context:
        return replace(self.ctx, position=position) if position else self.ctx

    # ------------------------------------------------------------------ data

    def data(self, test: "TestKind") -> "DataSource":
        key = json.dumps(test.data_spec, sort_keys=True, default=str)
        if key not in self._data:
            try:
                with blame(test.data_plugin, "loading data"):
                    source = test.data_plugin.load(self.ctx)
                if self.options.workers is not None and hasattr(source, "workers"):
                    source.workers = self.options.workers
                self._data[key] = source.head(self.options.limit)
            except PluginCrash as exc:   # names the plugin already
                self._data[key] = exc
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
                plugin = self.plan.models[mid]
                with blame(plugin, f"loading model {mid!r}"):
                    model = plugin.load(self._model_context(mid))
                if not isinstance(model, Model):
                    raise PluginError(f"{plugin_label(plugin)} returned "
                                      f"{type(model).__name__} for model {mid!r}; expected a "
                                      "harness.Model", hint="a bug in that model plugin")
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
        number = {c.key: n for n, c in enumerate(cases, 1)}

        def listed(case: "Case") -> None:
            """The run's cases: those it started or finished, in plan order."""
            if outcomes[case.key] not in result.cases:
                result.cases.append(outcomes[case.key])
                result.cases.sort(key=lambda c: number[f"{c.test}::{c.model}"])

        waiting = {c.key: [ch.id for ch in self._mine(c, todo) if ch.id not in done]
                   for c in cases}
        emit("start", {"cases": len(cases), "device": str(self.device), "seed": self.seed,
                       "resumed": sum(1 for c in cases if not waiting[c.key])})
        started: dict[str, float] = {}

        def finish(case: "Case") -> None:
            listed(case)
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
                    listed(case)
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
        except KeyboardInterrupt as exc:   # Ctrl-C, or a stop signal (errors.Interrupted)
            result.interrupted = True
            result.interrupt_code = getattr(exc, "exit_code", 130)
        finally:
            executor.close()
        for case in cases:   # cases cut short (an interrupt, a failed chunk): what they have
            if waiting[case.key] and case.key not in result.rows \
                    and outcomes[case.key] in result.cases:
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
        summarize(self.plan, case, store, done, mine, result, outcome)


def summarize(plan: "Plan", case: "Case", store: Any, done: dict[str, ChunkRecord],
              mine: list["Chunk"], result: RunResult,
              outcome: CaseResult | None = None) -> CaseResult:
    """Summarize a case from the ledger rows and records of its finished chunks (``done``,
    by chunk id) into ``result``: its result rows, notes, figures and status."""
    if outcome is None:
        outcome = CaseResult(case.test.name, case.model, "ok", images=case.images,
                             chunks=len(mine))
        result.cases.append(outcome)
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
            ledger = store.ledger(case.order)
            rows = case.test.aggregate(case, ledger, records, plan.seed)
            outcome.notes += [n for n in case.test.case_notes(case, ledger)
                              if n not in outcome.notes]
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            outcome.status = "error"
            outcome.error, outcome.error_kind, outcome.traceback = describe_error(exc)
    result.rows[case.key] = rows
    outcome.records = len(rows)
    return outcome


# ---------------------------------------------------------------------------- run to a folder

def suite_digest(suite: Any) -> str:
    import hashlib

    return hashlib.sha256(suite.text.encode()).hexdigest()


def plan_summary(plan: "Plan") -> list[dict[str, Any]]:
    """The plan's chunking as summary.json keeps it (for resume and merge)."""
    return [{"test": c.test.name, "model": c.model, "images": c.images,
             "chunks": [[ch.start, ch.stop] for ch in c.chunks]} for c in plan.cases]


def result_summary(result: RunResult) -> dict[str, Any]:
    return {
        "seed": result.seed, "device": result.device, "started": result.started,
        "finished": result.finished, "seconds": round(result.seconds, 3),
        "interrupted": result.interrupted,
        "shard": list(result.shard) if result.shard else None,
        "cases": [asdict(c) for c in result.cases],
        "models": [asdict(m) for m in result.models.values()],
        "plan": plan_summary(result.plan),
        "figures": result.figures,
    }


def device_info(device: str) -> dict[str, Any]:
    import torch

    dev = torch.device(device)
    info: dict[str, Any] = {"device": device, "threads": torch.get_num_threads()}
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
    return info


def versions(registry: Any) -> dict[str, str]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from . import __version__

    out = {"python": platform.python_version(), "robustness-harness": __version__,
           "torch": torch.__version__}
    for mod in ("torchvision", "numpy", "onnxruntime", "pyarrow"):
        try:  # from the installed metadata: importing onnxruntime is slow and writes files
            out[mod] = version(mod)
        except PackageNotFoundError:
            pass
    for entry in registry.entries():
        if entry.distribution not in ("-", ""):
            name, _, ver = entry.distribution.rpartition(" ")
            out.setdefault(name, ver)
    out["platform"] = platform.platform()
    return out


def plugins_used(registry: Any, built: dict[Any, Any]) -> list[dict[str, str]]:
    """The plugins a suite uses: kind, registered name and distribution (from the registry
    entry each was built from; a parameter named "kind" or "name" cannot shadow them)."""
    used = set()
    for obj in built.values():
        entry = obj.__dict__.get("_harness_entry")
        if entry is not None:
            used.add((entry.kind, entry.name, entry.distribution))
    return [{"kind": k, "name": n, "distribution": d} for k, n, d in sorted(used)]


def preflight(plan: "Plan", ctx: Context, chunks: set[str] | None = None) -> None:
    """Every plugin the run (or its shard) uses checks the files it will read (existence,
    ``sha256`` pins: :meth:`harness.Plugin.preflight`) before the first chunk; a failure is
    a :class:`SuiteError` on the plugin's line, and nothing runs."""
    cases = [c for c in plan.cases if chunks is None or any(ch.id in chunks for ch in c.chunks)]
    tests = {c.test.index for c in cases}
    models = {m for c in cases for m in plan.models_used(c)}
    suite = plan.suite
    for loc, plugin in plan.built.items():
        if (loc[0] == "models" and loc[1] not in models) or \
                (loc[0] == "tests" and loc[1] not in tests) or \
                (loc == ("data",) and all(suite.tests[i].data is not None for i in tests)):
            continue
        try:
            plugin.preflight(ctx)
        except ParamError as exc:
            raise suite.error(loc + ((exc.param,) if exc.param else ()), exc.message,
                              hint=exc.hint) from None
        except HarnessError as exc:
            raise suite.error(loc, exc.message, hint=exc.hint) from None


def run_suite(suite: Any, registry: Any, store: Any, options: RunOptions,
              command: list[str] | None = None, baseline: Any = None) -> tuple[RunResult, int]:
    """Run ``suite`` into the run folder ``store`` (a :class:`harness.store.RunStore`): every
    chunk saved as it finishes, the results and summary after every case; ``baseline``, an
    earlier run's store, for ``max_drop`` gates. With ``options.resume``, continue the run
    already in ``store``: the chunks it finished are taken over, the rest run. With
    ``options.shard`` ``(k, n)``, run shard k of n of the chunks. Returns the result and the
    exit code."""
    from .plan import Plan
    from .resume import load_done

    plan = Plan(suite, registry, options.seed)
    runner = Runner(plan, options)
    todo = plan.shard(*options.shard) if options.shard else None
    preflight(plan, runner.env.ctx, todo)
    if baseline is not None:
        baseline.check()
    store.create(resume=options.resume)  # locks the folder: a second writer is refused
    try:
        done = (load_done(store, plan, runner.seed, runner.device, options.limit,
                          options.shard) if options.resume else {})
        store.write_suite(suite.text)
        static = {
            "suite": {"name": suite.name, "file": suite.file, "sha256": suite_digest(suite)},
            "command": command or [],
            "options": {"device": options.device, "seed": options.seed, "limit": options.limit,
                        "data_dir": str(options.data_dir) if options.data_dir else None,
                        "use_cache": options.use_cache, "executor": options.executor,
                        "baseline": str(baseline.path) if baseline is not None else None,
                        "resumed": len(done)},
            "versions": versions(registry),
            "device_info": device_info(str(runner.device)),
            "plugins": plugins_used(registry, plan.built),
        }
        save = saver(plan, store, static, baseline)
        # the folder reads as a run from the start: killed at any moment, it resumes
        save(RunResult(plan, runner.seed, str(runner.device), now(), shard=options.shard))
        hooks = Lifecycle(registry, options.on_event)
        cases = [c for c in plan.cases if todo is None or any(ch.id in todo for ch in c.chunks)]
        hooks.started(plan, store, options, runner.device, len(cases), len(done))
        reported: set[int] = set()

        def on_case(r: RunResult) -> None:
            save(r)
            for outcome in r.cases:
                if id(outcome) not in reported and outcome.status != "partial":
                    reported.add(id(outcome))
                    hooks.case_finished(r, outcome)

        result = runner.run(store, todo, {k: v for k, v in done.items()}, on_case=on_case)
        code = final_save(save, result)
        hooks.finished(store, result, code)
        return result, code
    finally:
        store.unlock()


class Lifecycle:
    """Calls the plugin packages' lifecycle hooks (``harness_run_started``,
    ``harness_case_finished``, ``harness_run_finished``). A hook that raises is reported
    (one line naming its package, through ``on_event("hook_error", ...)``) and the run goes
    on."""

    def __init__(self, registry: Any, on_event: EventHandler):
        self.pm = getattr(registry, "pm", None)
        self.on_event = on_event
        self.run: Any = None

    def call(self, hook: str, **kwargs: Any) -> None:
        if self.pm is None:
            return
        from .plugins import _exc_line, package_label

        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            try:
                impl.function(**{k: v for k, v in kwargs.items() if k in impl.argnames})
            except (KeyboardInterrupt, GeneratorExit):
                raise
            except BaseException as exc:
                self.on_event("hook_error", {"hook": hook, "error": (
                    f"{package_label(self.pm, impl.plugin)} raised in its {hook} hook: "
                    f"{_exc_line(exc)}")})

    def started(self, plan: "Plan", store: Any, options: RunOptions, device: Any,
                cases: int, resumed: int) -> None:
        from .reporting import RunStarted

        self.run = RunStarted(plan.suite.name, plan.suite.file, plan.seed, str(device),
                              Path(store.path), cases, options.shard, resumed)
        self.call("harness_run_started", run=self.run)

    def case_finished(self, result: RunResult, outcome: CaseResult) -> None:
        from .reporting import CaseFinished

        rows = result.rows.get(f"{outcome.test}::{outcome.model}", [])
        self.call("harness_case_finished", run=self.run, case=CaseFinished(
            outcome.test, outcome.model, outcome.status, outcome.seconds, outcome.images,
            outcome.error, [r.as_dict() for r in rows]))

    def finished(self, store: Any, result: RunResult, code: int) -> None:
        from .reporting import RunFinished

        summary = store.summary()
        self.call("harness_run_finished", run=self.run, outcome=RunFinished(
            Path(store.path), code, summary.get("verdict", ""), result.seconds,
            result.interrupted, summary.get("gates") or []))


def final_save(save: Callable[..., int], result: RunResult) -> int:
    """The last save; a stop signal arriving during it marks the run interrupted and saves
    again, so the folder never stays "running" once the run has ended."""
    try:
        return save(result, final=True)
    except KeyboardInterrupt as exc:
        result.interrupted = True
        result.interrupt_code = getattr(exc, "exit_code", 130)
        return save(result, final=True)


def saver(plan: "Plan", store: Any, static: dict[str, Any],
          baseline: Any = None) -> Callable[..., int]:
    """``save(result, final=False)``: write the run folder's results, summary and tracebacks;
    the final save also draws the figures made from the ledger, judges the gates and
    returns the exit code."""
    from .gates import exit_code_of, judge

    def save(result: RunResult, final: bool = False) -> int:
        verdicts: list[dict[str, Any]] = []
        code, verdict = None, "running"
        if final:
            result.figures = test_figures(plan, store, result)
            verdicts = judge(plan, result, store, baseline)
            code, verdict = exit_code_of(result, verdicts)
        store.write_results(result.records)
        store.write_summary({**static, **result_summary(result), "gates": verdicts,
                             "exit_code": code, "verdict": verdict})
        tracebacks = [f"== {c.test} x {c.model}\n{c.traceback}" for c in result.cases
                      if c.traceback]
        tracebacks += [f"== model {m.id}\n{m.traceback}" for m in result.models.values()
                       if m.traceback]
        if tracebacks:
            store.write_text("errors.log", "\n".join(tracebacks))
        return code or 0

    return save


def test_figures(plan: "Plan", store: Any, result: RunResult) -> dict[str, list[str]]:
    """Figures drawn from the whole ledger, per test: robustness curves of minimum-norm
    attacks, distributions of distortions, transfer matrices as heatmaps."""
    from .report import plots

    out: dict[str, list[str]] = {}
    ledger = None
    for test in plan.tests:
        orders = [c.order for c in plan.cases if c.test is test
                  and result.rows.get(c.key)]
        if not orders:
            continue
        if ledger is None:
            ledger = store.ledger()
        paths = []
        try:
            for name, png in test.figures(ledger[ledger["test"] == test.name],
                                          [r for c in plan.cases if c.test is test
                                           for r in result.rows.get(c.key, [])]).items():
                path = f"figures/{test.name}/{name}"
                store.write_bytes(path, png)
                paths.append(path)
        except KeyboardInterrupt:
            raise
        except Exception as exc:   # a figure that cannot be drawn loses the figure only
            result.cases[0].notes.append(f"figures of {test.name} not drawn: "
                                         f"{type(exc).__name__}: {exc}") if result.cases else None
        if paths:
            out[test.name] = paths
    return out


def merge_runs(*args: Any, **kwargs: Any) -> Any:
    """See :func:`harness.merge.merge_runs`."""
    from .merge import merge_runs as merge

    return merge(*args, **kwargs)
