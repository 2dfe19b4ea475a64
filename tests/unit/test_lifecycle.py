"""Node lifecycle transitions and the event log they write."""

from __future__ import annotations

import pytest
from sqlmodel import select

from provisioner.db.engine import session_scope
from provisioner.db.models import Event
from provisioner.errors import TransitionError
from provisioner.handle import Gpuctl
from provisioner.inventory.lifecycle import ALLOWED, State, get_node, transition
from provisioner.inventory.registry import NodeSpec, add_nodes
from provisioner.paths import Paths


def test_every_state_has_rules_and_retired_is_final() -> None:
    assert set(ALLOWED) == set(State)
    assert ALLOWED[State.RETIRED] == frozenset()
    assert State.IN_SERVICE in ALLOWED[State.CERTIFIED]
    # Only certified nodes may be handed to service.
    assert [s for s, nxt in ALLOWED.items() if State.IN_SERVICE in nxt] == \
        [State.CERTIFIED, State.DRAINED]


def test_transition_appends_event_and_illegal_one_lists_allowed(paths: Paths) -> None:
    add_nodes(Gpuctl(paths), [NodeSpec(name="gpu1", address="127.0.0.1")])
    with session_scope(paths.db_url) as session:
        node = get_node(session, "gpu1")
        transition(session, node, State.DISCOVERED, actor="t", reason="scanned", run_id=None)
    with pytest.raises(TransitionError, match="allowed: .*provisioning") as err, \
            session_scope(paths.db_url) as session:
        transition(session, get_node(session, "gpu1"), State.CERTIFIED, actor="t",
                   reason="skip ahead")
    assert "discovered to certified" in str(err.value)
    with session_scope(paths.db_url) as session:
        node = get_node(session, "gpu1")
        assert node.state == "discovered"
        events = session.exec(select(Event).where(Event.kind == "state")).all()
        assert [(e.from_state, e.to_state, e.reason) for e in events] == \
            [("registered", "discovered", "scanned")]
