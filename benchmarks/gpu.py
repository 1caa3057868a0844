"""ResNet-18 and ResNet-50 at 224x224 through the harness on a GPU: images/s and peak GPU
memory of a clean evaluation, ``lbfgs`` (its default settings) and torchattacks' PGD, and
the out-of-memory back-off forced with a batch far beyond the GPU's memory.

On one GPU (planned for about 3 minutes on an H200; at ``--budget`` seconds, 285 by
default, the running step is stopped, what it finished kept and counted, and the steps left
are skipped, each said so), with the torchattacks extra installed
(``pip install -e '.[torchattacks]'``):

    python benchmarks/gpu.py --device cuda --out reports/gpu-bench

Every code path but the back-off on a CPU, with a few images per step:

    OMP_NUM_THREADS=1 python benchmarks/gpu.py --device cpu --small [--size 32]

Each step is a suite of its own (synthetic images, torchvision's resnet18 or resnet50 with
random weights through the ``torch`` model plugin, 1000 classes) run by
``harness.runner.run_suite`` into a run folder, as ``harness run`` runs it; images/s is the
case's images over its wall time (data, clean predictions, the attack, the ledger), "attack
img/s" over the attack's own time. Peak GPU memory is ``torch.cuda.max_memory_allocated``,
reset before each step. The back-off step asks PGD for one batch of about twice the GPU's
memory (from the memory per image the PGD step measured) and reads the batch size the harness
fell back to from the run folder's summary.json.
"""

from __future__ import annotations

import argparse
import gc
import math
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

#: images per step: (clean, pgd, lbfgs) per model, on a GPU and with --small
COUNTS = {
    "full": {"resnet18": (2048, 1024, 39), "resnet50": (2048, 512, 26)},
    "small": {"resnet18": (4, 2, 1), "resnet50": (4, 2, 1)},
}
#: the back-off step asks for a batch needing this many times the GPU's memory
OOM_FACTOR = 2.0
PGD = {"use": "torchattacks", "attack": "PGD"}   # torchattacks' defaults: eps 8/255, 10 steps


@dataclass
class Step:
    name: str
    model: str
    test: str                       # clean, pgd, lbfgs, oom
    images: int
    attack: dict[str, Any] | None = None
    chunk_size: int | None = None
    # measured
    status: str = "not run"
    error: str = ""
    seconds: float = 0.0
    attack_seconds: float = 0.0
    chunks: int = 0
    chunk_images: int = 0
    batch_size: int | None = None   # summary.json's case batch_size: the size that fitted
    done: int = 0                   # images with a ledger row
    rows: int = 0                   # results.csv rows of the case
    success: float | None = None
    grad_evals: float | None = None
    peak_allocated: int | None = None
    peak_reserved: int | None = None
    notes: list[str] = field(default_factory=list)


def suite_text(step: Step, size: int, classes: int, seed: int) -> str:
    data = {"use": "synthetic", "shape": [3, size, size], "num_classes": classes,
            "size": step.images}
    test: dict[str, Any] = {"name": step.test}
    if step.attack is not None:
        test["attack"] = step.attack
        test["metrics"] = ["clean_error", "success_rate", "mean_distortion", "seconds",
                           "grad_evals"]
    else:
        test["metrics"] = ["clean_error"]
    if step.chunk_size:
        test["chunk_size"] = step.chunk_size
    suite = {"name": f"gpu-{step.name}", "seed": seed, "data": data,
             "models": {step.model: {"use": "torch", "factory": f"torchvision.models:{step.model}",
                                     "weights": None, "kwargs": {"num_classes": classes},
                                     "num_classes": classes}},
             "tests": [test]}
    return yaml.safe_dump(suite, sort_keys=False)


