"""Peak resident memory of ``harness run`` against the number of images: it must not grow.

For each image count N, a suite is written that feeds N synthetic images (3x224x224 by
default) to torchvision's resnet18 with random weights (the ``torch`` model plugin,
``weights: null``): a clean test on all N images, and ``lbfgs`` (its default settings) on
the first few of them, given by the lbfgs test's own data spec (``limit``). Each suite runs as
``harness run`` in a child process, and the child's peak resident set size is read from
the kernel when it ends (``os.wait4``'s ``ru_maxrss``: the high-water mark of the process's
resident memory, not a sample that could miss the peak).

    python benchmarks/memory.py                      # N = 200 and 2000
    python benchmarks/memory.py --sizes 200 400 2000 --lbfgs-images 2 --threads 1 --keep DIR

The clean test is cut into chunks of the smallest N (``--chunk-size``; 0 leaves the
harness's default, 222 images at 3x224x224, the 128 MB cap), so that the runs differ only in
how many chunks they stream: a run holds one chunk's images (and the model's activations
for them) at a time, whatever N is. Holding the extra images instead would take 0.57 MiB
each at 3x224x224. The script prints the peaks, their ratios and what holding the extra
images would take; it exits 1 when, from the smallest N to the largest, the peak grew by
more than a quarter of that (and by more than 32 MiB).

What moves the peak a little: the C library keeps the heap pages of the first chunk's
per-image buffers after they are freed (about 70 to 180 MiB at 3x224x224, once: a run's
peak rises from its first chunk to its second, then stays flat over any number of chunks;
``--sizes 200 400 2000`` shows the step and the plateau), and importing torch 2.14 (its
CUDA build) alone takes about 700 MiB. On 2 busy cores the default sizes take about 6
minutes, most of it the clean forward passes of resnet18 and the 2 L-BFGS images.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

#: the share of the extra images' bytes the peak may grow by before the run counts as growing
GROWTH_TOLERANCE = 0.25
#: growth (MiB) below which two peaks count as the same (allocator noise)
NOISE_MIB = 32.0


def suite_text(n: int, *, shape: list[int], classes: int, lbfgs_images: int,
               factory: str, seed: int, chunk_size: int | None = None) -> str:
    """The suite measured at ``n`` images (the clean test cut into chunks of ``chunk_size``
    images where given)."""
    data = {"use": "synthetic", "shape": shape, "num_classes": classes, "size": n}
    suite = {
        "name": f"memory-{n}",
        "seed": seed,
        "device": "cpu",
        "data": data,
        "models": {"resnet18": {"use": "torch", "factory": factory, "weights": None,
                                "kwargs": {"num_classes": classes}, "num_classes": classes}},
        "tests": [
            {"name": "clean", "metrics": ["clean_error"],
             **({"chunk_size": chunk_size} if chunk_size else {})},
            {"name": "lbfgs", "attack": {"use": "lbfgs", "target": "next"},
             "data": {**data, "limit": lbfgs_images},
             "metrics": ["clean_error", "success_rate", "mean_distortion", "seconds"]},
        ],
    }
    return yaml.safe_dump(suite, sort_keys=False)


def harness_command() -> list[str]:
    """``harness`` as installed beside this Python, or its entry point through it."""
    script = Path(sys.executable).parent / "harness"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from harness.cli import main; sys.exit(main())"]


def run_one(n: int, folder: Path, args: argparse.Namespace) -> dict:
    """Run the suite at ``n`` images in a child process; its peak RSS and what it did."""
    suite = folder / f"memory-{n}.yaml"
    suite.write_text(suite_text(n, shape=args.shape, classes=args.classes,
                                lbfgs_images=args.lbfgs_images, factory=args.factory,
                                seed=args.seed, chunk_size=args.chunk_size or None))
    out = folder / f"run-{n}"
    cmd = harness_command() + ["run", str(suite), "--out", str(out), "--device", "cpu",
                               "--threads", str(args.threads), "--no-cache", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # read the pipes on threads while waiting, so a chatty child never blocks on them
    import threading

    streams: dict[str, bytes] = {}

    def drain(name: str, pipe) -> None:
        streams[name] = pipe.read()

    readers = [threading.Thread(target=drain, args=(k, p))
               for k, p in (("out", proc.stdout), ("err", proc.stderr))]
    for r in readers:
        r.start()
    _, status, usage = os.wait4(proc.pid, 0)
    for r in readers:
        r.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(streams.get("err", b"").decode(errors="replace"))
        raise SystemExit(f"harness run of {suite} exited {proc.returncode}")
    return {"n": n, "peak_kib": usage.ru_maxrss, "seconds": seconds, **read_run(out)}


def read_run(out: Path) -> dict:
    """What a run folder says: its cases by test, the clean test's chunks, lbfgs's success."""
    summary = json.loads((out / "summary.json").read_text())
    cases = {c["test"]: c for c in summary["cases"]}
    chunks = {p["test"]: [b - a for a, b in p["chunks"]] for p in summary["plan"]}
    return {"cases": cases, "lbfgs_success": lbfgs_success(out),
            "chunk_images": {t: max(c) for t, c in chunks.items()},
            "chunks": {t: len(c) for t, c in chunks.items()}}


def lbfgs_success(run_dir: Path) -> float | None:
    """The lbfgs test's success rate, from the run's results.csv."""
    import csv

    with open(run_dir / "results.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["test"] == "lbfgs" and row["metric"] == "success_rate":
                return float(row["value"])
    return None


def report(results: list[dict], args: argparse.Namespace) -> int:
    """Print the peaks and what they say; 1 when the peak grew with the number of images."""
    mib = 1024.0
    image_mib = 4 * math.prod(args.shape) / 2 ** 20
    print(f"peak resident memory of `harness run` (os.wait4 ru_maxrss of the child process), "
          f"synthetic {'x'.join(map(str, args.shape))} images, {args.factory} "
          f"({args.classes} classes, random weights), clean test on all N images + lbfgs on "
          f"{args.lbfgs_images}, {args.threads} thread(s), cpu")
    print(f"{'N':>7} {'peak RSS MiB':>13} {'wall s':>8} {'clean chunks':>13} "
          f"{'images/chunk':>13} {'clean img/s':>12} {'lbfgs success':>14}")
    for r in results:
        clean = r["cases"]["clean"]
        rate = clean["images"] / clean["seconds"] if clean["seconds"] else float("nan")
        success = "-" if r.get("lbfgs_success") is None else f"{100 * r['lbfgs_success']:.0f}%"
        print(f"{r['n']:>7} {r['peak_kib'] / mib:>13.1f} {r['seconds']:>8.1f} "
              f"{r['chunks']['clean']:>13} {r['chunk_images']['clean']:>13} {rate:>12.1f} "
              f"{success:>14}")
    pairs = list(zip(results, results[1:]))
    if len(results) > 2:
        pairs.append((results[0], results[-1]))
    for small, big in pairs:
        grew = (big["peak_kib"] - small["peak_kib"]) / mib
        extra = big["n"] - small["n"]
        print(f"N {small['n']} -> {big['n']}: peak x{big['peak_kib'] / small['peak_kib']:.3f}, "
              f"{grew:+.1f} MiB; holding the {extra} extra images would take "
              f"{extra * image_mib:.0f} MiB")
    # the verdict compares the ends (a run's peak steps up once, from its first chunk to its
    # second, as the C library keeps the first chunk's freed buffers: see the docstring)
    small, big = results[0], results[-1]
    grew = (big["peak_kib"] - small["peak_kib"]) / mib
    held = (big["n"] - small["n"]) * image_mib
    if grew > max(GROWTH_TOLERANCE * held, NOISE_MIB):
        print(f"GROWS: from {small['n']} to {big['n']} images the peak rose by more than "
              f"{GROWTH_TOLERANCE:.0%} of the extra images' size (and more than "
              f"{NOISE_MIB:.0f} MiB)")
        return 1
    print(f"bounded: from {small['n']} to {big['n']} images the peak rose by "
          f"{max(grew, 0.0):.0f} MiB, {100 * max(grew, 0.0) / held:.0f}% of what holding the "
          "extra images would take")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 2000],
                    help="image counts to measure, in increasing order (default: 200 2000)")
    ap.add_argument("--shape", type=int, nargs="+", default=[3, 224, 224])
    ap.add_argument("--classes", type=int, default=10, help="num_classes of data and model")
    ap.add_argument("--lbfgs-images", type=int, default=2,
                    help="images the lbfgs test attacks (the first ones; default 2)")
    ap.add_argument("--factory", default="torchvision.models:resnet18")
    ap.add_argument("--threads", type=int, default=1, help="torch's CPU threads in the run")
    ap.add_argument("--chunk-size", type=int,
                    help="images per chunk of the clean test (default: the smallest size, so "
                         "that the runs differ only in their number of chunks; 0: the "
                         "harness's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, help="keep the suites and run folders in this folder")
    args = ap.parse_args(argv)
    if sorted(args.sizes) != args.sizes or len(set(args.sizes)) != len(args.sizes):
        ap.error("--sizes must increase")
    if args.lbfgs_images > min(args.sizes):
        ap.error("--lbfgs-images must not exceed the smallest size")
    if args.chunk_size is None:
        args.chunk_size = min(args.sizes)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        folder = args.keep
        results = [run_one(n, folder, args) for n in args.sizes]
    else:
        with tempfile.TemporaryDirectory(prefix="harness-memory-") as tmp:
            results = [run_one(n, Path(tmp), args) for n in args.sizes]
    return report(results, args)


if __name__ == "__main__":
    sys.exit(main())
