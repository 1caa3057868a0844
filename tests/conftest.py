"""Shared fixtures: an isolated cache, the MNIST folder, small suites on disk."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: the MNIST files beside the project (../shared/data/mnist), if present
SHARED_DATA = Path(os.environ.get("HARNESS_TEST_DATA", ROOT.parent / "shared" / "data"))

if str(HERE) not in sys.path:  # tiny_models is imported by suites' `factory:` strings
    sys.path.insert(0, str(HERE))

if os.environ.get("HARNESS_REQUIRE_EXTRAS"):
    # CI installs every optional extra: a test that would skip for a missing or broken one
    # (an import that fails) fails instead, so that no extra goes untested unnoticed
    _importorskip = pytest.importorskip

    def _required(modname, *args, **kwargs):
        try:
            return _importorskip(modname, *args, **kwargs)
        except pytest.skip.Exception as exc:
            pytest.fail(f"{modname} cannot be imported, and HARNESS_REQUIRE_EXTRAS is set: "
                        f"{exc}", pytrace=False)

    pytest.importorskip = _required


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true",
                     help="also run the tests marked slow (training on all of MNIST)")


def pytest_collection_modifyitems(config, items):
    """Tests marked slow run only with --run-slow (or when -m selects them)."""
    if config.getoption("--run-slow") or "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="trains on a whole dataset (minutes); run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The tests' models and batches are small: one thread is as fast as two, and it keeps
    the tests steady when other processes load the cores (OpenMP threads spin-wait)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own model cache, so no test sees another's trained weights."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(cache))
    monkeypatch.delenv("HARNESS_BLOCK_PLUGINS", raising=False)
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)
    return cache


@pytest.fixture
def mnist_dir() -> Path:
    if not (SHARED_DATA / "mnist" / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"MNIST files not found in {SHARED_DATA / 'mnist'}")
    return SHARED_DATA


@pytest.fixture
def write_suite(tmp_path):
    """write_suite(text, name='suite.yaml') -> path of a suite file in a temporary folder."""

    def write(text: str, name: str = "suite.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture
def env_with_tests_on_path(monkeypatch):
    """Environment for subprocesses that must import tiny_models."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    return env