class Bench:
    def __init__(self, args: argparse.Namespace, folder: Path):
        import torch

        from harness.plugins import default_registry

        self.args = args
        self.folder = folder
        self.registry = default_registry()
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def run(self, step: Step) -> Step:
        """Run the step's suite through the harness and read what it did from its folder."""
        import torch

        from harness.context import silent_progress
        from harness.errors import HarnessError
        from harness.runner import RunOptions, run_suite
        from harness.store import RunStore
        from harness.suite import load_suite

        path = self.folder / f"{step.name}.yaml"
        path.write_text(suite_text(step, self.args.size, self.args.classes, self.args.seed))
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        store = RunStore(self.folder / step.name)
        options = RunOptions(device=self.args.device, seed=self.args.seed,
                             cache_dir=self.folder / "cache", use_cache=False,
                             workers=self.args.workers, progress=silent_progress)
        t0 = time.perf_counter()
        left = self.args.budget - self.elapsed() if self.args.budget else 0.0
        if left > 0:   # past the budget, the step is stopped as Ctrl-C stops a run
            signal.signal(signal.SIGALRM, _stop)
            signal.setitimer(signal.ITIMER_REAL, left)
        try:
            suite = load_suite(path, self.registry)
            result, code = run_suite(suite, self.registry, store, options,
                                     command=["benchmarks/gpu.py", step.name])
        except HarnessError as exc:
            step.status, step.error = "error", str(exc)
            return step
        except KeyboardInterrupt:   # stopped before the run saved anything
            step.status, step.error = "stopped", "at the --budget, before any chunk finished"
            return step
        except Exception as exc:    # a bug: say so, and go on with the other steps
            traceback.print_exc()
            step.status, step.error = "error", f"{type(exc).__name__}: {exc}"
            return step
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        step.seconds = time.perf_counter() - t0
        if self.cuda:
            torch.cuda.synchronize(self.device)
            step.peak_allocated = torch.cuda.max_memory_allocated(self.device)
            step.peak_reserved = torch.cuda.max_memory_reserved(self.device)
        read_folder(step, store)
        if code != 0 and step.status == "ok":
            step.status = f"exit {code}"
        return step


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def read_folder(step: Step, store: Any) -> None:
    """What the run folder says about the step's one case: status, time, chunks, the batch
    size that fitted, and whether every image has its ledger row and the case its results."""
    summary = store.summary()
    case = summary["cases"][0]
    step.status = case["status"]
    step.error = case["error"] or ""
    step.seconds = case["seconds"] or step.seconds
    step.batch_size = case["batch_size"]
    step.notes = list(case["notes"])
    sizes = [b - a for a, b in summary["plan"][0]["chunks"]]
    step.chunks, step.chunk_images = len(sizes), max(sizes)
    ledger = store.ledger()
    step.done = int(ledger["index"].nunique())
    step.rows = int(len(store.results()))
    attacked = ledger[ledger["attack"] != ""]
    if len(attacked):
        step.attack_seconds = float(attacked["seconds"].sum())
        step.success = float(attacked["success"].mean())
        step.grad_evals = float(attacked["grad_evals"].mean())


def mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2 ** 20:.0f}"


def line(step: Step) -> str:
    rate = step.images / step.seconds if step.seconds else float("nan")
    attack_rate = (f", attack {step.images / step.attack_seconds:.3g} img/s"
                   if step.attack_seconds else "")
    peak = (f", peak GPU memory {mib(step.peak_allocated)} MiB allocated "
            f"({mib(step.peak_reserved)} MiB reserved)" if step.peak_allocated is not None
            else "")
    what = f"{step.model} {step.test}: {step.images} images"
    if step.status == "partial":   # stopped at the budget: what it finished
        what = f"{step.model} {step.test}: STOPPED at the --budget, {step.done} of {step.images} images"
        rate = step.done / step.seconds if step.seconds else float("nan")
        attack_rate = (f", attack {step.done / step.attack_seconds:.3g} img/s"
                       if step.attack_seconds else "")
    elif step.status != "ok":
        return f"{what}: {step.status.upper()} {step.error}"
    return (f"{what} in {step.chunks} chunk(s) of up to {step.chunk_images}, {step.seconds:.1f} s, "
            f"{rate:.3g} img/s{attack_rate}{peak}"
            + (f", success {100 * step.success:.1f}%" if step.success is not None else "")
            + (f", {step.grad_evals:.0f} gradient evaluations per image"
               if step.grad_evals else ""))


