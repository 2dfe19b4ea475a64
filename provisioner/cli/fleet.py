"""``gpuctl status``, the lifecycle operations, ``gpuctl pool`` and ``gpuctl handoff``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from provisioner.cli.common import (
    Ctx,
    complete_nodes,
    complete_pools,
    complete_skus,
    json_option,
    pass_ctx,
)
from provisioner.errors import NodesFailedError
from provisioner.fleet import handoff as ho
from provisioner.fleet import ops, pools
from provisioner.fleet.status import fleet_status
from provisioner.fsutil import may_replace, write_atomically
from provisioner.targets import targets, views
from provisioner.ui.fleet import pools_table, render_applied, status_view
from provisioner.ui.style import print_json


@click.command()
@click.option("--watch", is_flag=True, help="Refresh until q (or Ctrl-C) is pressed.")
@click.option("--interval", type=click.FloatRange(0.2, 3600), default=2.0, show_default=True,
              help="Seconds between refreshes with --watch.")
@click.option("--expiring-days", type=click.IntRange(1, 365), default=14, show_default=True,
              help="Flag certificates expiring within this many days.")
@json_option
@pass_ctx
def status(ctx: Ctx, watch: bool, interval: float, expiring_days: int, as_json: bool) -> None:
    """The fleet at a glance: nodes per state, GPUs per SKU, certification, nodes needing
    attention, the last run of each kind, pools, and each scheduler's view of the nodes.

    Example: gpuctl status --watch
    """
    def snapshot() -> dict[str, Any]:
        return {**fleet_status(ctx.gc, expiring_days=expiring_days), **views(ctx.gc)}

    if as_json:
        print_json(ctx.console, snapshot())
        return
    if not watch:
        ctx.console.print(status_view(snapshot(), width=ctx.console.width))
        return
    from provisioner.inventory.registry import show_node  # noqa: PLC0415
    from provisioner.ui.watch import WatchView  # noqa: PLC0415
    from provisioner.ui.watch import watch as run_watch

    run_watch(ctx.console, WatchView(ctx.console, snapshot,
                                     lambda name: show_node(ctx.gc, name, events=8),
                                     interval), interval)


def _lifecycle(op: str, help_text: str, reason_required: bool) -> click.Command:
    @click.command(name=op, help=help_text)
    @click.argument("names", nargs=-1, required=True, shell_complete=complete_nodes)
    @click.option("--reason", required=reason_required,
                  help="Why (kept in the node's history)." if not reason_required else
                  "Why (required; kept in the node's history).")
    @json_option
    @pass_ctx
    def command(ctx: Ctx, names: tuple[str, ...], reason: str | None, as_json: bool) -> None:
        changes = ops.apply(ctx.gc, op, list(names), reason)
        if as_json:
            print_json(ctx.console, [c.__dict__ for c in changes])
        else:
            for c in changes:
                ctx.console.print(f"{escape(c.node)}: {c.from_state} -> {c.to_state}")
    return command


drain = _lifecycle("drain", "Take nodes out of service for maintenance (they keep their "
                   "certificate).\n\nExample: gpuctl drain gpu017 --reason 'PSU swap'", False)
undrain = _lifecycle("undrain", "Return drained nodes to the state they were drained from.\n\n"
                     "Example: gpuctl undrain gpu017", False)
retire = _lifecycle("retire", "Retire nodes for good (final; they leave their pools).\n\n"
                    "Example: gpuctl retire gpu017 --reason 'decommissioned'", False)
quarantine = _lifecycle("quarantine", "Quarantine nodes by hand.\n\n"
                        "Example: gpuctl quarantine gpu017 --reason 'user reports NaNs'", True)
release = _lifecycle("release", "Release quarantined nodes back to discovered (re-scan, "
                     "provision and burn in again before they serve).\n\n"
                     "Example: gpuctl release gpu017 --reason 'GPU 3 replaced'", True)


@click.group()
def pool() -> None:
    """Team GPU pools: divide certified capacity between teams."""


@pool.command("create")
@click.argument("name")
@click.option("--sku", required=True, shell_complete=complete_skus,
              help="e.g. h100-sxm-8")
@click.option("--gpus", type=int, required=True, help="GPUs promised to the team.")
@click.option("--accounts", multiple=True, metavar="A[,B]",
              help="Slurm accounts whose jobs may use the pool (AllowAccounts).")
@click.option("--groups", multiple=True, metavar="G[,H]",
              help="Unix groups whose members may use the pool (AllowGroups).")
@click.option("--open", "open_to_all", is_flag=True,
              help="Every user may use the pool (no --accounts or --groups).")
@pass_ctx
def pool_create(ctx: Ctx, name: str, sku: str, gpus: int, accounts: tuple[str, ...],
                groups: tuple[str, ...], open_to_all: bool) -> None:
    """Create a pool for the named accounts or groups (or --open for everyone).

    With the Slurm hand-off applied, the pool is refused unless Slurm enforces its
    limit (accounting through slurmdbd, AccountingStorageEnforce with limits,
    gres/gpu in AccountingStorageTRES).

    Example: gpuctl pool create llm-team --sku h100-sxm-8 --gpus 64 --accounts llm
    """
    from provisioner.slurm.pools import check_enforcement  # noqa: PLC0415

    check_enforcement(ctx.gc)
    pools.create_pool(ctx.gc, name, sku, gpus, accounts=list(accounts), groups=list(groups),
                      open_to_all=open_to_all)
    who = ", ".join([*accounts, *groups]) or "everyone"
    ctx.console.print(f"pool {escape(name)}: {gpus} {escape(sku)} GPUs for {escape(who)}")


@pool.command("assign")
@click.argument("name", shell_complete=complete_pools)
@click.argument("nodes", nargs=-1, shell_complete=complete_nodes)
@click.option("--gpus", type=int, help="Slice size per node: 8, 4, 2 or 1 (default whole).")
@pass_ctx
def pool_assign(ctx: Ctx, name: str, nodes: tuple[str, ...], gpus: int | None) -> None:
    """Give the pool slices of certified nodes (the named ones, or any free ones of its
    SKU until it is full).

    Example: gpuctl pool assign vision-team gpu017 --gpus 4
    """
    done = pools.assign(ctx.gc, name, list(nodes), gpus)
    ctx.console.print(f"pool {escape(name)} += " + escape(", ".join(done)))


@pool.command("release")
@click.argument("name", shell_complete=complete_pools)
@click.argument("nodes", nargs=-1, shell_complete=complete_nodes)
@pass_ctx
def pool_release(ctx: Ctx, name: str, nodes: tuple[str, ...]) -> None:
    """Take the named nodes' slices (or all) back from the pool.

    Example: gpuctl pool release vision-team gpu017
    """
    freed = pools.release(ctx.gc, name, list(nodes))
    ctx.console.print(f"pool {escape(name)}: released {freed} GPUs")


@pool.command("delete")
@click.argument("name", shell_complete=complete_pools)
@pass_ctx
def pool_delete(ctx: Ctx, name: str) -> None:
    """Delete a pool and its allocations."""
    pools.delete_pool(ctx.gc, name)
    ctx.console.print(f"pool {escape(name)} deleted")


@pool.command("show")
@click.argument("name", shell_complete=complete_pools)
@json_option
@pass_ctx
def pool_show(ctx: Ctx, name: str, as_json: bool) -> None:
    """A pool, and the salloc line a team member runs to get 1, 2, 4 or 8 of its GPUs
    now (partition, account, time limit), with what running jobs hold.

    Example: gpuctl pool show vision-team
    """
    from provisioner.slurm.apply import load_settings  # noqa: PLC0415
    from provisioner.slurm.pools import how_to_use  # noqa: PLC0415

    view = pools.get_pool(ctx.gc, name)
    use = how_to_use(view) if load_settings(ctx.gc) is not None else None
    if as_json:
        print_json(ctx.console, {**view.to_dict(), "slurm": use})
        return
    ctx.console.print(pools_table([view]))
    if use is None:
        ctx.console.print("Slurm: not handed off (gpuctl handoff slurm --apply)")
        return
    ctx.console.print(f"Slurm: partition {use['partition']}, QOS {use['qos']}, time limit "
                      f"{use['time_limit']}; running jobs hold {use['gpus_held']} of "
                      f"{view.usable} GPUs; {use['guarantee']}", highlight=False)
    for n, line in use["salloc"].items():  # type: ignore[attr-defined]
        ctx.console.print(f"  {n} GPU{'s' if n > 1 else ''}: {escape(line)}", highlight=False)


@pool.command("sync")
@pass_ctx
def pool_sync(ctx: Ctx) -> None:
    """Make Slurm's QOS and pool partitions match gpuctl's pools now."""
    from provisioner.slurm.pools import sync_pools  # noqa: PLC0415

    done = sync_pools(ctx.gc)
    if done is None:
        ctx.console.print("Slurm: not handed off (gpuctl handoff slurm --apply)")
        return
    ctx.console.print("; ".join(done) or "Slurm already matches", highlight=False)


@pool.command("list")
@json_option
@pass_ctx
def pool_list(ctx: Ctx, as_json: bool) -> None:
    """Pools, what each holds and on which nodes."""
    views = pools.list_pools(ctx.gc)
    if as_json:
        print_json(ctx.console, [v.to_dict() for v in views])
        return
    ctx.console.print(pools_table(views))


@click.group()
def handoff() -> None:
    """Hand certified nodes to Slurm, Kubernetes, Ansible, Prometheus or a hosts file
    (they become in-service; nodes already in service are included again)."""


def _option(opt: ho.TargetOption) -> Any:
    """A target's option (data) as a click option."""
    flag = f"--{opt.name}"
    if opt.type is bool:
        return click.option(flag, is_flag=True, help=opt.help)
    kind: Any = opt.type
    if opt.limits is not None:
        low, high = opt.limits
        kind = click.IntRange(int(low), int(high)) if opt.type is int else \
            click.FloatRange(low, high)
    elif opt.type is Path:
        kind = click.Path(path_type=Path)
    return click.option(flag, type=kind, default=opt.default, envvar=opt.envvar,
                        show_default=opt.default is not None, help=opt.help)


