"""Metrics: one number from one evaluation (a test on a model, for one attack setting)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ._lazy import torch

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
    gates which way is worse (None: neither).

    A metric that only reads per-image outcomes (labels, predictions, success, distortion,
    costs: what the ledger keeps) sets ``from_ledger = True`` and implements :meth:`values`:
    it is then computed once per case from the ledger, with an interval, paired tests
    against a baseline, and the same numbers when a case is split into chunks or shards.
    ``compute`` defaults to summarizing ``values`` by ``statistic``. A metric that looks at
    the images or the model (``ev.x``, ``ev.result.x_adv``, ``ev.model``) keeps
    ``from_ledger = False``: it is computed on each chunk's evaluation and combined as a
    mean weighted by images.

    ``sweep`` names a parameter that may be a list in a suite (``robust_accuracy`` with
    ``eps: [0.5, 1.0]``): the metric then gives one row per value."""

    kind: ClassVar[str] = "metric"
    needs_attack: ClassVar[bool] = False
    higher_is_better: ClassVar[bool | None] = None
    #: a one-line description for `harness plugins` and the report
    description: ClassVar[str] = ""
    #: computed from the ledger (per-image outcomes) rather than on each chunk's images
    from_ledger: ClassVar[bool] = False
    #: how :meth:`values` are summarized: "rate" (0/1 per image; Wilson interval), "mean" or
    #: "median" (bootstrap interval)
    statistic: ClassVar[str] = "mean"
    sweep: ClassVar[str | None] = None

    def values(self, ev: Evaluation) -> "torch.Tensor | None":
        """The per-image values this metric summarizes (NaN for an image that does not
        count, such as a failed attack's distortion), or None when it has none."""
        return None

    def compute(self, ev: Evaluation) -> float | None:
        values = self.values(ev)
        if values is None:
            return None
        v = values.double()
        v = v[~torch.isnan(v)]
        if v.numel() == 0:
            return float("nan")
        if self.statistic == "median":
            return float(v.quantile(0.5))
        return float(v.mean())

    def variants(self) -> list[tuple[str, "Metric"]]:
        """``[(label, metric)]``: one per value of the sweep parameter, else ``[("", self)]``."""
        out = self._swept(self.sweep, lambda v: f"{v:g}" if isinstance(v, float) else v)
        for _, clone in out:
            clone.name = self.name
        return out

    def count(self, ev: Evaluation) -> int | None:
        """How many images the value of :meth:`compute` is taken over (recorded as ``n``;
        a mean over no images is shown as "n=0"); None: all the evaluation's images, or the
        images :meth:`values` counts."""
        return None
