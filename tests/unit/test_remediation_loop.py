"""The remediation loop (``remediate_nodes``) with its node-facing steps injected: a
quarantined node goes back in service after its rung, a failed rung climbs, a
repeat or a part goes to RMA with one ticket, the breaker holds nodes with the reason
``status`` shows, jobs are waited for and never killed, an admin's drain and the
control host are refused, ``--plan`` changes nothing, and no record is ever left open."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlmodel import col, select

from provisioner.db.models import (
    Event,
    HardwareSnapshot,
    Node,
    Remediation,
    RemediationEvent,
    Run,
)
from provisioner.errors import GpuctlError
from provisioner.events import Change, StateChange, SyncReport
from provisioner.fleet.status import status_document
from provisioner.handle import Gpuctl
from provisioner.heal.actions import ActionResult
from provisioner.heal.loop import remediate_nodes
from provisioner.heal.steps import Check, Steps
from provisioner.inventory.lifecycle import State, get_node, transition
from provisioner.inventory.registry import NodeSpec, add_nodes, show_node
from provisioner.remediate.record import open_remediation
from provisioner.scan.findings import Finding
from provisioner.shipped import shipped_dir

XID79 = Finding("xid", "critical", "XID 79 on 0000:18:00: GPU has fallen off the bus",
                xid=79, gpu="0000:18:00")
ECC = Finding("ecc-uncorrectable", "critical", "GPU 1: 2 uncorrectable DRAM ECC errors")


class Slurmish:
    """A listener: hears changes, says which nodes still run jobs and which an admin
    holds."""

    name = "fake"

    def __init__(self) -> None:
        self.heard: list[StateChange] = []
        self.busy: dict[str, str] = {}
        self.held: dict[str, str] = {}

    def changed(self, gc: Gpuctl, changes: list[Change]) -> SyncReport | None:
        self.heard += [c for c in changes if isinstance(c, StateChange)]
        return None

    def reconcile(self, gc: Gpuctl) -> SyncReport | None:
        return None

    def jobs_left(self, gc: Gpuctl, names: list[str]) -> dict[str, str] | None:
        return {n: why for n, why in self.busy.items() if n in names}

    def admin_holds(self, gc: Gpuctl, names: list[str]) -> dict[str, str] | None:
        return {n: why for n, why in self.held.items() if n in names}

    def kill_jobs(self, gc: Gpuctl, names: list[str]) -> dict[str, str] | None:
        """Cancels the jobs of the nodes in ``killable``; the others' jobs stay."""
        self.killed = [*getattr(self, "killed", []), *names]
        done = {n: "cancelled job 41" for n in names if n in self.killable}
        for n in done:
            self.busy.pop(n, None)
        return done

    killable: frozenset[str] = frozenset()


class FakeSteps:
    """The node-facing steps, scripted: ``rungs[(node, rung)]`` ok or not (default ok);
    the burn-in certifies unless the node is in ``burn_fails`` (then quarantines)."""

    def __init__(self, gc: Gpuctl) -> None:
        self.gc = gc
        self.calls: list[tuple[str, str]] = []
        self.rungs: dict[tuple[str, str], bool] = {}
        self.burn_fails: set[str] = set()
        self.raise_in: BaseException | None = None

    def steps(self) -> Steps:
        return Steps(gpus=self.gpus, rung=self.rung, rescan=self.rescan, burnin=self.burnin)

    def gpus(self, gc: Gpuctl, name: str, nvswitch: bool) -> tuple[frozenset[str] | None,
                                                                   bool | None]:
        self.calls.append((name, "gpus"))
        return frozenset(), None

    def rung(self, gc: Gpuctl, name: str, rung: str, gpus: tuple[str, ...],
             timeout: float) -> ActionResult:
        self.calls.append((name, rung))
        if self.raise_in is not None:
            raise self.raise_in
        ok = self.rungs.get((name, rung), True)
        return ActionResult(ok, f"{rung} {'worked' if ok else 'did not help'}",
                            {"rung": rung})

    def rescan(self, gc: Gpuctl, name: str) -> Check:
        self.calls.append((name, "scan"))
        return Check(True, "re-scan clean")

    def burnin(self, gc: Gpuctl, name: str, level: str, seconds: float | None) -> Check:
        self.calls.append((name, f"burnin-{level}"))
        fail = name in self.burn_fails
        with gc.session() as session:
            node = get_node(session, name)
            transition(session, node, State.BURNING_IN, actor="t", reason="burn-in")
            transition(session, node, State.QUARANTINED if fail else State.CERTIFIED,
                       actor="t", reason="burn-in failed" if fail else "certified")
        return Check(not fail, "burn-in failed: XID 79" if fail else "certified")


