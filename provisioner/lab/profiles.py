"""GPU node profiles for lab nodes: what the simulated hardware reports.

A profile is a SKU's ``lab`` part in the catalogue (``inventory/skus/<sku>.yml``), so a
lab node of a SKU is described in the same file as the SKU's real requirements.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from provisioner.catalogue import Sku, catalogue
from provisioner.errors import LabError

# ``--profile none``: a node without GPUs (the cpu-only SKU), as earlier versions named it.
ALIASES = {"none": "cpu-only"}


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
    nvlinks: int  # NVLink links per GPU
    remapped_rows: bool
    ib_ports: int
    ib_rate_gbps: int
    system_vendor: str
    system_product: str
    driver_version: str
    cuda_version: str
    nvswitches: tuple[str, ...]  # NVSwitch chips on the PCI bus (class 0x0680)
    nvswitch_device: str
    # NVLink 5 (B200): the switch trays' InfiniBand management ports, which carry
    # "SW_MNG" in their PCI VPD (how NVIDIA's driver container finds NVLink 5 systems).
    nvlink5_mgmt_ports: int = 0


def _profile(sku: Sku) -> Profile:
    lab = sku.lab
    return Profile(
        name=sku.name, sku=sku.name, model=str(lab["model"]),
        architecture=str(lab["architecture"]), device_id=str(lab["device_id"]),
        memory_mib=int(lab["memory_mib"]), pcie_gen=int(lab["pcie_gen"]),
        power_limit_w=float(lab["power_limit_w"]), vbios=str(lab["vbios"]),
        bus_ids=tuple(str(b) for b in lab["bus_ids"]), mig=bool(lab["mig"]),
        nvswitch=sku.nvswitch, nvlinks=int(sku.fabric["nvlink_links"] or 0),
        remapped_rows=bool(lab["remapped_rows"]), ib_ports=int(lab["ib_ports"]),
        ib_rate_gbps=int(lab["ib_rate_gbps"]), system_vendor=str(lab["system_vendor"]),
        system_product=str(lab["system_product"]),
        driver_version=str(lab["driver_version"]), cuda_version=str(lab["cuda_version"]),
        nvswitches=tuple(str(b) for b in lab["nvswitches"] or ()),
        nvswitch_device=str(lab["nvswitch_device"] or ""),
        nvlink5_mgmt_ports=int(lab.get("nvlink5_mgmt_ports") or 0))


def parse_node_profile(text: str) -> tuple[str, str]:
    """Parse ``NODE:PROFILE``.

    Raises:
        LabError: malformed, or an unknown profile (the message lists the known ones).
    """
    node, sep, name = text.rpartition(":")
    if not sep or not node:
        raise LabError(f"node profile {text[:60]!r} must be NODE:PROFILE")
    get_profile(name)
    return node, name


def profile_names() -> list[str]:
    return sorted(catalogue()) + sorted(ALIASES)


def get_profile(name: str) -> Profile:
    """The lab profile of SKU ``name`` (or an alias).

    Raises:
        LabError: no SKU of that name.
    """
    sku = catalogue().get(ALIASES.get(name, name))
    if sku is None:
        raise LabError(f"unknown profile {name!r}; known: {', '.join(profile_names())}")
    return _profile(sku)


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
            "thermal_slowdown": False, "nvlinks": profile.nvlinks,
        })
    return out
