"""Helpers and pytest fixtures for testing plugins against the harness.

The fixtures ``harness_registry``, ``tiny_model``, ``tiny_data`` and ``run_suite`` are
available in every pytest session where the harness is installed (it registers this module
as a pytest plugin, entry point ``pytest11``); the ``check_*`` functions assert the contracts
the harness relies on. The helpers make their own tiny data (scikit-learn's digits) and use
no built-in plugin.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import pytest

from ._lazy import torch

from .analysis import Analysis, AnalysisResult
from .attack import BOX_TOL, Attack, AttackResult
from .context import Context
from .data import Data
from .metric import Evaluation, Metric
from .model import Model

if TYPE_CHECKING:
    from .registry import Registry


def make_registry(*plugins: object, entry_points: bool = True) -> "Registry":
    """A registry over a fresh plugin manager: the installed plugins (``entry_points``) plus
    ``plugins`` (modules or objects with hook implementations), e.g. one not installed yet. A
    module that is also installed (the package under test, loaded through its entry point)
    is not registered twice."""
    from .plugins import make_plugin_manager
    from .registry import Registry

    return Registry(make_plugin_manager(entry_points=entry_points, extra=list(plugins)))


def tiny_data(n: int | None = 120, split: str = "test") -> Data:
    """Up to ``n`` of scikit-learn's 8x8 digits ([N, 1, 8, 8] in [0, 1]; no download):
    ``test`` the 360 images whose index is a multiple of 5, ``train`` the other 1,437."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
    y = torch.tensor(bunch.target, dtype=torch.long)
    keep = (torch.arange(len(y)) % 5 == 0) if split == "test" else (torch.arange(len(y)) % 5 != 0)
    x, y = x[keep], y[keep]
    if n is not None:
        x, y = x[:n], y[:n]
    return Data(x, y, 10, f"digits:{split}" + (f"[:{n}]" if n is not None else ""),
                [str(i) for i in range(10)])


def tiny_model(device: str | torch.device = "cpu") -> Model:
    """A fixed nearest-class-mean classifier on the 8x8 digits (about 89% accurate on the
    test split), differentiable, with layers ``0`` (flatten) and ``1`` (linear)."""
    train = tiny_data(None, "train")
    x = train.x.flatten(1)
    means = torch.stack([x[train.y == k].mean(0) for k in range(10)])
    from torch import nn

    module = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        module[1].weight.copy_(means)
        module[1].bias.copy_(-0.5 * (means ** 2).sum(1))
    return Model(module.to(device), input_shape=(1, 8, 8), num_classes=10, device=device,
                 name="tiny")


@contextmanager
def strict_device(what: str = "the code") -> Iterator[None]:
    """Inside, PyTorch's default device is ``meta``: a tensor created without ``device=``
    (one that would sit on the CPU while the model is on CUDA) holds no data, so the first
    computation that mixes it with real tensors, or reads it, fails. This finds device
    mistakes on a machine without a GPU; the failure is an AssertionError naming ``what``.

    Draw seeded randomness from a CPU generator with ``device="cpu"`` and move it to the
    model's device; make every other tensor with ``device=`` (or ``*_like``)."""
    try:
        with torch.device("meta"):
            yield
    except Exception as exc:
        # a plugin's own exception reaches here wrapped (PluginCrash): look at the original
        inner = getattr(exc, "original", exc)
        if not (isinstance(inner, (RuntimeError, NotImplementedError, TypeError, ValueError))
                and "meta" in str(inner)):
            raise
        raise AssertionError(f"{what} made a tensor without saying on which device (it would "
                             f"be on the CPU while the model is on CUDA): {inner}") from inner


@dataclass
class AttackCheck:
    """What :func:`check_attack` used and got: the ``model``, the inputs ``x`` and labels
    ``y`` (on the model's device), and the attack's ``result``. Reading any attribute of an
    :class:`AttackResult` from it reads the result's (``check.x_adv``), as code written when
    ``check_attack`` returned the result alone does."""

    result: AttackResult
    model: Model
    x: torch.Tensor
    y: torch.Tensor

    def __getattr__(self, name: str):
        if name == "result":
            raise AttributeError(name)
        return getattr(self.result, name)


def check_attack(attack: Attack, model: Model | None = None, data: Data | None = None,
                 ctx: Context | None = None, strict: bool = True) -> AttackCheck:
    """Run ``attack`` through the harness and assert what the harness relies on: shapes,
    device, the [0, 1] box, a bool success mask consistent with the model's predictions,
    per-image costs, and the same result twice with the same seed. With ``strict``, the first
    run is under :func:`strict_device`. Returns an :class:`AttackCheck`: the inputs it used
    and the result."""
    model = model or tiny_model()
    data = data or tiny_data(64)
    ctx = ctx or Context(device=model.device, seed=0)
    x, y = data.x.to(model.device), data.y.to(model.device)
    if strict:
        with strict_device(repr(attack)):
            res = attack(model, x, y, ctx)
    else:
        res = attack(model, x, y, ctx)
    assert res.x_adv.shape == x.shape, "x_adv has the wrong shape"
    assert res.x_adv.device == x.device, "x_adv left the model's device"
    assert res.x_adv.min() >= -BOX_TOL and res.x_adv.max() <= 1 + BOX_TOL, "x_adv left [0, 1]"
    assert res.success.dtype == torch.bool and res.success.shape == (len(x),)
    pred = model.logits(res.x_adv).argmax(1)
    goal = pred == res.target if res.target is not None else pred != y
    assert torch.equal(goal, res.success), "success does not match the model's predictions"
    for name in ("grad_evals", "forward_evals", "distortion", "l2", "already"):
        value = getattr(res, name)
        assert value is not None and value.shape == (len(x),), f"{name} is not per image"
    again = attack(model, x, y, Context(device=model.device, seed=ctx.seed))
    assert torch.equal(again.x_adv, res.x_adv), "the same seed gave a different result"
    return AttackCheck(res, model, x, y)


