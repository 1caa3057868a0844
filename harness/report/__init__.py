"""Reporters: read a run folder, never compute. Tables pivoted like the paper's (models as
rows, metrics as columns), for the terminal and for report.md."""

from __future__ import annotations

import math
from typing import Any

from tabulate import tabulate

from ..reporting import Table
from ..store import RunStore
from ..suite import Suite, metric_specs

__all__ = ["Table", "build_tables", "render_terminal", "render_markdown", "run_view"]

PERCENT_SUFFIXES = ("_error", "_rate", "_accuracy")


def metric_format(metric: str) -> str:
    metric = metric.split("|")[0]
    if metric.endswith(PERCENT_SUFFIXES):
        return "percent"
    if metric == "seconds":
        return "seconds"
    return "number"


class Values(dict):
    """(test, model, metric, param) -> value, with ``n`` beside: the images each value is
    taken over (NaN where not known)."""

    def __init__(self) -> None:
        super().__init__()
        self.n: dict[tuple[str, str, str, str], float] = {}
        #: the 95% interval of each value that has one
        self.interval: dict[tuple[str, str, str, str], tuple[float, float]] = {}

    def cell(self, key: tuple[str, str, str, str], kind: str, interval: bool = False) -> str:
        text = fmt(self.get(key), kind, self.n.get(key))
        if interval and key in self.interval and text not in ("-", "n=0"):
            low, high = self.interval[key]
            text += f" [{fmt_bound(low, kind)}, {fmt_bound(high, kind)}]"
        return text


def fmt_bound(value: float, kind: str) -> str:
    """An interval's end, in the value's units (percent points without the sign)."""
    if kind == "percent":
        pct = 100 * value
        return f"{pct:.0f}" if pct in (0.0, 100.0) else f"{pct:.3g}"
    return fmt(value, kind)


