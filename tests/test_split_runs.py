"""Runs in pieces: an interrupted run's folder is finished in place (--resume), running only
the cases it did not finish; a suite split into shards (--shard K/N) and merged (harness
merge). Either way the numbers are those of a run in one go."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main
from harness.errors import HarnessError
from harness.runner import RunOptions, merge_runs, run_suite
from harness.store import RunStore
from harness.suite import load_suite
from harness.testing import make_registry

SUITE = """\
name: resume
seed: 4
data: {use: digits, split: test, limit: 40}
models:
  a: {use: mlp, hidden: [], epochs: 40}
  b: {use: mlp, hidden: [16], epochs: 40}
tests:
  - name: clean
    metrics: [clean_error]
  - name: lbfgs
    attack: {use: lbfgs, search_steps: 3}
  - name: xfer
    attack: {use: lbfgs, search_steps: 3}
    transfer: all
    baseline: {use: gaussian-noise, stddev: [0.1, 0.3]}
  - name: noise
    attack: {use: gaussian-noise, stddev: [0.1, 0.3]}
gates:
  - {test: clean, model: b, metric: clean_error, max: 0.9}
"""


class Interrupt:
    """An event handler that presses Ctrl-C as case ``at`` starts, and counts started cases."""

    def __init__(self, at: int | None = None):
        self.at, self.started = at, []

    def __call__(self, kind, info):
        if kind == "case_start":
            if info["n"] == self.at:
                raise KeyboardInterrupt
            self.started.append((info["test"], info["model"]))


@pytest.fixture(scope="module")
def registry():
    return make_registry()


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("suite") / "resume.yaml"
    path.write_text(SUITE)
    return path


def run(registry, suite_file, folder, cache, events=None, **options):
    suite = load_suite(suite_file, registry)
    store = RunStore(folder)
    result, code = run_suite(suite, registry, store,
                             RunOptions(cache_dir=cache, on_event=events or Interrupt(), **options))
    return result, code, store


def comparable(store: RunStore) -> pd.DataFrame:
    df = store.results()
    return df[df.metric != "seconds"].reset_index(drop=True)


@pytest.fixture(scope="module")
def runs(registry, suite_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cache = root / "cache"
    _, code, whole = run(registry, suite_file, root / "whole", cache)
    assert code == 0
    first = Interrupt(at=5)
    result, code, cut = run(registry, suite_file, root / "cut", cache, first)
    assert code == 130 and result.interrupted and len(result.cases) == 4
    second = Interrupt()
    result, code, _ = run(registry, suite_file, root / "cut", cache, second, resume=True)
    return whole, cut, first, second, result, code


def test_resume_runs_only_the_rest_and_matches_an_uninterrupted_run(runs):
    whole, cut, first, second, result, code = runs
    assert code == 0 and not result.interrupted
    # 2 clean + 2 lbfgs + (2 sources + baseline) transfer + 2 noise = 9 cases
    assert len(first.started) == 4 and len(second.started) == 5
    assert not set(first.started) & set(second.started)
    assert [c.resumed for c in result.cases] == [True] * 4 + [False] * 5
    pd.testing.assert_frame_equal(comparable(cut), comparable(whole))
    summary = cut.summary()
    assert summary["exit_code"] == 0 and summary["interrupted"] is False
    assert summary["options"]["resumed"] == 4
    assert [g["passed"] for g in summary["gates"]] == [True]
    assert {m["id"] for m in summary["models"]} == {"a", "b"}


def test_resume_a_finished_run_takes_everything_over(registry, suite_file, runs, tmp_path):
    whole = runs[0]
    events = Interrupt()
    result, code, store = run(registry, suite_file, whole.path, tmp_path, events, resume=True)
    assert code == 0 and events.started == [] and all(c.resumed for c in result.cases)
    pd.testing.assert_frame_equal(comparable(store), comparable(runs[1]))


@pytest.mark.parametrize("change,words", [
    ({"seed": 5}, "was run with seed 4, not 5"),
    ({"limit": 10}, "was run with limit None, not 10"),
    ({"suite": "seed: 4\n"}, "holds a run of another suite"),
])
def test_resume_refuses_other_settings(registry, suite_file, runs, tmp_path, change, words):
    whole = runs[0]
    path = suite_file
    if "suite" in change:
        path = tmp_path / "changed.yaml"
        path.write_text(SUITE.replace("seed: 4\n", "seed: 4\ndescription: changed\n"))
    options = {k: v for k, v in change.items() if k != "suite"}
    with pytest.raises(HarnessError, match=words):
        run(registry, path, whole.path, tmp_path, resume=True, **options)


def test_resume_from_the_command_line(runs, suite_file, tmp_path, capsys):
    whole = runs[0]
    # a run folder cannot be written twice without --resume
    assert main(["run", str(suite_file), "--out", str(whole.path), "-q"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["run", str(suite_file), "--resume", str(whole.path), "--out",
                 str(tmp_path / "other"), "-q"]) == 2
    assert "drop --out" in capsys.readouterr().err
    assert main(["run", str(suite_file), "--resume", str(tmp_path / "missing"), "-q"]) == 2
    assert "no such folder" in capsys.readouterr().err
    old = whole.path / "summary.json"
    summary = json.loads(old.read_text())
    summary["format"] = 2          # as the version before per-image ledgers wrote it
    del summary["plan"]
    old.write_text(json.dumps(summary))
    assert main(["run", str(suite_file), "--resume", str(whole.path), "-q"]) == 2
    assert "older version" in capsys.readouterr().err


# ------------------------------------------------------------------------------ shards

def test_shards_partition_the_chunks(registry, suite_file):
    """Every chunk in exactly one shard, the work balanced, a model's chunks kept together
    while it is not more than a shard's share."""
    from harness.plan import Plan

    suite = load_suite(suite_file, registry)
    plan = Plan(suite, registry).chunked(lambda test: _Sized(40))
    whole = {ch.id for ch in plan.chunks()}
    for n in (1, 2, 3, 5):
        parts = [plan.shard(k, n) for k in range(1, n + 1)]
        assert set().union(*parts) == whole and sum(map(len, parts)) == len(whole)
        assert plan.shard(1, n) == parts[0]          # the same cut every time it is asked
    # one model with many chunks is split across shards, its chunks in contiguous runs
    one = load_suite(suite_file, registry)
    one_plan = Plan(one, registry).chunked(lambda test: _Sized(4000))
    lbfgs = next(c for c in one_plan.cases if c.test.name == "lbfgs" and c.model == "a")
    owners = [next(k for k in (1, 2, 3, 4) if ch.id in one_plan.shard(k, 4))
              for ch in lbfgs.chunks]
    assert owners == sorted(owners)


