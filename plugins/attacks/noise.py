"""The paper's baseline: Gaussian noise of a given size, clipped to the box."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import harness
from harness import Attack, AttackResult, Context, Field, Model

from ..params import Real, one_or_many

if TYPE_CHECKING:
    import torch


class GaussianNoise(Attack):
    """x + N(0, stddev^2) per pixel, clipped to [0, 1]; ``stddev`` a number or a list.

    Untargeted: a success is an input the model misclassifies after the noise; its distortion
    metrics are over all images (noise has no goal to reach). The noise is
    drawn from the run's seed on the CPU, so every model of a suite sees the same noisy images.

    ``clip: false`` leaves the noisy images unclipped (outside [0, 1]), so that the distortion
    is exactly ``stddev``, as in the paper's noise rows. Clipping is not neutral: on MNIST's
    black background it keeps only the positive half of the noise, which brightens the whole
    image and raises the error several-fold at stddev 0.3.
    """

    seed_name = "gaussian-noise"

    sweep = "stddev"
    needs_gradients = False
    #: noise has no goal: its distortion is over all images (a "success" is only an image the
    #: model happens to misclassify)
    distortion_over = "all"

    class Params(harness.Params):
        stddev: one_or_many(Annotated[Real, Field(ge=0)]) = Field(
            0.1, description="the noise's standard deviation per pixel, in [0, 1] pixel units; "
                             "a list gives a row of results per value")
        clip: bool = Field(True, description="clip the noisy images to [0, 1] (false: the "
                                             "distortion is exactly stddev, as in the paper)")

    @property
    def stays_in_box(self) -> bool:
        return self.clip

    def run(self, model: Model, x: torch.Tensor, y: torch.Tensor, ctx: Context) -> AttackResult:
        import torch

        if isinstance(self.stddev, list):
            raise ValueError("run one stddev at a time (see Attack.variants)")
        gen = ctx.generator(self.seed_key, float(self.stddev), ctx.position, tuple(x.shape))
        noise = torch.randn(x.shape, generator=gen, device="cpu").to(x.device)
        x_adv = x + self.stddev * noise
        if self.clip:
            x_adv = x_adv.clamp_(0.0, 1.0)
        with torch.no_grad():
            clean = model(x).argmax(1)
            pred = model(x_adv).argmax(1)
        ones = torch.ones(len(x), dtype=torch.long, device=x.device)
        return AttackResult(x_adv=x_adv, success=pred != y, already=clean != y,
                            forward_evals=2 * ones)
