"""Small deterministic torch models for tests, reachable as ``factory: tiny_models:<name>``."""

from __future__ import annotations

import torch
from torch import nn

from harness import Attack, AttackResult, hookimpl


def linear(in_features: int = 64, classes: int = 10, seed: int = 0, nan: bool = False) -> nn.Module:
    """A fixed random linear classifier on flattened inputs; ``nan`` poisons one bias."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(in_features, classes))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(classes, in_features, generator=gen) * 0.3)
        model[1].bias.zero_()
        if nan:
            model[1].bias[0] = float("nan")
    return model


def digits_template(nan: bool = False) -> nn.Module:
    """A nearest-class-mean classifier on scikit-learn's digits (no training loop needed):
    logits = -||x - mean_k||^2 / 2, written as a linear layer. About 90% accurate."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32) / 16.0
    y = torch.tensor(bunch.target)
    means = torch.stack([x[y == k].mean(0) for k in range(10)])
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        model[1].weight.copy_(means)
        model[1].bias.copy_(-0.5 * (means ** 2).sum(1))
        if nan:
            model[1].bias[3] = float("nan")
    return model


def wrong_classes() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))


def not_a_module() -> str:
    return "no"


def default_init(width: int = 16) -> nn.Module:
    """Layers with torch's default (global-generator) initialization."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))


def small_conv(classes: int = 4, seed: int = 0) -> nn.Module:
    """A fixed random conv net on 3x8x8 images (a conv layer, ReLU, a linear layer)."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, classes))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model


class _OnGrid(nn.Module):
    """Wraps a digits classifier: NaN logits for any input with a pixel off the digits' grid
    of 17 levels (k/16), so clean images are fine and perturbed ones are not."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        off = ((x * 16 - (x * 16).round()).abs() > 1e-4).flatten(1).any(1)
        return torch.where(off[:, None], torch.full_like(out, float("nan")), out)


def nan_when_perturbed() -> nn.Module:
    """The nearest-mean digits classifier, with NaN logits for perturbed inputs only."""
    return _OnGrid(digits_template())


class _Sleepy(nn.Module):
    def __init__(self, inner: nn.Module, seconds: float):
        super().__init__()
        self.inner, self.seconds = inner, seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        time.sleep(self.seconds)
        return self.inner(x)


def sleepy(seconds: float = 1.0) -> nn.Module:
    """The nearest-mean digits classifier, sleeping ``seconds`` in every forward pass (a run
    that can be stopped at a known moment); ``$TINY_SLEEP`` overrides ``seconds``, so that
    the same suite can run fast when it is resumed."""
    import os

    return _Sleepy(digits_template(), float(os.environ.get("TINY_SLEEP", seconds)))


def exits(code: int = 3) -> nn.Module:
    """A factory that ends the process (a plugin bug the harness must contain)."""
    raise SystemExit(code)


def dies_once(marker: str, in_features: int = 64) -> nn.Module:
    """The nearest-mean digits classifier (or, for other inputs, a fixed linear model); the
    first process to build it (when ``marker`` does not exist yet) creates ``marker`` and is
    killed with SIGKILL (a worker lost in the middle of a task)."""
    import os
    import signal

    if not os.path.exists(marker):
        with open(marker, "w") as fh:
            fh.write(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return digits_template() if in_features == 64 else linear(in_features)


def slow_import(seconds: float = 3.0) -> nn.Module:
    """The nearest-mean classifier, from a module whose import takes ``seconds`` (and writes
    ``$SLOW_IMPORT_DONE`` when it completes): a stop signal during an import must wait for it."""
    import importlib
    import os
    import sys
    import tempfile

    folder = tempfile.mkdtemp()
    with open(os.path.join(folder, "slow_import_module.py"), "w") as fh:
        fh.write("import os, time\n"
                 f"time.sleep({seconds})\n"
                 "open(os.environ['SLOW_IMPORT_DONE'], 'w').write('done')\n")
    sys.path.insert(0, folder)
    importlib.import_module("slow_import_module")
    return digits_template()



class OutOfMemoryAbove8(Attack):
    """Leaves images as they are; runs out of (simulated) device memory on batches of more
    than 8 images; records the size of every batch it is given in ``tried``."""

    tried: list[int] = []

    def __init__(self, *, batch_size: int = 32):
        self.batch_size = batch_size

    def run(self, model, x, y, ctx):
        OutOfMemoryAbove8.tried.append(len(x))
        if len(x) > 8:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        with torch.no_grad():
            pred = model(x).argmax(1)
        return AttackResult(x_adv=x.clone(), success=pred != y)


class OutOfMemoryPlugins:
    """Registers :class:`OutOfMemoryAbove8` as the attack ``oom-above-8``."""

    @staticmethod
    @hookimpl
    def register_attacks(register):
        register("oom-above-8", OutOfMemoryAbove8)
