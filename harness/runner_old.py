"""Plan and run a suite: each test on each of its models. No printing, no click: the result
comes back as an object, progress goes through the callbacks given."""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

from . import transfer
from .context import Context, ProgressFactory, default_cache_dir, resolve_device, silent_progress
from .data import Data
from .base import blame
from .errors import DataError, HarnessError, ModelError, ParamError, PluginCrash
from .metric import Evaluation
from .model import Model
from .registry import Registry
from .suite import (BASELINE, Loc, Suite, TestConfig, baseline_label, check_plugins, metric_specs,
                    transfer_label)

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
    shard: tuple[int, int] | None = None   # (k, n): run only shard k of n (Suite.cases)
    cache_dir: Path | None = None
    use_cache: bool = True
    progress: ProgressFactory = silent_progress
    on_event: EventHandler = field(default=lambda kind, info: None)


@dataclass
class CaseResult:
    test: str
    model: str
    status: str                       # "ok" or "error"
    seconds: float = 0.0
    error: str | None = None
    error_kind: str | None = None     # "input" (the user's to fix) or "internal" (a bug)
    traceback: str | None = None
    images: int = 0
    notes: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)   # paths inside the run folder
    records: int = 0                  # rows of results.csv it wrote (rows are in case order)
    resumed: bool = False             # taken over from the interrupted run it resumed


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
    suite: Suite
    seed: int
    device: str
    started: str
    finished: str | None = None
    seconds: float = 0.0
    records: list[dict[str, Any]] = field(default_factory=list)
    cases: list[CaseResult] = field(default_factory=list)
    models: dict[str, ModelInfo] = field(default_factory=dict)
    interrupted: bool = False
    #: the exit code of an interrupted run: 128 + the signal (130: SIGINT, 143: SIGTERM)
    interrupt_code: int = 130
    shard: tuple[int, int] | None = None
    #: figures not yet written to the run folder: path inside it -> PNG bytes
    pending_files: dict[str, bytes] = field(default_factory=dict)

    @property
    def errors(self) -> list[CaseResult]:
        return [c for c in self.cases if c.status != "ok"]

    def summary(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "device": self.device, "started": self.started,
            "finished": self.finished, "seconds": round(self.seconds, 3),
            "interrupted": self.interrupted,
            "shard": list(self.shard) if self.shard else None,
            "cases": [asdict(c) for c in self.cases],
            "models": [asdict(m) for m in self.models.values()],
        }


@dataclass
class Resumed:
    """What an interrupted (or partly failed) run left in its folder: the cases it finished
    without error, each with its rows of results, and the models it loaded."""

    cases: dict[tuple[str, str], tuple[CaseResult, list[dict[str, Any]]]]
    models: dict[str, ModelInfo]


def _suite_digest(suite: Suite) -> str:
    import hashlib

    return hashlib.sha256(suite.text.encode()).hexdigest()


def load_resumable(store: "Any", suite: Suite, seed: int, device: torch.device | str,
                   limit: int | None, shard: tuple[int, int] | None = None,
                   merging: bool = False) -> Resumed:
    """Read the run in ``store`` to continue it; refuse (one line) when it was run with a
    different suite text, seed, device, limit or shard, since its numbers would then not
    belong with the new ones. A folder whose run was stopped before it saved a summary (killed
    while its first case ran) resumes from nothing. ``merging``: take every case as it is
    (failed ones too) and every model, for :func:`merge_runs`."""
    where = store.path
    again = "run the suite afresh (--out NEW_FOLDER)"
    if not merging and store.started_only():
        if os.path.lexists(store.path / "suite.yaml") and store.suite_text() != suite.text:
            raise HarnessError(f"{where} holds a run of another suite, or of this one before it "
                               "changed; its results cannot be continued", hint=again)
        return Resumed({}, {})
    store.check()
    summary = store.summary()
    if summary["suite"]["sha256"] != _suite_digest(suite):
        raise HarnessError(f"{where} holds a run of another suite, or of this one before it "
                           "changed; its results cannot be continued", hint=again)
    before = {"seed": summary["seed"], "device": summary["device"],
              "limit": summary["options"].get("limit"),
              "shard": "/".join(map(str, summary["shard"])) if summary["shard"] else None}
    now = {"seed": seed, "device": str(device), "limit": limit,
           "shard": "/".join(map(str, shard)) if shard else None}
    for key in before:
        if before[key] != now[key]:
            raise HarnessError(f"{where} was run with {key} {before[key]}, not {now[key]}; "
                               "resume it with the same settings", hint=again)
    cases = summary["cases"]
    if any(c["records"] is None for c in cases):
        raise HarnessError(f"{where} was written by an older version of the harness and "
                           "cannot be resumed", hint=again)
    rows = store.results().to_dict("records")  # checked against the cases
    names = {f.name for f in fields(CaseResult)}
    done, start = {}, 0
    for c in cases:
        part = rows[start:start + c["records"]]
        start += c["records"]
        if c["status"] == "ok" or merging:
            case = CaseResult(**{k: v for k, v in c.items() if k in names})
            case.resumed = case.resumed or not merging
            done[case.test, case.model] = (case, [_record(r) for r in part])
    model_names = {f.name for f in fields(ModelInfo)}
    models = {m["id"]: ModelInfo(**{k: v for k, v in m.items() if k in model_names})
              for m in summary["models"] if m["status"] == "ok" or merging}
    return Resumed(done, models)


