"""Tables for ``gpuctl runs`` and ``gpuctl skus``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table

from provisioner.ui.style import styled

if TYPE_CHECKING:
    from provisioner.catalogue import Sku
    from provisioner.doctor import DoctorReport
    from provisioner.runs import Recovered, RunView

RUN_STYLE = {"ok": "green", "partial": "yellow", "failed": "red", "interrupted": "yellow",
             "abandoned": "bold red", "running": "cyan"}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


def runs_table(runs: list[RunView]) -> Table:
    """``gpuctl runs list``: one row per run, newest first."""
    table = Table(title=f"{len(runs)} runs", title_justify="left")
    for c in ("RUN", "KIND", "STATUS", "STARTED", "TOOK", "ACTOR", "HOST", "NODES"):
        table.add_column(c, no_wrap=c in ("RUN", "KIND", "STATUS"),
                         overflow="ellipsis" if c in ("ACTOR", "HOST") else "fold")
    for r in runs:
        nodes = r.args.get("nodes") or []
        table.add_row(str(r.id), r.kind, styled(r.status, RUN_STYLE.get(r.status)),
                      (r.started or "")[:16].replace("T", " "), _duration(r.seconds),
                      escape(r.actor), escape(r.host or "-"),
                      escape(", ".join(nodes[:4]) + (f" (+{len(nodes) - 4})"
                                                     if len(nodes) > 4 else ""))
                      if isinstance(nodes, list) else "")
    return table


def run_detail(run: RunView, events: list[dict[str, Any]]) -> RenderableType:
    """``gpuctl runs show``: the run, its outcome and the state changes it caused."""
    head = Table.grid(padding=(0, 2))
    for key, value in (("run", str(run.id)), ("kind", run.kind),
                       ("status", styled(run.status, RUN_STYLE.get(run.status))),
                       ("actor", escape(run.actor)),
                       ("host / pid", escape(f"{run.host or '-'} / {run.pid or '-'}")),
                       ("started", run.started or "-"), ("finished", run.finished or "-"),
                       ("took", _duration(run.seconds)),
                       ("arguments", escape(json.dumps(run.args)[:300])),
                       ("summary", escape(json.dumps(run.summary)[:600]))):
        head.add_row(f"[bold]{key}[/]", value)
    changes = Table(title=f"{len(events)} state changes and events", title_justify="left")
    for c in ("AT", "NODE", "CHANGE", "REASON"):
        changes.add_column(c, overflow="fold", no_wrap=c == "NODE")
    for e in events:
        change = f"{e['from']} -> {e['to']}" if e["to"] else e["kind"]
        changes.add_row((e["at"] or "")[:19].replace("T", " "), escape(e["node"]),
                        escape(change), escape(e["reason"]))
    return Group(head, changes)


def recovered_lines(recovered: list[Recovered]) -> list[str]:
    if not recovered:
        return ["no abandoned run: nothing to recover"]
    return [f"run {r.run_id} ({r.kind}) abandoned: {r.why}; nodes failed: "
            f"{', '.join(r.nodes) or 'none'}" if r.run_id else
            f"{r.why}: failed (no run holds it)" for r in recovered]


def skus_table(skus: dict[str, Sku]) -> Table:
    """``gpuctl skus list`` (``skus show`` names each SKU's file)."""
    table = Table(title=f"{len(skus)} SKUs", title_justify="left")
    for c in ("SKU", "GPUS", "MODEL", "NVSWITCH", "DRIVER", "GRES", "FLOORS"):
        table.add_column(c, no_wrap=c not in ("MODEL", "DRIVER"), overflow="fold")
    for s in skus.values():
        branch = s.provision.get("driver_branch")
        table.add_row(escape(s.name), str(s.gpu_count), escape(str(s.gpu["model_match"])),
                      "yes" if s.nvswitch else "no",
                      escape(f"{branch} {s.provision.get('driver_kernel_modules', '')}")
                      if branch else "-",
                      escape(str(s.targets.get("slurm", {}).get("gres_type") or "-")),
                      str(len(s.burnin.get("tests") or {})))
    return table


def sku_detail(sku: Sku) -> RenderableType:
    """``gpuctl skus show``: every part of one SKU's catalogue file."""
    parts: list[RenderableType] = [f"[bold]{escape(sku.name)}[/]: {escape(sku.description)}",
                                   f"file {escape(sku.source)}"]
    fixed = {p: getattr(sku, p) for p in ("gpu", "fabric", "provision", "burnin", "lab")}
    for part, values in {**fixed, **sku.targets}.items():
        table = Table(title=part, title_justify="left", show_header=False)
        table.add_column("key", style="bold", no_wrap=True)
        table.add_column("value", overflow="fold")
        rows = values.get("tests", {}) if part == "burnin" else {}
        for key, value in values.items():
            if part == "burnin" and key == "tests":
                continue
            table.add_row(escape(key), escape(json.dumps(value)))
        for test, spec in rows.items():
            table.add_row(escape(test), escape(f">= {spec.get('min')} {spec.get('unit', '')}"))
        parts.append(table)
    return Group(*parts)


def doctor_lines(report: DoctorReport) -> list[str]:
    """One line per check: ``ok`` or ``FAIL``, the check, what was found (and the fix)."""
    width = max((len(c.name) for c in report.checks), default=0)
    lines = []
    for c in report.checks:
        mark = "[green]ok  [/]" if c.ok else "[bold red]FAIL[/]"
        fix = f" [bold]->[/] {escape(c.fix)}" if c.fix and not c.ok else ""
        lines.append(f"{mark} {escape(c.name):<{width}}  {escape(c.detail)}{fix}")
    failed = sum(not c.ok for c in report.checks)
    lines.append("[green]all checks passed[/]" if not failed else
                 f"[bold red]{failed} of {len(report.checks)} checks failed[/]")
    return lines
