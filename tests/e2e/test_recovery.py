"""gpuctl killed with SIGKILL mid-scan, mid-provision and mid-burn-in: the next command
recovers. The run reads ``abandoned``, no node stays in an in-progress state, no lock
blocks, and the database is intact. Once with the dead process on this control host
(its pid is gone) and once on another one (a UTS namespace with its own hostname; its
heartbeat lease runs out), which on PostgreSQL is two admins sharing one database."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
from sqlalchemy import text
from sqlmodel import select

from provisioner.db.engine import session_scope
from provisioner.db.models import Node, NodeLock, Run, TaskResult
from provisioner.handle import Gpuctl
from provisioner.inventory.registry import NodeSpec, add_nodes
from tests.e2e.conftest import wait_for

pytestmark = pytest.mark.e2e
IN_PROGRESS = {"provisioning", "burning-in"}



class Killable:
    """A gpuctl command in its own process (and, for ``host``, its own UTS namespace
    with that hostname), to be killed with SIGKILL."""

    def __init__(self, paths: Any, args: list[str], host: str | None = None) -> None:
        command = [sys.executable, "-m", "provisioner", *args]
        if host:
            command = ["unshare", "--uts", "sh", "-c", f'hostname {host} && exec "$@"', "-",
                       *command]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True,
                                     env={**os.environ, "GPUCTL_HOME": str(paths.home)})

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)  # reaped: a zombie's pid would still answer kill(0)
        # What it started (ansible-playbook, SSH agents' sessions) must not linger into
        # the next phase of the test.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def _rows(paths: Any) -> tuple[dict[str, str], list[int], list[Run]]:
    with session_scope(paths.db_url) as session:
        states = {n.name: n.state for n in session.exec(select(Node))}
        locks = list(session.exec(select(NodeLock.node_id)))
        runs = list(session.exec(select(Run).order_by(Run.id)))
    return states, locks, runs


def _running(paths: Any, kind: str) -> int | None:
    """The id of the run of ``kind`` that is running, if any."""
    return next((r.id for r in _rows(paths)[2] if r.kind == kind and r.status == "running"),
                None)


def _assert_recovered(paths: Any, run_id: int | None) -> Run:
    states, locks, runs = _rows(paths)
    [dead] = [r for r in runs if r.id == run_id]
    assert dead.status == "abandoned", dead
    assert not IN_PROGRESS & set(states.values()), states
    assert locks == [] and not [r for r in runs if r.status == "running"]
    with session_scope(paths.db_url) as session:
        if paths.db_url.startswith("sqlite"):
            assert session.exec(text("PRAGMA integrity_check")).one()[0] == "ok"  # type: ignore[call-overload]
            assert session.exec(text("PRAGMA foreign_key_check")).all() == []  # type: ignore[call-overload]
    return dead


def test_sigkill_mid_scan_provision_and_burnin_then_recovery(lab, gpuctl, paths,  # type: ignore[no-untyped-def]
                                                             half_dead) -> None:
    lab.up(2, "--driver")
    add_nodes(Gpuctl(paths), [NodeSpec(name="silent", address=half_dead[0],
                                       key_path=str(paths.lab_dir / "id_ed25519"))])

    # Mid-scan (a node that accepts TCP and never speaks SSH holds the scan open): the
    # next scan recovers the dead one first.
    proc = Killable(paths, ["scan", "--all", "--accept-new", "--connect-timeout", "30"])

    def two_stored() -> bool:
        return list(_rows(paths)[0].values()).count("discovered") == 2

    wait_for(two_stored)
    run_id = _running(paths, "scan")
    assert run_id
    proc.kill()
    assert gpuctl("scan", "--all", "--accept-new", "--connect-timeout", "1").code == 3
    _assert_recovered(paths, run_id)
    assert gpuctl("nodes", "remove", "silent", "--yes").code == 0

    # Mid-provision: status shows the nodes as failed and needing attention, with why.
    proc = Killable(paths, ["provision", "--all"])

    def provisioning() -> bool:
        with session_scope(paths.db_url) as session:
            return len(session.exec(select(TaskResult)).all()) >= 2

    wait_for(provisioning)
    assert set(_rows(paths)[0].values()) == {"provisioning"}
    run_id = _running(paths, "provision")
    proc.kill()
    status = json.loads(gpuctl("status", "--json").out)
    dead = _assert_recovered(paths, run_id)
    assert status["states"] == {"failed": 2} and status["attention"]["total"] == 2
    assert all(a["reason"].startswith(f"run {dead.id} abandoned (process died: process ")
               for a in status["attention"]["nodes"]), status["attention"]
    # --retry-failed finds the nodes the abandoned run left failed.
    from provisioner.provision.run import last_failed_nodes

    assert last_failed_nodes(Gpuctl(paths)) == ["gpu-node-01", "gpu-node-02"]
    assert gpuctl("drain", "gpu-node-01").code == 1  # refused for its state, not a lock
    assert "held by" not in gpuctl("drain", "gpu-node-01").err

    # An exception inside judging: the run fails, every node is failed with the reason.
    from provisioner.burnin import run as burnin_run

    def broken_judge(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected fault while judging")

    real = burnin_run._judge
    burnin_run._judge = broken_judge  # type: ignore[assignment]
    try:
        with pytest.raises(RuntimeError, match="injected"):
            gpuctl("burnin", "gpu-node-01", "gpu-node-02", "--duration", "0.1")
    finally:
        burnin_run._judge = real  # type: ignore[assignment]
    states, locks, runs = _rows(paths)
    assert runs[-1].kind == "burnin" and runs[-1].status == "failed" and locks == []
    assert states == {"gpu-node-01": "failed", "gpu-node-02": "failed"}
    history = json.loads(gpuctl("nodes", "show", "gpu-node-02", "--json").out)["events"]
    assert history[-1]["reason"] == (f"burnin run {runs[-1].id} failed: RuntimeError: "
                                     "injected fault while judging")

    # Mid-burn-in, then `gpuctl runs recover`.
    proc = Killable(paths, ["burnin", "gpu-node-01", "gpu-node-02", "--duration", "5"])
    wait_for(lambda: set(_rows(paths)[0].values()) == {"burning-in"})
    run_id = _running(paths, "burnin")
    proc.kill()
    result = gpuctl("runs", "recover")
    assert result.code == 0 and "(burnin) abandoned: process" in result.out, result
    dead = _assert_recovered(paths, run_id)
    listed = json.loads(gpuctl("runs", "list", "--json").out)
    assert [r["status"] for r in listed if r["id"] == dead.id] == ["abandoned"]
    assert gpuctl("burnin", "gpu-node-01", "--duration", "0.1").code in (0, 3)  # no lock


def test_a_run_dead_on_another_control_host_is_recovered_after_its_lease(
        lab, gpuctl, paths, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    lab.up(1, "--driver")
    assert gpuctl("scan", "--all", "--accept-new").code == 0
    proc = Killable(paths, ["provision", "gpu-node-01"], host="ctl-b")

    def provisioning() -> bool:
        with session_scope(paths.db_url) as session:
            return len(session.exec(select(TaskResult)).all()) >= 1

    wait_for(provisioning)
    proc.kill()
    run = [r for r in _rows(paths)[2] if r.kind == "provision"][-1]
    assert run.host == "ctl-b" and run.status == "running"
    # Its pid means nothing on this host; while its heartbeat is fresh it holds the node.
    monkeypatch.setenv("GPUCTL_RUN_LEASE", "60")
    result = gpuctl("provision", "gpu-node-01")
    assert result.code == 1 and f"held by provision run {run.id}" in result.err, result
    assert "on ctl-b" in result.err
    monkeypatch.setenv("GPUCTL_RUN_LEASE", "2")
    time.sleep(2.5)
    result = gpuctl("runs", "recover")
    assert "no heartbeat from ctl-b" in result.out, result
    _assert_recovered(paths, run.id)
    assert _rows(paths)[0] == {"gpu-node-01": "failed"}
