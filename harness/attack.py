"""Attacks: the base class owns the shared checks; subclasses implement ``run`` on a batch."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

from ._lazy import torch

from .base import Plugin, blame, plugin_label
from .errors import ModelError, ParamError, PluginCrash, PluginError

if TYPE_CHECKING:
    from .context import Context
    from .model import Model

#: tolerance on the [0, 1] box, for float round-off
BOX_TOL = 1e-6
def out_of_memory() -> type:
    """What running out of device memory raises."""
    return getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError


@dataclass
class AttackResult:
    """What an attack returns for a batch; every tensor is on the model's device.

    ``success[i]``: ``x_adv[i]`` is classified as ``target[i]`` (targeted) or not as the true
    label (untargeted). ``already[i]``: image i needed no perturbation at all (the model
    already outputs the target, or already errs when untargeted); it counts as a success with
    zero distortion. ``grad_evals[i]``/``forward_evals[i]``: model gradient / forward passes
    image i took part in. ``distortion`` (the paper's sqrt(sum r^2 / n)), ``l2``, ``linf``
    and ``seconds`` are filled in by :class:`Attack`. ``failure[i]``: for an image where the
    attack did not reach its goal, a short code saying why (``"budget"``, ``"c-search"``...;
    the attack's :attr:`Attack.failure_advice` explains each), "" where it succeeded; None
    when the attack does not say.
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    target: torch.Tensor | None = None
    already: torch.Tensor | None = None
    grad_evals: torch.Tensor | None = None
    forward_evals: torch.Tensor | None = None
    distortion: torch.Tensor | None = None
    l2: torch.Tensor | None = None
    linf: torch.Tensor | None = None
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    failure: list[str] | None = None
    #: which images distortion metrics average over: "success" (the images where the attack
    #: reached its goal, the paper's convention) or "all" (attacks without a goal, such as
    #: noise); filled in by :class:`Attack` from :attr:`Attack.distortion_over`
    distortion_over: str = "success"

    def measured(self) -> torch.Tensor:
        """The mask of images distortion metrics average over (see ``distortion_over``)."""
        if self.distortion_over == "all":
            return torch.ones_like(self.success)
        return self.success

    @property
    def targeted(self) -> bool:
        return self.target is not None

    @staticmethod
    def concat(parts: list["AttackResult"]) -> "AttackResult":
        def cat(name: str) -> torch.Tensor | None:
            vals = [getattr(p, name) for p in parts]
            return None if any(v is None for v in vals) else torch.cat(vals)

        info: dict[str, Any] = {}
        for key in parts[0].info:
            values = [p.info.get(key) for p in parts]
            per_image = all(isinstance(v, torch.Tensor) and v.dim() >= 1
                            and len(v) == len(p.x_adv) for v, p in zip(values, parts))
            # per-image tensors are joined; anything else is kept from the first batch
            info[key] = torch.cat(values) if per_image else values[0]
        return AttackResult(
            x_adv=torch.cat([p.x_adv for p in parts]),
            success=torch.cat([p.success for p in parts]),
            target=cat("target"), already=cat("already"), grad_evals=cat("grad_evals"),
            forward_evals=cat("forward_evals"), distortion=cat("distortion"), l2=cat("l2"),
            linf=cat("linf"),
            seconds=sum(p.seconds for p in parts), info=info,
            failure=(None if any(p.failure is None for p in parts)
                     else [f for p in parts for f in p.failure]),
            distortion_over=parts[0].distortion_over)


TARGET_MODES = ("next", "random", "least-likely")


def check_target(target: str | int, param: str = "target") -> str | int:
    """Validate a ``target`` parameter: next, random, least-likely or a label."""
    if isinstance(target, bool):
        raise ParamError(param, f"{target!r} is not a target")
    if isinstance(target, int):
        if target < 0:
            raise ParamError(param, f"label {target} is negative")
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    if target not in TARGET_MODES:
        raise ParamError(param, f"unknown target {target!r}",
                         hint="use next, random, least-likely or a class label")
    return target


def choose_targets(mode: str | int, y: torch.Tensor, logits: torch.Tensor | None,
                   num_classes: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Target labels for labels ``y``: ``next`` (y+1 mod K), ``random`` (uniform over the
    other K-1 labels, drawn on the CPU from ``generator``), ``least-likely`` (argmin of
    ``logits``) or a fixed label."""
    if mode == "next":
        return (y + 1) % num_classes
    if mode == "random":
        shift = torch.randint(1, num_classes, (len(y),), generator=generator, device="cpu")
        return (y + shift.to(y.device)) % num_classes
    if mode == "least-likely":
        if logits is None:
            raise ValueError("least-likely targets need the model's logits")
        return logits.argmin(1)
    label = int(mode)
    if not 0 <= label < num_classes:
        raise ParamError("target", f"label {label} is out of range for {num_classes} classes")
    return torch.full_like(y, label)


class Attack(Plugin):
    """Base of attacks. ``attack(model, x, y, ctx)`` checks the inputs, splits them into
    batches of ``self.batch_size`` (when the attack has that parameter), calls :meth:`run` on
    each, checks what comes back (shape, device, the box) and fills in distortion and time.

    ``sweep`` names a parameter that may be given as a list in a suite; the harness then runs
    the attack once per value (``gaussian-noise`` with ``stddev: [0.1, 0.3]``).
    """

    kind: ClassVar[str] = "attack"
    sweep: ClassVar[str | None] = None
    #: whether the attack needs gradients of the model
    needs_gradients: ClassVar[bool] = True
    #: which images distortion metrics average over: "success" (where the attack reached its
    #: goal) or "all" (an attack without a goal, such as noise: its size is what it is on
    #: every image, and "success" would only say where the model happened to err)
    distortion_over: ClassVar[str] = "success"
    #: failure code (see :attr:`AttackResult.failure`) -> what it means and which parameter to
    #: change, shown in reports next to a success rate below 100%
    failure_advice: ClassVar[dict[str, str]] = {}
    #: the batch size that fitted in the device's memory, once a batch had to be halved
    effective_batch_size: int | None = None
    #: whether the attack looks for the smallest perturbation reaching its goal (L-BFGS, DDN,
    #: CW...): its per-image distortions then give robust accuracy at every epsilon, and the
    #: report draws robustness curves
    minimum_norm: ClassVar[bool] = False

    def batch_size_for(self, input_shape: tuple[int, ...]) -> int | None:
        """Images per batch for inputs of ``input_shape`` (None: all at once). The default is
        the ``batch_size`` parameter where the attack has one; an attack whose batch depends on
        the input's size (``batch_size: auto``) overrides this."""
        size = getattr(self, "batch_size", None)
        return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 \
            else None

    @property
    def stays_in_box(self) -> bool:
        """Whether the attacked inputs must stay in [0, 1] (checked after every batch)."""
        return True

    def run(self, model: "Model", x: torch.Tensor, y: torch.Tensor,
            ctx: "Context") -> AttackResult:
        """Attack one batch ``x`` (on ``model.device``) with true labels ``y``."""
        raise NotImplementedError

    def variants(self) -> list[tuple[str, "Attack"]]:
        """``[(label, attack)]``: one per value of the sweep parameter, else ``[("", self)]``."""
        return self._swept(self.sweep)

    def __call__(self, model: "Model", x: torch.Tensor, y: torch.Tensor,
                 ctx: "Context | None" = None) -> AttackResult:
        from .context import Context

        ctx = ctx or Context(device=model.device)
        if tuple(x.shape[1:]) != model.input_shape:
            raise ValueError(f"inputs of shape {tuple(x.shape[1:])} do not fit model "
                             f"{model.name!r} (expects {model.input_shape})")
        x = x.to(model.device)
        y = y.to(model.device)
        if x.numel() and (x.min() < -BOX_TOL or x.max() > 1 + BOX_TOL):
            raise ValueError("attack inputs must lie in [0, 1]")
        bs = self.effective_batch_size or self.batch_size_for(model.input_shape) or len(x) or 1
        parts = []
        with ctx.progress(f"{self.name or type(self).__name__} on {model.name or 'model'}",
                          len(x), "img") as bar:
            i = 0
            k = 0
            while i < len(x):
                k += 1
                batches = k - 1 + max(1, -(-(len(x) - i) // bs))
                xb, yb = x[i:i + bs], y[i:i + bs]
                bctx = replace(ctx, position=ctx.position + i) if i else ctx
                if xb.is_cuda:
                    torch.cuda.synchronize(xb.device)
                model.clear_nonfinite()
                t0 = time.perf_counter()
                try:
                    with blame(self, f"attacking model {model.name!r}"):
                        res = self.run(model, xb, yb, bctx)
                except PluginCrash as exc:
                    if not isinstance(exc.original, out_of_memory()) or len(xb) <= 1:
                        raise
                    # the batch did not fit in the device's memory: retry it at half the size
                    # it had (not of a batch_size beyond the images left), and keep that size
                    # for the rest of the run (reported with the results)
                    bs = max(1, len(xb) // 2)
                    self.effective_batch_size = bs
                    k -= 1
                    if xb.is_cuda:
                        torch.cuda.empty_cache()
                    continue
                if xb.is_cuda:
                    torch.cuda.synchronize(xb.device)
                seconds = time.perf_counter() - t0
                first = ctx.position + i
                when = (f"batch {k} of {batches}, images {first} to {first + len(xb) - 1}"
                        if batches > 1 else f"images {first} to {first + len(xb) - 1}")
                if model.saw_nonfinite():  # one check per batch, not per forward pass
                    raise ModelError(
                        f"model {model.name!r} returned NaN or infinite logits during the "
                        f"attack on perturbed inputs: {plugin_label(self)}, {when}",
                        hint="its outputs are not finite for inputs near the data; check its "
                             "weights, its input normalization and operations such as log or "
                             "division")
                self._check(res, xb, when)
                res = replace(res, seconds=seconds)
                parts.append(res)
                bar.update(len(xb))
                i += len(xb)
        res = AttackResult.concat(parts) if len(parts) != 1 else parts[0]
        res.distortion_over = type(self).distortion_over
        r = (res.x_adv - x).flatten(1)
        n = r.shape[1]
        res.l2 = r.norm(dim=1)
        res.linf = r.abs().amax(dim=1) if n else torch.zeros_like(res.l2)
        res.distortion = res.l2 / n ** 0.5
        if res.already is None:
            res.already = torch.zeros_like(res.success)
        zeros = torch.zeros(len(x), dtype=torch.long, device=x.device)
        if res.grad_evals is None:
            res.grad_evals = zeros
        if res.forward_evals is None:
            res.forward_evals = zeros
        return res

    def _check(self, res: Any, x: torch.Tensor, when: str = "") -> None:
        """What :meth:`run` returned must be an :class:`AttackResult` with finite images of
        the inputs' shape, on their device, in the box (for attacks that stay in it), and a
        boolean success mask: else a :class:`PluginError` naming the attack."""
        where = plugin_label(self)
        at = f" ({when})" if when else ""

        def fail(what: str, expected: str) -> PluginError:
            return PluginError(f"{where} returned {what}{at}; expected {expected}",
                               hint="a bug in that attack plugin")

        if not isinstance(res, AttackResult):
            got = ("None" if res is None else "a bare tensor" if isinstance(res, torch.Tensor)
                   else f"a {type(res).__module__}.{type(res).__qualname__}")
            raise fail(got, "a harness.AttackResult(x_adv=..., success=...)")
        if not isinstance(res.x_adv, torch.Tensor) or not res.x_adv.is_floating_point():
            raise fail(f"x_adv of type {type(res.x_adv).__name__}"
                       + (f" ({res.x_adv.dtype})" if isinstance(res.x_adv, torch.Tensor) else ""),
                       "a floating-point tensor")
        if res.x_adv.shape != x.shape:
            raise fail(f"x_adv of shape {tuple(res.x_adv.shape)}",
                       f"the inputs' shape {tuple(x.shape)}")
        if res.x_adv.device != x.device:
            raise fail(f"x_adv on {res.x_adv.device}", f"the inputs' device {x.device}")
        if not isinstance(res.success, torch.Tensor) or res.success.shape != (len(x),) \
                or res.success.dtype != torch.bool:
            got = (f"a success mask of {res.success.dtype} {tuple(res.success.shape)}"
                   if isinstance(res.success, torch.Tensor)
                   else f"success of type {type(res.success).__name__}")
            raise fail(got, f"a bool tensor of shape ({len(x)},)")
        if res.success.device != x.device:
            raise fail(f"a success mask on {res.success.device}", f"the inputs' device {x.device}")
        finite = torch.isfinite(res.x_adv.flatten(1)).all(1) if len(x) else None
        if finite is not None and not bool(finite.all()):
            bad = int((~finite).sum())
            raise fail(f"images with NaN or infinite pixels ({bad} of {len(x)})",
                       "finite images" + (" in [0, 1]" if self.stays_in_box else ""))
        if self.stays_in_box and len(x) and (res.x_adv.min() < -BOX_TOL
                                             or res.x_adv.max() > 1 + BOX_TOL):
            raise fail(f"images outside [0, 1] (from {float(res.x_adv.min()):.4g} to "
                       f"{float(res.x_adv.max()):.4g})", "images in the [0, 1] box")
