"""The legacy package's own tests, as written for the first plugin API (unchanged but for the
plugin names, which carry a legacy- prefix so both packages install side by side)."""

import pytest

import harness_legacy_example as harness_example
from harness import ParamError
from harness.testing import check_analysis, check_attack, check_metric, make_registry

SUITE = """\
name: stripes
data: {use: legacy-stripes, n: 100, seed: 1}
models:
  nm: {use: legacy-nearest-mean, train: {use: legacy-stripes, n: 400, seed: 0}}
tests:
  - name: fgsm
    attack: {use: legacy-fgsm, eps: [0.05, 0.5]}
    metrics: [clean_error, adv_error, legacy_adv_confidence]
  - name: gradients
    analysis: {use: legacy-input-gradient, norm: linf}
"""


def test_attack_contract(tiny_model):
    res = check_attack(harness_example.FGSM(eps=0.3), tiny_model)
    assert res.success.float().mean() > 0.5
    assert float(res.distortion.max()) <= 0.3 + 1e-6


def test_metric_contract():
    value = check_metric(harness_example.AdvConfidence(), harness_example.FGSM(eps=0.2))
    assert 0.1 <= value <= 1.0


def test_analysis_contract(tiny_model):
    res = check_analysis(harness_example.InputGradient(), tiny_model)
    values = {r["metric"]: r["value"] for r in res.records}
    assert 0 < values["grad_norm_median"] <= values["grad_norm_max"]
    assert list(res.figures) == ["input-gradient-l2.png"]


def test_parameters_are_checked():
    with pytest.raises(ParamError):
        harness_example.FGSM(eps=2)
    with pytest.raises(ParamError):
        harness_example.Stripes(size=1)


def test_all_kinds_in_a_suite(run_suite):
    # registered explicitly, so the test also works before the package is installed
    installed = "legacy-stripes" in make_registry().names("dataset")
    registry = None if installed else make_registry(harness_example)
    code, results = run_suite(SUITE, registry)
    assert code == 0
    values = results.set_index(["param", "metric"])["value"]
    assert values[("eps=0.05", "clean_error")] < 0.05     # stripes are easy
    assert values[("eps=0.5", "adv_error")] > values[("eps=0.05", "adv_error")]
    grads = results[results.test == "gradients"].set_index("metric")["value"]
    assert 0 < grads["grad_norm_mean"] <= grads["grad_norm_max"]
