"""``gpuctl init`` and ``gpuctl nodes ...``."""

from __future__ import annotations

from pathlib import Path

import click

from provisioner.cli.common import (
    Ctx,
    complete_nodes,
    complete_skus,
    json_option,
    pass_ctx,
)
from provisioner.fleet import ops
from provisioner.inventory import registry
from provisioner.inventory.importers import import_nodes
from provisioner.inventory.lifecycle import State
from provisioner.inventory.validate import parse_label
from provisioner.ui.render import node_detail, nodes_table, print_json


def _labels(values: tuple[str, ...]) -> dict[str, str]:
    return dict(parse_label(v) for v in values)


@click.command()
@pass_ctx
def init(ctx: Ctx) -> None:
    """Create the data directory and the database (safe to run again).

    Example: gpuctl init
    """
    for warning in ctx.gc.init():
        ctx.err.print(f"warning: {warning}", markup=False, highlight=False)
    ctx.console.print(f"data dir {ctx.gc.paths.home}\ndatabase {ctx.gc.db_display}")


@click.group()
def nodes() -> None:
    """Register, list, inspect, label and remove nodes."""


@nodes.command("add")
@click.argument("host")
@click.option("--address", help="IP or DNS name to SSH to (default: HOST).")
@click.option("--port", default=22, show_default=True, type=int)
@click.option("--user", default="root", show_default=True)
@click.option("--key", "key_path", help="Private key file for SSH.")
@click.option("--sku", shell_complete=complete_skus,
              help="Expected SKU, e.g. h100-sxm-8 (else inferred at scan).")
@click.option("--label", "labels", multiple=True, metavar="K=V", help="Repeatable.")
@click.option("--bmc", "bmc_url", metavar="URL",
              help="The node's BMC (Redfish): https://HOST[:PORT], optionally with "
                   "/redfish/v1/Systems/ID.")
@click.option("--bmc-user", metavar="USER", help="The BMC account gpuctl logs in as.")
@click.option("--bmc-password-from", metavar="env:VAR|file:PATH",
              help="Where the BMC password is: an environment variable, or a file only "
                   "its owner can read (0600). The password itself is never stored.")
@click.option("--bmc-ca", metavar="FILE",
              help="CA bundle the BMC's certificate is checked against (default: the "
                   "system's trust store).")
@click.option("--replace", is_flag=True, help="Update the node if it exists.")
@pass_ctx
def add(ctx: Ctx, host: str, address: str | None, port: int, user: str, key_path: str | None,
        sku: str | None, labels: tuple[str, ...], bmc_url: str | None, bmc_user: str | None,
        bmc_password_from: str | None, bmc_ca: str | None, replace: bool) -> None:
    """Register one node (and its BMC).

    \b
    Example: gpuctl nodes add gpu017 --address 10.1.2.17 --key ~/.ssh/id_ed25519 \\
               --label rack=r12 --bmc https://10.1.3.17 --bmc-user admin \\
               --bmc-password-from file:/etc/gpuctl/bmc-password
    """
    spec = registry.NodeSpec(name=host, address=address, port=port, user=user,
                             key_path=key_path, labels=_labels(labels), sku=sku,
                             bmc_url=bmc_url, bmc_user=bmc_user,
                             bmc_password_from=bmc_password_from, bmc_ca=bmc_ca)
    registry.add_nodes(ctx.gc, [spec], replace=replace)
    ctx.console.print(f"registered {host}")


@nodes.command("import")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--replace", is_flag=True, help="Update nodes that exist.")
@pass_ctx
def import_(ctx: Ctx, file: Path, replace: bool) -> None:
    """Import nodes from an Ansible INI/YAML inventory or a CSV file (all or nothing).

    Example: gpuctl nodes import inventory/hosts.ini
    """
    names = import_nodes(ctx.gc, file, replace=replace)
    ctx.console.print(f"imported {len(names)} nodes from {file}")


@nodes.command("list")
@click.option("--state", type=click.Choice([s.value for s in State]))
@click.option("--sku", shell_complete=complete_skus)
@click.option("--label", "labels", multiple=True, metavar="K=V", help="Repeatable; all must match.")
@json_option
@pass_ctx
def list_(ctx: Ctx, state: str | None, sku: str | None, labels: tuple[str, ...],
          as_json: bool) -> None:
    """List nodes, optionally filtered by state, SKU and labels.

    Example: gpuctl nodes list --state quarantined --json
    """
    views = registry.list_nodes(ctx.gc, state=state, sku=sku, labels=_labels(labels))
    if as_json:
        print_json(ctx.console, [v.to_dict() for v in views])
    else:
        ctx.console.print(nodes_table(views))


@nodes.command("show")
@click.argument("node", shell_complete=complete_nodes)
@click.option("--events", default=50, show_default=True, help="How many history rows.")
@json_option
@pass_ctx
def show(ctx: Ctx, node: str, events: int, as_json: bool) -> None:
    """Show a node's hardware, GPUs and history.

    Example: gpuctl nodes show gpu-node-03
    """
    detail = registry.show_node(ctx.gc, node, events=events)
    if as_json:
        print_json(ctx.console, detail.to_dict())
    else:
        node_detail(ctx.console, detail)


@nodes.command("remove")
@click.argument("names", nargs=-1, required=True, shell_complete=complete_nodes)
@click.option("--yes", is_flag=True, help="Do not ask.")
@pass_ctx
def remove(ctx: Ctx, names: tuple[str, ...], yes: bool) -> None:
    """Remove nodes with their snapshots and history. A node a scheduler knows (Slurm,
    after `handoff slurm --apply`) is drained there: gpuctl no longer vouches for it.

    Example: gpuctl nodes remove gpu017 --yes
    """
    if not yes:
        click.confirm(f"Remove {len(names)} node(s) and their history (and drain them in "
                      "the scheduler)?", abort=True)
    ops.remove_nodes(ctx.gc, list(names))
    ctx.console.print(f"removed {', '.join(names)}")


@nodes.command("label")
@click.argument("names", nargs=-1, required=True, shell_complete=complete_nodes)
@click.option("--set", "set_", multiple=True, metavar="K=V", help="Repeatable.")
@click.option("--remove", "remove_keys", multiple=True, metavar="K", help="Repeatable.")
@json_option
@pass_ctx
def label(ctx: Ctx, names: tuple[str, ...], set_: tuple[str, ...],
          remove_keys: tuple[str, ...], as_json: bool) -> None:
    """Set or remove labels.

    Example: gpuctl nodes label gpu017 gpu018 --set rack=r12 --remove pool
    """
    views = registry.label_nodes(ctx.gc, list(names), _labels(set_), list(remove_keys))
    if as_json:
        print_json(ctx.console, [v.to_dict() for v in views])
    else:
        for v in views:
            ctx.console.print(f"{v.name}: " + (",".join(
                f"{k}={val}" for k, val in sorted(v.labels.items())) or "no labels"))


@nodes.command("forget-hostkey")
@click.argument("node", shell_complete=complete_nodes)
@pass_ctx
def forget_hostkey(ctx: Ctx, node: str) -> None:
    """Forget a node's SSH host key after you verified a reinstall.

    The next `gpuctl scan NODE --accept-new` records the key it then sees.
    Example: gpuctl nodes forget-hostkey gpu017
    """
    had = registry.forget_hostkey(ctx.gc, node)
    ctx.console.print(f"{node}: host key {'forgotten' if had else 'was not on file'}; scan with "
                      "--accept-new to record the new one")