def check_metric(metric: Metric, attack: Attack | None = None, model: Model | None = None,
                 data: Data | None = None) -> float | None:
    """Compute ``metric`` (under :func:`strict_device`) on a real evaluation (with ``attack``
    when given, else clean) and assert it returns a finite number or None. Returns the
    value."""
    model = model or tiny_model()
    data = data or tiny_data(64)
    x, y = data.x.to(model.device), data.y.to(model.device)
    clean = model.logits(x).argmax(1)
    ev = Evaluation(model, x, y, clean)
    if attack is not None:
        res = attack(model, x, y, Context(device=model.device))
        ev = Evaluation(model, x, y, clean, res, model.logits(res.x_adv).argmax(1))
    with strict_device(repr(metric)):
        value = metric.compute(ev)
    if value is not None:
        assert isinstance(value, float) and value == value, f"{metric!r} gave {value!r}"
    elif attack is None:
        assert metric.needs_attack, f"{metric!r} returned None on a clean evaluation"
    return value


def check_analysis(analysis: Analysis, model: Model | None = None, data: Data | None = None,
                   ctx: Context | None = None) -> AnalysisResult:
    """Run ``analysis`` as the harness does (data only when it ``needs_data``), under
    :func:`strict_device`, and assert what the harness relies on: records with a metric name,
    a setting and a finite value, figures as ``.png`` names with PNG bytes, notes as text, and
    the same numbers twice with the same seed. Returns the result."""
    model = model or tiny_model()
    if analysis.needs_module:
        assert model.module is not None, f"{analysis!r} needs a torch module; give such a model"
    data = (data or tiny_data(64)) if analysis.needs_data else None
    ctx = ctx or Context(device=model.device, seed=0)
    with strict_device(repr(analysis)):
        res = analysis.run(model, data, ctx)
    assert isinstance(res, AnalysisResult), f"{analysis!r} returned {type(res).__name__}"
    assert res.records or res.figures, f"{analysis!r} measured nothing"
    for rec in res.records:
        assert isinstance(rec.get("metric"), str) and rec["metric"], f"record without a metric: {rec}"
        assert isinstance(rec.get("param"), str), f"record whose param is not text: {rec}"
        value = rec.get("value")
        assert isinstance(value, float) and value == value and abs(value) != float("inf"), \
            f"record with a value that is not a finite float: {rec}"
    keys = [(r["metric"], r["param"]) for r in res.records]
    assert len(keys) == len(set(keys)), "two records share a metric and a param"
    for name, png in res.figures.items():
        assert name.endswith(".png") and "/" not in name, f"figure name {name!r} is not a .png file name"
        assert png[:8] == b"\x89PNG\r\n\x1a\n", f"figure {name!r} is not PNG bytes"
    assert all(isinstance(n, str) for n in res.notes), "notes must be text"
    again = analysis.run(model, data, Context(device=model.device, seed=ctx.seed))
    assert again.records == res.records, "the same seed gave different numbers"
    return res


def run_suite_text(text: str, folder: Path, registry: Registry | None = None,
                   **options: Any) -> tuple[int, Any]:
    """Write ``text`` as a suite in ``folder``, run it there, and return (exit code, results
    DataFrame). ``options`` are :class:`harness.runner.RunOptions` fields (limit, seed...)."""
    from .runner import RunOptions, run_suite
    from .store import RunStore
    from .suite import load_suite

    registry = registry or make_registry()
    Path(folder).mkdir(parents=True, exist_ok=True)
    path = Path(folder) / "suite.yaml"
    path.write_text(text)
    suite = load_suite(path, registry)
    store = RunStore(Path(folder) / "run")
    options.setdefault("cache_dir", Path(folder) / "cache")
    _, code = run_suite(suite, registry, store, RunOptions(**options))
    return code, store.results()


# ------------------------------------------------------------------------------ fixtures

@pytest.fixture
def harness_registry() -> "Registry":
    """A registry with every installed plugin, from a fresh plugin manager."""
    return make_registry()


@pytest.fixture(name="tiny_data")
def _tiny_data_fixture() -> Data:
    """120 test images of the 8x8 digits."""
    return tiny_data()


@pytest.fixture(name="tiny_model")
def _tiny_model_fixture() -> Model:
    """The nearest-class-mean digits classifier, on the CPU."""
    return tiny_model()


@pytest.fixture
def run_suite(tmp_path):
    """run_suite(yaml_text, **options) -> (exit code, results DataFrame), in tmp_path."""

    def run(text: str, registry: Registry | None = None, **options: Any):
        return run_suite_text(text, tmp_path, registry, **options)

    return run
