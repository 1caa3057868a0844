"""Bounded memory: a run reads its images one chunk at a time (never the whole data set), and
an attack batch that runs out of device memory is retried at half the batch it tried."""

from __future__ import annotations

import pytest
import torch

from harness.data import StreamedData
from harness.runner import RunOptions, run_suite
from harness.store import RunStore
from harness.suite import load_suite
from harness.testing import make_registry
from tiny_models import OutOfMemoryAbove8, OutOfMemoryPlugins

SUITE = """\
name: streaming
seed: 0
chunk_size: 16
data: {use: synthetic, shape: [1, 8, 8], num_classes: 10, size: 60}
models:
  a: {use: torch, factory: "tiny_models:linear", input_shape: [1, 8, 8]}
  b: {use: torch, factory: "tiny_models:linear", kwargs: {seed: 1}, input_shape: [1, 8, 8]}
tests:
  - name: clean
  - name: attacks
    attack:
      - {use: lbfgs, target: next, search_steps: 2, max_iter: 5}
      - {use: gaussian-noise, stddev: [0.1, 0.3]}
    data: {use: synthetic, shape: [1, 8, 8], num_classes: 10, size: 60, limit: 40}
  - name: xfer
    attack: {use: lbfgs, search_steps: 2, max_iter: 5}
    models: [a]
    transfer: all
    baseline: {use: gaussian-noise, stddev: 0.1}
"""


@pytest.fixture(scope="module")
def registry():
    return make_registry(OutOfMemoryPlugins())


def run(registry, text, folder):
    path = folder.parent / f"{folder.name}.yaml"
    path.write_text(text)
    store = RunStore(folder)
    result, code = run_suite(load_suite(path, registry), registry, store,
                             RunOptions(cache_dir=folder.parent / "cache"))
    return result, code, store


@pytest.fixture
def requests(monkeypatch):
    """Every ``StreamedData.batches`` call of the run as (start, stop), and the most calls
    that were open (being read) at one time."""
    seen: dict = {"calls": [], "open": 0, "most_open": 0}
    original = StreamedData.batches

    def spy(self, batch_size, start=0, stop=None, workers=None, pin_memory=False):
        end = len(self) if stop is None else min(stop, len(self))
        seen["calls"].append((start, end))
        seen["open"] += 1
        seen["most_open"] = max(seen["most_open"], seen["open"])
        try:
            yield from original(self, batch_size, start, stop, workers, pin_memory)
        finally:
            seen["open"] -= 1

    monkeypatch.setattr(StreamedData, "batches", spy)
    return seen


def test_a_run_reads_one_chunk_of_images_at_a_time(registry, tmp_path, requests):
    result, code, store = run(registry, SUITE, tmp_path / "run")
    assert code == 0, [c.error for c in result.cases]
    calls = requests["calls"]
    # clean: 2 models x 4 chunks; attacks: 2 x 3; xfer: 1 source x 4 and the baseline x 4
    assert len(calls) == 8 + 6 + 4 + 4
    assert max(stop - start for start, stop in calls) <= 16      # never more than a chunk
    assert requests["most_open"] == 1                            # one chunk read at a time
    ledger = store.ledger()
    counts = ledger.groupby(["test", "model", "setting"]).size()
    assert counts[("clean", "a", "")] == 60                      # ...and every image read
    assert counts[("attacks", "b", "lbfgs")] == 40


def test_an_oversized_batch_is_halved_from_the_batch_tried(registry, tmp_path):
    """A batch_size far beyond the chunk: the first batch is the whole chunk (48 images), and
    each retry halves what was tried (48, 24, 12, 6), not the batch_size asked for."""
    OutOfMemoryAbove8.tried = []
    text = SUITE.split("tests:")[0].replace("size: 60", "size: 48") + """tests:
  - name: oom
    attack: {use: oom-above-8, batch_size: 4096}
    models: [a]
    chunk_size: 48
"""
    result, code, store = run(registry, text, tmp_path / "oom")
    assert code == 0
    assert OutOfMemoryAbove8.tried == [48, 24, 12] + [6] * 8
    case = store.summary()["cases"][0]
    assert case["batch_size"] == 6
    assert len(store.ledger()) == 48
