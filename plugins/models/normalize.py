"""``(x - mean) / std`` as a torch module, put in front of a network by the model plugins
given ``mean``/``std`` (imported when a model loads: this module imports torch)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """(x - mean) / std per channel (dimension 1), so the wrapped model still takes inputs in
    [0, 1]; ``rank`` is that of a batch (4 for images ``[B, C, H, W]``)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], rank: int = 4):
        super().__init__()
        view = (1, -1) + (1,) * max(0, rank - 2)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(view))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(view))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