def _policy(home: Path, **change: Any) -> None:
    doc = yaml.safe_load((shipped_dir() / "inventory" / "remediation.yml").read_text())
    doc.update(change)
    (home / "remediation.yml").write_text(yaml.safe_dump(doc))


def _broken(gc: Gpuctl, name: str, *findings: Finding, served: str = "in-service",
            address: str | None = None, bmc: bool = True) -> None:
    """A node that served as ``served`` and that a pass quarantined for ``findings``."""
    add_nodes(gc, [NodeSpec(name=name, address=address or f"127.0.90.{len(name)}",
                            sku="h100-sxm-8")])
    with gc.session() as session:
        node = get_node(session, name)
        node.state = served
        node.bmc_url = "https://127.0.91.1" if bmc else None
        snap = HardwareSnapshot(node_id=node.id, run_id=None, hostname=name,
                                facts_json=json.dumps({"findings": [asdict(f)
                                                                    for f in findings]}))
        session.add(snap)
        session.flush()
        node.last_snapshot_id = snap.id
        session.add(node)
        run = Run(kind="monitor", actor="monitor")  # a check's quarantine, not a person's
        session.add(run)
        session.flush()
        transition(session, node, State.QUARANTINED, actor="monitor", run_id=run.id,
                   reason="; ".join(f.message for f in findings))


def _serving(gc: Gpuctl, n: int) -> None:
    """``n`` in-service nodes of the SKU, so the breaker's percentage allows some."""
    add_nodes(gc, [NodeSpec(name=f"ok{i:02d}", address=f"127.0.92.{i}", sku="h100-sxm-8")
                   for i in range(n)])
    with gc.session() as session:
        for node in session.exec(select(Node).where(col(Node.name).like("ok%"))):
            node.state = "in-service"
            session.add(node)


@pytest.fixture
def loop(gc: Gpuctl) -> tuple[Gpuctl, Slurmish, FakeSteps]:
    listener = Slurmish()
    gc.listeners.append(listener)
    _serving(gc, 20)
    return gc, listener, FakeSteps(gc)


def _record(gc: Gpuctl, name: str) -> tuple[Remediation, list[RemediationEvent]]:
    with gc.session() as session:
        node = get_node(session, name)
        rec = session.exec(select(Remediation).where(Remediation.node_id == node.id)
                           .order_by(col(Remediation.id).desc())).first()
        assert rec is not None
        events = list(session.exec(select(RemediationEvent).where(
            RemediationEvent.remediation_id == rec.id).order_by(col(RemediationEvent.id))))
        session.expunge_all()
    return rec, events


def _state(gc: Gpuctl, name: str) -> str:
    with gc.session() as session:
        return get_node(session, name).state


def test_a_lost_gpu_is_rebooted_recertified_and_back_in_service(loop) -> None:  # type: ignore[no-untyped-def]
    gc, listener, fake = loop
    _broken(gc, "n1", XID79)
    summary = remediate_nodes(gc, steps=fake.steps(), level="quick")
    (node,) = summary.nodes
    assert (node.name, node.outcome, node.rungs) == ("n1", "in-service", ["reboot"])
    assert fake.calls == [("n1", "reboot"), ("n1", "scan"), ("n1", "burnin-quick")]
    assert _state(gc, "n1") == "in-service"
    rec, events = _record(gc, "n1")
    assert (rec.state, rec.fault, rec.rule, rec.rung) == (
        "in-service", "xid-79", "xid-restart-bare-metal", "reboot")
    assert rec.closed_at is not None
    assert [e.to_state for e in events] == [
        "quarantined", "draining", "drain-succeeded", "remediating",
        "remediation-succeeded", "re-certifying", "in-service"]
    assert (events[-1].rung, events[-1].outcome) == ("reboot", "succeeded")
    assert "XID 79" in events[0].evidence_before_json
    assert all(e.actor == gc.actor for e in events)
    # The node went quarantined -> provisioned (burn-in) -> certified -> in-service, and
    # the listener heard each move (a scheduler resumes the node on the last one).
    moves = [(c.from_state, c.to_state) for c in listener.heard if c.node == "n1"]
    assert moves[-1] == ("certified", "in-service")
    assert ("quarantined", "provisioned") in moves


