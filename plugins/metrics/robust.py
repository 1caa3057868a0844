"""Robust accuracy at given epsilons, from a minimum-norm attack's per-image distortions."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch

from harness import Evaluation, Metric, ParamError

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

    def __init__(self, *, eps: float | list[float] = 1.0,
                 norm: Literal["l2", "linf", "rms"] = "l2"):
        values = eps if isinstance(eps, list) else [eps]
        if not values:
            raise ParamError("eps", "eps is an empty list")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise ParamError("eps", f"eps must be a number >= 0, not {v!r}")
        self.eps = [float(v) for v in values] if isinstance(eps, list) else float(eps)
        if norm not in NORMS:
            raise ParamError("norm", f"unknown norm {norm!r}", hint="use l2, linf or rms")
        self.norm = norm

    def values(self, ev: Evaluation) -> torch.Tensor | None:
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
