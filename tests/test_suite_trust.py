"""Suites are untrusted input until validated: names are single-line and bounded, odd bytes
get one line, and the code a suite makes the harness import is listed and can be refused."""

from __future__ import annotations

import pytest

from harness.cli import main

BASE = """\
name: NAME
data: {use: digits, split: test, limit: 20}
models:
  MODEL: {use: torch, factory: "FACTORY", input_shape: [1, 8, 8]}
tests:
  - name: TEST
"""


def suite_text(name="ok", model="near", test="clean", factory="tiny_models:digits_template"):
    return (BASE.replace("NAME", name).replace("MODEL", model).replace("TEST", test)
            .replace("FACTORY", factory))


def one_error(args, capsys) -> str:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "internal error" not in err
    return lines[0]


# ------------------------------------------------------------------ item 14: names

def test_a_control_character_is_one_line_with_its_place(write_suite, capsys):
    path = write_suite(suite_text(name="x\x07y"))
    line = one_error(["validate", path], capsys)
    assert f"{path}:1: not valid YAML: the control character #x0007 at column 8" in line


@pytest.mark.parametrize("field,value,where", [
    ("name", '"rt\\n"', "name: use letters, digits"),
    ("test", '"x\\n"', "tests[0].name: use letters, digits"),
    ("model", "m" * 260, "model id 'mmmm"),
    ("name", "n" * 101, "name: 101 characters is too long (at most 100)"),
    ("test", "t" * 101, "tests[0].name: 101 characters is too long"),
])
def test_names_are_single_line_and_bounded(write_suite, capsys, field, value, where):
    path = write_suite(suite_text(**{field: value}))
    line = one_error(["validate", path], capsys)
    assert where in line, line


def test_a_260_character_model_id_is_refused_before_anything_runs(write_suite, tmp_path,
                                                                  capsys):
    path = write_suite(suite_text(model="m" * 260))
    line = one_error(["run", path, "--out", tmp_path / "r"], capsys)
    assert "260 characters is too long (at most 100)" in line
    assert not (tmp_path / "r").exists()


def test_titles_and_labels_are_one_line(write_suite, capsys):
    text = suite_text() + ('tables:\n  - title: "two\\nlines"\n'
                           '    columns: [{test: clean, metric: clean_error}]\n')
    line = one_error(["validate", write_suite(text)], capsys)
    assert "tables[0].title: must be one line without control characters" in line


# ------------------------------------------------------------------ item 3: a suite is code

HOSTILE = """\
name: hostile
data: {use: digits, split: test, limit: 20}
models:
  m: {use: torch, factory: "marker_module:make", input_shape: [1, 8, 8]}
tests:
  - name: clean
"""

MARKER = '''\
import pathlib, os
pathlib.Path(os.environ["MARKER_FILE"]).write_text("imported")

def make():
    import tiny_models
    return tiny_models.digits_template()
'''


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    """A suite whose factory module writes a marker file when imported."""
    (tmp_path / "marker_module.py").write_text(MARKER)
    monkeypatch.syspath_prepend(str(tmp_path))
    marker = tmp_path / "imported.txt"
    monkeypatch.setenv("MARKER_FILE", str(marker))
    suite = tmp_path / "hostile.yaml"
    suite.write_text(HOSTILE)
    return suite, marker


def test_validate_lists_the_code_a_suite_imports_and_calls(hostile, capsys):
    suite, marker = hostile
    assert main(["validate", str(suite)]) == 0
    out = capsys.readouterr().out
    assert "code it imports and calls when it runs" in out
    assert "line 4: models.m.factory: marker_module -> marker_module:make" in out
    assert "model plugin 'torch'" in out
    assert not marker.exists()  # validating imports nothing


@pytest.mark.parametrize("how", ["--no-code", "env-empty", "env-other"])
@pytest.mark.parametrize("command", ["run", "validate", "export"])
def test_code_can_be_refused_before_it_is_imported(hostile, tmp_path, monkeypatch, capsys,
                                                   how, command):
    suite, marker = hostile
    args = {"run": ["run", suite, "--out", tmp_path / "r", "-q"],
            "validate": ["validate", suite],
            "export": ["export", suite, "m", tmp_path / "m.onnx"]}[command]
    if how == "--no-code":
        args.append("--no-code")
    else:
        monkeypatch.setenv("HARNESS_ALLOW_FACTORIES", "" if how == "env-empty" else "torchvision,tiny_models")
    line = one_error(args, capsys)
    assert f"{suite}:4: models.m.factory: 'marker_module:make' is code this suite would " \
           "import and run" in line
    assert not marker.exists() and not (tmp_path / "r" / "summary.json").exists()


def test_allowed_packages_run(hostile, tmp_path, monkeypatch, capsys):
    suite, marker = hostile
    monkeypatch.setenv("HARNESS_ALLOW_FACTORIES", "numpy, marker_module")
    assert main(["run", str(suite), "--out", str(tmp_path / "r"), "-q"]) == 0
    assert marker.read_text() == "imported"


def test_a_suite_without_code_passes_no_code(write_suite, capsys):
    path = write_suite("""\
name: plain
data: {use: digits, split: test, limit: 20}
models:
  m: {use: mlp, hidden: [], epochs: 2}
tests:
  - name: clean
""")
    assert main(["validate", str(path), "--no-code"]) == 0
    assert "code it imports and calls: none beyond the installed plugins" in capsys.readouterr().out
