"""``gpuctl remediate NODE``: one remediation by hand; and the options and rendering
``gpuctl monitor --remediate`` shares with it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.markup import escape

from provisioner.cli.common import Ctx, complete_nodes, json_option, pass_ctx
from provisioner.errors import InputError, NodesFailedError
from provisioner.heal.loop import ACTIONS, RemediationSummary, remediate_nodes
from provisioner.ui.style import print_json

F = TypeVar("F", bound=Callable[..., Any])
UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str, option: str) -> float:
    """``90s``, ``30m``, ``1h`` or plain seconds (0 or more).

    Raises:
        InputError: anything else.
    """
    text = text.strip().lower()
    try:
        seconds = float(text[:-1]) * UNITS[text[-1]] if text[-1:] in UNITS else float(text)
    except (ValueError, IndexError):
        seconds = -1
    if not 0 <= seconds <= 7 * 86400:
        raise InputError(f"{option} {text[:20]!r}: give seconds or 90s, 30m, 1h")
    return seconds


def remediation_options(func: F) -> F:
    """What the loop takes from the command line (``remediate``, ``monitor --remediate``)."""
    for decorator in reversed((
        click.option("--plan", "plan_only", is_flag=True,
                     help="Print what would be done (rung, rule, source, breaker) and "
                          "change nothing."),
        click.option("--drain-timeout", default="30m", show_default=True,
                     help="How long to wait for jobs on a drained node to end (jobs are "
                          "never killed unless --kill-jobs: a node still busy stays "
                          "drained and listed)."),
        click.option("--kill-jobs", is_flag=True,
                     help="Past --drain-timeout, cancel the jobs still on a node gpuctl "
                          "drained (scancel by job id; a job that spans other nodes ends "
                          "there too) and go on once they are gone."),
        click.option("--level", default="quick", show_default=True,
                     type=click.Choice(["quick", "standard", "extended"]),
                     help="The re-burn-in's level."),
        click.option("--burnin-duration", "burnin_seconds", type=float, default=None,
                     help="Seconds per burn-in test (overrides the level)."),
        click.option("--boot-timeout", default="10m", show_default=True,
                     help="How long a node has to come back after a reboot or power "
                          "cycle."),
    )):
        func = decorator(func)
    return func


def run_remediation(ctx: Ctx, names: list[str] | None, action: str | None,
                    opts: dict[str, Any]) -> RemediationSummary:
    return remediate_nodes(
        ctx.gc, names, plan_only=opts["plan_only"], action=action,
        drain_timeout=parse_duration(opts["drain_timeout"], "--drain-timeout"),
        level=opts["level"], burnin_seconds=opts["burnin_seconds"],
        boot_timeout=parse_duration(opts["boot_timeout"], "--boot-timeout"),
        kill_jobs=opts["kill_jobs"])


def show_remediation(ctx: Ctx, summary: RemediationSummary) -> None:
    head = "remediation plan" if summary.plan_only else f"remediation run {summary.run_id}"
    ctx.console.print(f"{head}: {len(summary.nodes)} node"
                      f"{'s' if len(summary.nodes) != 1 else ''} (policy "
                      f"{escape(summary.policy)})", highlight=False)
    for n in summary.nodes:
        rung = n.decision.get("rung", "")
        rungs = " -> ".join(n.rungs) if n.rungs else rung
        record = f" [remediation {n.remediation_id}]" if n.remediation_id else ""
        ctx.console.print(f"  {escape(n.name)}: {n.outcome} ({escape(rungs)}){record}: "
                          f"{escape(n.message)}", highlight=False)
        source = n.decision.get("source")
        if summary.plan_only and source:
            ctx.console.print(f"      source: {escape(source)}", highlight=False)
        for skipped in n.decision.get("skipped") or []:
            ctx.console.print(f"      skipped {escape(skipped)}", highlight=False)


def failed_nodes(summary: RemediationSummary) -> list[str]:
    return [n.name for n in summary.nodes if n.outcome in ("failed", "error")]


@click.command()
@click.argument("node", shell_complete=complete_nodes)
@click.option("--action", type=click.Choice(ACTIONS),
              help="Run this rung once instead of the policy's (admin drains, the "
                   "control host and the circuit breaker still refuse).")
@remediation_options
@json_option
@pass_ctx
def remediate(ctx: Ctx, node: str, action: str | None, as_json: bool,
              **opts: Any) -> None:
    """Remediate one node by hand: plan as the policy says (or run --action), drain it,
    run the rung, re-scan, re-burn-in, and put it back in the state it served in; a
    failure climbs the policy's ladder (by hand: one step, no climbing).

    Exit status 3 when the remediation failed.

    Example: gpuctl remediate gpu-node-07 --action power-cycle
    """
    summary = run_remediation(ctx, [node], action, opts)
    if as_json:
        print_json(ctx.console, summary.to_dict())
    else:
        show_remediation(ctx, summary)
    if failed_nodes(summary):
        raise NodesFailedError(f"remediation of {node} failed")
