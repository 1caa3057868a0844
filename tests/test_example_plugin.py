"""An installed third-party package's plugins are discovered and usable in a suite.

CI installs tests/example_plugin (`pip install ./tests/example_plugin`) and sets
HARNESS_REQUIRE_EXAMPLE_PLUGIN=1, so there this test cannot be skipped.
"""

from __future__ import annotations

import csv
import os

import pytest

from harness.cli import main
from harness.plugins import default_registry

SUITE = """\
name: with-example-plugin
data: {use: digits, split: test, limit: 100}
models:
  near: {use: torch, factory: "tiny_models:digits_template", input_shape: [1, 8, 8]}
tests:
  - name: fgsm
    attack: {use: fgsm, eps: 0.2}
    metrics: [clean_error, adv_error, adv_confidence]
"""


@pytest.fixture
def registry():
    reg = default_registry()
    if "fgsm" not in reg.names("attack"):
        if os.environ.get("HARNESS_REQUIRE_EXAMPLE_PLUGIN"):
            pytest.fail("the example plugin package is not installed")
        pytest.skip("pip install ./tests/example_plugin to run this test")
    return reg


def test_discovered_with_its_distribution(registry):
    entry = registry.get("attack", "fgsm")
    assert entry.distribution == "harness-example-plugin 0.1.0" and entry.plugin == "example"
    assert registry.get("metric", "adv_confidence").distribution == entry.distribution


def test_usable_in_a_suite(registry, write_suite, tmp_path, capsys):
    code = main(["run", str(write_suite(SUITE)), "--out", str(tmp_path / "r"), "-q"])
    out = capsys.readouterr().out
    assert code == 0 and "adv_confidence" in out
    rows = {(r["metric"]): float(r["value"])
            for r in csv.DictReader((tmp_path / "r" / "results.csv").open())}
    assert rows["adv_error"] > rows["clean_error"]  # the attack does something
    assert 0.1 <= rows["adv_confidence"] <= 1.0


def test_blocked_by_environment(registry, monkeypatch):
    monkeypatch.setenv("HARNESS_BLOCK_PLUGINS", "example")
    assert "fgsm" not in default_registry().names("attack")
