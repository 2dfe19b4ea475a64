"""The SKU catalogue: one YAML file per SKU says everything gpuctl knows about it.

``inventory/skus/<name>.yml`` holds what a scan expects (GPU model, count, memory,
NVSwitch, NVLink links), the provisioning pins (Ansible group variables of group
``sku_<name>``), the burn-in floors, the Slurm GRES type and GPU Feature Discovery
family, and the lab's simulated hardware. Parts other than the fixed ones belong to
hand-off targets (``slurm:``) and are optional. A file of the same name under
``<data dir>/skus/`` replaces the shipped one, and a new file there adds a SKU: an admin
adds a SKU by writing one file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from provisioner.errors import InputError, NotFoundError
from provisioner.paths import Paths
from provisioner.shipped import shipped_dir

# Every part a SKU file must have, and the keys each part must hold. Any other mapping
# in the file is a hand-off target's part (``slurm: {gres_type: h100}``), optional: the
# target has a default for each of its keys, so a new per-target field needs no edit here
# and none in the shipped files.
PARTS: dict[str, tuple[str, ...]] = {
    "gpu": ("model_match", "model_exclude", "count", "memory_mib_min", "family", "compute",
            "ecc_required"),
    "fabric": ("nvswitch", "nvlink_links"),
    "provision": (),
    "burnin": ("fleet_outlier_fraction", "tests", "telemetry"),
    "lab": ("model", "architecture", "device_id", "memory_mib", "pcie_gen", "power_limit_w",
            "vbios", "bus_ids", "mig", "remapped_rows", "ib_ports", "ib_rate_gbps",
            "system_vendor", "system_product", "driver_version", "cuda_version",
            "nvswitches", "nvswitch_device"),
}


@dataclass(frozen=True)
class Sku:
    """One SKU as its catalogue file describes it."""

    name: str
    description: str
    source: str  # the file it came from
    gpu: dict[str, Any]
    fabric: dict[str, Any]
    provision: dict[str, Any]
    burnin: dict[str, Any]
    lab: dict[str, Any]
    # Hand-off targets' parts, by target name (``slurm``).
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def gpu_count(self) -> int:
        return int(self.gpu["count"])

    @property
    def nvswitch(self) -> bool:
        return bool(self.fabric["nvswitch"])

    @property
    def family(self) -> str:
        return str(self.gpu["family"] or "")

    @property
    def compute(self) -> str:
        return str(self.gpu["compute"] or "")

    def matches_model(self, model: str | None) -> bool:
        """Whether a GPU's product name (nvidia-smi's product_name) is this SKU's."""
        text = model or ""
        return str(self.gpu["model_match"]) in text and not any(
            str(x) in text for x in self.gpu.get("model_exclude") or [])

    def threshold_profile(self) -> dict[str, Any]:
        """The burn-in profile: the ``burnin`` part plus what it shares with the rest
        (memory floor and NVLink links come from ``gpu`` and ``fabric``, said once)."""
        telemetry = dict(self.burnin.get("telemetry") or {})
        if self.fabric.get("nvlink_links"):
            telemetry["nvlink_links"] = int(self.fabric["nvlink_links"])
        return {**self.burnin, "telemetry": telemetry,
                "gpu_memory_mib_min": self.gpu.get("memory_mib_min") or None,
                "ecc_required": bool(self.gpu.get("ecc_required")),
                "fabric_required": bool(self.fabric.get("state_required"))}


def _parse(path: Path) -> Sku:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as exc:  # ValueError: not UTF-8
        raise InputError(f"{path}: not a readable YAML file ({' '.join(str(exc).split())})"
                         ) from None
    if not isinstance(doc, dict):
        raise InputError(f"{path}: a SKU file is a mapping")
    missing = [part for part in PARTS if not isinstance(doc.get(part), dict)]
    missing += [f"{part}.{key}" for part, keys in PARTS.items()
                if isinstance(doc.get(part), dict) for key in keys if key not in doc[part]]
    if doc.get("name") != path.stem:
        missing.append(f"name (must be {path.stem!r}, the file's name)")
    if missing:
        raise InputError(f"{path}: missing {', '.join(missing)}")
    if not isinstance(doc["burnin"]["tests"], dict):
        raise InputError(f"{path}: burnin.tests must be a mapping")
    for key in ("bus_ids", "nvswitches"):
        if not all(isinstance(b, str) for b in doc["lab"][key] or []):
            raise InputError(f"{path}: lab.{key}: quote PCI addresses (\"0000:18:00.0\"); "
                             "unquoted, YAML reads them as numbers")
    # Other mappings are hand-off targets' parts; other scalars (a note, a vendor) are
    # ignored, as they always were.
    targets = {key: value for key, value in doc.items()
               if key not in PARTS and isinstance(value, dict)}
    return Sku(name=path.stem, description=str(doc.get("description") or ""),
               source=str(path), targets=targets, **{part: doc[part] for part in PARTS})


@cache
def _load(files: tuple[tuple[str, Path, float], ...]) -> dict[str, Sku]:
    return {name: _parse(path) for name, path, _ in files}


def catalogue(paths: Paths | None = None) -> dict[str, Sku]:
    """Every SKU: the shipped files, replaced or extended by ``<data dir>/skus/``.

    Raises:
        InputError: a SKU file is unreadable or lacks a part (the message names it).
    """
    dirs = [shipped_dir() / "inventory/skus"]
    if paths is not None:
        dirs.append(paths.home / "skus")
    found: dict[str, Path] = {}
    for base in dirs:  # a site file replaces the shipped file of the same name
        for path in sorted(base.glob("*.yml")) if base.is_dir() else []:
            found[path.stem] = path
    # Parsed once per process unless a file changes (keyed by modification time).
    return _load(tuple((name, path, path.stat().st_mtime)
                       for name, path in sorted(found.items())))


def infer_sku(skus: dict[str, Sku], models: list[str | None]) -> str | None:
    """The SKU whose model and GPU count match the GPUs seen (None if none does):
    no GPUs is ``cpu-only``."""
    if not models:
        return "cpu-only" if "cpu-only" in skus else None
    for sku in skus.values():
        if sku.gpu_count == len(models) and all(sku.matches_model(m) for m in models):
            return sku.name
    return None


def require_sku(skus: dict[str, Sku], name: str) -> Sku:
    """Raises NotFoundError (listing the known SKUs) when there is no SKU ``name``."""
    sku = skus.get(name)
    if sku is None:
        raise NotFoundError(f"no SKU {name[:60]!r}; known: {', '.join(skus)}")
    return sku
