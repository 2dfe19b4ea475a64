"""The remediation record: its states, its event log with evidence, and the attempts
history the planner reads back."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlmodel import select

from provisioner.db.engine import session_scope
from provisioner.db.models import Remediation, utcnow
from provisioner.errors import GpuctlError, TransitionError
from provisioner.fleet.ops import remove_nodes
from provisioner.handle import Gpuctl
from provisioner.inventory.lifecycle import get_node
from provisioner.inventory.registry import NodeSpec, add_nodes
from provisioner.paths import Paths
from provisioner.remediate.plan import NodeFacts, plan_remediation
from provisioner.remediate.policy import load_policy
from provisioner.remediate.record import (
    MOVES,
    STATES,
    advance,
    attempts_of,
    close,
    events_of,
    open_remediation,
    open_remediation_of,
)
from provisioner.scan.findings import Finding


def _node_id(paths: Paths, name: str = "gpu1") -> int:
    add_nodes(Gpuctl(paths), [NodeSpec(name=name, address="127.0.0.1")])
    with session_scope(paths.db_url) as session:
        node_id = get_node(session, name).id
    assert node_id is not None
    return node_id


def test_every_state_has_its_moves_and_closed_ones_are_final() -> None:
    assert set(MOVES) == set(STATES)
    assert [s for s in STATES if not MOVES[s]] == ["in-service", "rma", "failed"]


def test_a_remediation_from_quarantine_to_service(paths: Paths) -> None:
    node_id = _node_id(paths)
    with session_scope(paths.db_url) as session:
        record = open_remediation(session, node_id, fault="xid-46", rule="xid-reset-gpu",
                                  actor="monitor", message="XID 46 on 0000:18:00",
                                  evidence={"xids": [46]})
        for state in ("draining", "drain-succeeded"):
            advance(session, record, state, actor="monitor", message=state)
        advance(session, record, "remediating", actor="monitor", message="reset GPU 0",
                rung="reset")
        advance(session, record, "remediating", actor="monitor", message="reset failed",
                rung="reset", outcome="failed", after={"still": "xid 46"})
        advance(session, record, "remediating", actor="monitor", message="reboot",
                rung="reboot")
        advance(session, record, "remediation-succeeded", actor="monitor",
                message="rebooted", rung="reboot", outcome="succeeded")
        advance(session, record, "re-certifying", actor="monitor", message="burn-in")
        close(session, record, "in-service", actor="monitor", message="certified")
    with session_scope(paths.db_url) as session:
        assert open_remediation_of(session, node_id) is None
        record = session.exec(select(Remediation)).one()
        assert (record.state, record.rung) == ("in-service", "reboot")
        assert record.closed_at is not None
        events = events_of(session, record)
        assert [e.to_state for e in events] == [
            "quarantined", "draining", "drain-succeeded", "remediating", "remediating",
            "remediating", "remediation-succeeded", "re-certifying", "in-service"]
        assert json.loads(events[0].evidence_before_json) == {"xids": [46]}
        assert json.loads(events[4].evidence_after_json) == {"still": "xid 46"}
        history = attempts_of(session, node_id)
    assert [(a.fault, a.rung, a.outcome) for a in history] == [
        ("xid-46", "reset", "failed"), ("xid-46", "reboot", "succeeded")]
    # The same XID again a day later: the policy's 2 in 7 days sends it to RMA.
    decision = plan_remediation(
        [Finding("xid", "critical", "XID 46", xid=46, gpu="0000:18:00")], history,
        load_policy(paths.home), NodeFacts("gpu1", gpus_in_use=frozenset()),
        utcnow() + timedelta(days=1))
    assert decision.rung == "rma"


def test_illegal_moves_and_a_second_open_record_are_refused(paths: Paths) -> None:
    node_id = _node_id(paths)
    with session_scope(paths.db_url) as session:
        record = open_remediation(session, node_id, fault="nvlink", rule="nvlink-down",
                                  actor="t", message="link 3 inactive")
        with pytest.raises(TransitionError, match="from quarantined to remediating; "
                           "allowed: draining, failed, rma, waiting-breaker"):
            advance(session, record, "remediating", actor="t", message="skip the drain")
        with pytest.raises(GpuctlError, match="already has remediation"):
            open_remediation(session, node_id, fault="xid-79", rule="r", actor="t",
                             message="again")
        with pytest.raises(TransitionError, match="does not close"):
            close(session, record, "draining", actor="t", message="no")
        with pytest.raises(TransitionError, match="a rung ends succeeded or failed"):
            advance(session, record, "waiting-breaker", actor="t", message="x",
                    rung="reboot", outcome="requested")
        with pytest.raises(TransitionError, match="unknown rung"):
            advance(session, record, "waiting-breaker", actor="t", message="x",
                    rung="reinstall")
        advance(session, record, "waiting-breaker", actor="t",
                message="circuit breaker: 1 node already draining or remediating")
        close(session, record, "rma", actor="t", message="ticket asked for")
        with pytest.raises(TransitionError, match="allowed: none \\(closed\\)"):
            advance(session, record, "draining", actor="t", message="reopen")
        history = attempts_of(session, node_id)
    assert [(a.fault, a.rung, a.outcome) for a in history] == [("nvlink", "rma", "requested")]
    # The planner asks for no second RMA for the same fault.
    decision = plan_remediation([Finding("nvlink", "critical", "GPU 0: link 3 inactive")],
                                history, load_policy(paths.home), NodeFacts("gpu1"),
                                utcnow())
    assert decision.rung == "none" and "rma already requested" in decision.reason


def test_removing_a_node_removes_its_records(paths: Paths) -> None:
    node_id = _node_id(paths)
    with session_scope(paths.db_url) as session:
        open_remediation(session, node_id, fault="fabric", rule="fabric-not-registered",
                         actor="t", message="fabric In Progress")
    remove_nodes(Gpuctl(paths), ["gpu1"])
    with session_scope(paths.db_url) as session:
        assert attempts_of(session, node_id) == []
        assert open_remediation_of(session, node_id) is None
