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
from typing import Any, ClassVar

from harness import Context, Model, ModelError, ModelPlugin, ParamError
from harness.context import stable_seed

from .files import (one_line, check_file, check_mean_std, check_sha256, load_into,
                    load_state_dict_file, normalizer, verify_pin)


class TimmModel(ModelPlugin):
    """A timm architecture by name (``model``) with weights from a local ``checkpoint``
    (pinned by ``sha256``), normalized with its own mean/std; extra ``[timm]``."""

    name: ClassVar[str] = "timm"

    def __init__(self, *, model: str, checkpoint: str | None = None, sha256: str | None = None,
                 kwargs: dict[str, Any] | None = None, input_shape: list[int] | None = None,
                 num_classes: int | None = None, mean: list[float] | str | None = None,
                 std: list[float] | str | None = None, normalize: bool = True):
        if not isinstance(model, str) or not model.strip():
            raise ParamError("model", f"model must name a timm architecture, not {model!r}")
        if importlib.util.find_spec("timm") is None:
            raise ParamError("model", "the timm package is not installed",
                             hint="pip install 'robustness-harness[timm]'")
        self.model = model
        self.checkpoint = check_file("checkpoint", checkpoint, "checkpoint") if checkpoint \
            else None
        self.sha256 = check_sha256(sha256)
        if self.sha256 and not self.checkpoint:
            raise ParamError("sha256", "sha256 pins the checkpoint, and no checkpoint is given")
        self.kwargs = dict(kwargs) if kwargs else None
        if self.kwargs and "pretrained" in self.kwargs:
            raise ParamError("kwargs", "pretrained weights are never downloaded",
                             hint="give the weights as a local checkpoint")
        if input_shape is not None and (not input_shape or any(s < 1 for s in input_shape)):
            raise ParamError("input_shape", f"input_shape {input_shape} is not a shape")
        self.input_shape = input_shape
        self.num_classes = num_classes
        self.mean, self.std = check_mean_std(mean, std)
        self.normalize = normalize

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
                torch.manual_seed(stable_seed(ctx.seed, "timm", self.model, kwargs))
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
