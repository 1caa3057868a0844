"""The attacks of the torchattacks library (PGD, CW, DeepFool, AutoAttack, ...) as harness
attacks. Needs the optional extra: ``pip install 'robustness-harness[torchattacks]'``.

Building the plugin (``harness validate``) checks the attack's name and options without
importing the library (which imports torch): its catalogue is read from the installed
package's source (see :func:`catalogue`); the library itself is imported when the attack
runs.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import functools
import importlib.util
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from pydantic import model_validator

import harness
from harness import (Attack, AttackResult, Context, Field, Model, ParamError, choose_targets,
                     hookimpl)

from ..params import NonBlank, Target

if TYPE_CHECKING:
    import torch

INSTALL_HINT = "pip install 'robustness-harness[torchattacks]'"
#: classes of the library that are not attacks on their own
NOT_ATTACKS = ("MultiAttack",)


def _library() -> Any:
    try:
        import torchattacks
    except ImportError:
        raise ParamError("attack", "the torchattacks library is not installed",
                         hint=INSTALL_HINT) from None
    return torchattacks


def installed() -> bool:
    """Whether the torchattacks library is installed (without importing it)."""
    return importlib.util.find_spec("torchattacks") is not None


@functools.lru_cache(maxsize=None)
def catalogue() -> dict[str, frozenset[str] | None]:
    """The attacks torchattacks provides: class name -> the keyword arguments its
    constructor takes besides the model (None: any, it takes ``**kwargs``).

    Read from the installed package's source (the ``from .attacks.x import Name`` lines of
    its ``__init__`` and each class's ``__init__``), so that checking a suite costs no
    import of torch; where the source does not read as expected, the library is imported
    and inspected instead. Empty when torchattacks is not installed."""
    spec = importlib.util.find_spec("torchattacks")
    if spec is None or not spec.origin:
        return {}
    try:
        return _catalogue_from_source(Path(spec.origin))
    except (OSError, SyntaxError, ValueError):
        return _catalogue_from_import()


def _catalogue_from_source(init: Path) -> dict[str, frozenset[str] | None]:
    found: dict[str, frozenset[str] | None] = {}
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if not isinstance(node, ast.ImportFrom) or node.level != 1 or not node.module:
            continue
        source = init.parent.joinpath(*node.module.split(".")).with_suffix(".py")
        classes = {c.name: c for c in ast.parse(source.read_text(encoding="utf-8")).body
                   if isinstance(c, ast.ClassDef)}
        for alias in node.names:
            cls = classes.get(alias.name)
            if cls is None:
                raise ValueError(f"class {alias.name} not found in {source}")
            bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "")
                     for b in cls.bases}
            if "Attack" not in bases or alias.name in NOT_ATTACKS:
                continue
            found[alias.asname or alias.name] = _init_keywords(cls)
    if not found:
        raise ValueError("no attacks found")
    return found


def _init_keywords(cls: ast.ClassDef) -> frozenset[str] | None:
    init = next((f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"),
                None)
    if init is None:
        raise ValueError(f"{cls.name} has no __init__ of its own")
    if init.args.kwarg is not None:
        return None
    names = [a.arg for a in init.args.posonlyargs + init.args.args + init.args.kwonlyargs]
    return frozenset(names) - {"self", "model"}


def _catalogue_from_import() -> dict[str, frozenset[str] | None]:
    import inspect

    lib = _library()
    from torchattacks.attack import Attack as Base

    out: dict[str, frozenset[str] | None] = {}
    for name in dir(lib):
        cls = getattr(lib, name)
        if isinstance(cls, type) and issubclass(cls, Base) and name not in NOT_ATTACKS:
            params = inspect.signature(cls.__init__).parameters
            takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
            out[name] = None if takes_any else frozenset(params) - {"self", "model"}
    return out


def attack_names() -> list[str]:
    """The attack classes torchattacks provides (empty when it is not installed)."""
    return sorted(catalogue())


class TorchAttacks(Attack):
    """Any attack of the torchattacks library, by class name (``attack: PGD``) with its
    keyword arguments (``options: {eps: 0.3, steps: 40}``); targeted attacks take the
    harness's ``target``. Inputs stay in [0, 1], as torchattacks expects."""

    seed_name = "torchattacks"

    class Params(harness.Params):
        attack: NonBlank = Field(description="the torchattacks class, such as PGD, CW, "
                                             "DeepFool or AutoAttack")
        options: Union[dict[str, Any], None] = Field(
            None, description="keyword arguments of the class, such as {eps: 0.3, steps: 40}")
        targeted: bool = Field(False, description="aim at target labels (the class must have "
                                                  "a targeted mode)")
        target: Target = "next"
        batch_size: int = Field(256, ge=1, description="images attacked together")

        @model_validator(mode="after")
        def _options(self) -> "TorchAttacks.Params":
            self.options = dict(self.options or {})
            return self

    def __init__(self, **values: Any):
        super().__init__(**values)
        if not installed():
            raise ParamError("attack", "the torchattacks library is not installed",
                             hint=INSTALL_HINT)
        attacks = catalogue()
        if self.attack not in attacks:
            names = sorted(attacks)
            close = difflib.get_close_matches(self.attack, names, n=1)
            raise ParamError("attack", f"torchattacks has no attack {self.attack!r}",
                             hint=(f"did you mean {close[0]!r}? " if close else "")
                             + f"attacks: {', '.join(names)}")
        accepted = attacks[self.attack]
        unknown = set(self.options) - accepted if accepted is not None else set()
        if unknown:
            raise ParamError("options", f"torchattacks.{self.attack} takes no "
                                        f"{', '.join(sorted(unknown))}",
                             hint=f"it takes: {', '.join(sorted(accepted or ()))}")

    def check_data(self, num_classes: int) -> None:
        from .lbfgs import _check_target_fits

        _check_target_fits(self.target, self.targeted, num_classes)

    def run(self, model: Model, x: torch.Tensor, y: torch.Tensor, ctx: Context) -> AttackResult:
        import torch

        from .torchattacks_model import CountingModule

        lib = _library()
        wrapped = CountingModule(model)
        atk = getattr(lib, self.attack)(wrapped, **self.options)
        atk.set_device(model.device)
        with torch.no_grad():
            clean_logits = model(x)
        target = None
        if self.targeted:
            gen = ctx.generator(self.seed_key, self.attack, ctx.position, y.tolist())
            target = choose_targets(self.target, y, clean_logits, model.num_classes, gen)
            if "targeted" not in getattr(atk, "supported_mode", ["targeted"]):
                raise ParamError("targeted", f"torchattacks.{self.attack} has no targeted mode")
            with contextlib.redirect_stdout(io.StringIO()):  # it prints the mode change
                atk.set_mode_targeted_by_function(lambda inputs, labels: target)
        # torchattacks draws from torch's global generator (random starts): seed it from the
        # run's seed inside a fork, so results repeat and the caller's state is untouched
        seed = int(torch.randint(0, 2**62, (1,), device="cpu", generator=ctx.generator(
            self.seed_key, self.attack, "rng", ctx.position, y.tolist())))
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
