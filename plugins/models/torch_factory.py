"""Any ``torch.nn.Module`` made by a factory callable, optionally with a state-dict file
(``.safetensors`` or a torch file), pinned by ``sha256``."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import AfterValidator, model_validator

import harness
from harness import Context, Field, Model, ModelError, ModelPlugin, ParamError, stable_seed

from ..params import InputShape, Mean, NumClasses, Sha256, Std, mean_std
from .files import check_file, load_into, load_state_dict_file, verify_pin

if TYPE_CHECKING:
    from torch import nn


def __getattr__(name: str) -> Any:
    if name == "Normalize":   # the module moved; imported on first use (it imports torch)
        from .normalize import Normalize

        return Normalize
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _factory(spec: str) -> str:
    if ":" not in spec:
        raise ValueError("is not of the form package.module:callable")
    return spec


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
    seed_name = "torch"

    class Params(harness.Params):
        factory: Annotated[str, AfterValidator(_factory)] = Field(
            description="package.module:callable returning the torch.nn.Module")
        input_shape: InputShape = None
        kwargs: Union[dict[str, Any], None] = Field(None, description="keyword arguments of "
                                                                      "the factory")
        weights: Union[str, None] = Field(None, description="a state dict to load: a "
                                                            ".safetensors file, or a torch "
                                                            "file (read with "
                                                            "weights_only=True)")
        sha256: Sha256 = None
        num_classes: NumClasses = None
        mean: Mean = None
        std: Std = None

        _mean_std = model_validator(mode="after")(mean_std)

        @model_validator(mode="after")
        def _pin(self) -> "TorchModel.Params":
            self.weights = self.weights or None
            if self.sha256 and not self.weights:
                raise ParamError("sha256", "sha256 pins the weights file, and no weights are "
                                           "given")
            return self

    def __init__(self, **values: Any):
        super().__init__(**values)
        if self.weights:
            check_file("weights", self.weights, "weights file")

    def preflight(self, ctx: Context) -> None:
        if self.weights:
            verify_pin(self.weights, self.sha256, "weights")

    def build_module(self, seed: int = 0, input_rank: int = 4) -> nn.Module:
        """The module; random initializations are drawn from ``seed`` (in a fork of torch's
        global generator, which is left as it was)."""
        import torch
        from torch import nn

        from .normalize import Normalize

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
        import torch

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
