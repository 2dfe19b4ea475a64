"""``gpuctl bmc ...``: out-of-band control through each node's BMC (Redfish)."""

from __future__ import annotations

import click

from provisioner import bmc as core
from provisioner.cli.common import Ctx, complete_nodes, json_option, pass_ctx
from provisioner.ui.render import bmc_info_view, print_json


@click.group()
def bmc() -> None:
    """Power and inspect nodes through their BMCs (Redfish), whatever their OS does."""


@bmc.command("power")
@click.argument("node", shell_complete=complete_nodes)
@click.argument("action", required=False, type=click.Choice(core.POWER_ACTIONS))
@click.option("--wait", default=120.0, show_default=True, type=click.FloatRange(1, 3600),
              metavar="SECONDS", help="How long the BMC may take to reach the new state.")
@click.option("--force", is_flag=True,
              help="Act even though the BMC reports another system serial than the "
                   "node's OS did at its last scan.")
@click.option("--serving", is_flag=True,
              help="Power off or cycle a node that serves (certified or in service): "
                   "its jobs die and it comes back unverified.")
@json_option
@pass_ctx
def power(ctx: Ctx, node: str, action: str | None, wait: float, force: bool,
          serving: bool, as_json: bool) -> None:
    """Print NODE's power state, or power it on, off (at once) or cycle it.

    \b
    Example: gpuctl bmc power gpu017
             gpuctl bmc power gpu017 cycle
    """
    if action is None:
        state = core.power_state(ctx.gc, node)
        if as_json:
            print_json(ctx.console, {"node": node, "power_state": state})
        else:
            ctx.console.print(f"{node}: power {state}", markup=False, highlight=False)
        return
    result = core.set_power(ctx.gc, node, action, wait=wait, force=force,
                            serving_ok=serving)
    if as_json:
        print_json(ctx.console, result.to_dict())
        return
    done = f"sent {', '.join(result.resets)}" if result.resets else "nothing to do"
    ctx.console.print(f"{node}: power {action}: {result.before} -> {result.after} ({done}, "
                      f"{result.seconds:.1f} s)", markup=False, highlight=False)


@bmc.command("info")
@click.argument("node", shell_complete=complete_nodes)
@click.option("--entries", default=10, show_default=True, type=click.IntRange(0, 1000),
              help="How many of the BMC's newest log entries to show.")
@json_option
@pass_ctx
def info(ctx: Ctx, node: str, entries: int, as_json: bool) -> None:
    """Show what NODE's BMC reports: serial, BIOS and BMC firmware, health, and its
    newest log entries.

    Example: gpuctl bmc info gpu017 --entries 20
    """
    result = core.bmc_info(ctx.gc, node, entries=entries)
    if as_json:
        print_json(ctx.console, result.to_dict())
    else:
        bmc_info_view(ctx.console, result)