def table(steps: list[Step]) -> str:
    from tabulate import tabulate

    rows = []
    for s in steps:
        ok = s.status in ("ok", "partial")   # partial: stopped at the budget
        done = s.images if s.status == "ok" else s.done
        rows.append([s.model, s.test, done if ok else s.images,
                     s.batch_size or s.chunk_images if ok else "-",
                     f"{s.seconds:.1f}" if ok else s.status,
                     f"{done / s.seconds:.3g}" if ok and s.seconds else "-",
                     f"{done / s.attack_seconds:.3g}" if ok and s.attack_seconds else "-",
                     mib(s.peak_allocated),
                     f"{100 * s.success:.1f}%" if s.success is not None else "-",
                     f"{s.grad_evals:.0f}" if s.grad_evals else "-"])
    return tabulate(rows, headers=["model", "test", "images", "batch", "seconds", "img/s",
                                   "attack img/s", "peak MiB", "success", "grad/img"],
                    tablefmt="github")


def back_off(bench: Bench, model: str, pgd_step: Step | None) -> Step | None:
    """PGD asked for one batch of about ``OOM_FACTOR`` times the GPU's memory: the harness
    must halve it until it fits, finish every image, and report the size that fitted."""
    import torch

    if not bench.cuda:
        print("out-of-memory back-off: skipped (it needs a GPU; on a CPU there is no device "
              "memory to run out of)", flush=True)
        return None
    if pgd_step is None or pgd_step.status != "ok" or not pgd_step.peak_allocated:
        print(f"out-of-memory back-off: skipped (the {model} PGD step, which measures the "
              "memory per image, did not run)", flush=True)
        return None
    total = torch.cuda.get_device_properties(bench.device).total_memory
    batch = min(pgd_step.chunk_images, 256)         # the adapter's default batch_size
    per_image = pgd_step.peak_allocated / batch
    # below the batch whose largest activation (a ResNet's first convolution: 64 channels at
    # half the side) reaches 2^31 elements, where some CUDA kernels fail for other reasons
    cap = (2 ** 31 - 1) // (64 * (bench.args.size // 2) ** 2) * 97 // 100
    images = max(2 * batch, min(cap, math.ceil(OOM_FACTOR * total / per_image)))
    if images * per_image < 1.2 * total:
        print(f"out-of-memory back-off: skipped (at {per_image / 2 ** 20:.0f} MiB per image, "
              f"{images} images, the most below the 2^31-element limit of CUDA kernels, "
              f"do not exceed this GPU's {total / 2 ** 30:.0f} GiB)", flush=True)
        return None
    step = Step(f"{model}-oom", model, "oom", images,
                attack={**PGD, "options": {"steps": 2}, "batch_size": images},
                chunk_size=images)
    print(f"out-of-memory back-off: {model}, torchattacks PGD (2 steps) asked for one batch "
          f"of {images} images, about {images * per_image / 2 ** 30:.0f} GiB at the "
          f"{per_image / 2 ** 20:.0f} MiB per image the PGD step used, on a GPU of "
          f"{total / 2 ** 30:.0f} GiB", flush=True)
    bench.run(step)
    if step.status != "ok":
        print(f"  FAILED: {step.status} {step.error}", flush=True)
        return step
    complete = step.done == images and step.rows > 0
    fell = (f"fell back to batch size {step.batch_size}" if step.batch_size
            else "NEVER HAD TO FALL BACK (the batch fitted)")
    print(f"  the harness {fell} (summary.json, case batch_size); {step.done} of {images} "
          f"images done in {step.seconds:.1f} s; results "
          f"{'complete' if complete else 'INCOMPLETE'} (status {step.status}, "
          f"{step.done} images in the ledger, {step.rows} rows in results.csv); peak "
          f"{mib(step.peak_allocated)} MiB allocated", flush=True)
    if not complete or not step.batch_size:
        step.status = "incomplete" if not complete else "no back-off"
    return step


