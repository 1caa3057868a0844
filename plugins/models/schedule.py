"""How the built-in trainer minimizes (:class:`Schedule`) and its calibrated defaults, apart
from :mod:`.training` so that building a model plugin imports no torch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

OPTIMIZERS = ("auto", "adam", "lbfgs")

#: calibrated defaults per optimizer (see :mod:`.training` and the plugins' docs)
DEFAULT_EPOCHS = {"adam": 20, "lbfgs": 100}
DEFAULT_LR = {"adam": 1e-2, "lbfgs": 1.0}
#: with Adam, the default number of epochs is raised until training takes this many steps,
#: so that small data sets (a few minibatches per epoch) are still trained to convergence
MIN_DEFAULT_STEPS = 2000


@dataclass(frozen=True)
class Schedule:
    """How to minimize: ``optimizer`` (adam or lbfgs), ``epochs``, ``lr``, ``batch_size``."""

    optimizer: str
    epochs: int
    lr: float
    batch_size: int

    @classmethod
    def resolve(cls, optimizer: str, epochs: int | None, lr: float | None, batch_size: int,
                *, convex: bool, num_examples: int,
                default_epochs: Mapping[str, int] | None = None,
                default_lr: Mapping[str, float] | None = None,
                min_steps: int = MIN_DEFAULT_STEPS) -> "Schedule":
        """Fill in the calibrated defaults (``default_epochs``/``default_lr`` per optimizer
        override :data:`DEFAULT_EPOCHS`/:data:`DEFAULT_LR`, for models calibrated apart).
        ``auto`` is L-BFGS for a convex problem, Adam otherwise; default Adam epochs rise
        on small data sets to at least ``min_steps`` steps."""
        opt = optimizer if optimizer != "auto" else ("lbfgs" if convex else "adam")
        if epochs is None:
            epochs = {**DEFAULT_EPOCHS, **(default_epochs or {})}[opt]
            if opt == "adam":
                steps_per_epoch = max(1, math.ceil(num_examples / batch_size))
                epochs = max(epochs, math.ceil(min_steps / steps_per_epoch))
        if lr is None:
            lr = {**DEFAULT_LR, **(default_lr or {})}[opt]
        return cls(opt, int(epochs), float(lr), int(batch_size))
