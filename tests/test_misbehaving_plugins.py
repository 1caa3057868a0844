"""Plugins and models that misbehave: every failure fails only its own case, with one line
that names who misbehaved (the plugin and its package, or the model and when), and never
looks like robustness."""

from __future__ import annotations

import json
import types

import pytest
import torch

from harness import Attack, AttackResult, DatasetPlugin, ModelPlugin, PluginError, hookimpl
from harness.cli import main
from harness.plugins import make_plugin_manager
from harness.registry import Registry
from harness.testing import make_registry, run_suite_text

DIGITS = "data: {use: digits, split: test, limit: 24}\n"
NEAR = '{use: torch, factory: "tiny_models:digits_template", input_shape: [1, 8, 8]}'


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def errors_of(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("error:")]


# ------------------------------------------------------------------ item 7: SystemExit

def test_a_factory_that_exits_fails_only_its_model(write_suite, tmp_path, capsys):
    """A model factory raising SystemExit: its cases fail with one line naming the plugin
    and its package; the other model's cases still run; the summary is final."""
    suite = write_suite(f"""\
name: exits
{DIGITS}models:
  gone: {{use: torch, factory: "tiny_models:exits", input_shape: [1, 8, 8]}}
  near: {NEAR}
tests:
  - name: clean
  - name: noise
    attack: {{use: gaussian-noise, stddev: 0.1}}
""")
    code, out, err = run_cli(["run", suite, "--out", tmp_path / "r", "-q"], capsys)
    assert code == 1, err
    lines = errors_of(err)
    assert len(lines) == 2 and all("clean x gone" in ln or "noise x gone" in ln for ln in lines)
    assert all("model plugin 'torch' (package robustness-harness" in ln
               and "raised SystemExit while loading model 'gone': exit status 3" in ln
               for ln in lines), lines
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["verdict"].startswith("FAILED") and summary["exit_code"] == 1
    status = {(c["test"], c["model"]): c["status"] for c in summary["cases"]}
    assert status == {("clean", "gone"): "error", ("clean", "near"): "ok",
                      ("noise", "gone"): "error", ("noise", "near"): "ok"}
    assert "SystemExit" in (tmp_path / "r" / "errors.log").read_text()


class ExitingAttack(Attack):
    """An attack whose code calls sys.exit."""

    needs_gradients = False

    def run(self, model, x, y, ctx):
        raise SystemExit(4)


class NanAttack(Attack):
    """An attack that returns NaN images."""

    needs_gradients = False

    def run(self, model, x, y, ctx):
        x_adv = x.clone()
        x_adv[0] = float("nan")
        return AttackResult(x_adv=x_adv, success=torch.zeros(len(x), dtype=torch.bool))


class BareAttack(Attack):
    """An attack that returns a bare tensor instead of an AttackResult."""

    needs_gradients = False

    def run(self, model, x, y, ctx):
        return x.clone()


class FailsNever(Attack):
    """Never succeeds: the inputs come back unchanged."""

    needs_gradients = False

    def run(self, model, x, y, ctx):
        return AttackResult(x_adv=x.clone(), success=torch.zeros(len(x), dtype=torch.bool))


class KindModel(ModelPlugin):
    """A model plugin with parameters named like the base class's attributes."""

    def __init__(self, *, kind: str = "runtime", name: str = "mine"):
        self.kind, self.name = kind, name

    def load(self, ctx):
        from harness.testing import tiny_model

        return tiny_model()


class BrokenData(DatasetPlugin):
    """A dataset whose loading code crashes."""

    def load(self, ctx):
        raise KeyError("labels")


plugin = types.SimpleNamespace(
    register_datasets=hookimpl(lambda register: register("broken-data", BrokenData)),
    register_attacks=hookimpl(lambda register: [
        register("exits", ExitingAttack), register("nan-images", NanAttack),
        register("bare", BareAttack), register("fails-never", FailsNever)]),
    register_models=hookimpl(lambda register: register("kinded", KindModel)))


@pytest.fixture(scope="module")
def registry():
    return make_registry(plugin)


def case_errors(folder) -> dict[tuple[str, str], str]:
    summary = json.loads((folder / "run" / "summary.json").read_text())
    return {(c["test"], c["model"]): c["error"] for c in summary["cases"]}


def test_an_attack_that_exits_fails_only_its_case(registry, tmp_path):
    code, results = run_suite_text(f"""\
name: exits
{DIGITS}models:
  near: {NEAR}
tests:
  - name: bad
    attack: exits
  - name: good
    attack: {{use: gaussian-noise, stddev: 0.1}}
""", tmp_path, registry)
    assert code == 1
    errors = case_errors(tmp_path)
    assert errors[("good", "near")] is None and set(results["test"]) == {"good"}
    assert errors[("bad", "near")].startswith("attack plugin 'exits' (module test_misbehaving_plugins) raised "
                                              "SystemExit while attacking model 'near': "
                                              "exit status 4")