def _record(row: dict[str, Any]) -> dict[str, Any]:
    """A row of results.csv as the runner's record (``n`` an int where it is known)."""
    rec = {**row, "param": row["param"] or ""}
    n = row.get("n")
    rec["n"] = int(n) if isinstance(n, (int, float)) and n == n else ""
    return rec


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def _describe(exc: BaseException) -> tuple[str, str, str | None]:
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


class Runner:
    """Runs every (test, model) case of a suite; a failing case is recorded and the others
    still run."""

    def __init__(self, suite: Suite, registry: Registry, options: RunOptions | None = None):
        self.suite = suite
        self.registry = registry
        self.options = options or RunOptions()
        self.built: dict[Loc, Any] = check_plugins(suite, registry)
        self.device = resolve_device(self.options.device or suite.device)
        self.seed = self.options.seed if self.options.seed is not None else suite.seed
        self.ctx = Context(device=self.device, seed=self.seed, data_dir=self.options.data_dir,
                           cache_dir=self.options.cache_dir or default_cache_dir(),
                           use_cache=self.options.use_cache, progress=self.options.progress,
                           registry=registry)
        self._models: dict[str, Model | None] = {}

    def run(self, checkpoint: Callable[[RunResult], None] | None = None,
            done: "Resumed | None" = None) -> RunResult:
        """Run all cases; ``checkpoint(result)`` is called after each one (to save it).
        ``done``: cases an interrupted run finished, taken over instead of run again."""
        emit = self.options.on_event
        result = RunResult(self.suite, self.seed, str(self.device), _now(),
                           shard=self.options.shard)
        t_start = time.perf_counter()
        plan = self.suite.cases(self.options.shard)
        emit("start", {"cases": len(plan), "device": str(self.device), "seed": self.seed,
                       "resumed": len(done.cases) if done else 0})
        try:
            for n, (i, test, mid) in enumerate(plan, 1):
                start = len(result.records)
                if done is not None and (test.name, mid) in done.cases:
                    case, records = done.cases[test.name, mid]
                    result.records.extend(records)
                    result.cases.append(case)
                    emit("case_end", {"n": n, "of": len(plan), **asdict(case)})
                    continue
                emit("case_start", {"n": n, "of": len(plan), "test": test.name, "model": mid})
                case = self._run_case(i, test, mid, result)
                case.records = len(result.records) - start
                result.cases.append(case)
                emit("case_end", {"n": n, "of": len(plan), **asdict(case)})
                result.seconds = time.perf_counter() - t_start
                if checkpoint:
                    checkpoint(result)
        except KeyboardInterrupt as exc:  # Ctrl-C, or a stop signal (harness.errors.Interrupted)
            result.interrupted = True
            result.interrupt_code = getattr(exc, "exit_code", 130)
        if done is not None:  # models only the taken-over cases used: as the earlier run saw them
            for mid, info in done.models.items():
                result.models.setdefault(mid, info)
        result.finished = _now()
        result.seconds = time.perf_counter() - t_start
        return result

    # ------------------------------------------------------------------ pieces

    def _data(self, i: int, test: TestConfig) -> Data:
        loc: Loc = ("tests", i, "data") if test.data is not None else ("data",)
        spec = self.suite.test_data(test)
        assert spec is not None
        try:
            data = self.ctx.dataset(spec.use, **spec.params)
        except PluginCrash:  # names the plugin already; its traceback goes to errors.log
            raise
        except HarnessError as exc:
            raise type(exc)(f"{self._where(loc)}{exc.message}", hint=exc.hint) from None
        # held in memory until the cases stream their batches
        return data.head(self.options.limit).materialize()

    def _where(self, loc: Loc) -> str:
        line = self.suite.line(loc)
        return f"{self.suite.file}:{line}: " if line else ""

    def _model(self, mid: str, result: RunResult) -> Model:
        if mid not in self._models:
            spec = dict(self.suite.models[mid])
            info = ModelInfo(mid, spec)
            result.models[mid] = info
            self.options.on_event("model_start", {"model": mid})
            t0 = time.perf_counter()
            try:
                plugin = self.built[("models", mid)]
                with blame(plugin, f"loading model {mid!r}"):
                    model = plugin.load(self._model_context(mid))
                if not isinstance(model, Model):
                    from .base import plugin_label
                    from .errors import PluginError

                    raise PluginError(f"{plugin_label(plugin)} returned "
                                      f"{type(model).__name__} for model {mid!r}; expected a "
                                      "harness.Model", hint="a bug in that model plugin")
                model.name = mid
                info.gradients = getattr(model, "gradient_source", None)
                info.note = getattr(model, "gradient_note", "") or ""
                self._models[mid] = model
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # SystemExit too: only this model's cases fail
                info.error, info.error_kind, info.traceback = _describe(exc)
                info.status = "error"
                self._models[mid] = None
            info.seconds = time.perf_counter() - t0
            self.options.on_event("model_end", {"model": mid, "status": info.status,
                                                "seconds": info.seconds, "error": info.error})
        model = self._models[mid]
        if model is None:
            info = result.models[mid]
            raise _ModelUnavailable(f"model {mid!r} could not be loaded: {info.error}",
                                    info.error_kind or "internal")
        return model

    def _model_context(self, mid: str) -> Context:
        """The run's context, with the input shape and class count of the data the model's
        first test feeds it (so a model plugin need not be told them)."""
        from dataclasses import replace

        for i, test in enumerate(self.suite.tests):
            if mid in self.suite.test_models(test) or mid in test.targets(list(self.suite.models)):
                if self.suite.test_data(test) is None:
                    continue
                try:
                    data = self._data(i, test)
                except HarnessError:
                    return self.ctx
                return replace(self.ctx, input_shape=tuple(data.input_shape),
                               num_classes=data.num_classes)
        return self.ctx

    def _run_case(self, i: int, test: TestConfig, mid: str, result: RunResult) -> CaseResult:
        t0 = time.perf_counter()
        case = CaseResult(test.name, mid, "ok")
        try:
            if test.transfer is not None:
                self._transfer(i, test, mid, case, result)
                case.seconds = time.perf_counter() - t0
                return case
            model = self._model(mid, result)
            analysis = self.built.get(("tests", i, "analysis"))
            if analysis is not None:
                self._analyse(i, test, mid, model, analysis, case, result)
            else:
                data = self._data(i, test)
                case.images = len(data)
                result.records.extend(self._evaluate(i, test, mid, model, data, case, result))
        except KeyboardInterrupt:
            raise
        except _ModelUnavailable as exc:
            case.status, case.error, case.error_kind = "error", str(exc), exc.kind
        except BaseException as exc:  # SystemExit too: only this case fails
            case.status = "error"
            case.error, case.error_kind, case.traceback = _describe(exc)
        case.seconds = time.perf_counter() - t0
        return case

    def _analyse(self, i: int, test: TestConfig, mid: str, model: Model, analysis: Any,
                 case: CaseResult, result: RunResult) -> None:
        if analysis.needs_module and model.module is None:
            raise ModelError(f"analysis {analysis.name!r} needs a torch module, and model "
                             f"{mid!r} is not one")
        data = None
        if analysis.needs_data:
            data = self._data(i, test)
            self._check_fit(test, mid, model, data)
            case.images = len(data)
        with blame(analysis, f"analysing model {mid!r}"):
            res = analysis.run(model, data, self.ctx)
        # n: the images the numbers come from; none for an analysis without data
        base = {"test": test.name, "model": mid, "n": len(data) if data is not None else ""}
        for rec in res.records:
            result.records.append({**base, "metric": rec["metric"],
                                   "param": rec.get("param", ""), "value": float(rec["value"])})
        for name, png in res.figures.items():
            path = f"figures/{test.name}/{mid}/{name}"
            result.pending_files[path] = png
            case.figures.append(path)
        case.notes = list(res.notes)

    def _check_fit(self, test: TestConfig, mid: str, model: Model, data: Data) -> None:
        if data.input_shape != model.input_shape:
            raise DataError(f"test {test.name!r}: images of shape {list(data.input_shape)} "
                            f"({data.name}) do not fit model {mid!r}, which takes "
                            f"{list(model.input_shape)}",
                            hint="use data the model was built for")
        if data.num_classes > model.num_classes:
            raise DataError(f"test {test.name!r}: {data.name} has {data.num_classes} classes "
                            f"but model {mid!r} outputs {model.num_classes}")

    def _evaluate(self, i: int, test: TestConfig, mid: str, model: Model, data: Data,
                  case: CaseResult, result: RunResult) -> list[dict[str, Any]]:
        self._check_fit(test, mid, model, data)
        x = data.x.to(model.device)
        y = data.y.to(model.device)
        clean_pred = model.logits(x, when="on the clean inputs").argmax(1)
        metrics = [(spec.use, self.built[("tests", i, "metrics", j)])
                   for j, spec in enumerate(metric_specs(test))]
        base = {"test": test.name, "model": mid, "n": len(data)}
        evaluations: list[tuple[str, Evaluation]] = []
        if test.attack is None:
            evaluations.append(("", Evaluation(model, x, y, clean_pred)))
        else:
            attack = self.built[("tests", i, "attack")]
            if attack.needs_gradients and not model.differentiable:
                raise ModelError(f"attack {attack.name!r} needs gradients, and model {mid!r} "
                                 "gives none", hint="use a gradient-free attack for it")
            for label, variant in attack.variants():
                res = variant(model, x, y, self.ctx)
                adv_pred = model.logits(res.x_adv, when="on the attack's final adversarial "
                                                        "inputs").argmax(1)
                evaluations.append((label, Evaluation(model, x, y, clean_pred, res, adv_pred)))
                if test.pictures:
                    self._pictures(test, mid, data, x, res.x_adv, clean_pred, adv_pred,
                                   label, case, result)
        records = []
        for label, ev in evaluations:
            for name, metric in metrics:
                with blame(metric, f"computing it for model {mid!r}"):
                    value = metric.compute(ev)
                    count = metric.count(ev) if value is not None else None
                if value is None:
                    continue
                records.append({**base, "metric": name, "param": label, "value": float(value),
                                "n": base["n"] if count is None else int(count)})
        return records


    # ------------------------------------------------------------------ pictures, transfer

    def _pictures(self, test: TestConfig, mid: str, data: Data, x: torch.Tensor,
                  x_adv: torch.Tensor, clean_pred: torch.Tensor, adv_pred: torch.Tensor,
                  label: str, case: CaseResult, result: RunResult) -> None:
        from .figures import examples_grid

        k = min(test.pictures, len(x))
        title = f"{test.name} on {mid}" + (f" ({label})" if label else "")
        png = examples_grid(x[:k], x_adv[:k], data.y[:k], clean_pred[:k], adv_pred[:k],
                            data.classes, title)
        suffix = f"-{label}" if label else ""
        path = f"figures/{test.name}/{mid}/examples{suffix}.png"
        result.pending_files[path] = png
        case.figures.append(path)

    def _transfer_spec(self, i: int, test: TestConfig, mid: str, data: Data) -> dict[str, Any]:
        spec = self.suite.test_data(test)
        return transfer.metadata(
            suite=self.suite.name, test=test.name, model=mid,
            model_spec=dict(self.suite.models[mid]), attack_spec=dict(test.attack),
            data_spec=dict(spec) if spec else None, data_fingerprint=data.fingerprint(),
            seed=self.seed, n=len(data))

    def _transfer(self, i: int, test: TestConfig, mid: str, case: CaseResult,
                  result: RunResult) -> None:
        """Make examples for source ``mid`` (or the baseline) and feed them to every target."""
        data = self._data(i, test)
        case.images = len(data)
        targets = test.targets(list(self.suite.models))
        if mid == BASELINE:
            rows = self._baseline_rows(i, test, targets, data, result)
            source = None
        else:
            source = self._model(mid, result)
            rows = self._source_rows(i, test, mid, source, data, case, result)
        failures = []
        for tid in targets:
            try:
                target = self._model(tid, result)
                self._check_fit(test, tid, target, data)
            except (_ModelUnavailable, HarnessError) as exc:
                failures.append(str(exc))
                continue
            for label, x_rows, distortion, count in rows:
                pred = target.logits(x_rows, when=f"on the examples of {label}").argmax(1).cpu()
                result.records.append({"test": test.name, "model": tid, "n": len(data),
                                       "metric": "adv_error", "param": label,
                                       "value": float((pred != data.y).float().mean())})
                if source is None:  # a baseline's distortion, under every target
                    result.records.append({"test": test.name, "model": tid, "n": count,
                                           "metric": "mean_distortion", "param": label,
                                           "value": distortion})
        if failures:
            raise ModelError("; ".join(dict.fromkeys(failures)))

    def _source_rows(self, i: int, test: TestConfig, mid: str, source: Model, data: Data,
                     case: CaseResult, result: RunResult
                     ) -> list[tuple[str, torch.Tensor, float, int]]:
        """The examples made for ``mid`` (and their amplified versions), recorded and saved:
        ``[(label, x_adv on the CPU, mean distortion, images it is over)]``."""
        self._check_fit(test, mid, source, data)
        attack = self.built[("tests", i, "attack")]
        if attack.needs_gradients and not source.differentiable:
            raise ModelError(f"attack {attack.name!r} needs gradients, and model {mid!r} "
                             "gives none", hint="make the examples for a differentiable model")
        wanted = self._transfer_spec(i, test, mid, data)
        saved = None
        if self.options.reuse is not None:
            saved = transfer.find_reusable(self.options.reuse, test.name, mid, wanted)
        if saved is not None and tuple(saved["x_adv"].shape) != tuple(data.x.shape):
            raise HarnessError(f"{self.options.reuse}: the saved examples of {test.name} x "
                               f"{mid} have shape {list(saved['x_adv'].shape)}, not the data's "
                               f"{list(data.x.shape)}", hint="run without --reuse")
        if saved is not None:
            x_adv = torch.from_numpy(saved["x_adv"]).float()
            success = torch.from_numpy(saved["success"])
            target = torch.from_numpy(saved["target"]) if "target" in saved else None
            case.notes.append(f"examples for {mid} reused from {self.options.reuse}")
        else:
            x, y = data.x.to(source.device), data.y.to(source.device)
            res = attack(source, x, y, self.ctx)
            x_adv, success = res.x_adv.cpu(), res.success.cpu()
            target = res.target.cpu() if res.target is not None else None
            if test.pictures:
                clean = source.logits(x, when="on the clean inputs").argmax(1)
                self._pictures(test, mid, data, x, res.x_adv, clean,
                               source.logits(res.x_adv, when="on the attack's final "
                                                            "adversarial inputs").argmax(1),
                               "", case, result)
        base = f"artifacts/{test.name}/{mid}"
        result.pending_files[f"{base}.npz"] = transfer.pack(data.x, x_adv, data.y, success, target)
        result.pending_files[f"{base}.json"] = (json.dumps(
            {**wanted, "created": _now()}, indent=2, default=str) + "\n").encode()
        label = transfer_label(mid)
        rec = {"test": test.name, "model": mid, "n": len(data)}
        result.records.append({**rec, "metric": "success_rate", "param": label,
                               "value": float(success.float().mean())})

        over = int(success.sum())

        def mean_distortion(x_rows: torch.Tensor) -> float:
            """Over the images where the attack succeeded on its source (as Table 1)."""
            dist = transfer.distortion_of(data.x, x_rows)[success]
            return float(dist.mean()) if len(dist) else float("nan")

        rows = [(label, x_adv, mean_distortion(x_adv), over)]
        for level in test.amplify or []:
            amplified = transfer.amplify(data.x, x_adv, level)
            rows.append((transfer_label(mid, level), amplified, mean_distortion(amplified), over))
        for row_label, _, value, count in rows:
            result.records.append({**rec, "metric": "mean_distortion", "param": row_label,
                                   "value": value, "n": count})
        return rows

    def _baseline_rows(self, i: int, test: TestConfig, targets: list[str], data: Data,
                       result: RunResult) -> list[tuple[str, torch.Tensor, float, int]]:
        """The baseline's examples (one set per setting, made once on the CPU); their
        distortion is over all images (noise has no goal to succeed at)."""
        baseline = self.built[("tests", i, "baseline")]
        stand_in = _stand_in_model(data)
        rows = []
        for label, variant in baseline.variants():
            res = variant(stand_in, data.x, data.y, self.ctx)
            rows.append((baseline_label(baseline.name, label), res.x_adv.cpu(),
                         float(res.distortion.mean()) if len(data) else float("nan"), len(data)))
        return rows


