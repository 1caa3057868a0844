"""The README's worked example, verbatim: a TorchScript (or ONNX) model and a folder of
images, a suite of a few lines, a report."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from harness.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def worked_example() -> str:
    text = README.read_text()
    section = text[text.index("### A worked example"):]
    return re.search(r"```yaml\n(.*?)```", section, re.S).group(1)


def test_the_example_is_ten_lines_or_fewer():
    lines = [line for line in worked_example().splitlines() if line.strip()]
    assert len(lines) <= 10 and lines[0].startswith("name:")


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_the_worked_example_runs(tmp_path, monkeypatch, capsys, fmt):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    classes = ["cat", "dog", "eel"]
    Path("classes.txt").write_text("\n".join(classes) + "\n")
    for k, name in enumerate(classes):
        (Path("photos") / name).mkdir(parents=True)
        for j, (w, h) in enumerate([(300, 260), (240, 320)]):
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(arr).save(Path("photos") / name / f"{j}.jpg")
    torch.manual_seed(0)
    net = nn.Sequential(nn.AvgPool2d(28), nn.Flatten(), nn.Linear(3 * 8 * 8, 3)).eval()
    x = torch.rand(1, 3, 224, 224)
    suite = worked_example()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "torchscript":
            torch.jit.trace(net, x).save("model.ts")
        else:
            pytest.importorskip("onnx")
            torch.onnx.export(net, (x,), "model.onnx", dynamo=False, opset_version=17,
                              input_names=["x"], dynamic_axes={"x": {0: "n"}})
            suite = suite.replace("{use: torchscript, path: model.ts,", "{use: onnx, path: model.onnx,")
            assert "model.onnx" in suite
    Path("my-classifier.yaml").write_text(suite)
    assert main(["validate", "my-classifier.yaml"]) == 0
    assert main(["run", "my-classifier.yaml", "--out", "run", "--cache-dir", "cache"]) == 0
    out = capsys.readouterr().out
    assert "Test clean" in out and "Test lbfgs" in out
    assert (tmp_path / "run" / "report.md").is_file()
    res = pd.read_csv(tmp_path / "run" / "results.csv")
    clean = res[(res.test == "clean") & (res.metric == "clean_error")]
    assert clean.n.tolist() == [6] and clean.model.tolist() == ["mine"]
    assert set(res[res.test == "lbfgs"].metric) >= {"success_rate", "mean_distortion"}