def test_a_dataset_that_crashes_fails_only_its_tests(registry, tmp_path):
    code, results = run_suite_text(f"""\
name: data-crash
{DIGITS}models:
  near: {NEAR}
tests:
  - name: bad
    data: broken-data
  - name: good
""", tmp_path, registry)
    assert code == 1 and set(results["test"]) == {"good"}
    assert case_errors(tmp_path)[("bad", "near")] == (
        "dataset plugin 'broken-data' (module test_misbehaving_plugins) raised KeyError while "
        "loading data: 'labels'; a bug in that plugin or in the code it calls")
    assert "KeyError" in (tmp_path / "run" / "errors.log").read_text()


# ------------------------------------------------------------------ item 9: NaN logits

def test_nan_logits_on_perturbed_inputs_fail_the_case_naming_model_and_attack(
        write_suite, tmp_path, capsys):
    """The model is fine on clean images and NaN on perturbed ones: not 'robust' (exit 0,
    distortion 0) but an error naming the model, the attack and the batch."""
    suite = write_suite(f"""\
name: nan
{DIGITS}models:
  bad: {{use: torch, factory: "tiny_models:nan_when_perturbed", input_shape: [1, 8, 8]}}
  near: {NEAR}
tests:
  - name: clean
  - name: lbfgs
    attack: {{use: lbfgs, search_steps: 2, batch_size: 10}}
""")
    code, out, err = run_cli(["run", suite, "--out", tmp_path / "r", "-q"], capsys)
    assert code == 2
    lines = errors_of(err)
    assert len(lines) == 1 and "lbfgs x bad" in lines[0], err
    assert ("model 'bad' returned NaN or infinite logits during the attack on perturbed "
            "inputs: attack plugin 'lbfgs' (package robustness-harness") in lines[0]
    assert "images 0 to 9" in lines[0]
    rows = (tmp_path / "r" / "results.csv").read_text()
    assert "lbfgs,bad" not in rows and "clean,bad" in rows and "lbfgs,near" in rows


# ------------------------------------------------------------------ item 10: bad results

@pytest.mark.parametrize("attack,words", [
    ("nan-images", "attack plugin 'nan-images' (module test_misbehaving_plugins) returned images with NaN or "
                   "infinite pixels (1 of 24) (images 0 to 23); expected finite images in "
                   "[0, 1]"),
    ("bare", "attack plugin 'bare' (module test_misbehaving_plugins) returned a bare tensor (images 0 to 23); "
             "expected a harness.AttackResult(x_adv=..., success=...)"),
])
def test_an_attack_returning_garbage_is_blamed_on_the_attack(registry, tmp_path, attack,
                                                             words):
    code, _ = run_suite_text(f"""\
name: garbage
{DIGITS}models:
  near: {NEAR}
tests:
  - name: t
    attack: {attack}
""", tmp_path, registry)
    assert code == 2
    error = case_errors(tmp_path)[("t", "near")]
    assert error.startswith(words) and "model 'near'" not in error, error


# ------------------------------------------------------------------ item 15: plugin style

def test_a_parameter_named_kind_or_name_works(registry, tmp_path):
    code, results = run_suite_text("""\
name: kinded
data: {use: digits, split: test, limit: 24}
models:
  m: {use: kinded, kind: runtime, name: other}
tests:
  - name: clean
""", tmp_path, registry)
    assert code == 0 and len(results) == 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert {"kind": "model", "name": "kinded", "distribution": "-"} in summary["plugins"]


def _registry(*extra) -> Registry:
    return Registry(make_plugin_manager(extra=list(extra)))


def test_a_hook_that_raises_is_one_line_naming_the_package():
    def hook(register):
        raise SystemExit(5)

    broken = types.ModuleType("broken_hooks")
    broken.register_attacks = hookimpl(hook)
    reg = _registry(broken)
    assert [b.line() for b in reg.broken] == [
        "plugin package 'broken_hooks' (broken_hooks): failed in its register_attacks hook: "
        "SystemExit (exit status 5); fix or uninstall it, or block it with "
        "HARNESS_BLOCK_PLUGINS=broken_hooks"]


def test_a_misspelt_hook_is_one_line_naming_the_package():
    misspelt = types.ModuleType("misspelt_hooks")
    misspelt.register_attack = hookimpl(lambda register: None)
    (line,) = [b.line() for b in _registry(misspelt).broken]
    assert line.startswith(
        "plugin package 'misspelt_hooks' (misspelt_hooks): implements unknown hook(s) "
        "'register_attack' (did you mean 'register_attacks'? the hooks are ")
    assert "\n" not in line and line.endswith("HARNESS_BLOCK_PLUGINS=misspelt_hooks")


# ------------------------------------------------------------------ item 11: n is 0

def test_a_mean_over_no_images_prints_n_0_never_nan(registry, tmp_path, capsys):
    code, results = run_suite_text(f"""\
name: never
{DIGITS}models:
  near: {NEAR}
tests:
  - name: t
    attack: fails-never
    metrics: [success_rate, mean_distortion]
""", tmp_path, registry)
    assert code == 0
    row = results[results["metric"] == "mean_distortion"].iloc[0]
    assert row["value"] != row["value"] and row["n"] == 0  # NaN over no images
    code, out, _ = run_cli(["report", tmp_path / "run"], capsys)
    line = next(ln for ln in out.splitlines() if ln.startswith("near"))
    assert line.split() == ["near", "0%", "[0,", "13.8]", "(*)", "n=0"] and "nan" not in out.lower()