def data_rate(args: argparse.Namespace, images: int) -> float:
    """Images/s of the synthetic data alone, read as a clean test reads it (one process)."""
    from harness.context import Context
    from harness_plugins.datasets.generic import Synthetic

    data = Synthetic(shape=[3, args.size, args.size], num_classes=args.classes,
                     size=images).load(Context(device="cpu", seed=args.seed))
    t0 = time.perf_counter()
    for _ in data.batches(222, 0, images, workers=args.workers):
        pass
    return images / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    ap.add_argument("--small", action="store_true",
                    help="a few images per step (checks every code path on a CPU)")
    ap.add_argument("--size", type=int, default=224, help="image side (default 224)")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--models", nargs="+", default=["resnet18", "resnet50"],
                    choices=["resnet18", "resnet50"])
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers (default 0)")
    ap.add_argument("--threads", type=int, help="torch's CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", type=float,
                    help="seconds after which the running step is stopped (what it finished "
                         "is kept) and no other starts (default: 285 on a GPU, none on a CPU)")
    ap.add_argument("--out", type=Path, help="keep the suites and run folders here")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no GPU here (use --device cpu --small)")
    try:
        import torchattacks  # noqa: F401
    except ImportError:
        ap.error("PGD comes from torchattacks: pip install -e '.[torchattacks]'")
    if args.budget is None:
        args.budget = 285.0 if args.device.startswith("cuda") else 0.0
    counts = COUNTS["small" if args.small else "full"]
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        return bench_all(args, args.out, counts)
    with tempfile.TemporaryDirectory(prefix="harness-gpu-") as tmp:
        return bench_all(args, Path(tmp), counts)


def bench_all(args: argparse.Namespace, folder: Path, counts: dict[str, tuple]) -> int:
    import torch

    bench = Bench(args, folder)
    where = (torch.cuda.get_device_name(bench.device) if bench.cuda
             else f"cpu, {torch.get_num_threads()} thread(s)")
    print(f"device: {where}; torch {torch.__version__}; synthetic 3x{args.size}x{args.size} "
          f"images, {args.classes} classes, random weights", flush=True)
    print(f"lbfgs default settings (batch_size auto: "
          f"{lbfgs_auto_batch((3, args.size, args.size))} images at this size); PGD: "
          "torchattacks' defaults (eps 8/255, 10 steps), the adapter's batch_size 256",
          flush=True)
    print(f"synthetic data alone: {data_rate(args, min(444, counts[args.models[0]][0])):.0f} "
          f"img/s (one process, workers {args.workers})", flush=True)
    if bench.cuda:   # CUDA context, kernels, cuDNN heuristics: not measured
        warm = bench.run(Step("warm-up", args.models[0], "pgd", 8, attack=PGD))
        print(f"[{bench.elapsed():.0f} s] warm-up (not measured): {warm.status} {warm.error}",
              flush=True)
    steps: list[Step] = []
    plan: list[Any] = []
    for model in args.models:
        n_clean, n_pgd, _ = counts[model]
        plan += [Step(f"{model}-clean", model, "clean", n_clean),
                 Step(f"{model}-pgd", model, "pgd", n_pgd, attack=PGD)]
    plan.append("oom")
    for model in args.models:
        plan.append(Step(f"{model}-lbfgs", model, "lbfgs", counts[model][2],
                         attack={"use": "lbfgs", "target": "next"}))
    oom_model = "resnet50" if "resnet50" in args.models else args.models[0]
    code = 0
    for item in plan:
        if args.budget and bench.elapsed() > args.budget:
            name = item if isinstance(item, str) else item.name
            print(f"{name}: skipped, {bench.elapsed():.0f} s are past the --budget of "
                  f"{args.budget:.0f} s", flush=True)
            code = 1
            continue
        if item == "oom":
            pgd = next((s for s in steps if s.model == oom_model and s.test == "pgd"), None)
            step = back_off(bench, oom_model, pgd)
            if step is not None:
                steps.append(step)
                code = code or int(step.status != "ok")
            continue
        bench.run(item)
        steps.append(item)
        print(f"[{bench.elapsed():.0f} s] {line(item)}", flush=True)
        for note in item.notes:
            print(f"  note: {note}", flush=True)
        code = code or int(item.status != "ok")
    print()
    print(table(steps))
    print(f"\nwall time {bench.elapsed():.0f} s; run folders: "
          f"{args.out if args.out else '(temporary; --out DIR keeps them)'}")
    return code


def lbfgs_auto_batch(shape: tuple[int, ...]) -> int:
    from harness_plugins.attacks.lbfgs import LBFGS

    return LBFGS().batch_size_for(shape)


if __name__ == "__main__":
    sys.exit(main())
