"""The command line: parse arguments, call the core, print, and turn errors into exit codes.

Exit codes: 0 all good; 1 a gate failed or a test errored (the others still ran and were
written); 2 invalid input (suite, arguments, missing or malformed files, unknown plugin, a
broken model); 130 interrupted (SIGINT, Ctrl-C); 143 terminated (SIGTERM). Either signal
stops a run the same way: what finished is saved, the run is marked interrupted, and the
command to resume it is printed.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import click

from .errors import HarnessError, Interrupted

KINDS = ("model", "dataset", "attack", "metric", "analysis", "reporter")


def _err(msg: str) -> None:
    click.echo(msg, err=True)


@contextmanager
def _tqdm_progress(desc: str, total: int | None = None, unit: str = "it") -> Iterator[Any]:
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr,
               disable=None, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


def _import_in_progress() -> bool:
    """Whether a module is being imported right now (its spec says it is initializing)."""
    for module in list(sys.modules.values()):
        try:
            spec = vars(module).get("__spec__")
        except TypeError:  # an object without __dict__ standing in for a module
            continue
        if spec is not None and getattr(spec, "_initializing", False):
            return True
    return False


class _StopSignals:
    """SIGINT and SIGTERM while a run or a merge works: the first raises
    :class:`~harness.errors.Interrupted` in the main thread (the runner saves what finished
    and marks the run interrupted); later ones, and any once :meth:`defer` was called (the
    run is saved), are only noted, so that saving and reporting finish.

    A signal that arrives while a module is being imported waits until the import is done
    (looked at again every 50 ms): an import cut short leaves compiled extensions (pandas,
    torch) half-initialized, and importing them again fails or crashes the process."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    RETRY_S = 0.05

    def __init__(self) -> None:
        self.received: int | None = None
        self.raised = False
        self.deferred = False
        self._retrying = False
        self._lock = threading.Lock()
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        with self._lock:  # a pending retry does nothing from now on
            self.deferred = True
            for sig, old in self._old.items():
                signal.signal(sig, old)

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = self.received or signum
        if self.raised or self.deferred:
            return
        if _import_in_progress():
            if not self._retrying:
                self._retrying = True
                timer = threading.Timer(self.RETRY_S, self._again)
                timer.daemon = True
                timer.start()
            return
        self.raised = True
        raise Interrupted(self.received)

    def _again(self) -> None:
        """(In a timer thread) deliver the pending signal again, to look at the imports."""
        with self._lock:
            self._retrying = False
            if not (self.raised or self.deferred) and self.received is not None:
                os.kill(os.getpid(), self.received)

    def defer(self) -> None:
        self.deferred = True


