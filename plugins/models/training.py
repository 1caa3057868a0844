"""Training and caching shared by the built-in trained models (``paper-mnist``, ``mlp``).

Everything here is deterministic given the generators handed in: weights are initialized
and minibatches shuffled from CPU ``torch.Generator`` objects (so the numbers are the same
on every device), and no global random state is touched.

The objective
-------------
A classifier is trained on the mean cross-entropy over the training set plus an L2 penalty
on the weight matrices and convolution kernels (biases are not penalized)::

    loss = mean_i CE(f(x_i), y_i) + sum_k (lambda_k / 2) * ||W_k||^2

so ``lambda`` is the coefficient whose gradient is ``lambda * W``, the same convention as the
``weight_decay`` of ``torch.optim.SGD``. The penalty is part of the loss, not of the optimizer,
so the objective is the same whichever optimizer minimizes it. With this convention the
softmax-regression errors at lambda = 1e-4, 1e-2, 1 land next to the paper's Table 1.

Optimizers
----------
* ``lbfgs``: full-batch L-BFGS with a strong-Wolfe line search; ``epochs`` is the number of
  L-BFGS iterations (each costs about one pass over the data). Used for convex problems
  (softmax regression, a softmax on a frozen code), where it converges in few passes.
* ``adam``: minibatch Adam, the learning rate decayed to zero along a cosine over all steps;
  ``epochs`` is the number of passes over the shuffled training set.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .schedule import (DEFAULT_EPOCHS, DEFAULT_LR, MIN_DEFAULT_STEPS,  # noqa: F401 (re-exported)
                       OPTIMIZERS, Schedule)

log = logging.getLogger(__name__)

#: bump whenever a change here or in the model plugins changes the weights a training run
#: produces; it is part of every cache key, so old cache files are then ignored
TRAINING_VERSION = 1

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}


def per_layer(weight_decay: float | Sequence[float], num_layers: int) -> list[float]:
    if isinstance(weight_decay, (list, tuple)):
        return [float(v) for v in weight_decay]
    return [float(weight_decay)] * num_layers


# ---------------------------------------------------------------------------------------
# building blocks

def init_linear_(layer: nn.Linear, generator: torch.Generator) -> None:
    """LeCun uniform weights (variance 1 / fan_in) drawn from ``generator``, zero biases."""
    bound = math.sqrt(3.0 / layer.in_features)
    with torch.no_grad():
        layer.weight.copy_(torch.empty(layer.weight.shape, device="cpu").uniform_(-bound, bound,
                                                                    generator=generator))
        layer.bias.zero_()


def make_linear(in_features: int, out_features: int,
                generator: torch.Generator | None) -> nn.Linear:
    """An ``nn.Linear`` initialized from ``generator`` (zeros when it is None), built
    without touching the global random state that ``nn.Linear``'s own initialization uses."""
    layer = torch.nn.utils.skip_init(nn.Linear, in_features, out_features)
    if generator is None:
        with torch.no_grad():
            layer.weight.zero_()
            layer.bias.zero_()
    else:
        init_linear_(layer, generator)
    return layer


def mlp_layers(in_features: int, hidden: Sequence[int], num_classes: int, activation: str,
               generator: torch.Generator) -> list[nn.Module]:
    """Linear/activation pairs for each hidden width, then a linear output layer."""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [make_linear(width, h, generator), ACTIVATIONS[activation]()]
        width = h
    layers.append(make_linear(width, num_classes, generator))
    return layers


def init_conv_(layer: nn.Conv2d, generator: torch.Generator) -> None:
    """He uniform weights (variance 2 / fan_in, for a ReLU after the layer) drawn from
    ``generator``, zero biases."""
    fan_in = layer.in_channels * math.prod(layer.kernel_size) // layer.groups
    bound = math.sqrt(6.0 / fan_in)
    with torch.no_grad():
        layer.weight.copy_(torch.empty(layer.weight.shape, device="cpu").uniform_(-bound, bound,
                                                                    generator=generator))
        layer.bias.zero_()


