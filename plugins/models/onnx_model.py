"""ONNX models: inference through onnxruntime, gradients for white-box attacks where possible.

``onnx`` loads a ``.onnx`` file (one image input ``[B, *input_shape]``, logits
``[B, num_classes]``) and gives the harness a :class:`harness.Model` taking inputs in
[0, 1] (``mean``/``std`` normalize them before the graph). How gradients are obtained is
chosen by ``gradients``:

``convert``
    The graph is converted to a torch module (:mod:`onnx_convert`, through onnx2torch) and
    its logits are compared with onnxruntime's on random and plain (black, white, grey)
    inputs; accepted when ``max |diff| <= tolerance * max(1, max |logit|)``. The Model is
    then an ordinary torch Model: logits and exact gradients come from the converted module,
    whose layers probes can address (named after the graph's nodes, such as
    ``layer1/layer1/0/conv1/Conv``; under ``1.`` when ``mean``/``std`` put a normalization
    in front as ``0``). Failure is an error.
``finite-differences``
    Logits from onnxruntime; gradients by central finite differences, coordinate by
    coordinate, batched: ``2 * D`` forward passes per image per gradient for inputs of ``D``
    values (1568 for MNIST). With the default step (0.01) the estimate of the paper's MNIST
    nets' gradients is within about 0.1% of the exact one (float32 round-off in the logits
    dominates; smaller steps are worse, 0.6% at 0.001).
``spsa``
    Logits from onnxruntime; gradients estimated by SPSA with ``spsa_samples`` random
    +-1 directions: ``2 * spsa_samples`` forward passes per image per gradient, whatever
    the input size, but only a noisy estimate (its correlation with the true gradient grows
    like ``sqrt(samples / (samples + D))``).
``auto`` (default)
    ``convert``; if the conversion or its check fails, finite differences for inputs of at
    most :data:`FD_MAX_FEATURES` values, else SPSA, with a warning saying why.
``none``
    Logits only; ``differentiable`` is false, and gradient attacks refuse the model.

The estimated gradients are a ``torch.autograd.Function`` around onnxruntime, so gradient
attacks (``lbfgs``) run on them unchanged (first derivatives only). The Model says how its
gradients come about, in attributes set by this plugin:

- ``gradient_source``: ``"converted"``, ``"finite-differences"``, ``"spsa"`` or None;
- ``gradient_note``: one line for reports (the check's result, or the cost per gradient and
  why the conversion was not used);
- ``conversion_max_diff`` / ``conversion_allowed_diff``: the measured largest logit
  difference between the converted module and onnxruntime, and what was allowed (None /
  absent without a conversion); ``conversion_rewrites``: the graph rewrites it needed;
- ``onnx_path``, ``onnx_providers`` (onnxruntime's execution providers in use), and for
  the onnxruntime paths ``onnx_graph`` (the :class:`OrtGraph`).

onnxruntime runs with the CUDA execution provider when the harness's device is CUDA and
the provider is installed (``onnxruntime-gpu``), tensors then handed over on the GPU
through io binding; else on the CPU, batches copied to the host as float32 arrays.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal, Union

from pydantic import model_validator

import harness
from harness import Context, Field, Model, ModelError, ModelPlugin, stable_seed

from ..params import InputShape, Mean, NonBlank, NumClasses, Real, Sha256, Std, mean_std
from .files import check_file, verify_pin

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .normalize import Normalize
    from .onnx_runtime import OrtGraph

log = logging.getLogger(__name__)

GRADIENT_MODES = ("auto", "convert", "finite-differences", "spsa", "none")
#: ``auto`` falls back to finite differences up to this many input values, SPSA beyond
FD_MAX_FEATURES = 4096
#: random inputs in the conversion check (plus a black, a white and a grey one)
CHECK_RANDOM = 8
#: what runs the model, in :mod:`.onnx_runtime` (imported on first use: it imports numpy,
#: torch and onnxruntime)
_RUNTIME = ("OrtGraph", "GradientEstimator", "estimated_forward", "choose_providers",
            "ESTIMATOR_BATCH_VALUES")


def __getattr__(name: str) -> Any:
    if name in _RUNTIME:
        from . import onnx_runtime

        return getattr(onnx_runtime, name)
    if name == "Normalize":
        from .normalize import Normalize

        return Normalize
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


# ------------------------------------------------------------------------ the plugin

class OnnxModel(ModelPlugin):
    """A classifier stored as an ONNX file, run by onnxruntime (see the module docstring).

    Parameters: ``path`` the ``.onnx`` file; ``input_name``/``output_name`` which graph
    input/output to use (default: the only input, the first output); ``input_shape`` the
    shape of one image, needed only where the graph leaves dimensions open (default there:
    the shape of the data the model is fed); ``num_classes`` (default: the output's size);
    ``mean``, ``std`` per-channel normalization applied before the graph, so that the
    harness's inputs stay in [0, 1] (``imagenet`` for torchvision's ImageNet statistics);
    ``sha256`` the file's digest, checked before anything runs;
    ``gradients`` auto, convert, finite-differences, spsa or none; ``tolerance`` the
    relative logit difference a converted module may have from onnxruntime
    (``max |diff| <= tolerance * max(1, max |logit|)``); ``fd_step`` the perturbation per
    input value of the estimated gradients; ``spsa_samples`` random directions per SPSA
    gradient.
    """

    name: ClassVar[str] = "onnx"

    seed_name = "onnx"

    class Params(harness.Params):
        path: NonBlank = Field(description="the .onnx file")
        input_name: Union[str, None] = Field(None, description="the graph input to feed "
                                                               "(default: the only one)")
        output_name: Union[str, None] = Field(None, description="the graph output read as "
                                                                "logits (default: the first)")
        input_shape: InputShape = None
        num_classes: NumClasses = None
        mean: Mean = None
        std: Std = None
        sha256: Sha256 = None
        gradients: Literal["auto", "convert", "finite-differences", "spsa", "none"] = Field(
            "auto", description="how gradients are obtained: convert (to torch, checked "
                                "against onnxruntime), finite-differences, spsa, none; auto: "
                                "convert, else an estimate")
        tolerance: Real = Field(1e-4, gt=0, description="the relative logit difference a "
                                                        "converted module may have from "
                                                        "onnxruntime")
        fd_step: Real = Field(1e-2, gt=0, lt=0.5, description="the perturbation per input "
                                                              "value of estimated gradients")
        spsa_samples: int = Field(64, ge=1, description="random directions per SPSA gradient")

        _mean_std = model_validator(mode="after")(mean_std)

    def __init__(self, **values: Any):
        super().__init__(**values)
        check_file("path", self.path, "ONNX file")

    def preflight(self, ctx: Context) -> None:
        """The file's ``sha256`` pin, checked before anything runs."""
        verify_pin(self.path, self.sha256)

    # ------------------------------------------------------------------ load

    def load(self, ctx: Context) -> Model:
        import torch

        from .onnx_runtime import GradientEstimator, OrtGraph, estimated_forward

        path = Path(self.path).expanduser()
        if not path.exists():
            raise ModelError(f"ONNX file {str(path)!r} not found")
        if path.is_dir():
            raise ModelError(f"{str(path)!r} is a folder, not an ONNX file")
        device = torch.device(ctx.device)
        graph = OrtGraph(path, device, self.input_name, self.output_name)
        if device.type == "cuda" and not graph.on_gpu:
            log.warning("onnxruntime has no CUDA provider here (install onnxruntime-gpu): "
                        "%s runs on the CPU", path.name)
        input_shape = self._input_shape(graph, path, ctx)
        normalize = self._normalize(input_shape, path)
        if normalize is not None:
            normalize = normalize.to(device)

        def logits(x: torch.Tensor) -> torch.Tensor:
            return graph(normalize(x) if normalize is not None else x)

        num_classes = self._num_classes(graph, logits, input_shape, device, path)
        features = math.prod(input_shape)
        batch = max(1, min(2048, (1 << 24) // features))
        common = dict(input_shape=input_shape, num_classes=num_classes, device=device,
                      name=path.stem, eval_batch_size=batch)

        fallback = ""
        if self.gradients in ("auto", "convert"):
            try:
                return self._converted(path, graph, logits, normalize, input_shape, ctx, common)
            except _NotConverted as exc:
                if self.gradients == "convert":
                    raise ModelError(f"{path.name}: {exc}",
                                     hint="use gradients: finite-differences, spsa or none"
                                     ) from None
                fallback = str(exc)

        if self.gradients == "none":
            model = Model(forward=logits, differentiable=False, **common)
            model.onnx_graph = graph
            self._describe(model, graph, None, "none (gradients: none)")
            return model
        method = self.gradients
        if method == "auto":
            method = "finite-differences" if features <= FD_MAX_FEATURES else "spsa"
        estimator = GradientEstimator(logits, method, self.fd_step, self.spsa_samples,
                                      stable_seed(ctx.seed, self.seed_key, path.name))
        passes = estimator.passes_per_gradient(features)
        if method == "finite-differences":
            note = (f"central finite differences through onnxruntime (step {self.fd_step:g}): "
                    f"{passes} forward passes per image per gradient")
        else:
            note = (f"SPSA through onnxruntime ({self.spsa_samples} directions, step "
                    f"{self.fd_step:g}): {passes} forward passes per image per gradient, "
                    f"a noisy estimate")
        if fallback:
            note += f"; the conversion to torch failed: {fallback}"
            log.warning("%s: conversion to torch failed (%s); gradients by %s", path.name,
                        fallback, method)
        model = Model(forward=estimated_forward(estimator), **common)
        model.onnx_graph = graph
        model.gradient_estimator = estimator
        self._describe(model, graph, method, note)
        return model

    def _input_shape(self, graph: OrtGraph, path: Path, ctx: Context | None = None) -> list[int]:
        dims = graph.dims
        given = self.input_shape
        if given is None and any(d is None for d in dims) and ctx is not None \
                and ctx.input_shape is not None and len(ctx.input_shape) == len(dims) \
                and all(d is None or d == s for d, s in zip(dims, ctx.input_shape)):
            given = list(ctx.input_shape)     # open dims: the shape of the data it is fed
        if given is not None:
            if len(given) != len(dims) or any(d is not None and d != s
                                              for d, s in zip(dims, given)):
                shown = ["?" if d is None else d for d in dims]
                raise ModelError(f"input_shape {given} does not fit {path.name}, whose input "
                                 f"{graph.input.name!r} takes images of shape {shown}")
            return list(given)
        if any(d is None for d in dims):
            shown = ["?" if d is None else d for d in dims]
            raise ModelError(f"{path.name}: the image shape of input {graph.input.name!r} is "
                             f"open ({shown})", hint="give input_shape, e.g. [3, 224, 224]")
        return [int(d) for d in dims]

    def _normalize(self, input_shape: list[int], path: Path) -> Normalize | None:
        from .normalize import Normalize

        if self.mean is None or self.std is None:
            return None
        channels = input_shape[0]
        if len(self.mean) not in (1, channels):
            raise ModelError(f"{len(self.mean)} mean/std values for {path.name}, whose images "
                             f"have {channels} channels", hint="give one value per channel")
        return Normalize(self.mean, self.std, len(input_shape) + 1)

    def _num_classes(self, graph: OrtGraph, logits: Callable, input_shape: list[int],
                     device: torch.device, path: Path) -> int:
        """The class count, from the graph or the parameter, checked by running the graph on
        two black images."""
        import torch

        probe = torch.zeros(graph.batch or 2, *input_shape, device=device)
        out = logits(probe)
        if out.dim() != 2 or len(out) != len(probe):
            raise ModelError(f"{path.name}: output {graph.output.name!r} has shape "
                             f"{list(out.shape)} for {len(probe)} images; classifier logits "
                             "are [batch, classes]", hint="choose another output_name")
        found = int(out.shape[1])
        if self.num_classes is not None and self.num_classes != found:
            raise ModelError(f"num_classes is {self.num_classes} but {path.name} outputs "
                             f"{found} logits per image")
        return found

    def _converted(self, path: Path, graph: OrtGraph, logits: Callable,
                   normalize: Normalize | None, input_shape: list[int], ctx: Context,
                   common: dict[str, Any]) -> Model:
        """The graph as a verified torch module, or :class:`_NotConverted` saying why not."""
        from torch import nn

        try:
            import onnx

            from .onnx_convert import ConversionError, convert
        except ImportError as exc:
            raise _NotConverted(f"{exc.name or 'onnx'} is not installed "
                                "(pip install 'robustness-harness[onnx]')") from None
        try:
            proto = onnx.load(str(path))
        except Exception as exc:
            raise _NotConverted(f"onnx cannot read it: {_one_line(exc)}") from None
        try:
            converted, stats = convert(proto, graph.output.name)
        except ConversionError as exc:
            raise _NotConverted(str(exc)) from None
        device = common["device"]
        module: nn.Module = converted if normalize is None else nn.Sequential(normalize,
                                                                              converted)
        module = module.to(device).eval()
        diff, allowed, n = self._verify(module, logits, input_shape, device, ctx)
        if not diff <= allowed:
            raise _NotConverted(f"the converted module's logits differ from onnxruntime's by "
                                f"{diff:.3g} (allowed {allowed:.3g})")
        model = Model(module, **common)
        note = (f"converted to torch; logits match onnxruntime within {diff:.2g} "
                f"(allowed {allowed:.2g}) on {n} inputs")
        self._describe(model, graph, "converted", note, diff)
        model.conversion_allowed_diff = allowed
        model.conversion_rewrites = {k: v for k, v in stats.items() if v}
        log.info("%s: %s", path.name, note)
        return model

    def _verify(self, module: nn.Module, logits: Callable, input_shape: list[int],
                device: torch.device, ctx: Context) -> tuple[float, float, int]:
        """(max |logit difference|, allowed difference, inputs checked) between the module
        and onnxruntime, on random inputs in [0, 1] and a black, a white and a grey image."""
        import torch

        gen = ctx.generator(self.seed_key, "verify", self.path)
        x = torch.cat([torch.rand(CHECK_RANDOM, *input_shape, generator=gen, device="cpu"),
                       torch.zeros(1, *input_shape, device="cpu"),
                       torch.ones(1, *input_shape, device="cpu"),
                       torch.full((1, *input_shape), 0.5, device="cpu")]).to(device)
        ref = logits(x)
        try:
            with torch.no_grad():
                out = module(x)
        except Exception as exc:
            raise _NotConverted(f"the converted module fails on {len(x)} images: "
                                f"{type(exc).__name__}: {_one_line(exc)}") from None
        if isinstance(out, (tuple, list)):
            out = out[0]
        if out.shape != ref.shape:
            raise _NotConverted(f"the converted module gives logits of shape "
                                f"{list(out.shape)}, onnxruntime {list(ref.shape)}")
        diff = float((out.float() - ref).abs().max())
        if math.isnan(diff):
            diff = math.inf
        scale = float(ref.abs().max()) if torch.isfinite(ref).all() else math.inf
        return diff, self.tolerance * max(1.0, scale), len(x)

    def _describe(self, model: Model, graph: OrtGraph, source: str | None, note: str,
                  max_diff: float | None = None) -> None:
        """Record on ``model`` how its gradients come about (for reports) and what runs it."""
        model.gradient_source = source
        model.gradient_note = note
        model.conversion_max_diff = max_diff
        model.onnx_path = str(Path(self.path).expanduser())
        model.onnx_providers = list(graph.providers)


class _NotConverted(Exception):
    """Why the conversion path was not taken (one line)."""
