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
  - name: gradients
    analysis: {use: input-gradient}
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
    """One plugin of each kind, all from the installed distribution."""
    for kind, name in [("dataset", "stripes"), ("model", "nearest-mean"), ("attack", "fgsm"),
                       ("metric", "adv_confidence"), ("analysis", "input-gradient")]:
        entry = registry.get(kind, name)
        assert entry.distribution == "harness-example-plugin 0.1.0" and entry.plugin == "example"


def test_usable_in_a_suite(registry, write_suite, tmp_path, capsys):
    code = main(["run", str(write_suite(SUITE)), "--out", str(tmp_path / "r"), "-q"])
    out = capsys.readouterr().out
    assert code == 0 and "adv_confidence" in out
    rows = {(r["metric"]): float(r["value"])
            for r in csv.DictReader((tmp_path / "r" / "results.csv").open())}
    assert rows["adv_error"] > rows["clean_error"]  # the attack does something
    assert 0.1 <= rows["adv_confidence"] <= 1.0
    assert 0 < rows["grad_norm_median"] <= rows["grad_norm_max"]
    figures = list((tmp_path / "r").rglob("input-gradient-l2.png"))
    assert len(figures) == 1
    assert figures[0].relative_to(tmp_path / "r").as_posix() in (tmp_path / "r" / "report.md").read_text()


def test_blocked_by_environment(registry, monkeypatch):
    monkeypatch.setenv("HARNESS_BLOCK_PLUGINS", "example")
    assert "fgsm" not in default_registry().names("attack")
