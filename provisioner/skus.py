"""What a node of each known SKU must have, and how to recognise a SKU from its GPUs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sku:
    name: str
    gpu_count: int
    model_match: str  # substring of nvidia-smi's product_name
    nvswitch: bool
    gres_type: str = ""  # Slurm's GRES type (gpu:<type>:<n>)
    family: str = ""  # GPU Feature Discovery's nvidia.com/gpu.family
    compute: str = ""  # CUDA compute capability, major.minor


SKUS: dict[str, Sku] = {s.name: s for s in [
    Sku("h100-sxm-8", 8, "H100", True, "h100", "hopper", "9.0"),
    Sku("h200-sxm-8", 8, "H200", True, "h200", "hopper", "9.0"),
    Sku("b200-8", 8, "B200", True, "b200", "blackwell", "10.0"),
    Sku("a100-sxm4-8", 8, "A100-SXM4", True, "a100", "ampere", "8.0"),
    Sku("l40s-4", 4, "L40S", False, "l40s", "ada-lovelace", "8.9"),
    Sku("cpu-only", 0, "", False),
]}


def infer_sku(models: list[str | None]) -> str | None:
    """The known SKU whose model and GPU count match, if any."""
    if not models:
        return "cpu-only"
    for sku in SKUS.values():
        if sku.gpu_count == len(models) and all(sku.model_match in (m or "") for m in models):
            return sku.name
    return None
