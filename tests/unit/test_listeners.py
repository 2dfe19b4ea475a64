"""State changes reach the listeners (schedulers) when, and only when, they commit; a
listener's trouble never undoes or blocks gpuctl's change; a run's nodes are announced
as busy before the run's body starts."""

from __future__ import annotations

from typing import Any

import pytest
from sqlmodel import select

from provisioner.db.models import Node, NodeLock
from provisioner.errors import GpuctlError
from provisioner.events import (
    REMOVED,
    Change,
    PoolsChanged,
    StateChange,
    SyncReport,
    merge_reports,
)
from provisioner.fleet import ops, pools
from provisioner.handle import Gpuctl
from provisioner.inventory.lifecycle import State, get_node, transition
from provisioner.runs import RunScope
from provisioner.slurm.client import SlurmError
from tests.fleet_fixtures import fill_fleet


class Recorder:
    """A listener that keeps what it heard (and can be told to fail)."""

    name = "recorder"

    def __init__(self, fail: BaseException | None = None) -> None:
        self.heard: list[list[Change]] = []
        self.fail = fail

    def changed(self, gc: Gpuctl, changes: list[Change]) -> SyncReport | None:
        self.heard.append(list(changes))
        if self.fail is not None:
            raise self.fail
        return SyncReport(self.name, drained=[c.node for c in changes
                                              if isinstance(c, StateChange)])

    def reconcile(self, gc: Gpuctl) -> SyncReport | None:
        return SyncReport(self.name, notes=["reconciled"])

    def jobs_left(self, gc: Gpuctl, names: list[str]) -> dict[str, str] | None:
        return None


@pytest.fixture
def fleet(gc: Gpuctl) -> Gpuctl:
    # gpu00000 in-service, 01 certified, 02 quarantined, 03 provisioned, 04 failed, ...
    fill_fleet(gc.db_url, 8)
    return gc


def test_a_committed_change_is_announced_once_after_commit(fleet: Gpuctl) -> None:
    rec = Recorder()
    fleet.listeners.append(rec)
    seen_in_db: list[str] = []

    def changed(gc: Gpuctl, changes: list[Change]) -> SyncReport | None:
        # The listener runs after the commit: another transaction sees the new state.
        with gc.session() as session:
            seen_in_db.append(get_node(session, "gpu00001").state)
        return Recorder.changed(rec, gc, changes)

    rec.changed = changed  # type: ignore[method-assign]
    ops.apply(fleet, "drain", ["gpu00001"], "PSU swap")
    assert seen_in_db == ["drained"]
    assert rec.heard == [[StateChange("gpu00001", "certified", "drained",
                                      "drain: PSU swap", None)]]
    assert [r.lines() for r in fleet.take_reports()] == [["recorder: drained gpu00001"]]
    assert fleet.take_reports() == []


def test_a_rolled_back_change_is_never_announced(fleet: Gpuctl) -> None:
    rec = Recorder()
    fleet.listeners.append(rec)
    with pytest.raises(RuntimeError), fleet.session() as session:
        node = get_node(session, "gpu00001")
        transition(session, node, State.QUARANTINED, actor="t", reason="x")
        raise RuntimeError("the transaction fails after the transition")
    assert rec.heard == []
    with fleet.session() as session:
        assert get_node(session, "gpu00001").state == "certified"


def test_a_failing_listener_neither_raises_nor_undoes_the_change(fleet: Gpuctl) -> None:
    fleet.listeners += [Recorder(GpuctlError("slurmctld not responding")),
                        Recorder(KeyError("bug"))]
    fleet.listeners[1].name = "buggy"  # type: ignore[misc]
    changes = ops.apply(fleet, "quarantine", ["gpu00000"], "user reports NaNs")
    assert [c.to_state for c in changes] == ["quarantined"]
    with fleet.session() as session:
        assert get_node(session, "gpu00000").state == "quarantined"
    errors = {r.target: r.error for r in fleet.take_reports()}
    assert errors == {"recorder": "slurmctld not responding", "buggy": "KeyError: 'bug'"}


def test_a_run_announces_its_busy_nodes_before_its_body_runs(fleet: Gpuctl) -> None:
    rec = Recorder()
    fleet.listeners.append(rec)
    with fleet.session() as session:
        nodes = list(session.exec(select(Node).where(Node.name == "gpu00001")))
    with RunScope(fleet, "burnin", {}, nodes, busy=State.BURNING_IN) as run:
        # Inside the body: the scheduler has already heard the node is busy.
        assert [[(c.node, c.to_state) for c in h] for h in rec.heard] == [
            [("gpu00001", "burning-in")]]
        run.node_ok = {"gpu00001": False}
    # Leaving without a result settles the node to failed: announced too.
    assert [(c.node, c.to_state) for c in rec.heard[-1]] == [("gpu00001", "failed")]


