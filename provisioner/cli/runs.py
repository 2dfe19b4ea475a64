"""``gpuctl runs`` and ``gpuctl skus``."""

from __future__ import annotations

import click

from provisioner.catalogue import require_sku
from provisioner.cli.common import (
    Ctx,
    complete_skus,
    json_option,
    pass_ctx,
)
from provisioner.runs import RunStatus, list_runs, recover_abandoned, show_run
from provisioner.ui.style import print_json
from provisioner.ui.tables import recovered_lines, run_detail, runs_table, sku_detail, skus_table


@click.group()
def runs() -> None:
    """Runs of every kind (scan, provision, burn-in, hand-off) and crash recovery."""


@runs.command("list")
@click.option("--kind", type=click.Choice(["scan", "provision", "burnin", "handoff", "monitor"]))
@click.option("--status", type=click.Choice([s.value for s in RunStatus]))
@click.option("--limit", type=click.IntRange(1, 10000), default=30, show_default=True)
@json_option
@pass_ctx
def runs_list(ctx: Ctx, kind: str | None, status: str | None, limit: int,
              as_json: bool) -> None:
    """The newest runs: status, actor, control host and duration.

    Example: gpuctl runs list --status abandoned
    """
    views = list_runs(ctx.gc, kind=kind, status=status, limit=limit)
    if as_json:
        print_json(ctx.console, [v.to_dict() for v in views])
    else:
        ctx.console.print(runs_table(views))


@runs.command("show")
@click.argument("run_id", type=int)
@json_option
@pass_ctx
def runs_show(ctx: Ctx, run_id: int, as_json: bool) -> None:
    """One run: arguments, outcome, and every state change it caused.

    Example: gpuctl runs show 12
    """
    view, events = show_run(ctx.gc, run_id)
    if as_json:
        print_json(ctx.console, {**view.to_dict(), "events": events})
    else:
        ctx.console.print(run_detail(view, events))


@runs.command("recover")
@json_option
@pass_ctx
def runs_recover(ctx: Ctx, as_json: bool) -> None:
    """Mark runs whose process died as abandoned, release their locks and fail their
    nodes. Every command that acts on nodes does this first; this does only that.

    A run is dead when its pid is gone (same control host) or its heartbeat is older
    than GPUCTL_RUN_LEASE seconds (default 120; any host).
    Example: gpuctl runs recover
    """
    recovered = recover_abandoned(ctx.gc)
    if as_json:
        print_json(ctx.console, [r.__dict__ for r in recovered])
        return
    for line in recovered_lines(recovered):
        ctx.console.print(line, markup=False, highlight=False)


@click.group()
def skus() -> None:
    """The SKU catalogue (inventory/skus/*.yml, and <data dir>/skus/ for site SKUs)."""


@skus.command("list")
@json_option
@pass_ctx
def skus_list(ctx: Ctx, as_json: bool) -> None:
    """Every SKU gpuctl knows.

    Example: gpuctl skus list
    """
    catalogue = ctx.gc.skus()
    if as_json:
        print_json(ctx.console, {n: s.__dict__ for n, s in catalogue.items()})
    else:
        ctx.console.print(skus_table(catalogue))


@skus.command("show")
@click.argument("name", shell_complete=complete_skus)
@json_option
@pass_ctx
def skus_show(ctx: Ctx, name: str, as_json: bool) -> None:
    """Everything about one SKU: scan expectations, pins, burn-in floors, Slurm and
    Kubernetes names, lab hardware.

    Example: gpuctl skus show h200-sxm-8
    """
    sku = require_sku(ctx.gc.skus(), name)
    if as_json:
        print_json(ctx.console, sku.__dict__)
    else:
        ctx.console.print(sku_detail(sku))
