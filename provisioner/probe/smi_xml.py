"""Parse ``nvidia-smi -q -x`` output (schemas v10-v13) into per-GPU facts.

The XML comes from a node and is untrusted: it is parsed with defusedxml (no entity
expansion, no external references), size-capped by the caller, and any field a GPU
does not report (``N/A``, missing element) becomes ``None``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from provisioner.errors import GpuctlError

MAX_GPUS = 64
_NUMBER = re.compile(r"^-?[0-9]{1,400}(?:\.[0-9]{1,400})?")


class SmiParseError(GpuctlError):
    """The nvidia-smi output is not the XML it should be."""


@dataclass
class SmiGpu:
    index: int
    model: str | None
    uuid: str | None
    serial: str | None
    pci_bus_id: str
    vbios: str | None
    memory_mib: int | None
    pcie_gen_current: int | None
    pcie_gen_max: int | None
    pcie_width_current: int | None
    pcie_width_max: int | None
    ecc_mode: str | None
    mig_mode: str | None
    retired_pages_sbe: int | None
    retired_pages_dbe: int | None
    retired_pages_pending: bool | None
    remapped_rows_correctable: int | None
    remapped_rows_uncorrectable: int | None
    remapped_rows_pending: bool | None
    remapped_rows_failure: bool | None
    ecc_uncorrectable_volatile: int | None
    ecc_uncorrectable_aggregate: int | None
    temperature_c: int | None
    power_limit_w: float | None
    thermal_slowdown: bool | None
    mig_devices: int = 0
    minor_number: int | None = None  # its /dev/nvidiaN (not PCI order: gres.html)
    ecc_mode_pending: str | None = None  # what ECC will be after the next reset
    ecc_sram_correctable_volatile: int | None = None
    ecc_sram_correctable_aggregate: int | None = None
    # NVSwitch systems: the GPU's registration with the fabric manager (NVML's
    # nvmlGpuFabricInfo_t: state Not Started / In Progress / Completed, then a status).
    fabric_state: str | None = None
    fabric_status: str | None = None
    persistence_mode: str | None = None  # Enabled | Disabled
    # Driver 580's schema (tests/data/h200-nvidia-smi-q-x.xml): SRAM uncorrectable errors
    # split into parity and SEC-DED counts, DRAM correctable counts, and the memory's
    # state flags (sram_threshold_exceeded, unrepairable_memory, *_repair_pending) of
    # which those set to Yes are listed.
    ecc_sram_uncorrectable_volatile: int | None = None
    ecc_sram_uncorrectable_aggregate: int | None = None
    ecc_dram_uncorrectable_aggregate: int | None = None
    ecc_dram_correctable_volatile: int | None = None
    ecc_dram_correctable_aggregate: int | None = None
    ecc_memory_flags: list[str] | None = None  # None: the schema has none of them
    # Counters that only grow, compared between the snapshots taken before and after a
    # burn-in (see _run_counters): name -> count; None where the element holds something
    # other than a count (unreadable, so a check on it fails closed); a name absent where
    # the schema has no such element or the GPU reports N/A. Counts are floats: they may
    # pass the 32-bit limit of the columns this dataclass's ints go to, and are kept in
    # JSON only; below 2**53 a float holds every integer exactly.
    run_counters: dict[str, float | None] = field(default_factory=dict)
    clocks_event_counters: bool = False  # the schema has <clocks_event_reasons_counters>


@dataclass
class SmiReport:
    driver_version: str | None
    cuda_version: str | None
    gpus: list[SmiGpu] = field(default_factory=list)


def _text(el: Element | None, path: str) -> str | None:
    if el is None:
        return None
    node = el.find(path)
    if node is None or node.text is None:
        return None
    value = node.text.strip()
    return None if value in ("", "N/A", "[N/A]", "Unknown Error", "[Unknown Error]") else value


# What no GPU reports, whatever its driver: a value outside is a broken or hostile
# document, and the node's nvidia-smi output is unusable (naming the field), not stored.
# Counters are stored in 32-bit columns (PostgreSQL's INTEGER).
LIMIT = 2.0**31 - 1
RANGES: dict[str, tuple[float, float]] = {
    "temperature/gpu_temp": (-100, 300), "pcie_gen/current_link_gen": (0, 16),
    "pcie_gen/max_link_gen": (0, 16), "link_widths/current_link_width": (0, 64),
    "link_widths/max_link_width": (0, 64), "fb_memory_usage/total": (0, 1 << 24),
    "minor_number": (0, 4095),
}


def _number(el: Element | None, path: str) -> float | None:
    """The leading number of a field's text ("81 C", "4.5 W"), range-checked.

    Raises:
        SmiParseError: the number is out of range (the message names the field).
    """
    value = _text(el, path)
    if value is None:
        return None
    match = _NUMBER.match(value)
    if not match:
        return None
    number = float(match.group(0))
    low, high = RANGES.get(path, (-LIMIT, LIMIT))
    if not low <= number <= high:  # also false for inf and nan
        raise SmiParseError(f"nvidia-smi -q -x: <{path}> is {match.group(0)[:24]!r}, "
                            f"outside {low:g}..{high:g}")
    return number


def _int(el: Element | None, path: str) -> int | None:
    value = _number(el, path)
    return int(value) if value is not None else None


def _yes(el: Element | None, path: str) -> bool | None:
    value = _text(el, path)
    if value is None:
        return None
    return value.lower() in ("yes", "active", "enabled", "true")


def _first(el: Element, *paths: str) -> Element | None:
    for path in paths:
        found = el.find(path)
        if found is not None:
            return found
    return None


def _sum(values: list[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    if sum(known) > LIMIT:
        raise SmiParseError(f"nvidia-smi -q -x: ECC error counts sum to {sum(known)}, "
                            f"over {LIMIT:.0f}")
    return sum(known) if known else None


def _sram_uncorrectable(gpu: Element, scope: str) -> int | None:
    """SRAM uncorrectable errors: ``sram_uncorrectable`` (schema v12, drivers before
    580), or its parts ``sram_uncorrectable_parity`` + ``sram_uncorrectable_secded``
    (580 and later)."""
    block = gpu.find(f"ecc_errors/{scope}")
    if block is None:
        return None
    whole = _int(block, "sram_uncorrectable")
    if whole is not None:
        return whole
    return _sum([_int(block, "sram_uncorrectable_parity"),
                 _int(block, "sram_uncorrectable_secded")])


def _ecc_uncorrectable(gpu: Element, scope: str) -> int | None:
    block = gpu.find(f"ecc_errors/{scope}")
    if block is None:
        return None
    # v12+: dram_/sram_uncorrectable (580+: SRAM split in two); older: double_bit/total.
    return _sum([_int(block, "dram_uncorrectable"), _sram_uncorrectable(gpu, scope),
                 _int(block, "double_bit/total")])


# Flags of the memory's state in driver 580's <ecc_errors> (Yes is bad).
MEMORY_FLAGS = ("sram_threshold_exceeded", "unrepairable_memory")


def _memory_flags(gpu: Element) -> list[str] | None:
    block = gpu.find("ecc_errors")
    flags = [el for el in (block.iter() if block is not None else [])
             if el.tag in MEMORY_FLAGS or el.tag.endswith("_repair_pending")]
    if not flags:
        return None
    return sorted({el.tag for el in flags if (el.text or "").strip().lower() == "yes"})


# Driver 580's <clocks_event_reasons_counters> (tests/data/h200-nvidia-smi-q-x.xml, e.g.
# "<clocks_event_reasons_counters_hw_therm_slowdown>0 us<"): how long each clocks event
# reason has been active, accumulated. They are NVML's field values
# NVML_FI_DEV_CLOCKS_EVENT_REASON_{SW_POWER_CAP,SYNC_BOOST,SW_THERM_SLOWDOWN,
# HW_THERM_SLOWDOWN,HW_POWER_BRAKE_SLOWDOWN} (NVIDIA/DCGM sdk/nvidia/nvml/dcgm_nvml.h,
# "Field values for Clock Throttle Reason Counters"); NVML has no such counter for HW
# slowdown (0x8), which only the 1 Hz samples see. The driver 535.54.03 capture
# (tests/data/a100-sxm4-80gb-mig.xml) has no such element; no NVIDIA source we could read
# names the branch that added it. Names follow health.py's BAD_THROTTLE.
COUNTER_BLOCK = "clocks_event_reasons_counters"
COUNTER_NAMES = {"sw_power_cap": "sw_power_cap", "sync_boost": "sync_boost",
                 "sw_therm_slowdown": "sw_thermal_slowdown",
                 "hw_therm_slowdown": "hw_thermal_slowdown",
                 "hw_power_brake": "hw_power_brake_slowdown"}
_MICROSECONDS = re.compile(r"^([0-9]{1,20}) us$")
_COUNT = re.compile(r"^([0-9]{1,20})$")


def _count(node: Element, pattern: re.Pattern[str]) -> float | None | bool:
    """A counter's value; False where the GPU reports none (N/A); None where the text is
    not a count (unreadable). Counters may exceed the 32-bit LIMIT (microseconds of power
    capping since boot do within an hour), so they are held to 2**53 (285 years in
    microseconds), the float's exact range, instead."""
    text = (node.text or "").strip()
    if text in ("N/A", "[N/A]"):
        return False
    match = pattern.match(text)
    if not match or int(match.group(1)) >= 2**53:
        return None
    return float(match.group(1))


