"""The plugin-facing API stands apart from the engine: what plugin authors import pulls in no
runner, suite, store or report; the Context gives plugins what they need; harness.testing
works on its own."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

import harness
from harness import Attack, AttackResult, Context, Field, Params, ParamError
from harness.testing import check_attack, make_registry, tiny_data, tiny_model

API = ["harness", "harness.base", "harness.context", "harness.data", "harness.model",
       "harness.attack", "harness.metric", "harness.analysis", "harness.errors",
       "harness.hookspecs", "harness.params", "harness.reporting", "harness.testing"]
ENGINE = ["harness.runner", "harness.suite", "harness.store", "harness.report",
          "harness.registry", "harness.plugins", "harness.plan", "harness.kinds",
          "harness.gates", "harness.merge", "harness.resume", "harness.executors",
          "harness.cli", "harness_plugins"]


def test_the_api_imports_nothing_of_the_engine():
    code = (f"import importlib, sys\n"
            f"for m in {API!r}: importlib.import_module(m)\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in ('harness', "
            f"'harness_plugins') and any(m == e or m.startswith(e + '.') for e in {ENGINE!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]", out


def test_the_public_api_is_versioned_and_exported():
    assert harness.__api_version__ == "1.0"
    for name in ("Params", "Field", "DatasetSpec", "ModelSpec", "stable_seed", "Reporter",
                 "RunView", "Context", "Attack", "AttackResult", "check_target"):
        assert name in harness.__all__ and hasattr(harness, name)


class Step(Attack):
    """Moves every pixel by ``size`` along the sign of the loss gradient."""

    class Params(Params):
        size: float = Field(0.1, gt=0, le=1, description="step size")

    seed_name = "step"

    def run(self, model, x, y, ctx):
        x_req = x.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(model(x_req), y)
        (grad,) = torch.autograd.grad(loss, x_req)
        x_adv = (x + self.size * grad.sign()).clamp(0, 1).detach()
        with torch.no_grad():
            pred = model(x_adv).argmax(1)
        return AttackResult(x_adv=x_adv, success=pred != y)


def test_declared_params_check_python_construction_and_suites_alike():
    assert Step(size=0.2).size == 0.2 and repr(Step(size=0.2)) == "Step(size=0.2)"
    with pytest.raises(ParamError, match="size=2 is invalid for attack Step"):
        Step(size=2)
    with pytest.raises(ParamError, match="size=True is invalid"):
        Step(size=True)                                   # strict: true is not a number
    plugin = types_module(Step)
    reg = make_registry(plugin)
    built = reg.build("attack", "step", {"size": 0.3})
    assert built.params() == {"size": 0.3} and built.name == "step"
    with pytest.raises(ParamError, match="attack 'step'.*did you mean 'size'"):
        reg.build("attack", "step", {"sise": 0.3})


def test_the_registered_name_does_not_change_seeds_or_cache_keys():
    class Plugin:
        @harness.hookimpl
        def register_attacks(self, register):
            register("step", Step)
            register("alias", Step)

    reg = make_registry(Plugin())
    a, b = reg.build("attack", "step", {}), reg.build("attack", "alias", {})
    assert (a.name, b.name) == ("step", "alias")          # each instance its own name
    assert a.seed_key == b.seed_key == "step" and a.config_key() == b.config_key()
    assert Step.__dict__.get("name", "") == ""            # the class is not written to


class Sweepy(Attack):
    """A swept attack without a seed_name: its streams follow its registered name."""

    sweep = "size"

    class Params(Params):
        size: float | list[float] = 0.1

    def run(self, model, x, y, ctx):  # pragma: no cover - only its keys are looked at
        raise NotImplementedError


def test_a_swept_plugin_keeps_its_registered_name_and_streams_in_every_variant():
    reg = make_registry(types_module(Sweepy, "sweepy"))
    built = reg.build("attack", "sweepy", {"size": [0.1, 0.2]})
    single = reg.build("attack", "sweepy", {"size": 0.2})
    (_, first), (label, second) = built.variants()
    assert label == "size=0.2" and second.name == first.name == "sweepy"
    assert first.seed_key == second.seed_key == single.seed_key == "sweepy"
    assert second.config_key() == single.config_key()


def types_module(cls, name="step"):
    import types

    module = types.ModuleType(f"{name}_plugin")
    module.register_attacks = harness.hookimpl(lambda register: register(name, cls))
    return module


def test_make_registry_takes_an_installed_package_again():
    import harness_example

    reg = make_registry(harness_example)                  # installed and passed: once
    assert "fgsm" in reg.names("attack") and not reg.broken and not reg.conflicts


def test_check_attack_returns_its_inputs_with_the_result():
    check = check_attack(Step(size=0.2))
    assert check.x.shape == (64, 1, 8, 8) and check.y.shape == (64,)
    assert torch.equal(check.x_adv, check.result.x_adv)   # reads through to the result
    assert check.model.name == "tiny"


def test_testing_helpers_need_no_builtin_plugins():
    code = ("import sys\nfrom harness.testing import tiny_data, tiny_model\n"
            "d = tiny_data(10); m = tiny_model()\n"
            "print(len(d), m.predict(d.x).shape[0], "
            "any(k.startswith('harness_plugins') for k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["10", "10", "False"]


def test_context_data_dir_seeds_cache_and_datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_DATA_DIR", str(tmp_path / "data"))
    ctx = Context(seed=3, cache_dir=tmp_path / "cache")
    assert ctx.data_dir == tmp_path / "data"              # as the README promises
    with ctx.seeded("init", "a"):
        first = nn.Linear(4, 2).weight.clone()
    with ctx.seeded("init", "a"):
        again = nn.Linear(4, 2).weight.clone()
    with ctx.seeded("init", "b"):
        other = nn.Linear(4, 2).weight.clone()
    assert torch.equal(first, again) and not torch.equal(first, other)
    path = ctx.write_cache(ctx.cache_path("models", "x.bin"), b"weights")
    assert path.read_bytes() == b"weights" and not list(path.parent.glob(".*tmp"))
    calls = []

    def loader(use, params, c):
        calls.append((use, params))
        return tiny_data(5)

    ctx = Context(loader=loader)
    assert len(ctx.dataset("anything", split="x")) == 5
    ctx.dataset("anything", split="x")
    assert calls == [("anything", {"split": "x"})]          # loaded once per run


def test_a_package_needing_a_newer_api_is_left_out_with_a_line(tmp_path, monkeypatch):
    (tmp_path / "future_plugins.py").write_text(
        "HARNESS_API = '1.9'\nfrom harness import hookimpl\n")
    info = tmp_path / "future_plugins-2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: future-plugins\nVersion: 2.0\n")
    (info / "entry_points.txt").write_text("[harness]\nfuture = future_plugins\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    (line,) = [b.line() for b in make_registry().broken]
    assert "needs plugin API 1.9; this harness has 1.0" in line
    assert line.endswith("HARNESS_BLOCK_PLUGINS=future")
    monkeypatch.setenv("HARNESS_ONLY_PLUGINS", "example")  # an allow-list leaves it out too
    assert not make_registry().broken


def test_a_streamed_dataset_still_gives_x_and_y_with_a_deprecation_warning():
    """Plugins written when every dataset was tensors in memory read ``.x``/``.y`` of what
    ``ctx.dataset`` returns; on a streamed dataset that still works, and says what to write."""
    import pytest
    import torch

    from harness import Context

    data = Context().dataset("synthetic", shape=[1, 4, 4], size=10, seed=3)
    held = data.materialize()
    with pytest.warns(DeprecationWarning, match=r"data\.materialize\(\)\.x"):
        x = data.x
    with pytest.warns(DeprecationWarning, match=r"materialize\(\)\.y"):
        y = data.y
    assert torch.equal(x, held.x) and torch.equal(y, held.y)


@pytest.mark.parametrize("suite", ["suites/quickstart.yaml", "suites/paper-mnist.yaml"])
def test_validate_and_plugins_import_neither_torch_nor_numpy(suite):
    """``harness validate`` compiles every test kind's plan (transfer tests included) and
    ``harness plugins`` lists the plugins, both without torch's or numpy's import cost."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    if not (root / suite).is_file():
        pytest.skip(f"{suite} is not in this checkout")
    code = ("import sys\nfrom harness.cli import main\n"
            "for argv in (['validate', sys.argv[1]], ['plugins']):\n"
            "    try:\n        main(argv)\n    except SystemExit as exc:\n"
            "        assert not exc.code, exc.code\n"
            "print(sorted(m for m in ('torch', 'numpy', 'pandas') if m in sys.modules), "
            "file=sys.stderr)")
    env = {**__import__("os").environ, "HARNESS_ONLY_PLUGINS": "robustness-harness"}
    done = subprocess.run([sys.executable, "-c", code, suite], cwd=root, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "[]", done.stderr


class Shrink(Attack):
    """A parameter named by a Python keyword, through a pydantic alias."""

    class Params(Params):
        lambda_: float = Field(0.1, alias="lambda", gt=0, description="the penalty")

    def run(self, model, x, y, ctx):  # pragma: no cover - only its parameters are looked at
        raise NotImplementedError


def test_a_parameter_with_an_alias_is_written_by_its_alias_in_suites():
    reg = make_registry(types_module(Shrink, "shrink"))
    built = reg.build("attack", "shrink", {"lambda": 0.3})
    assert built.lambda_ == 0.3 and Shrink(lambda_=0.2).lambda_ == 0.2
    with pytest.raises(ParamError, match="lambda=-1"):
        reg.build("attack", "shrink", {"lambda": -1})
    with pytest.raises(ParamError, match="did you mean 'lambda'"):
        reg.build("attack", "shrink", {"lambd": 0.3})
