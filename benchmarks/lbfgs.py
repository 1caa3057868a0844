"""The ``lbfgs`` attack beside Foolbox 3's ``DDNAttack`` (and, optionally, advertorch's
``LBFGSAttack``) on the paper's MNIST models, a convolutional MNIST net, a CIFAR-size ResNet
and a random-weight torchvision resnet18 at 3x224x224.

Every attack sees the same images and targets ((y + 1) mod K, y the model's own prediction
for the resnet18 and the label elsewhere); success means the model's prediction on the
returned image is the target; the distortion is the paper's sqrt(sum r^2 / n), averaged
over the successful images. ``lbfgs`` runs with its default settings. Per model the table
gives success, mean distortion, wall time (one call on all images, after a warm-up on two;
with ``--repeat K`` the best of K, the attacks taking turns), the time ratio DDN / lbfgs,
the distortion ratio lbfgs / DDN, gradient and forward passes per image, and the share of
the attack's time spent inside the model's own forward and backward passes, measured in a
separate run by timing every model call (``model_time.ModelClock``: hooks on the model's
output and input bound its backward pass; on CUDA each boundary synchronizes).

    pip install -e '.[bench]'
    python benchmarks/lbfgs.py --data-dir ../shared/data --threads 1 --repeat 3

Models (``--models``, default all): ``fc10-1e-4 fc10-1e-2 fc10-1 fc100-100-10 fc200-200-10
ae400-10`` (Table 1's, from the ``paper-mnist`` plugin, trained on first use and cached),
``conv`` (``paper-mnist`` with conv [16, 32] and hidden [128], the unit-probe net),
``resnet-fashion32`` (a ResNet-8 with 16-32-64 channels on Fashion-MNIST padded to
3x32x32, trained for one epoch on first use and cached beside the harness's models) and
``resnet18-224`` (torchvision's resnet18 with random weights on Fashion-MNIST images
resized to 3x224x224; slow on a CPU: ``--n-224`` images, 4 by default, and DDN with
``--ddn-steps-224`` steps, 100 by default, since its 1000 steps would take most of an hour
on two cores). ``--n`` images (100) elsewhere: the first test images.
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from tabulate import tabulate
from torch import nn

import harness
from harness.plugins import default_registry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_time import ModelClock  # noqa: E402

PAPER = {
    "fc10-1e-4": {"hidden": [], "weight_decay": 1e-4},
    "fc10-1e-2": {"hidden": [], "weight_decay": 1e-2},
    "fc10-1": {"hidden": [], "weight_decay": 1.0},
    "fc100-100-10": {"hidden": [100, 100], "weight_decay": [1e-5, 1e-5, 1e-6]},
    "fc200-200-10": {"hidden": [200, 200], "weight_decay": [1e-5, 1e-5, 1e-6]},
    "ae400-10": {"autoencoder": 400, "weight_decay": 1e-6},
    "conv": {"conv": [16, 32], "hidden": [128]},
}
MODELS = list(PAPER) + ["resnet-fashion32", "resnet18-224"]
FASHION = Path("/usr/share/datasets/fashion-mnist")


# --------------------------------------------------------------------------- data
def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        data = f.read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion(folder: Path, split: str, n: int | None, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST images as 3 x size x size in [0, 1] (padded to 32, or resized)."""
    prefix = "train" if split == "train" else "t10k"
    try:
        x = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")[:n]
        y = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")[:n]
    except FileNotFoundError:
        raise SystemExit(f"Fashion-MNIST not found in {folder}; give --fashion-dir "
                         "(the four idx .gz files)") from None
    x = torch.from_numpy(x.copy()).float().div_(255)[:, None]
    if size == 32:
        x = nn.functional.pad(x, (2, 2, 2, 2))
    else:
        x = nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x.clamp_(0, 1).expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(y.astype(np.int64))


# --------------------------------------------------------------------------- models
class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.skip = nn.Sequential() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.b1(self.c1(x)))
        return torch.relu(self.b2(self.c2(out)) + self.skip(x))


