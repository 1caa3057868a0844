"""The analysis kind of test: records, figures and notes reach the run folder and report."""

from __future__ import annotations

import io
import types

import pytest

from harness import Analysis, AnalysisResult, hookimpl
from harness.errors import SuiteError
from harness.testing import make_registry, run_suite_text


class WeightNorms(Analysis):
    """Frobenius norm of every Linear layer's weight, and a bar chart of them."""

    needs_data = False
    needs_module = True

    def __init__(self, *, scale: float = 1.0):
        self.scale = scale

    def run(self, model, data, ctx):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import torch

        res = AnalysisResult(notes=["norms of the weight matrices"])
        norms = {}
        for name, mod in model.module.named_modules():
            if isinstance(mod, torch.nn.Linear):
                norms[name] = self.scale * float(mod.weight.norm())
                res.add("weight_norm", norms[name], f"layer={name}")
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.bar(list(norms), list(norms.values()))
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        res.figures["norms.png"] = buf.getvalue()
        return res


PLUGIN = types.SimpleNamespace(register_analyses=hookimpl(lambda register: register("norms", WeightNorms)))

SUITE = """\
name: analysed
models:
  near: {use: torch, factory: "tiny_models:digits_template", input_shape: [1, 8, 8]}
tests:
  - name: norms
    analysis: {use: norms, scale: 2}
gates:
  - {test: norms, model: near, metric: weight_norm, param: layer=1, max: 1000}
"""


def test_analysis_records_figures_and_notes(tmp_path):
    code, results = run_suite_text(SUITE, tmp_path, make_registry(PLUGIN))
    assert code == 0
    row = results[(results.metric == "weight_norm")]
    assert list(row.param) == ["layer=1"] and float(row.value.iloc[0]) > 0
    assert (tmp_path / "run" / "figures" / "norms" / "near" / "norms.png").is_file()
    from harness.report import build_tables, render_markdown
    from harness.store import RunStore

    summary, tables = build_tables(RunStore(tmp_path / "run"))
    md = render_markdown(summary, tables)
    assert "norms of the weight matrices" in md
    assert "![figures/norms/near/norms.png](figures/norms/near/norms.png)" in md
    assert "| near    | layer=1" in md


def test_analysis_and_attack_are_exclusive(write_suite):
    from harness.suite import load_suite

    bad = SUITE.replace("analysis: {use: norms, scale: 2}",
                        "analysis: {use: norms}\n    attack: gaussian-noise")
    with pytest.raises(SuiteError, match="an attack or an analysis, not both"):
        load_suite(write_suite(bad), make_registry(PLUGIN))
    with pytest.raises(SuiteError, match="unknown parameter 'scal'"):
        load_suite(write_suite(SUITE.replace("scale: 2", "scal: 2")), make_registry(PLUGIN))