def _parse_shard(ctx: click.Context, param: click.Parameter,
                 value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    k, sep, n = value.partition("/")
    if not (sep and k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        raise click.BadParameter(f"{value!r} is not K/N with 1 <= K <= N, such as 2/4")
    return int(k), int(n)


def _event_printer(quiet: bool):
    """Progress on stderr: a line per model and per case, and per case a bar of its images
    (images/s and the time left) that moves as its chunks finish."""
    bars: dict[str, Any] = {}

    def on_event(kind: str, info: dict[str, Any]) -> None:
        if quiet and kind != "hook_error":
            return
        from tqdm import tqdm

        if kind == "case_start" and info.get("images"):
            key = f"{info['test']}::{info['model']}"
            bars[key] = tqdm(total=info["images"], desc=f"{info['test']} x {info['model']}",
                             unit="img", leave=False, file=sys.stderr, disable=None,
                             dynamic_ncols=True)
            return
        if kind == "chunk_end":
            bar = bars.get(info["case"])
            if bar is not None:
                bar.update(info["images"])
            return
        if kind == "hook_error":
            tqdm.write(f"warning: {info['error']}", file=sys.stderr)
            return
        if kind == "start":
            line = f"running {info['cases']} case(s) on {info['device']}, seed {info['seed']}"
            if info.get("resumed"):
                line += f" ({info['resumed']} finished earlier, taken over)"
        elif kind == "model_start":
            line = f"  model {info['model']}: loading"
        elif kind == "model_end":
            status = "ready" if info["status"] == "ok" else f"FAILED: {info['error']}"
            line = f"  model {info['model']}: {status} ({info['seconds']:.1f} s)"
        elif kind == "case_end":
            bar = bars.pop(f"{info['test']}::{info['model']}", None)
            if bar is not None:
                bar.close()
            status = {"ok": "ok", "partial": "PARTIAL (chunks left to run)"}.get(
                info["status"], f"ERROR: {info['error']}")
            when = "earlier run" if info.get("resumed") else f"{info['seconds']:.1f} s"
            if info.get("images") and not info.get("resumed") and info["seconds"] > 0:
                when += f", {info['images'] / info['seconds']:.1f} img/s"
            if info.get("batch_size"):
                when += f", batch size lowered to {info['batch_size']} to fit in memory"
            line = f"[{info['n']}/{info['of']}] {info['test']} x {info['model']}: {status} ({when})"
        else:
            return
        tqdm.write(line, file=sys.stderr)

    return on_event


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="robustness-harness", prog_name="harness")
def cli() -> None:
    """Robustness tests for neural networks: plugins, YAML suites, tabulated reports."""


@cli.command()
@click.argument("name", required=False)
@click.option("--kind", type=click.Choice(KINDS), help="Only plugins of this kind.")
@click.option("-v", "--verbose", is_flag=True,
              help="Also each plugin's parameters (types, defaults, descriptions).")
def plugins(name: str | None, kind: str | None, verbose: bool) -> int:
    """List the installed plugins: kind, name, the entry point (what blocking names) and the
    distribution providing each; with NAME (or -v), their parameters. Plugin packages that
    could not be loaded are listed after them with the exact line that blocks them (exit 1)."""
    from tabulate import tabulate

    from .plugins import default_registry

    registry = default_registry()
    entries = [e for e in registry.entries(kind) if name is None or e.name == name]
    if name is not None and not entries:
        if kind is not None:
            registry.get(kind, name)   # unknown: one line, with that kind's names
        import difflib

        from .errors import PluginError

        names = sorted({e.name for e in registry.entries()})
        close = difflib.get_close_matches(name, names, n=1)
        raise PluginError(f"no plugin is named {name!r}",
                          hint=(f"did you mean {close[0]!r}? " if close else "")
                          + "harness plugins lists them all")
    if name is None:
        rows = [[e.kind, e.name, e.plugin, e.distribution, e.summary] for e in entries]
        click.echo(tabulate(_wrapped(rows, [None, None, None, None, 60]),
                            headers=["kind", "name", "entry point", "distribution",
                                     "description"],
                            tablefmt="simple", disable_numparse=True))
    if name is not None or verbose:
        for e in entries:
            click.echo(f"\n{e.kind} {e.name} ({e.distribution}, entry point {e.plugin})")
            doc = _doc(e.cls)
            if doc:
                click.echo(f"  {doc}")
            rows = _wrapped(_param_rows(e.cls), [None, 30, 20, 60])
            click.echo(tabulate(rows, headers=["parameter", "type", "default", "description"],
                                tablefmt="simple", disable_numparse=True)
                       if rows else "  (no parameters)")
    for (k, n), why in sorted(registry.conflicts.items()):
        click.echo(f"CONFLICT {k} {n}: {why}")
    for b in registry.broken:
        click.echo(f"BROKEN {b.line()}")
    return 1 if registry.broken or registry.conflicts else 0


def _wrapped(rows: list[list[Any]], widths: list[int | None]) -> list[list[str]]:
    """Cells wrapped at the given widths (tabulate's own maxcolwidths turns the text "False"
    into True)."""
    import textwrap

    return [[textwrap.fill(str(cell), width) if width and len(str(cell)) > width
             else str(cell) for cell, width in zip(row, widths)] for row in rows]


def _doc(cls: type) -> str:
    import inspect

    doc = (inspect.getdoc(cls) or "").strip()
    return " ".join(doc.split("\n\n")[0].split())


def _param_rows(cls: Any) -> list[list[str]]:
    """Parameter, type, default and description of every parameter of a plugin class."""
    from .params import spec_fields

    model, keys = cls.params_model()
    specs = spec_fields(model)
    rows = []
    for field, info in model.model_fields.items():
        if field in specs:
            shown = f"{specs[field]} spec"
        else:
            shown = _type_name(info.annotation)
        default = "(required)" if info.is_required() else repr(info.default)
        rows.append([keys.get(field, field), shown, default, info.description or ""])
    return rows


def _type_name(annotation: Any) -> str:
    """A parameter's type as a user writes it in a suite: ``float | list[float]``,
    ``'auto' | int``, validators and constraints left out."""
    import types
    import typing

    if annotation is None or annotation is type(None):
        return "None"
    if annotation is Any:
        return "any"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Union or origin is types.UnionType:
        names: list[str] = []
        for arg in sorted(args, key=lambda a: a is type(None)):   # None last
            name = _type_name(arg)
            if name not in names:
                names.append(name)
        return " | ".join(names)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin is not None:
        base = getattr(origin, "__name__", str(origin))
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{base}[{inner}]" if inner else base
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


_NO_CODE_HELP = ("Refuse a suite that names code to import and run (a model factory such as "
                 "'package.module:callable'), before anything is imported; "
                 "$HARNESS_ALLOW_FACTORIES=pkg1,pkg2 allows those packages only.")


@cli.command()
@click.argument("suite")
@click.option("--no-code", is_flag=True, help=_NO_CODE_HELP)
@click.option("-v", "--verbose", is_flag=True, help="Also list the cases the suite runs.")
def validate(suite: str, no_code: bool, verbose: bool) -> int:
    """Check SUITE (a YAML file or a bundled suite's name) without running it: the schema,
    every plugin and its parameters; list the code it would import and call."""
    from .plan import Plan
    from .plugins import default_registry
    from .suite import load_suite

    registry = default_registry()
    s = load_suite(suite, registry, no_code=no_code)
    plan = Plan(s, registry)
    click.echo(f"{suite}: valid ({len(s.models)} model(s), {len(s.tests)} test(s), "
               f"{len(plan.cases)} case(s), {len(s.gates)} gate(s))")
    if verbose:
        click.echo("cases (each cut into chunks of images when it runs):")
        for line in plan.describe():
            click.echo(f"  {line}")
    if s.code:
        click.echo("code it imports and calls when it runs (a suite is code: run it only if "
                   "you would run its code):")
        for ref in s.code:
            where = f"line {ref.line}: " if ref.line else ""
            field = ".".join(str(p) for p in ref.loc)
            click.echo(f"  {where}{field}: {ref.module} -> {ref.target} ({ref.plugin})")
    else:
        click.echo("code it imports and calls: none beyond the installed plugins")
    return 0


@cli.command()
@click.argument("suite", default="quickstart")
@click.option("--out", type=click.Path(path_type=Path),
              help="Run folder to write (default reports/<suite name>-<timestamp>/).")
@click.option("--device", help="auto, cpu, cuda or cuda:N (default: the suite's, else auto).")
@click.option("--data-dir", type=click.Path(path_type=Path),
              help="Folder holding datasets (e.g. DIR/mnist/*.gz); also $HARNESS_DATA_DIR.")
@click.option("--limit", type=click.IntRange(min=1), help="At most N images per test.")
@click.option("--seed", type=int, help="Override the suite's seed.")
@click.option("--no-cache", is_flag=True, help="Retrain models instead of using cached weights.")
@click.option("--cache-dir", type=click.Path(path_type=Path),
              help="Model/data cache (default $HARNESS_CACHE_DIR or ~/.cache/robustness-harness).")
@click.option("--baseline", type=click.Path(path_type=Path),
              help="An earlier run folder, for the suite's max_drop (regression) gates.")
@click.option("--reuse", type=click.Path(path_type=Path),
              help="An earlier run folder: reuse its saved adversarial examples where they were "
                   "made the same way (transfer tests).")
@click.option("--resume", type=click.Path(path_type=Path),
              help="A run folder of this suite that was interrupted or had failing cases: "
                   "finish it there, running only the cases it did not finish.")
@click.option("--shard", callback=_parse_shard, metavar="K/N",
              help="Run only shard K of N (1-based): for splitting a suite across machines or "
                   "GPUs; combine the N run folders with 'harness merge'.")
@click.option("--junit", type=click.Path(path_type=Path),
              help="Also write JUnit XML here (one testcase per case and per gate).")
@click.option("--threads", type=click.IntRange(min=1),
              help="CPU threads for torch (default: torch's choice, one per core).")
@click.option("--no-code", is_flag=True, help=_NO_CODE_HELP)
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local",
              show_default=True,
              help="Where chunks run: in this process, or as Ray tasks (extra [ray]).")
