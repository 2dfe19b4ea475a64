"""Burn-in faults named to the part (issue 10): one lab, every new check, one run.

Each fault is injected into the lab as the hardware would show it (the stand-in
``nvidia-smi``, the kernel log, the agent's own torch calls); the agent is not told."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from provisioner.db.engine import session_scope
from provisioner.db.models import BurninArtifact, BurninResult, Run
from provisioner.inventory.lifecycle import State, get_node, transition

pytest.importorskip("torch")
pytestmark = pytest.mark.e2e

DATA = Path(__file__).parents[1] / "data"


def _provisioned(gpuctl: Any, paths: Any) -> None:
    """Scanned, then as a successful provision leaves them (the lab's --driver nodes come
    with the driver and, on NVSwitch systems, fabric manager: provisioning has its own
    tests)."""
    assert gpuctl("scan", "--all", "--accept-new").code == 0
    with session_scope(paths.db_url) as session:
        for node in json.loads(gpuctl("nodes", "list", "--json").out):
            stored = get_node(session, node["name"])
            for state in (State.PROVISIONING, State.PROVISIONED):
                transition(session, stored, state, actor="test set-up", reason="set-up")


def test_faulty_parts_are_named_and_the_healthy_nodes_certified(lab, gpuctl, paths) -> None:  # type: ignore[no-untyped-def]
    lab.up(8, "--driver")
    _provisioned(gpuctl, paths)
    faults = {"gpu-node-01": ["gpu-lost"], "gpu-node-02": ["nvswitch-sxid", "sram-correctable"],
              "gpu-node-03": ["remapped-rows", "fabric-unregistered", "pcie-downgrade"],
              "gpu-node-04": ["nic-down"], "gpu-node-08": ["sdc-persistent"]}
    for node, kinds in faults.items():
        for kind in kinds:
            assert gpuctl("lab", "fault", node, kind).code == 0
    result = gpuctl("burnin", "--all", "--duration", "0.2", "--parallel", "2", "--multinode",
                    "--seed", "1234", "--json")
    assert result.code == 3, result
    doc = json.loads(result.out)
    assert doc["seed"] == 1234
    nodes = {n["name"]: n for n in doc["nodes"]}
    fails = {name: " ".join(n["failures"]) for name, n in nodes.items()}

    # GPU 1 fell off the bus mid-test: quarantined (hardware), not failed (gpuctl), with the
    # GPU named by index and board, the exception, and the XID of the same GPU.
    lost = nodes["gpu-node-01"]
    assert lost["verdict"] == "fail", lost
    assert "on GPU 1: RuntimeError: CUDA error: unspecified launch failure [GPU-" in fails[
        "gpu-node-01"]
    assert "xid on GPU 1: XID 79 during burn-in" in fails["gpu-node-01"]
    assert "on GPU 0" not in fails["gpu-node-01"]

    assert "nvswitch_sxid on node: 1 new SXid during burn-in, first 12028" in fails["gpu-node-02"]
    assert "ecc_sram_correctable on GPU 6: 12000 correctable SRAM ECC errors > 10000" in fails[
        "gpu-node-02"]
    assert "remapped_rows on GPU 7: 600 rows remapped for uncorrectable errors > 512" in fails[
        "gpu-node-03"]
    assert "fabric on GPU 0: fabric state In Progress" in fails["gpu-node-03"]
    assert "pcie_link on GPU 0: x8 gen5 under load, its maximum is x16 gen5" in fails[
        "gpu-node-03"]

    # Every GPU of node 08 agrees on the same wrong last bit: only the other nodes' GPUs,
    # given the same seed, outvote it.
    persistent = fails["gpu-node-08"]
    assert "gemm_float32 on GPU 0: silent data corruption: its product differs from " in \
        persistent and "GPUs of its model in this run (seed 1237)" in persistent, persistent
    assert "products differ from the first" not in persistent  # it repeats faithfully
    # The node with the dead NIC passed its own tests, failed with both ring neighbours,
    # and is named; the other three all-reduced together and are certified.
    assert "gpu-node-04 failed with each of its ring neighbours (gpu-node-05, gpu-node-07)" \
        in fails["gpu-node-04"], fails["gpu-node-04"]
    for name in ("gpu-node-05", "gpu-node-06", "gpu-node-07"):
        assert nodes[name]["verdict"] == "pass", (name, fails[name])
        cross = [r for r in nodes[name]["results"] if r["test"] == "multinode_all_reduce_busbw"]
        assert len(cross) == 1 and cross[0]["passed"], cross

    with session_scope(paths.db_url) as session:
        run = session.exec(select(Run).where(Run.kind == "burnin")).one()
        rows = session.exec(select(BurninResult)).all()
        evidence = {a.node_id: json.loads(a.content_json) for a in session.exec(
            select(BurninArtifact).where(BurninArtifact.kind == "agent"))}
    assert json.loads(run.args_json)["seed"] == 1234
    # Every per-GPU result names its board, so the right one is pulled for RMA.
    gemm = [r for r in rows if r.test == "gemm_float32" and r.node_id == 5]
    assert len(gemm) == 4 and all(json.loads(r.detail_json)["uuid"].startswith("GPU-")
                                  and json.loads(r.detail_json)["pci_bus_id"] for r in gemm)
    # The evidence behind the quarantine is kept: the new XID line and the counters.
    health = evidence[1]["health"]
    assert any("Xid" in line and ": 79," in line for line in health["new_xid_lines"])
    assert health["before"] and health["after"][1]["ecc_uncorrectable_volatile"] == 0
    assert evidence[1]["seed"] == 1234


def test_an_h200_node_is_judged_by_its_profile(lab, gpuctl, paths) -> None:  # type: ignore[no-untyped-def]
    lab.up(1, "--driver", "--profile", "h200-sxm-8")
    _provisioned(gpuctl, paths)
    result = gpuctl("burnin", "--all", "--duration", "0.2", "--json")
    assert result.code == 0, result
    [node] = json.loads(result.out)["nodes"]
    assert node["profile"] == "h200-sxm-8+cpu-lab" and node["verdict"] == "pass", node
    tests = {r["test"] for r in node["results"]}
    # The SKU's own rules: 8 GPUs of 141 GB, ECC on, fabric registered, 18 NVLinks.
    assert {"inventory_match", "ecc_mode", "fabric", "nvlink"} <= tests
    inventory = next(r for r in node["results"] if r["test"] == "inventory_match")
    assert inventory["value"] == inventory["threshold"] == 8


def test_an_unknown_model_is_judged_by_the_generic_profile(lab, gpuctl, paths) -> None:  # type: ignore[no-untyped-def]
    """A real capture of a model no SKU file describes (one H200 in a cloud VM): the node
    is judged (correctness, health, fleet-relative throughput), not stuck."""
    lab.up(1, "--driver", "--smi-xml", str(DATA / "h200-nvidia-smi-q-x.xml"))
    _provisioned(gpuctl, paths)
    result = gpuctl("burnin", "--all", "--duration", "0.2", "--json")
    assert result.code == 0, result
    [node] = json.loads(result.out)["nodes"]
    assert node["profile"] == "generic+cpu-lab" and node["verdict"] == "pass", node
    assert {"gemm_bfloat16", "memory_test", "xid", "ecc_uncorrectable"} <= {
        r["test"] for r in node["results"]}
    assert "fabric" not in {r["test"] for r in node["results"]}
