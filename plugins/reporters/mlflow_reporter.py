"""MLflow: each run folder logged as an MLflow run (extra ``[mlflow]``)."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from harness import Field, HarnessError, Params, Reporter, RunView

#: MLflow keys allow letters, digits and ``_-. /``; anything else becomes ``_``
_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")


def metric_key(test: str, model: str, metric: str, param: str) -> str:
    """``<test>/<model>/<metric>[/<setting>]``, in the characters MLflow accepts."""
    parts = [test, model, metric] + ([param] if param else [])
    return _KEY.sub("_", "/".join(parts))[:250]


def _flat(prefix: str, value: Any, out: dict[str, str]) -> None:
    """Nested suite parameters as flat MLflow params (``models.fc100.hidden``)."""
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, list) and value and any(isinstance(v, dict) for v in value):
        for i, v in enumerate(value):
            _flat(f"{prefix}.{i}", v, out)
    else:
        out[_KEY.sub("_", prefix)[:250]] = json.dumps(value, default=str)[:6000]


class MLflow(Reporter):
    """Log the run to MLflow: the suite's settings as params, every number of results.csv
    (and its 95% interval) as metrics, the report, summary, results, suite and figures as
    artifacts, and the verdict and every gate's outcome as tags."""

    suffix = None

    class Params(Params):
        tracking_uri: str | None = Field(
            None, description="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                              "MLflow's own default); e.g. sqlite:///mlflow.db or "
                              "http://host:5000")
        experiment: str | None = Field(None, description="experiment name (default: the "
                                                         "suite's name)")
        artifact_location: str | None = Field(
            None, description="where a new experiment keeps its artifacts (default: "
                              "MLflow's)")
        run_name: str | None = Field(None, description="the MLflow run's name (default: the "
                                                       "run folder's name)")

    def publish(self, run: RunView) -> str:
        try:
            import mlflow
        except ImportError:
            raise HarnessError("the mlflow reporter needs MLflow, which is not installed",
                               hint="pip install 'robustness-harness[mlflow]'") from None
        if self.tracking_uri:
            mlflow.set_tracking_uri(self.tracking_uri)
        name = self.experiment or run.suite_name or "robustness-harness"
        client = mlflow.tracking.MlflowClient()
        found = client.get_experiment_by_name(name)
        experiment_id = (found.experiment_id if found is not None else
                         client.create_experiment(name,
                                                  artifact_location=self.artifact_location))
        summary = run.summary
        suite = summary.get("suite") or {}
        with mlflow.start_run(experiment_id=experiment_id,
                              run_name=self.run_name or run.folder.name) as active:
            params: dict[str, str] = {"seed": str(summary.get("seed")),
                                      "device": str(summary.get("device")),
                                      "suite": str(suite.get("name", ""))}
            try:
                import yaml

                _flat("suite", yaml.safe_load(run.file("suite.yaml").read_text()), params)
            except Exception:   # a suite YAML reads as the harness's loader does; keep going
                pass
            for key, value in (summary.get("versions") or {}).items():
                params[_KEY.sub("_", f"version.{key}")] = str(value)[:6000]
            mlflow.log_params(params)
            metrics = {}
            for row in run.results().to_dict("records"):
                key = metric_key(row["test"], row["model"], row["metric"], row["param"] or "")
                for suffix, value in (("", row["value"]), ("/low", row.get("low")),
                                      ("/high", row.get("high"))):
                    if value is not None and isinstance(value, float) and math.isfinite(value):
                        metrics[key + suffix] = value
            if metrics:
                mlflow.log_metrics(metrics)
            tags = {"harness.verdict": str(summary.get("verdict", ""))[:5000],
                    "harness.exit_code": str(summary.get("exit_code")),
                    "harness.folder": str(run.folder)}
            for i, gate in enumerate(summary.get("gates") or []):
                status = "SKIP" if gate.get("skipped") else ("PASS" if gate["passed"] else "FAIL")
                tags[f"harness.gate.{i}"] = (f"{status}: {gate['test']} {gate['model']} "
                                             f"{gate['metric']}"
                                             + (f" {gate['reason']}" if gate.get("reason")
                                                else ""))[:5000]
            mlflow.set_tags(tags)
            for kept in ("report.md", "summary.json", "results.csv", "suite.yaml"):
                path = run.file(kept) if (run.folder / kept).exists() else None
                if path is not None:
                    mlflow.log_artifact(str(path))
            for figure in run.figures:
                path = run.file(figure)
                if path.is_file():
                    mlflow.log_artifact(str(path), artifact_path=str(
                        path.parent.relative_to(run.folder)))
            run_id = active.info.run_id
        return (f"logged to MLflow: experiment {name!r}, run {run_id} ({len(metrics)} "
                f"metrics, {len(params)} params)")
