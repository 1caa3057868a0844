"""The harness model as the ``nn.Module`` torchattacks expects (imported when the attack
runs: this module imports torch)."""

from __future__ import annotations

import torch
from torch import nn

from harness import Model


class CountingModule(nn.Module):
    """The harness model seen as an nn.Module (what torchattacks expects), counting passes."""

    def __init__(self, model: Model):
        super().__init__()
        self.model = model
        # torchattacks reads the device from the first parameter
        self.anchor = nn.Parameter(torch.zeros(1, device=model.device), requires_grad=False)
        self.grad_passes = 0
        self.passes = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.passes += 1
        if torch.is_grad_enabled() and x.requires_grad:
            self.grad_passes += 1
        return self.model(x)