def _write(target: ho.Target, output: Path | None, force: bool, opts: dict[str, Any]
           ) -> Callable[[ho.HandoffInput], str]:
    def write(doc: ho.HandoffInput) -> str:
        files = target.render(doc, opts)
        if output is None:  # one file, to stdout
            click.echo("".join(files.values()), nl=False)
            return ""
        paths = {(output / name if target.directory else output): text
                 for name, text in files.items()}
        for path, text in paths.items():  # all may be written, or none
            may_replace(path, text, force=force)
        for path, text in paths.items():
            write_atomically(path, text, force=force)
        return ", ".join(str(p) for p in paths)
    return write


def _target_command(target: ho.Target) -> click.Command:
    """``gpuctl handoff <target>``: the shared options, the target's own, and with an
    ``apply``, ``--apply`` and its options."""

    @click.pass_context
    def command(click_ctx: click.Context, nodes: tuple[str, ...], sku: str | None,
                dry_run: bool, force: bool, output: Path | None, as_json: bool,
                **opts: Any) -> None:
        ctx = click_ctx.find_object(Ctx)
        assert ctx is not None
        opts = {k.replace("-", "_"): v for k, v in opts.items()}
        if opts.pop("apply_live", False):
            if dry_run:
                raise click.UsageError("--apply changes the live system; --dry-run cannot "
                                       "go with it (leave --apply off to review the files)")
            assert target.apply is not None
            applied = target.apply(ctx.gc, list(nodes), sku, opts)
            if as_json:
                print_json(ctx.console, applied.to_dict())
            else:
                render_applied(ctx.console, ctx.err, target.name, applied)
            problems, done = applied.result.problems, applied.result.nodes
            if problems:
                raise NodesFailedError(f"{len(problems)} of {len(problems) + len(done)} "
                                       "nodes not handed off")
            return
        for opt in target.apply_options:
            key = opt.name.replace("-", "_")
            if click_ctx.get_parameter_source(key) == click.core.ParameterSource.COMMANDLINE:
                raise click.UsageError(f"--{opt.name} needs --apply")
        if as_json and output is None:
            raise click.UsageError("--json needs -o (without it the output goes to stdout)")
        result = ho.hand_off(ctx.gc, target.name, list(nodes), sku, dry_run=dry_run,
                             write=_write(target, output, force, opts), always=target.always)
        if as_json:
            print_json(ctx.console, asdict(result))
            return
        for line in result.skipped:
            ctx.err.print(f"skipped {escape(line)}")
        written = result.written
        ctx.err.print(f"{target.name}: {len(result.nodes)} nodes"
                      f"{' -> ' + written if written else ''}; {result.moved} moved to "
                      f"in-service (run {result.run_id})", markup=False, highlight=False)

    params: list[Any] = [
        click.argument("nodes", nargs=-1, shell_complete=complete_nodes),
        click.option("--sku", shell_complete=complete_skus, help="Only nodes of this SKU."),
        click.option("--dry-run", is_flag=True,
                     help="Write the output but leave the nodes' states alone."),
        click.option("--force", is_flag=True,
                     help="Replace output files gpuctl did not write (kept as .bak)."),
        click.option("-o", "--output-dir", "output",
                     type=click.Path(file_okay=False, path_type=Path),
                     default=Path(target.default_output), show_default=True,
                     help="Writes the files here.") if target.directory else
        click.option("-o", "--output", "output", type=click.Path(dir_okay=False,
                                                                 path_type=Path),
                     help=f"Write here (atomically) instead of stdout; e.g. "
                          f"{target.default_output}."),
        *(_option(o) for o in target.options),
        json_option,
    ]
    if target.apply is not None:
        params += [click.option("--apply", "apply_live", is_flag=True,
                                help=target.apply_help),
                   *(_option(o) for o in target.apply_options)]
    for decorate in reversed(params):
        command = decorate(command)
    return handoff.command(target.name, help=target.help)(command)


for _target in targets().values():
    _target_command(_target)
