"""``gpuctl status``, the lifecycle operations, ``gpuctl pool`` and ``gpuctl handoff``."""

from __future__ import annotations

import contextlib
import io
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from pathlib import Path

import click
from rich.console import Console, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.text import Text

from provisioner.cli.common import (
    Ctx,
    json_option,
    pass_ctx,
    sync_pools_and_report,
    sync_slurm_and_report,
)
from provisioner.errors import NodesFailedError
from provisioner.fleet import handoff as ho
from provisioner.fleet import ops, pools
from provisioner.fleet.status import fleet_status
from provisioner.fsutil import may_replace, write_atomically
from provisioner.ui.fleet import pools_table, render_live_handoff, status_panel, status_view
from provisioner.ui.style import print_json

# A hand-off target's writer: what to hand off -> what it wrote ("" for stdout).
Writer = Callable[[ho.HandoffInput], str]


@contextlib.contextmanager
def _keys() -> Iterator[bool]:
    """Single keypresses from a terminal (cbreak mode), restored afterwards; yields
    whether stdin is a terminal at all."""
    if not sys.stdin.isatty():
        yield False
        return
    fd = sys.stdin.fileno()
    old = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


KEYS = {"\x1b[A": "up", "\x1b[B": "down", "k": "up", "j": "down", "\n": "enter",
        "\r": "enter", "\x1b": "back", "\x7f": "back", "b": "back", "q": "quit",
        "Q": "quit"}


def _key(timeout: float) -> str | None:
    """One keypress as a name (up, down, enter, back, quit), or None on timeout."""
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    if not ready:
        return None
    key = os.read(sys.stdin.fileno(), 8).decode("utf-8", "replace")
    return KEYS.get(key, KEYS.get(key[:3], ""))


