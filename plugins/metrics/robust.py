"""Robust accuracy at given epsilons, from a minimum-norm attack's per-image distortions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, ClassVar, Literal

import harness
from harness import Evaluation, Field, Metric

from ..params import Real, one_or_many

if TYPE_CHECKING:
    import torch

NORMS = {"l2": "l2", "linf": "linf", "rms": "distortion"}


class RobustAccuracy(Metric):
    """Share of images the model still classifies right under every perturbation of size at
    most ``eps`` that the attack tried: clean-correct, and the attack found no misclassified
    point within ``eps`` (in the ``norm``: ``l2``, ``linf``, or ``rms``, the paper's
    sqrt(sum r^2 / n)). With a minimum-norm attack (lbfgs, DDN, CW...), one run gives the
    robust accuracy at every epsilon: ``eps`` may be a list, giving a row per value
    (``eps=0.5``...)."""

    description = "share of images classified right under every attack within eps"
    needs_attack = True
    higher_is_better = True
    from_ledger = True
    statistic = "rate"
    sweep: ClassVar[str] = "eps"

    class Params(harness.Params):
        eps: one_or_many(Annotated[Real, Field(ge=0)]) = Field(
            1.0, description="the largest perturbation counted, in the norm; a list gives a "
                             "row of results per value")
        norm: Literal["l2", "linf", "rms"] = Field(
            "l2", description="how a perturbation is measured: l2, linf, or rms (the paper's "
                              "sqrt(sum r^2 / n))")

    def values(self, ev: Evaluation) -> torch.Tensor | None:
        import torch

        if ev.result is None or ev.adv_pred is None:
            return None
        if isinstance(self.eps, list):
            raise ValueError("compute one eps at a time (see Metric.variants)")
        res = ev.result
        size = getattr(res, NORMS[self.norm])
        if size is None:
            return None
        y = ev.y.to(ev.clean_pred.device)
        correct = ev.clean_pred == y
        fooled = res.success & (ev.adv_pred != y)
        within = torch.where(res.already.bool() if res.already is not None
                             else torch.zeros_like(fooled),
                             torch.ones_like(fooled), size.to(y.device) <= self.eps)
        return (correct & ~(fooled & within)).double()