def _stand_in_model(data: Data) -> Model:
    """A stand-in model for a baseline that needs none (its predictions are ignored)."""
    n = data.num_classes
    return Model(forward=lambda x: torch.zeros(len(x), n, device=x.device),
                 input_shape=data.input_shape, num_classes=n, device="cpu",
                 differentiable=False, name="baseline")


class _ModelUnavailable(Exception):
    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


def device_info(device: str) -> dict[str, Any]:
    dev = torch.device(device)
    info: dict[str, Any] = {"device": device, "threads": torch.get_num_threads()}
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
    return info


# ---------------------------------------------------------------------------- run to a folder

def _versions(registry: Registry) -> dict[str, str]:
    import platform

    from . import __version__

    versions = {"python": platform.python_version(), "robustness-harness": __version__,
                "torch": torch.__version__}
    from importlib.metadata import PackageNotFoundError, version

    for mod in ("torchvision", "numpy", "onnxruntime"):
        try:  # from the installed metadata: importing onnxruntime is slow and writes files
            versions[mod] = version(mod)
        except PackageNotFoundError:
            pass
    for entry in registry.entries():
        if entry.distribution not in ("-", ""):
            name, _, ver = entry.distribution.rpartition(" ")
            versions.setdefault(name, ver)
    versions["platform"] = platform.platform()
    return versions


