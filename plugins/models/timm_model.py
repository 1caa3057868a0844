"""``timm`` models by name, with weights from a local checkpoint (extra ``[timm]``).

``timm: {model: resnet50, checkpoint: weights/resnet50.safetensors}`` builds the timm
architecture (``timm.create_model(name, pretrained=False, **kwargs)``: nothing is ever
downloaded) and loads the checkpoint (``.safetensors``, or a torch file read with
``weights_only=True``; the usual ``state_dict``/``model`` containers and DataParallel's
``module.`` prefix are unwrapped). Without ``checkpoint`` the weights are random, drawn from
the run's seed (for smoke tests and benchmarks).

Normalization: by default the model's own ``mean``/``std`` from its timm configuration
(``pretrained_cfg``), which is what its published weights were trained with; ``mean``/``std``
override it, ``normalize: false`` turns it off. ``input_shape`` defaults to the data's, else
the configuration's ``input_size``. The model is an ordinary torch module, so every attack
and analysis runs on it, and its layers are addressable (``1.layer4`` after the
normalization ``0``, else ``layer4``).
"""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path
from typing import Any, ClassVar, Union

from pydantic import model_validator

import harness
from harness import Context, Field, Model, ModelError, ModelPlugin, ParamError, stable_seed

from ..params import InputShape, Mean, NonBlank, NumClasses, Sha256, Std, mean_std
from .files import check_file, load_into, load_state_dict_file, normalizer, one_line, verify_pin


class TimmModel(ModelPlugin):
    """A timm architecture by name (``model``) with weights from a local ``checkpoint``
    (pinned by ``sha256``), normalized with its own mean/std; extra ``[timm]``."""

    name: ClassVar[str] = "timm"
    seed_name = "timm"

    class Params(harness.Params):
        model: NonBlank = Field(description="the timm architecture, such as resnet50 "
                                            "(timm.list_models())")
        checkpoint: Union[str, None] = Field(None, description="the weights: a .safetensors "
                                                               "or torch file (default: "
                                                               "random weights from the "
                                                               "run's seed)")
        sha256: Sha256 = None
        kwargs: Union[dict[str, Any], None] = Field(None, description="keyword arguments of "
                                                                      "timm.create_model")
        input_shape: InputShape = None
        num_classes: NumClasses = None
        mean: Mean = None
        std: Std = None
        normalize: bool = Field(True, description="normalize with the model's own mean/std "
                                                  "from its timm configuration (unless "
                                                  "mean/std are given)")

        _mean_std = model_validator(mode="after")(mean_std)

        @model_validator(mode="after")
        def _checkpoint(self) -> "TimmModel.Params":
            self.checkpoint = self.checkpoint or None
            if self.sha256 and not self.checkpoint:
                raise ParamError("sha256", "sha256 pins the checkpoint, and no checkpoint is "
                                           "given")
            self.kwargs = dict(self.kwargs) if self.kwargs else None
            if self.kwargs and "pretrained" in self.kwargs:
                raise ParamError("kwargs", "pretrained weights are never downloaded",
                                 hint="give the weights as a local checkpoint")
            return self

    def __init__(self, **values: Any):
        super().__init__(**values)
        if importlib.util.find_spec("timm") is None:
            raise ParamError("model", "the timm package is not installed",
                             hint="pip install 'robustness-harness[timm]'")
        if self.checkpoint:
            check_file("checkpoint", self.checkpoint, "checkpoint")

    def preflight(self, ctx: Context) -> None:
        if self.checkpoint:
            verify_pin(self.checkpoint, self.sha256, "checkpoint")

    def load(self, ctx: Context) -> Model:
        import timm
        import torch
        from torch import nn

        if not timm.is_model(self.model):
            close = difflib.get_close_matches(self.model, timm.list_models(), n=3)
            raise ModelError(f"timm has no model {self.model!r}",
                             hint=f"did you mean {', '.join(close)}?" if close else
                             "see timm.list_models()")
        kwargs = dict(self.kwargs or {})
        if self.num_classes is not None:
            kwargs.setdefault("num_classes", self.num_classes)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(stable_seed(ctx.seed, self.seed_key, self.model, kwargs))
                net = timm.create_model(self.model, pretrained=False, **kwargs)
        except Exception as exc:
            raise ModelError(f"timm.create_model({self.model!r}, **{kwargs}) failed: "
                             f"{type(exc).__name__}: {one_line(exc)}") from None
        if self.checkpoint:
            path = Path(self.checkpoint).expanduser()
            load_into(net, load_state_dict_file(path), path, f"timm model {self.model!r}")
        cfg = dict(getattr(net, "pretrained_cfg", None) or {})
        input_shape = (self.input_shape or (list(ctx.input_shape) if ctx.input_shape else None)
                       or list(cfg.get("input_size") or []))
        if not input_shape:
            raise ModelError(f"timm model {self.model!r}: the input shape is not known",
                             hint="give input_shape, e.g. [3, 224, 224]")
        mean, std = self.mean, self.std
        if mean is None and self.normalize and cfg.get("mean") and cfg.get("std"):
            mean, std = list(cfg["mean"]), list(cfg["std"])
        norm = normalizer(mean, std, input_shape, f"timm model {self.model!r}") \
            if self.normalize or self.mean is not None else None
        module: nn.Module = net if norm is None else nn.Sequential(norm, net)
        module = module.to(ctx.device).eval()
        with torch.no_grad():
            try:
                out = module(torch.zeros(2, *input_shape, device=ctx.device))
            except Exception as exc:
                raise ModelError(f"timm model {self.model!r} fails on images of shape "
                                 f"{input_shape}: {type(exc).__name__}: {one_line(exc)}",
                                 hint="check input_shape") from None
        if out.dim() != 2:
            raise ModelError(f"timm model {self.model!r} returns outputs of shape "
                             f"{list(out.shape)}; classifier logits are [batch, classes]")
        model = Model(module, input_shape=input_shape, num_classes=int(out.shape[1]),
                      device=ctx.device, name=self.model)
        source = f"checkpoint {Path(self.checkpoint).name}" if self.checkpoint else \
            "random weights (no checkpoint)"
        model.gradient_note = f"timm {self.model}, {source}" + (
            f", normalized with mean {mean} std {std}" if norm is not None else "")
        return model
