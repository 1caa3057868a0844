"""Gates: thresholds on results -> pass/fail verdicts (and the run's exit code)."""

from __future__ import annotations

import math
from typing import Any, Iterable

from .suite import GateConfig


def evaluate(gates: Iterable[GateConfig], records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One verdict per gate: the value found, and whether it passed.

    A gate whose value is missing (the case errored) or NaN fails, saying why.
    """
    index: dict[tuple[str, str, str, str], float] = {}
    for rec in records:
        key = (rec["test"], rec["model"], rec["metric"], rec.get("param") or "")
        index[key] = float(rec["value"])
    verdicts = []
    for gate in gates:
        matches = {k: v for k, v in index.items()
                   if k[:3] == (gate.test, gate.model, gate.metric)
                   and (gate.param is None or k[3] == gate.param)}
        verdict: dict[str, Any] = {
            "test": gate.test, "model": gate.model, "metric": gate.metric, "param": gate.param,
            "min": gate.min, "max": gate.max, "value": None, "passed": False, "reason": "",
        }
        if not matches:
            verdict["reason"] = "no value (the test did not produce this metric)"
        else:
            failures = []
            values = []
            for (_, _, _, param), value in sorted(matches.items()):
                label = f" at {param}" if param and gate.param is None else ""
                values.append(value)
                if math.isnan(value):
                    failures.append(f"value is NaN{label}")
                elif gate.min is not None and value < gate.min:
                    failures.append(f"{value:.4g} < min {gate.min:g}{label}")
                elif gate.max is not None and value > gate.max:
                    failures.append(f"{value:.4g} > max {gate.max:g}{label}")
            verdict["value"] = values[0] if len(values) == 1 else values
            verdict["passed"] = not failures
            verdict["reason"] = "; ".join(failures)
        verdicts.append(verdict)
    return verdicts