def _run_counters(gpu: Element) -> tuple[dict[str, float | None], bool]:
    """The counters a burn-in compares before and after: the PCIe replay counter and its
    rollovers (``pci/replay_counter``, ``pci/replay_rollover_counter``, in every schema
    this parser reads) and, where the schema has them, the clocks event reason counters
    in microseconds (``<reason>_us``)."""
    out: dict[str, float | None] = {}
    for name, path in (("pcie_replays", "pci/replay_counter"),
                       ("pcie_replay_rollovers", "pci/replay_rollover_counter")):
        node = gpu.find(path)
        value = _count(node, _COUNT) if node is not None else False
        if value is not False:
            out[name] = None if value is None else float(value)
    block = gpu.find(COUNTER_BLOCK)
    for node in block if block is not None else []:
        suffix = node.tag.removeprefix(COUNTER_BLOCK + "_")
        value = _count(node, _MICROSECONDS)
        if value is not False:
            out[COUNTER_NAMES.get(suffix, suffix[:40]) + "_us"] = \
                None if value is None else float(value)
    return out, block is not None


def _gpu(index: int, gpu: Element) -> SmiGpu:
    link = gpu.find("pci/pci_gpu_link_info")
    remap = gpu.find("remapped_rows")
    reasons = _first(gpu, "clocks_event_reasons", "clocks_throttle_reasons")
    thermal = None
    if reasons is not None:
        flags = [_yes(r, ".") for r in reasons if "thermal" in r.tag]
        thermal = any(f for f in flags if f) if flags else None
    power = _first(gpu, "gpu_power_readings", "power_readings")
    counters, has_event_counters = _run_counters(gpu)
    return SmiGpu(
        index=index,
        model=_text(gpu, "product_name"),
        uuid=_text(gpu, "uuid"),
        serial=_text(gpu, "serial"),
        pci_bus_id=(_text(gpu, "pci/pci_bus_id") or gpu.get("id") or "").lower(),
        minor_number=_int(gpu, "minor_number"),
        vbios=_text(gpu, "vbios_version"),
        memory_mib=_int(gpu, "fb_memory_usage/total"),
        pcie_gen_current=_int(link, "pcie_gen/current_link_gen"),
        pcie_gen_max=_int(link, "pcie_gen/max_link_gen"),
        pcie_width_current=_int(link, "link_widths/current_link_width"),
        pcie_width_max=_int(link, "link_widths/max_link_width"),
        ecc_mode=_text(gpu, "ecc_mode/current_ecc"),
        ecc_mode_pending=_text(gpu, "ecc_mode/pending_ecc"),
        mig_mode=_text(gpu, "mig_mode/current_mig"),
        retired_pages_sbe=_int(gpu, "retired_pages/multiple_single_bit_retirement/retired_count"),
        retired_pages_dbe=_int(gpu, "retired_pages/double_bit_retirement/retired_count"),
        retired_pages_pending=_yes(gpu, "retired_pages/pending_retirement"),
        remapped_rows_correctable=_int(remap, "remapped_row_corr"),
        remapped_rows_uncorrectable=_int(remap, "remapped_row_unc"),
        remapped_rows_pending=_yes(remap, "remapped_row_pending"),
        remapped_rows_failure=_yes(remap, "remapped_row_failure"),
        ecc_uncorrectable_volatile=_ecc_uncorrectable(gpu, "volatile"),
        ecc_uncorrectable_aggregate=_ecc_uncorrectable(gpu, "aggregate"),
        temperature_c=_int(gpu, "temperature/gpu_temp"),
        power_limit_w=_number(power, "current_power_limit") if power is not None
        and power.find("current_power_limit") is not None else _number(power, "power_limit"),
        thermal_slowdown=thermal,
        mig_devices=len(gpu.findall("mig_devices/mig_device")),
        ecc_sram_correctable_volatile=_int(gpu, "ecc_errors/volatile/sram_correctable"),
        ecc_sram_correctable_aggregate=_int(gpu, "ecc_errors/aggregate/sram_correctable"),
        ecc_sram_uncorrectable_volatile=_sram_uncorrectable(gpu, "volatile"),
        ecc_sram_uncorrectable_aggregate=_sram_uncorrectable(gpu, "aggregate"),
        ecc_dram_uncorrectable_aggregate=_int(gpu, "ecc_errors/aggregate/dram_uncorrectable"),
        ecc_dram_correctable_volatile=_int(gpu, "ecc_errors/volatile/dram_correctable"),
        ecc_dram_correctable_aggregate=_int(gpu, "ecc_errors/aggregate/dram_correctable"),
        ecc_memory_flags=_memory_flags(gpu),
        fabric_state=_text(gpu, "fabric/state"),
        fabric_status=_text(gpu, "fabric/status"),
        persistence_mode=_text(gpu, "persistence_mode"),
        run_counters=counters,
        clocks_event_counters=has_event_counters,
    )


