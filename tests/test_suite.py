"""Suite loading: schema, references and plugin parameters, each error naming file:line and field."""

from __future__ import annotations

import pytest

from harness.errors import SuiteError
from harness.plugins import default_registry
from harness.suite import load_suite, parse_suite, metric_specs

GOOD = """\
name: demo
seed: 3
data: {use: digits, split: test, limit: 50}
models:
  near: {use: torch, factory: "tiny_models:digits_template", input_shape: [1, 8, 8]}
  lin:
    use: torch
    factory: tiny_models:linear
    input_shape: [1, 8, 8]
tests:
  - name: clean
  - name: noise
    attack: {use: gaussian-noise, stddev: [0.1, 0.3]}
    models: [near]
    metrics: [clean_error, adv_error]
gates:
  - {test: noise, model: near, metric: adv_error, max: 0.9}
"""


@pytest.fixture(scope="module")
def registry():
    return default_registry()


def test_good_suite_loads(write_suite, registry):
    suite = load_suite(write_suite(GOOD), registry)
    assert suite.name == "demo" and suite.seed == 3
    assert list(suite.models) == ["near", "lin"]
    assert suite.models["lin"].use == "torch"
    assert suite.models["lin"].params["factory"] == "tiny_models:linear"
    assert suite.test_models(suite.tests[0]) == ["near", "lin"]
    assert suite.test_models(suite.tests[1]) == ["near"]
    assert [m.use for m in metric_specs(suite.tests[1])] == ["clean_error", "adv_error"]
    # defaults: a test without attack measures the clean error
    assert [m.use for m in metric_specs(suite.tests[0])] == ["clean_error"]
    assert suite.device == "auto"


def test_yaml_12_floats_and_shorthand_specs(registry):
    suite = parse_suite("name: x\ndata: digits\nmodels:\n  m: {use: torch, factory: 'a:b', "
                        "input_shape: [1]}\ntests:\n  - {name: t, attack: gaussian-noise}\n"
                        "gates:\n  - {test: t, model: m, metric: adv_error, min: 1e-5}\n", "s.yaml")
    assert suite.gates[0].min == 1e-5
    assert suite.data.use == "digits"
    assert suite.tests[0].attack.use == "gaussian-noise"


# (replacement applied to GOOD, expected line, expected field, words in the message)
BAD = [
    ("name: demo", "name: bad name!", 1, "name", "letters, digits"),
    ("seed: 3", "seed: three", 2, "seed", "valid integer"),
    ("limit: 50}", "limitt: 50}", 3, "data.limitt", "unknown parameter 'limitt'"),
    ("split: test", "split: tset", 3, "data.split", "'train', 'test' or 'all'"),
    ("    factory: tiny_models:linear", "    factory: tiny_models_linear", 8,
     "models.lin.factory", "package.module:callable"),
    ("    input_shape: [1, 8, 8]", "    input_shape: [1, 8, 8]\n    colour: red", 10,
     "models.lin.colour", "unknown parameter 'colour'"),
    ("use: gaussian-noise", "use: gausian-noise", 13, "tests[1].attack.use",
     "did you mean 'gaussian-noise'"),
    ("stddev: [0.1, 0.3]", "stddev: [0.1, -0.3]", 13, "tests[1].attack.stddev",
     "greater than or equal to 0"),
    ("models: [near]", "models: [far]", 14, "tests[1].models[0]", "unknown model id 'far'"),
    ("metrics: [clean_error, adv_error]", "metrics: [clean_error, adv_eror]", 15,
     "tests[1].metrics[1].use", "did you mean 'adv_error'"),
    ("  - name: clean", "  - nme: clean", 11, "tests[0].nme", "did you mean 'name'"),
    ("  - name: clean", "  - name: clean\n    atack: lbfgs", 12, "tests[0].atack",
     "unknown key 'atack'"),
    ("metric: adv_error, max: 0.9", "metric: adv_error, mx: 0.9", 17, "gates[0].mx",
     "unknown key 'mx'"),
    ("metric: adv_error, max: 0.9", "metric: mean_distortion, max: 0.9", 17, "gates[0].metric",
     "does not compute metric"),
    ("model: near, metric", "model: lin, metric", 17, "gates[0].model", "does not run model"),
    ("{test: noise,", "{test: noize,", 17, "gates[0].test", "unknown test 'noize'"),
    ("metric: adv_error, max: 0.9", "metric: adv_error", 17, "gates[0]", "needs 'min', 'max' or 'max_drop'"),
    ("  - name: clean\n", "  - name: clean\n  - name: clean\n", 12, "tests[1].name", "used twice"),
    ("  near: {use", "  lin: {use", 6, "models.lin", "duplicate key 'lin'"),
    ("tests:\n", "tests:\n  - name: [oops\n", 12, None, "flow sequence on line 11"),
]