def exit_code_of(result: RunResult, verdicts: list[dict[str, Any]]) -> tuple[int, str]:
    """The run's exit code and a one-line verdict: 2 when a case failed on the user's input
    (a model that returns NaN, missing data), 1 when a gate failed or a case hit an internal
    error, 130 when interrupted, else 0."""
    input_errors = [c for c in result.errors if c.error_kind == "input"]
    other_errors = [c for c in result.errors if c.error_kind != "input"]
    failed = [v for v in verdicts if not v["passed"]]
    skipped = [v for v in verdicts if v.get("skipped")]
    parts = []
    if input_errors:
        parts.append(f"{len(input_errors)} case(s) failed on invalid input")
    if other_errors:
        parts.append(f"{len(other_errors)} case(s) errored")
    if failed:
        parts.append(f"{len(failed)} of {len(verdicts)} gate(s) failed")
    if result.interrupted:
        import signal

        code = result.interrupt_code
        try:
            by = f" by {signal.Signals(code - 128).name}"
        except ValueError:
            by = ""
        return code, f"INTERRUPTED{by}: " + (", ".join(parts)
                                            or f"{len(result.cases)} case(s) finished")
    if input_errors:
        return 2, "ERROR: " + ", ".join(parts)
    if parts:
        return 1, "FAILED: " + ", ".join(parts)
    gates = f", {len(verdicts) - len(skipped)} gate(s) passed" if verdicts else ""
    if skipped:
        gates += f", {len(skipped)} skipped (see why in the Gates table)"
    shard = f"shard {result.shard[0]}/{result.shard[1]}, " if result.shard else ""
    return 0, f"OK: {shard}{len(result.cases)} case(s) ran{gates}"