def parse_smi_xml(xml: str | bytes) -> SmiReport:
    """Parse one ``nvidia-smi -q -x`` document.

    Raises:
        SmiParseError: not well-formed XML, forbidden XML constructs, the wrong root
            element, or more than MAX_GPUS GPUs.
    """
    try:
        root = fromstring(xml)
    except DefusedXmlException as exc:
        raise SmiParseError(f"nvidia-smi -q -x output uses forbidden XML ({exc})") from None
    except (ParseError, ValueError) as exc:
        raise SmiParseError(f"nvidia-smi -q -x output is not valid XML ({exc})") from None
    if root.tag != "nvidia_smi_log":
        raise SmiParseError(f"nvidia-smi -q -x output has root <{root.tag[:40]}>, "
                            "expected <nvidia_smi_log>")
    gpus = root.findall("gpu")
    if len(gpus) > MAX_GPUS:
        raise SmiParseError(f"nvidia-smi -q -x reports {len(gpus)} GPUs (at most {MAX_GPUS})")
    return SmiReport(
        driver_version=_text(root, "driver_version"),
        cuda_version=_text(root, "cuda_version"),
        gpus=[_gpu(i, g) for i, g in enumerate(gpus)],
    )


_XID = re.compile(r"NVRM: Xid \((?:PCI:)?([0-9a-fA-F:.]{1,32})\): (\d{1,6}),?\s*(.*)")