def test_removal_and_pools_are_announced(fleet: Gpuctl) -> None:
    rec = Recorder()
    fleet.listeners.append(rec)
    pools.create_pool(fleet, "team-a", "h100-sxm-8", 8, open_to_all=True)
    pools.assign(fleet, "team-a", ["gpu00001"], 8)
    ops.remove_nodes(fleet, ["gpu00001", "gpu00000"])
    flat = [c for h in rec.heard for c in h]
    assert flat[:2] == [PoolsChanged("team-a"), PoolsChanged("team-a")]
    removed = {c.node: c for c in flat if isinstance(c, StateChange)}
    assert {n: (c.from_state, c.to_state) for n, c in removed.items()} == {
        "gpu00001": ("certified", REMOVED), "gpu00000": ("in-service", REMOVED)}
    # The removed node's pool capacity went with it, and the pool listener heard.
    assert PoolsChanged("team-a") in rec.heard[-1]


def test_reconcile_and_merge(fleet: Gpuctl) -> None:
    fleet.listeners.append(Recorder())
    reports = fleet.reconcile()
    assert [r.notes for r in reports] == [["reconciled"]]
    merged = merge_reports([SyncReport("slurm", drained=["a"], error="down"),
                            SyncReport("slurm", drained=["a", "b"], foreign=["c"])])
    assert merged["slurm"].to_dict() == {"target": "slurm", "drained": ["a", "b"],
                                         "resumed": [], "foreign": ["c"], "notes": [],
                                         "error": ""}


def test_the_cli_connects_every_target_listener(gpuctl: Any, monkeypatch: Any) -> None:
    from provisioner import targets

    seen: list[Gpuctl] = []
    real = targets.connect
    monkeypatch.setattr(targets, "connect", lambda gc: seen.append(real(gc)) or gc)
    assert gpuctl("status", "--json").code == 0
    assert [[lst.name for lst in gc.listeners] for gc in seen] == [["slurm"]]


def test_the_heartbeat_runs_while_schedulers_drain_and_ctrl_c_there_settles(
        fleet: Gpuctl) -> None:
    import threading

    from provisioner.db.models import NodeLock, Run

    beats: list[bool] = []

    class SlowScheduler(Recorder):
        def changed(self, gc: Gpuctl, changes: list[Change]) -> SyncReport | None:
            if any(c.to_state == "burning-in" for c in changes if isinstance(c, StateChange)):
                beats.append(any(t.name.endswith("-beat") for t in threading.enumerate()))
                raise KeyboardInterrupt  # the admin presses Ctrl-C while Slurm drains
            return None

    fleet.listeners.append(SlowScheduler())
    with fleet.session() as session:
        nodes = list(session.exec(select(Node).where(Node.name == "gpu00001")))
    with pytest.raises(KeyboardInterrupt), RunScope(fleet, "burnin", {}, nodes,
                                                     busy=State.BURNING_IN):
        raise AssertionError("the body must not run")
    assert beats == [True]
    with fleet.session() as session:
        run = session.exec(select(Run).where(Run.kind == "burnin", Run.actor != "fixture")
                           ).one()
        assert run.status == "interrupted"
        assert session.exec(select(NodeLock)).all() == []
        assert get_node(session, "gpu00001").state == "failed"


class Busy(Recorder):
    """A scheduler where jobs still run on the drained nodes for ``polls`` more asks
    (forever with None), or that cannot be asked (``fail``)."""

    def __init__(self, polls: int | None, fail: BaseException | None = None) -> None:
        super().__init__()
        self.polls, self.asked, self.ask_fail = polls, 0, fail

    def changed(self, gc: Gpuctl, changes: list[Change]) -> SyncReport | None:
        return None

    def jobs_left(self, gc: Gpuctl, names: list[str]) -> dict[str, str] | None:
        self.asked += 1
        if self.ask_fail is not None:
            raise self.ask_fail
        if self.polls is None or self.asked <= self.polls:
            return {n: "DRAINING in Slurm: jobs still run there" for n in names}
        return {}


def _burnin_scope(fleet: Gpuctl, wait: float) -> RunScope:
    with fleet.session() as session:
        nodes = list(session.exec(select(Node).where(Node.name == "gpu00001")))
    return RunScope(fleet, "burnin", {}, nodes, busy=State.BURNING_IN, wait=wait)


@pytest.mark.parametrize("scheduler", [Busy(None), Busy(0, fail=SlurmError("sinfo failed: "
                                                                          "timed out"))])
def test_no_disruptive_run_starts_while_jobs_run_on_its_nodes(fleet: Gpuctl,
                                                              scheduler: Busy) -> None:
    """Jobs still on a drained node (or a scheduler that cannot tell): the run fails
    before its body, with why, and settles its node."""
    from provisioner.runs import NodeBusyError

    fleet.listeners.append(scheduler)
    with pytest.raises(NodeBusyError) as err, _burnin_scope(fleet, 0.0):
        raise AssertionError("the body must not run")
    message = str(err.value)
    assert message.startswith("gpu00001: ") and "waited 0 s; nothing was done on the " \
        "nodes: wait for the jobs to end (or pass --wait SECONDS)" in message, message
    assert ("jobs still run there" if scheduler.ask_fail is None else
            "cannot ask recorder whether jobs still run there: sinfo failed") in message
    with fleet.session() as session:
        assert get_node(session, "gpu00001").state == "failed"
        assert not session.exec(select(NodeLock)).all()