@click.option("--address", help="With --executor ray: the Ray cluster to join (default: start "
                                "a local one).")
@click.option("--workers", type=click.IntRange(min=0),
              help="DataLoader worker processes reading the data (default: the dataset's).")
@click.option("--report", "reporters", multiple=True, metavar="REPORTER",
              help="Also send the finished run to this reporter (e.g. mlflow); repeatable.")
@click.option("--report-option", "report_options", multiple=True, metavar="KEY=VALUE",
              help="A parameter of the --report reporters, e.g. experiment=nightly.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output; tables only.")
def run(suite: str, out: Path | None, device: str | None, data_dir: Path | None,
        limit: int | None, seed: int | None, no_cache: bool, cache_dir: Path | None,
        baseline: Path | None, reuse: Path | None, resume: Path | None,
        shard: tuple[int, int] | None, junit: Path | None, threads: int | None,
        no_code: bool, executor: str, address: str | None, workers: int | None,
        reporters: tuple[str, ...], report_options: tuple[str, ...], quiet: bool) -> int:
    """Run SUITE (a YAML file, or the name of a bundled suite; default: quickstart), print its
    tables and write its run folder. SIGINT or SIGTERM stops it: what finished is saved and
    the command that finishes it is printed (exit 130 or 143)."""
    if address is not None and executor != "ray":
        raise HarnessError("--address names a Ray cluster; add --executor ray")
    with _StopSignals() as stops:
        return _run(suite, out, device, data_dir, limit, seed, no_cache, cache_dir, baseline,
                    reuse, resume, shard, junit, threads, no_code, quiet, stops,
                    executor=executor, address=address, workers=workers,
                    reporters=reporters, report_options=report_options)


