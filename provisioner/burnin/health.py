"""GPU health during a burn-in: what the agent saw before, during and after its tests.

The agent ships raw facts (``nvidia-smi -q -x`` before and after, the kernel's XID lines,
telemetry samples, NVLink link states); they are parsed and judged here, on the control
host, with the same hardened parsers the scan uses. A GPU fails when, during the run, it
logged a new XID, has uncorrectable ECC errors, has a row remap pending or failed, was
slowed down for heat or power, ran hotter than its profile allows, or has an inactive
NVLink link.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from provisioner.burnin.thresholds import Verdict
from provisioner.probe.smi_xml import SmiGpu, SmiParseError, parse_smi_xml, parse_xid_lines

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
    seen = Counter(as_dict(health.get("before")).get("xid_lines") or [])
    new_lines = []
    for line in as_dict(health.get("after")).get("xid_lines") or []:
        if seen[line]:
            seen[line] -= 1
        else:
            new_lines.append(line)
    xids: dict[int | None, list[dict[str, Any]]] = {}
    for x in parse_xid_lines(new_lines):
        xids.setdefault(by_bus.get(bus_key(x["pci"])), []).append(x)

    samples: dict[int, list[dict[str, Any]]] = {}
    telemetry = as_dict(doc.get("telemetry"))
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
        unc = g.ecc_uncorrectable_volatile or 0
        old = old_by_bus.get(bus_key(g.pci_bus_id))
        new_unc = unc - ((old.ecc_uncorrectable_volatile or 0) if old else 0)
        out.append(Verdict("ecc_uncorrectable", i, float(unc), "errors", 0.0, unc == 0,
                           "" if unc == 0 else f"ecc_uncorrectable on GPU {i}: {unc} "
                           f"uncorrectable ECC errors ({max(new_unc, 0)} new during burn-in)"))
        remap = [what for what, bad in (("pending", g.remapped_rows_pending),
                                        ("failed", g.remapped_rows_failure)) if bad]
        out.append(Verdict("row_remap", i, float(len(remap)), "", 0.0, not remap,
                           "" if not remap else f"row_remap on GPU {i}: row remapping "
                           f"{' and '.join(remap)} (reset the GPU; replace it if it fails "
                           "again)"))
        mine_s = samples.get(i, [])
        masks = [int(s["throttle"]) for s in mine_s if isinstance(s.get("throttle"), int)]
        reasons = sorted({n for m in masks for n in throttle_names(m)})
        if g.thermal_slowdown and "hw_thermal_slowdown" not in reasons:
            reasons.append("hw_thermal_slowdown")
        temps = [float(s["temp_c"]) for s in mine_s
                 if isinstance(s.get("temp_c"), (int, float))]
        if g.temperature_c is not None:
            temps.append(float(g.temperature_c))
        hottest = max(temps) if temps else None
        out.append(Verdict("throttle", i, float(len(reasons)), "reasons", 0.0, not reasons,
                           "" if not reasons else f"throttle on GPU {i}: {', '.join(reasons)} "
                           "active during burn-in" + (f" (up to {hottest:.0f} C)"
                                                      if hottest is not None else "")))
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
    return out


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
