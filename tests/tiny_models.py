"""Small deterministic torch models for tests, reachable as ``factory: tiny_models:<name>``."""

from __future__ import annotations

import torch
from torch import nn


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