def test_a_failed_rung_climbs_one_rung_in_the_same_record(loop) -> None:  # type: ignore[no-untyped-def]
    gc, _, fake = loop
    _broken(gc, "n1", XID79)
    fake.rungs[("n1", "reboot")] = False
    summary = remediate_nodes(gc, steps=fake.steps())
    assert summary.nodes[0].rungs == ["reboot", "power-cycle"]
    assert summary.nodes[0].outcome == "in-service"
    rec, events = _record(gc, "n1")
    ends = [(e.rung, e.outcome) for e in events if e.outcome]
    assert ends == [("reboot", "failed"), ("power-cycle", "succeeded")]
    # A burn-in that fails after a rung climbs too, and a node without a BMC climbs past
    # the power cycle to RMA.
    _broken(gc, "n22", XID79, bmc=False)
    fake.burn_fails.add("n22")
    summary = remediate_nodes(gc, ["n22"], steps=fake.steps())
    assert (summary.nodes[0].outcome, summary.nodes[0].rungs) == ("rma", ["reboot", "rma"])
    assert _state(gc, "n22") == "quarantined"


def test_a_part_goes_to_rma_with_one_ticket(loop, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gc, listener, fake = loop
    log = tmp_path / "tickets.log"
    _policy(gc.paths.home, rma_hook={"command": [
        sys.executable, "-c", "import sys; open(sys.argv[1], 'a').write(' '.join("
        "sys.argv[2:]) + '\\n')", str(log)], "timeout": "10s"})
    _broken(gc, "n1", ECC)
    summary = remediate_nodes(gc, steps=fake.steps())
    assert summary.nodes[0].outcome == "rma" and fake.calls == []
    (line,) = log.read_text().splitlines()
    node, bundle = line.split()
    evidence = json.loads(Path(bundle).read_text())
    assert node == "n1" and evidence["fault"] == "ecc-uncorrectable"
    assert evidence["findings"][0]["message"] == ECC.message
    rec, events = _record(gc, "n1")
    assert rec.state == "rma" and (events[-1].rung, events[-1].outcome) == (
        "rma", "requested")
    assert _state(gc, "n1") == "quarantined"
    # The next pass asks for no second ticket: the node waits for a person.
    again = remediate_nodes(gc, steps=fake.steps())
    assert again.nodes[0].outcome == "none" and "rma already requested" in \
        again.nodes[0].message
    assert len(log.read_text().splitlines()) == 1


def test_the_same_fault_again_within_the_window_goes_straight_to_rma(loop) -> None:  # type: ignore[no-untyped-def]
    gc, _, fake = loop
    _broken(gc, "n1", XID79)
    assert remediate_nodes(gc, steps=fake.steps()).nodes[0].outcome == "in-service"
    with gc.session() as session:
        run = Run(kind="monitor", actor="monitor")
        session.add(run)
        session.flush()
        transition(session, get_node(session, "n1"), State.QUARANTINED, actor="monitor",
                   run_id=run.id, reason="XID 79 again")
    fake.calls.clear()
    summary = remediate_nodes(gc, steps=fake.steps())
    assert summary.nodes[0].outcome == "rma" and fake.calls == []
    assert "seen 2 times" in summary.nodes[0].message


def test_the_breaker_holds_nodes_and_status_says_why(loop) -> None:  # type: ignore[no-untyped-def]
    gc, _, fake = loop
    _policy(gc.paths.home, breaker={"max_nodes": 1, "max_percent": 50})
    _broken(gc, "n1", XID79)
    _broken(gc, "n22", XID79)
    summary = remediate_nodes(gc, steps=fake.steps())
    outcomes = {n.name: n.outcome for n in summary.nodes}
    assert outcomes == {"n1": "in-service", "n22": "waiting-breaker"}
    assert "(breaker.max_nodes)" in summary.nodes[1].message
    with gc.session() as session:
        doc = status_document(session)
    (row,) = doc["remediation"]["open"]
    assert (row["node"], row["state"]) == ("n22", "waiting-breaker")
    assert row["why"].startswith("circuit breaker: ")
    shown = show_node(gc, "n22").remediation
    assert shown is not None and shown["state"] == "waiting-breaker"
    # Its turn comes on the next pass, in the same record.
    assert remediate_nodes(gc, steps=fake.steps()).nodes[0].outcome == "in-service"
    rec, events = _record(gc, "n22")
    assert [e.to_state for e in events][:3] == ["quarantined", "waiting-breaker", "draining"]


def test_jobs_are_waited_for_and_never_killed(loop) -> None:  # type: ignore[no-untyped-def]
    gc, listener, fake = loop
    _broken(gc, "n1", XID79)
    listener.busy["n1"] = "DRAINING in Slurm: jobs still run there"
    summary = remediate_nodes(gc, steps=fake.steps(), drain_timeout=0)
    assert summary.nodes[0].outcome == "draining" and fake.calls == []
    assert "no job killed" in summary.nodes[0].message
    assert _record(gc, "n1")[0].state == "draining"  # open: the next pass goes on
    listener.busy.clear()
    assert remediate_nodes(gc, steps=fake.steps()).nodes[0].outcome == "in-service"


def test_kill_jobs_cancels_what_still_runs_past_the_drain_timeout(loop, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from provisioner.heal import loop as heal_loop  # noqa: PLC0415

    monkeypatch.setattr(heal_loop, "KILL_GRACE_S", 0.0)
    gc, listener, fake = loop
    for name in ("n1", "n2"):
        _broken(gc, name, XID79)
        listener.busy[name] = "DRAINING in Slurm: jobs still run there"
    listener.killable = frozenset({"n1"})  # n2's job outlives its cancel
    _policy(gc.paths.home, breaker={"max_nodes": 2, "max_percent": 100})
    summary = remediate_nodes(gc, steps=fake.steps(), drain_timeout=0, kill_jobs=True)
    out = {n.name: n for n in summary.nodes}
    assert listener.killed == ["n1", "n2"]
    assert out["n1"].outcome == "in-service", out
    assert out["n2"].outcome == "draining" and "no job killed" in out["n2"].message, out
    with gc.session() as session:
        events = [e.reason for e in session.exec(select(Event).where(
            Event.kind == "jobs-killed"))]
    assert events == ["--kill-jobs after 0 s: cancelled job 41"]


def test_kill_jobs_waits_only_for_nodes_whose_jobs_it_cancelled(loop, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    gc, listener, fake = loop
    _broken(gc, "n1", XID79)
    listener.busy["n1"] = "DRAINING in Slurm: jobs still run there"
    waits: list[tuple[list[str], float]] = []
    real = gc.wait_quiet

    def wait_quiet(names: list[str], timeout: float) -> dict[str, str]:
        waits.append((list(names), timeout))
        return real(names, 0)

    monkeypatch.setattr(gc, "wait_quiet", wait_quiet)
    summary = remediate_nodes(gc, steps=fake.steps(), drain_timeout=0, kill_jobs=True)
    assert listener.killed == ["n1"] and waits == [(["n1"], 0)]  # no grace wait
    assert summary.nodes[0].outcome == "draining"


def test_an_admins_drain_and_the_control_host_are_refused(loop) -> None:  # type: ignore[no-untyped-def]
    gc, listener, fake = loop
    _broken(gc, "n1", XID79)
    _broken(gc, "n22", XID79, address="127.0.0.1")
    listener.held["n1"] = "DRAIN in Slurm by alice: fan swap"
    summary = remediate_nodes(gc, steps=fake.steps())
    why = {n.name: (n.outcome, n.message) for n in summary.nodes}
    assert why["n1"][0] == "refused" and "alice: fan swap" in why["n1"][1]
    assert why["n22"][0] == "refused" and "control host" in why["n22"][1]
    assert fake.calls == []
    with gc.session() as session:
        assert session.exec(select(Remediation)).all() == []


def test_plan_changes_nothing(loop) -> None:  # type: ignore[no-untyped-def]
    gc, _, fake = loop
    _broken(gc, "n1", XID79)
    _broken(gc, "n22", ECC)

    def dump() -> list[Any]:
        with gc.session() as session:
            return [[tuple(r) for r in session.exec(select(*table.__table__.columns))]
                    for table in (Node, Event, Remediation, RemediationEvent)]

    before = dump()
    summary = remediate_nodes(gc, plan_only=True, steps=fake.steps())
    assert dump() == before and fake.calls == []
    plan = {n.name: (n.outcome, n.decision["rung"]) for n in summary.nodes}
    assert plan == {"n1": ("planned", "reboot"), "n22": ("planned", "rma")}
    assert summary.run_id is None


def test_every_exception_closes_the_record(loop) -> None:  # type: ignore[no-untyped-def]
    gc, _, fake = loop
    _broken(gc, "n1", XID79)
    fake.raise_in = GpuctlError("n1: SSH refused")
    summary = remediate_nodes(gc, steps=fake.steps())
    assert summary.nodes[0].outcome == "error"
    rec, events = _record(gc, "n1")
    assert rec.state == "failed" and "SSH refused" in events[-1].message
    _broken(gc, "n22", XID79)
    fake.raise_in = RuntimeError("a bug")
    with pytest.raises(RuntimeError):
        remediate_nodes(gc, ["n22"], steps=fake.steps())
    rec, events = _record(gc, "n22")
    assert rec.state == "failed" and "RuntimeError: a bug" in events[-1].message


def test_a_record_left_mid_rung_is_closed_as_failed(loop) -> None:  # type: ignore[no-untyped-def]
    gc, _, fake = loop
    _broken(gc, "n1", XID79)
    with gc.session() as session:
        rec = open_remediation(session, get_node(session, "n1").id or 0, fault="xid-79",
                               rule="r", actor="old", message="old")
        rec.state = "remediating"
        session.add(rec)
    summary = remediate_nodes(gc, steps=fake.steps())
    assert summary.nodes[0].outcome == "failed" and "abandoned" in summary.nodes[0].message
    assert _record(gc, "n1")[0].state == "failed" and fake.calls == []


def test_by_hand_a_serving_node_is_quarantined_then_power_cycled(loop) -> None:  # type: ignore[no-untyped-def]
    gc, listener, fake = loop
    summary = remediate_nodes(gc, ["ok03"], action="power-cycle", steps=fake.steps())
    # ok03 has no BMC: refused, nothing done.
    assert summary.nodes[0].outcome == "refused" and fake.calls == []
    with gc.session() as session:
        node = get_node(session, "ok03")
        node.bmc_url = "https://127.0.91.3"
        session.add(node)
    summary = remediate_nodes(gc, ["ok03"], action="power-cycle", steps=fake.steps())
    assert (summary.nodes[0].outcome, summary.nodes[0].rungs) == (
        "in-service", ["power-cycle"])
    moves = [(c.from_state, c.to_state) for c in listener.heard if c.node == "ok03"]
    assert moves[0] == ("in-service", "quarantined")  # drained before it was touched
    assert _record(gc, "ok03")[0].fault == "by-hand"


def test_prometheus_counts_rungs_and_shows_open_loops(loop, tmp_path: Path, gpuctl) -> None:  # type: ignore[no-untyped-def]
    gc, listener, fake = loop
    _policy(gc.paths.home, breaker={"max_nodes": 1, "max_percent": 50})
    _broken(gc, "n1", XID79)
    _broken(gc, "n22", XID79)
    fake.rungs[("n1", "reboot")] = False
    remediate_nodes(gc, steps=fake.steps())
    out = tmp_path / "gpuctl.prom"
    assert gpuctl("handoff", "prometheus", "-o", str(out)).code == 0
    text = out.read_text()
    assert "# TYPE gpuctl_remediation_rungs_total counter" in text
    assert 'gpuctl_remediation_rungs_total{rung="reboot",outcome="failed"} 1' in text
    assert 'gpuctl_remediation_rungs_total{rung="power-cycle",outcome="succeeded"} 1' in text
    assert 'gpuctl_remediation_state{node="n22",state="waiting-breaker"} 1' in text
    assert 'gpuctl_remediation_state{node="n1"' not in text  # closed


def test_a_scheduler_that_cannot_be_asked_holds_its_nodes(loop) -> None:  # type: ignore[no-untyped-def]
    gc, listener, fake = loop
    _broken(gc, "n1", XID79)

    def down(gc: Gpuctl, names: list[str]) -> dict[str, str]:
        raise GpuctlError("sinfo: slurmctld not responding")

    listener.admin_holds = down
    summary = remediate_nodes(gc, steps=fake.steps())
    assert summary.nodes[0].outcome == "refused" and fake.calls == []
    assert "cannot ask fake who drained it: sinfo: slurmctld" in summary.nodes[0].message


# -- after the adversarial review of issue 24 ---------------------------------------------

def _state(gc: Gpuctl, name: str) -> str:
    with gc.session() as session:
        return get_node(session, name).state


def test_a_failed_burn_in_leaves_the_node_quarantined_not_provisioned(loop) -> None:  # type: ignore[no-untyped-def]
    """An exception after the re-scan moved the node out of quarantine: the record
    closes failed and the node is quarantined again, where no provision or burn-in --all
    takes it."""
    gc, _, fake = loop
    _broken(gc, "n1", XID79)

    def boom(gc, name, level, seconds):  # type: ignore[no-untyped-def]
        raise GpuctlError("n1: burn-in could not run")

    steps = fake.steps()
    steps.burnin = boom
    summary = remediate_nodes(gc, steps=steps)
    assert summary.nodes[0].outcome == "error"
    assert _state(gc, "n1") == "quarantined"


def test_rma_of_a_serving_node_takes_it_out_of_service(loop) -> None:  # type: ignore[no-untyped-def]
    gc, _, fake = loop
    _broken(gc, "n1", ECC)
    with gc.session() as session:  # back in service as if a person had released it
        node = get_node(session, "n1")
        node.state = "in-service"
        session.add(node)
    summary = remediate_nodes(gc, ["n1"], steps=fake.steps())
    assert summary.nodes[0].outcome == "rma" and _state(gc, "n1") == "quarantined"


def test_a_persons_quarantine_is_theirs(loop) -> None:  # type: ignore[no-untyped-def]
    """`gpuctl quarantine` (no run: a person) is an admin hold: the loop leaves it."""
    gc, _, fake = loop
    _broken(gc, "n1", XID79)
    with gc.session() as session:
        node = get_node(session, "n1")
        node.state = "in-service"
        session.add(node)
        transition(session, node, State.QUARANTINED, actor="admin",
                   reason="hold for the vendor")
    assert remediate_nodes(gc, steps=fake.steps()).nodes == []
    assert fake.calls == [] and _state(gc, "n1") == "quarantined"


def test_a_node_in_another_state_is_refused_even_by_hand(loop) -> None:  # type: ignore[no-untyped-def]
    gc, _, fake = loop
    _broken(gc, "n1", XID79)
    with gc.session() as session:
        transition(session, get_node(session, "n1"), State.RETIRED, actor="admin",
                   reason="retired")
    summary = remediate_nodes(gc, ["n1"], action="power-cycle", steps=fake.steps())
    assert summary.nodes[0].outcome == "refused" and fake.calls == []
    assert "node is retired" in summary.nodes[0].message


def test_two_remediations_at_once_are_refused(loop) -> None:  # type: ignore[no-untyped-def]
    import fcntl
    import os

    gc, _, fake = loop
    _broken(gc, "n1", XID79)
    fd = os.open(gc.paths.home / "remediate.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(GpuctlError, match="another remediation is running"):
            remediate_nodes(gc, steps=fake.steps())
    finally:
        os.close(fd)
    assert fake.calls == []


def test_an_admin_hold_during_the_ladder_stops_it(loop) -> None:  # type: ignore[no-untyped-def]
    """The reboot did not help; before the power cycle the admin marks the node DOWN:
    the loop stops, the node stays quarantined."""
    gc, listener, fake = loop
    _broken(gc, "n1", XID79)
    fake.rungs[("n1", "reboot")] = False
    real = gc.admin_holds
    asked = {"n": 0}

    def holds(names):  # type: ignore[no-untyped-def]
        asked["n"] += 1
        return {"n1": "DOWN by admin"} if asked["n"] > 2 else real(names)

    gc.admin_holds = holds  # type: ignore[method-assign]
    summary = remediate_nodes(gc, steps=fake.steps())
    assert summary.nodes[0].outcome == "refused"
    assert ("n1", "power-cycle") not in fake.calls and _state(gc, "n1") == "quarantined"
