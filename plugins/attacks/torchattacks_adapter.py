"""The attacks of the torchattacks library (PGD, CW, DeepFool, AutoAttack, ...) as harness
attacks. Needs the optional extra: ``pip install 'robustness-harness[torchattacks]'``."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import torch
from torch import nn

from harness import (Attack, AttackResult, Context, Model, ParamError, check_target,
                     choose_targets, hookimpl)

INSTALL_HINT = "pip install 'robustness-harness[torchattacks]'"


def _library() -> Any:
    try:
        import torchattacks
    except ImportError:
        raise ParamError("attack", "the torchattacks library is not installed",
                         hint=INSTALL_HINT) from None
    return torchattacks


def attack_names() -> list[str]:
    """The attack classes torchattacks provides (empty when it is not installed)."""
    try:
        lib = _library()
    except ParamError:
        return []
    from torchattacks.attack import Attack as Base

    return sorted(n for n in dir(lib) if isinstance(getattr(lib, n), type)
                  and issubclass(getattr(lib, n), Base) and n not in ("MultiAttack",))


class _Counting(nn.Module):
    """The harness model seen as an nn.Module (what torchattacks expects), counting passes."""

    def __init__(self, model: Model):
        super().__init__()
        self.model = model
        # torchattacks reads the device from the first parameter
        self.anchor = nn.Parameter(torch.zeros(1, device=model.device), requires_grad=False)
        self.grad_passes = 0
        self.passes = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.passes += 1
        if torch.is_grad_enabled() and x.requires_grad:
            self.grad_passes += 1
        return self.model(x)


class TorchAttacks(Attack):
    """Any attack of the torchattacks library, by class name (``attack: PGD``) with its
    keyword arguments (``options: {eps: 0.3, steps: 40}``); targeted attacks take the
    harness's ``target``. Inputs stay in [0, 1], as torchattacks expects."""

    seed_name = "torchattacks"

    def __init__(self, *, attack: str, options: dict[str, Any] | None = None,
                 targeted: bool = False, target: str | int = "next", batch_size: int = 256):
        lib = _library()
        names = attack_names()
        if attack not in names:
            import difflib

            close = difflib.get_close_matches(attack, names, n=1)
            raise ParamError("attack", f"torchattacks has no attack {attack!r}",
                             hint=(f"did you mean {close[0]!r}? " if close else "")
                             + f"attacks: {', '.join(names)}")
        if batch_size < 1:
            raise ParamError("batch_size", "batch_size must be at least 1")
        self.attack = attack
        self.options = dict(options or {})
        self.targeted = targeted
        self.target = check_target(target)
        self.batch_size = batch_size
        cls = getattr(lib, attack)
        import inspect

        accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "model"}
        unknown = set(self.options) - accepted
        if unknown:
            raise ParamError("options", f"torchattacks.{attack} takes no {', '.join(sorted(unknown))}",
                             hint=f"it takes: {', '.join(sorted(accepted))}")

    def run(self, model: Model, x: torch.Tensor, y: torch.Tensor, ctx: Context) -> AttackResult:
        lib = _library()
        wrapped = _Counting(model)
        atk = getattr(lib, self.attack)(wrapped, **self.options)
        atk.set_device(model.device)
        with torch.no_grad():
            clean_logits = model(x)
        target = None
        if self.targeted:
            gen = ctx.generator(self.seed_key, self.attack, y.tolist())
            target = choose_targets(self.target, y, clean_logits, model.num_classes, gen)
            if "targeted" not in getattr(atk, "supported_mode", ["targeted"]):
                raise ParamError("targeted", f"torchattacks.{self.attack} has no targeted mode")
            with contextlib.redirect_stdout(io.StringIO()):  # it prints the mode change
                atk.set_mode_targeted_by_function(lambda inputs, labels: target)
        # torchattacks draws from torch's global generator (random starts): seed it from the
        # run's seed inside a fork, so results repeat and the caller's state is untouched
        seed = int(torch.randint(0, 2**62, (1,), device="cpu", generator=ctx.generator(
            self.seed_key, self.attack, "rng", y.tolist())))
        devices = [model.device] if model.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            x_adv = atk(x, y).detach().to(model.device).clamp_(0.0, 1.0)
        with torch.no_grad():
            pred = model(x_adv).argmax(1)
        clean_pred = clean_logits.argmax(1)
        if target is not None:
            success, already = pred == target, clean_pred == target
        else:
            success, already = pred != y, clean_pred != y
        ones = torch.ones(len(x), dtype=torch.long, device=x.device)
        return AttackResult(x_adv=x_adv, success=success, target=target, already=already,
                            grad_evals=ones * wrapped.grad_passes,
                            forward_evals=ones * (wrapped.passes - wrapped.grad_passes + 2),
                            info={"library": "torchattacks", "class": self.attack})


@hookimpl
def register_attacks(register):
    register("torchattacks", TorchAttacks)
