"""Burn-in faults named to the part (issue 10): one lab, every new check, one run.

Each fault is injected into the lab as the hardware would show it (the stand-in
``nvidia-smi``, the kernel log, the agent's own torch calls); the agent is not told."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from provisioner.burnin.levels import LEVELS
from provisioner.db.engine import session_scope
from provisioner.db.models import BurninArtifact, BurninResult, Run
from tests.e2e.conftest import provisioned_by_lab

pytest.importorskip("torch")
pytestmark = pytest.mark.e2e

DATA = Path(__file__).parents[1] / "data"
PER_GPU_TESTS = ("gemm_bfloat16", "gemm_float16", "gemm_tf32", "gemm_float32",
                 "memory_bandwidth", "memory_test")


def _provisioned(gpuctl: Any, paths: Any) -> None:
    assert gpuctl("scan", "--all", "--accept-new").code == 0
    provisioned_by_lab(paths)


def test_faulty_parts_are_named_and_the_healthy_nodes_certified(lab, gpuctl, paths) -> None:  # type: ignore[no-untyped-def]
    lab.up(8, "--driver")
    _provisioned(gpuctl, paths)
    # Node 03's GPU 2 also hangs mid-test (issue 22): it costs the run the CPU's 10 s hang
    # bound, not the level's deadline.
    faults = {"gpu-node-01": ["gpu-lost"], "gpu-node-02": ["nvswitch-sxid", "sram-correctable"],
              "gpu-node-03": ["remapped-rows", "fabric-unregistered", "pcie-downgrade",
                              "gpu-hung"],
              "gpu-node-04": ["nic-down"], "gpu-node-08": ["sdc-persistent"]}
    for node, kinds in faults.items():
        for kind in kinds:
            assert gpuctl("lab", "fault", node, kind).code == 0
    start = time.monotonic()
    result = gpuctl("burnin", "--all", "--duration", "0.2", "--parallel", "2", "--multinode",
                    "--seed", "1234", "--json")
    took = time.monotonic() - start
    assert result.code == 3, result
    # Well inside the quick level's deadline, the hung GPU included.
    assert took < LEVELS["quick"].timeout_s / 3, took
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
    # GPU 2 of node 03 hung in its first GEMM: named, hung, and its later tests not run.
    assert "gemm_bfloat16 on GPU 2: did not finish within 10 s (hung) [GPU-" in fails[
        "gpu-node-03"]
    assert "memory_test on GPU 2: not run: GPU 2 hung in gemm_bfloat16 [GPU-" in fails[
        "gpu-node-03"]

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
    # The stored results of the lost and the hung GPU's nodes are complete: every test on
    # every GPU and the node-wide ones, each failed one with why.
    for node_id, gone in ((1, 1), (3, 2)):
        mine = [r for r in rows if r.node_id == node_id]
        stored = {(r.test, r.gpu_index) for r in mine}
        assert {(t, d) for t in PER_GPU_TESTS for d in range(4)} | {
            ("all_reduce_busbw", None), ("all_gather_busbw", None)} <= stored, stored
        assert all(r.reason for r in mine if r.verdict == "fail")
        assert {r.gpu_index for r in mine if r.verdict == "fail" and r.test in PER_GPU_TESTS
                } == {gone}, node_id
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


def test_a_mixed_fleet_is_judged_kind_by_kind(lab, gpuctl, paths) -> None:  # type: ignore[no-untyped-def]
    """4 h100-sxm-8 and 3 l40s-4 nodes burned in together (``burnin --all``), one slow
    node of each (every GPU at an eighth of the speed): each SKU is compared with its own
    fleet median, so every healthy node is certified and both slow ones are caught."""
    lab.up(7, "--driver", *[a for n in ("05", "06", "07") for a in (
        "--node-profile", f"gpu-node-{n}:l40s-4")],
           "--fault", "gpu-node-04:slow-node", "--fault", "gpu-node-07:slow-node")
    _provisioned(gpuctl, paths)
    # One node at a time: a fleet comparison compares nodes, not who got the CPU.
    result = gpuctl("burnin", "--all", "--duration", "0.1", "--parallel", "1", "--json")
    assert result.code == 3, result
    nodes = {n["name"]: n for n in json.loads(result.out)["nodes"]}
    fails = {name: " ".join(n["failures"]) for name, n in nodes.items()}
    assert {name: n["profile"] for name, n in nodes.items()} == {
        **{f"gpu-node-0{i}": "h100-sxm-8+cpu-lab" for i in (1, 2, 3, 4)},
        **{f"gpu-node-0{i}": "l40s-4+cpu-lab" for i in (5, 6, 7)}}
    assert {name for name, n in nodes.items() if n["verdict"] == "pass"} == {
        "gpu-node-01", "gpu-node-02", "gpu-node-03", "gpu-node-05", "gpu-node-06"}, fails
    for slow in ("gpu-node-04", "gpu-node-07"):
        assert "compute on GPU 0: " in fails[slow] and "% of the fleet median (bfloat16, " \
            "float16, tf32, float32), below 30% (a slow GPU or node)" in fails[slow], fails