class _Sized:
    """A stand-in data source of n 1x8x8 images, for planning."""

    def __init__(self, n: int):
        self.n = n
        self.input_shape = (1, 8, 8)

    def __len__(self) -> int:
        return self.n


@pytest.fixture(scope="module")
def shards(registry, suite_file, runs, tmp_path_factory):
    """The suite in 3 shards (one of them holds only the baseline case), sharing a cache."""
    root = tmp_path_factory.mktemp("shards")
    out = []
    for k in (1, 2, 3):
        result, code, store = run(registry, suite_file, root / f"s{k}", root / "cache",
                                  shard=(k, 3))
        assert code == 0 and result.shard == (k, 3)
        out.append(store)
    return root, out


def test_shard_runs_skip_the_gates_they_cannot_measure(shards):
    _, stores = shards
    verdicts = [s.summary()["gates"][0] for s in stores]
    measured = [v for v in verdicts if not v["skipped"]]
    assert len(measured) == 1 and measured[0]["passed"]       # model b's shard judges it
    assert all("not in shard" in v["reason"] for v in verdicts if v["skipped"])


def test_merged_shards_equal_a_run_in_one_go(registry, shards, runs):
    root, stores = shards
    whole = runs[0]
    result, code = merge_runs(list(reversed(stores)), registry, RunStore(root / "all"))
    merged = RunStore(root / "all")
    assert code == 0
    pd.testing.assert_frame_equal(comparable(merged), comparable(whole))
    summary = merged.summary()
    assert [(c["test"], c["model"]) for c in summary["cases"]] == \
        [(c["test"], c["model"]) for c in whole.summary()["cases"]]
    assert [m["shard"] for m in summary["merged"]] == [[1, 3], [2, 3], [3, 3]]
    assert summary["shard"] is None and [g["passed"] for g in summary["gates"]] == [True]
    # the saved adversarial examples of every shard are in the merged folder
    saved = sorted(p.relative_to(root / "all").as_posix() for p in (root / "all").rglob("*.npz"))
    assert saved and saved == sorted(p.relative_to(whole.path).as_posix()
                                     for p in whole.path.rglob("*.npz"))


def test_merge_refuses_an_incomplete_or_mixed_set(registry, shards, runs, tmp_path):
    _, (s1, s2, s3) = shards
    whole = runs[0]
    cases = [
        ([s1, s2], "shard\\(s\\) 3/3 missing"),
        ([s1, s2, s3, s2], "shard 2/3 given twice"),
        ([s1, s2, whole], "is not a shard"),
    ]
    for i, (stores, words) in enumerate(cases):
        with pytest.raises(HarnessError, match=words):
            merge_runs(stores, registry, RunStore(tmp_path / f"m{i}"))


def test_shard_and_merge_from_the_command_line(shards, suite_file, tmp_path, capsys):
    root, stores = shards
    for bad in ("0/2", "3/2", "two", "1/"):
        assert main(["run", str(suite_file), "--shard", bad, "-q"]) == 2
        assert "K/N" in capsys.readouterr().err
    # a shard resumes only as the same shard
    assert main(["run", str(suite_file), "--shard", "2/3", "--resume", str(stores[0].path),
                 "-q"]) == 2
    assert "was run with shard 1/3, not 2/3" in capsys.readouterr().err
    junit = tmp_path / "junit.xml"
    code = main(["merge", *(str(s.path) for s in stores), "--out", str(tmp_path / "all"),
                 "--junit", str(junit)])
    out = capsys.readouterr().out
    assert code == 0 and "merged from 3 shard(s)" in out and "OK: 9 case(s) ran" in out
    assert 'failures="0"' in junit.read_text()
    assert main(["merge", str(stores[0].path), "--out", str(tmp_path / "bad")]) == 2
    assert "missing" in capsys.readouterr().err
