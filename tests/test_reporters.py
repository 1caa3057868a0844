"""Reporters are plugins (the built-in text, markdown, HTML and JUnit ones too), lifecycle
hooks follow a run, and the MLflow reporter logs a run to a real local tracking store."""

from __future__ import annotations

import types

import pytest

from harness import CaseFinished, Reporter, RunFinished, RunStarted, hookimpl
from harness.cli import main
from harness.runner import RunOptions, run_suite
from harness.store import RunStore
from harness.suite import load_suite
from harness.testing import make_registry

SUITE = """\
name: reported
data: {use: digits, split: test, limit: 40}
models:
  near: {use: torch, factory: "tiny_models:digits_template", input_shape: [1, 8, 8]}
tests:
  - name: clean
  - name: lbfgs
    attack: {use: lbfgs}
gates:
  - {test: clean, model: near, metric: clean_error, max: 0.5}
"""


def test_builtin_formats_are_reporter_plugins():
    reg = make_registry()
    names = {e.name: e for e in reg.entries("reporter")}
    assert {"text", "markdown", "html", "junit", "mlflow"} <= set(names)
    assert all(e.plugin == "builtin-reporters" for e in names.values())


class Shout(Reporter):
    """Every table title in capitals."""

    suffix = "txt"

    def render(self, run):
        return "\n".join(t.title.upper() for t in run.tables) + "\n"


def test_a_third_party_reporter_renders_a_run(write_suite, tmp_path, capsys, monkeypatch):
    plugin = types.ModuleType("shouting")
    plugin.register_reporters = hookimpl(lambda register: register("shout", Shout))
    import harness.plugins

    real = harness.plugins.make_plugin_manager
    monkeypatch.setattr(harness.plugins, "make_plugin_manager",
                        lambda **kw: real(**{**kw, "extra": [plugin]}))
    assert main(["run", str(write_suite(SUITE)), "--out", str(tmp_path / "r"), "-q"]) == 0
    capsys.readouterr()
    assert main(["report", str(tmp_path / "r"), "--format", "shout"]) == 0
    assert "TEST LBFGS: LBFGS" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "r"), "--format", "shoutt"]) == 2
    assert "did you mean 'shout'" in capsys.readouterr().err


class Recorder:
    def __init__(self):
        self.events = []

    @hookimpl
    def harness_run_started(self, run):
        self.events.append(run)

    @hookimpl
    def harness_case_finished(self, run, case):
        self.events.append(case)

    @hookimpl
    def harness_run_finished(self, run, outcome):
        self.events.append(outcome)


class Broken:
    @hookimpl
    def harness_case_finished(self, run, case):
        raise RuntimeError("tracker down")


def test_lifecycle_hooks_follow_a_run_with_typed_arguments(write_suite, tmp_path):
    recorder = Recorder()
    registry = make_registry(recorder, Broken())
    warnings = []
    suite = load_suite(write_suite(SUITE), registry)
    _, code = run_suite(suite, registry, RunStore(tmp_path / "run"),
                        RunOptions(on_event=lambda k, i: warnings.append(i) if
                                   k == "hook_error" else None))
    assert code == 0                                   # a failing hook does not stop the run
    started, *cases, finished = recorder.events
    assert isinstance(started, RunStarted) and started.cases == 2 and started.suite == "reported"
    assert [type(c) for c in cases] == [CaseFinished, CaseFinished]
    assert [(c.test, c.model, c.status) for c in cases] == [("clean", "near", "ok"),
                                                            ("lbfgs", "near", "ok")]
    assert any(r["metric"] == "success_rate" for r in cases[1].rows)
    assert isinstance(finished, RunFinished) and finished.exit_code == 0
    assert finished.gates[0]["passed"] and finished.folder == tmp_path / "run"
    assert len(warnings) == 2 and "tracker down" in warnings[0]["error"]


def test_mlflow_reporter_logs_the_run_to_a_local_store(write_suite, tmp_path, capsys):
    mlflow = pytest.importorskip("mlflow", reason="the [mlflow] extra is not installed")
    pytest.importorskip("sqlalchemy", reason="a local sqlite store needs sqlalchemy")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["run", str(write_suite(SUITE)), "--out", str(tmp_path / "r"), "-q",
                 "--report", "mlflow", "--report-option", f"tracking_uri={uri}",
                 "--report-option", f"artifact_location={tmp_path / 'artifacts'}"])
    assert code == 0
    assert "logged to MLflow: experiment 'reported'" in capsys.readouterr().err
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["reported"])
    assert len(runs) == 1
    row = runs.iloc[0]
    results = RunStore(tmp_path / "r").results()
    value = results[(results.test == "lbfgs") & (results.metric == "success_rate")].iloc[0]
    assert row["metrics.lbfgs/near/success_rate"] == pytest.approx(value.value)
    assert row["metrics.lbfgs/near/success_rate/low"] == pytest.approx(value.low)
    assert row["params.seed"] == "0" and row["params.suite"] == "reported"
    assert row["tags.harness.gate.0"].startswith("PASS: clean near clean_error")
    assert row["tags.harness.exit_code"] == "0"
    client = mlflow.tracking.MlflowClient()
    files = {a.path for a in client.list_artifacts(row["run_id"])}
    assert {"report.md", "summary.json", "results.csv", "suite.yaml", "figures"} <= files
    metrics = [c for c in runs.columns if c.startswith("metrics.")]
    assert len(metrics) == sum(1 for v in results.value if v == v) \
        + sum(1 for v in results.low if v == v) + sum(1 for v in results.high if v == v)