def _run(suite: str, out: Path | None, device: str | None, data_dir: Path | None,
         limit: int | None, seed: int | None, no_cache: bool, cache_dir: Path | None,
         baseline: Path | None, reuse: Path | None, resume: Path | None,
         shard: tuple[int, int] | None, junit: Path | None, threads: int | None,
         no_code: bool, quiet: bool, stops: _StopSignals, executor: str = "local",
         address: str | None = None, workers: int | None = None,
         reporters: tuple[str, ...] = (), report_options: tuple[str, ...] = ()) -> int:
    from .context import resolve_device, silent_progress
    from .plugins import default_registry
    from .runner import RunOptions, run_suite
    from .store import RunStore, default_run_dir
    from .suite import load_suite

    if data_dir is not None and not data_dir.is_dir():
        raise HarnessError(f"--data-dir {data_dir}: no such folder")
    if device is not None:
        resolve_device(device)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    if reuse is not None:
        RunStore(reuse).check()
        RunStore(reuse).check_tree("artifacts")  # its saved examples: regular files only
    if resume is not None:
        if out is not None and out.resolve() != resume.resolve():
            raise HarnessError("--resume continues a run in its own folder; drop --out, or "
                               "give it the same folder")
        if not RunStore(resume).started_only():  # killed before it saved anything: resumable
            RunStore(resume).check()
        out = resume
    base_store = None
    if baseline is not None:
        base_store = RunStore(baseline)
        base_store.check()
    registry = default_registry()
    # unknown reporters or bad parameters: before the run
    extra = [_reporter(registry, r, report_options) for r in reporters]
    s = load_suite(suite, registry, no_code=no_code)
    name = f"{s.name}-shard{shard[0]}of{shard[1]}" if shard else s.name
    store = RunStore(out or default_run_dir(name))
    options = RunOptions(device=device, seed=seed, data_dir=data_dir, limit=limit, reuse=reuse,
                         resume=resume is not None, shard=shard,
                         cache_dir=cache_dir, use_cache=not no_cache, workers=workers,
                         executor=executor, address=address,
                         progress=silent_progress if quiet else _tqdm_progress,
                         on_event=_event_printer(quiet))
    again = f"harness run {suite}{f' --shard {shard[0]}/{shard[1]}' if shard else ''} " \
            f"--resume {store.path}"
    try:
        result, code = run_suite(s, registry, store, options, command=sys.argv,
                                 baseline=base_store)
    except KeyboardInterrupt:  # stopped before the run could save its state
        if store.path.is_dir():
            _err(f"to finish it: {again}")
        raise
    stops.defer()  # the run is saved: a signal now only cuts the report short
    _finish(store, result, junit, registry)
    for reporter in extra:
        from .report import run_view

        _err(_publish(reporter, run_view(store)))
    if result.interrupted or result.errors:
        _err(f"to finish it (only the unfinished or failed cases run again): {again}")
    return code


