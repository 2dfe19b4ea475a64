"""The run scaffold: locks all-or-none, every exit path settles the run and its nodes,
and dead runs (pid gone, or heartbeat older than the lease) are recovered."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import col, select

from provisioner.db.models import Event, Node, NodeLock, Run, utcnow
from provisioner.handle import Gpuctl
from provisioner.inventory.lifecycle import State, transition
from provisioner.inventory.registry import NodeSpec, add_nodes
from provisioner.runs import NodeBusyError, RunScope, list_runs, recover_abandoned, show_run


def _nodes(gc: Gpuctl, state: State = State.DISCOVERED) -> list[Node]:
    add_nodes(gc, [NodeSpec(name=f"gpu{i}", address=f"127.0.0.{20 + i}") for i in (1, 2)])
    with gc.session() as session:
        nodes = list(session.exec(select(Node).order_by(Node.name)))
        for node in nodes:
            path = [State.DISCOVERED] + ([State.PROVISIONING, state]
                                         if state != State.DISCOVERED else [])
            for step in path:
                transition(session, node, step, actor="t", reason="fixture")
    return nodes


def _state(gc: Gpuctl) -> dict[str, str]:
    with gc.session() as session:
        return {n.name: n.state for n in session.exec(select(Node))}


def _run(gc: Gpuctl, run_id: int) -> Run:
    with gc.session() as session:
        run = session.get(Run, run_id)
        assert run is not None
        return run


def _locks(gc: Gpuctl) -> list[int]:
    with gc.session() as session:
        return list(session.exec(select(NodeLock.node_id)))


def test_locks_are_all_or_none_and_a_refused_run_leaves_no_trace(gc: Gpuctl) -> None:
    nodes = _nodes(gc)
    with RunScope(gc, "provision", {}, nodes[:1], busy=State.PROVISIONING) as first:
        assert _state(gc)["gpu1"] == "provisioning"
        busy = f"gpu1 is held by provision run {first.run_id} \\(.*pid \\d+ on {gc.host}"
        with pytest.raises(NodeBusyError, match=busy), RunScope(gc, "burnin", {}, nodes):
            pass
        assert len(_locks(gc)) == 1  # gpu2 was not locked by the refused run
        first.node_ok = {"gpu1": True}
        with gc.session() as session:
            node = session.exec(select(Node).where(Node.name == "gpu1")).one()
            transition(session, node, State.PROVISIONED, actor="t", reason="done")
    assert [r.kind for r in list_runs(gc)] == ["provision"]  # no row for the refused one
    assert _run(gc, first.run_id).status == "ok" and _locks(gc) == []


def test_an_exception_fails_the_run_and_settles_every_node(gc: Gpuctl) -> None:
    nodes = _nodes(gc, State.PROVISIONED)
    with pytest.raises(ZeroDivisionError), \
            RunScope(gc, "burnin", {}, nodes, busy=State.BURNING_IN) as run:
        1 / 0  # noqa: B018
    assert _state(gc) == {"gpu1": "failed", "gpu2": "failed"}
    stored = _run(gc, run.run_id)
    assert stored.status == "failed" and stored.finished_at is not None and _locks(gc) == []
    view, events = show_run(gc, run.run_id)
    assert view.summary["failed"] == ["gpu1", "gpu2"]
    assert events[-1]["reason"] == (f"burnin run {run.run_id} failed: ZeroDivisionError: "
                                    "division by zero")


def test_ctrl_c_marks_the_run_interrupted(gc: Gpuctl) -> None:
    nodes = _nodes(gc)
    with pytest.raises(KeyboardInterrupt), \
            RunScope(gc, "provision", {}, nodes, busy=State.PROVISIONING) as run:
        raise KeyboardInterrupt
    assert _run(gc, run.run_id).status == "interrupted"
    assert _state(gc) == {"gpu1": "failed", "gpu2": "failed"}


def _dead_run(gc: Gpuctl, host: str, pid: int, beat_age_s: float) -> int:
    """A run as a process that died would leave it: running, locks held, nodes busy."""
    with gc.session() as session:
        run = Run(kind="provision", actor="someone@elsewhere", host=host, pid=pid,
                  heartbeat_at=utcnow() - timedelta(seconds=beat_age_s))
        session.add(run)
        session.flush()
        assert run.id is not None
        for node in session.exec(select(Node)):
            session.add(NodeLock(node_id=node.id, run_id=run.id, holder="x"))  # type: ignore[arg-type]
            transition(session, node, State.PROVISIONING, actor="t", reason="x", run_id=run.id)
        return run.id


def test_a_run_whose_pid_is_gone_on_this_host_is_abandoned(gc: Gpuctl) -> None:
    _nodes(gc)
    run_id = _dead_run(gc, gc.host, 2**22 + 12345, beat_age_s=0)  # no such pid
    recovered = recover_abandoned(gc)
    assert [(r.run_id, r.nodes) for r in recovered] == [(run_id, ["gpu1", "gpu2"])]
    assert _run(gc, run_id).status == "abandoned" and _locks(gc) == []
    assert _state(gc) == {"gpu1": "failed", "gpu2": "failed"}
    with gc.session() as session:
        reason = session.exec(select(Event.reason).order_by(col(Event.id).desc())).first()
    assert reason is not None and reason.startswith(f"run {run_id} abandoned (process died")
    assert recover_abandoned(gc) == []  # once


def test_another_hosts_run_is_abandoned_only_when_its_heartbeat_is_stale(
        gc: Gpuctl, monkeypatch: pytest.MonkeyPatch) -> None:
    _nodes(gc)
    monkeypatch.setenv("GPUCTL_RUN_LEASE", "60")
    run_id = _dead_run(gc, "other-control-host", 1, beat_age_s=5)
    assert recover_abandoned(gc) == []  # its pid means nothing here; its beat is fresh
    with pytest.raises(NodeBusyError, match="on other-control-host"), \
            RunScope(gc, "burnin", {}, _nodes_rows(gc)):
        pass
    monkeypatch.setenv("GPUCTL_RUN_LEASE", "2")
    recovered = recover_abandoned(gc)
    assert [r.run_id for r in recovered] == [run_id]
    assert "no heartbeat from other-control-host for 5 s" in recovered[0].why
    assert _state(gc) == {"gpu1": "failed", "gpu2": "failed"}


def _nodes_rows(gc: Gpuctl) -> list[Node]:
    with gc.session() as session:
        return list(session.exec(select(Node)))


def test_a_live_run_keeps_its_heartbeat_fresh(gc: Gpuctl,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("GPUCTL_RUN_LEASE", "1")  # beats every 0.25 s
    nodes = _nodes(gc)
    with RunScope(gc, "scan", {}, nodes) as run:
        first = _run(gc, run.run_id).heartbeat_at
        time.sleep(1.5)
        assert recover_abandoned(gc) == []  # alive: not taken for dead
        assert _run(gc, run.run_id).heartbeat_at != first


def test_nodes_left_in_progress_without_a_run_are_failed(gc: Gpuctl) -> None:
    _nodes(gc, State.PROVISIONED)
    with gc.session() as session:
        node = session.exec(select(Node).where(Node.name == "gpu2")).one()
        transition(session, node, State.BURNING_IN, actor="old gpuctl", reason="x")
    assert [r.nodes for r in recover_abandoned(gc)] == [["gpu2"]]
    assert _state(gc) == {"gpu1": "provisioned", "gpu2": "failed"}
