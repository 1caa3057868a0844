"""Peak memory of the ``lbfgs`` attack per image, in input-sized float vectors.

The attack runs on a linear classifier of 3x224x224 inputs (so that the model's own memory
is negligible) in a child process whose C library hands every large block straight back
to the system when it is freed (``MALLOC_MMAP_THRESHOLD_``): the process's peak resident
size above its size before the attack is then the peak of the attack's live tensors.

    python benchmarks/lbfgs_memory.py [--images 8] [--history 5 10]

The attack's docstring promises about ``2 * history + 15`` vectors per image.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys

SHAPE = (3, 224, 224)


def status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def child(images: int, history: int) -> dict:
    import torch
    from torch import nn

    from harness import Model
    from harness_plugins.attacks.lbfgs import LBFGS

    torch.set_num_threads(1)
    d = SHAPE[0] * SHAPE[1] * SHAPE[2]
    model = Model(nn.Sequential(nn.Flatten(), nn.Linear(d, 10)), input_shape=SHAPE,
                  num_classes=10)
    x = torch.rand(images, *SHAPE, generator=torch.Generator().manual_seed(0))
    y = model.predict(x)
    attack = LBFGS(history=history, batch_size=images)
    attack(model, x[:1], y[:1])                 # warm-up: code paths, small buffers
    gc.collect()
    before = status("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:   # resets the peak to the current size
        f.write("5")
    res = attack(model, x, y)
    peak = status("VmHWM:") - before
    return {"history": history, "images": images, "peak_mib": peak / 2 ** 20,
            "floats": peak / (images * d * 4), "success": float(res.success.float().mean())}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--history", type=int, nargs="*", default=[5, 10])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.images, args.history[0])))
        return
    from tabulate import tabulate

    rows = []
    for h in args.history:
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
        out = subprocess.run([sys.executable, __file__, "--child", "--images",
                              str(args.images), "--history", str(h)], env=env,
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append([h, r["images"], f"{r['peak_mib']:.1f}", f"{r['floats']:.1f}",
                     2 * h + 15, f"{r['success']:.0%}"])
    print(f"lbfgs on a linear model of {'x'.join(map(str, SHAPE))} inputs, peak above the "
          "start of the attack")
    print(tabulate(rows, headers=["history", "images", "peak MiB", "floats per image",
                                  "docstring: 2 h + 15", "success"]))


if __name__ == "__main__":
    main()
