"""Any ``torch.nn.Module`` made by a factory callable, optionally with a state-dict file
(``.safetensors`` or a torch file), pinned by ``sha256``."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from harness import Context, Model, ModelError, ModelPlugin, ParamError
from harness.context import stable_seed

from .files import (check_file, check_mean_std, check_sha256, load_into, load_state_dict_file,
                    verify_pin)


class Normalize(nn.Module):
    """(x - mean) / std per channel (dimension 1), so the wrapped model still takes inputs in
    [0, 1]; ``rank`` is that of a batch (4 for images ``[B, C, H, W]``)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], rank: int = 4):
        super().__init__()
        view = (1, -1) + (1,) * max(0, rank - 2)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(view))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(view))

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
    optionally loading a state dict from ``weights`` (``.safetensors``, or a torch file read
    with ``weights_only=True``), pinned by ``sha256``.

    The module must take inputs in [0, 1] of shape ``[B, *input_shape]``; give ``mean`` and
    ``std`` (per channel, or ``imagenet``) if it expects normalized inputs. ``input_shape``
    defaults to the shape of the data the model is first fed; ``num_classes`` is read from a
    forward pass when not given.
    """

    code_params = ("factory",)  # the factory is code the suite makes the harness run

    def __init__(self, *, factory: str, input_shape: list[int] | None = None,
                 kwargs: dict[str, Any] | None = None, weights: str | None = None,
                 sha256: str | None = None, num_classes: int | None = None,
                 mean: list[float] | str | None = None, std: list[float] | str | None = None):
        if input_shape is not None and (not input_shape or any(s < 1 for s in input_shape)):
            raise ParamError("input_shape", f"input_shape {input_shape} is not a shape")
        if ":" not in factory:
            raise ParamError("factory", f"{factory!r} is not of the form package.module:callable")
        self.factory = factory
        self.input_shape = input_shape
        self.kwargs = kwargs
        self.weights = check_file("weights", weights, "weights file") if weights else None
        self.sha256 = check_sha256(sha256)
        if self.sha256 and not self.weights:
            raise ParamError("sha256", "sha256 pins the weights file, and no weights are given")
        self.num_classes = num_classes
        self.mean, self.std = check_mean_std(mean, std)

    def preflight(self, ctx: Context) -> None:
        if self.weights:
            verify_pin(self.weights, self.sha256, "weights")

    def build_module(self, seed: int = 0, input_rank: int = 4) -> nn.Module:
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
            load_into(module, load_state_dict_file(path), path, self.factory)
        if self.mean is not None:
            module = nn.Sequential(Normalize(self.mean, self.std, input_rank), module)
        return module

    def load(self, ctx: Context) -> Model:
        input_shape = self.input_shape or (list(ctx.input_shape) if ctx.input_shape else None)
        if input_shape is None:
            raise ModelError(f"{self.factory}: no input_shape, and no data to read it from",
                             hint="give input_shape, e.g. [3, 224, 224]")
        if self.mean is not None and len(self.mean) not in (1, input_shape[0]):
            raise ModelError(f"{len(self.mean)} mean/std values for {self.factory}, whose "
                             f"inputs have {input_shape[0]} channels",
                             hint="give one value per channel, or one for all")
        module = self.build_module(ctx.seed, len(input_shape) + 1).to(ctx.device).eval()
        num_classes = self.num_classes
        if num_classes is None:
            with torch.no_grad():
                probe = torch.zeros(1, *input_shape, device=ctx.device)
                try:
                    num_classes = int(module(probe).shape[-1])
                except Exception as exc:
                    raise ModelError(f"{self.factory} fails on an input of shape "
                                     f"{[1, *input_shape]}: {type(exc).__name__}: {exc}",
                                     hint="check input_shape") from None
        return Model(module, input_shape=input_shape, num_classes=num_classes,
                     device=ctx.device)