def fmt(value: Any, kind: str, n: Any = None) -> str:
    """A value for a table: "-" where there is none; "n=0" where it is a rate or a mean over
    no images (never "nan")."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        if n is not None and n == 0:
            return "n=0"
        return "-"
    value = float(value)
    if kind == "percent":
        pct = 100 * value
        return f"{pct:.0f}%" if pct in (0.0, 100.0) else f"{pct:.3g}%"
    if kind == "seconds":
        return f"{value:.2f}"
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def _suite_of(store: RunStore) -> Suite:
    return store.suite()


def build_tables(store: RunStore) -> tuple[dict[str, Any], list[Table]]:
    """The summary and every table of a run, from its folder alone."""
    store.check()
    summary = store.summary()
    suite = _suite_of(store)
    df = store.results()
    tables: list[Table] = []

    lookup = Values()
    for rec in df.itertuples(index=False):
        key = (rec.test, rec.model, rec.metric, rec.param or "")
        lookup[key] = rec.value
        lookup.n[key] = rec.n
        if rec.low == rec.low and rec.high == rec.high:   # both present (not NaN)
            lookup.interval[key] = (rec.low, rec.high)

    for table in suite.tables:
        tables.append(_layout_table(suite, table, lookup, df))

    cases = summary.get("cases", [])
    for test in suite.tests:
        sub = df[df["test"] == test.name]
        if test.transfer is not None:
            table = _matrix_table(suite, test, "adv_error", None, True, sub, lookup)
            table.notes += _case_notes(cases, test.name, table)
            table.figures += (summary.get("figures") or {}).get(test.name, [])
            tables.append(table)
            continue
        metrics = [m.use for m in metric_specs(test)] or list(dict.fromkeys(sub["metric"]))
        params = list(dict.fromkeys(p for p in sub["param"].tolist()))
        with_param = any(params)
        keys = [(mid, param) for mid in suite.test_models(test) for param in (params or [""])
                if any(lookup.get((test.name, mid, m, param)) is not None for m in metrics)]
        parts = []  # rows that share no metric with the others get a table of their own
        for group_metrics, group_keys in _metric_groups(test.name, keys, metrics, lookup):
            rows = [[mid] + ([param] if with_param else [])
                    + [lookup.cell((test.name, mid, m, param), metric_format(m), interval=True)
                       + _short(lookup.get((test.name, mid, m, param)), m)
                       for m in group_metrics] for mid, param in group_keys]
            parts.append((["model"] + (["setting"] if with_param else []) + group_metrics, rows))
        headers, rows = parts[0] if parts else (["model"] + metrics, [])
        title = f"Test {test.name}"
        specs = test.attacks or ([test.analysis] if test.analysis is not None else [])
        described = []
        for what in specs:
            params_txt = ", ".join(f"{k}={v}" for k, v in what.params.items())
            described.append(f"{what.use}" + (f" ({params_txt})" if params_txt else ""))
        if described:
            title += ": " + "; ".join(described)
            if len(specs) > 1:
                title += " (and worst-case: per image, the smallest successful perturbation)"
        spec = test.data or suite.data
        images = [c.get("images") or 0 for c in cases if c.get("test") == test.name]
        n = max(images) if images else None
        notes = []
        if spec and (test.analysis is None or n):
            notes.append(f"data: {spec.use} " + ", ".join(f"{k}={v}" for k, v in spec.params.items())
                         + (f"; {int(n)} images" if n else ""))
        table = Table(title, headers, rows, notes)
        table.notes += _case_notes(cases, test.name, table)
        table.figures += (summary.get("figures") or {}).get(test.name, [])
        tables.append(table)
        tables += [Table(f"{title} (continued)", h, r) for h, r in parts[1:]]

    models = summary.get("models") or []
    if models:
        tables.append(Table(
            "Models", ["model", "plugin", "status", "gradients", "load s", "note"],
            [[m["id"], (m.get("spec") or {}).get("use", ""), m.get("status", ""),
              m.get("gradients") or "none", f"{m.get('seconds', 0):.1f}",
              m.get("error") or m.get("note") or ""] for m in models]))

    verdicts = summary.get("gates") or []
    if verdicts:
        tables.append(gates_table(verdicts))

    failed_cases = [c for c in summary.get("cases", []) if c.get("status") != "ok"]
    if failed_cases:
        tables.append(Table("Errors", ["test", "model", "error"],
                            [[c["test"], c["model"], c.get("error") or ""] for c in failed_cases]))
    return summary, tables


def _short(value: Any, metric: str) -> str:
    """A mark beside a success rate below 100%: the notes under the table say why."""
    if metric == "success_rate" and value is not None and value == value and value < 1:
        return " (*)"
    return ""


def _values(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(fmt(x, "number") for x in value)
    return fmt(value, "number")


def gate_requirement(v: dict[str, Any]) -> str:
    parts = []
    what = {"lower": "lower 95% bound ", "upper": "upper 95% bound "}.get(v.get("bound") or "",
                                                                        "")
    if v.get("min") is not None:
        parts.append(f"{what}>= {v['min']:g}")
    if v.get("max") is not None:
        parts.append(f"{what}<= {v['max']:g}")
    if v.get("max_drop") is not None:
        amount = (f"{100 * v['max_drop']:g}%" if v.get("drop", "relative") == "relative"
                  else f"{v['max_drop']:g}")
        test = (f", significant at {v.get('alpha') or 0.05:g} (paired)" if v.get("paired")
                else "")
        parts.append(f"drop <= {amount} vs baseline{test}")
    return " and ".join(parts)


def gate_status(v: dict[str, Any]) -> str:
    if v.get("skipped"):
        return "SKIP"
    return "PASS" if v["passed"] else "FAIL"


def gates_table(verdicts: list[dict[str, Any]]) -> Table:
    with_baseline = any(v.get("baseline") is not None for v in verdicts)
    rows = []
    for v in verdicts:
        metric = v["metric"] + (f" [{v['param']}]" if v.get("param") else "")
        row = [v["test"], v["model"], metric, gate_requirement(v), _values(v.get("value"))]
        if with_baseline:
            row.append(_values(v.get("baseline")))
        rows.append(row + [gate_status(v), v.get("reason", "")])
    headers = ["test", "model", "metric", "required", "value"]
    headers += ["baseline"] if with_baseline else []
    return Table("Gates", headers + ["verdict", "why"], rows)


def _metric_groups(test: str, keys: list[tuple[str, str]], metrics: list[str],
                   lookup: dict) -> list[tuple[list[str], list[tuple[str, str]]]]:
    """Split rows into groups that share no metric (per-row numbers versus a summary), each
    with the metrics its rows have, in first-appearance order."""
    groups: list[tuple[set[str], list[tuple[str, str]]]] = []
    for key in keys:
        have = {m for m in metrics if lookup.get((test, key[0], m, key[1])) is not None}
        joined = [g for g in groups if g[0] & have]
        merged_metrics, merged_keys = set(have), []
        for g in joined:
            merged_metrics |= g[0]
            merged_keys += g[1]
            groups.remove(g)
        groups.append((merged_metrics, merged_keys + [key]))
    groups.sort(key=lambda g: keys.index(g[1][0]))
    return [([m for m in metrics if m in ms], sorted(ks, key=keys.index)) for ms, ks in groups]


def _case_notes(cases: list[dict[str, Any]], test: str, table: Table) -> list[str]:
    """The notes of a test's cases (once each); their figures go on ``table``."""
    notes: list[str] = []
    for case in cases:
        if case.get("test") == test:
            notes += [n for n in case.get("notes") or [] if n not in notes and n not in table.notes]
            table.figures += case.get("figures") or []
    return notes