class WatchView:
    """What ``status --watch`` shows: the dashboard with a selected row in "Needs
    attention" (up/down, j/k), or that node's detail (enter; back with esc/b)."""

    def __init__(self, ctx: Ctx, expiring_days: int, interval: float) -> None:
        self.ctx, self.expiring_days = ctx, expiring_days
        self.selected = 0
        self.detail: str | None = None
        self.footer = (f"refresh every {interval:g} s; up/down select, enter shows the "
                       "node, esc back, q quits")
        self.names: list[str] = []

    def render(self) -> RenderableType:
        if self.detail is not None:
            return Panel(self._detail(self.detail), title=f"gpuctl nodes show {self.detail}",
                         subtitle="esc or b: back to the fleet; q quits", border_style="blue")
        doc = fleet_status(self.ctx.gc, expiring_days=self.expiring_days)
        self.names = [a["node"] for a in doc["attention"]["nodes"]]
        self.selected = min(self.selected, max(len(self.names) - 1, 0))
        return status_panel(doc, self.footer, self.selected if self.names else None,
                            self.ctx.console.width)

    def _detail(self, name: str) -> RenderableType:
        from provisioner.inventory.registry import show_node  # noqa: PLC0415
        from provisioner.ui.render import node_detail  # noqa: PLC0415

        console = Console(file=io.StringIO(), force_terminal=True,
                          width=max(60, self.ctx.console.width - 4))
        node_detail(console, show_node(self.ctx.gc, name, events=8))
        return Text.from_ansi(console.file.getvalue())  # type: ignore[attr-defined]

    def key(self, key: str) -> None:
        if key == "up":
            self.selected = max(0, self.selected - 1)
        elif key == "down":
            self.selected = min(len(self.names) - 1, self.selected + 1) if self.names else 0
        elif key == "enter" and self.detail is None and self.names:
            self.detail = self.names[self.selected]
        elif key == "back":
            self.detail = None


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
    attention, the last run of each kind, pools.

    Example: gpuctl status --watch
    """
    def snapshot() -> dict[str, object]:
        return fleet_status(ctx.gc, expiring_days=expiring_days)

    if as_json:
        print_json(ctx.console, snapshot())
        return
    if not watch:
        ctx.console.print(status_view(snapshot(), width=ctx.console.width))
        return
    view = WatchView(ctx, expiring_days, interval)
    with _keys() as interactive, Live(view.render(), console=ctx.console, screen=True,
                                      auto_refresh=False) as live:
        try:
            while True:
                deadline = time.monotonic() + interval
                while (left := deadline - time.monotonic()) > 0:
                    if not interactive:
                        time.sleep(left)
                        break
                    key = _key(left)
                    if key == "quit":
                        return
                    if key:  # redraw at once on a keypress
                        view.key(key)
                        break
                live.update(view.render(), refresh=True)
        except KeyboardInterrupt:
            return


def _lifecycle(op: str, help_text: str, reason_required: bool) -> click.Command:
    @click.command(name=op, help=help_text)
    @click.argument("names", nargs=-1, required=True)
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
        sync_slurm_and_report(ctx, [c.node for c in changes])
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
@click.option("--sku", required=True, help="e.g. h100-sxm-8")
@click.option("--gpus", type=int, required=True, help="GPUs promised to the team.")
@pass_ctx
def pool_create(ctx: Ctx, name: str, sku: str, gpus: int) -> None:
    """Create a pool.

    Example: gpuctl pool create llm-team --sku h100-sxm-8 --gpus 64
    """
    pools.create_pool(ctx.gc, name, sku, gpus)
    ctx.console.print(f"pool {escape(name)}: {gpus} {escape(sku)} GPUs")
    sync_pools_and_report(ctx)


@pool.command("assign")
@click.argument("name")
@click.argument("nodes", nargs=-1)
@click.option("--gpus", type=int, help="Slice size per node: 8, 4, 2 or 1 (default whole).")
@pass_ctx
def pool_assign(ctx: Ctx, name: str, nodes: tuple[str, ...], gpus: int | None) -> None:
    """Give the pool slices of certified nodes (the named ones, or any free ones of its
    SKU until it is full).

    Example: gpuctl pool assign vision-team gpu017 --gpus 4
    """
    done = pools.assign(ctx.gc, name, list(nodes), gpus)
    ctx.console.print(f"pool {escape(name)} += " + escape(", ".join(done)))
    sync_pools_and_report(ctx)


@pool.command("release")
@click.argument("name")
@click.argument("nodes", nargs=-1)
@pass_ctx
def pool_release(ctx: Ctx, name: str, nodes: tuple[str, ...]) -> None:
    """Take the named nodes' slices (or all) back from the pool.

    Example: gpuctl pool release vision-team gpu017
    """
    freed = pools.release(ctx.gc, name, list(nodes))
    ctx.console.print(f"pool {escape(name)}: released {freed} GPUs")
    sync_pools_and_report(ctx)


@pool.command("delete")
@click.argument("name")
@pass_ctx
def pool_delete(ctx: Ctx, name: str) -> None:
    """Delete a pool and its allocations."""
    pools.delete_pool(ctx.gc, name)
    ctx.console.print(f"pool {escape(name)} deleted")
    sync_pools_and_report(ctx)


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


def _handoff_options(func: click.decorators.FC) -> click.decorators.FC:
    func = click.argument("nodes", nargs=-1)(func)
    func = click.option("--force", is_flag=True,
                        help="Replace output files gpuctl did not write (kept as .bak).")(func)
    func = click.option("--sku", help="Only nodes of this SKU.")(func)
    func = click.option("--dry-run", is_flag=True,
                        help="Write the output but leave the nodes' states alone.")(func)
    return func


@click.group()
def handoff() -> None:
    """Hand certified nodes to Slurm, Kubernetes, Ansible or Prometheus (they become
    in-service; nodes already in service are included again)."""


def _run_handoff(ctx: Ctx, target: str, nodes: tuple[str, ...], sku: str | None,
                 dry_run: bool, write: Writer) -> None:
    result = ho.hand_off(ctx.gc, target, list(nodes), sku, dry_run=dry_run, write=write)
    for line in result.skipped:
        ctx.err.print(f"skipped {escape(line)}")
    written = result.written
    ctx.err.print(f"{target}: {len(result.nodes)} nodes{' -> ' + written if written else ''}; "
                  f"{result.moved} moved to in-service (run {result.run_id})", markup=False,
                  highlight=False)


@handoff.command("slurm")
@_handoff_options
@click.option("-o", "--output-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("gpuctl-handoff/slurm"), show_default=True,
              help="Writes slurm.conf (NodeName lines) and gres.conf here.")
@click.option("--partition", help="Also write a PartitionName line with these nodes.")
@click.option("--apply", "apply_live", is_flag=True,
              help="Put the nodes into the live Slurm: gpuctl's block in slurm.conf and "
                   "gres.conf (atomic, .gpuctl-bak kept), reconfigure (or restart "
                   "slurmctld when the node list changes), wait until each node is IDLE "
                   "with its GPUs. Only nodes Slurm took move to in-service.")
@click.option("--slurm-conf-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("/etc/slurm"), show_default=True,
              help="With --apply: the cluster's Slurm configuration directory.")
@click.option("--restart-command", envvar="GPUCTL_SLURM_RESTART",
              default="systemctl restart slurmctld", show_default=True,
              help="With --apply: how to restart slurmctld when the node list changes "
                   "(Slurm before 23.11 reads new nodes only at start).")
@click.option("--wait", "wait_s", type=click.FloatRange(1, 3600), default=120,
              show_default=True, help="With --apply: seconds to wait for the nodes.")
@click.option("--smoke", is_flag=True,
              help="With --apply: then run the training smoke job (sbatch, srun torchrun) "
                   "on the nodes; they go in service only if it passes.")
@click.option("--smoke-steps", type=click.IntRange(20, 100000), default=200,
              show_default=True, help="Training steps of the smoke job.")
@json_option
@pass_ctx
def handoff_slurm(ctx: Ctx, nodes: tuple[str, ...], sku: str | None, dry_run: bool,
                  force: bool, output_dir: Path, partition: str | None, apply_live: bool,
                  slurm_conf_dir: Path, restart_command: str, wait_s: float, smoke: bool,
                  smoke_steps: int, as_json: bool) -> None:
    """slurm.conf NodeName lines (CPUs, RealMemory, Gres=gpu:<type>:<n>, Features) and
    gres.conf, to include in the cluster's configuration; with --apply, into the live
    cluster.

    Example: gpuctl handoff slurm -o /etc/slurm/gpuctl --partition h100

    Example: gpuctl handoff slurm --apply --partition h100 --smoke
    """
    if apply_live:
        if dry_run:
            raise click.UsageError("--apply changes the live cluster; --dry-run cannot "
                                   "go with it (leave --apply off to review the files)")
        from provisioner.slurm.live import live_handoff  # noqa: PLC0415 (Slurm only)

        live = live_handoff(ctx.gc, list(nodes), sku, conf_dir=slurm_conf_dir,
                            partition=partition, restart_command=restart_command,
                            wait=wait_s, smoke=smoke, smoke_steps=smoke_steps)
        if as_json:
            print_json(ctx.console, live.to_dict())
        else:
            render_live_handoff(ctx.console, ctx.err, live)
        if live.result.problems:
            raise NodesFailedError(f"{len(live.result.problems)} of "
                                  f"{len(live.result.problems) + len(live.result.nodes)} "
                                  "nodes not handed off")
        return
    if smoke:
        raise click.UsageError("--smoke needs --apply (the job runs on the live cluster)")
    def write(doc: ho.HandoffInput) -> str:
        files = ho.render_slurm(doc.nodes, partition)
        for name, text in files.items():  # both may be written, or neither
            may_replace(output_dir / name, text, force=force)
        for name, text in files.items():
            write_atomically(output_dir / name, text, force=force)
        return f"{output_dir}/slurm.conf, {output_dir}/gres.conf"
    _run_handoff(ctx, "slurm", nodes, sku, dry_run, write)


def _single_file(target: str, default: str, render: Writer, help_text: str) -> click.Command:
    @handoff.command(target, help=help_text)
    @_handoff_options
    @click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
                  help=f"Write here (atomically) instead of stdout; e.g. {default}.")
    @pass_ctx
    def command(ctx: Ctx, nodes: tuple[str, ...], sku: str | None, dry_run: bool,
                force: bool, output: Path | None) -> None:
        def write(doc: ho.HandoffInput) -> str:
            text = render(doc)
            if output is None:
                click.echo(text, nl=False)
                return ""
            write_atomically(output, text, force=force)
            return str(output)
        _run_handoff(ctx, target, nodes, sku, dry_run, write)
    return command


handoff_k8s = _single_file(
    "k8s", "gpu-node-labels.yaml", lambda doc: ho.render_k8s(doc.nodes),
    "Node labels as GPU Feature Discovery names them (nvidia.com/gpu.product, .count, "
    ".memory, ...) plus gpuctl.io/certified, as YAML for `kubectl apply -f`.\n\n"
    "Example: gpuctl handoff k8s -o labels.yaml && kubectl apply -f labels.yaml")
handoff_ansible = _single_file(
    "ansible", "in-service.yml", lambda doc: ho.render_ansible(doc.nodes),
    "An Ansible YAML inventory of the handed-off nodes (group gpuctl_in_service, children "
    "per SKU).\n\nExample: gpuctl handoff ansible -o in-service.yml")
handoff_prometheus = _single_file(
    "prometheus", "/var/lib/node_exporter/textfile/gpuctl.prom",
    lambda doc: ho.render_prometheus(doc.fleet, doc.nodes),
    "A node-exporter textfile: every node's state, certificate age and expiry, burn-in "
    "figures.\n\nExample: gpuctl handoff prometheus -o "
    "/var/lib/node_exporter/textfile/gpuctl.prom")
