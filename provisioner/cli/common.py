"""What every command shares: the context object and shared option decorators."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click
from rich.console import Console

from provisioner.handle import Gpuctl

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



def sync_slurm_and_report(ctx: Ctx, names: list[str]) -> None:
    """After a state change: bring Slurm in line for ``names`` (when Slurm sync is on)
    and say what changed there, or why it could not."""
    from provisioner.slurm.sync import sync_slurm  # noqa: PLC0415 (only when used)

    result = sync_slurm(ctx.gc, names)
    for line in result.lines() if result else []:
        ctx.err.print(line, markup=False, highlight=False)


def sync_pools_and_report(ctx: Ctx) -> None:
    """After a pool change: Slurm's QOS and pool partitions follow (when sync is on)."""
    from provisioner.slurm.client import SlurmError  # noqa: PLC0415 (only when used)
    from provisioner.slurm.pools import sync_pools  # noqa: PLC0415

    try:
        done = sync_pools(ctx.gc)
    except SlurmError as exc:
        ctx.err.print(f"slurm: pools not updated ({exc}); re-run the pool command",
                      markup=False, highlight=False)
        return
    for line in done or []:
        ctx.err.print(f"slurm: {line}", markup=False, highlight=False)
