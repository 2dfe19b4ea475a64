"""``gpuctl burnin`` on provisioned lab nodes: certify the healthy, quarantine the faulty
with the right reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlmodel import select

from provisioner.db.engine import session_scope
from provisioner.db.models import BurninResult, Certificate
from tests.e2e.conftest import provisioned_by_lab

pytest.importorskip("torch")
pytestmark = pytest.mark.e2e


def test_burnin_certifies_and_quarantines(lab, gpuctl, paths) -> None:  # type: ignore[no-untyped-def]
    lab.up(6, "--driver", "--fault", "gpu-node-03:sdc", "--fault", "gpu-node-04:slow-gpu",
           "--fault", "gpu-node-06:slow-node")
    assert gpuctl("scan", "--all", "--accept-new").code == 0
    provisioned_by_lab(paths)
    assert gpuctl("lab", "fault", "gpu-node-05", "gpu-missing").code == 0  # after the scan

    # Lab nodes share this machine's cores: one at a time, so a fleet comparison compares
    # nodes and not who got the CPU (real nodes each have their own GPUs).
    result = gpuctl("burnin", "--all", "--duration", "0.3", "--parallel", "1", "--multinode",
                    "--json")
    assert result.code == 3, result
    nodes = {n["name"]: n for n in json.loads(result.out)["nodes"]}
    assert nodes["gpu-node-01"]["verdict"] == nodes["gpu-node-02"]["verdict"] == "pass", nodes
    assert "silent data corruption" in " ".join(nodes["gpu-node-03"]["failures"])
    slow = " ".join(nodes["gpu-node-04"]["failures"])
    assert "compute on GPU 0:" in slow and "of its node's median GPU (bfloat16, float16, " \
        "tf32, float32), below 75% (a slow part)" in slow
    assert "inventory: 7 GPUs, SKU h100-sxm-8 has 8" in nodes["gpu-node-05"]["failures"]
    # Every GPU of node 06 is slow alike: its own GPUs cannot show it, the fleet does.
    slow_node = nodes["gpu-node-06"]["failures"]
    devices = {r["device"] for r in nodes["gpu-node-06"]["results"] if r["test"] == "gemm_tf32"}
    fleet = [f for f in slow_node if "% of the fleet median (bfloat16, float16, tf32, "
             "float32), below 30% (a slow GPU or node)" in f]
    assert len(devices) >= 3 and len(fleet) == len(devices) and all(
        f.startswith(f"compute on GPU {i}: ") for i, f in zip(sorted(devices), fleet,
                                                              strict=True)), slow_node
    # At an eighth of the speed a GPU may also fall below the lab's throughput floor: that
    # is the only other thing said of it.
    assert all(" TFLOPS < " in f for f in slow_node if f not in fleet), slow_node
    # The nodes that passed their own tests then all-reduced together through torchrun.
    for name in ("gpu-node-01", "gpu-node-02"):
        cross = [r for r in nodes[name]["results"]
                 if r["test"] == "multinode_all_reduce_busbw"]
        assert len(cross) == 1 and cross[0]["passed"] and cross[0]["value"] > 0, cross
    assert not any(r["test"].startswith("multinode") for r in nodes["gpu-node-03"]["results"])

    states = {n["name"]: n["state"] for n in json.loads(gpuctl("nodes", "list", "--json").out)}
    assert states == {"gpu-node-01": "certified", "gpu-node-02": "certified",
                      "gpu-node-03": "quarantined", "gpu-node-04": "quarantined",
                      "gpu-node-05": "quarantined", "gpu-node-06": "quarantined"}
    with session_scope(paths.db_url) as session:
        certs = session.exec(select(Certificate)).all()
        rows = session.exec(select(BurninResult)).all()
    assert sorted(c.node_id for c in certs) == [1, 2]
    # Judged by the SKU's rules with the CPU lab's throughput floors.
    # (The driver's version is the last scan's: the lab's driver.)
    assert all(c.profile == "h100-sxm-8+cpu-lab" and len(c.results_digest) == 64 and c.expires_at
               and c.driver_version for c in certs)
    tests = {r.test for r in rows if r.node_id == 1}
    assert {"inventory_match", "gemm_float32", "memory_test", "all_reduce_busbw"} <= tests
    assert all(r.verdict == "pass" for r in rows if r.node_id == 1)
    assert any(r.verdict == "fail" and r.test.startswith("gemm_") for r in rows
               if r.node_id == 3)
    history = json.loads(gpuctl("nodes", "show", "gpu-node-03", "--json").out)["events"]
    assert history[-1]["to"] == "quarantined" and "burn-in failed" in history[-1]["reason"]


def test_gpu_health_faults_fail_burnin_and_report(lab, gpuctl, paths, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """XID, ECC, thermal and NVLink faults each fail burn-in with their reason; DCGM's
    results are stored beside gpuctl's; every report format is written from the run."""
    (paths.home / "group_vars").mkdir(parents=True, exist_ok=True)
    (paths.home / "group_vars/all.yml").write_text("dcgm_install: true\n")
    # These faults are not about speed: a site override of the lab profile without the
    # fleet comparison keeps a busy machine's CPU contention out of this test (the
    # fleet check has its own test above).
    (paths.home / "thresholds").mkdir(parents=True, exist_ok=True)
    profile = (Path(__file__).parents[2] / "inventory/thresholds/cpu-lab.yml").read_text()
    (paths.home / "thresholds/cpu-lab.yml").write_text(
        profile.replace("fleet_outlier_fraction: 0.30", "fleet_outlier_fraction: 0 #"))
    lab.up(5, "--driver")
    assert gpuctl("scan", "--all", "--accept-new").code == 0
    # The lab's --driver nodes have the driver: Ansible adds DCGM from the repository.
    assert gpuctl("provision", "--all", "--tags", "repo,dcgm", "--json").code == 0
    for node, kind in (("gpu-node-01", "xid"), ("gpu-node-02", "ecc-uncorrectable"),
                       ("gpu-node-03", "thermal-throttle"), ("gpu-node-04", "nvlink-down")):
        assert gpuctl("lab", "fault", node, kind).code == 0

    result = gpuctl("burnin", "--all", "--duration", "0.2", "--parallel", "1", "--with-dcgm",
                    "--json")
    assert result.code == 3, result
    nodes = {n["name"]: n for n in json.loads(result.out)["nodes"]}
    fails = {name: " ".join(n["failures"]) for name, n in nodes.items()}
    assert nodes["gpu-node-05"]["verdict"] == "pass", fails
    assert "xid on GPU 0: XID 79 during burn-in" in fails["gpu-node-01"]
    assert "ecc_uncorrectable on GPU 1: 2 uncorrectable ECC errors" in fails["gpu-node-02"]
    assert "dcgm_gpu_memory on GPU 1: DCGM says Fail" in fails["gpu-node-02"] or \
        "dcgm_page_retirement_row_remap on GPU 1: DCGM says Fail" in fails["gpu-node-02"]
    assert "throttle on GPU 3: hw_slowdown, hw_thermal_slowdown active" in fails["gpu-node-03"]
    assert fails["gpu-node-04"] == "nvlink on GPU 4: link 3 inactive"
    healthy = {r["test"] for r in nodes["gpu-node-05"]["results"]}
    assert {"xid", "ecc_uncorrectable", "row_remap", "throttle", "nvlink",
            "dcgm_denylist"} <= healthy

    for fmt in ("term", "md", "json", "junit", "html"):
        out = tmp_path / f"report.{fmt}"
        assert gpuctl("report", "--format", fmt, "-o", str(out)).code == 0
        assert out.stat().st_size > 1000
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["summary"] == {"nodes": 5, "passed": 1, "failed": 4}
    healthy_doc = next(n for n in doc["nodes"] if n["name"] == "gpu-node-05")
    assert healthy_doc["certificate"]["profile"] == "h100-sxm-8+cpu-lab"
    assert len(healthy_doc["telemetry"]) >= 16  # 8 GPUs, sampled before and after at least
    assert healthy_doc["dcgm"]["output"]["DCGM GPU Diagnostic"]["version"] == "3.3.9"
    assert "nvlink on GPU 4: link 3 inactive" in (tmp_path / "report.junit").read_text()
    node_only = gpuctl("report", "--node", "gpu-node-04", "--format", "json")
    assert [n["name"] for n in json.loads(node_only.out)["nodes"]] == ["gpu-node-04"]

    from tests.browser import assert_page_ok, open_page  # noqa: PLC0415

    assert_page_ok(open_page(tmp_path / "report.html", tmp_path))


