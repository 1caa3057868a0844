"""Built-in reporters: the terminal's text, report.md, a self-contained HTML page and JUnit
XML, registered like any third-party reporter; and MLflow (extra ``[mlflow]``)."""

from __future__ import annotations

from harness import Reporter, RunView, hookimpl


class Text(Reporter):
    """The tables as the terminal shows them."""

    suffix = "txt"

    def render(self, run: RunView) -> str:
        from harness.report import render_terminal

        return render_terminal(run.summary, run.tables)


class Markdown(Reporter):
    """The tables as Markdown (what report.md holds), with the figures linked."""

    suffix = "md"

    def render(self, run: RunView) -> str:
        from harness.report import render_markdown

        return render_markdown(run.summary, run.tables)


class Html(Reporter):
    """One self-contained HTML page: tables, gate verdicts, figures embedded as data URIs."""

    suffix = "html"

    def render(self, run: RunView) -> str:
        from harness.report.html import render_html

        return render_html(run.summary, run.tables, run.folder)


class JUnit(Reporter):
    """JUnit XML: a testcase per test x model and per gate (what CI systems display)."""

    suffix = "xml"

    def render(self, run: RunView) -> str:
        from harness.report.junit import render_junit

        return render_junit(run.summary)


@hookimpl
def register_reporters(register):
    from .mlflow_reporter import MLflow

    register("text", Text)
    register("markdown", Markdown)
    register("html", Html)
    register("junit", JUnit)
    register("mlflow", MLflow)
