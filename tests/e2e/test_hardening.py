"""Issue 11's defects on lab nodes, each reproduced first: a changed host key reaches
neither Ansible nor the burn-in agent (and flags the node), removal respects run locks,
a scan reports a node removed under it, and agents stop when gpuctl dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
from sqlmodel import select

from provisioner.db.engine import session_scope
from provisioner.db.models import Node, Run, TaskResult
from provisioner.handle import Gpuctl
from provisioner.inventory.lifecycle import State, get_node, transition
from provisioner.inventory.registry import NodeSpec, add_nodes
from tests.e2e.conftest import lab_processes, wait_for

pytestmark = pytest.mark.e2e
AGENTS = "[/]tmp/gpuctl-burnin[.]"  # the agents' temp dirs in their command lines



def _provisioned(paths: Any, *names: str) -> None:
    """Test set-up: the nodes as a successful provision leaves them (the lab's --driver
    nodes already have the driver)."""
    with session_scope(paths.db_url) as session:
        for name in names:
            node = get_node(session, name)
            for state in (State.PROVISIONING, State.PROVISIONED):
                transition(session, node, state, actor="test set-up", reason="set-up")


def _nodes(gpuctl: Any) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in json.loads(gpuctl("nodes", "list", "--json").out)}




def test_a_changed_host_key_is_refused_by_every_ssh_path(lab, gpuctl, paths) -> None:  # type: ignore[no-untyped-def]
    lab.up(2, "--driver")
    assert gpuctl("scan", "--all", "--accept-new").code == 0
    assert gpuctl("lab", "fault", "gpu-node-01", "hostkey-changed").code == 0
    # Ansible: OpenSSH itself refuses (its own warning is the reason), no task runs.
    result = gpuctl("provision", "gpu-node-01", "--json")
    assert result.code == 3, result
    [node] = json.loads(result.out)["nodes"]
    assert node["status"] == "unreachable" and node["ok"] == 0 and node["changed"] == 0
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in node["reason"], node
    with session_scope(paths.db_url) as session:
        done = session.exec(select(TaskResult).where(TaskResult.node_id == 1)).all()
    assert {r.status for r in done} == {"unreachable"}, done
    # OpenSSH's own words, as Ansible passed them on: the SSH layer refused.
    assert "Host key verification failed" in done[0].message, done[0].message
    assert _nodes(gpuctl)["gpu-node-01"]["hostkey_mismatch"] is True
    again = gpuctl("provision", "gpu-node-01")
    assert again.code == 1 and "gpu-node-01 has a changed host key" in again.err
    # The burn-in agent's paramiko connection: refused, and the node is flagged too.
    _provisioned(paths, "gpu-node-02")
    assert gpuctl("lab", "fault", "gpu-node-02", "hostkey-changed").code == 0
    result = gpuctl("burnin", "gpu-node-02", "--duration", "0.1", "--json")
    assert result.code == 3, result
    [burn] = json.loads(result.out)["nodes"]
    assert burn["verdict"] == "error" and "host key" in " ".join(burn["failures"]), burn
    assert _nodes(gpuctl)["gpu-node-02"]["hostkey_mismatch"] is True
    events = json.loads(gpuctl("nodes", "show", "gpu-node-02", "--json").out)["events"]
    assert any(e["kind"] == "hostkey" and e["reason"].startswith("burn-in refused by SSH")
               for e in events), events


def test_agents_stop_when_gpuctl_is_killed(lab, gpuctl, paths) -> None:  # type: ignore[no-untyped-def]
    lab.up(1, "--driver")
    assert gpuctl("scan", "--all", "--accept-new").code == 0
    _provisioned(paths, "gpu-node-01")
    proc = subprocess.Popen([sys.executable, "-m", "provisioner", "burnin", "gpu-node-01",
                             "--duration", "120"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "GPUCTL_HOME": str(paths.home)})
    wait_for(lambda: bool(lab_processes(lab.lab, AGENTS)))
    time.sleep(2)  # well into its tests
    proc.send_signal(signal.SIGKILL)  # gpuctl only: the agent runs on the node
    proc.wait(timeout=30)
    start = time.monotonic()
    wait_for(lambda: not lab_processes(lab.lab, AGENTS), timeout=30)
    assert time.monotonic() - start < 15
    assert gpuctl("runs", "recover").code == 0


def test_removal_respects_runs_and_a_scan_reports_a_vanished_node(  # type: ignore[no-untyped-def]
        lab, gpuctl, paths, half_dead) -> None:
    lab.up(1, "--driver")
    assert gpuctl("scan", "--all", "--accept-new").code == 0
    _provisioned(paths, "gpu-node-01")
    proc = subprocess.Popen([sys.executable, "-m", "provisioner", "burnin", "gpu-node-01",
                             "--duration", "0.3", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "GPUCTL_HOME": str(paths.home)})
    wait_for(lambda: _nodes(gpuctl)["gpu-node-01"]["state"] == "burning-in")
    result = gpuctl("nodes", "remove", "gpu-node-01", "--yes")
    assert result.code == 1 and "gpu-node-01 is held by run" in result.err
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert json.loads(out)["nodes"][0]["verdict"] == "pass"  # its results were kept
    assert _nodes(gpuctl)["gpu-node-01"]["state"] == "certified"

    # A scan holds no locks; a node removed while it is probed is reported, not lost.
    add_nodes(Gpuctl(paths), [NodeSpec(name="silent", address=half_dead[0],
                                       key_path=str(paths.lab_dir / "id_ed25519"))])
    scan = subprocess.Popen([sys.executable, "-m", "provisioner", "scan", "--all",
                             "--accept-new", "--connect-timeout", "4", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "GPUCTL_HOME": str(paths.home)})

    def scan_running() -> bool:
        with session_scope(paths.db_url) as session:
            return bool(session.exec(select(Run).where(Run.kind == "scan",
                                                       Run.status == "running")).all())

    wait_for(scan_running)
    assert gpuctl("nodes", "remove", "silent", "--yes").code == 0
    out, err = scan.communicate(timeout=60)
    assert scan.returncode == 3, err
    results = {r["name"]: r for r in json.loads(out)["results"]}
    assert results["silent"]["outcome"] == "error"
    assert "removed during the scan" in results["silent"]["message"]
    assert results["gpu-node-01"]["outcome"] == "ok"
    with session_scope(paths.db_url) as session:
        names = [n.name for n in session.exec(select(Node))]
        run = session.exec(select(Run).where(Run.kind == "scan")).all()[-1]
    assert names == ["gpu-node-01"] and run.status == "partial"


def test_health_checks_fail_closed(lab, gpuctl, paths) -> None:  # type: ignore[no-untyped-def]
    """Neither dmesg nor the journal can be read: the XID check fails with why (it used
    to pass on the empty list it never saw). A GPU with ECC off fails on a SKU that
    requires it (it used to read as 0 errors and pass)."""
    lab.up(2, "--driver", "--fault", "gpu-node-01:kernel-log-unreadable",
           "--fault", "gpu-node-02:ecc-disabled")
    assert gpuctl("scan", "--all", "--accept-new").code == 0
    _provisioned(paths, "gpu-node-01", "gpu-node-02")
    result = gpuctl("burnin", "--all", "--duration", "0.1", "--parallel", "1", "--json")
    assert result.code == 3, result
    nodes = {n["name"]: n for n in json.loads(result.out)["nodes"]}
    log = " ".join(nodes["gpu-node-01"]["failures"])
    assert "kernel_log on node: the kernel log could not be read" in log, log
    assert "dmesg: read kernel buffer failed: Operation not permitted" in log
    assert "journalctl: No journal files were found." in log
    assert nodes["gpu-node-02"]["failures"] == [
        "ecc_mode on GPU 5: ECC is Disabled (pending Disabled); its SKU requires it on: "
        "`nvidia-smi -i N -e 1`, then reset the GPU or reboot"], nodes["gpu-node-02"]
    states = {n: v["state"] for n, v in _nodes(gpuctl).items()}
    assert states == {"gpu-node-01": "quarantined", "gpu-node-02": "quarantined"}
