"""GPU node profiles for lab nodes: what the simulated hardware reports."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Profile:
    name: str
    sku: str
    model: str
    architecture: str
    device_id: str  # PCI device id, e.g. 0x2330
    memory_mib: int
    pcie_gen: int
    power_limit_w: float
    vbios: str
    bus_ids: tuple[str, ...]
    mig: bool
    nvswitch: bool
    remapped_rows: bool
    ib_ports: int
    ib_rate_gbps: int
    system_vendor: str
    system_product: str
    driver_version: str = "550.90.07"
    cuda_version: str = "12.4"
    # NVSwitch chips on the PCI bus (class 0x0680): HGX H100/H200 have 4, HGX A100 6.
    nvswitches: tuple[str, ...] = ()
    nvswitch_device: str = ""


HGX = ("0000:18:00.0", "0000:2a:00.0", "0000:3a:00.0", "0000:5d:00.0",
       "0000:9a:00.0", "0000:ab:00.0", "0000:ba:00.0", "0000:db:00.0")
DGX_A100 = ("0000:07:00.0", "0000:0f:00.0", "0000:47:00.0", "0000:4e:00.0",
            "0000:87:00.0", "0000:90:00.0", "0000:b7:00.0", "0000:bd:00.0")

HGX_SWITCHES = ("0000:05:00.0", "0000:06:00.0", "0000:07:00.0", "0000:08:00.0")

PROFILES: dict[str, Profile] = {p.name: p for p in [
    Profile("h100-sxm-8", "h100-sxm-8", "NVIDIA H100 80GB HBM3", "Hopper", "0x2330", 81559, 5,
            700.0, "96.00.74.00.0B", HGX, False, True, True, 8, 400, "Supermicro",
            "SYS-821GE-TNHR", nvswitches=HGX_SWITCHES, nvswitch_device="0x22a3"),
    Profile("h200-sxm-8", "h200-sxm-8", "NVIDIA H200", "Hopper", "0x2335", 143771, 5, 700.0,
            "96.00.99.00.01", HGX, False, True, True, 8, 400, "Supermicro", "SYS-821GE-TNHR",
            "570.124.06", "12.8", HGX_SWITCHES, "0x22a3"),
    Profile("a100-sxm4-8", "a100-sxm4-8", "NVIDIA A100-SXM4-80GB", "Ampere", "0x20b2", 81920, 4,
            400.0, "92.00.36.00.02", DGX_A100, True, True, True, 8, 200, "NVIDIA",
            "DGXA100 920-23687-2530-000", "535.54.03", "12.2",
            ("0000:c4:00.0", "0000:c5:00.0", "0000:c6:00.0", "0000:c7:00.0", "0000:c8:00.0",
             "0000:c9:00.0"), "0x1af1"),
    Profile("l40s-4", "l40s-4", "NVIDIA L40S", "Ada Lovelace", "0x26b9", 46068, 4, 350.0,
            "95.02.66.00.02", HGX[:4], False, False, True, 0, 0, "Dell Inc.",
            "PowerEdge R760xa"),
    Profile("none", "cpu-only", "", "", "", 0, 0, 0.0, "", (), False, False, False, 0, 0,
            "QEMU", "Standard PC (Q35 + ICH9, 2009)"),
]}


def _hex(seed: str, n: int) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()[:n]


def gpus_for(profile: Profile, node: str) -> list[dict[str, Any]]:
    """The GPUs a node of ``profile`` reports; serials and UUIDs are stable per node."""
    out = []
    for i, bus in enumerate(profile.bus_ids):
        h = _hex(f"{node}/{i}", 32)
        out.append({
            "index": i, "model": profile.model, "architecture": profile.architecture,
            "bus_id": bus, "device_id": profile.device_id,
            "uuid": f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}",
            "serial": str(1650000000000 + int(_hex(f"sn/{node}/{i}", 8), 16) % 10**9),
            "memory_mib": profile.memory_mib, "vbios": profile.vbios,
            "pcie_gen_max": profile.pcie_gen, "pcie_gen_current": profile.pcie_gen,
            "pcie_width_max": 16, "pcie_width_current": 16,
            "power_limit_w": profile.power_limit_w, "temperature_c": 31 + i % 4,
            "mig": profile.mig, "ecc_dram_uncorrectable": 0,
            "remapped_rows": profile.remapped_rows, "remap_unc": 0, "remap_failure": False,
            "thermal_slowdown": False,
            # NVLink links per GPU: 18 on HGX H100/H200, 12 on HGX A100, none on PCIe.
            "nvlinks": (18 if profile.architecture == "Hopper" else 12) if profile.nvswitch
            else 0,
        })
    return out
