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

import hashlib
import logging
import math
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Sequence

import numpy as np
import torch
from torch import nn

from harness import Context, Model, ModelError, ModelPlugin, ParamError
from harness.context import stable_seed

from .files import check_file, check_mean_std, check_sha256, verify_pin

log = logging.getLogger(__name__)

GRADIENT_MODES = ("auto", "convert", "finite-differences", "spsa", "none")
#: ``auto`` falls back to finite differences up to this many input values, SPSA beyond
FD_MAX_FEATURES = 4096
#: input values per batch of perturbed points handed to onnxruntime by the estimators
ESTIMATOR_BATCH_VALUES = 1 << 22
#: random inputs in the conversion check (plus a black, a white and a grey one)
CHECK_RANDOM = 8

_NP_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64,
              "tensor(float16)": np.float16}


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


# ------------------------------------------------------------------------ onnxruntime

def choose_providers(device: torch.device, available: Sequence[str]) -> list[Any]:
    """onnxruntime execution providers for ``device``: CUDA (on the device's index) then
    CPU when the device is CUDA and the CUDA provider is available, else CPU only."""
    if device.type == "cuda" and "CUDAExecutionProvider" in available:
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}),
                "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OrtGraph:
    """An onnxruntime session on one image input and one output, called on torch tensors.

    ``graph(x)`` takes ``x`` (``[B, *input_shape]``, on any device, already normalized) and
    returns float32 logits on ``x``'s device. Graphs with a fixed batch size get the batch
    in slices of that size (the last one padded).
    """

    def __init__(self, path: Path, device: torch.device, input_name: str | None = None,
                 output_name: str | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = max(1, torch.get_num_threads())
        options.inter_op_num_threads = 1
        # torch and onnxruntime take turns in an attack's loop: idle threads must not spin
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.providers_asked = choose_providers(device, ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(str(path), options,
                                                providers=self.providers_asked)
        except Exception as exc:
            raise ModelError(f"cannot load {str(path)!r} with onnxruntime: {_one_line(exc)}",
                             hint="is it an ONNX model file, with only standard operators?"
                             ) from None
        self.providers = list(self.session.get_providers())
        self.device = device
        self.on_gpu = self.providers[0] == "CUDAExecutionProvider"
        #: hand tensors over through io binding (on the GPU); also usable on the CPU
        self.bind = self.on_gpu

        initializers = {i.name for i in self.session.get_overridable_initializers()}
        inputs = [i for i in self.session.get_inputs() if i.name not in initializers]
        names = [i.name for i in inputs]
        if input_name is not None and input_name not in names:
            raise ModelError(f"{path.name} has no input {input_name!r}",
                             hint=f"its inputs: {', '.join(names) or 'none'}")
        if len(inputs) != 1:
            raise ModelError(f"{path.name} takes {len(inputs)} inputs ({', '.join(names)}); "
                             "only graphs with one image input can be used")
        self.input = inputs[0]
        outputs = self.session.get_outputs()
        out_names = [o.name for o in outputs]
        if output_name is not None and output_name not in out_names:
            raise ModelError(f"{path.name} has no output {output_name!r}",
                             hint=f"its outputs: {', '.join(out_names)}")
        self.output = outputs[out_names.index(output_name)] if output_name else outputs[0]
        if self.input.type not in _NP_DTYPES:
            raise ModelError(f"{path.name}: input {self.input.name!r} is {self.input.type}; "
                             "an image input must be float, double or float16")
        self.np_dtype = _NP_DTYPES[self.input.type]
        self.torch_dtype = torch.from_numpy(np.zeros(0, self.np_dtype)).dtype
        shape = list(self.input.shape or [])
        if len(shape) < 2:
            raise ModelError(f"{path.name}: input {self.input.name!r} has shape {shape}; "
                             "expected [batch, *image shape]")
        self.batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        #: per-image dims, None where the graph leaves them open
        self.dims = [d if isinstance(d, int) and d > 0 else None for d in shape[1:]]
        out_shape = self.output.shape
        self.out_dims = list(out_shape) if out_shape is not None else None
        self.out_np_dtype = _NP_DTYPES.get(self.output.type)
        if self.out_np_dtype is None:
            raise ModelError(f"{path.name}: output {self.output.name!r} is {self.output.type}; "
                             "logits must be float, double or float16")

    @property
    def num_classes(self) -> int | None:
        """The output's class count when the graph fixes it."""
        if self.out_dims and len(self.out_dims) == 2 and isinstance(self.out_dims[1], int) \
                and self.out_dims[1] > 0:
            return self.out_dims[1]
        return None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.batch is None or len(x) == self.batch:
            return self._run(x)
        parts = []
        for i in range(0, len(x), self.batch):
            chunk = x[i:i + self.batch]
            n = len(chunk)
            if n < self.batch:
                pad = chunk.new_zeros((self.batch - n, *chunk.shape[1:]))
                chunk = torch.cat([chunk, pad])
            parts.append(self._run(chunk)[:n])
        if not parts:
            return torch.empty(0, self.num_classes or 0, device=x.device)
        return torch.cat(parts)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        try:
            if self.bind:
                out = self._run_bound(x)
            else:
                arr = x.detach().to("cpu", self.torch_dtype).contiguous().numpy()
                res = self.session.run([self.output.name], {self.input.name: arr})[0]
                out = torch.from_numpy(np.ascontiguousarray(res))
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"onnxruntime failed on a batch of shape {list(x.shape)}: "
                             f"{_one_line(exc)}") from None
        return out.to(device=x.device, dtype=torch.float32)

    def _run_bound(self, x: torch.Tensor) -> torch.Tensor:
        """Run through io binding: onnxruntime reads ``x`` and writes the logits in place on
        the session's device (the GPU for the CUDA provider), with no copies to the host."""
        dev = self.device if self.on_gpu else torch.device("cpu")
        kind, index = ("cuda", dev.index or 0) if dev.type == "cuda" else ("cpu", 0)
        x = x.detach().to(dev, self.torch_dtype).contiguous()
        if self.num_classes is None:  # output size unknown beforehand: let onnxruntime allocate
            binding = self.session.io_binding()
            binding.bind_input(self.input.name, kind, index, self.np_dtype, list(x.shape),
                               x.data_ptr())
            binding.bind_output(self.output.name, kind, index)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            self.session.run_with_iobinding(binding)
            return torch.from_numpy(binding.copy_outputs_to_cpu()[0])
        out_dtype = torch.from_numpy(np.zeros(0, self.out_np_dtype)).dtype
        out = torch.empty((len(x), self.num_classes), dtype=out_dtype, device=dev)
        binding = self.session.io_binding()
        binding.bind_input(self.input.name, kind, index, self.np_dtype, list(x.shape),
                           x.data_ptr())
        binding.bind_output(self.output.name, kind, index, self.out_np_dtype, list(out.shape),
                            out.data_ptr())
        if dev.type == "cuda":  # x may still be being written on torch's stream
            torch.cuda.synchronize(dev)
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return out


class Normalize(nn.Module):
    """(x - mean) / std per channel (dimension 1), for inputs of any rank."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], rank: int):
        super().__init__()
        view = (1, -1) + (1,) * (rank - 2)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(view))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(view))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


# ------------------------------------------------------------------------ estimated gradients

class GradientEstimator:
    """Logits through onnxruntime and vector-Jacobian products ``g^T J(x)`` estimated from
    forward passes only: central finite differences (``method="finite-differences"``,
    ``2 * D`` passes per image) or SPSA (``method="spsa"``, ``2 * samples`` passes per image).

    ``step`` is the perturbation of each input value, in the units of the harness's [0, 1]
    inputs. SPSA's random directions are drawn from a generator seeded with ``seed`` and the
    bytes of the batch, so an estimate depends only on its inputs, not on what ran before.
    """

    def __init__(self, logits: Callable[[torch.Tensor], torch.Tensor], method: str,
                 step: float, samples: int = 64, seed: int = 0):
        self.logits = logits
        self.method = method
        self.step = step
        self.samples = samples
        self.seed = seed

    def passes_per_gradient(self, features: int) -> int:
        """Forward passes per image for one gradient."""
        return 2 * features if self.method == "finite-differences" else 2 * self.samples

    def vjp(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """The estimate of ``d (sum_i g_i . f(x_i)) / dx`` for logits ``f``."""
        if self.method == "finite-differences":
            return self._finite_differences(x, g)
        return self._spsa(x, g)

    def _finite_differences(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        shape = x.shape[1:]
        flat = x.detach().flatten(1).float()
        g = g.detach().float()
        n_img, features = flat.shape
        grad = torch.empty_like(flat)
        rows = max(2, ESTIMATOR_BATCH_VALUES // features)
        width = min(features, rows // 2)            # coordinates per pass
        group = max(1, rows // (2 * width))         # images per pass
        h = self.step
        for i0 in range(0, n_img, group):
            xs, gs = flat[i0:i0 + group], g[i0:i0 + group]
            n = len(xs)
            for j0 in range(0, features, width):
                m = min(width, features - j0)
                idx = torch.arange(m, device=flat.device)
                pts = xs[:, None, :].repeat(1, 2 * m, 1)
                pts[:, idx, j0 + idx] += h
                pts[:, m + idx, j0 + idx] -= h
                out = self.logits(pts.view(n * 2 * m, *shape)).view(n, 2, m, -1)
                diff = out[:, 0] - out[:, 1]                         # [n, m, K]
                grad[i0:i0 + n, j0:j0 + m] = (diff * gs[:, None, :]).sum(-1) / (2 * h)
        return grad.view_as(x).to(x.dtype)

    def _spsa(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        shape = x.shape[1:]
        flat = x.detach().flatten(1).float()
        g = g.detach().float()
        n_img, features = flat.shape
        digest = hashlib.blake2b(flat.cpu().numpy().tobytes(), digest_size=8).hexdigest()
        gen = torch.Generator().manual_seed(stable_seed(self.seed, "spsa", digest))
        grad = torch.zeros_like(flat)
        rows = max(2, ESTIMATOR_BATCH_VALUES // features)
        width = max(1, min(self.samples, rows // 2))   # directions per pass
        group = max(1, rows // (2 * width)) if width == self.samples else 1
        h = self.step
        for i0 in range(0, n_img, group):
            xs, gs = flat[i0:i0 + group], g[i0:i0 + group]
            n = len(xs)
            for k0 in range(0, self.samples, width):
                m = min(width, self.samples - k0)
                delta = _rademacher((n, m, features), gen).to(flat.device)
                pts = torch.cat([xs[:, None] + h * delta, xs[:, None] - h * delta], 1)
                out = self.logits(pts.view(n * 2 * m, *shape)).view(n, 2, m, -1)
                slope = ((out[:, 0] - out[:, 1]) * gs[:, None, :]).sum(-1) / (2 * h)  # [n, m]
                grad[i0:i0 + n] += (slope[:, :, None] * delta).sum(1)
        grad /= self.samples
        return grad.view_as(x).to(x.dtype)


def _rademacher(shape: tuple[int, int, int], gen: torch.Generator) -> torch.Tensor:
    """Independent +-1 values (float32) from ``gen``: eight per random byte."""
    n, m, features = shape
    raw = torch.randint(0, 256, (n, m, (features + 7) // 8), generator=gen, dtype=torch.uint8,
                        device="cpu")
    bits = (raw[..., None] >> torch.arange(8, dtype=torch.uint8, device=raw.device)) & 1
    return bits.flatten(2)[..., :features].float().mul_(2).sub_(1)


class _EstimatedGradient(torch.autograd.Function):
    """onnxruntime's logits in the forward pass, an estimated ``g^T J`` in the backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, estimator: GradientEstimator) -> torch.Tensor:
        ctx.estimator = estimator
        ctx.save_for_backward(x)
        return estimator.logits(x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:
        x, = ctx.saved_tensors
        return ctx.estimator.vjp(x, grad_out), None


def estimated_forward(estimator: GradientEstimator) -> Callable[[torch.Tensor], torch.Tensor]:
    """A model forward: plain onnxruntime logits, through :class:`_EstimatedGradient` when
    the input needs a gradient."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _EstimatedGradient.apply(x, estimator)
        return estimator.logits(x)

    return forward


# ------------------------------------------------------------------------ the plugin

def _positive_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise ParamError(name, f"{name} must be a positive number, not {value!r}")
    return float(value)


def _positive_int(name: str, value: Any, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParamError(name, f"{name} must be a positive integer, not {value!r}")
    return value


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

    def __init__(self, *, path: str, input_name: str | None = None,
                 output_name: str | None = None, input_shape: list[int] | None = None,
                 num_classes: int | None = None, mean: list[float] | str | None = None,
                 std: list[float] | str | None = None, sha256: str | None = None,
                 gradients: Literal["auto", "convert", "finite-differences", "spsa",
                                    "none"] = "auto",
                 tolerance: float = 1e-4, fd_step: float = 1e-2, spsa_samples: int = 64):
        if not isinstance(path, (str, Path)) or not str(path).strip():
            raise ParamError("path", "path must name an .onnx file")
        self.path = str(path)
        self.input_name = input_name
        self.output_name = output_name
        if input_shape is not None:
            if not isinstance(input_shape, (list, tuple)) or not input_shape:
                raise ParamError("input_shape", f"input_shape {input_shape!r} is not a shape")
            for s in input_shape:
                _positive_int("input_shape", s)
            input_shape = list(input_shape)
        self.input_shape = input_shape
        self.num_classes = _positive_int("num_classes", num_classes, allow_none=True)
        mean, std = check_mean_std(mean, std)
        self.mean = mean
        self.std = std
        if gradients not in GRADIENT_MODES:
            raise ParamError("gradients", f"unknown gradients {gradients!r}",
                             hint=f"use one of {', '.join(GRADIENT_MODES)}")
        self.gradients = gradients
        self.tolerance = _positive_number("tolerance", tolerance)
        self.fd_step = _positive_number("fd_step", fd_step)
        if self.fd_step >= 0.5:
            raise ParamError("fd_step", f"fd_step {fd_step} is too large for inputs in [0, 1]")
        self.spsa_samples = _positive_int("spsa_samples", spsa_samples)
        self.sha256 = check_sha256(sha256)
        check_file("path", self.path, "ONNX file")

    def preflight(self, ctx: Context) -> None:
        """The file's ``sha256`` pin, checked before anything runs."""
        verify_pin(self.path, self.sha256)

    # ------------------------------------------------------------------ load

    def load(self, ctx: Context) -> Model:
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
                                      stable_seed(ctx.seed, "onnx", path.name))
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
        gen = ctx.generator("onnx", "verify", self.path)
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
