"""One scaffold for every run (scan, provision, burn-in, hand-off), and crash recovery.

``RunScope`` creates the run's row (kind, actor, arguments, control host, pid,
heartbeat) and takes its nodes' locks in one transaction, so a refused run leaves
nothing behind. While the body runs, a thread refreshes the heartbeat. On every way
out (success, failure, Ctrl-C, any exception) it settles the nodes the body left in an
in-progress state, releases the locks and finishes the run with one status vocabulary:

    running -> ok | partial | failed | interrupted | abandoned

``ok``: every node reached what the run was for; ``partial``: some did; ``failed``: none
did, or the run itself raised; ``interrupted``: Ctrl-C; ``abandoned``: its process died
(``kill -9``, a crash, a reboot of the control host) and a later command found out.

A run is abandoned when its process is gone: on the same control host its pid no longer
exists; from any host, its heartbeat is older than the lease (``GPUCTL_RUN_LEASE``
seconds, 120 by default; PostgreSQL deployments have several admins on several hosts).
``recover_abandoned`` marks such runs, releases their locks and moves their nodes to
``failed`` with the reason "run N abandoned (process died)". Every command that acts on
nodes calls it first, and so does ``gpuctl runs recover``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import TracebackType
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, delete, select

from provisioner.db.models import Event, Node, NodeLock, Run, as_utc, iso_utc, utcnow
from provisioner.errors import GpuctlError, InputError, NotFoundError
from provisioner.events import take_changes
from provisioner.handle import Gpuctl
from provisioner.inventory.lifecycle import State, get_node, transition


class RunStatus(StrEnum):
    RUNNING = "running"
    OK = "ok"
    PARTIAL = "partial"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    ABANDONED = "abandoned"


# States a node holds only while a run works on it.
IN_PROGRESS = frozenset({State.PROVISIONING, State.BURNING_IN})
HEARTBEAT_SECONDS = 10.0


def lease_seconds() -> float:
    """How old a heartbeat may be before its run counts as dead (``GPUCTL_RUN_LEASE``)."""
    try:
        return max(1.0, float(os.environ.get("GPUCTL_RUN_LEASE", "120")))
    except ValueError:
        return 120.0


class NodeBusyError(GpuctlError):
    """Another live run holds a node."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _dead_reason(run: Run, host: str, now: datetime) -> str | None:
    """Why ``run`` (status running) is known to be dead, or None while it may live."""
    if run.host == host and run.pid is not None and not _pid_alive(run.pid):
        return f"process {run.pid} on {host} is gone"
    beat = as_utc(run.heartbeat_at or run.started_at)
    age = (now - beat).total_seconds()
    if age > lease_seconds():
        return f"no heartbeat from {run.host or 'its host'} for {age:.0f} s"
    return None


@dataclass
class Recovered:
    run_id: int
    kind: str
    why: str
    nodes: list[str] = field(default_factory=list)


def recover_abandoned(gc: Gpuctl) -> list[Recovered]:
    """Mark every dead run abandoned, release its locks and fail its in-progress nodes.

    Also fails nodes left in an in-progress state with no live run holding them (from a
    gpuctl older than this scaffold, or a database restored from a backup).
    """
    now = utcnow()
    out: list[Recovered] = []
    with gc.session() as session:
        running = session.exec(select(Run).where(Run.status == RunStatus.RUNNING)).all()
        for run in running:
            why = _dead_reason(run, gc.host, now)
            if why is None:
                continue
            assert run.id is not None
            rec = Recovered(run.id, run.kind, why)
            held = session.exec(select(Node).join(NodeLock, col(NodeLock.node_id) == Node.id)
                                .where(NodeLock.run_id == run.id)).all()
            for node in held:
                if State(node.state) in IN_PROGRESS:
                    transition(session, node, State.FAILED, actor=gc.actor, run_id=run.id,
                               reason=f"run {run.id} abandoned (process died: {why})")
                    rec.nodes.append(node.name)
            session.exec(delete(NodeLock).where(col(NodeLock.run_id) == run.id))
            run.status = RunStatus.ABANDONED
            run.finished_at = now
            run.summary_json = json.dumps({**_summary(run), "abandoned": why,
                                           "failed": rec.nodes})
            session.add(run)
            out.append(rec)
        session.flush()
        orphans = session.exec(select(Node).where(
            col(Node.state).in_([s.value for s in IN_PROGRESS]),
            ~col(Node.id).in_(select(NodeLock.node_id)))).all()
        for node in orphans:
            transition(session, node, State.FAILED, actor=gc.actor,
                       reason=f"left {node.state} by a run that is no longer running")
            out.append(Recovered(0, "orphan", f"{node.name} was {node.state}", [node.name]))
    return out


def _summary(run: Run) -> dict[str, Any]:
    try:
        doc = json.loads(run.summary_json or "{}")
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _describe_lock(session: Session, lock: NodeLock, node: str) -> str:
    run = session.get(Run, lock.run_id)
    kind = run.kind if run else "run"
    where = f"{run.actor}, pid {run.pid} on {run.host}" if run else "unknown holder"
    return (f"{node} is held by {kind} run {lock.run_id} ({where}, since "
            f"{iso_utc(lock.acquired_at)})")