def test_a_disruptive_run_waits_for_the_jobs_to_end(fleet: Gpuctl) -> None:
    scheduler = Busy(2)
    fleet.listeners.append(scheduler)
    with _burnin_scope(fleet, 30.0) as run:
        ran = run.run_id
    assert ran and scheduler.asked == 3


def test_slurm_is_quiet_only_where_no_job_runs_or_can_start(
        gc: Gpuctl, monkeypatch: pytest.MonkeyPatch) -> None:
    """A node whose drain did not take (IDLE) is as busy as one with jobs left; DRAINED,
    DOWN and FAIL are quiet, as is a node in no partition (sinfo does not list it), and a
    DRAINING one that squeue shows no job on (Slurm's state lagging behind), but only
    where gpuctl may see every job. A DRAINED node whose job is suspended is busy; squeue
    is never asked to clear a node that is not drained."""
    from provisioner.slurm import sync
    from provisioner.slurm.client import SlurmNode

    states = {"n-idle": "idle", "n-draining": "draining", "n-mixed": "mixed",
              "n-failing": "failing", "n-drained": "drained", "n-down": "down",
              "n-fail": "fail", "n-lagging": "draining", "n-suspended": "drained"}
    jobs = {"n-draining": ["7"], "n-suspended": ["9"]}
    monkeypatch.setattr(sync, "load_settings", lambda gc: object())
    monkeypatch.setattr(sync, "slurm_nodes", lambda names: {
        n: SlurmNode(n, states[n], False, "gpu:8", "", "") for n in names if n in states})
    monkeypatch.setattr(sync, "jobs_on", lambda node: jobs.get(node, []))
    busy = {
        "n-idle": "IDLE in Slurm: not drained, jobs can start there",
        "n-draining": "DRAINING in Slurm: jobs still run there",
        "n-mixed": "MIXED in Slurm: jobs still run there",
        "n-failing": "FAILING in Slurm: jobs still run there",
        "n-suspended": "DRAINED in Slurm, but job 9 still holds it"}
    for sees_all, lagging in ((True, {}), (False, {
            "n-lagging": "DRAINING in Slurm: jobs still run there"})):
        monkeypatch.setattr(sync, "sees_all_jobs", lambda sees_all=sees_all: sees_all)
        left = sync.SlurmListener().jobs_left(gc, [*states, "n-nowhere"])
        assert left == {**busy, **lagging}, sees_all


def test_slurm_that_cannot_be_asked_is_busy(gc: Gpuctl, monkeypatch: pytest.MonkeyPatch) -> None:
    """squeue failing fails closed: the wait reports the node, it does not clear it."""
    from provisioner.slurm import sync
    from provisioner.slurm.client import SlurmError, SlurmNode

    def refuse(node: str) -> list[str]:
        raise SlurmError("squeue -a failed: slurm_load_jobs error: Socket timed out")

    monkeypatch.setattr(sync, "load_settings", lambda gc: object())
    monkeypatch.setattr(sync, "slurm_nodes", lambda names: {
        "n1": SlurmNode("n1", "draining", False, "gpu:8", "", "")})
    monkeypatch.setattr(sync, "jobs_on", refuse)
    monkeypatch.setattr(sync, "sees_all_jobs", lambda: True)
    gc.listeners = [sync.SlurmListener()]
    left = gc.wait_quiet(["n1"], 0)
    assert left["n1"].startswith("cannot ask slurm whether jobs still run there: squeue -a "
                                 "failed"), left


def test_a_restated_reason_replaces_gpuctls_drain_reason_only(
        gc: Gpuctl, monkeypatch: pytest.MonkeyPatch) -> None:
    """A node sent for RMA stays quarantined; its drain reason in Slurm follows (one
    drain with the new reason). A plain change to the same state keeps gpuctl's more
    precise reason, and an admin's drain is never replaced."""
    from provisioner.events import StateChange
    from provisioner.slurm import sync
    from provisioner.slurm.client import SlurmNode

    view = {"n-ours": SlurmNode("n-ours", "drained", False, "gpu:8",
                                "gpuctl: quarantined: ecc-uncorrectable: 2 errors", "root"),
            "n-admin": SlurmNode("n-admin", "drained", False, "gpu:8", "PSU dead", "root")}
    drained: list[tuple[list[str], str]] = []
    monkeypatch.setattr(sync, "load_settings", lambda gc: object())
    monkeypatch.setattr(sync, "slurm_nodes", lambda names=None: view)
    monkeypatch.setattr(sync, "drain", lambda names, reason: drained.append((names, reason)))
    monkeypatch.setattr(sync, "resume", lambda names: None)
    listener = sync.SlurmListener()
    plain = [StateChange(n, "quarantined", "quarantined", "ecc again") for n in view]
    listener.changed(gc, plain)
    assert drained == []
    rma = [StateChange(n, "quarantined", "quarantined", "rma: ecc-uncorrectable: a part",
                       restate=True) for n in view]
    report = listener.changed(gc, rma)
    assert drained == [(["n-ours"], "quarantined: rma: ecc-uncorrectable: a part")]
    assert report is not None and report.foreign == ["n-admin"]