def run_suite(suite: Suite, registry: Registry, store: "Any", options: RunOptions,
              command: list[str] | None = None,
              baseline: "Any" = None) -> tuple[RunResult, int]:
    """Run ``suite`` into the run folder ``store`` (a :class:`harness.store.RunStore`),
    saving after every case; ``baseline``, an earlier run's store, for ``max_drop`` gates.
    With ``options.resume``, continue the run already in ``store``: the cases it finished are
    taken over, the rest run. Returns the result and the exit code."""
    runner = Runner(suite, registry, options)
    preflight(suite, runner.built, runner.ctx, options.shard)
    if baseline is not None:
        baseline.check()
    store.create(resume=options.resume)  # locks the folder: a second writer is refused
    try:
        done = (load_resumable(store, suite, runner.seed, runner.device, options.limit,
                               options.shard) if options.resume else None)
        store.write_suite(suite.text)
        static = {
            "suite": {"name": suite.name, "file": suite.file, "sha256": _suite_digest(suite)},
            "command": command or [],
            "options": {"device": options.device, "seed": options.seed, "limit": options.limit,
                        "data_dir": str(options.data_dir) if options.data_dir else None,
                        "use_cache": options.use_cache,
                        "baseline": str(baseline.path) if baseline is not None else None,
                        "resumed": len(done.cases) if done is not None else 0},
            "versions": _versions(registry),
            "device_info": device_info(str(runner.device)),
            "plugins": _plugins_used(registry, runner.built),
        }
        save = _saver(suite, runner.built, store, static, baseline)
        if done is None or not (store.path / "summary.json").exists():
            # a folder that reads as a run from the start: killed before its first case
            # finished, it resumes like any other
            save(RunResult(suite, runner.seed, str(runner.device), _now(),
                           shard=options.shard))
        result = runner.run(checkpoint=save, done=done)
        return result, _final_save(save, result)
    finally:
        store.unlock()


