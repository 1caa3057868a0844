"""The per-image ledger and what is computed from it: one row per image x model x setting,
results.csv recomputed from it with 95% intervals, the per-image worst case over several
attacks, robust accuracy at any epsilon, resume at chunk granularity, and a batch that runs
out of device memory retried at half the size."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from harness.runner import RunOptions, run_suite
from harness.stats import rate_interval
from harness.store import RunStore
from harness.suite import load_suite
from harness.testing import make_registry
from tiny_models import OutOfMemoryPlugins

SUITE = """\
name: ledger
seed: 2
data: {use: digits, split: test, limit: 48}
chunk_size: 16
models:
  near: {use: torch, factory: "tiny_models:digits_template", input_shape: [1, 8, 8]}
  lin: {use: torch, factory: "tiny_models:linear", input_shape: [1, 8, 8]}
tests:
  - name: clean
  - name: both
    attack:
      - {use: lbfgs, targeted: false, search_steps: 4}
      - {use: gaussian-noise, stddev: 0.3}
    metrics: [clean_error, adv_error, success_rate, mean_distortion, median_distortion,
              {use: robust_accuracy, eps: [0.05, 0.1]}]
"""


@pytest.fixture(scope="module")
def registry():
    return make_registry(OutOfMemoryPlugins())


def run(registry, text, folder, **options):
    path = folder.parent / f"{folder.name}.yaml"
    path.write_text(text)
    suite = load_suite(path, registry)
    store = RunStore(folder)
    result, code = run_suite(suite, registry, store,
                             RunOptions(cache_dir=folder.parent / "cache", **options))
    return result, code, store


@pytest.fixture(scope="module")
def whole(registry, tmp_path_factory):
    root = tmp_path_factory.mktemp("ledger")
    return run(registry, SUITE, root / "whole")


def test_one_row_per_image_model_setting(whole):
    _, code, store = whole
    assert code == 0
    ledger = store.ledger()
    counts = ledger.groupby(["test", "model", "setting"]).size()
    assert set(counts) == {48}                                  # every image once per setting
    assert set(ledger.loc[ledger.test == "both", "setting"]) == {"lbfgs", "gaussian-noise",
                                                                 "worst-case"}
    assert ledger["image"].str.match(r"^[0-9a-f]{16}:\d+$").all()
    assert sorted(set(ledger["chunk"])) == [0, 1, 2]            # 48 images in chunks of 16
    # pandas reads the folder directly
    direct = pd.read_parquet(store.path / "ledger")
    assert len(direct) == len(ledger)


def test_results_are_computed_from_the_ledger_with_intervals(whole):
    _, _, store = whole
    ledger, results = store.ledger(), store.results()
    for model in ("near", "lin"):
        rows = ledger[(ledger.test == "clean") & (ledger.model == model)]
        wrong = int((rows.clean_pred != rows.label).sum())
        row = results[(results.test == "clean") & (results.model == model)].iloc[0]
        assert row.value == pytest.approx(wrong / 48) and row.n == 48
        ci = rate_interval(wrong, 48)
        assert (row.low, row.high) == pytest.approx((ci.low, ci.high))
        attacked = ledger[(ledger.test == "both") & (ledger.model == model)
                          & (ledger.setting == "lbfgs")]
        ok = attacked[attacked.success]
        mean = results[(results.test == "both") & (results.model == model)
                       & (results.metric == "mean_distortion") & (results.param == "lbfgs")].iloc[0]
        assert mean.value == pytest.approx(ok.distortion.mean()) and mean.n == len(ok)
        assert mean.low <= mean.value <= mean.high


def test_the_worst_case_is_the_smallest_successful_perturbation(whole):
    _, _, store = whole
    ledger = store.ledger()
    both = ledger[ledger.test == "both"].set_index(["model", "image", "setting"])["distortion"]
    success = ledger[ledger.test == "both"].set_index(["model", "image", "setting"])["success"]
    worst = ledger[(ledger.test == "both") & (ledger.setting == "worst-case")]
    for r in worst.itertuples():
        found = [both[(r.model, r.image, s)] for s in ("lbfgs", "gaussian-noise")
                 if success[(r.model, r.image, s)]]
        assert r.success == bool(found)
        if found:
            assert r.distortion == pytest.approx(min(found))


def test_robust_accuracy_at_each_epsilon(whole):
    _, _, store = whole
    ledger, results = store.ledger(), store.results()
    rows = ledger[(ledger.test == "both") & (ledger.model == "lin") & (ledger.setting == "lbfgs")]
    for eps in (0.05, 0.1):
        broken = rows.success & (rows.adv_pred != rows.label) & (rows.l2 <= eps)
        expected = ((rows.clean_pred == rows.label) & ~broken).mean()
        value = results[(results.metric == "robust_accuracy") & (results.model == "lin")
                        & (results.param == f"lbfgs,eps={eps:g}")].value.iloc[0]
        assert value == pytest.approx(expected)


def test_resume_runs_only_the_chunks_left(registry, whole, tmp_path):
    _, _, done = whole
    seen = []

    def stop_after_four(kind, info):
        if kind == "chunk_end":
            seen.append((info["test"], info["model"], info["chunk"]))
            if len(seen) == 4:
                raise KeyboardInterrupt

    result, code, store = run(registry, SUITE, tmp_path / "cut", on_event=stop_after_four)
    assert code == 130 and result.interrupted
    assert len(list((store.path / "chunks").glob("*.json"))) == 4
    again = []

    def count(kind, info):
        if kind == "chunk_end":
            again.append((info["test"], info["model"], info["chunk"]))

    _, code, store = run(registry, SUITE, tmp_path / "cut", resume=True, on_event=count)
    assert code == 0
    total = 2 * 3 + 2 * 3          # two tests, two models, three chunks each
    assert len(again) == total - 4 and not set(again) & set(seen)
    pd.testing.assert_frame_equal(store.ledger().drop(columns="seconds"),
                                  done.ledger().drop(columns="seconds"))
    a, b = store.results(), done.results()
    keep = a.metric != "seconds"
    pd.testing.assert_frame_equal(a[keep].reset_index(drop=True),
                                  b[b.metric != "seconds"].reset_index(drop=True))


def test_a_batch_out_of_memory_is_retried_at_half_the_size(registry, tmp_path):
    text = SUITE.replace("""    attack:
      - {use: lbfgs, targeted: false, search_steps: 4}
      - {use: gaussian-noise, stddev: 0.3}
    metrics: [clean_error, adv_error, success_rate, mean_distortion, median_distortion,
              {use: robust_accuracy, eps: [0.05, 0.1]}]
""", """    attack: {use: oom-above-8, batch_size: 32}
    chunk_size: 48
""")
    result, code, store = run(registry, text, tmp_path / "oom")
    assert code == 0
    ledger = store.ledger()
    assert len(ledger[ledger.test == "both"]) == 2 * 48         # every image attacked
    cases = {(c["test"], c["model"]): c for c in store.summary()["cases"]}
    assert cases["both", "near"]["batch_size"] == 8             # 32 -> 16 -> 8 fitted
    assert cases["clean", "near"]["batch_size"] is None
