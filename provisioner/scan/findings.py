"""What is wrong with a node now (health) and what changed since its last scan (drift)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from provisioner.probe.facts import UNUSABLE, HardwareFacts

if TYPE_CHECKING:
    from provisioner.catalogue import Sku

# XIDs that mean the GPU or its memory needs a person, per NVIDIA's XID catalogue:
# 48 DBE ECC, 63/64 row remapping, 74 NVLink, 79 fallen off the bus, 92 high SBE rate,
# 94/95 contained/uncontained ECC, 119/120 GSP errors.
CRITICAL_XIDS = frozenset({48, 63, 64, 74, 79, 92, 94, 95, 119, 120})


@dataclass(frozen=True)
class Finding:
    kind: str  # the fault or drift class, e.g. gpu-missing, pcie-downgrade
    severity: str  # info | warning | critical
    message: str
    drift: bool = False
    # What the finding is about, for remediation (``provisioner.remediate``): the XID
    # code of an ``xid`` finding and the GPU's PCI bus id where one GPU is named.
    xid: int | None = None
    gpu: str | None = None


def _gpu_name(gpu: Any) -> str:
    return f"GPU {gpu['index']} ({gpu['pci_bus_id']})"


def health_findings(facts: HardwareFacts, sku: Sku | None) -> list[Finding]:
    """Faults visible in one snapshot, with no history needed (``sku``: the node's
    catalogue entry, None when its SKU is unknown)."""
    out: list[Finding] = []
    expected = sku.gpu_count if sku is not None else None
    pci = len(facts.pci_gpus)
    if sku is not None and expected is not None and pci < expected:
        out.append(Finding("gpu-missing", "critical",
                           f"{pci} of {expected} GPUs on the PCI bus for SKU {sku.name}"))
    if facts.smi_status == "ok" and len(facts.gpus) < pci:
        seen = {g.pci_bus_id[-12:] for g in facts.gpus}
        lost = [p["bus_id"] for p in facts.pci_gpus if p["bus_id"][-12:] not in seen]
        out.append(Finding("gpu-missing", "critical",
                           f"GPU on PCI but not seen by the driver: {', '.join(lost)[:120]}"))
    unusable = [w for w in facts.warnings if w.startswith(UNUSABLE)]
    if unusable:
        # A node that reports a number no node could measure: named, never stored.
        out.append(Finding("unusable-output", "warning", "; ".join(unusable)[:300]))
    if facts.smi_status in ("failed", "unusable"):
        out.append(Finding("nvidia-smi", "warning",
                           next((w for w in facts.warnings if "nvidia-smi" in w),
                                "nvidia-smi output unusable")))
    if facts.smi_status != "ok":
        # No driver to ask: the PCIe link as the kernel trained it (sysfs) still tells.
        for pci_gpu in facts.pci_gpus:
            width, width_max = pci_gpu["link_width_current"], pci_gpu["link_width_max"]
            if width and width_max and width < width_max:
                out.append(Finding("pcie-downgrade", "critical",
                                   f"GPU {pci_gpu['bus_id']} PCIe link x{width}, capable of "
                                   f"x{width_max} (from sysfs)"))
    for gpu in (g.__dict__ for g in facts.gpus):
        name = _gpu_name(gpu)
        width, width_max = gpu["pcie_width_current"], gpu["pcie_width_max"]
        if width and width_max and width < width_max:
            out.append(Finding("pcie-downgrade", "critical",
                               f"{name} PCIe link x{width}, capable of x{width_max}"))
        gen, gen_max = gpu["pcie_gen_current"], gpu["pcie_gen_max"]
        if gen and gen_max and gen < gen_max:
            # GPUs lower the link speed when idle, so this alone is only a warning.
            out.append(Finding("pcie-downgrade", "warning",
                               f"{name} PCIe gen{gen}, capable of gen{gen_max} (may be idle "
                               "power saving; check under load)"))
        if (gpu["ecc_uncorrectable_volatile"] or 0) > 0 or \
                (gpu["ecc_uncorrectable_aggregate"] or 0) > 0:
            out.append(Finding("ecc-uncorrectable", "critical",
                               f"{name} uncorrectable ECC errors: volatile "
                               f"{gpu['ecc_uncorrectable_volatile']}, aggregate "
                               f"{gpu['ecc_uncorrectable_aggregate']}",
                               gpu=gpu["pci_bus_id"]))
        if gpu.get("ecc_memory_flags"):
            out.append(Finding("ecc-memory-state", "critical",
                               f"{name} memory: {', '.join(gpu['ecc_memory_flags'])}",
                               gpu=gpu["pci_bus_id"]))
        if gpu["remapped_rows_failure"]:
            out.append(Finding("row-remap-failure", "critical",
                               f"{name} row remapping failed (GPU needs RMA)",
                               gpu=gpu["pci_bus_id"]))
        elif gpu["remapped_rows_pending"]:
            out.append(Finding("row-remap-pending", "warning",
                               f"{name} row remap pending: reset the GPU",
                               gpu=gpu["pci_bus_id"]))
        if gpu["retired_pages_pending"]:
            out.append(Finding("retired-pages-pending", "warning",
                               f"{name} page retirement pending: reset the GPU",
                               gpu=gpu["pci_bus_id"]))
        if gpu["thermal_slowdown"]:
            out.append(Finding("thermal-throttle", "warning",
                               f"{name} thermal slowdown active at {gpu['temperature_c']} C"))
    for xid in facts.xids:
        severity = "critical" if xid["xid"] in CRITICAL_XIDS else "warning"
        out.append(Finding("xid", severity,
                           f"XID {xid['xid']} on {xid['pci']}: {xid['message'][:100]}",
                           xid=xid["xid"], gpu=xid["pci"]))
    if facts.nouveau_loaded:
        # Expected on a bare server; a problem once an NVIDIA driver is meant to load.
        driver = facts.nvidia_module_loaded or facts.smi_status != "absent"
        out.append(Finding("nouveau", "warning" if driver else "info",
                           "nouveau is loaded (blocks the NVIDIA driver)"))
    return out


def bmc_findings(facts: HardwareFacts, bmc_url: str, bmc_serial: str | None,
                 bmc_error: str | None) -> list[Finding]:
    """The node's BMC against its OS: a BMC that reports another system serial is
    mapped to another machine (its power actions would hit that one); a BMC that
    cannot be asked is said too."""
    if bmc_error:
        return [Finding("bmc", "warning", bmc_error[:300])]
    os_serial = (facts.dmi.get("product_serial") or "").strip()
    if bmc_serial and os_serial and bmc_serial.strip() != os_serial:
        return [Finding("bmc-serial-mismatch", "warning",
                        f"BMC {bmc_url} reports system serial {bmc_serial.strip()[:64]}, "
                        f"the OS {os_serial[:64]}: the BMC belongs to another machine")]
    return []


def _by_bus(gpus: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {g["pci_bus_id"][-12:]: g for g in gpus}


def drift_findings(prev: dict[str, Any], facts: HardwareFacts) -> list[Finding]:
    """Changes since the previous snapshot ``prev`` (a stored ``HardwareFacts`` dict)."""
    out: list[Finding] = []
    now = facts.to_dict()

    def add(kind: str, severity: str, message: str) -> None:
        out.append(Finding(kind, severity, message, drift=True))

    if len(now["pci_gpus"]) < len(prev.get("pci_gpus", [])):
        gone = {p["bus_id"] for p in prev["pci_gpus"]} - {p["bus_id"] for p in now["pci_gpus"]}
        add("gpu-missing", "critical", f"GPU gone from PCI since last scan: "
            f"{', '.join(sorted(gone))[:120]} ({len(prev['pci_gpus'])} -> "
            f"{len(now['pci_gpus'])})")
    if prev.get("smi_status") == "ok" and now["smi_status"] == "ok":
        before, after = _by_bus(prev["gpus"]), _by_bus(now["gpus"])
        for bus, old in before.items():
            new = after.get(bus)
            if new is None:
                add("gpu-missing", "critical", f"{_gpu_name(old)} {old['uuid']} no longer "
                    "reported by the driver")
                continue
            for key in ("serial", "uuid"):
                if old[key] and new[key] and old[key] != new[key]:
                    add(f"{key}-changed", "warning", f"{_gpu_name(new)} {key} changed "
                        f"{old[key]} -> {new[key]} (GPU replaced?)")
            if (new["pcie_width_current"] or 0) < (old["pcie_width_current"] or 0):
                add("pcie-downgrade", "critical", f"{_gpu_name(new)} PCIe width dropped "
                    f"x{old['pcie_width_current']} -> x{new['pcie_width_current']}")
            for key, kind in (("ecc_uncorrectable_aggregate", "ecc-uncorrectable"),
                              ("remapped_rows_uncorrectable", "row-remap")):
                if (new[key] or 0) > (old[key] or 0):
                    add(kind, "critical", f"{_gpu_name(new)} {key.replace('_', ' ')} rose "
                        f"{old[key] or 0} -> {new[key]}")
    if prev.get("driver_version") and now["driver_version"] and \
            prev["driver_version"] != now["driver_version"]:
        add("driver-changed", "info",
            f"driver {prev['driver_version']} -> {now['driver_version']}")
    old_serial = (prev.get("dmi") or {}).get("product_serial")
    if old_serial and now["dmi"].get("product_serial") and \
            old_serial != now["dmi"]["product_serial"]:
        add("system-serial-changed", "critical", f"system serial {old_serial} -> "
            f"{now['dmi']['product_serial']}: a different machine answers at this address?")
    if prev.get("memory_bytes") and now["memory_bytes"] and \
            now["memory_bytes"] < prev["memory_bytes"] * 0.99:
        add("memory-lost", "critical", f"memory {prev['memory_bytes'] // 2**30} GiB -> "
            f"{now['memory_bytes'] // 2**30} GiB")
    old_ib = {(p["device"], p["port"]): p for p in prev.get("ib_ports", [])}
    for port in now["ib_ports"]:
        was = old_ib.get((port["device"], port["port"]))
        if was and was["state"] == "ACTIVE" and port["state"] != "ACTIVE":
            add("ib-port-down", "critical", f"InfiniBand {port['device']}/{port['port']} "
                f"{was['state']} -> {port['state']}")
        elif was and (port["rate_gbps"] or 0) < (was["rate_gbps"] or 0):
            add("ib-rate-lower", "warning", f"InfiniBand {port['device']}/{port['port']} rate "
                f"{was['rate_gbps']} -> {port['rate_gbps']} Gb/s")
    return out


def new_only(prev: dict[str, Any] | None, findings: list[Finding],
             facts: HardwareFacts) -> list[Finding]:
    """Drop XID findings already reported by the previous scan (dmesg keeps them)."""
    if not prev:
        return findings
    old = {(x["pci"], x["xid"], x["message"]) for x in prev.get("xids", [])}
    fresh = {f"XID {x['xid']} on {x['pci']}: {x['message'][:100]}" for x in facts.xids
             if (x["pci"], x["xid"], x["message"]) not in old}
    return [f for f in findings if f.kind != "xid" or f.message in fresh]
