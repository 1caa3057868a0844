"""ONNX models in the harness: conversion fidelity, and the cost of attacking through ONNX.

Two tables.

1. Conversion: the paper's FC10(1e-4), FC100-100-10 and AE400-10 (the ``paper-mnist``
   plugin, trained on first use and cached) and torchvision's resnet18 (64x64 inputs) and
   alexnet (224x224), random weights, each exported by both torch exporters (dynamo at its
   default opset, legacy at opset 17) with ``harness.export.export_model``, then loaded by
   the ``onnx`` plugin with ``gradients: convert``: the largest |logit difference| between
   torch and onnxruntime (export check, 16 random inputs) and between onnxruntime and the
   converted module (the plugin's check), and the seconds of each step.
2. L-BFGS (``lbfgs``, targets (y + 1) mod 10) on the first ``--n`` MNIST test images,
   FC100-100-10: the torch model next to its ONNX exports with converted gradients (both
   exporters) and with gradients estimated through onnxruntime (finite differences, SPSA)
   on the first ``--fd-n`` images: success rate, mean distortion sqrt(sum r^2 / 784) over
   the successes, attack seconds, and the time relative to the torch model on the same
   images.

    python benchmarks/onnx_models.py [--data-dir ../shared/data] [--n 100] [--fd-n 100]
                              [--threads N] [--repeat K] [--skip-vision]

Needs the ``onnx`` extras (``pip install -e '.[onnx]'``: onnx, onnxscript, onnx2torch).
Timings are wall times after a warm-up on two images, the best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from tabulate import tabulate

import harness
from harness.export import export_model
from harness.plugins import default_registry

ZOO = {
    "FC10(1e-4)": {"hidden": [], "weight_decay": 1e-4},
    "FC100-100-10": {"hidden": [100, 100], "weight_decay": [1e-5, 1e-5, 1e-6]},
    "AE400-10": {"autoencoder": 400, "weight_decay": 1e-6},
}
VISION = {"resnet18 (64x64)": ("resnet18", (3, 64, 64)),
          "alexnet (224x224)": ("alexnet", (3, 224, 224))}
EXPORTERS = {"dynamo": True, "legacy": False}


def vision_model(factory: str, shape: tuple[int, ...]) -> harness.Model:
    import torchvision

    torch.manual_seed(0)
    module = getattr(torchvision.models, factory)(weights=None)
    return harness.Model(module, input_shape=shape, num_classes=1000, name=factory)


def conversion_table(models: dict[str, harness.Model], folder: Path,
                     reg, ctx: harness.Context) -> tuple[list[list[str]], dict[str, str]]:
    rows, paths = [], {}
    for label, model in models.items():
        gen = torch.Generator().manual_seed(0)
        batch = torch.rand(16, *model.input_shape, generator=gen)
        for exporter, dynamo in EXPORTERS.items():
            path = folder / f"{model.name}-{exporter}.onnx"
            t0 = time.perf_counter()
            info = export_model(model, path, dynamo=dynamo, check_batch=batch)
            t_export = time.perf_counter() - t0
            t0 = time.perf_counter()
            onnx_model = reg.build("model", "onnx", {"path": str(path),
                                                     "gradients": "convert"}).load(ctx)
            t_load = time.perf_counter() - t0
            paths[f"{label}/{exporter}"] = str(path)
            rows.append([label, exporter, info["opset"], f"{info['bytes'] / 1e6:.2f}",
                         f"{info['max_abs_diff']:.1e}", f"{onnx_model.conversion_max_diff:.1e}",
                         f"{onnx_model.conversion_allowed_diff:.1e}", f"{t_export:.2f}",
                         f"{t_load:.2f}"])
            print(f"  converted {label} ({exporter})", flush=True)
    return rows, paths


def best_time(run, repeat: int):
    best, out = float("inf"), None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - t0)
    return out, best


def attack_rows(reg, ctx, original, paths, x, y, n_fd, repeat):
    attack = reg.build("attack", "lbfgs", {"target": "next"})

    def measure(model, n):
        attack(model, x[:2], y[:2], ctx)  # warm-up
        res, seconds = best_time(lambda: attack(model, x[:n], y[:n], ctx), repeat)
        ok = res.success
        dist = float(res.distortion[ok].mean()) if bool(ok.any()) else float("nan")
        return float(ok.float().mean()), dist, seconds, float(res.grad_evals.float().mean())

    rows = []
    base = {len(x): measure(original, len(x))}
    rows.append(["torch (paper-mnist)", "autograd", len(x), *base[len(x)], 1.0])
    for exporter in EXPORTERS:
        model = reg.build("model", "onnx", {"path": paths[f"FC100-100-10/{exporter}"],
                                            "gradients": "convert"}).load(ctx)
        r = measure(model, len(x))
        rows.append([f"onnx, {exporter} export", "converted", len(x), *r,
                     r[2] / base[len(x)][2]])
    for gradients in ("finite-differences", "spsa"):
        model = reg.build("model", "onnx", {"path": paths["FC100-100-10/dynamo"],
                                            "gradients": gradients}).load(ctx)
        if n_fd not in base:
            base[n_fd] = measure(original, n_fd)
            if n_fd != len(x):
                rows.append(["torch (paper-mnist)", "autograd", n_fd, *base[n_fd], 1.0])
        r = measure(model, n_fd)
        rows.append(["onnx, dynamo export", gradients, n_fd, *r, r[2] / base[n_fd][2]])
        print(f"  attacked with {gradients}", flush=True)
    return [[a, b, n, f"{s:.0%}", f"{d:.5f}", f"{t:.2f}", f"{g:.0f}", f"{ratio:.1f}x"]
            for a, b, n, s, d, t, g, ratio in rows]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="MNIST test images attacked")
    ap.add_argument("--fd-n", type=int, default=100,
                    help="images attacked through the gradient-free paths")
    ap.add_argument("--data-dir", type=Path, default=Path("../shared/data"),
                    help="folder with mnist/ (the four MNIST files)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--repeat", type=int, default=1, help="runs per attack; the best counts")
    ap.add_argument("--skip-vision", action="store_true", help="no resnet18 / alexnet")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("onnxscript").setLevel(logging.WARNING)

    reg = default_registry()
    ctx = harness.Context(data_dir=args.data_dir, registry=reg)
    models = {label: reg.build("model", "paper-mnist", params).load(ctx)
              for label, params in ZOO.items()}
    if not args.skip_vision:
        models.update({label: vision_model(*spec) for label, spec in VISION.items()})
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"load average before: {load}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        rows, paths = conversion_table(models, Path(tmp), reg, ctx)
        data = ctx.dataset("mnist", split="test", limit=args.n)
        attacks = attack_rows(reg, ctx, models["FC100-100-10"], paths, data.x, data.y,
                              min(args.fd_n, args.n), args.repeat)

    print()
    print(tabulate(rows, headers=["model", "exporter", "opset", "MB",
                                  "max |diff| torch-onnxruntime",
                                  "max |diff| onnxruntime-converted", "allowed",
                                  "export s", "load+convert+check s"]))
    print()
    best = "attack s" if args.repeat <= 1 else f"attack s (best of {args.repeat})"
    print(tabulate(attacks, headers=["FC100-100-10 model", "gradients", "images", "success",
                                     "mean distortion", best, "gradients / image",
                                     "time / torch"]))


if __name__ == "__main__":
    main()
