"""``gpuctl scan``."""

from __future__ import annotations

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from provisioner.cli.common import (
    Ctx,
    complete_nodes,
    json_option,
    pass_ctx,
)
from provisioner.errors import NodesFailedError
from provisioner.scan.run import NodeScanResult, scan_nodes
from provisioner.ui.render import print_json, scan_line, scan_summary


@click.command()
@click.argument("nodes", nargs=-1, shell_complete=complete_nodes)
@click.option("--all", "all_nodes", is_flag=True, help="Every node that is not retired.")
@click.option("--parallel", default=32, show_default=True, help="Nodes probed at once.")
@click.option("--accept-new", is_flag=True,
              help="Record host keys of nodes never seen before (changed keys are still "
                   "refused).")
@click.option("--connect-timeout", default=10.0, show_default=True, help="Seconds.")
@click.option("--timeout", "command_timeout", default=120.0, show_default=True,
              help="Seconds for the probe to finish on a node.")
@json_option
@pass_ctx
def scan(ctx: Ctx, nodes: tuple[str, ...], all_nodes: bool, parallel: int, accept_new: bool,
         connect_timeout: float, command_timeout: float, as_json: bool) -> None:
    """Collect hardware facts over SSH, store a snapshot per node, flag faults and drift.

    Exit status 3 when any node was unreachable, refused or returned unusable output.

    Example: gpuctl scan --all --accept-new
    """
    progress = Progress(TextColumn("scanning"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=ctx.err, transient=True,
                        disable=as_json)
    task = progress.add_task("scan", total=None)

    def on_result(result: NodeScanResult) -> None:
        if not as_json and result.outcome != "ok":
            progress.console.print(scan_line(result))
        progress.advance(task)

    with progress:
        summary = scan_nodes(ctx.gc, list(nodes), all_nodes=all_nodes, parallel=parallel,
                             accept_new=accept_new, connect_timeout=connect_timeout,
                             command_timeout=command_timeout,
                             on_start=lambda total: progress.update(task, total=total),
                             on_result=on_result)
    if as_json:
        print_json(ctx.console, summary.to_dict())
    else:
        ctx.console.print(scan_summary(summary))
    if summary.failed:
        raise NodesFailedError(f"{len(summary.failed)} of {len(summary.results)} nodes could "
                               "not be scanned")