def _final_save(save: Callable[..., int], result: RunResult) -> int:
    """The last save; a stop signal arriving during it marks the run interrupted and saves
    again, so the folder never stays "running" once the run has ended."""
    try:
        return save(result, final=True)
    except KeyboardInterrupt as exc:
        result.interrupted = True
        result.interrupt_code = getattr(exc, "exit_code", 130)
        return save(result, final=True)


def preflight(suite: Suite, built: dict[Loc, Any], ctx: Context,
              shard: tuple[int, int] | None = None) -> None:
    """Every plugin the run (or its shard) uses checks the files it will read (existence,
    ``sha256`` pins: :meth:`harness.Plugin.preflight`) before the first case; a failure is
    a :class:`SuiteError` on the plugin's line, and nothing runs."""
    plan = suite.cases(shard)
    tests = {i for i, _, _ in plan}
    models = {mid for _, _, mid in plan if mid != BASELINE}
    for i, test, _ in plan:
        if test.transfer is not None:
            models.update(test.targets(list(suite.models)))
    for loc, plugin in built.items():
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


def _plugins_used(registry: Registry, built: dict[Loc, Any]) -> list[dict[str, str]]:
    # the kind and name of the class as registered (a plugin parameter named "kind" or
    # "name" shadows them on the instance)
    used = sorted({(type(obj).kind, type(obj).name,
                    registry.get(type(obj).kind, type(obj).name).distribution)
                   for obj in built.values()})
    return [{"kind": k, "name": n, "distribution": d} for k, n, d in used]