def _finish(store: Any, result: Any, junit: Path | None, registry: Any = None) -> None:
    """Write report.md (and JUnit XML), print the tables, the errors and the folder: the
    markdown, junit and text reporters, as any reporter is used."""
    from .plugins import default_registry
    from .report import run_view

    registry = registry or default_registry()
    view = run_view(store)
    store.write_text("report.md", _reporter(registry, "markdown").render(view))
    if junit is not None:
        from .store import atomic_write

        atomic_write(junit, _reporter(registry, "junit").render(view))
    click.echo(_reporter(registry, "text").render(view), nl=False)
    for case in result.errors:
        _err(f"error: {case.test} x {case.model}: {case.error}")
    if (store.path / "errors.log").exists():
        _err(f"tracebacks of internal errors: {store.path / 'errors.log'}")
    _err(f"run folder: {store.path}")


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path),
              help="Run folder to write (default reports/<suite name>-<timestamp>/).")
@click.option("--baseline", type=click.Path(path_type=Path),
              help="An earlier run folder, for the suite's max_drop (regression) gates.")
@click.option("--junit", type=click.Path(path_type=Path),
              help="Also write JUnit XML here (one testcase per case and per gate).")
def merge(run_dirs: tuple[Path, ...], out: Path | None, baseline: Path | None,
          junit: Path | None) -> int:
    """Combine the run folders of a suite's shards (harness run SUITE --shard K/N, one per K)
    into one run folder, judge the gates on the whole, and print the tables. No model runs:
    every number is computed again from the shards' per-image ledgers, so it is the number of
    a run in one go, and so is the exit code."""
    from .merge import merge_runs
    from .plugins import default_registry
    from .store import RunStore, default_run_dir

    stores = [RunStore(p) for p in run_dirs]
    stores[0].check()  # for its suite's name; merge_runs checks every folder
    base_store = None
    if baseline is not None:
        base_store = RunStore(baseline)
        base_store.check()
    # checked like a suite's name (summary.json's schema): it cannot leave reports/
    name = stores[0].read_summary().suite.name
    store = RunStore(out or default_run_dir(name))
    with _StopSignals() as stops:
        registry = default_registry()
        result, code = merge_runs(stores, registry, store, command=sys.argv,
                                  baseline=base_store)
        stops.defer()
        _finish(store, result, junit, registry)
    return code


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--format", "fmt", default="text", show_default=True, metavar="REPORTER",
              help="A reporter: text, markdown, html, junit, mlflow, or one a plugin package "
                   "adds (harness plugins --kind reporter).")
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Write to this file (html default: RUN_DIR/report.html) instead of printing.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="A reporter parameter (YAML value), e.g. --option experiment=nightly.")
def report(run_dir: Path, fmt: str, output: Path | None, options: tuple[str, ...]) -> int:
    """Re-render a run folder's report without recomputing anything, or send it to a
    reporter such as MLflow."""
    from .plugins import default_registry
    from .report import run_view
    from .store import RunStore, atomic_write

    registry = default_registry()
    reporter = _reporter(registry, fmt, options)
    store = RunStore(run_dir)
    view = run_view(store)
    if reporter.suffix is None:   # a reporter that publishes (a tracker)
        click.echo(_publish(reporter, view))
        return 0
    from .base import blame

    with blame(reporter, "rendering the report"):
        text = reporter.render(view)
    if fmt == "html" and output is None:
        output = store.path / "report.html"
    if output is None:
        click.echo(text, nl=False)
    else:
        atomic_write(output, text)
        click.echo(f"wrote {output}")
    return 0


def _reporter(registry: Any, name: str, options: tuple[str, ...] = ()) -> Any:
    import yaml

    params: dict[str, Any] = {}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise HarnessError(f"--option {item!r} is not KEY=VALUE")
        try:
            params[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            params[key] = value
    from .errors import ParamError

    try:
        return registry.build("reporter", name, params)
    except ParamError as exc:
        raise HarnessError(f"reporter {name!r}: {exc.message}", hint=exc.hint) from None


def _publish(reporter: Any, view: Any) -> str:
    from .base import blame

    with blame(reporter, "publishing the run"):
        return reporter.publish(view)


#: click >= 8.2 raises this for a bare ``harness``: show the help, it is not an error
_NO_ARGS_HELP: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())


