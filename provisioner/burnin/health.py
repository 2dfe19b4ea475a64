"""GPU health during a burn-in: what the agent saw before, during and after its tests.

The agent ships raw facts (``nvidia-smi -q -x`` before and after, the kernel's XID and
SXid lines, telemetry samples, NVLink link states); they are parsed and judged here, on
the control host, with the same hardened parsers the scan uses. A GPU fails when, during
the run, it logged a new XID, has uncorrectable ECC errors, too many correctable SRAM
errors or remapped rows, a row remap pending or failed, was slowed down for heat or
power, ran hotter than its profile allows, trained its PCIe link below its maximum under
load, is not registered with the NVSwitch fabric, or has an inactive NVLink link, or
when one of the driver's counters rose during the run (counter_rises.py); the node fails
on a new NVSwitch SXid. A check whose input could not be read fails.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from provisioner.burnin.counter_rises import counter_rise_verdicts
from provisioner.burnin.thresholds import Verdict
from provisioner.probe.smi_xml import SmiGpu, SmiParseError, parse_smi_xml, parse_xid_lines

# Azure HPC node health checks (customTests/azure_gpu_ecc.nhc and its configs, e.g.
# conf/nd96isr_h100_v5.conf "check_gpu_ecc 20000000 10000"): a GPU fails with more than
# 10000 correctable SRAM ECC errors, or more than 512 rows remapped for uncorrectable
# errors. A profile may set its own (``sram_correctable_max``, ``remapped_rows_max``).
SRAM_CORRECTABLE_MAX = 10000
REMAPPED_ROWS_MAX = 512
# Azure's check_gpu_ecc, as its H200 configuration calls it (conf/nd96isr_h200_v5.conf:
# `check_gpu_ecc 20000000 10000`; customTests/azure_gpu_ecc.nhc): more than 20,000,000
# DRAM correctable or uncorrectable errors (volatile or aggregate) fails, and so does
# any SRAM uncorrectable error (volatile or aggregate).
DRAM_ERRORS_MAX = 20_000_000

# Clocks-event reasons (NVML's nvmlClocksEventReason* bits) that mean the GPU was slowed
# by a fault or its environment. SW power cap (0x4) is not among them: a GPU running GEMM
# at its power limit is working as designed.
BAD_THROTTLE = {0x8: "hw_slowdown", 0x20: "sw_thermal_slowdown",
                0x40: "hw_thermal_slowdown", 0x80: "hw_power_brake_slowdown"}


def bus_key(bus: str) -> str:
    """``00000000:18:00.0``, ``0000:18:00`` and ``18:00.0`` all become ``18:00``."""
    parts = bus.strip().lower().split(".")[0].split(":")
    return ":".join(parts[-2:])


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _gpus(snapshot: Any) -> list[SmiGpu] | None:
    if not isinstance(snapshot, dict) or not isinstance(snapshot.get("smi_xml"), str):
        return None
    try:
        return parse_smi_xml(snapshot["smi_xml"]).gpus
    except SmiParseError:
        return None


def throttle_names(mask: int) -> list[str]:
    return [name for bit, name in BAD_THROTTLE.items() if mask & bit]


def _kernel_log_verdicts(health: dict[str, Any]) -> list[Verdict]:
    """The XID check reads the kernel log before and after the tests; if either could not
    be read, the check fails with why (it never passes on an empty list it did not see)."""
    broken = []
    for when in ("before", "after"):
        log = as_dict(as_dict(health.get(when)).get("kernel_log"))
        if not log.get("source"):
            broken.append(f"{when}: {log.get('error') or 'the agent reported no kernel log'}")
    if not broken:
        return []
    return [Verdict("kernel_log", None, None, "", None, False,
                    "kernel_log on node: the kernel log could not be read, so XIDs cannot be "
                    "checked (" + "; ".join(broken)[:300] + ")")]


def health_verdicts(doc: dict[str, Any], profile: dict[str, Any]) -> list[Verdict]:
    """Verdicts per GPU from the agent document's ``health``, ``telemetry`` and ``nvlink``
    sections. A node without an NVIDIA driver (no snapshot) gets none."""
    health = as_dict(doc.get("health"))
    before, after = _gpus(health.get("before")), _gpus(health.get("after"))
    out: list[Verdict] = []
    if after is None:
        if before is not None:
            out.append(Verdict("gpu_health", None, None, "", None, False,
                               "gpu_health on node: nvidia-smi stopped answering during "
                               "burn-in"))
        return out
    out += _kernel_log_verdicts(health)
    limits = profile.get("telemetry") or {}
    max_temp = limits.get("max_temp_c")
    by_bus = {bus_key(g.pci_bus_id): g.index for g in after}
    old_by_bus = {bus_key(g.pci_bus_id): g for g in before or []}

    # New XIDs: lines in the kernel log after the run that were not there before.
    xids: dict[int | None, list[dict[str, Any]]] = {}
    for x in parse_xid_lines(_new_lines(health, "xid_lines")):
        xids.setdefault(by_bus.get(bus_key(x["pci"])), []).append(x)

    samples: dict[int, list[dict[str, Any]]] = {}
    telemetry = as_dict(doc.get("telemetry"))
    # The agent says whether it could sample the GPUs at all (NVML or nvidia-smi). Where
    # it could, a field that is missing from every sample of a GPU is a check that was
    # not made, which fails; where it could not (a CPU-only lab node), the snapshots
    # before and after are all there is, as before.
    sampled = telemetry.get("available") is True
    source = str(telemetry.get("source") or "telemetry")[:40]
    if sampled and telemetry.get("error"):
        # The source stopped answering (a hung driver): one verdict for the node that
        # says so, not a missing field on every healthy GPU.
        out.append(Verdict("telemetry", None, None, "", None, False,
                           f"telemetry on node: {str(telemetry['error'])[:200]}, so "
                           "slowdowns and PCIe links during burn-in cannot be ruled out"))
        sampled = False
    for s in telemetry.get("samples") or []:
        if isinstance(s, dict) and isinstance(s.get("gpu"), int):
            samples.setdefault(s["gpu"], []).append(s)

    for g in after:
        i = g.index
        if profile.get("ecc_required"):
            modes = {g.ecc_mode, g.ecc_mode_pending}
            ok = modes == {"Enabled"}
            out.append(Verdict("ecc_mode", i, None, str(g.ecc_mode), None, ok,
                               "" if ok else f"ecc_mode on GPU {i}: ECC is {g.ecc_mode} "
                               f"(pending {g.ecc_mode_pending}); its SKU requires it on: "
                               "`nvidia-smi -i N -e 1`, then reset the GPU or reboot"))
        mine = xids.pop(i, [])
        out.append(Verdict("xid", i, float(len(mine)), "events", 0.0, not mine,
                           "" if not mine else f"xid on GPU {i}: XID {mine[0]['xid']} during "
                           f"burn-in ({mine[0]['message'].strip()[:120]})"))
        # Every uncorrectable count, volatile (since the last reset) and aggregate (the
        # GPU's lifetime), as the scan's ecc-uncorrectable finding judges them.
        unc = max(g.ecc_uncorrectable_volatile or 0, g.ecc_uncorrectable_aggregate or 0)
        old = old_by_bus.get(bus_key(g.pci_bus_id))
        new_unc = (g.ecc_uncorrectable_volatile or 0) - (
            (old.ecc_uncorrectable_volatile or 0) if old else 0)
        out.append(Verdict("ecc_uncorrectable", i, float(unc), "errors", 0.0, unc == 0,
                           "" if unc == 0 else f"ecc_uncorrectable on GPU {i}: {unc} "
                           f"uncorrectable ECC errors (volatile {g.ecc_uncorrectable_volatile},"
                           f" aggregate {g.ecc_uncorrectable_aggregate}; {max(new_unc, 0)} new "
                           "during burn-in)"))
        remap = [what for what, bad in (("pending", g.remapped_rows_pending),
                                        ("failed", g.remapped_rows_failure)) if bad]
        out.append(Verdict("row_remap", i, float(len(remap)), "", 0.0, not remap,
                           "" if not remap else f"row_remap on GPU {i}: row remapping "
                           f"{' and '.join(remap)} (reset the GPU; replace it if it fails "
                           "again)"))
        out += _counter_verdicts(g, profile)
        out += counter_rise_verdicts(g, old, profile)
        if profile.get("fabric_required"):
            out.append(_fabric_verdict(g))
        mine_s = samples.get(i, [])
        link = _pcie_under_load(g, mine_s, source if sampled else None)
        if link is not None:
            out.append(link)
        masks = [int(s["throttle"]) for s in mine_s if isinstance(s.get("throttle"), int)]
        reasons = sorted({n for m in masks for n in throttle_names(m)})
        if g.thermal_slowdown and "hw_thermal_slowdown" not in reasons:
            reasons.append("hw_thermal_slowdown")
        temps = [float(s["temp_c"]) for s in mine_s
                 if isinstance(s.get("temp_c"), (int, float))]
        if g.temperature_c is not None:
            temps.append(float(g.temperature_c))
        hottest = max(temps) if temps else None
        if sampled and not masks and not reasons:
            out.append(Verdict("throttle", i, None, "reasons", 0.0, False,
                               f"throttle on GPU {i}: {source} read no clocks event reasons "
                               f"in {len(mine_s)} samples, so a slowdown during burn-in "
                               "cannot be ruled out"))
        else:
            out.append(Verdict("throttle", i, float(len(reasons)), "reasons", 0.0,
                               not reasons, "" if not reasons else f"throttle on GPU {i}: "
                               f"{', '.join(reasons)} active during burn-in"
                               + (f" (up to {hottest:.0f} C)" if hottest is not None else "")))
        if max_temp is not None and hottest is not None:
            hot = hottest > float(max_temp)
            out.append(Verdict("temperature", i, hottest, "C", float(max_temp), not hot,
                               f"temperature on GPU {i}: {hottest:.0f} C > {max_temp} C"
                               if hot else ""))
    for where, lost in xids.items():  # XIDs naming a GPU that is no longer there
        out.append(Verdict("xid", where, float(len(lost)), "events", 0.0, False,
                           f"xid on PCI {lost[0]['pci']}: XID {lost[0]['xid']} during burn-in "
                           f"({lost[0]['message'].strip()[:120]})"))
    if before is not None and len(after) < len(before):
        out.append(Verdict("gpu_health", None, float(len(after)), "GPUs", float(len(before)),
                           False, f"gpu_health on node: {len(before) - len(after)} GPUs "
                           "disappeared during burn-in"))
    out += nvlink_verdicts(doc.get("nvlink"), profile)
    out += _sxid_verdicts(health)
    return out


def _new_lines(health: dict[str, Any], key: str) -> list[str]:
    """Lines of ``key`` in the after-snapshot that were not in the before-snapshot."""
    seen = Counter(as_dict(health.get("before")).get(key) or [])
    new = []
    for line in as_dict(health.get("after")).get(key) or []:
        if seen[line]:
            seen[line] -= 1
        elif isinstance(line, str):
            new.append(line)
    return new


def _counter_verdicts(g: SmiGpu, profile: dict[str, Any]) -> list[Verdict]:
    """Correctable SRAM errors and rows remapped for uncorrectable errors, against the
    profile's limits (Azure's public ones by default). Counters the GPU does not report
    (older schemas, parts without row remapping) give no verdict."""
    out = []
    sram_max = int(profile.get("sram_correctable_max", SRAM_CORRECTABLE_MAX))
    sram = max((v for v in (g.ecc_sram_correctable_volatile, g.ecc_sram_correctable_aggregate)
                if v is not None), default=None)
    if sram is not None:
        ok = sram <= sram_max
        out.append(Verdict("ecc_sram_correctable", g.index, float(sram), "errors",
                           float(sram_max), ok, "" if ok else
                           f"ecc_sram_correctable on GPU {g.index}: {sram} correctable SRAM "
                           f"ECC errors > {sram_max}"))
    sram_unc = max((v for v in (g.ecc_sram_uncorrectable_volatile,
                                g.ecc_sram_uncorrectable_aggregate) if v is not None),
                   default=None)
    if sram_unc is not None:
        ok = sram_unc == 0
        out.append(Verdict("ecc_sram_uncorrectable", g.index, float(sram_unc), "errors", 0.0,
                           ok, "" if ok else f"ecc_sram_uncorrectable on GPU {g.index}: "
                           f"{sram_unc} uncorrectable SRAM ECC errors (volatile "
                           f"{g.ecc_sram_uncorrectable_volatile}, aggregate "
                           f"{g.ecc_sram_uncorrectable_aggregate})"))
    dram_max = int(profile.get("dram_errors_max", DRAM_ERRORS_MAX))
    dram = {name: value for name, value in (
        ("correctable volatile", g.ecc_dram_correctable_volatile),
        ("correctable aggregate", g.ecc_dram_correctable_aggregate),
        ("uncorrectable aggregate", g.ecc_dram_uncorrectable_aggregate)) if value is not None}
    if dram:
        worst = max(dram, key=lambda k: dram[k])
        ok = dram[worst] <= dram_max
        out.append(Verdict("ecc_dram_errors", g.index, float(dram[worst]), "errors",
                           float(dram_max), ok, "" if ok else
                           f"ecc_dram_errors on GPU {g.index}: {dram[worst]} DRAM ECC errors "
                           f"({worst}) > {dram_max}"))
    flags = g.ecc_memory_flags
    if flags is not None:
        out.append(Verdict("ecc_memory_state", g.index, float(len(flags)), "flags", 0.0,
                           not flags, "" if not flags else f"ecc_memory_state on GPU "
                           f"{g.index}: {', '.join(flags)} (reset the GPU; replace it if "
                           "the memory is unrepairable)"))
    rows_max = int(profile.get("remapped_rows_max", REMAPPED_ROWS_MAX))
    rows = g.remapped_rows_uncorrectable
    if rows is not None:
        ok = rows <= rows_max
        out.append(Verdict("remapped_rows", g.index, float(rows), "rows", float(rows_max), ok,
                           "" if ok else f"remapped_rows on GPU {g.index}: {rows} rows "
                           f"remapped for uncorrectable errors > {rows_max}"))
    return out


def _fabric_verdict(g: SmiGpu) -> Verdict:
    """On NVSwitch SKUs every GPU must have completed its registration with the fabric
    manager (``nvidia-smi -q``: Fabric State Completed, Status Success); until then NVLink
    peer traffic through the switches does not work. Not readable is a failure too."""
    state, status = g.fabric_state, g.fabric_status
    ok = (state or "").lower() == "completed" and (status or "").lower() == "success"
    why = ("nvidia-smi reports no fabric state" if state is None else
           f"fabric state {state}, status {status or '?'}")
    return Verdict("fabric", g.index, None, str(state), None, ok, "" if ok else
                   f"fabric on GPU {g.index}: {why}; is nvidia-fabricmanager running "
                   "(systemctl status nvidia-fabricmanager)?")


def _pcie_under_load(g: SmiGpu, samples: list[dict[str, Any]], source: str | None
                     ) -> Verdict | None:
    """The PCIe link while the tests ran: an idle GPU may train its link down to save
    power, so the scan's idle reading proves little; under load it must run at its
    maximum width and generation. Needs samples with link fields (NVML or nvidia-smi);
    where the agent sampled the GPUs (``source``) but none of them has the link's width
    and generation, or nvidia-smi -q gives no maximum width, the check fails."""
    widths = [int(s["pcie_width"]) for s in samples if isinstance(s.get("pcie_width"), int)]
    gens = [int(s["pcie_gen"]) for s in samples if isinstance(s.get("pcie_gen"), int)]
    missing = [what for what, seen in (("width", widths), ("generation", gens)) if not seen]
    if source is not None and missing:
        return Verdict("pcie_link", g.index, None, "lanes", None, False,
                       f"pcie_link on GPU {g.index}: {source} read no PCIe link "
                       f"{' or '.join(missing)} in {len(samples)} samples, so the link under "
                       "load cannot be checked")
    if source is not None and widths and not g.pcie_width_max:
        return Verdict("pcie_link", g.index, float(min(widths)), "lanes", None, False,
                       f"pcie_link on GPU {g.index}: nvidia-smi -q gives no maximum link "
                       "width to compare the link under load with")
    if not widths or not g.pcie_width_max:
        return None
    low_width = min(widths) < g.pcie_width_max
    low_gen = bool(gens and g.pcie_gen_max and max(gens) < g.pcie_gen_max)
    ok = not low_width and not low_gen
    value = f"x{min(widths)}" + (f" gen{max(gens)}" if gens else "")
    want = f"x{g.pcie_width_max}" + (f" gen{g.pcie_gen_max}" if g.pcie_gen_max else "")
    return Verdict("pcie_link", g.index, float(min(widths)), "lanes", float(g.pcie_width_max),
                   ok, "" if ok else f"pcie_link on GPU {g.index}: {value} under load, its "
                   f"maximum is {want} (reseat the board or check the riser)")


# NVSwitch errors in the kernel log, as the nvswitch driver writes them, e.g.
# "nvidia-nvswitch3: SXid (PCI:0000:05:00.0): 12028, Non-fatal, Link 32 egress ..."
_SXID = re.compile(r"(nvidia-nvswitch\d*): SXid \(PCI:([0-9a-fA-F:.]+)\): (\d+),\s*(.*)")


def _sxid_verdicts(health: dict[str, Any]) -> list[Verdict]:
    """A new NVSwitch SXid during the run fails the node (the switch is not one GPU's)."""
    found = [m for m in (_SXID.search(line) for line in _new_lines(health, "sxid_lines")) if m]
    if not found:
        return []
    first = found[0]
    return [Verdict("nvswitch_sxid", None, float(len(found)), "events", 0.0, False,
                    f"nvswitch_sxid on node: {len(found)} new SXid during burn-in, first "
                    f"{first.group(3)} on {first.group(1)} (PCI {first.group(2)}): "
                    f"{first.group(4)[:120]}")]


def health_evidence(doc: dict[str, Any]) -> dict[str, Any]:
    """What a quarantine rests on, small enough to keep: the kernel log's new XID and
    SXid lines, and each GPU's ECC, row-remap and fabric counters before and after, with
    the counters whose rise counter_rises.py judges."""
    health = as_dict(doc.get("health"))

    def counters(snapshot: Any) -> list[dict[str, Any]] | None:
        gpus = _gpus(snapshot)
        if gpus is None:
            return None
        return [{"index": g.index, "uuid": g.uuid, "pci_bus_id": g.pci_bus_id,
                 "ecc_uncorrectable_volatile": g.ecc_uncorrectable_volatile,
                 "ecc_uncorrectable_aggregate": g.ecc_uncorrectable_aggregate,
                 "ecc_sram_correctable_aggregate": g.ecc_sram_correctable_aggregate,
                 "remapped_rows_uncorrectable": g.remapped_rows_uncorrectable,
                 "remapped_rows_pending": g.remapped_rows_pending,
                 "remapped_rows_failure": g.remapped_rows_failure,
                 "ecc_sram_uncorrectable_aggregate": g.ecc_sram_uncorrectable_aggregate,
                 "ecc_dram_correctable_aggregate": g.ecc_dram_correctable_aggregate,
                 "ecc_dram_correctable_volatile": g.ecc_dram_correctable_volatile,
                 "run_counters": g.run_counters,
                 "ecc_memory_flags": g.ecc_memory_flags,
                 "fabric_state": g.fabric_state} for g in gpus]

    return {"new_xid_lines": _new_lines(health, "xid_lines")[:100],
            "new_sxid_lines": _new_lines(health, "sxid_lines")[:100],
            "kernel_log": {when: as_dict(as_dict(health.get(when)).get("kernel_log"))
                           for when in ("before", "after")},
            "before": counters(health.get("before")), "after": counters(health.get("after"))}


def nvlink_verdicts(status: Any, profile: dict[str, Any]) -> list[Verdict]:
    """One verdict per GPU with NVLink: every link must be active, and there must be as
    many as the profile's ``nvlink_links`` (a GPU reporting fewer lost links)."""
    if not isinstance(status, list):
        return []
    want = (profile.get("telemetry") or {}).get("nvlink_links")
    out = []
    for entry in status:
        if not isinstance(entry, dict) or not isinstance(entry.get("links"), list):
            continue
        gpu: int | None = entry["gpu"] if isinstance(entry.get("gpu"), int) else None
        links = [lk for lk in entry["links"] if isinstance(lk, dict)]
        if not links and not want:
            continue  # a GPU without NVLink (PCIe parts)
        inactive = [lk.get("link") for lk in links if not lk.get("active")]
        active = len(links) - len(inactive)
        short = want is not None and len(links) < int(want)
        reason = ""
        if inactive:
            reason = (f"nvlink on GPU {gpu}: link{'s' if len(inactive) > 1 else ''} "
                      f"{', '.join(str(x) for x in inactive)} inactive")
        elif short:
            reason = f"nvlink on GPU {gpu}: {len(links)} links, {want} expected"
        out.append(Verdict("nvlink", gpu, float(active), "links",
                           float(want) if want is not None else float(len(links)),
                           not reason, reason))
    return out