def _saver(suite: Suite, built: dict[Loc, Any], store: "Any", static: dict[str, Any],
           baseline: "Any" = None) -> Callable[..., int]:
    """``save(result, final=False)``: write the run folder (results, summary, figures,
    tracebacks); the final save also judges the gates and returns the exit code."""
    from .gates import evaluate

    base_records = baseline.results().to_dict("records") if baseline is not None else None
    directions = {spec.use: built[("tests", i, "metrics", j)].higher_is_better
                  for i, t in enumerate(suite.tests) for j, spec in enumerate(metric_specs(t))}

    def save(result: RunResult, final: bool = False) -> int:
        unmeasured = None
        if result.interrupted:
            unmeasured = "the run was interrupted (finish it with --resume)"
        elif result.shard is not None:
            unmeasured = (f"not in shard {result.shard[0]}/{result.shard[1]} "
                          "(judge it on the shards merged with 'harness merge')")
        verdicts = (evaluate(suite.gates, result.records, base_records, directions,
                             unmeasured=unmeasured) if final else [])
        code, verdict = exit_code_of(result, verdicts) if final else (None, "running")
        for path, blob in list(result.pending_files.items()):
            store.write_bytes(path, blob)
            del result.pending_files[path]
        store.write_results(result.records)
        store.write_summary({**static, **result.summary(), "gates": verdicts,
                             "exit_code": code, "verdict": verdict})
        tracebacks = [f"== {c.test} x {c.model}\n{c.traceback}" for c in result.cases
                      if c.traceback]
        tracebacks += [f"== model {m.id}\n{m.traceback}" for m in result.models.values()
                       if m.traceback]
        if tracebacks:
            store.write_text("errors.log", "\n".join(tracebacks))
        return code or 0

    return save


