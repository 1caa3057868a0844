"""A plugin package written against the first plugin API (parameters as keyword-only
constructor arguments, checked by hand), registered under ``legacy-`` names; the harness
keeps running it unchanged. One plugin of each kind, registered through the entry-point
group ``harness`` (see pyproject.toml):

- dataset ``stripes``: synthetic images of horizontal or vertical stripes (2 classes);
- model ``nearest-mean``: a nearest-class-mean classifier fitted on any dataset plugin;
- attack ``fgsm``: the fast gradient sign method;
- metric ``adv_confidence``: the model's confidence on the attacked inputs;
- analysis ``input-gradient``: how steeply the loss rises around each input (the norm of its
  gradient), as numbers and a histogram.

Install it with ``pip install ./tests/legacy_plugin``; ``harness plugins`` then lists them
and any suite can use them by name.
"""

from __future__ import annotations

import io
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from harness import (Analysis, AnalysisResult, Attack, AttackResult, Context, Data,
                     DatasetPlugin, Evaluation, Metric, Model, ModelError, ModelPlugin,
                     ParamError, hookimpl)


class Stripes(DatasetPlugin):
    """Synthetic images of horizontal (label 0) or vertical (label 1) stripes with noise."""

    def __init__(self, *, n: int = 200, size: int = 8, noise: float = 0.1, seed: int = 0):
        if n < 1:
            raise ParamError("n", "n must be at least 1")
        if size < 2:
            raise ParamError("size", "size must be at least 2")
        if not 0 <= noise <= 1:
            raise ParamError("noise", "noise must lie in [0, 1]")
        self.n, self.size, self.noise, self.seed = n, size, noise, seed

    def load(self, ctx: Context) -> Data:
        gen = torch.Generator().manual_seed(self.seed)
        y = torch.randint(0, 2, (self.n,), generator=gen)
        rows = (torch.arange(self.size) % 2).float()[:, None].expand(self.size, self.size)
        x = torch.where(y[:, None, None] == 0, rows, rows.T)
        x = x + self.noise * torch.randn(x.shape, generator=gen)
        return Data(x.clamp(0, 1).unsqueeze(1), y, 2, f"stripes:{self.n}", ["horizontal", "vertical"])


class NearestMean(ModelPlugin):
    """Nearest class mean on flattened pixels, fitted on a dataset plugin's data (``train``)."""

    def __init__(self, *, train: dict[str, Any]):
        if "use" not in train:
            raise ParamError("train", "train needs 'use' naming a dataset plugin")
        self.train = train

    def load(self, ctx: Context) -> Model:
        spec = dict(self.train)
        data = ctx.dataset(spec.pop("use"), **spec)
        x = data.x.flatten(1)
        means = torch.stack([x[data.y == k].mean(0) if (data.y == k).any()
                             else torch.zeros(x.shape[1]) for k in range(data.num_classes)])
        linear = nn.Linear(x.shape[1], data.num_classes)
        with torch.no_grad():
            linear.weight.copy_(means)
            linear.bias.copy_(-0.5 * (means ** 2).sum(1))
        module = nn.Sequential(nn.Flatten(), linear).to(ctx.device)
        return Model(module, input_shape=data.input_shape, num_classes=data.num_classes,
                     device=ctx.device)


class FGSM(Attack):
    """Fast gradient sign method (Goodfellow et al. 2015): one step of size ``eps`` along the
    sign of the loss gradient, clipped to [0, 1]; untargeted."""

    sweep = "eps"

    def __init__(self, *, eps: float | list[float] = 0.1, batch_size: int = 1024):
        for value in eps if isinstance(eps, list) else [eps]:
            if not 0 <= value <= 1:
                raise ParamError("eps", f"eps must lie in [0, 1], not {value}")
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


class InputGradient(Analysis):
    """The norm of the gradient of the cross-entropy loss with respect to each input image:
    to first order, a perturbation of norm r raises the loss by at most r times it. Records
    its mean, median and largest value over the data, and a histogram."""

    needs_data = True

    def __init__(self, *, norm: Literal["l2", "linf"] = "l2", batch_size: int = 256):
        if batch_size < 1:
            raise ParamError("batch_size", "batch_size must be at least 1")
        self.norm = norm
        self.batch_size = batch_size

    def run(self, model: Model, data: Data | None, ctx: Context) -> AnalysisResult:
        if not model.differentiable:
            raise ModelError(f"analysis 'input-gradient' needs gradients, and model "
                             f"{model.name!r} gives none")
        # the gradient of a norm is measured with its dual: l1 for linf, l2 for l2
        dual = 2.0 if self.norm == "l2" else 1.0
        norms = []
        for i in range(0, len(data.x), self.batch_size):
            x = data.x[i:i + self.batch_size].to(model.device).requires_grad_(True)
            y = data.y[i:i + self.batch_size].to(model.device)
            loss = F.cross_entropy(model(x), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)
            norms.append(grad.flatten(1).norm(p=dual, dim=1).detach())
        values = torch.cat(norms).cpu()
        res = AnalysisResult()
        param = f"norm={self.norm}"
        res.add("grad_norm_mean", float(values.mean()), param)
        res.add("grad_norm_median", float(values.median()), param)
        res.add("grad_norm_max", float(values.max()), param)
        res.figures[f"input-gradient-{self.norm}.png"] = _histogram(values, self.norm)
        res.notes.append(f"input-gradient: the {'l2' if dual == 2 else 'l1'} norm of the loss "
                         f"gradient per image (dual to {self.norm} perturbations), over "
                         f"{len(values)} images")
        return res


def _histogram(values: torch.Tensor, norm: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
    ax.hist(values.numpy(), bins=30)
    ax.set_xlabel(f"loss gradient norm (dual of {norm})")
    ax.set_ylabel("images")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


@hookimpl
def register_datasets(register):
    register("legacy-stripes", Stripes)


@hookimpl
def register_models(register):
    register("legacy-nearest-mean", NearestMean)


@hookimpl
def register_attacks(register):
    register("legacy-fgsm", FGSM)


@hookimpl
def register_metrics(register):
    register("legacy_adv_confidence", AdvConfidence)


@hookimpl
def register_analyses(register):
    register("legacy-input-gradient", InputGradient)
