"""JUnit XML for CI systems: one testcase per (test, model) case and one per gate; errored
cases are errors, failed gates are failures."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from . import gate_requirement


def render_junit(summary: dict[str, Any]) -> str:
    suite_name = summary.get("suite", {}).get("name", "harness")
    cases = summary.get("cases", [])
    gates = summary.get("gates", [])
    errors = sum(1 for c in cases if c.get("status") != "ok")
    failures = sum(1 for g in gates if not g.get("passed"))
    skipped = sum(1 for g in gates if g.get("skipped"))
    root = ET.Element("testsuites", name="harness", tests=str(len(cases) + len(gates)),
                      failures=str(failures), errors=str(errors))
    ts = ET.SubElement(root, "testsuite", name=suite_name, tests=str(len(cases) + len(gates)),
                       failures=str(failures), errors=str(errors), skipped=str(skipped),
                       time=f"{float(summary.get('seconds') or 0):.3f}",
                       timestamp=str(summary.get("started", "")))
    props = ET.SubElement(ts, "properties")
    for key in ("seed", "device", "verdict"):
        ET.SubElement(props, "property", name=key, value=str(summary.get(key)))
    for c in cases:
        tc = ET.SubElement(ts, "testcase", classname=f"{suite_name}.{c['test']}",
                           name=c["model"], time=f"{float(c.get('seconds') or 0):.3f}")
        if c.get("status") != "ok":
            err = ET.SubElement(tc, "error", message=c.get("error") or "error",
                                type=c.get("error_kind") or "error")
            err.text = c.get("traceback") or c.get("error") or ""
    for g in gates:
        metric = g["metric"] + (f"[{g['param']}]" if g.get("param") else "")
        name = f"{g['model']} {metric} {gate_requirement(g)}"
        tc = ET.SubElement(ts, "testcase", classname=f"{suite_name}.gates.{g['test']}", name=name,
                           time="0")
        if g.get("skipped"):
            ET.SubElement(tc, "skipped", message=g.get("reason") or "skipped")
        elif not g.get("passed"):
            fail = ET.SubElement(tc, "failure", message=g.get("reason") or "gate failed",
                                 type="gate")
            fail.text = f"value: {g.get('value')}; baseline: {g.get('baseline')}"
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
