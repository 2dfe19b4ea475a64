"""The SKU catalogue: every SKU has every part, the parts agree with each other, and an
admin adds a SKU with one file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from provisioner.catalogue import PARTS, catalogue, infer_sku
from provisioner.errors import InputError
from provisioner.lab.profiles import get_profile, gpus_for
from provisioner.paths import Paths

SKUS = catalogue()
SHIPPED = Path(__file__).parents[2] / "inventory/skus"


def test_every_shipped_sku_has_every_part() -> None:
    names = sorted(p.stem for p in SHIPPED.glob("*.yml"))
    assert sorted(SKUS) == names and {"h100-sxm-8", "h200-sxm-8", "b200-8"} <= set(names)
    for name in names:
        doc = yaml.safe_load((SHIPPED / f"{name}.yml").read_text())
        for part, keys in PARTS.items():
            assert isinstance(doc.get(part), dict), f"{name}: no {part}"
            assert set(keys) <= set(doc[part]), f"{name}.{part}: {set(keys) - set(doc[part])}"


@pytest.mark.parametrize("name", sorted(n for n, s in SKUS.items() if s.gpu_count))
def test_gpu_sku_parts_agree(name: str) -> None:
    sku = SKUS[name]
    assert sku.targets["slurm"]["gres_type"] and sku.family and sku.compute.count(".") == 1
    assert sku.provision["driver_branch"] and sku.provision["driver_kernel_modules"]
    assert sku.burnin["tests"] and sku.burnin["telemetry"]["max_temp_c"]
    assert "# " in (SHIPPED / f"{name}.yml").read_text().split("burnin:")[0]  # sources cited
    # The lab's simulated node is a node of this SKU: the scan infers the SKU from its
    # GPUs, and the burn-in's memory floor is below what it reports.
    profile = get_profile(name)
    gpus = gpus_for(profile, "n1")
    assert len(gpus) == sku.gpu_count
    assert infer_sku(SKUS, [g["model"] for g in gpus]) == name
    assert all(g["memory_mib"] >= sku.gpu["memory_mib_min"] for g in gpus)
    assert profile.nvswitch == sku.nvswitch and profile.nvlinks == sku.fabric["nvlink_links"]
    # PCI addresses stay strings (unquoted, YAML 1.1 reads 0000:18:00.0 as a number).
    pci = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]")
    assert all(pci.fullmatch(b) for b in profile.bus_ids + profile.nvswitches), profile


def test_skus_are_told_apart() -> None:
    assert infer_sku(SKUS, ["NVIDIA H100 80GB HBM3"] * 8) == "h100-sxm-8"
    assert infer_sku(SKUS, ["NVIDIA H100 PCIe"] * 8) != "h100-sxm-8"  # not an HGX H100
    assert infer_sku(SKUS, ["NVIDIA H200"] * 8) == "h200-sxm-8"
    assert infer_sku(SKUS, ["NVIDIA RTX A5000"] * 2) is None
    assert infer_sku(SKUS, []) == "cpu-only"


def test_a_site_file_adds_a_sku_and_a_broken_one_is_named(paths: Paths) -> None:
    site = paths.home / "skus"
    site.mkdir(parents=True)
    doc = yaml.safe_load((SHIPPED / "l40s-4.yml").read_text())
    doc.update(name="l40s-8", description="8x L40S")
    doc["gpu"]["count"] = 8
    (site / "l40s-8.yml").write_text(yaml.safe_dump(doc))
    skus = catalogue(paths)
    assert skus["l40s-8"].gpu_count == 8 and "l40s-4" in skus
    assert infer_sku(skus, ["NVIDIA L40S"] * 8) == "l40s-8"
    # A target's part is optional (the target has defaults); a scalar key is no part.
    del doc["slurm"]
    doc["vendor"] = "Supermicro"
    (site / "l40s-8.yml").write_text(yaml.safe_dump(doc))
    assert catalogue(paths)["l40s-8"].targets == {}
    doc["slurm"] = {"gres_type": "l40s"}
    (site / "l40s-8.yml").write_text(yaml.safe_dump(doc))
    assert catalogue(paths)["l40s-8"].targets == {"slurm": {"gres_type": "l40s"}}
    doc["gpu"].pop("count")
    doc["burnin"].pop("tests")
    (site / "l40s-8.yml").write_text(yaml.safe_dump(doc))
    with pytest.raises(InputError, match=r"l40s-8.yml: missing gpu.count, burnin.tests"):
        catalogue(paths)


def test_skus_cli_lists_and_shows(gpuctl) -> None:  # type: ignore[no-untyped-def]
    result = gpuctl("skus", "list")
    assert result.code == 0 and "b200-8" in result.out and "h200" in result.out
    result = gpuctl("skus", "show", "b200-8")
    assert result.code == 0 and "580" in result.out and "432" in result.out
    result = gpuctl("skus", "show", "h900")
    assert result.code == 1 and "no SKU 'h900'" in result.err
