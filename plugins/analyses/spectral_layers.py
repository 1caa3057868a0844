"""The layers :mod:`.spectral` bounds, by kind, and the paper's contrast normalization
(imported when bounds are computed: this module imports torch)."""

from __future__ import annotations

import torch
from torch import nn


class ContrastNorm(nn.Module):
    """The paper's contrast normalization ``x / (eps + ||x||^2)^gamma``, the norm taken over
    ``dim`` (the channels of each position by default)."""

    def __init__(self, eps: float = 1.0, gamma: float = 0.5, dim: int = 1):
        super().__init__()
        if eps <= 0:
            raise ValueError("eps must be > 0")
        self.eps, self.gamma, self.dim = float(eps), float(gamma), int(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / (self.eps + x.pow(2).sum(self.dim, keepdim=True)).pow(self.gamma)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, gamma={self.gamma}, dim={self.dim}"


#: elementwise functions whose largest slope is 1
POINTWISE_ONE = (nn.ReLU, nn.ReLU6, nn.Tanh, nn.Hardtanh, nn.Softplus, nn.Softsign, nn.CELU,
                 nn.Softshrink, nn.Tanhshrink)
#: elementwise functions that jump, so have no Lipschitz constant (Threshold only when its
#: replacement value differs from its threshold)
DISCONTINUOUS = (nn.Hardshrink, nn.Threshold)
#: layers that only move values (dropout: the identity in eval mode)
RESHAPE = (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
           nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
MAXPOOL = (nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
AVGPOOL = (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
#: every type :func:`.spectral.bound_layer` has a rule for
KNOWN_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU,
               nn.Sigmoid, nn.Hardsigmoid, nn.GELU, nn.SiLU, nn.Hardswish, nn.Softmax,
               nn.LocalResponseNorm, ContrastNorm) + POINTWISE_ONE + DISCONTINUOUS + RESHAPE \
    + MAXPOOL + AVGPOOL + BATCHNORM
