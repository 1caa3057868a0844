"""Plugin discovery through entry points, registration errors, parameter checks."""

from __future__ import annotations

import types

import pytest

from harness import Attack, AttackResult, Metric, ParamError, PluginError, hookimpl
from harness.plugins import make_plugin_manager
from harness.registry import Registry


def _registry(*extra, **kw) -> Registry:
    return Registry(make_plugin_manager(extra=list(extra), **kw))


class Nothing(Attack):
    """Returns the inputs unchanged."""

    needs_gradients = False

    def __init__(self, *, strength: float = 1.0, mode: str = "a"):
        if strength < 0:
            raise ParamError("strength", "strength must be >= 0")
        self.strength = strength
        self.mode = mode

    def run(self, model, x, y, ctx):
        return AttackResult(x_adv=x.clone(), success=model(x).argmax(1) != y)


def test_builtins_come_from_entry_points_with_their_distribution():
    reg = _registry()
    entries = {(e.kind, e.name): e for e in reg.entries()}
    for key in [("dataset", "mnist"), ("dataset", "digits"), ("attack", "gaussian-noise"),
                ("model", "torch"), ("metric", "adv_error"), ("metric", "mean_distortion")]:
        assert key in entries, key
        assert entries[key].distribution.startswith("robustness-harness ")
        assert entries[key].plugin.startswith("builtin-")


def test_extra_plugin_registers_and_builds():
    plugin = types.SimpleNamespace(
        register_attacks=hookimpl(lambda register: register("nothing", Nothing)))
    reg = _registry(plugin)
    attack = reg.build("attack", "nothing", {"strength": 2})
    assert isinstance(attack, Nothing) and attack.strength == 2.0
    assert repr(attack) == "nothing(strength=2.0, mode='a')"
    assert reg.get("attack", "nothing").distribution == "-"


def test_parameter_errors_name_the_parameter():
    plugin = types.SimpleNamespace(
        register_attacks=hookimpl(lambda register: register("nothing", Nothing)))
    reg = _registry(plugin)
    with pytest.raises(ParamError) as info:
        reg.build("attack", "nothing", {"strenght": 1})
    assert info.value.param == "strenght" and "did you mean 'strength'" in str(info.value)
    with pytest.raises(ParamError) as info:
        reg.build("attack", "nothing", {"strength": "lots"})
    assert info.value.param == "strength" and "valid number" in str(info.value)
    with pytest.raises(ParamError) as info:
        reg.build("attack", "nothing", {"strength": -1})
    assert info.value.param == "strength" and ">= 0" in str(info.value)


def test_unknown_plugin_suggests_close_names():
    with pytest.raises(PluginError, match="did you mean 'gaussian-noise'"):
        _registry().get("attack", "gaussian_noise")
    with pytest.raises(PluginError, match="unknown plugin kind"):
        _registry().get("widget", "x")


def test_duplicate_name_names_both_plugins():
    class First:
        @hookimpl
        def register_attacks(self, register):
            register("gaussian-noise", Nothing)

    reg = _registry(First())             # the other plugins still load...
    assert "lbfgs" in reg.names("attack")
    with pytest.raises(PluginError) as info:   # ...and the name both claim cannot be used
        reg.get("attack", "gaussian-noise")
    msg = str(info.value)
    assert "registered by two plugin packages" in msg and "builtin-attacks" in msg


def test_wrong_base_class_is_refused():
    plugin = types.SimpleNamespace(
        register_metrics=hookimpl(lambda register: register("oops", Nothing)))
    reg = _registry(plugin)
    assert any("not a subclass of harness.Metric" in b.line() for b in reg.broken)
    assert "oops" not in reg.names("metric") and "clean_error" in reg.names("metric")


def test_misspelt_hook_is_caught():
    plugin = types.SimpleNamespace(register_attack=hookimpl(lambda register: None))
    reg = _registry(plugin)
    assert any("unknown hook" in b.line() for b in reg.broken)


def test_blocking_by_environment(monkeypatch):
    monkeypatch.setenv("HARNESS_BLOCK_PLUGINS", "builtin-attacks")
    reg = _registry()
    assert not {"lbfgs", "gaussian-noise"} & set(reg.names("attack"))
    assert "digits" in reg.names("dataset")


def test_a_package_that_fails_to_import_is_named(tmp_path, monkeypatch, capsys):
    """An installed plugin package whose module raises on import: `harness plugins` lists the
    others and marks it with one line naming the entry point, its distribution and the exact
    block line (exit 1); a suite that does not use it runs; blocking it by that name works."""
    (tmp_path / "broken_plugins.py").write_text("raise ImportError('needs libfoo 2')\n")
    info = tmp_path / "broken_plugins-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugins\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[harness]\nbroken = broken_plugins\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = _registry()
    assert [b.line() for b in reg.broken] == [
        "plugin package 'broken' (broken_plugins, from broken-plugins 0.1): failed to load: "
        "ImportError: needs libfoo 2; fix or uninstall it, or block it with "
        "HARNESS_BLOCK_PLUGINS=broken"]
    from harness.cli import main

    assert main(["plugins"]) == 1
    out, err = capsys.readouterr()
    assert "lbfgs" in out and "builtin-attacks" in out       # what loaded, by entry point
    assert "BROKEN" in out and "HARNESS_BLOCK_PLUGINS=broken" in out
    assert main(["validate", "quickstart"]) == 0             # a suite that does not use it
    capsys.readouterr()
    monkeypatch.setenv("HARNESS_BLOCK_PLUGINS", "broken")
    assert "lbfgs" in _registry().names("attack") and not _registry().broken
    assert main(["plugins"]) == 0


def test_metric_base_contract():
    reg = _registry()
    for entry in reg.entries("metric"):
        metric = reg.build("metric", entry.name)
        assert isinstance(metric, Metric)
        assert entry.summary, f"metric {entry.name} has no description"
