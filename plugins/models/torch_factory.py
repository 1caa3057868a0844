"""Any ``torch.nn.Module`` made by a factory callable, optionally with a state-dict file."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness import Context, Model, ModelError, ModelPlugin, ParamError
from harness.context import stable_seed


class Normalize(nn.Module):
    """(x - mean) / std per channel, so the wrapped model still takes inputs in [0, 1]."""

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def import_callable(spec: str, param: str = "factory") -> Any:
    """``package.module:attribute`` (dots after the colon walk attributes) -> the object."""
    if ":" not in spec:
        raise ParamError(param, f"{spec!r} is not of the form package.module:callable")
    mod_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ParamError(param, f"cannot import {mod_name!r} ({exc})",
                         hint="is the package installed in this environment?") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ParamError(param, f"{mod_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise ParamError(param, f"{spec!r} is not callable")
    return obj


class TorchModel(ModelPlugin):
    """Any nn.Module from ``factory: package.module:callable`` called with ``kwargs``,
    optionally loading a state dict from ``weights`` (read with ``weights_only=True``).

    The module must take inputs in [0, 1] of shape ``[B, *input_shape]``; give ``mean`` and
    ``std`` (per channel) if it expects normalized inputs. ``num_classes`` is read from a
    forward pass when not given.
    """

    code_params = ("factory",)  # the factory is code the suite makes the harness run

    def __init__(self, *, factory: str, input_shape: list[int], kwargs: dict[str, Any] | None = None,
                 weights: str | None = None, num_classes: int | None = None,
                 mean: list[float] | None = None, std: list[float] | None = None):
        if not input_shape or any(s < 1 for s in input_shape):
            raise ParamError("input_shape", f"input_shape {input_shape} is not a shape")
        if (mean is None) != (std is None):
            raise ParamError("mean" if mean is None else "std", "give both mean and std, or neither")
        if std is not None and any(s <= 0 for s in std):
            raise ParamError("std", "std values must be positive")
        if ":" not in factory:
            raise ParamError("factory", f"{factory!r} is not of the form package.module:callable")
        self.factory = factory
        self.input_shape = input_shape
        self.kwargs = kwargs
        self.weights = weights
        self.num_classes = num_classes
        self.mean = mean
        self.std = std

    def build_module(self, seed: int = 0) -> nn.Module:
        """The module; random initializations are drawn from ``seed`` (in a fork of torch's
        global generator, which is left as it was)."""
        make = import_callable(self.factory)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(stable_seed(seed, self.factory, self.kwargs))
                module = make(**(self.kwargs or {}))
        except Exception as exc:
            raise ModelError(f"{self.factory}(**{self.kwargs or {}}) failed: "
                             f"{type(exc).__name__}: {exc}") from None
        if not isinstance(module, nn.Module):
            raise ModelError(f"{self.factory} returned {type(module).__name__}, not a torch.nn.Module")
        if self.weights:
            path = Path(self.weights).expanduser()
            if not path.is_file():
                raise ModelError(f"weights file {str(path)!r} not found")
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                if isinstance(state, dict) and "state_dict" in state and len(state) <= 3:
                    state = state["state_dict"]
                module.load_state_dict(state)
            except Exception as exc:
                first = str(exc).strip().splitlines()[0]
                raise ModelError(f"cannot load weights {str(path)!r} into {self.factory}: {first}",
                                 hint="the file must be a state dict saved with torch.save") from None
        if self.mean is not None:
            module = nn.Sequential(Normalize(self.mean, self.std), module)
        return module

    def load(self, ctx: Context) -> Model:
        module = self.build_module(ctx.seed).to(ctx.device).eval()
        num_classes = self.num_classes
        if num_classes is None:
            with torch.no_grad():
                probe = torch.zeros(1, *self.input_shape, device=ctx.device)
                try:
                    num_classes = int(module(probe).shape[-1])
                except Exception as exc:
                    raise ModelError(f"{self.factory} fails on an input of shape "
                                     f"{[1, *self.input_shape]}: {type(exc).__name__}: {exc}",
                                     hint="check input_shape") from None
        return Model(module, input_shape=self.input_shape, num_classes=num_classes,
                     device=ctx.device)
