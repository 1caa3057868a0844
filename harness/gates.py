"""Gates: thresholds on results, and regressions against a baseline run -> pass/fail verdicts
(and the run's exit code).

A gate's ``min``/``max`` judge the value, or with ``bound: lower``/``upper`` that end of the
value's 95% interval (``bound: lower`` with ``min``: pass only when the run shows, with 95%
confidence, that the value is above the threshold). A ``max_drop`` gate compares the value
with a baseline run's (``--baseline``); with ``paired: true`` it tests the change on the
images both runs share (McNemar's exact test for rates, a paired bootstrap for means) and
fails only when the worsening is larger than ``max_drop`` *and* significant at ``alpha``. Its
verdict says how large a worsening the run could have detected.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from .suite import GateConfig

if TYPE_CHECKING:
    from .plan import Plan
    from .stats import PairedTest

Key = tuple[str, str, str, str]
#: (gate, key) -> the paired test of the key's per-image values against the baseline's, or
#: a sentence saying why there is none
PairedFn = Callable[[GateConfig, Key], "PairedTest | str"]


def _index(records: Iterable[Mapping[str, Any]]) -> dict[Key, dict[str, Any]]:
    out: dict[Key, dict[str, Any]] = {}
    for rec in records:
        param = rec.get("param")
        param = "" if param is None or (isinstance(param, float) and math.isnan(param)) else param
        key = (rec["test"], rec["model"], rec["metric"], str(param))
        out[key] = {"value": float(rec["value"]), "n": rec.get("n"),
                    "low": _num(rec.get("low")), "high": _num(rec.get("high"))}
    return out


def _num(v: Any) -> float:
    try:
        return math.nan if v is None or v == "" else float(v)
    except (TypeError, ValueError):
        return math.nan


def _judged(gate: GateConfig, row: dict[str, Any]) -> tuple[float, str]:
    """The number ``min``/``max`` judge (the value, or a bound of its interval) and its name."""
    bound = getattr(gate, "bound", "value")
    if bound == "value":
        return row["value"], ""
    v = row["low" if bound == "lower" else "high"]
    return v, f"{bound} bound of the 95% interval "


def _check(gate: GateConfig, row: dict[str, Any], base: dict[str, Any] | None,
           higher_is_better: bool | None, has_baseline: bool,
           paired: "PairedTest | str | None") -> tuple[list[str], bool, dict[str, Any]]:
    """Failure reasons for one value, whether a drop check was skipped, and what a paired
    test found (for the verdict)."""
    value = row["value"]
    extra: dict[str, Any] = {}
    if math.isnan(value):
        return ["value is NaN"], False, extra
    fails = []
    judged, what = _judged(gate, row)
    if (gate.min is not None or gate.max is not None) and math.isnan(judged):
        fails.append(f"the value has no interval to judge its {gate.bound} bound")
    else:
        if gate.min is not None and judged < gate.min:
            fails.append(f"{what}{judged:.4g} < min {gate.min:g}")
        if gate.max is not None and judged > gate.max:
            fails.append(f"{what}{judged:.4g} > max {gate.max:g}")
    if gate.max_drop is None:
        return fails, False, extra
    if not has_baseline:
        return fails, True, extra
    base_value = None if base is None else base["value"]
    if base_value is None or math.isnan(base_value):
        return fails + ["the baseline run has no value to compare with"], False, extra
    worse = (base_value - value) if higher_is_better else (value - base_value)
    relative = gate.drop == "relative"
    if relative:
        drop = worse / abs(base_value) if base_value != 0 else (math.inf if worse > 0 else 0.0)
    else:
        drop = worse
    shown = f"{drop:.1%}" if relative else f"{drop:.4g}"
    limit = f"{gate.max_drop:.1%}" if relative else f"{gate.max_drop:g}"
    if getattr(gate, "paired", False):
        if isinstance(paired, str) or paired is None:
            return fails + [f"no paired test: {paired or 'no per-image values'}"], False, extra
        detectable = paired.detectable
        if relative and base_value:
            detectable = detectable / abs(base_value)
        extra = {"p_value": paired.p_value, "detectable": detectable, "paired_n": paired.n,
                 "test_method": paired.method}
        seen = (f"{paired.detail}; p = {paired.p_value:.3g} (alpha {paired.alpha:g}); "
                f"the smallest worsening these images could show as significant: "
                + (f"{detectable:.1%}" if relative else f"{detectable:.4g}"))
        extra["evidence"] = seen
        if drop > gate.max_drop and paired.significant:
            fails.append(f"{value:.4g} is {shown} worse than the baseline's {base_value:.4g} "
                         f"(max_drop {limit}), a significant change: {seen}")
        return fails, False, extra
    if drop > gate.max_drop:
        what = "worse than the baseline's"
        fails.append(f"{value:.4g} is {shown} {what} {base_value:.4g} (max_drop {limit})")
    return fails, False, extra


def evaluate(gates: Iterable[GateConfig], records: Iterable[Mapping[str, Any]],
             baseline: Iterable[Mapping[str, Any]] | None = None,
             directions: Mapping[str, bool | None] | None = None,
             unmeasured: str | None = None, paired: PairedFn | None = None,
             ) -> list[dict[str, Any]]:
    """One verdict per gate.

    ``baseline``: the records of an earlier run, for ``max_drop`` gates; ``directions``:
    metric name -> whether higher is better; ``paired``: the paired tests of ``paired: true``
    gates. A gate whose value is missing (its case errored) or NaN fails, saying why; a
    ``max_drop`` gate without a baseline is reported as skipped, and so is a gate without a
    value when ``unmeasured`` says why its case may not have run (an interrupted run, one
    shard of a suite).
    """
    index = _index(records)
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
            "bound": getattr(gate, "bound", "value"),
            "paired": bool(getattr(gate, "paired", False)),
            "alpha": getattr(gate, "alpha", None) if getattr(gate, "paired", False) else None,
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
        values, bases, evidence = [], [], []
        skipped = False
        for key, row in sorted(matches.items()):
            base = base_index.get(key)
            test = None
            if getattr(gate, "paired", False) and gate.max_drop is not None \
                    and baseline is not None:
                test = paired(gate, key) if paired is not None else "no ledger to pair"
            fails, skip, extra = _check(gate, row, base, directions.get(gate.metric),
                                        baseline is not None, test)
            if math.isnan(row["value"]) and row.get("n") == 0:
                fails = ["no images to measure it on (n is 0)"]
            skipped = skipped or skip
            label = f" at {key[3]}" if key[3] and gate.param is None else ""
            failures += [f + label for f in fails]
            values.append(row["value"])
            bases.append(None if base is None else base["value"])
            if extra:
                evidence.append(extra)
                for name in ("p_value", "detectable", "paired_n", "test_method"):
                    verdict.setdefault(name, extra[name])
        verdict["value"] = values[0] if len(values) == 1 else values
        if baseline is not None and gate.max_drop is not None:
            verdict["baseline"] = bases[0] if len(bases) == 1 else bases
        verdict["passed"] = not failures
        verdict["skipped"] = skipped and not failures and gate.min is None and gate.max is None
        reason = "; ".join(failures)
        if skipped and not failures:
            reason = "max_drop not checked: no --baseline run given"
        elif not failures and evidence:
            reason = "no significant worsening: " + "; ".join(e["evidence"] for e in evidence)
        verdict["reason"] = reason
        verdicts.append(verdict)
    return verdicts


# ---------------------------------------------------------------------------- a run's gates

def judge(plan: "Plan", result: Any, store: Any, baseline: Any = None) -> list[dict[str, Any]]:
    """The verdicts of the suite's gates on a run's results (and ledger, for paired gates)."""
    suite = plan.suite
    if not suite.gates:
        return []
    unmeasured = None
    if result.interrupted:
        unmeasured = "the run was interrupted (finish it with --resume)"
    elif result.shard is not None:
        unmeasured = (f"not in shard {result.shard[0]}/{result.shard[1]} "
                      "(judge it on the shards merged with 'harness merge')")
    directions: dict[str, bool | None] = {}
    for test in plan.tests:
        for name in test.metric_names():
            directions.setdefault(name, test.higher_is_better(name))
    base_records = baseline.results().to_dict("records") if baseline is not None else None
    return evaluate(suite.gates, result.records, base_records, directions,
                    unmeasured=unmeasured,
                    paired=paired_tests(plan, store, baseline) if baseline is not None else None)


def paired_tests(plan: "Plan", store: Any, baseline: Any) -> PairedFn:
    """Paired tests of this run's per-image values against the baseline run's."""
    from .stats import mcnemar, paired_bootstrap

    ledgers: dict[str, Any] = {}

    def ledger(which: str, source: Any, test: str) -> Any:
        # the rows of this test only: other tests of the same model may have rows with the
        # same setting (e.g. none), which must not be paired with this test's
        if which not in ledgers:
            ledgers[which] = source.ledger()
        whole = ledgers[which]
        return whole[whole["test"] == test]

    def test_of(gate: GateConfig, key: Key) -> "PairedTest | str":
        test = plan.test(gate.test)
        now = test.per_image(ledger("now", store, gate.test), key[1], key[2], key[3])
        if now is None:
            return f"metric {key[2]!r} has no per-image values"
        if not (baseline.path / store.LEDGER).is_dir():
            return f"the baseline run {baseline.path} has no per-image ledger"
        before = test.per_image(ledger("base", baseline, gate.test), key[1], key[2],
                                key[3])
        if before is None or before.empty:
            return "the baseline run has no per-image values for it"
        both = now.to_frame("new").join(before.to_frame("base"), how="inner")
        if both.empty:
            return "the two runs share no image"
        higher = test.higher_is_better(gate.metric)
        statistic = _statistic(test, gate.metric)
        alpha = getattr(gate, "alpha", 0.05)
        from .context import stable_seed

        if statistic == "rate":
            keep = both.dropna()
            return mcnemar(keep["base"].to_numpy() > 0.5, keep["new"].to_numpy() > 0.5,
                           bool(higher), alpha)
        return paired_bootstrap(both["base"].to_numpy(), both["new"].to_numpy(), bool(higher),
                                alpha, seed=stable_seed(plan.seed, *key) % 2**32)

    return test_of


def _statistic(test: Any, metric: str) -> str:
    for name, m in getattr(test, "metrics", []):
        if name == metric:
            return m.statistic
    return "rate" if metric in ("adv_error", "success_rate") else "mean"


def exit_code_of(result: Any, verdicts: list[dict[str, Any]]) -> tuple[int, str]:
    """The run's exit code and a one-line verdict: 2 when a case failed on the user's input
    (a model that returns NaN, missing data), 1 when a gate failed or a case hit an internal
    error, 128 + the signal when interrupted (130, 143), else 0."""
    input_errors = [c for c in result.errors if c.error_kind == "input"]
    other_errors = [c for c in result.errors if c.error_kind != "input"]
    failed = [v for v in verdicts if not v["passed"]]
    skipped = [v for v in verdicts if v.get("skipped")]
    parts = []
    if input_errors:
        parts.append(f"{len(input_errors)} case(s) failed on invalid input")
    if other_errors:
        parts.append(f"{len(other_errors)} case(s) errored")
    if failed:
        parts.append(f"{len(failed)} of {len(verdicts)} gate(s) failed")
    if result.interrupted:
        import signal

        code = result.interrupt_code
        try:
            by = f" by {signal.Signals(code - 128).name}"
        except ValueError:
            by = ""
        finished = sum(1 for c in result.cases if c.status != "partial")
        return code, f"INTERRUPTED{by}: " + (", ".join(parts)
                                            or f"{finished} case(s) finished")
    if input_errors:
        return 2, "ERROR: " + ", ".join(parts)
    if parts:
        return 1, "FAILED: " + ", ".join(parts)
    gates = f", {len(verdicts) - len(skipped)} gate(s) passed" if verdicts else ""
    if skipped:
        gates += f", {len(skipped)} skipped (see why in the Gates table)"
    shard = f"shard {result.shard[0]}/{result.shard[1]}, " if result.shard else ""
    ran = sum(1 for c in result.cases if c.status != "partial")
    return 0, f"OK: {shard}{ran} case(s) ran{gates}"