def _matrix_table(suite: Suite, test: Any, metric: str, models: list[str] | None,
                  distortion: bool, sub: Any, lookup: dict, title: str | None = None,
                  rows: list[str] | None = None, labels: dict[str, str] | None = None,
                  reference: Any = None) -> Table:
    """A transfer test as the paper's Table 2: a row per origin of the examples (made for a
    model, amplified, baseline), a column per model fed, then the average distortion."""
    columns = models or test.targets(list(suite.models))
    order = rows or list(dict.fromkeys(p for p in sub["param"].tolist() if p))
    headers = ["made for / fed to"] + [(labels or {}).get(m, m) for m in columns]
    if distortion:
        headers.append("av. distortion")
    kinds = [metric_format(metric)] * len(columns) + (["number"] if distortion else [])
    if reference is not None:
        headers = [headers[0]] + [h for c in headers[1:] for h in (c, "paper")]
    out = []
    for param in order:
        keys = [(test.name, m, metric, param) for m in columns]
        if distortion:
            made_for = param.split(",")[0].partition("made_for=")[2]
            owner = made_for or (columns[0] if columns else "")
            keys.append((test.name, owner, "mean_distortion", param))
        values = [lookup.get(key) for key in keys]
        cells = [fmt(lookup.get(key), k, getattr(lookup, "n", {}).get(key))
                 for key, k in zip(keys, kinds)]
        if reference is not None:
            ref_vals = reference.rows.get(param) or []
            refs = [fmt(ref_vals[k] if k < len(ref_vals) else None, kinds[k])
                    for k in range(len(values))]
            cells = [c for pair in zip(cells, refs) for c in pair]
        out.append([(labels or {}).get(param, param)] + cells)
    spec = test.attack
    params_txt = ", ".join(f"{k}={v}" for k, v in spec.params.items())
    notes = [f"{metric} of the column model on the examples of each row; examples made with "
             f"{spec.use}" + (f" ({params_txt})" if params_txt else "")
             + "; av. distortion: mean of sqrt(sum r^2 / n) over the images where the attack "
               "reached its goal on its source model (baseline rows: over all images)"]
    if reference is not None:
        notes.append(f"paper: {reference.source}")
    else:
        notes += transfer_findings(test.name, columns, order, metric, lookup)
    return Table(title or f"Test {test.name}: transfer ({metric})", headers, out, notes)


def transfer_findings(test: str, columns: list[str], rows: list[str], metric: str,
                      lookup: dict) -> list[str]:
    """Sentences comparing, from the results alone, how examples made for other models and
    noise of about the same size fare off the diagonal, and what amplification changes."""

    def off_diagonal(kind: str) -> tuple[list[float], list[float]]:
        errors, dists = [], []
        for param in rows:
            source = param.split(",")[0].partition("made_for=")[2]
            amplified = "amplified=" in param
            if not source or amplified != (kind == "amplified"):
                continue
            dists.append(lookup.get((test, source, "mean_distortion", param), math.nan))
            errors += [v for m in columns if m != source
                       and (v := lookup.get((test, m, metric, param))) is not None]
        return errors, dists

    def mean(values: list[float]) -> float:
        values = [v for v in values if v == v]
        return sum(values) / len(values) if values else math.nan

    out = []
    errors, dists = off_diagonal("plain")
    if errors:
        d = mean(dists)
        line = (f"finding: examples made for another model (av. distortion {fmt(d, 'number')}) "
                f"give a mean "
                f"{metric} of {fmt(mean(errors), 'percent')} (from {fmt(min(errors), 'percent')}"
                f" to {fmt(max(errors), 'percent')}) on the models they were not made for")
        baselines = [p for p in rows if "made_for=" not in p]
        if baselines:
            def base_dist(p: str) -> float:
                return lookup.get((test, columns[0], "mean_distortion", p), math.nan)
            closest = min(baselines, key=lambda p: abs(base_dist(p) - d))
            noise = mean([v for m in columns if (v := lookup.get((test, m, metric, closest)))
                          is not None])
            line += (f"; {closest} (distortion {fmt(base_dist(closest), 'number')}) gives "
                     f"{fmt(noise, 'percent')}")
        out.append(line)
    amp_errors, amp_dists = off_diagonal("amplified")
    if amp_errors and errors:
        out.append(f"finding: amplified to distortion {fmt(mean(amp_dists), 'number')}, the same "
                   f"perturbations give {fmt(mean(amp_errors), 'percent')} on the other models "
                   f"(unamplified: {fmt(mean(errors), 'percent')})")
    return out


