"""Gates: thresholds on results, and regressions against a baseline run -> pass/fail verdicts
(and the run's exit code)."""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

from .suite import GateConfig

Key = tuple[str, str, str, str]


def _index(records: Iterable[Mapping[str, Any]],
           counts: dict[Key, Any] | None = None) -> dict[Key, float]:
    out: dict[Key, float] = {}
    for rec in records:
        param = rec.get("param")
        param = "" if param is None or (isinstance(param, float) and math.isnan(param)) else param
        key = (rec["test"], rec["model"], rec["metric"], str(param))
        out[key] = float(rec["value"])
        if counts is not None:
            counts[key] = rec.get("n")
    return out


def _check(gate: GateConfig, value: float, base: float | None, higher_is_better: bool | None,
           has_baseline: bool) -> tuple[list[str], bool]:
    """Failure reasons for one value, and whether a drop check was skipped."""
    if math.isnan(value):
        return ["value is NaN"], False
    fails = []
    if gate.min is not None and value < gate.min:
        fails.append(f"{value:.4g} < min {gate.min:g}")
    if gate.max is not None and value > gate.max:
        fails.append(f"{value:.4g} > max {gate.max:g}")
    if gate.max_drop is None:
        return fails, False
    if not has_baseline:
        return fails, True
    if base is None or math.isnan(base):
        return fails + ["the baseline run has no value to compare with"], False
    worse = (base - value) if higher_is_better else (value - base)
    if gate.drop == "relative":
        drop = worse / abs(base) if base != 0 else (math.inf if worse > 0 else 0.0)
        if drop > gate.max_drop:
            fails.append(f"{value:.4g} is {drop:.1%} worse than the baseline's {base:.4g} "
                         f"(max_drop {gate.max_drop:.1%})")
    elif worse > gate.max_drop:
        fails.append(f"{value:.4g} is {worse:.4g} worse than the baseline's {base:.4g} "
                     f"(max_drop {gate.max_drop:g})")
    return fails, False


def evaluate(gates: Iterable[GateConfig], records: Iterable[Mapping[str, Any]],
             baseline: Iterable[Mapping[str, Any]] | None = None,
             directions: Mapping[str, bool | None] | None = None,
             unmeasured: str | None = None) -> list[dict[str, Any]]:
    """One verdict per gate.

    ``baseline``: the records of an earlier run, for ``max_drop`` gates; ``directions``:
    metric name -> whether higher is better. A gate whose value is missing (its case errored)
    or NaN fails, saying why; a ``max_drop`` gate without a baseline is reported as skipped,
    and so is a gate without a value when ``unmeasured`` says why its case may not have run
    (an interrupted run, one shard of a suite).
    """
    counts: dict[Key, Any] = {}
    index = _index(records, counts)
    base_index = _index(baseline) if baseline is not None else {}
    directions = directions or {}
    verdicts = []
    for gate in gates:
        matches = {k: v for k, v in index.items()
                   if k[:3] == (gate.test, gate.model, gate.metric)
                   and (gate.param is None or k[3] == gate.param)}
        verdict: dict[str, Any] = {
            "test": gate.test, "model": gate.model, "metric": gate.metric, "param": gate.param,
            "min": gate.min, "max": gate.max, "max_drop": gate.max_drop,
            "drop": gate.drop if gate.max_drop is not None else None,
            "value": None, "baseline": None, "passed": False, "skipped": False, "reason": "",
        }
        if not matches and unmeasured:
            verdict.update(passed=True, skipped=True, reason=f"not measured: {unmeasured}")
            verdicts.append(verdict)
            continue
        if not matches:
            verdict["reason"] = "no value (the test did not produce this metric)"
            verdicts.append(verdict)
            continue
        failures: list[str] = []
        values, bases = [], []
        skipped = False
        for key, value in sorted(matches.items()):
            base = base_index.get(key)
            fails, skip = _check(gate, value, base, directions.get(gate.metric),
                                 baseline is not None)
            if math.isnan(value) and counts.get(key) == 0:
                fails = ["no images to measure it on (n is 0)"]
            skipped = skipped or skip
            label = f" at {key[3]}" if key[3] and gate.param is None else ""
            failures += [f + label for f in fails]
            values.append(value)
            bases.append(base)
        verdict["value"] = values[0] if len(values) == 1 else values
        if baseline is not None and gate.max_drop is not None:
            verdict["baseline"] = bases[0] if len(bases) == 1 else bases
        verdict["passed"] = not failures
        verdict["skipped"] = skipped and not failures and gate.min is None and gate.max is None
        reason = "; ".join(failures)
        if skipped and not failures:
            reason = "max_drop not checked: no --baseline run given"
        verdict["reason"] = reason
        verdicts.append(verdict)
    return verdicts