def resnet8(classes: int = 10) -> nn.Module:
    """A CIFAR-style ResNet-8: a 3x3 stem and three stages of one residual block each."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         Block(16, 16, 1), Block(16, 32, 2), Block(32, 64, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes))


def train_resnet(ctx: harness.Context, folder: Path) -> nn.Module:
    """ResNet-8 on Fashion-MNIST at 3x32x32, one epoch of Adam, cached."""
    path = Path(ctx.cache_dir) / "benchmarks" / "resnet8-fashion32-seed0.pt"
    net = resnet8()
    if path.is_file():
        net.load_state_dict(torch.load(path, weights_only=True))
        return net.eval()
    print(f"training ResNet-8 on Fashion-MNIST (one epoch; cached in {path})", file=sys.stderr)
    x, y = fashion(folder, "train", None, 32)
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = resnet8()
        opt = torch.optim.Adam(net.parameters(), lr=2e-3)
        order = torch.randperm(len(x), generator=gen)
        net.train()
        for i in range(0, len(x), 128):
            b = order[i:i + 128]
            loss = nn.functional.cross_entropy(net(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return net.eval()


def load(name: str, ctx: harness.Context, args) -> tuple[harness.Model, torch.Tensor, torch.Tensor]:
    """(model, images, labels) on the context's device."""
    dev = ctx.device
    if name in PAPER:
        model = ctx.registry.build("model", "paper-mnist", PAPER[name]).load(ctx)
        data = ctx.dataset("mnist", split="test", limit=args.n)
        return model, data.x.to(dev), data.y.to(dev)
    if name == "resnet-fashion32":
        net = train_resnet(ctx, args.fashion_dir).to(dev)
        x, y = fashion(args.fashion_dir, "test", args.n, 32)
        model = harness.Model(net, input_shape=(3, 32, 32), num_classes=10, device=dev,
                              name="ResNet-8 (Fashion-MNIST, 3x32x32)")
        return model, x.to(dev), y.to(dev)
    import torchvision

    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = torchvision.models.resnet18(weights=None)
    model = harness.Model(net.to(dev), input_shape=(3, 224, 224), num_classes=1000, device=dev,
                          name="resnet18 (random weights, 3x224x224)")
    x, _ = fashion(args.fashion_dir, "test", args.n_224, 224)
    x = x.to(dev)
    return model, x, model.predict(x)


# --------------------------------------------------------------------------- attacks
LBFGS_PARAMS: dict = {}


def make_lbfgs(model, x, y, t, ctx):
    attack = ctx.registry.build("attack", "lbfgs", {"target": "next", **LBFGS_PARAMS})

    def run(m=model):
        res = attack(m, x, y, ctx)
        assert torch.equal(res.target, t)
        run.last = res
        return res.x_adv

    return run


def make_ddn(steps: int):
    def make(model, x, y, t, ctx):
        import foolbox as fb

        def run(m=model):
            class Wrapped(nn.Module):          # foolbox calls a module; this one is timed
                def forward(self, z):
                    return m(z)

            fmodel = fb.PyTorchModel(Wrapped().eval(), bounds=(0, 1), device=x.device)
            _, adv, _ = fb.attacks.DDNAttack(steps=steps)(
                fmodel, x, fb.criteria.TargetedMisclassification(t), epsilons=None)
            return adv

        return run

    return make


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

    def run(m=model):
        adv = LBFGSAttack(m, num_classes=m.num_classes, batch_size=len(x),
                          binary_search_steps=9, max_iterations=100, clip_min=0.0,
                          clip_max=1.0, targeted=True)
        return adv.perturb(x, t)

    return run


