"""One self-contained HTML file per run: the tables, the gate verdicts and the run's figures
(PNG files under figures/, embedded as data URIs), with no external resources."""

from __future__ import annotations

import base64
import html
import os
import re
from pathlib import Path
from typing import Any

from ..store import RunStore
from . import Table, header_lines

_NUMERIC = re.compile(r"^[-+]?(\d|\.\d)|^-$")

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 72rem; color: #1b1f24; padding: 0 1rem; }
h1 { font-size: 1.5rem; margin-bottom: .25rem; }
h2 { font-size: 1.1rem; margin-top: 2rem; border-bottom: 1px solid #d0d7de; padding-bottom: .25rem; }
.meta { color: #57606a; font-size: .9rem; }
.verdict { display: inline-block; padding: .35rem .8rem; border-radius: .4rem; font-weight: 600;
           margin: .75rem 0; }
.ok { background: #dafbe1; color: #116329; border: 1px solid #4ac26b; }
.fail { background: #ffebe9; color: #a40e26; border: 1px solid #ff8182; }
.skip { background: #fff8c5; color: #7d4e00; border: 1px solid #d4a72c; }
table { border-collapse: collapse; margin: .5rem 0; font-size: .9rem; }
th, td { border: 1px solid #d0d7de; padding: .3rem .6rem; text-align: right; }
th { background: #f6f8fa; }
td:first-child, th:first-child, td.text { text-align: left; }
td.PASS { background: #dafbe1; color: #116329; font-weight: 600; }
td.FAIL { background: #ffebe9; color: #a40e26; font-weight: 600; }
td.SKIP { background: #fff8c5; color: #7d4e00; }
.notes { color: #57606a; font-size: .85rem; margin: .2rem 0 0; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; border: 1px solid #d0d7de; }
figcaption { color: #57606a; font-size: .85rem; }
"""


def _figure_html(store: RunStore, rel: str) -> str:
    """A figure of the run folder as a data URI; its path must stay inside the folder (a
    path or a link leading out of it is refused)."""
    path = store.file(rel, must_exist=False)
    if not path.is_file():
        return f'<p class="notes">missing figure: {html.escape(rel)}</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    name = html.escape(rel)
    return (f'<figure><img alt="{name}" src="data:image/png;base64,{data}">'
            f"<figcaption>{name}</figcaption></figure>")


def _table_html(t: Table, store: RunStore) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.headers)
    body = []
    for row in t.rows:
        cells = []
        for cell in row:
            if cell in ("PASS", "FAIL", "SKIP"):
                cls = f' class="{cell}"'
            elif not _NUMERIC.match(str(cell)):
                cls = ' class="text"'
            else:
                cls = ""
            cells.append(f"<td{cls}>{html.escape(str(cell))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    notes = "".join(f'<p class="notes">{html.escape(n)}</p>' for n in t.notes)
    notes += "".join(_figure_html(store, f) for f in t.figures)
    table = (f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
             if t.rows else "<p>(no results)</p>")
    return f"<h2>{html.escape(t.title)}</h2>{table}{notes}"


def _figures_html(store: RunStore, shown: set[str]) -> str:
    """The run's figures that no table showed (linked folders are not entered)."""
    folder = store.file("figures", must_exist=False)
    figs = []
    if folder.is_dir():
        for where, _, files in os.walk(folder):  # does not follow links to folders
            figs += [Path(where, f).relative_to(store.path).as_posix() for f in files
                     if f.endswith(".png")]
    rest = [f for f in sorted(figs) if f not in shown]
    if not rest:
        return ""
    return "<h2>Figures</h2>" + "".join(_figure_html(store, f) for f in rest)


def render_html(summary: dict[str, Any], tables: list[Table], run_dir: Path | RunStore) -> str:
    suite = summary.get("suite", {})
    title = f"Run of suite {suite.get('name', '?')}"
    verdict = summary.get("verdict") or ""
    cls = "ok" if verdict.startswith("OK") else "fail"
    if "skipped" in verdict and cls == "ok":
        cls = "skip"
    store = run_dir if isinstance(run_dir, RunStore) else RunStore(run_dir)
    meta = "".join(f"<div>{html.escape(line)}</div>" for line in header_lines(summary))
    versions = summary.get("versions") or {}
    if versions:
        meta += "<div>" + html.escape(", ".join(f"{k} {v}" for k, v in versions.items())) + "</div>"
    body = "".join(_table_html(t, store) for t in tables)
    shown = {f for t in tables for f in t.figures}
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><div class=\"meta\">{meta}</div>"
        f"<div class=\"verdict {cls}\">{html.escape(verdict)}</div>"
        f"{body}{_figures_html(store, shown)}</body></html>\n"
    )
