"""Per-node locks in the database: two runs never act on the same node at once.

A lock row's primary key is the node id, so the second insert fails in the database
itself, whichever process or host tries it. A lock left by a process that died on this
host is taken over; one held on another host must be released by hand.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, delete, select

from provisioner.db.engine import session_scope
from provisioner.db.models import Node, NodeLock, Run
from provisioner.errors import GpuctlError


class NodeBusyError(GpuctlError):
    """Another run holds a node."""


def holder_id(actor: str) -> str:
    return f"{actor} pid {os.getpid()}"


def _stale(lock: NodeLock) -> bool:
    """True when the holder was a process on this host that no longer runs."""
    host = socket.gethostname()
    try:
        who, pid_text = lock.holder.rsplit(" pid ", 1)
        pid = int(pid_text)
    except ValueError:
        return False
    if not who.endswith(f"@{host}"):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _describe(session: Session, lock: NodeLock, node: str) -> str:
    run = session.get(Run, lock.run_id)
    since = lock.acquired_at.isoformat(timespec="seconds") \
        if isinstance(lock.acquired_at, datetime) else lock.acquired_at
    kind = run.kind if run else "run"
    return f"{node} is held by {kind} run {lock.run_id} ({lock.holder}, since {since})"


def acquire(db_url: str, node_ids: dict[int, str], run_id: int, holder: str) -> None:
    """Lock every node for ``run_id``, all or none.

    Raises:
        NodeBusyError: another live run holds one of them (the message says which run).
    """
    with session_scope(db_url) as session:
        held = session.exec(select(NodeLock).where(col(NodeLock.node_id).in_(node_ids))).all()
        busy = []
        for lock in held:
            if _stale(lock):
                session.delete(lock)
            else:
                busy.append(_describe(session, lock, node_ids[lock.node_id]))
        if busy:
            raise NodeBusyError("; ".join(busy[:3]) + (f" (+{len(busy) - 3} more)"
                                                      if len(busy) > 3 else "") +
                                ": wait for it to finish")
        session.flush()
        for node_id in node_ids:
            session.add(NodeLock(node_id=node_id, run_id=run_id, holder=holder))
        try:
            session.flush()
        except IntegrityError:
            raise NodeBusyError("another run locked these nodes at the same moment; "
                                "try again") from None


def release(db_url: str, run_id: int) -> None:
    """Drop every lock of ``run_id``."""
    with session_scope(db_url) as session:
        session.exec(delete(NodeLock).where(col(NodeLock.run_id) == run_id))


def held_nodes(db_url: str) -> dict[str, int]:
    """Node name -> run id for every lock."""
    with session_scope(db_url) as session:
        rows = session.exec(select(Node.name, NodeLock.run_id).join(
            NodeLock, col(NodeLock.node_id) == Node.id)).all()
    return {name: run_id for name, run_id in rows}
