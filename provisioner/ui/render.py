"""Turn core result objects into rich tables; ``--json`` prints the same objects."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from provisioner.ui.style import STATE_STYLE, print_json, styled

if TYPE_CHECKING:  # types only: importing these would load Ansible and paramiko
    from provisioner.bmc.power import BmcInfo
    from provisioner.inventory.registry import NodeDetail, NodeView
    from provisioner.lab.nodes import LabNode
    from provisioner.provision.run import NodeProgress, ProvisionSummary
    from provisioner.scan.run import NodeScanResult, ScanSummary

__all__ = ["STATE_STYLE", "print_json", "styled"]

OUTCOME_STYLE = {"ok": "green", "drift": "yellow", "fault": "bold red", "unreachable": "red",
                 "refused": "magenta", "error": "red"}
SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "dim"}


def nodes_table(views: list[NodeView]) -> Table:
    """``gpuctl nodes list``. Names and states are never wrapped (an admin copies
    names and scans states); on a narrow terminal the other columns fold or are cut,
    and the last scan is shown to the minute."""
    table = Table(title=f"{len(views)} nodes", title_justify="left")
    for col, opts in (("NODE", {"no_wrap": True, "min_width": 4}),
                      ("ADDRESS", {"overflow": "fold"}),
                      ("STATE", {"no_wrap": True}),
                      ("SKU", {"overflow": "fold"}),
                      ("GPUS", {"no_wrap": True, "justify": "right"}),
                      ("LABELS", {"overflow": "fold", "ratio": 1}),
                      ("LAST SCAN", {"no_wrap": True, "overflow": "ellipsis"})):
        table.add_column(col, **opts)
    for v in views:
        state = styled(v.state, STATE_STYLE.get(v.state)) + (
            " [magenta](host key!)[/]" if v.hostkey_mismatch else "")
        scanned = v.last_scan[:16].replace("T", " ") if v.last_scan else "never"
        table.add_row(escape(v.name), f"{v.address}:{v.port}", state, escape(v.sku or "-"),
                      "-" if v.gpus is None else str(v.gpus),
                      escape(",".join(f"{k}={val}" for k, val in sorted(v.labels.items()))
                             or "-"), scanned)
    return table


def node_detail(console: Console, d: NodeDetail) -> None:
    v, s = d.node, d.snapshot
    console.print(f"[bold]{escape(v.name)}[/]  {v.user}@{v.address}:{v.port}  state "
                  f"{styled(v.state, STATE_STYLE.get(v.state))}  SKU {v.sku or '-'}")
    if v.bmc:
        console.print(f"  bmc     {escape(v.bmc)}")
    if s:
        def t(key: str, default: str = "?") -> str:
            return escape(str(s.get(key) or default))

        mem = f"{s['memory_bytes'] / 2**30:.0f} GiB" if s.get("memory_bytes") else "?"
        nouveau = "loaded" if s["nouveau_loaded"] else "not loaded"
        console.print(f"  system  {t('system_vendor')} {t('system_product')} "
                      f"serial {t('system_serial')}")
        console.print(f"  os      {t('os_name')}  kernel {t('kernel')}  "
                      f"secure boot {t('secure_boot')}  nouveau {nouveau}")
        console.print(f"  cpu     {t('cpu_model')} ({s['cpu_sockets']} sockets, "
                      f"{s['cpu_cores']} cores)  memory {mem}")
        console.print(f"  driver  {t('driver_version', 'none')}  CUDA {t('cuda_version', '-')}"
                      f"  GPUs {s['gpu_count']} (PCI {s['pci_gpu_count']})  "
                      f"scanned {s['taken_at']}")
    else:
        console.print("  never scanned")
    if d.gpus:
        table = Table(title="GPUs", title_justify="left")
        for col in ("#", "MODEL", "BUS", "SERIAL", "MEM MiB", "PCIe", "ECC/MIG", "UNC ECC",
                    "REMAP", "TEMP", "VBIOS"):
            table.add_column(col)
        for g in d.gpus:
            width = f"gen{g['pcie_gen_current']}x{g['pcie_width_current']}" \
                    f"/{g['pcie_gen_max']}x{g['pcie_width_max']}"
            if (g["pcie_width_current"] or 0) < (g["pcie_width_max"] or 0):
                width = f"[bold red]{width}[/]"
            unc = g["ecc_uncorrectable_aggregate"]
            remap = "FAIL" if g["remapped_rows_failure"] else (
                "pending" if g["remapped_rows_pending"] else
                str(g["remapped_rows_uncorrectable"] if g["remapped_rows_uncorrectable"]
                    is not None else "-"))
            table.add_row(str(g["index"]), escape(g["model"] or "?"), g["pci_bus_id"],
                          escape(g["serial"] or "-"), str(g["memory_mib"] or "-"), width,
                          f"{g['ecc_mode'] or '-'}/{g['mig_mode'] or '-'}",
                          f"[bold red]{unc}[/]" if unc else str(unc if unc is not None else "-"),
                          remap, f"{g['temperature_c']}C" if g["temperature_c"] else "-",
                          escape(g["vbios"] or "-"))
        console.print(table)
    ib = [n for n in d.nics if n["kind"] == "infiniband" and n["ib_device"]]
    eth = [n for n in d.nics if n["kind"] == "ethernet"]
    if eth or ib:
        parts = [f"{n['name']} {n['speed_mbps'] // 1000 if n['speed_mbps'] else '?'}G "
                 f"{n['state']}" for n in eth]
        parts += [f"{n['name']} {n['ib_rate_gbps'] or '?'}Gb/s {n['state']}" for n in ib]
        console.print("  network " + escape(", ".join(parts)))
    if d.disks:
        console.print("  disks   " + escape(", ".join(
            f"{x['name']} {(x['size_bytes'] or 0) / 1e12:.1f} TB {x['model'] or ''}".strip()
            for x in d.disks)))
    if d.burnin:
        b = d.burnin
        verdict = "[green]passed[/]" if not b["failed"] else f"[bold red]{b['failed']} failed[/]"
        console.print(f"  burn-in run {b['run']} ({b['level']}, {b['at']}): {b['tests']} tests,"
                      f" {verdict}" + "".join(f"\n    - {escape(f)}" for f in b["failures"]))
    if d.certificate:
        c = d.certificate
        state = "[bold red]EXPIRED, re-run burn-in[/]" if c["expired"] else "[green]valid[/]"
        console.print(f"  certificate {state}: run {c['run']}, profile {escape(c['profile'])}, "
                      f"driver {escape(c['driver_version'] or '-')}, CUDA "
                      f"{escape(c['cuda_version'] or '-')}, issued {c['issued_at']}, expires "
                      f"{c['expires_at'] or 'never'}")
    elif d.node.state not in ("registered", "discovered"):
        console.print("  certificate none")
    if d.remediation:
        r = d.remediation
        console.print(f"  remediation {r['id']} [bold yellow]{escape(r['state'])}[/] "
                      f"({escape(r['fault'])}, rung {escape(r['rung'] or '-')}, since "
                      f"{r['since']}): {escape(r['why'])}")
    table = Table(title="History", title_justify="left")
    for col in ("WHEN", "KIND", "WHAT", "BY", "RUN"):
        table.add_column(col, overflow="fold")
    for e in d.events:
        what = e["reason"]
        if e["kind"] == "state":
            what = f"{e['from'] or '-'} -> {e['to']}: {what}"
        table.add_row(e["at"], e["kind"], styled(what, SEVERITY_STYLE.get(e["severity"])),
                      e["actor"],
                      str(e["run"] or ""))
    console.print(table)


def scan_line(result: NodeScanResult) -> str:
    outcome = styled(f"{result.outcome:>11}", OUTCOME_STYLE.get(result.outcome))
    return f"{outcome} {escape(result.name)} {escape(result.message)}"


def scan_summary(summary: ScanSummary) -> Table:
    counts = summary.counts()
    title = f"scan run {summary.run_id}: " + ", ".join(
        f"{n} {o}" for o, n in counts.items() if n)
    table = Table(title=title, title_justify="left")
    for col in ("NODE", "RESULT", "GPUS", "SECONDS", "DETAIL"):
        table.add_column(col, overflow="fold")
    for r in summary.results:
        gpus = "-" if r.gpus is None else str(r.gpus)
        table.add_row(r.name, styled(r.outcome, OUTCOME_STYLE.get(r.outcome)), gpus,
                      f"{r.seconds:.2f}", escape(r.message or ""))
    return table


def lab_table(nodes: list[LabNode]) -> Table:
    table = Table(title=f"lab: {len(nodes)} nodes", title_justify="left")
    for col in ("NODE", "ADDRESS", "PROFILE", "GPUS", "RUNNING", "SSHD", "BMC", "FAULTS"):
        table.add_column(col)
    for n in nodes:
        bmc = "-" if not n.bmc else n.bmc if n.bmc_up else f"[red]{n.bmc} (down)[/]"
        table.add_row(n.name, f"{n.address}:{n.port}", n.profile, str(n.gpus),
                      "yes" if n.running else "[red]no[/]", "up" if n.sshd and n.running
                      else "[red]down[/]", bmc, ", ".join(n.faults) or "-")
    return table


PROGRESS_STYLE = {"pending": "dim", "running": "cyan", "ok": "green", "failed": "bold red",
                  "unreachable": "red"}


def progress_table(rows: list[NodeProgress]) -> Table:
    """The live per-node view while a provision runs."""
    table = Table(title="provisioning", title_justify="left")
    for col in ("NODE", "STATUS", "OK", "CHANGED", "FAILED", "CURRENT TASK"):
        table.add_column(col, overflow="ellipsis", no_wrap=True)
    for r in rows:
        table.add_row(r.name, styled(r.status, PROGRESS_STYLE.get(r.status)), str(r.ok),
                      str(r.changed), str(r.failed), escape(r.task))
    return table


def provision_summary(summary: ProvisionSummary) -> Table:
    mode = " (dry run)" if summary.check else ""
    ok = sum(n.status == "ok" for n in summary.nodes)
    title = (f"provision run {summary.run_id}{mode}: {summary.status}, {ok} ok, "
             f"{len(summary.failed)} failed, {summary.changed} changed")
    table = Table(title=title, title_justify="left")
    for col in ("NODE", "RESULT", "OK", "CHANGED", "SKIPPED", "FAILED", "REASON"):
        table.add_column(col, overflow="fold")
    for n in summary.nodes:
        table.add_row(n.name, styled(n.status, PROGRESS_STYLE.get(n.status)), str(n.ok),
                      str(n.changed), str(n.skipped), str(n.failed), escape(n.reason))
    return table


HEALTH_STYLE = {"OK": "green", "Warning": "yellow", "Critical": "bold red"}


def bmc_info_view(console: Console, info: BmcInfo) -> None:
    """``gpuctl bmc info``."""
    def t(value: object) -> str:
        return escape(str(value)) if value not in (None, "") else "-"

    serial = t(info.serial)
    if info.serial_matches is False:
        serial += f" [bold red](the OS reports {t(info.os_serial)}: wrong BMC?)[/]"
    elif info.serial_matches:
        serial += " [dim](as the OS reports)[/]"
    console.print(f"[bold]{escape(info.node)}[/]  BMC {escape(info.url)}  system "
                  f"{t(info.system)}  power {t(info.power_state)}")
    console.print(f"  system    {t(info.manufacturer)} {t(info.model)}  serial {serial}")
    console.print(f"  firmware  BIOS {t(info.bios_version)}  BMC {t(info.bmc_firmware)}")
    health, rollup = info.health or "-", info.health_rollup or "-"
    console.print(f"  health    {styled(health, HEALTH_STYLE.get(health))}  rollup "
                  f"{styled(rollup, HEALTH_STYLE.get(rollup))}")
    if info.log_service is None:
        console.print("  log       no log service")
        return
    if not info.log_entries:
        console.print(f"  log       {escape(info.log_service)}: no entries")
        return
    table = Table(title=f"{info.log_service}: newest {len(info.log_entries)}",
                  title_justify="left")
    for col in ("#", "CREATED", "SEVERITY", "MESSAGE"):
        table.add_column(col, overflow="fold")
    for e in info.log_entries:
        severity = e.severity or "-"
        table.add_row(escape(e.id), t(e.created), styled(severity, HEALTH_STYLE.get(severity)),
                      escape(e.message))
    console.print(table)
