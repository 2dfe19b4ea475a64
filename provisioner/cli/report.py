"""``gpuctl report``."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from provisioner.cli.common import Ctx, pass_ctx
from provisioner.fsutil import write_atomically
from provisioner.report.data import report_data
from provisioner.ui.report import render_json, render_junit, render_markdown, render_term
from provisioner.ui.report_html import render_html

FORMATS = ("term", "md", "html", "json", "junit")


@click.command()
@click.argument("run_id", metavar="[RUN]", required=False, type=int)
@click.option("--node", help="Only this node (default run: its latest burn-in).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="term", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to this file (html default: gpuctl-burnin-run<RUN>.html).")
@click.option("--all-tests", is_flag=True, help="term: list passing tests too.")
@click.option("--force", is_flag=True, help="Replace an existing output file (kept as .bak).")
@pass_ctx
def report(ctx: Ctx, run_id: int | None, node: str | None, fmt: str, output: Path | None,
           all_tests: bool, force: bool) -> None:
    """Report a burn-in run (default: the latest): per node and test, value, threshold,
    verdict and reason; HTML adds plots (throughput vs thresholds, temperature and power
    over time, the P2P matrix).

    Examples: gpuctl report --format html; gpuctl report 12 --format junit -o burnin.xml
    """
    doc = report_data(ctx.gc, run_id, node)
    if fmt == "term" and output is None:
        render_term(doc, ctx.console, full=all_tests)
        return
    text = {"term": lambda: _term_text(doc, all_tests), "md": lambda: render_markdown(doc),
            "html": lambda: render_html(doc), "json": lambda: render_json(doc),
            "junit": lambda: render_junit(doc)}[fmt]()
    if output is None and fmt == "html":
        output = Path(f"gpuctl-burnin-run{doc['run']['id']}.html")
    if output is None:
        click.echo(text, nl=False)
        return
    write_atomically(output, text, force=force)
    ctx.err.print(f"wrote {fmt} report of run {doc['run']['id']} to {output}", markup=False,
                  highlight=False)


def _term_text(doc: dict[str, Any], full: bool) -> str:
    """The terminal report as plain text, for ``--format term -o FILE``."""
    console = Console(file=io.StringIO(), width=120)
    render_term(doc, console, full=full)
    return console.file.getvalue()  # type: ignore[attr-defined]
