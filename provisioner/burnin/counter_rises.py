"""Counters that rose while a burn-in ran, from ``nvidia-smi -q -x`` before and after.

The agent's telemetry samples each GPU about once a second; a slowdown, a burst of PCIe
replays or of corrected memory errors between two samples leaves no trace there, but it
does in the driver's accumulated counters. Each GPU after the run is compared with the
same GPU (matched by PCI bus id) before it. A counter the GPU reports after the run but
that cannot be read, or has no value before the run to compare with, fails closed; a
counter the schema does not have (older drivers) or the GPU reports as N/A gives no
verdict.
"""

from __future__ import annotations

from typing import Any

from provisioner.burnin.thresholds import Verdict
from provisioner.probe.smi_xml import SmiGpu

# Correctable DRAM (HBM) errors during the run. No NVIDIA source gives a limit on their
# rise: DCGM's health watch judges only uncorrectable (DBE) counts (NVIDIA/DCGM
# modules/health/DcgmHealthWatch.cpp, MonitorMem); dcgmi diag checks single-bit errors
# only when its max_sbe_errors parameter is set, which by default it is not
# (nvvs/plugin_src/diagnostic/DiagnosticPlugin.cpp: DCGM_FP64_BLANK); Azure's
# check_gpu_ecc bounds the absolute count at 20,000,000 (DRAM_ERRORS_MAX in health.py).
# The one number NVIDIA wrote down is DCGM's own placeholder, common/DcgmGPUHardwareLimits.h
# "DCGM_LIMIT_MAX_SBE_RATE 10" ("dummy value until a real one is determined. JIRA:
# DCGM-445"), which DCGM does not apply. We take it: on a machine being certified, more
# than 10 new corrected errors in one burn-in is the conservative reason to look at the
# GPU. A profile may set its own (``dram_correctable_rise_max``).
DRAM_CORRECTABLE_RISE_MAX = 10
# PCIe replays during the run: dcgmi diag's PCIe test fails a GPU with more than
# max_pcie_replays replays while it runs, 80 by default (NVIDIA/DCGM
# nvvs/plugin_src/pcie/Pcie.cpp: AddDouble(PCIE_STR_MAX_PCIE_REPLAYS, 80.0); the
# parameter's meaning in nvvs/include/PluginStrings.h). A profile may set its own
# (``pcie_replays_max``).
PCIE_REPLAYS_MAX = 80
# The reasons health.py's BAD_THROTTLE fails that have a counter (HW slowdown has none).
BAD_COUNTERS = ("sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown")


def _rise(before: float, after: float) -> float:
    """How much a counter grew; one that went down was reset during the run (a GPU reset
    clears volatile counts), so what it holds now all came after the reset."""
    return after - before if after >= before else after


def _duration(us: float) -> str:
    if us < 1000:
        return f"{us:.0f} us"
    return f"{us / 1000:.1f} ms" if us < 1_000_000 else f"{us / 1_000_000:.1f} s"


def counter_rise_verdicts(g: SmiGpu, old: SmiGpu | None, profile: dict[str, Any]
                          ) -> list[Verdict]:
    """Verdicts for GPU ``g`` after the run against ``old``, the same GPU before it
    (None: the snapshot before the run has no such GPU)."""
    return [v for v in (_dram_rise(g, old, profile), _throttle_counters(g, old),
                        _replays(g, old, profile)) if v is not None]


def _dram_rise(g: SmiGpu, old: SmiGpu | None, profile: dict[str, Any]) -> Verdict | None:
    new = g.ecc_dram_correctable_volatile
    if new is None:
        return None
    limit = int(profile.get("dram_correctable_rise_max", DRAM_CORRECTABLE_RISE_MAX))
    before = old.ecc_dram_correctable_volatile if old is not None else None
    if before is None:
        return Verdict("ecc_dram_correctable_rise", g.index, None, "errors", float(limit),
                       False, f"ecc_dram_correctable_rise on GPU {g.index}: nvidia-smi "
                       "gave no volatile DRAM correctable count before the run, so its "
                       "rise cannot be checked")
    rise = _rise(before, new)
    ok = rise <= limit
    return Verdict("ecc_dram_correctable_rise", g.index, float(rise), "errors", float(limit),
                   ok, "" if ok else f"ecc_dram_correctable_rise on GPU {g.index}: {rise} "
                   f"correctable DRAM ECC errors during burn-in ({before} -> {new}) > {limit}")


def _throttle_counters(g: SmiGpu, old: SmiGpu | None) -> Verdict | None:
    """A bad clocks event reason's counter that grew: the GPU was slowed down during the
    run, for however short a time."""
    if not g.clocks_event_counters:
        return None  # a schema without the counters (driver 535.54.03's)
    risen: list[tuple[str, str]] = []
    unread: list[str] = []
    for name in BAD_COUNTERS:
        key = f"{name}_us"
        if key not in g.run_counters:
            continue
        new = g.run_counters[key]
        before = old.run_counters.get(key) if old is not None else None
        if new is None or before is None:
            unread.append(name)
        elif _rise(before, new) > 0:
            risen.append((name, _duration(_rise(before, new))))
    if not risen and not unread and not any(f"{n}_us" in g.run_counters
                                             for n in BAD_COUNTERS):
        unread = ["every bad reason's"]  # the element is there, holding none of them
    if risen:
        return Verdict("throttle_counters", g.index, float(len(risen)), "reasons", 0.0, False,
                       f"throttle_counters on GPU {g.index}: "
                       + ", ".join(f"{name} for {time}" for name, time in risen)
                       + " during burn-in (nvidia-smi's clocks event reason counters)")
    if unread:
        return Verdict("throttle_counters", g.index, None, "reasons", 0.0, False,
                       f"throttle_counters on GPU {g.index}: {', '.join(unread)} counter "
                       "could not be read before and after the run "
                       "(<clocks_event_reasons_counters>), so a slowdown between samples "
                       "cannot be ruled out")
    return Verdict("throttle_counters", g.index, 0.0, "reasons", 0.0, True, "")


def _replays(g: SmiGpu, old: SmiGpu | None, profile: dict[str, Any]) -> Verdict | None:
    if "pcie_replays" not in g.run_counters:
        return None
    limit = int(profile.get("pcie_replays_max", PCIE_REPLAYS_MAX))
    new = g.run_counters["pcie_replays"]
    before = old.run_counters.get("pcie_replays") if old is not None else None
    if new is None or before is None:
        return Verdict("pcie_replays", g.index, None, "replays", float(limit), False,
                       f"pcie_replays on GPU {g.index}: the PCIe replay counter could not "
                       "be read before and after the run (pci/replay_counter)")
    rise = _rise(before, new)
    old_roll = old.run_counters.get("pcie_replay_rollovers") if old is not None else None
    new_roll = g.run_counters.get("pcie_replay_rollovers")
    # A rollover means the replay counter itself wrapped: more replays than it can hold.
    rolled = new_roll - old_roll if new_roll is not None and old_roll is not None else 0
    ok = rise <= limit and rolled <= 0
    why = (f"the replay counter rolled over {rolled:.0f} times" if rolled > 0
           else f"{rise:.0f} replays ({before:.0f} -> {new:.0f}) > {limit}")
    return Verdict("pcie_replays", g.index, rise, "replays", float(limit), ok,
                   "" if ok else f"pcie_replays on GPU {g.index}: {why} during burn-in "
                   "(reseat the board or check the riser and slot)")
