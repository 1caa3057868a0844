"""The HTML report: one self-contained file, checked in a real headless browser."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from harness.cli import main

SUITE = """\
name: html-check
data: {use: digits, split: test, limit: 100}
models:
  near: {use: torch, factory: "tiny_models:digits_template", input_shape: [1, 8, 8]}
tests:
  - name: noise
    attack: {use: gaussian-noise, stddev: 0.3}
    metrics: [clean_error, adv_error]
gates:
  - {test: noise, model: near, metric: adv_error, max: 0.01}
"""

BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture
def failing_run(write_suite, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["run", str(write_suite(SUITE)), "--out", str(run_dir), "-q"]) == 1
    figures = run_dir / "figures"
    figures.mkdir(exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.imshow([[0, 1], [1, 0]], cmap="Blues")
    fig.savefig(figures / "check.png")
    plt.close(fig)
    capsys.readouterr()
    return run_dir


def test_html_is_self_contained_with_verdicts_and_figures(failing_run, capsys):
    assert main(["report", str(failing_run), "--format", "html"]) == 0
    page = (failing_run / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert 'class="FAIL"' in page and "FAILED: 1 of 1 gate(s) failed" in page
    assert "data:image/png;base64," in page and "figures/check.png" in page
    # nothing is fetched from elsewhere
    assert not re.search(r'(src|href)="(https?:|//)', page)


def test_html_renders_in_headless_chromium(failing_run, tmp_path, capsys):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("HARNESS_REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed")
        pytest.skip("chromium not installed (apt-get install chromium)")
    main(["report", str(failing_run), "--format", "html"])
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *BROWSER_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                    "--window-size=1000,800", f"--screenshot={shot}",
                    (failing_run / "report.html").as_uri()],
                   capture_output=True, timeout=120, check=False)
    assert shot.is_file() and shot.stat().st_size > 5000
    import matplotlib.image as mpimg
    import numpy as np

    pixels = mpimg.imread(shot)[..., :3]
    # the FAIL verdict is drawn in its red (#ffebe9 background, #a40e26 text)
    red_bg = np.all(np.abs(pixels - np.array([0xff, 0xeb, 0xe9]) / 255) < 0.02, axis=-1)
    assert red_bg.sum() > 200, "no failing verdict visible in the rendered page"
    # and the embedded figure's dark blue shows
    blue = (pixels[..., 2] > 0.35) & (pixels[..., 0] < 0.2) & (pixels[..., 1] < 0.35)
    assert blue.sum() > 100, "the embedded figure is not visible"