def conv_layers(in_channels: int, channels: Sequence[int], kernel_size: int,
                generator: torch.Generator) -> list[nn.Module]:
    """For each width in ``channels``: a ``kernel_size`` convolution padded to keep the
    image size, a ReLU and a 2x2 max-pooling (which halves the size, rounding down)."""
    layers: list[nn.Module] = []
    width = in_channels
    for c in channels:
        conv = torch.nn.utils.skip_init(nn.Conv2d, width, c, kernel_size,
                                        padding=kernel_size // 2)
        init_conv_(conv, generator)
        layers += [conv, nn.ReLU(), nn.MaxPool2d(2)]
        width = c
    return layers


def linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def weight_layers(module: nn.Module) -> list[nn.Linear | nn.Conv2d]:
    """The layers with a weight penalty, in order: convolutions and linear layers."""
    return [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def l2_penalty(layers: Sequence[nn.Linear | nn.Conv2d],
               lambdas: Sequence[float]) -> torch.Tensor | float:
    """``sum_k lambda_k / 2 * ||W_k||^2`` over the layers' weight matrices (or kernels)."""
    terms = [0.5 * lam * layer.weight.pow(2).sum() for layer, lam in zip(layers, lambdas) if lam]
    return sum(terms) if terms else 0.0


@torch.no_grad()
def batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
            batch_size: int = 8192) -> torch.Tensor:
    """``fn`` applied to ``x`` in batches, without gradients."""
    return torch.cat([fn(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def error_rate(module: nn.Module, x: torch.Tensor, y: torch.Tensor,
               batch_size: int = 8192) -> float:
    """Fraction of ``x`` that ``module`` misclassifies (inputs moved to its device)."""
    device = next(module.parameters()).device
    wrong = 0
    for i in range(0, len(x), batch_size):
        pred = module(x[i:i + batch_size].to(device)).argmax(1)
        wrong += int((pred != y[i:i + batch_size].to(device)).sum())
    return wrong / max(len(x), 1)


# ---------------------------------------------------------------------------------------
# optimization

@dataclass
class FitResult:
    loss: float
    seconds: float
    history: list[float] = field(default_factory=list)


def minimize(params: Sequence[torch.nn.Parameter],
             batch_loss: Callable[[torch.Tensor | None], torch.Tensor], num_examples: int,
             schedule: Schedule, generator: torch.Generator, device: torch.device,
             progress: Any, description: str) -> FitResult:
    """Minimize ``batch_loss(indices)`` (the objective on the examples at ``indices``, a
    long tensor on ``device``; ``None`` means all of them) over ``params`` with ``schedule``.

    Adam draws one permutation per epoch from ``generator``; L-BFGS evaluates the whole set.
    """
    start = time.perf_counter()
    params = list(params)
    history: list[float] = []
    if schedule.optimizer == "lbfgs":
        max_eval = int(schedule.epochs * 1.25) + 1
        opt = torch.optim.LBFGS(params, lr=schedule.lr, max_iter=schedule.epochs,
                                max_eval=max_eval, history_size=20,
                                line_search_fn="strong_wolfe",
                                tolerance_grad=1e-9, tolerance_change=1e-12)
        with progress(description, max_eval, "eval") as bar:
            def closure() -> torch.Tensor:
                opt.zero_grad(set_to_none=True)
                loss = batch_loss(None)
                loss.backward()
                value = float(loss.detach())
                history.append(value)
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}")
                return loss

            opt.step(closure)
            # the last evaluation may be a rejected line-search point: report the objective
            # at the parameters L-BFGS settled on
            with torch.no_grad():
                final = float(batch_loss(None))
    else:
        opt = torch.optim.Adam(params, lr=schedule.lr)
        steps_per_epoch = math.ceil(num_examples / schedule.batch_size)
        total_steps = schedule.epochs * steps_per_epoch
        step = 0
        final = float("nan")
        with progress(description, schedule.epochs, "epoch") as bar:
            for _ in range(schedule.epochs):
                order = torch.randperm(num_examples, generator=generator, device="cpu").to(device)
                running = torch.zeros((), device=device)
                for i in range(0, num_examples, schedule.batch_size):
                    lr = 0.5 * schedule.lr * (1 + math.cos(math.pi * step / total_steps))
                    for group in opt.param_groups:
                        group["lr"] = lr
                    loss = batch_loss(order[i:i + schedule.batch_size])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    running += loss.detach()
                    step += 1
                final = float(running) / steps_per_epoch  # one sync per epoch
                history.append(final)
                bar.update(1)
                bar.set_postfix(loss=f"{final:.4f}")
    return FitResult(final, time.perf_counter() - start, history)


def fit_classifier(module: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   lambdas: Sequence[float], schedule: Schedule, generator: torch.Generator,
                   progress: Any, description: str) -> FitResult:
    """Train ``module`` (on the device of ``x``) on cross-entropy plus the L2 penalty of its
    convolutional and linear layers, ``lambdas`` one per layer in order."""
    layers = weight_layers(module)
    if len(layers) != len(lambdas):
        raise ValueError(f"{len(lambdas)} weight-decay values for {len(layers)} layers")
    module.train()

    def batch_loss(idx: torch.Tensor | None) -> torch.Tensor:
        xb, yb = (x, y) if idx is None else (x[idx], y[idx])
        return F.cross_entropy(module(xb), yb) + l2_penalty(layers, lambdas)

    result = minimize(list(module.parameters()), batch_loss, len(x), schedule, generator,
                      x.device, progress, description)
    module.eval()
    return result


@dataclass(frozen=True)
class AutoencoderSpec:
    """A single-layer sigmoid autoencoder, trained without labels on

    ``BCE(x_hat, x) summed over pixels + sparsity * sum_j KL(target || mean_j)
    + weight_decay / 2 * (||W_enc||^2 + ||W_dec||^2)``,

    where ``x_hat = sigmoid(W_dec sigmoid(W_enc x + b) + c)`` and ``mean_j`` is the mean
    activation of code unit ``j`` over the minibatch (a sparse autoencoder: without the
    sparsity and weight penalties the code is dense and much less useful to a linear
    classifier)."""

    units: int
    epochs: int
    lr: float
    batch_size: int
    sparsity: float
    target: float
    weight_decay: float


def kl_sparsity(mean_activation: torch.Tensor, target: float) -> torch.Tensor:
    """``sum_j KL(target || mean_j)`` between Bernoulli distributions."""
    q = mean_activation.clamp(1e-6, 1 - 1e-6)
    return (target * torch.log(target / q)
            + (1 - target) * torch.log((1 - target) / (1 - q))).sum()


def fit_autoencoder(x: torch.Tensor, spec: AutoencoderSpec, generator: torch.Generator,
                    progress: Any, description: str) -> tuple[nn.Linear, FitResult]:
    """Train the autoencoder of ``spec`` on ``x`` (``[N, features]`` on the training device);
    return its encoder layer (the code is ``sigmoid(encoder(x))``)."""
    features = x.shape[1]
    encoder = make_linear(features, spec.units, generator)
    decoder = make_linear(spec.units, features, generator)
    encoder.to(x.device)
    decoder.to(x.device)

    def batch_loss(idx: torch.Tensor | None) -> torch.Tensor:
        batch = x if idx is None else x[idx]
        code = torch.sigmoid(encoder(batch))
        recon = F.binary_cross_entropy_with_logits(decoder(code), batch,
                                                   reduction="sum") / len(batch)
        loss = recon + l2_penalty([encoder, decoder], [spec.weight_decay] * 2)
        if spec.sparsity:
            loss = loss + spec.sparsity * kl_sparsity(code.mean(0), spec.target)
        return loss

    schedule = Schedule("adam", spec.epochs, spec.lr, spec.batch_size)
    params = list(encoder.parameters()) + list(decoder.parameters())
    result = minimize(params, batch_loss, len(x), schedule, generator, x.device, progress,
                      description)
    for p in encoder.parameters():
        p.requires_grad_(False)
    return encoder, result


# ---------------------------------------------------------------------------------------
# the weight cache

class WeightCache:
    """Trained weights under ``folder / f"{key}.pt"``: a dict with the module's
    ``state_dict`` and a little metadata, written atomically and read with
    ``weights_only=True``. A file that cannot be read or does not fit the module is treated
    as missing."""

    def __init__(self, folder: Path, key: str):
        self.path = Path(folder) / f"{key}.pt"
        self.key = key

    def load_into(self, module: nn.Module) -> dict[str, Any] | None:
        """Load the cached weights into ``module``; their metadata, or None when there is no
        usable cache file."""
        if not self.path.is_file():
            return None
        try:
            blob = torch.load(self.path, map_location="cpu", weights_only=True)
            if not isinstance(blob, dict) or blob.get("key") != self.key:
                raise ValueError("not a weight file of this model")
            module.load_state_dict(blob["state_dict"], strict=True)
        except Exception as exc:  # a truncated, corrupt or foreign file: train again
            log.warning("ignoring unreadable cached weights %s (%s: %s); training again",
                        self.path, type(exc).__name__, exc)
            return None
        return dict(blob.get("meta", {}))

    def save(self, module: nn.Module, meta: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=".tmp",
                                   dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save({"key": self.key, "state_dict": state, "meta": meta}, fh)
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
