"""The reference runs committed under reports/ (the bundled suites' runs, see
reports/README.md) stay readable by this version of the harness: each folder validates,
its results.csv is what its ledger and chunk records give when summarized again, its
report renders, it compares with itself without a change, and the CI gate's suite still
matches the reference run it uses as its baseline. A change of the run-folder format that
would break them fails here (then write them again, see reports/README.md)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from harness.cli import main
from harness.store import SUMMARY_FORMAT, RunStore

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "reports"
#: the reference runs: folder -> the bundled suite that wrote it
REFERENCES = {
    "quickstart": "suites/quickstart.yaml",
    "paper-table1": "suites/paper-table1.yaml",
    "paper-table5": "suites/paper-table5.yaml",
    "paper-mnist": "suites/paper-mnist.yaml",
    "fashion-mnist": "suites/fashion-mnist.yaml",
}
#: what a reference folder holds, and what it must not (adversarial examples: big)
KEPT = {"summary.json", "results.csv", "suite.yaml", "report.md", "ledger", "chunks", "figures"}
#: folders kept without their per-image ledger and chunk records, for size (see
#: reports/README.md): they render and compare by their aggregates only
LEDGER_LEFT_OUT = {"paper-mnist"}


def present() -> list[str]:
    return [name for name in REFERENCES if (REPORTS / name / "summary.json").is_file()]


@pytest.fixture(params=present() or [pytest.param(None, marks=pytest.mark.skip(
    reason="no reference run under reports/"))])
def ref(request) -> RunStore:
    return RunStore(REPORTS / request.param)


def test_the_reference_runs_are_there():
    # the CI gate's baseline at least; the others as reports/README.md lists them
    assert "quickstart" in present()
    readme = (REPORTS / "README.md").read_text()
    for name in present():
        assert f"reports/{name}/" in readme, f"reports/README.md does not describe {name}"


def test_a_reference_run_validates(ref):
    ref.check()   # the files, the summary's schema, the suite's digest, results vs cases
    summary = ref.read_summary()
    assert summary.format == SUMMARY_FORMAT
    assert summary.exit_code == 0 and summary.verdict.startswith("OK")
    assert not summary.interrupted and summary.shard is None
    assert all(c.status == "ok" for c in summary.cases)
    # it is the run of the bundled suite as it is now (comments aside)
    import yaml

    suite_file = REFERENCES[ref.path.name]
    assert summary.suite.file == suite_file
    assert yaml.safe_load(ref.suite_text()) == yaml.safe_load((ROOT / suite_file).read_text()), (
        f"{suite_file} changed since reports/{ref.path.name}/ was written: run it again "
        "(see reports/README.md)")
    # only what a reader, 'harness report', 'harness compare' and --baseline need
    extra = {p.name for p in ref.path.iterdir()} - KEPT - {".lock"}
    assert not extra, f"unexpected files in {ref.path}: {sorted(extra)}"
    assert not list(ref.path.rglob("*.npz"))
    kept = {(ref.path / sub).is_dir() for sub in (ref.LEDGER, ref.CHUNKS)}
    assert kept == {ref.path.name not in LEDGER_LEFT_OUT}
    for fig in [f for c in summary.cases for f in c.figures] \
            + [f for fs in summary.figures.values() for f in fs]:
        assert ref.file(fig).is_file()


def test_results_are_what_the_ledger_gives(ref):
    """results.csv, computed again from the ledger and the chunk records, as merge does."""
    if ref.path.name in LEDGER_LEFT_OUT:
        pytest.skip(f"reports/{ref.path.name}/ is kept without its ledger")
    from harness.plan import Plan
    from harness.plugins import default_registry
    from harness.runner import RunResult, summarize
    from harness.suite import parse_suite

    summary = ref.read_summary()
    registry = default_registry()
    suite = parse_suite(ref.suite_text(), summary.suite.file, registry)
    plan = Plan(suite, registry, summary.seed).from_summary(summary.plan)
    records = ref.chunk_records()
    result = RunResult(plan, summary.seed, summary.device, summary.started)
    for case in plan.cases:
        done = {plan.cases[o].chunks[k].id: r for (o, k), r in records.items()
                if o == case.order}
        assert len(done) == len(case.chunks), f"{case.key}: chunks missing"
        outcome = summarize(plan, case, ref, done, case.chunks, result)
        assert outcome.status == "ok", outcome.error
    again = result.records
    saved = ref.results().to_dict("records")
    assert len(again) == len(saved)

    def same(a, b) -> bool:
        if a is None or b is None or (isinstance(a, float) and math.isnan(a)):
            return (a is None or math.isnan(a)) and (b is None or math.isnan(b))
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)

    for new, old in zip(again, saved):
        where = (old["test"], old["model"], old["param"], old["metric"])
        assert (new["test"], new["model"], new["param"] or "", new["metric"]) == where
        for column in ("value", "low", "high", "n"):
            assert same(new.get(column), old[column]), (where, column, new.get(column),
                                                        old[column])


def test_the_report_renders(ref, capsys, tmp_path):
    assert main(["report", str(ref.path), "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    suite = ref.suite()
    assert suite.name in out
    for table in suite.tables or []:
        assert table.title in out
    assert main(["report", str(ref.path), "--format", "html", "-o",
                 str(tmp_path / "r.html")]) == 0
    assert "missing figure" not in (tmp_path / "r.html").read_text()


def tables_of(out: str) -> dict[str, list[dict[str, str]]]:
    """The tables 'harness compare' prints (tabulate's simple format: a title line, the
    header, a line of dashes giving the columns' spans, the rows), by title."""
    tables: dict[str, list[dict[str, str]]] = {}
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if i < 2 or not line.startswith("-") or set(line) - {"-", " "}:
            continue
        spans, pos = [], 0
        for dashes in line.split():
            start = line.index(dashes, pos)
            spans.append((start, start + len(dashes)))
            pos = start + len(dashes)
        cut = [(a, b if k + 1 < len(spans) else None) for k, (a, b) in enumerate(spans)]
        header = [lines[i - 1][a:b].strip() for a, b in cut]
        rows = []
        for row in lines[i + 1:]:
            if not row.strip() or row.startswith("  "):   # the end, or the table's notes
                break
            rows.append(dict(zip(header, (row[a:b].strip() for a, b in cut))))
        tables[lines[i - 2]] = rows
    return tables


def test_a_reference_compared_with_itself_shows_no_change(ref, capsys):
    assert main(["compare", str(ref.path), str(ref.path)]) == 0
    tables = tables_of(capsys.readouterr().out)
    metrics = tables.pop(f"A: {ref.path}  vs  B: {ref.path}")
    assert len(metrics) == len(ref.results())
    assert all(r["B - A"] in ("+0", "+0 pts", "-") for r in metrics), \
        [r for r in metrics if r["B - A"] not in ("+0", "+0 pts", "-")]
    # image by image (where the folder keeps its ledger): nothing changed either way
    images = tables.pop("Images that changed outcome (A -> B)", None)
    assert not tables, f"other tables: {list(tables)}"   # e.g. "In one run only"
    if ref.path.name in LEDGER_LEFT_OUT:
        return
    if images is None:   # "(nothing in common)": only when no test writes per-image rows
        assert ref.ledger().empty
        return
    assert images and all(int(r["images"]) > 0 and r["right -> wrong"] == "0"
                          and r["wrong -> right"] == "0" for r in images), images


def test_the_paper_suites_agree_on_the_models_they_share():
    """paper-mnist and paper-table1 train the same six models (the same specs, the same
    seed): their training and test errors must be the same numbers."""
    if not {"paper-mnist", "paper-table1"} <= set(present()):
        pytest.skip("one of the two reference runs is absent")
    key = ["test", "model", "metric", "param"]
    whole = RunStore(REPORTS / "paper-mnist").results().set_index(key)["value"]
    table1 = RunStore(REPORTS / "paper-table1").results()
    table1 = table1[table1["test"].isin(["train-error", "test-error"])].set_index(key)["value"]
    assert len(table1) == 12
    assert (whole.loc[table1.index] == table1).all()


def test_the_ci_gate_suite_matches_its_baseline():
    """suites/ci-gate.yaml runs in .ci/run with --baseline reports/quickstart: its model and
    tests must be the quickstart's, so that its paired gates compare like with like."""
    import yaml

    gate = yaml.safe_load((ROOT / "suites/ci-gate.yaml").read_text())
    base = yaml.safe_load((ROOT / "suites/quickstart.yaml").read_text())
    assert "--baseline reports/quickstart" in (ROOT / ".ci/run").read_text()
    assert gate["seed"] == base["seed"] and gate["data"] == base["data"]
    for mid, spec in gate["models"].items():
        assert base["models"][mid] == spec
    tests = {t["name"]: t for t in base["tests"]}
    for t in gate["tests"]:
        assert tests[t["name"]] == t
    assert any(g.get("paired") for g in gate["gates"])
