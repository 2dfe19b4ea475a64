"""What every command shares: the context object and shared option decorators."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click
from click.shell_completion import CompletionItem
from rich.console import Console

from provisioner.events import merge_reports
from provisioner.handle import Gpuctl
from provisioner.paths import Paths

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Ctx:
    gc: Gpuctl
    console: Console
    err: Console


pass_ctx = click.make_pass_decorator(Ctx)


def json_option(func: F) -> F:
    """``--json``: print the result as JSON instead of a table."""
    return click.option("--json", "as_json", is_flag=True,
                        help="Print machine-readable JSON.")(func)


def wait_jobs_option(func: F) -> F:
    """``--wait SECONDS`` of a run that drains its nodes: how long the jobs there may
    take to end (``RunScope``'s ``wait``)."""
    return click.option("--wait", "wait_jobs", type=click.FloatRange(0, 7 * 86400),
                        default=0, show_default=True, metavar="SECONDS",
                        help="With Slurm: how long to wait for jobs on the drained nodes "
                             "to end before the run fails without touching them.")(func)


def report_listeners(ctx: Ctx) -> None:
    """What the listeners (schedulers) did with the command's changes, on stderr: run
    when the command ends, however it ends."""
    for report in merge_reports(ctx.gc.take_reports()).values():
        for line in report.lines():
            ctx.err.print(line, markup=False, highlight=False)


def _completer(kind: str) -> Callable[[click.Context, click.Parameter, str],
                                      list[CompletionItem]]:
    def complete(ctx: click.Context, param: click.Parameter,
                 incomplete: str) -> list[CompletionItem]:
        from provisioner import completion  # noqa: PLC0415  (only when completing)

        # The root's --db (or GPUCTL_DB) picks the database, as for the command itself.
        paths = Paths.from_env(ctx.find_root().params.get("db"))
        names = getattr(completion, f"{kind}_names")(paths, incomplete)
        return [CompletionItem(name) for name in names]

    return complete


# shell_complete= for arguments and options that name nodes, pools or SKUs.
complete_nodes = _completer("node")
complete_pools = _completer("pool")
complete_skus = _completer("sku")