def test_report_errors_are_one_line(gpuctl) -> None:  # type: ignore[no-untyped-def]
    assert gpuctl("init").code == 0
    result = gpuctl("report")
    assert result.code == 1
    assert result.err.strip() == "Error: there is no burn-in run yet; run gpuctl burnin first"
    result = gpuctl("report", "99")
    assert result.err.strip() == "Error: no run 99"


def test_sigint_stops_the_agents_and_marks_the_run(lab, gpuctl, paths) -> None:  # type: ignore[no-untyped-def]
    import os
    import signal
    import subprocess
    import sys
    import time

    from provisioner.db.models import Run
    from tests.e2e.conftest import interruptible, lab_processes

    lab.up(1, "--driver")
    assert gpuctl("scan", "--all", "--accept-new").code == 0
    provisioned_by_lab(paths)
    env = {**os.environ, "GPUCTL_HOME": str(paths.home)}
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from provisioner.cli import "
                             "main; sys.exit(main(sys.argv[1:]))", "burnin", "--all",
                             "--duration", "60"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)

    def agent_pids() -> list[int]:
        return lab_processes(lab.lab, "gpuctl-burnin[.]")

    deadline = time.monotonic() + 60
    while not agent_pids():
        assert time.monotonic() < deadline, "the agent never started"
        time.sleep(0.2)
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 3, (out, err)
    assert "burn-in interrupted" in err and "Traceback" not in err
    deadline = time.monotonic() + 15
    while agent_pids():  # the stress processes on the node are gone too
        assert time.monotonic() < deadline, agent_pids()
        time.sleep(0.2)
    with session_scope(paths.db_url) as session:
        assert session.exec(select(Run.status).where(Run.kind == "burnin")).one() == \
            "interrupted"
    node = json.loads(gpuctl("nodes", "list", "--json").out)[0]
    assert node["state"] == "failed"
    # Burned in again by name, it passes.
    result = gpuctl("burnin", "gpu-node-01", "--duration", "0.2", "--json")
    assert result.code == 0, result
    assert json.loads(gpuctl("nodes", "list", "--json").out)[0]["state"] == "certified"
