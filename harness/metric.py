"""Metrics: one number from one evaluation (a test on a model, for one attack setting)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from .base import Plugin

if TYPE_CHECKING:
    from .attack import AttackResult
    from .model import Model


@dataclass
class Evaluation:
    """Everything a metric may look at; tensors are on the model's device.

    ``result`` and ``adv_pred`` are None for a test without an attack.
    """

    model: "Model"
    x: torch.Tensor
    y: torch.Tensor
    clean_pred: torch.Tensor
    result: "AttackResult | None" = None
    adv_pred: torch.Tensor | None = None


class Metric(Plugin):
    """Base of metrics: ``compute`` returns a number, or None where it does not apply
    (an attack metric on a test without an attack). ``higher_is_better`` tells regression
    gates which way is worse (None: neither)."""

    kind: ClassVar[str] = "metric"
    needs_attack: ClassVar[bool] = False
    higher_is_better: ClassVar[bool | None] = None
    #: a one-line description for `harness plugins` and the report
    description: ClassVar[str] = ""

    def compute(self, ev: Evaluation) -> float | None:
        raise NotImplementedError

    def count(self, ev: Evaluation) -> int | None:
        """How many images the value of :meth:`compute` is taken over (recorded as ``n``;
        a mean over no images is shown as "n=0"); None: all the evaluation's images."""
        return None