@cli.command()
@click.argument("suite")
@click.argument("model_id")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--device", help="auto, cpu, cuda or cuda:N (default: the suite's).")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Where datasets live.")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="The model cache.")
@click.option("--seed", type=int, help="Override the suite's seed.")
@click.option("--opset", type=int, help="ONNX opset (default: the exporter's).")
@click.option("--dynamo/--legacy", default=True, show_default=True,
              help="torch.onnx's current (dynamo) exporter, or the legacy TorchScript one.")
@click.option("--no-code", is_flag=True, help=_NO_CODE_HELP)
def export(suite: str, model_id: str, out: Path, device: str | None, data_dir: Path | None,
           cache_dir: Path | None, seed: int | None, opset: int | None, dynamo: bool,
           no_code: bool) -> int:
    """Export MODEL_ID of SUITE to ONNX at OUT, checked against the original on a batch."""
    from .export import export_suite_model

    info = export_suite_model(suite, model_id, out, device=device, data_dir=data_dir,
                              cache_dir=cache_dir, seed=seed, opset=opset, dynamo=dynamo,
                              no_code=no_code)
    click.echo(f"wrote {info['path']} ({info['exporter']} exporter, opset {info['opset']}, "
               f"{info['bytes'] / 1e6:.2f} MB)")
    click.echo(f"checked on {info['check']}: max |logit difference| {info['max_abs_diff']:.3g} "
               f"(allowed {info['allowed_diff']:.3g})")
    return 0


@cli.command()
@click.argument("run_a", type=click.Path(path_type=Path))
@click.argument("run_b", type=click.Path(path_type=Path))
@click.option("--test", help="Only this test.")
@click.option("--metric", help="Only this metric.")
@click.option("--images", is_flag=True,
              help="Also list the images that changed outcome (by image id).")
def compare(run_a: Path, run_b: Path, test: str | None, metric: str | None,
            images: bool) -> int:
    """Show the metrics of two run folders side by side, with their changes (B - A), and,
    image by image, how many images changed outcome each way."""
    from tabulate import tabulate

    from .report.compare import compare_tables, image_changes
    from .store import RunStore

    a, b = RunStore(run_a), RunStore(run_b)
    tables = compare_tables(a, b, test=test, metric=metric)
    tables += image_changes(a, b, test=test, images=images)
    for t in tables:
        click.echo(t.title)
        click.echo(tabulate(t.rows, headers=t.headers, tablefmt="simple", disable_numparse=True)
                   if t.rows else "(nothing in common)")
        for note in t.notes:
            click.echo(f"  {note}")
        click.echo()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``harness`` command; returns (and exits with) the exit code."""
    try:
        code = cli.main(args=argv, prog_name="harness", standalone_mode=False)
    except HarnessError as exc:
        _err(f"error: {exc}")
        code = exc.exit_code
    except _NO_ARGS_HELP as exc:
        click.echo(exc.format_message())
        code = 0
    except click.UsageError as exc:
        cmd = exc.ctx.command_path if exc.ctx else "harness"
        _err(f"error: {exc.format_message()} (see '{cmd} --help')")
        code = 2
    except click.ClickException as exc:
        _err(f"error: {exc.format_message()}")
        code = 2
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        # Ctrl-C, or a stop signal (Interrupted), which click turns into Abort when it escapes
        # a command before the run could catch it
        cause = exc if isinstance(exc, KeyboardInterrupt) else (exc.__cause__ or exc.__context__)
        _err("terminated" if getattr(cause, "signum", None) == signal.SIGTERM else "interrupted")
        code = getattr(cause, "exit_code", 130)
    except Exception as exc:  # a bug: one line, the traceback on request
        if os.environ.get("HARNESS_DEBUG"):
            raise
        _err(f"error: internal error: {type(exc).__name__}: {exc} "
             "(run again with HARNESS_DEBUG=1 for the traceback, and please report it)")
        code = 1
    if code is None:
        code = 0
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":  # pragma: no cover
    main()
