"""What runs an ONNX model (see :mod:`.onnx_model`): onnxruntime sessions called on torch
tensors, and gradients estimated from forward passes (imported when a model loads: this
module imports numpy, torch and onnxruntime)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from harness import ModelError, stable_seed

#: input values per batch of perturbed points handed to onnxruntime by the estimators
ESTIMATOR_BATCH_VALUES = 1 << 22

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