class RunScope:
    """``with RunScope(gc, "provision", args, nodes, busy=State.PROVISIONING) as run:``

    Entering creates the run and locks ``nodes`` (all or none); with ``busy`` the nodes
    move to that state. The body sets ``run.status`` (else it is derived from
    ``run.node_ok``) and may add to ``run.summary``. Leaving settles everything.

    With ``busy``, the schedulers drain the nodes, and the body starts only once no job
    runs on any of them: up to ``wait`` seconds for the jobs to end (sinfo's DRAINING
    to DRAINED); after that the run fails before touching a node (the drain stays, the
    jobs run on).

    Raises (on entering):
        NodeBusyError: a live run holds one of the nodes (no run is recorded), or jobs
            still run on one after ``wait`` (the run is recorded as failed).
    """

    def __init__(self, gc: Gpuctl, kind: str, args: dict[str, Any],
                 nodes: list[Node] | None = None, *, busy: State | None = None,
                 start_reason: str = "", wait: float = 0.0) -> None:
        self.gc, self.kind, self.args, self.wait = gc, kind, args, wait
        self.nodes = list(nodes or [])
        self.busy, self.start_reason = busy, start_reason or f"{kind} started"
        self.run_id = 0
        self.status: str | None = None
        self.summary: dict[str, Any] = {}
        self.node_ok: dict[str, bool] = {}  # node -> reached what the run was for
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> RunScope:
        gc = self.gc
        names = {n.id: n.name for n in self.nodes if n.id is not None}
        with gc.session() as session:
            held = session.exec(select(NodeLock).where(col(NodeLock.node_id).in_(names))).all()
            if held:
                busy = [_describe_lock(session, lk, names[lk.node_id]) for lk in held]
                raise NodeBusyError("; ".join(busy[:3]) + (
                    f" (+{len(busy) - 3} more)" if len(busy) > 3 else "") +
                    ": wait for it to finish (a dead run is recovered automatically)")
            now = utcnow()
            run = Run(kind=self.kind, actor=gc.actor, args_json=json.dumps(self.args),
                      host=gc.host, pid=os.getpid(), heartbeat_at=now, started_at=now)
            session.add(run)
            session.flush()
            assert run.id is not None
            self.run_id = run.id
            for node_id in names:
                session.add(NodeLock(node_id=node_id, run_id=run.id,
                                     holder=f"{gc.actor} pid {os.getpid()}"))
            try:
                session.flush()
            except IntegrityError:
                raise NodeBusyError("another run locked these nodes at the same moment; "
                                    "try again") from None
            if self.busy is not None:
                for node in self.nodes:
                    stored = get_node(session, node.name)
                    if stored.state != self.busy:
                        transition(session, stored, self.busy, actor=gc.actor,
                                   run_id=run.id, reason=self.start_reason)
            # Announced below, once the heartbeat runs: draining many nodes in a slow
            # scheduler must not let another host think this run is dead.
            busy_changes = take_changes(session)
        self._beat = threading.Thread(target=self._heartbeat, name=f"run-{self.run_id}-beat",
                                      daemon=True)
        self._beat.start()
        try:
            gc.announce(busy_changes)  # the schedulers drain the nodes before the body runs
            left = gc.wait_quiet(list(names.values()), self.wait) \
                if self.busy is not None and names else {}
            if left:
                first, why = next(iter(sorted(left.items())))
                more = f" (+{len(left) - 1} more)" if len(left) > 1 else ""
                raise NodeBusyError(
                    f"{first}: {why}{more}; waited {self.wait:g} s; "
                    f"nothing was done on the nodes: wait for the jobs to end (or pass "
                    "--wait SECONDS)")
        except BaseException:  # Ctrl-C while draining: the run still settles
            self.__exit__(*sys.exc_info())
            raise
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(min(HEARTBEAT_SECONDS, lease_seconds() / 4)):
            try:
                with self.gc.session() as session:
                    run = session.get(Run, self.run_id)
                    if run is None or run.status != RunStatus.RUNNING:
                        return
                    run.heartbeat_at = utcnow()
                    session.add(run)
            except GpuctlError:
                continue  # the database is busy or away for a moment: beat again later

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=30)
        if exc_type is None:
            status = self.status or self._derived()
            why = f"{self.kind} run {self.run_id} ended without a result for this node"
        elif issubclass(exc_type, KeyboardInterrupt):
            status, why = RunStatus.INTERRUPTED, f"{self.kind} interrupted; run it again"
        else:
            status = RunStatus.FAILED
            text = " ".join(str(exc).split())[:300] or exc_type.__name__
            why = f"{self.kind} run {self.run_id} failed: {exc_type.__name__}: {text}" \
                if not isinstance(exc, GpuctlError) else \
                f"{self.kind} run {self.run_id} failed: {text}"
            self.summary.setdefault("error", why)
        self.status = status
        self._settle(status, why)

    def _derived(self) -> RunStatus:
        """From the per-node outcomes the body reported (none reported: ok)."""
        oks = list(self.node_ok.values())
        if all(oks):
            return RunStatus.OK
        return RunStatus.PARTIAL if any(oks) else RunStatus.FAILED

    def _settle(self, status: str, why: str) -> None:
        """In one transaction: nodes still in progress -> failed, locks released, the run
        finished. Nothing is left running or held, whatever happened before."""
        with self.gc.session() as session:
            failed = list(self.summary.get("failed", []))
            for node in self.nodes:
                stored = session.exec(select(Node).where(Node.name == node.name)).first()
                if stored is not None and State(stored.state) in IN_PROGRESS:
                    transition(session, stored, State.FAILED, actor=self.gc.actor,
                               run_id=self.run_id, reason=why)
                    failed.append(stored.name)
            session.exec(delete(NodeLock).where(col(NodeLock.run_id) == self.run_id))
            run = session.get(Run, self.run_id)
            assert run is not None
            run.status, run.finished_at = status, utcnow()
            if failed:
                self.summary["failed"] = sorted(set(failed))
            run.summary_json = json.dumps(self.summary, default=str)
            session.add(run)