def merge_runs(stores: list["Any"], registry: Registry, out: "Any",
               command: list[str] | None = None, baseline: "Any" = None) -> tuple[RunResult, int]:
    """Combine the run folders of every shard of a suite (``harness run --shard K/N``) into
    the run folder ``out``, as if the suite had run in one go: the cases in the suite's order
    with their results, the models, figures and saved examples; the gates are judged on
    the whole. Nothing is computed. Returns the result and the exit code."""
    from .suite import parse_suite

    if not stores:
        raise HarnessError("give the run folders of the shards to merge")
    for store in stores:
        store.check()
    summaries = [store.summary() for store in stores]
    first, s0 = stores[0], summaries[0]
    hint = "merge the run folders that 'harness run SUITE --shard K/N' wrote, one per K"
    shards: dict[int, Any] = {}
    n = None
    for store, summary in zip(stores, summaries):
        if not summary.get("shard"):
            raise HarnessError(f"{store.path} is not a shard (it ran without --shard)", hint=hint)
        k, m = summary["shard"]
        n = n or m
        if m != n:
            raise HarnessError(f"{store.path} is shard {k}/{m}, and {first.path} one of {n}: "
                               "shards of different splits", hint=hint)
        if k in shards:
            raise HarnessError(f"shard {k}/{n} given twice: {shards[k].path} and {store.path}",
                               hint=hint)
        shards[k] = store
    missing = [f"{k}/{n}" for k in range(1, n + 1) if k not in shards]
    if missing:
        raise HarnessError(f"shard(s) {', '.join(missing)} missing", hint=f"run 'harness run "
                           f"SUITE --shard {missing[0]}' and merge all {n} folders")
    suite = parse_suite(first.suite_text(), s0["suite"]["file"], registry)
    cases: dict[tuple[str, str], tuple[CaseResult, list[dict[str, Any]]]] = {}
    models: dict[str, ModelInfo] = {}
    for store, summary in zip(stores, summaries):
        part = load_resumable(store, suite, s0["seed"], s0["device"],
                              s0.get("options", {}).get("limit"), tuple(summary["shard"]),
                              merging=True)
        cases.update(part.cases)
        for mid, info in part.models.items():
            if mid not in models or models[mid].status != "ok":
                models[mid] = info
    plan = suite.cases()
    absent = [f"{t.name} x {mid}" for _, t, mid in plan if (t.name, mid) not in cases]
    if absent:
        raise HarnessError(f"{len(absent)} case(s) are in no shard's results (first: "
                           f"{absent[0]}): a shard was interrupted", hint="finish it with "
                           "'harness run SUITE --shard K/N --resume DIR', then merge again")
    for store in stores:  # merge copies regular files only: refuse links before writing
        for sub in ("figures", "artifacts"):
            store.check_tree(sub)
    out.create()
    try:
        out.write_suite(suite.text)
        for store in stores:
            for sub in ("figures", "artifacts"):
                _copy_regular_files(store, sub, out)
        return _merged(stores, summaries, shards, n, suite, cases, models, plan, registry,
                       out, command, baseline)
    finally:
        out.unlock()


def _copy_regular_files(store: "Any", sub: str, out: "Any") -> None:
    """Copy the regular files under ``store.path / sub`` into ``out`` (a symbolic link or
    any other kind of file there is refused, never followed)."""
    for path in store.check_tree(sub):
        out.write_bytes(path.relative_to(store.path).as_posix(), path.read_bytes())


def _merged(stores: list["Any"], summaries: list[dict[str, Any]], shards: dict[int, Any],
            n: int, suite: Suite, cases: dict, models: dict, plan: list, registry: Registry,
            out: "Any", command: list[str] | None, baseline: "Any") -> tuple[RunResult, int]:
    s0 = summaries[0]
    result = RunResult(suite, s0["seed"], s0["device"], min(s["started"] for s in summaries))
    result.finished = max((s.get("finished") or "") for s in summaries) or None
    result.seconds = max(float(s.get("seconds", 0.0)) for s in summaries)
    for _, test, mid in plan:
        case, records = cases[test.name, mid]
        result.cases.append(case)
        result.records.extend(records)
    result.models = {mid: models[mid] for mid in [*suite.models, *models] if mid in models}
    built = check_plugins(suite, registry)
    options = dict(s0.get("options", {}))
    options.update(resumed=0, baseline=str(baseline.path) if baseline is not None else None)
    static = {
        "suite": s0["suite"], "command": command or [], "options": options,
        "merged": [{"path": str(shards[k].path), "shard": [k, n],
                    "seconds": summaries[stores.index(shards[k])].get("seconds")}
                   for k in sorted(shards)],
        "versions": s0.get("versions", {}), "device_info": s0.get("device_info", {}),
        "plugins": _plugins_used(registry, built),
    }
    if baseline is not None:
        baseline.check()
    return result, _final_save(_saver(suite, built, out, static, baseline), result)