def parse_xid_lines(lines: list[Any]) -> list[dict[str, Any]]:
    """Turn kernel log lines like ``NVRM: Xid (PCI:0000:18:00): 79, pid=...`` into
    ``{"pci": ..., "xid": 79, "message": ...}``; other lines are skipped."""
    out = []
    for line in lines[:1000]:
        if not isinstance(line, str):
            continue
        match = _XID.search(line)
        if match:
            out.append({"pci": match.group(1).lower(), "xid": int(match.group(2)),
                        "message": match.group(3)[:200]})
    return out


_GPU_LINE = re.compile(r"^GPU (\d{1,4}):")
_LINK_LINE = re.compile(r"^Link (\d{1,4}):\s*(.*)$")


def parse_nvlink_lines(lines: list[Any]) -> list[dict[str, Any]]:
    """``nvidia-smi nvlink --status`` lines (``GPU 0: ... (UUID: ...)`` then
    ``Link 3: 26.562 GB/s`` or ``Link 3: <inactive>``) as ``{"gpu": 0, "links": 18,
    "inactive": [3]}`` per GPU; other lines are skipped."""
    out: list[dict[str, Any]] = []
    for line in lines[:4096]:
        if not isinstance(line, str):
            continue
        text = line.strip()
        gpu, link = _GPU_LINE.match(text), _LINK_LINE.match(text)
        if gpu:
            out.append({"gpu": int(gpu.group(1)), "links": 0, "inactive": []})
        elif link and out:
            out[-1]["links"] += 1
            if "inactive" in link.group(2).lower():
                out[-1]["inactive"].append(int(link.group(1)))
    return out
