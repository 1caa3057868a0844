from harness.gates import evaluate
from harness.suite import GateConfig

RECORDS = [
    {"test": "t", "model": "m", "metric": "adv_error", "param": "stddev=0.1", "value": 0.2},
    {"test": "t", "model": "m", "metric": "adv_error", "param": "stddev=0.3", "value": 0.6},
    {"test": "t", "model": "m", "metric": "mean_distortion", "param": "", "value": float("nan")},
    {"test": "u", "model": "m", "metric": "clean_error", "param": "", "value": 0.05},
]


def gate(**kw):
    return GateConfig(**{"test": "u", "model": "m", "metric": "clean_error", **kw})


def test_min_and_max():
    ok, low, high = evaluate([gate(max=0.1), gate(min=0.1), gate(max=0.01)], RECORDS)
    assert ok["passed"] and ok["value"] == 0.05 and ok["reason"] == ""
    assert not low["passed"] and "< min 0.1" in low["reason"]
    assert not high["passed"] and "> max 0.01" in high["reason"]


def test_param_selects_one_setting_and_no_param_checks_all():
    only, every = evaluate([gate(test="t", metric="adv_error", param="stddev=0.1", max=0.5),
                            gate(test="t", metric="adv_error", max=0.5)], RECORDS)
    assert only["passed"] and only["value"] == 0.2
    assert not every["passed"] and "at stddev=0.3" in every["reason"]


def test_missing_and_nan_values_fail():
    missing, nan = evaluate([gate(model="other", max=1),
                             gate(test="t", metric="mean_distortion", min=0)], RECORDS)
    assert not missing["passed"] and "no value" in missing["reason"]
    assert not nan["passed"] and "NaN" in nan["reason"]


def test_interrupted_run_skips_unmeasured_gates_but_checks_the_rest():
    missing, measured, bad = evaluate([gate(model="other", max=1), gate(max=0.1), gate(max=0.01)],
                                      RECORDS, unmeasured="the run was interrupted")
    assert missing["skipped"] and "interrupted" in missing["reason"]
    assert measured["passed"] and not measured["skipped"]
    assert not bad["passed"] and not bad["skipped"]


def test_max_drop_relative_and_absolute_against_a_baseline():
    base = [{"test": "u", "model": "m", "metric": "mean_distortion", "param": "", "value": 0.10},
            {"test": "u", "model": "m", "metric": "adv_error", "param": "", "value": 0.20}]
    now = [{"test": "u", "model": "m", "metric": "mean_distortion", "param": "", "value": 0.085},
           {"test": "u", "model": "m", "metric": "adv_error", "param": "", "value": 0.21}]
    directions = {"mean_distortion": True, "adv_error": False}
    gates = [gate(metric="mean_distortion", max_drop=0.1),        # 15% lower: fails
             gate(metric="mean_distortion", max_drop=0.2),        # passes
             gate(metric="adv_error", max_drop=0.02, drop="absolute"),  # +0.01: passes
             gate(metric="adv_error", max_drop=0.04)]             # +5% relative: fails
    v = evaluate(gates, now, base, directions)
    assert [x["passed"] for x in v] == [False, True, True, False]
    assert "15.0% worse than the baseline's 0.1" in v[0]["reason"]
    assert v[0]["baseline"] == 0.10
    # improvement never fails
    better = evaluate([gate(metric="mean_distortion", max_drop=0.0)],
                      [{**now[0], "value": 0.2}], base, directions)
    assert better[0]["passed"]


def test_max_drop_without_baseline_is_skipped_not_passed_silently():
    (v,) = evaluate([gate(max_drop=0.1)], RECORDS, None, {"clean_error": False})
    assert v["passed"] and v["skipped"] and "no --baseline" in v["reason"]
    (v,) = evaluate([gate(max_drop=0.1)], RECORDS, [], {"clean_error": False})
    assert not v["passed"] and "baseline run has no value" in v["reason"]
