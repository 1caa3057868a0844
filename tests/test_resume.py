"""Resuming a run: an interrupted run's folder is finished in place, running only the cases it
did not finish, and ends with the same numbers as a run that was never interrupted."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main
from harness.errors import HarnessError
from harness.runner import RunOptions, run_suite
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
    for case in summary["cases"]:
        del case["records"]
    old.write_text(json.dumps(summary))
    assert main(["run", str(suite_file), "--resume", str(whole.path), "-q"]) == 2
    assert "older version" in capsys.readouterr().err
