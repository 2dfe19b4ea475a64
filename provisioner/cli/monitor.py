"""``gpuctl monitor``: in-service health checks, once or every interval."""

from __future__ import annotations

import time
from typing import Any

import click
from rich.markup import escape

from provisioner.cli.common import Ctx, json_option, pass_ctx
from provisioner.cli.remediate import (
    failed_nodes,
    remediation_options,
    run_remediation,
    show_remediation,
)
from provisioner.errors import InputError, NodesFailedError
from provisioner.scan.monitor import MonitorSummary, monitor_pass
from provisioner.ui.style import print_json

UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_interval(text: str) -> float:
    """``30s``, ``5m``, ``1h`` or plain seconds.

    Raises:
        InputError: anything else, or under 10 seconds.
    """
    text = text.strip().lower()
    try:
        seconds = float(text[:-1]) * UNITS[text[-1]] if text[-1:] in UNITS else float(text)
    except (ValueError, IndexError):
        raise InputError(f"--every {text[:20]!r}: give seconds or 30s, 5m, 1h") from None
    if seconds < 10:
        raise InputError("--every must be at least 10 s")
    return seconds


def _show(ctx: Ctx, summary: MonitorSummary, as_json: bool) -> None:
    if as_json:
        print_json(ctx.console, summary.to_dict())
        return
    ok = sum(n.outcome == "ok" for n in summary.nodes)
    ctx.console.print(f"monitor run {summary.run_id}: {len(summary.nodes)} serving nodes, "
                      f"{ok} ok", highlight=False)
    for n in summary.nodes:
        if n.outcome != "ok":
            ctx.console.print(f"  {escape(n.name)}: {n.outcome}: {escape(n.message)}",
                              highlight=False)
    for report in summary.schedulers.values():
        for line in report.lines():
            ctx.console.print(f"  {escape(line)}", highlight=False)


@click.command()
@click.option("--every", help="Repeat at this interval (30s, 5m, 1h) until stopped; "
                              "default: one pass.")
@click.option("--parallel", default=32, show_default=True, help="Nodes probed at once.")
@click.option("--remediate", is_flag=True,
              help="After the pass, remediate the quarantined nodes as "
                   "<data dir>/remediation.yml (or the shipped policy) says: drain, run "
                   "the rung, re-scan, re-burn-in, back in service; or RMA.")
@remediation_options
@json_option
@pass_ctx
def monitor(ctx: Ctx, every: str | None, parallel: int, remediate: bool, as_json: bool,
            **opts: Any) -> None:
    """Health-check every serving node (XIDs, ECC/row remap, GPUs, PCIe, InfiniBand,
    fabric manager, persistence mode); quarantine a node with a critical finding and
    drain it in Slurm with the reason.

    Exit status 3 when a node was quarantined or could not be reached (one pass).

    With --remediate (and --plan: only what it would do, nothing changed), the
    quarantined nodes are then remediated; exit status 3 when a remediation failed.

    Example: gpuctl monitor --every 5m   (or the systemd timer in contrib/systemd)

    Example: gpuctl monitor --remediate --drain-timeout 30m
    """
    interval = parse_interval(every) if every else None
    for flag, option in (("plan_only", "--plan"), ("kill_jobs", "--kill-jobs")):
        if opts[flag] and not remediate:
            raise InputError(f"{option} goes with --remediate")
    while True:
        if opts["plan_only"]:  # changes nothing: not even the monitor's pass
            plan = run_remediation(ctx, None, None, opts)
            if as_json:
                print_json(ctx.console, plan.to_dict())
            else:
                show_remediation(ctx, plan)
            return
        summary = monitor_pass(ctx.gc, parallel=parallel)
        healed = run_remediation(ctx, None, None, opts) if remediate else None
        if as_json:
            print_json(ctx.console, {**summary.to_dict(), "remediation":
                                     healed.to_dict() if healed else None})
        else:
            _show(ctx, summary, False)
            if healed is not None:
                show_remediation(ctx, healed)
        if interval is None:
            if healed is not None:
                if failed_nodes(healed):
                    raise NodesFailedError(f"remediation failed on "
                                           f"{', '.join(failed_nodes(healed))}")
                return
            bad = [n for n in summary.nodes if n.outcome not in ("ok", "warning")]
            if bad:
                raise NodesFailedError(f"{len(bad)} of {len(summary.nodes)} serving nodes "
                                       "quarantined or unreachable")
            return
        time.sleep(interval)