# ---- selection: the nodes a run acts on -------------------------------------------------

def select_nodes(session: Session, names: list[str], all_nodes: bool,
                 eligible: set[State], verb: str, hint: str) -> list[Node]:
    """The nodes a run acts on: those named (each must be in an ``eligible`` state, have
    been scanned and have an unchanged host key) or, with ``all_nodes``, every eligible
    node.

    Raises:
        InputError: nothing selected, or any named node is not ready (all are listed).
    """
    if all_nodes:
        nodes = list(session.exec(select(Node).where(
            col(Node.state).in_([s.value for s in eligible]),
            col(Node.hostkey_mismatch).is_(False)).order_by(col(Node.name))))
    elif names:
        nodes = [get_node(session, n) for n in dict.fromkeys(names)]
    else:
        raise InputError(f"name the nodes to {verb}, or pass --all")
    bad = []
    held = {lk.node_id: lk for lk in session.exec(select(NodeLock).where(
        col(NodeLock.node_id).in_([n.id for n in nodes if State(n.state) in IN_PROGRESS])))}
    for node in nodes:
        if node.id in held:
            bad.append(_describe_lock(session, held[node.id], node.name))
        elif node.state == State.REGISTERED:
            bad.append(f"{node.name} was never scanned (run `gpuctl scan {node.name} "
                       "--accept-new` first so its host key is known)")
        elif State(node.state) not in eligible:
            bad.append(f"{node.name} is {node.state}")
        elif node.hostkey_mismatch:
            bad.append(f"{node.name} has a changed host key")
    if bad:
        raise InputError(f"cannot {verb}: " + "; ".join(bad) + f" ({hint})")
    if not nodes:
        raise InputError(f"no node is ready to {verb} ({hint})")
    return nodes


# ---- gpuctl runs list/show --------------------------------------------------------------

@dataclass
class RunView:
    id: int
    kind: str
    status: str
    actor: str
    host: str | None
    pid: int | None
    started: str | None
    finished: str | None
    seconds: float | None
    args: dict[str, Any]
    summary: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _view(run: Run) -> RunView:
    assert run.id is not None
    end = run.finished_at or (run.heartbeat_at if run.status == RunStatus.RUNNING else None)
    seconds = (as_utc(end) - as_utc(run.started_at)).total_seconds() if end else None
    try:
        args = json.loads(run.args_json or "{}")
    except ValueError:
        args = {}
    return RunView(run.id, run.kind, run.status, run.actor, run.host, run.pid,
                   iso_utc(run.started_at), iso_utc(run.finished_at),
                   None if seconds is None else round(seconds, 1), args, _summary(run))


def list_runs(gc: Gpuctl, *, kind: str | None = None, status: str | None = None,
              limit: int = 50) -> list[RunView]:
    """The newest runs of every kind (or one), newest first."""
    with gc.session() as session:
        query = select(Run)
        if kind:
            query = query.where(Run.kind == kind)
        if status:
            query = query.where(Run.status == status)
        rows = session.exec(query.order_by(col(Run.id).desc()).limit(limit)).all()
        return [_view(r) for r in rows]


def show_run(gc: Gpuctl, run_id: int) -> tuple[RunView, list[dict[str, Any]]]:
    """The run and the state changes it caused.

    Raises:
        NotFoundError: no run with that id.
    """
    with gc.session() as session:
        run = session.get(Run, run_id)
        if run is None:
            raise NotFoundError(f"no run {run_id} (see `gpuctl runs list`)")
        rows = session.exec(select(Event, Node.name).join(Node, col(Node.id) == Event.node_id)
                            .where(Event.run_id == run_id).order_by(col(Event.id))).all()
        events = [{"node": name, "at": iso_utc(e.at), "kind": e.kind, "from": e.from_state,
                   "to": e.to_state, "reason": e.reason} for e, name in rows]
        return _view(run), events
