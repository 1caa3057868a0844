"""How much of an attack's time is spent inside the model's own forward and backward passes.

:class:`ModelClock` wraps a :class:`harness.Model` in another ``Model`` that looks the same
to an attack and times every call to the wrapped module:

* the forward pass: from the call to its return;
* the backward pass through the model: from the moment the gradient with respect to the
  model's output arrives (a hook on the output) to the moment the gradient with respect to
  its input is complete (a hook on the input). Autograd runs the graph's nodes in reverse
  order of creation, so what runs between the two hooks is the model's backward graph; the
  loss on the logits runs before the first hook and the penalty on the input after the
  second.

On a CUDA device every boundary synchronizes, so that the clock measures the kernels, not
their launch (the synchronization itself slows the attack a little; the share reported is
then a slight underestimate). On the CPU the operations are synchronous.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from harness import Model


@dataclass
class Times:
    forward: float = 0.0          # seconds in forward passes that build a graph
    forward_only: float = 0.0     # seconds in forward passes without a graph (no_grad)
    backward: float = 0.0         # seconds in backward passes through the model
    calls: int = 0
    images: int = 0               # images summed over calls

    @property
    def total(self) -> float:
        return self.forward + self.forward_only + self.backward


class ModelClock:
    """``clock.model``: the timed stand-in for ``model``; ``clock.times``: what it measured
    since the last :meth:`reset`."""

    def __init__(self, model: Model):
        self.inner = model
        self.times = Times()
        self._cuda = model.device.type == "cuda"
        self._bw_start: float | None = None
        self.model = Model(forward=self._forward, input_shape=model.input_shape,
                           num_classes=model.num_classes, device=model.device,
                           differentiable=model.differentiable, name=model.name,
                           eval_batch_size=model.eval_batch_size)
        self.model.module = model.module

    def reset(self) -> None:
        self.times = Times()

    def _now(self) -> float:
        if self._cuda:
            torch.cuda.synchronize(self.inner.device)
        return time.perf_counter()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        t0 = self._now()
        out = self.inner(x)
        t1 = self._now()
        self.times.calls += 1
        self.times.images += len(x)
        if out.requires_grad and x.requires_grad:
            self.times.forward += t1 - t0
            out.register_hook(self._backward_starts)
            x.register_hook(self._backward_ends)
        else:
            self.times.forward_only += t1 - t0
        return out

    def _backward_starts(self, grad: torch.Tensor) -> None:
        self._bw_start = self._now()

    def _backward_ends(self, grad: torch.Tensor) -> None:
        if self._bw_start is not None:
            self.times.backward += self._now() - self._bw_start
            self._bw_start = None
