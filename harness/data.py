"""Datasets: labelled images in [0, 1], held in memory as tensors."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch

from .base import Plugin

if TYPE_CHECKING:
    from .context import Context


@dataclass
class Data:
    """Images ``x`` (float32 ``[N, C, H, W]`` in [0, 1], on the CPU) and labels ``y`` (int64)."""

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    name: str = ""
    classes: list[str] | None = None
    _fingerprint: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"{self.name}: {self.x.shape[0]} images but {self.y.shape[0]} labels")

    def __repr__(self) -> str:
        return (f"Data({self.name!r}, n={len(self)}, input_shape={self.input_shape}, "
                f"num_classes={self.num_classes})")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def head(self, n: int | None) -> "Data":
        """The first ``n`` examples (all of them when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        return Data(self.x[:n], self.y[:n], self.num_classes, f"{self.name}[:{n}]", self.classes)

    def fingerprint(self) -> str:
        """A hash of the contents, for cache keys."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(str(tuple(self.x.shape)).encode())
            h.update(self.x.contiguous().numpy().tobytes())
            h.update(self.y.contiguous().numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint


class DatasetPlugin(Plugin):
    """Base of dataset plugins: parameters in the constructor, reading in ``load``."""

    kind: ClassVar[str] = "dataset"

    def load(self, ctx: "Context") -> Data:
        """Read the data (downloading where allowed) and return it in memory."""
        raise NotImplementedError
