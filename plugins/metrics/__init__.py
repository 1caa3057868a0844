"""Built-in metrics: error rates, attack success, distortion and cost."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from harness import Evaluation, Metric, hookimpl

if TYPE_CHECKING:
    import torch


class CleanError(Metric):
    """Error rate on the unperturbed inputs."""

    description = "share of clean inputs the model misclassifies"
    higher_is_better = False
    from_ledger = True
    statistic = "rate"

    def values(self, ev: Evaluation) -> torch.Tensor:
        return (ev.clean_pred != ev.y.to(ev.clean_pred.device)).double()


class AdvError(Metric):
    """Error rate on the attacked inputs (the paper's tables): prediction != true label."""

    description = "share of attacked inputs the model misclassifies"
    needs_attack = True
    higher_is_better = False
    from_ledger = True
    statistic = "rate"

    def values(self, ev: Evaluation) -> torch.Tensor | None:
        if ev.adv_pred is None:
            return None
        return (ev.adv_pred != ev.y.to(ev.adv_pred.device)).double()


class SuccessRate(Metric):
    """Share of inputs on which the attack reached its goal (the target, or any error)."""

    description = "share of inputs where the attack reached its goal"
    needs_attack = True
    higher_is_better = False
    from_ledger = True
    statistic = "rate"

    def values(self, ev: Evaluation) -> torch.Tensor | None:
        if ev.result is None:
            return None
        return ev.result.success.double()


def _over(ev: Evaluation) -> torch.Tensor:
    """The images a distortion is averaged over: where the attack succeeded, or all of them
    for an attack without a goal (noise)."""
    assert ev.result is not None
    return ev.result.measured()


class _SuccessfulDistortion(Metric):
    """Per-image distortion sqrt(sum r^2 / n) over the successful images (all images for an
    attack without a goal, such as noise); NaN for the images that do not count."""

    needs_attack = True
    higher_is_better = True
    from_ledger = True
    field: ClassVar[str] = "distortion"

    def values(self, ev: Evaluation) -> torch.Tensor | None:
        import torch

        if ev.result is None:
            return None
        values = getattr(ev.result, self.field).double()
        nan = torch.full_like(values, float("nan"))
        return torch.where(_over(ev).to(values.device), values, nan)


class MeanDistortion(_SuccessfulDistortion):
    """Mean of the paper's distortion sqrt(sum r^2 / n) over successful images (noise: over
    all images)."""

    description = ("mean RMS perturbation sqrt(sum r^2 / n): over the images where the attack "
                   "succeeded; for noise, which has no goal, over all images")


class MedianDistortion(_SuccessfulDistortion):
    """Median of the paper's distortion sqrt(sum r^2 / n) over successful images (noise: over
    all images)."""

    description = ("median RMS perturbation: over the images where the attack succeeded; for "
                   "noise, over all images")
    statistic = "median"


class MeanL2(_SuccessfulDistortion):
    """Mean L2 norm of the perturbation over successful images (noise: over all images)."""

    description = ("mean L2 norm of the perturbation: over the images where the attack "
                   "succeeded; for noise, over all images")
    field = "l2"


class MeanLinf(_SuccessfulDistortion):
    """Mean L-infinity norm (largest pixel change) of the perturbation over successful images
    (noise: over all images)."""

    description = ("mean largest pixel change of the perturbation: over the images where the "
                   "attack succeeded; for noise, over all images")
    field = "linf"


class Seconds(Metric):
    """Wall time of the attack, in seconds."""

    description = "attack wall time in seconds"
    needs_attack = True
    higher_is_better = False
    from_ledger = True

    def compute(self, ev: Evaluation) -> float | None:
        return None if ev.result is None else float(ev.result.seconds)


class GradEvals(Metric):
    """Mean number of model gradient evaluations per image."""

    description = "mean model gradient evaluations per image"
    needs_attack = True
    higher_is_better = False
    from_ledger = True

    def values(self, ev: Evaluation) -> torch.Tensor | None:
        if ev.result is None or ev.result.grad_evals is None:
            return None
        return ev.result.grad_evals.double()


class AlreadyRate(Metric):
    """Share of inputs that needed no perturbation (already the target, or already wrong)."""

    description = "share of inputs already adversarial before the attack"
    needs_attack = True
    from_ledger = True
    statistic = "rate"

    def values(self, ev: Evaluation) -> torch.Tensor | None:
        if ev.result is None or ev.result.already is None:
            return None
        return ev.result.already.double()


BUILTIN: dict[str, type[Metric]] = {
    "clean_error": CleanError,
    "adv_error": AdvError,
    "success_rate": SuccessRate,
    "mean_distortion": MeanDistortion,
    "median_distortion": MedianDistortion,
    "mean_l2": MeanL2,
    "mean_linf": MeanLinf,
    "seconds": Seconds,
    "grad_evals": GradEvals,
    "already_rate": AlreadyRate,
}


@hookimpl
def register_metrics(register):
    from .robust import RobustAccuracy

    for name, cls in BUILTIN.items():
        register(name, cls)
    register("robust_accuracy", RobustAccuracy)