def _layout_table(suite: Suite, table: Any, lookup: dict, df: Any = None) -> Table:
    ref = table.reference
    if table.matrix is not None:
        m = table.matrix
        test = next(t for t in suite.tests if t.name == m.test)
        sub = df[df["test"] == m.test] if df is not None else None
        out = _matrix_table(suite, test, m.metric, m.models, m.distortion, sub, lookup,
                            table.title, table.rows, table.labels, ref)
        if table.notes:
            out.notes.append(table.notes.strip())
        return out
    headers = ["model" if table.rows_are_models else "setting"]
    for col in table.columns:
        headers.append(col.header or col.metric)
        if ref:
            headers.append("paper")
    rows = []
    if table.rows_are_models:
        row_ids = table.rows or list(suite.models)
    else:
        tests = {c.test for c in table.columns}
        row_ids = table.rows or list(dict.fromkeys(
            k[3] for k in lookup if k[0] in tests and k[1] == table.model and k[3]))
    for rid in row_ids:
        label = (table.labels or {}).get(rid, rid)
        row = [label]
        ref_vals = (ref.rows.get(rid) if ref else None) or []
        for k, col in enumerate(table.columns):
            kind = col.format or metric_format(col.metric)
            param = (col.param or "").replace("{model}", rid)
            value, key = None, None
            for metric in col.metric.split("|"):  # "a|b": the first one the row has
                key = ((col.test, rid, metric, param) if table.rows_are_models
                       else (col.test, table.model, metric, rid))
                if (value := lookup.get(key)) is not None:
                    break
            row.append(fmt(value, kind, getattr(lookup, "n", {}).get(key)))
            if ref:
                row.append(fmt(ref_vals[k] if k < len(ref_vals) else None, kind))
        rows.append(row)
    notes = []
    if ref:
        notes.append(f"paper: {ref.source}")
    if table.notes:
        notes.append(table.notes.strip())
    return Table(table.title, headers, rows, notes)


def header_lines(summary: dict[str, Any]) -> list[str]:
    suite = summary.get("suite", {})
    lines = [f"suite {suite.get('name', '?')} ({suite.get('file', '?')}), seed {summary.get('seed')}, "
             f"device {summary.get('device')}, {summary.get('seconds') or 0:.1f} s"]
    if summary.get("shard"):
        k, n = summary["shard"]
        lines.append(f"SHARD {k}/{n}: the tables hold this shard's cases; combine the {n} "
                     "run folders with 'harness merge'")
    if summary.get("merged"):
        lines.append(f"merged from {len(summary['merged'])} shard(s); the time is the longest "
                     "shard's")
    if summary.get("interrupted"):
        lines.append("INTERRUPTED: the tables hold only the cases that finished")
    if (summary.get("format") or 1) >= 3:
        lines.append("[low, high] after a value: its 95% interval (Wilson for rates, a seeded "
                     "bootstrap for means); per-image records: the folder's ledger/ "
                     "(pandas.read_parquet)")
    return lines


def render_terminal(summary: dict[str, Any], tables: list[Table]) -> str:
    out = header_lines(summary)
    for t in tables:
        out += ["", t.title]
        out.append(tabulate(t.rows, headers=t.headers, tablefmt="simple", disable_numparse=True)
                   if t.rows else "(no results)")
        out += [f"  {n}" for n in t.notes]
        out += [f"  figure: {f}" for f in t.figures]
    verdict = summary.get("verdict")
    if verdict:
        out += ["", verdict]
    return "\n".join(out) + "\n"


def render_markdown(summary: dict[str, Any], tables: list[Table]) -> str:
    suite = summary.get("suite", {})
    out = [f"# Run of suite `{suite.get('name', '?')}`", ""]
    out += [f"- {line}" for line in header_lines(summary)]
    versions = summary.get("versions") or {}
    if versions:
        out.append("- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if summary.get("verdict"):
        out.append(f"- verdict: **{summary['verdict']}**")
    for t in tables:
        out += ["", f"## {t.title}", ""]
        out.append(tabulate(t.rows, headers=t.headers, tablefmt="github", disable_numparse=True)
                   if t.rows else "(no results)")
        if t.notes:
            out.append("")
            out += [f"{n}  " for n in t.notes]
        for fig in t.figures:
            out += ["", f"![{fig}]({fig})"]
    return "\n".join(out) + "\n"


def run_view(store: RunStore) -> "Any":
    """The run folder as reporters see it (:class:`harness.RunView`)."""
    from ..reporting import RunView

    summary, tables = build_tables(store)
    return RunView(folder=store.path, summary=summary, tables=tables,
                   results=store.results, ledger=store.ledger, file=store.file)
