"""``gpuctl burnin`` on provisioned lab nodes: certify the healthy, quarantine the faulty
with the right reason."""

from __future__ import annotations

import json

import pytest
from sqlmodel import select

from provisioner.db.engine import session_scope
from provisioner.db.models import BurninResult, Certificate

pytest.importorskip("torch")
pytestmark = pytest.mark.e2e


def test_burnin_certifies_and_quarantines(lab, gpuctl, paths) -> None:  # type: ignore[no-untyped-def]
    lab.up(5, "--fault", "gpu-node-03:sdc", "--fault", "gpu-node-04:slow-gpu")
    assert gpuctl("scan", "--all", "--accept-new").code == 0
    assert gpuctl("provision", "--all", "--json").code == 0
    assert gpuctl("lab", "fault", "gpu-node-05", "gpu-missing").code == 0  # after provision

    # Lab nodes share this machine's cores: one at a time, so a fleet comparison compares
    # nodes and not who got the CPU (real nodes each have their own GPUs).
    result = gpuctl("burnin", "--all", "--duration", "0.3", "--parallel", "1", "--json")
    assert result.code == 3, result
    nodes = {n["name"]: n for n in json.loads(result.out)["nodes"]}
    assert nodes["gpu-node-01"]["verdict"] == nodes["gpu-node-02"]["verdict"] == "pass", nodes
    assert "silent data corruption" in " ".join(nodes["gpu-node-03"]["failures"])
    assert "below 30% of the fleet median" in " ".join(nodes["gpu-node-04"]["failures"])
    assert "inventory: 7 GPUs, SKU h100-sxm-8 has 8" in nodes["gpu-node-05"]["failures"]

    states = {n["name"]: n["state"] for n in json.loads(gpuctl("nodes", "list", "--json").out)}
    assert states == {"gpu-node-01": "certified", "gpu-node-02": "certified",
                      "gpu-node-03": "quarantined", "gpu-node-04": "quarantined",
                      "gpu-node-05": "quarantined"}
    with session_scope(paths.db_url) as session:
        certs = session.exec(select(Certificate)).all()
        rows = session.exec(select(BurninResult)).all()
    assert sorted(c.node_id for c in certs) == [1, 2]
    assert all(c.profile == "cpu-lab" and len(c.results_digest) == 64 and c.expires_at
               and c.driver_version is None for c in certs)  # last scan was pre-driver
    tests = {r.test for r in rows if r.node_id == 1}
    assert {"inventory_match", "gemm_float32", "memory_test", "all_reduce_busbw"} <= tests
    assert all(r.verdict == "pass" for r in rows if r.node_id == 1)
    assert any(r.verdict == "fail" and r.test.startswith("gemm_") for r in rows
               if r.node_id == 3)
    history = json.loads(gpuctl("nodes", "show", "gpu-node-03", "--json").out)["events"]
    assert history[-1]["to"] == "quarantined" and "burn-in failed" in history[-1]["reason"]
