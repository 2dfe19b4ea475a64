"""What a node of each known SKU must have, and how to recognise a SKU from its GPUs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sku:
    name: str
    gpu_count: int
    model_match: str  # substring of nvidia-smi's product_name
    nvswitch: bool


SKUS: dict[str, Sku] = {s.name: s for s in [
    Sku("h100-sxm-8", 8, "H100", True),
    Sku("h200-sxm-8", 8, "H200", True),
    Sku("b200-8", 8, "B200", True),
    Sku("a100-sxm4-8", 8, "A100-SXM4", True),
    Sku("l40s-4", 4, "L40S", False),
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