@pytest.mark.parametrize("old,new,line,field,words", BAD, ids=[b[1][:30] for b in BAD])
def test_bad_suite_names_file_line_and_field(write_suite, registry, old, new, line, field, words):
    assert old in GOOD
    path = write_suite(GOOD.replace(old, new, 1))
    with pytest.raises(SuiteError) as info:
        load_suite(path, registry)
    err = info.value
    text = str(err)
    assert "\n" not in text
    assert err.file == str(path)
    assert err.line == line, text
    if field is not None:
        assert err.field == field, text
    assert words in text, text
    assert text.startswith(f"{path}:{line}: ")


def test_missing_data_is_reported(write_suite, registry):
    path = write_suite(GOOD.replace("data: {use: digits, split: test, limit: 50}\n", ""))
    with pytest.raises(SuiteError, match="has no data"):
        load_suite(path, registry)


def test_metric_needing_attack_on_clean_test(write_suite, registry):
    path = write_suite(GOOD.replace("  - name: clean\n", "  - name: clean\n    metrics: [adv_error]\n"))
    with pytest.raises(SuiteError) as info:
        load_suite(path, registry)
    assert info.value.line == 12 and "needs an attack" in str(info.value)


def test_gate_param_must_exist(write_suite, registry):
    path = write_suite(GOOD.replace("max: 0.9}", "max: 0.9, param: stddev=0.2}"))
    with pytest.raises(SuiteError, match="stddev=0.1, stddev=0.3"):
        load_suite(path, registry)


def test_not_a_mapping_and_missing_file(write_suite, tmp_path, registry):
    with pytest.raises(SuiteError, match=":1: a suite is a mapping"):
        load_suite(write_suite("- just\n- a list\n"), registry)
    with pytest.raises(SuiteError, match="no such file"):
        load_suite(tmp_path / "nope.yaml", registry)
    with pytest.raises(SuiteError, match="missing required key 'tests'"):
        load_suite(write_suite("name: x\nmodels: {m: digits}\n"), registry)


def test_table_reference_must_match_columns(write_suite, registry):
    text = GOOD + """tables:
  - title: T
    columns: [{test: clean, metric: clean_error}]
    reference: {source: paper, rows: {near: [0.1, 0.2]}}
"""
    with pytest.raises(SuiteError) as info:
        load_suite(write_suite(text), registry)
    assert info.value.line == 21 and "2 reference values for 1 columns" in str(info.value)


def test_anchors_and_merge_keys(write_suite, registry):
    text = GOOD.replace("  near: {use", "  near: &spec {use").replace(
        "  lin:\n    use: torch\n    factory: tiny_models:linear\n    input_shape: [1, 8, 8]\n",
        "  lin:\n    <<: *spec\n    factory: tiny_models:linear\n")
    suite = load_suite(write_suite(text), registry)
    assert suite.models["lin"].params == {"factory": "tiny_models:linear",
                                          "input_shape": [1, 8, 8]}