def timed(run, device: torch.device, *args):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = run(*args)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t0


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    ap.add_argument("--n", type=int, default=100, help="images per model")
    ap.add_argument("--n-224", type=int, default=4, help="images for resnet18-224")
    ap.add_argument("--data-dir", type=Path, default=Path("../shared/data"),
                    help="folder with mnist/ (the four MNIST files)")
    ap.add_argument("--fashion-dir", type=Path, default=FASHION,
                    help="folder with the four Fashion-MNIST idx .gz files")
    ap.add_argument("--models", nargs="*", choices=MODELS, default=MODELS)
    ap.add_argument("--attacks", nargs="*", choices=["lbfgs", "ddn", "advertorch"],
                    default=["lbfgs", "ddn"], help="advertorch: MNIST models only")
    ap.add_argument("--lbfgs", default="", metavar="K=V,...",
                    help="lbfgs parameters other than the defaults, e.g. progress_rtol=1e-3")
    ap.add_argument("--ddn-steps", type=int, default=1000)
    ap.add_argument("--ddn-steps-224", type=int, default=100)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--repeat", type=int, default=1,
                    help="timed runs of each attack, taken in turns; the best time counts")
    args = ap.parse_args(argv)
    for item in filter(None, args.lbfgs.split(",")):
        key, _, value = item.partition("=")
        LBFGS_PARAMS[key.strip()] = yaml.safe_load(value)
    if args.threads:
        torch.set_num_threads(args.threads)
    reg = default_registry()
    ctx = harness.Context(device=harness.resolve_device(args.device), data_dir=args.data_dir,
                          registry=reg)
    load_avg = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {ctx.device}, "
          f"load average before: {load_avg}; lbfgs {LBFGS_PARAMS or 'defaults'}")

    rows = []
    goals = []
    for name in args.models:
        model, x, y = load(name, ctx, args)
        t = (y + 1) % model.num_classes
        with torch.no_grad():
            clean_err = float((model.predict(x) != y).float().mean())
        steps = args.ddn_steps_224 if name == "resnet18-224" else args.ddn_steps
        makers = {"lbfgs": make_lbfgs, "ddn": make_ddn(steps), "advertorch": make_advertorch}
        wanted = [a for a in args.attacks
                  if not (a == "advertorch" and name not in PAPER)]
        runs = {a: makers[a](model, x, y, t, ctx) for a in wanted}
        for a, run in runs.items():                   # warm-up on two images
            makers[a](model, x[:2], y[:2], t[:2], ctx)()
        times: dict[str, list[float]] = {a: [] for a in runs}
        outputs = {}
        for _ in range(max(1, args.repeat)):
            for a, run in runs.items():
                outputs[a], seconds = timed(run, x.device)
                times[a].append(seconds)
                print(f"  {name} {a}: {seconds:.2f} s", file=sys.stderr)
        # the share of time in the model: one more run of each, every model call timed
        share = {}
        per_img = {}
        for a, run in runs.items():
            clock = ModelClock(model)
            _, seconds = timed(run, x.device, clock.model)
            share[a] = clock.times.total / seconds
            if a == "lbfgs":
                res = run.last
                per_img[a] = (float(res.grad_evals.float().mean()),
                              float(res.forward_evals.float().mean()), res.failure)
        stats = {}
        for a, x_adv in outputs.items():
            x_adv = x_adv.detach().to(x.device)
            with torch.no_grad():
                ok = model.predict(x_adv) == t
            dist = ((x_adv - x).flatten(1).pow(2).sum(1) / x[0].numel()).sqrt()
            stats[a] = (float(ok.float().mean()),
                        float(dist[ok].mean()) if bool(ok.any()) else math.nan, min(times[a]))
        base = stats.get("ddn")
        for a, (succ, dist, seconds) in stats.items():
            grads, fwd, failure = per_img.get(a, (None, None, None))
            note = ""
            if failure:
                bad = [f for f in failure if f]
                if bad:
                    note = ", ".join(f"{bad.count(c)} {c}" for c in sorted(set(bad)))
            label = f"{name} ({model.name})" if name in PAPER else model.name
            rows.append([
                label if a == wanted[0] else "", f"{len(x)}" if a == wanted[0] else "",
                a if a != "ddn" else f"ddn ({steps} steps)", f"{succ:.0%}", f"{dist:.5f}",
                f"{seconds:.2f}",
                f"{base[2] / seconds:.2f}x" if base and a != "ddn" else "",
                f"{dist / base[1]:.4f}" if base and a != "ddn" else "",
                f"{grads:.0f} / {fwd:.0f}" if grads is not None else "",
                f"{share[a]:.0%}", note])
        if base and "lbfgs" in stats:
            s = stats["lbfgs"]
            goals.append((name, s[0] == 1.0, s[1] <= base[1], base[2] / s[2] >= 3,
                          share["lbfgs"] >= 0.6, clean_err))
    headers = ["model", "images", "attack", "success", "mean distortion", "wall s",
               "DDN time / this", "dist / DDN's", "grad / fwd passes per image",
               "time in model", "failures"]
    print(tabulate(rows, headers=headers))
    if goals:
        print()
        print(tabulate([[g[0], "yes" if g[1] else "NO", "yes" if g[2] else "NO",
                         "yes" if g[3] else "NO", "yes" if g[4] else "NO", f"{g[5]:.1%}"]
                        for g in goals],
                       headers=["model", "lbfgs 100%", "dist <= DDN's", ">= 3x faster",
                                ">= 60% in model", "clean error"]))


if __name__ == "__main__":
    main()
