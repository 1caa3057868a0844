"""Every suite shipped in suites/ is valid, and can be found by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.plugins import default_registry
from harness.suite import bundled_suites, load_suite

SUITES = sorted((Path(__file__).resolve().parents[1] / "suites").glob("*.yaml"))


@pytest.fixture(scope="module")
def registry():
    return default_registry()


@pytest.mark.parametrize("path", SUITES, ids=[p.stem for p in SUITES])
def test_bundled_suite_is_valid(path, registry):
    suite = load_suite(path, registry)
    assert suite.name == path.stem
    assert bundled_suites()[path.stem] == path
    assert load_suite(path.stem, registry).name == suite.name


def test_the_expected_suites_exist():
    assert {"quickstart", "paper-table1", "paper-mnist", "paper-table5"} <= {p.stem for p in SUITES}
