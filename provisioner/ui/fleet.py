"""Rich views of the fleet: the ``gpuctl status`` dashboard."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from provisioner.ui.style import STATE_STYLE, styled

if TYPE_CHECKING:
    from rich.console import Console

    from provisioner.fleet.handoff import Applied
    from provisioner.fleet.pools import PoolView
    from provisioner.slurm.live import LiveHandoff


def _bar(value: int, total: int, width: int = 24) -> str:
    filled = round(width * value / total) if total else 0
    return "█" * filled + "·" * (width - filled)


def status_view(s: dict[str, Any], footer: str = "", selected: int | None = None,
                width: int = 160) -> Group:
    """The dashboard for the document ``fleet_status`` returns; side by side on a wide
    terminal, stacked below ``width`` 130."""
    cert = s["certification"]
    expiring_key = next(k for k in cert if k.startswith("expiring_"))
    head = Text.from_markup(
        f"[bold]gpuctl fleet[/]  {s['nodes']} nodes, {s['gpus']} GPUs  "
        f"[green]{cert['in_service']} in service[/], [green]{cert['certified']} certified[/], "
        f"[red]{cert['quarantined']} quarantined[/], [red]{cert['failed']} failed[/]  "
        f"[dim]{s['generated_at']}[/]")
    states = Table(title="Nodes by state", title_justify="left", expand=False)
    for c in ("STATE", "NODES", ""):
        states.add_column(c, justify="right" if c == "NODES" else "left")
    for state, n in sorted(s["states"].items(), key=lambda kv: -kv[1]):
        states.add_row(styled(state, STATE_STYLE.get(state)), str(n),
                       f"[dim]{_bar(n, s['nodes'], 16)}[/]")
    skus = Table(title="GPUs by SKU", title_justify="left")
    for c in ("SKU", "NODES", "GPUS", "CERTIFIED", "IN SERVICE"):
        skus.add_column(c, justify="left" if c == "SKU" else "right", no_wrap=True)
    for row in s["skus"]:
        skus.add_row(escape(row["sku"]), str(row["nodes"]), str(row["gpus"]),
                     str(row["certified_gpus"]), str(row["in_service_gpus"]))
    certs = Table(title="Certification", title_justify="left")
    certs.add_column("")
    certs.add_column("NODES", justify="right")
    days = expiring_key.removeprefix("expiring_").removesuffix("d")
    for label, value, style in (
            ("certified, not yet in service", cert["certified"], "green"),
            ("in service", cert["in_service"], "bold green"),
            ("certificate expired (re-certify)", cert["expired"], "bold red"),
            (f"expiring within {days} days", cert[expiring_key], "yellow"),
            ("drift/fault events, last 24 h", s["drift_events_24h"], "yellow")):
        certs.add_row(label, styled(str(value), style if value else None))
    att = s["attention"]
    attention = Table(title=f"Needs attention ({att['total']})", title_justify="left",
                      expand=True)
    for c in ("NODE", "STATE", "SINCE", "WHY"):
        attention.add_column(c, overflow="fold", ratio=4 if c == "WHY" else None)
    for k, a in enumerate(att["nodes"]):
        attention.add_row(("> " if k == selected else "") + escape(a["node"]),
                          styled(a["state"], STATE_STYLE.get(a["state"])),
                          (a["since"] or "-")[:16].replace("T", " "),
                          escape((a["reason"] or "")[:160]),
                          style="reverse" if k == selected else None)
    if att["total"] > len(att["nodes"]):
        attention.add_row("...", "", "", f"and {att['total'] - len(att['nodes'])} more: "
                          "gpuctl nodes list --state quarantined")
    runs = Table(title="Last runs", title_justify="left")
    for c in ("KIND", "RUN", "STATUS", "STARTED", "BY"):
        runs.add_column(c)
    for kind, r in s["last_runs"].items():
        runs.add_row(kind, str(r["id"]), styled(r["status"], "green" if r["status"] in
                                                ("done", "ok") else "yellow"),
                     (r["started_at"] or "")[:16].replace("T", " "), escape(r["actor"]))
    wide = width >= 130
    top = Table.grid(padding=(0, 3))
    if wide:
        top.add_row(states, skus, certs)
    else:
        for table in (states, skus, certs):
            top.add_row(table)
    bottom = Table.grid(padding=(0, 3))
    parts: list[Any] = [head, top, attention, bottom]
    if not s["nodes"]:
        parts.insert(1, Text("No nodes yet: gpuctl nodes add HOST, gpuctl nodes import FILE, "
                             "or gpuctl lab up to try it on simulated nodes.", style="yellow"))
    pools = None
    if s["pools"]:
        pools = Table(title="Pools", title_justify="left")
        for c in ("POOL", "SKU", "ASSIGNED", "USABLE", ""):
            pools.add_column(c, justify="left" if c in ("POOL", "SKU", "") else "right")
        for p in s["pools"]:
            short = p["usable"] < p["gpus"]
            pools.add_row(escape(p["name"]), escape(p["sku"]), f"{p['assigned']}/{p['gpus']}",
                          styled(str(p["usable"]), "yellow" if short else "green"),
                          f"[dim]{_bar(p['usable'], p['gpus'], 16)}[/]")
    if pools is not None and wide:
        bottom.add_row(runs, pools)
    else:
        bottom.add_row(runs)
        if pools is not None:
            bottom.add_row(pools)
    if (s.get("remediation") or {}).get("open"):
        parts.append(_remediation_table(s["remediation"]["open"]))
    if s.get("slurm") is not None:
        parts.append(_slurm_table(s["slurm"]))
    if footer:
        parts.append(Text(footer, style="dim"))
    return Group(*parts)


def _remediation_table(rows: list[dict[str, Any]]) -> Table:
    """Open remediations: where each stands, and why (a node the circuit breaker holds
    says so here)."""
    table = Table(title=f"Remediation ({len(rows)} open)", title_justify="left", expand=True)
    for c in ("NODE", "STATE", "FAULT", "RUNG", "SINCE", "WHY"):
        table.add_column(c, overflow="fold", ratio=4 if c == "WHY" else None)
    for r in rows:
        table.add_row(escape(r["node"]), styled(r["state"], "bold yellow" if
                                                r["state"] == "waiting-breaker" else None),
                      escape(r["fault"]), escape(r["rung"] or "-"),
                      (r["since"] or "-")[:16].replace("T", " "), escape(r["why"][:160]))
    return table


def _slurm_table(view: dict[str, Any]) -> Table | Text:
    """Each node's state in gpuctl and in Slurm; disagreements in red."""
    if view["error"]:
        return Text(f"Slurm: cannot read the node states: {view['error']}", style="red")
    n = len(view["disagreements"])
    table = Table(title=f"Slurm ({n} disagreement{'s' if n != 1 else ''})",
                  title_justify="left", expand=True)
    for c in ("NODE", "GPUCTL", "SLURM", "DISAGREEMENT / REASON"):
        table.add_column(c, overflow="fold", ratio=4 if c.startswith("DIS") else None)
    for row in view["nodes"]:
        why = row["disagreement"]
        table.add_row(escape(row["node"]), styled(row["gpuctl"], STATE_STYLE.get(row["gpuctl"])),
                      styled(row["slurm"], "red" if why else "green"),
                      styled(why or row["reason"], "red" if why else "dim"))
    return table


