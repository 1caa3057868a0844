"""An example plugin package: one attack and one metric, registered through the entry-point
group ``harness`` (see pyproject.toml). Install it with ``pip install ./tests/example_plugin``
and ``harness plugins`` lists them; a suite uses them by name."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness import Attack, AttackResult, Evaluation, Metric, ParamError, hookimpl


class FGSM(Attack):
    """Fast gradient sign method (Goodfellow et al. 2015): one step of size ``eps`` along the
    sign of the loss gradient, clipped to [0, 1]; untargeted."""

    def __init__(self, *, eps: float = 0.1, batch_size: int = 1024):
        if not 0 <= eps <= 1:
            raise ParamError("eps", f"eps must lie in [0, 1], not {eps}")
        if batch_size < 1:
            raise ParamError("batch_size", "batch_size must be at least 1")
        self.eps = eps
        self.batch_size = batch_size

    def run(self, model, x, y, ctx) -> AttackResult:
        x_req = x.clone().requires_grad_(True)
        logits = model(x_req)
        loss = F.cross_entropy(logits, y)
        (grad,) = torch.autograd.grad(loss, x_req)
        x_adv = (x + self.eps * grad.sign()).clamp_(0.0, 1.0)
        with torch.no_grad():
            pred = model(x_adv).argmax(1)
        ones = torch.ones(len(x), dtype=torch.long, device=x.device)
        return AttackResult(x_adv=x_adv.detach(), success=pred != y,
                            already=logits.argmax(1) != y, grad_evals=ones,
                            forward_evals=2 * ones)


class AdvConfidence(Metric):
    """Mean softmax probability the model gives its own prediction on the attacked inputs."""

    description = "mean top-class probability on the attacked inputs"
    needs_attack = True

    def compute(self, ev: Evaluation) -> float | None:
        if ev.result is None:
            return None
        with torch.no_grad():
            probs = ev.model.logits(ev.result.x_adv).softmax(1)
        return float(probs.max(1).values.mean())


@hookimpl
def register_attacks(register):
    register("fgsm", FGSM)


@hookimpl
def register_metrics(register):
    register("adv_confidence", AdvConfidence)
