"""One small interface for every model: logits for a batch of inputs in [0, 1].

Attacks, metrics and probes only ever see a :class:`Model`, so a PyTorch module and an ONNX
graph look the same to them. Model plugins subclass :class:`ModelPlugin` and return a
``Model`` from ``load``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, ClassVar, Sequence

from ._lazy import torch

from .base import Plugin
from .errors import ModelError

if TYPE_CHECKING:
    from torch import nn

    from .context import Context


class Model:
    """A classifier: ``model(x)`` gives logits ``[B, num_classes]`` for ``x`` in [0, 1].

    ``x`` has shape ``[B, *input_shape]`` and must be on ``model.device``. When
    ``differentiable`` is true, gradients flow from the logits back to ``x``.
    """

    def __init__(self, module: nn.Module | None = None, *, input_shape: Sequence[int],
                 num_classes: int, device: torch.device | str = "cpu",
                 forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 differentiable: bool = True, name: str = "", eval_batch_size: int = 2048):
        if module is None and forward is None:
            raise ValueError("Model needs a module or a forward function")
        self.module = module
        self._forward = forward if forward is not None else module
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = int(num_classes)
        self.device = torch.device(device)
        self.differentiable = differentiable
        self.name = name
        self.eval_batch_size = eval_batch_size
        #: how gradients are obtained: "autograd", "converted" (an ONNX graph turned into
        #: torch), "finite-differences", "spsa", or None (no gradients)
        self.gradient_source: str | None = "autograd" if differentiable else None
        #: a line on the model's provenance or gradients, for the report
        self.gradient_note = ""
        #: on the device: whether any logits since :meth:`clear_nonfinite` held NaN or inf
        self._nonfinite: torch.Tensor | None = None
        if module is not None:
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self._forward(x)
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            # noted on the device, without waiting for it: attacks check once per batch
            bad = ~torch.isfinite(out.detach()).all()
            self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad
        return out

    def clear_nonfinite(self) -> None:
        """Forget the NaN or infinite logits seen so far (see :meth:`saw_nonfinite`)."""
        self._nonfinite = None

    def saw_nonfinite(self) -> bool:
        """Whether any call since :meth:`clear_nonfinite` returned NaN or infinite logits (one
        device synchronisation; the flag itself is kept on the device at every call)."""
        return self._nonfinite is not None and bool(self._nonfinite)

    def logits(self, x: torch.Tensor, batch_size: int | None = None, *,
               when: str = "") -> torch.Tensor:
        """Logits for any number of inputs (on any device), computed in batches without grad;
        returned on the model's device. NaN or infinite logits are a :class:`ModelError`
        (``when`` says on which inputs, for its message). A batch that does not fit in the
        device's memory is retried at half the size, which is kept for later calls."""
        from .attack import out_of_memory

        bs = batch_size or self.eval_batch_size
        outs = []
        i = 0
        with torch.no_grad():
            while i < len(x):
                try:
                    outs.append(self(x[i:i + bs].to(self.device)))
                except out_of_memory():
                    if bs <= 1:
                        raise
                    bs = max(1, bs // 2)
                    self.eval_batch_size = bs
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
                    continue
                i += bs
        if not outs:
            return torch.empty(0, self.num_classes, device=self.device)
        out = torch.cat(outs)
        self.check_logits(out, len(x), when)
        return out

    def predict(self, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Predicted labels, on the model's device."""
        return self.logits(x, batch_size).argmax(1)

    def check_logits(self, logits: torch.Tensor, n: int, when: str = "") -> None:
        """Raise a :class:`ModelError` for logits of the wrong shape or with NaN/inf."""
        if logits.shape != (n, self.num_classes):
            raise ModelError(
                f"model {self.name!r} returned logits of shape {tuple(logits.shape)} for "
                f"{n} inputs; expected ({n}, {self.num_classes})",
                hint="check the model's num_classes and output layer")
        if not torch.isfinite(logits).all():
            bad = int((~torch.isfinite(logits)).any(1).sum())
            raise ModelError(
                f"model {self.name!r} returned NaN or infinite logits for {bad} of {n} inputs"
                + (f" {when}" if when else ""),
                hint="check its weights and its input normalization")

    def layer(self, path: str) -> nn.Module:
        """The submodule at ``path`` (such as ``3`` or ``features.10``)."""
        if self.module is None:
            raise ModelError(f"model {self.name!r} exposes no layers (it is not a torch module)")
        try:
            return self.module.get_submodule(path)
        except AttributeError:
            names = [n for n, _ in self.module.named_modules() if n]
            raise ModelError(f"model {self.name!r} has no layer {path!r}",
                             hint=f"layers: {', '.join(names[:30])}") from None

    def features(self, path: str, x: torch.Tensor) -> torch.Tensor:
        """The output of layer ``path`` for ``x``, flattened to ``[B, features]``."""
        captured: list[torch.Tensor] = []
        # a copy: an in-place operation after the layer (ReLU(inplace=True)) would change it
        handle = self.layer(path).register_forward_hook(
            lambda _m, _i, out: captured.append(out.clone()))
        try:
            self(x)
        finally:
            handle.remove()
        return captured[0].flatten(1)

    def __repr__(self) -> str:
        return (f"Model({self.name!r}, input_shape={self.input_shape}, "
                f"num_classes={self.num_classes}, device={self.device})")


class ModelPlugin(Plugin):
    """Base of model plugins: parameters in the constructor, the work in ``load``."""

    kind: ClassVar[str] = "model"

    def load(self, ctx: "Context") -> Model:
        """Build (train, download or read) the model and return it on ``ctx.device``."""
        raise NotImplementedError