def status_panel(s: dict[str, Any], footer: str, selected: int | None = None,
                 width: int = 160) -> Panel:
    return Panel(status_view(s, footer, selected, width - 4), title="gpuctl status --watch",
                 border_style="blue")


def pools_table(views: list[PoolView]) -> Table:
    """``gpuctl pool list``: each pool, what it holds and on which nodes."""
    from provisioner.fleet.pools import USABLE  # noqa: PLC0415

    table = Table(title=f"{len(views)} pools", title_justify="left")
    for c in ("POOL", "SKU", "ASSIGNED", "USABLE", "SLICES"):
        table.add_column(c, overflow="fold")
    for v in views:
        table.add_row(escape(v.name), escape(v.sku), f"{v.assigned}/{v.gpus}", str(v.usable),
                      escape(", ".join(f"{a['node']}[{a['gpu_indices']}]"
                                       + ("" if a["state"] in USABLE else
                                          f" ({a['state']})") for a in v.allocations)))
    return table


def render_applied(out: Console, err: Console, target: str, applied: Applied) -> None:
    """``handoff <target> --apply``: the target's own table where it has one."""
    if target == "slurm":
        render_live_handoff(out, err, applied)  # type: ignore[arg-type]
        return
    r = applied.result
    for line in r.skipped:
        err.print(f"skipped {escape(line)}")
    for name, why in sorted(r.problems.items()):
        err.print(f"{escape(name)}: not handed off: {escape(why)}")
    err.print(f"{target}: {len(r.nodes)} nodes; {r.moved} moved to in-service "
              f"(run {r.run_id})", highlight=False)


def render_live_handoff(out: Console, err: Console, live: LiveHandoff) -> None:
    """``handoff slurm --apply``: what was written and done, each node's Slurm state,
    the smoke job, and the nodes not handed off with why."""
    r = live.result
    for line in r.skipped:
        err.print(f"skipped {escape(line)}")
    err.print(f"slurm: wrote {escape(r.written)}; controller: {live.action}",
              highlight=False)
    table = Table(title="Slurm after the hand-off", title_justify="left")
    for col_name in ("node", "slurm", "gpuctl", "note"):
        table.add_column(col_name)
    for name in sorted(set(r.nodes) | set(r.problems)):
        ok = name in r.nodes
        table.add_row(name, escape(live.slurm.get(name, "?")),
                      styled("in-service", STATE_STYLE.get("in-service")) if ok
                      else styled("certified", STATE_STYLE.get("certified")),
                      "" if ok else Text(r.problems[name], style="red"))
    out.print(table)
    if live.smoke is not None:
        s = live.smoke
        verdict = "[green]passed[/]" if s.passed else "[red]FAILED[/]"
        out.print(f"smoke job {escape(s.job_id or '-')}: {verdict}: {escape(s.reason)} "
                  f"({s.seconds:g} s; log {escape(s.log or '-')})")
    err.print(f"{r.moved} moved to in-service (run {r.run_id})", highlight=False)
