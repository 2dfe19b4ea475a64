"""``gpuctl burnin``."""

from __future__ import annotations

import click
from rich.markup import escape
from rich.table import Table

from provisioner.burnin.levels import LEVELS
from provisioner.burnin.run import CERTIFICATE_DAYS, NodeBurnin, burnin_nodes
from provisioner.cli.common import (
    Ctx,
    complete_nodes,
    json_option,
    pass_ctx,
    wait_jobs_option,
)
from provisioner.errors import NodesFailedError
from provisioner.ui.render import print_json, styled

VERDICT_STYLE = {"pass": "green", "fail": "bold red", "error": "red"}


def _first_failures(failures: list[str], shown: int = 3) -> str:
    """The first few failures, and how many more (`gpuctl report` lists them all)."""
    more = len(failures) - shown
    return "; ".join(failures[:shown]) + (f"; (+{more} more: gpuctl report)" if more > 0
                                          else "")


@click.command()
@click.argument("nodes", nargs=-1, shell_complete=complete_nodes)
@click.option("--all", "all_nodes", is_flag=True, help="Every provisioned or certified node.")
@click.option("--level", type=click.Choice(list(LEVELS)), default="quick",
              show_default=True, help="Like DCGM's diag levels: quick ~1 min, standard, extended.")
@click.option("--duration", "seconds", type=float, help="Seconds per test (overrides the level).")
@click.option("--profile", help="Threshold profile (default: the node's SKU).")
@click.option("--parallel", default=8, show_default=True, help="Nodes burned in at once.")
@click.option("--with-dcgm", is_flag=True,
              help="Also run `dcgmi diag -r 1|2|3 --json` (by level) and judge its results.")
@click.option("--multinode", is_flag=True,
              help="Then all-reduce across every node that passed (torchrun, c10d rendezvous "
                   "at the first node).")
@click.option("--seed", type=click.IntRange(0, 2**31 - 1),
              help="Seed of the GEMM inputs and memory patterns (default: a new one per run, "
                   "recorded in the run, so a failure can be replayed with it).")
@click.option("--valid-days", type=click.IntRange(1, 3650), default=CERTIFICATE_DAYS,
              show_default=True, help="Days a certificate stays valid.")
@wait_jobs_option
@json_option
@pass_ctx
def burnin(ctx: Ctx, nodes: tuple[str, ...], all_nodes: bool, level: str,
           seconds: float | None, profile: str | None, parallel: int, with_dcgm: bool,
           multinode: bool, seed: int | None, valid_days: int, wait_jobs: float,
           as_json: bool) -> None:
    """Stress-test nodes (GEMM with corruption checks, memory, bandwidth, collectives)
    and certify or quarantine each one against its SKU's thresholds.

    Exit status 3 when a node failed.

    Example: gpuctl burnin --all --level quick
    """
    def on_result(result: NodeBurnin) -> None:
        if not as_json:
            ctx.err.print(f"{styled(result.verdict, VERDICT_STYLE.get(result.verdict))} "
                          f"{escape(result.name)}")

    summary = burnin_nodes(ctx.gc, list(nodes), all_nodes=all_nodes, level=level,
                           seconds=seconds, profile=profile, parallel=parallel,
                           with_dcgm=with_dcgm, multinode=multinode,
                           certificate_days=valid_days, seed=seed,
                           on_result=on_result, wait_jobs=wait_jobs)
    if as_json:
        print_json(ctx.console, summary.to_dict())
    else:
        table = Table(title=f"burn-in run {summary.run_id} ({summary.level})",
                      title_justify="left")
        for col in ("NODE", "VERDICT", "PROFILE", "TESTS", "FAILURES"):
            table.add_column(col, overflow="fold")
        for n in summary.nodes:
            table.add_row(n.name, styled(n.verdict, VERDICT_STYLE.get(n.verdict)), n.profile,
                          str(len(n.results)), escape(_first_failures(n.failures)))
        ctx.console.print(table)
    if summary.failed:
        raise NodesFailedError(f"{len(summary.failed)} of {len(summary.nodes)} nodes failed "
                               f"burn-in (run {summary.run_id})")
