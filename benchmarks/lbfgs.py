"""Side-by-side benchmark of the ``lbfgs`` attack against advertorch's ``LBFGSAttack`` and
Foolbox 3's ``DDNAttack`` on the paper's FC100-100-10 MNIST net.

Same images (the first ``--n`` MNIST test images), same targets ((y + 1) mod 10), same
success definition (the model's prediction on the returned image equals the target) and
the same distortion (sqrt(sum r^2 / 784), averaged over the successful images) for all
three. Prints one table. Needs the ``[bench]`` extras (``pip install -e .[bench]``).

    python benchmarks/lbfgs.py [--device cpu] [--n 100] [--data-dir ../shared/data]
                               [--threads N] [--repeat K] [--only lbfgs advertorch ddn]

The model is the ``paper-mnist`` plugin with hidden [100, 100] and weight decay
[1e-5, 1e-5, 1e-6], as in Table 1 (trained
on the full MNIST training set on first use, a few minutes, then cached). Wall times are
those of one call on all images, after a warm-up call on two; with ``--repeat K`` the
attacks run K times in turns and the best time counts. ``--threads`` sets torch's CPU
threads for all three: on a shared machine, multi-threaded timings of these small batched
operations swing widely with other processes' load; one thread is the steadier measure.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

import torch
from tabulate import tabulate

import harness
from harness.plugins import default_registry


def load_model(ctx: harness.Context) -> harness.Model:
    """The paper's FC100-100-10 (trained on first use and cached by the plugin)."""
    plugin = ctx.registry.build("model", "paper-mnist",
                                {"hidden": [100, 100], "weight_decay": [1e-5, 1e-5, 1e-6]})
    return plugin.load(ctx)


def make_harness(model, x, y, t, ctx):
    """This harness's ``lbfgs`` with its defaults, targets (y + 1) mod 10."""
    attack = ctx.registry.build("attack", "lbfgs", {"target": "next"})
    attack(model, x[:2], y[:2], ctx)  # warm-up

    def run():
        res = attack(model, x, y, ctx)
        assert torch.equal(res.target, t)
        return res.x_adv

    return run


def make_advertorch(model, x, y, t, ctx):
    """advertorch's LBFGSAttack: targeted, 9 binary search steps x 100 iterations."""
    gradcheck = importlib.import_module("torch.autograd.gradcheck")
    if not hasattr(gradcheck, "zero_gradients"):  # removed from torch; advertorch imports it
        def zero_gradients(v):
            if isinstance(v, torch.Tensor) and v.grad is not None:
                v.grad.detach_()
                v.grad.zero_()
        gradcheck.zero_gradients = zero_gradients
    from advertorch.attacks import LBFGSAttack

    def attack(xs, ts):
        adv = LBFGSAttack(model, num_classes=10, batch_size=len(xs), binary_search_steps=9,
                          max_iterations=100, clip_min=0.0, clip_max=1.0, targeted=True)
        return adv.perturb(xs, ts)

    attack(x[:2], t[:2])  # warm-up
    return lambda: attack(x, t)


def make_ddn(model, x, y, t, ctx):
    """Foolbox 3's DDNAttack, targeted, 1000 steps."""
    import foolbox as fb

    fmodel = fb.PyTorchModel(model.module, bounds=(0, 1), device=x.device)
    ddn = fb.attacks.DDNAttack(steps=1000)

    def attack(xs, ts):
        _, clipped, _ = ddn(fmodel, xs, fb.criteria.TargetedMisclassification(ts),
                            epsilons=None)
        return clipped

    attack(x[:2], t[:2])  # warm-up
    return lambda: attack(x, t)


def timed(run, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    ap.add_argument("--n", type=int, default=100, help="number of MNIST test images")
    ap.add_argument("--data-dir", type=Path, default=Path("../shared/data"),
                    help="folder with mnist/ (the four MNIST files)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of each attack, taken in turns; the best time is reported")
    ap.add_argument("--only", nargs="*", choices=["lbfgs", "advertorch", "ddn"],
                    default=["lbfgs", "advertorch", "ddn"], help="attacks to run")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    reg = default_registry()
    ctx = harness.Context(device=harness.resolve_device(args.device), data_dir=args.data_dir,
                          registry=reg)
    model = load_model(ctx)
    data = ctx.dataset("mnist", split="test", limit=args.n)
    x = data.x.to(model.device)
    y = data.y.to(model.device)
    t = (y + 1) % 10
    with torch.no_grad():
        clean_err = float((model(x).argmax(1) != y).float().mean())
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"model: {model.name}, {len(x)} images, clean error {clean_err:.1%}, "
          f"torch threads {torch.get_num_threads()}, device {model.device}, "
          f"load average before: {load}")

    makers = {"lbfgs (this harness)": ("lbfgs", make_harness),
              "advertorch 0.2.3 LBFGSAttack": ("advertorch", make_advertorch),
              "foolbox 3 DDNAttack (1000 steps)": ("ddn", make_ddn)}
    runs = {label: make(model, x, y, t, ctx) for label, (key, make) in makers.items()
            if key in args.only}
    times: dict[str, list[float]] = {label: [] for label in runs}
    outputs = {}
    for _ in range(max(1, args.repeat)):
        for label, run in runs.items():
            outputs[label], seconds = timed(run, x.device)
            times[label].append(seconds)
            print(f"  {label}: {seconds:.2f} s", file=sys.stderr)

    results = {}
    for label, x_adv in outputs.items():
        x_adv = x_adv.detach().to(model.device)
        with torch.no_grad():
            ok = model(x_adv).argmax(1) == t
        box = bool((x_adv >= 0).all() and (x_adv <= 1).all())
        dist = ((x_adv - x).flatten(1).pow(2).sum(1) / x[0].numel()).sqrt()
        results[label] = (float(ok.float().mean()),
                          float(dist[ok].mean()) if ok.any() else float("nan"),
                          min(times[label]), box)

    ours = results.get("lbfgs (this harness)")
    rows = []
    for label, (succ, dist, seconds, box) in results.items():
        row = [label, f"{succ:.0%}", f"{dist:.5f}", f"{seconds:.3f}", "yes" if box else "NO"]
        if ours is not None:
            row += [f"{ours[1] / dist:.3f}", f"{seconds / ours[2]:.1f}x"]
        rows.append(row)
    best = "wall s" if args.repeat <= 1 else f"wall s (best of {args.repeat})"
    headers = ["attack", "success", "mean distortion", best, "in box"]
    if ours is not None:
        headers += ["lbfgs dist / this", "this time / lbfgs"]
    print(tabulate(rows, headers=headers))


if __name__ == "__main__":
    main()
