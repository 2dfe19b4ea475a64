"""gpuctl's node states and Slurm's, kept in step both ways.

gpuctl -> Slurm: only an in-service node takes jobs. Any other node gpuctl knows
(certified but not handed off or failed a hand-off gate, quarantined, drained, retired,
being provisioned or burned in, removed from gpuctl) is DRAINed in Slurm with gpuctl's
reason, so running jobs finish and no new ones start; an in-service node that gpuctl
drained is resumed. A node that is DOWN, FAIL or DRAIN for a reason gpuctl did not set
is never touched (LBNL NHC's rule: it only clears what it marked). ``SlurmListener``
does this for each state change as it commits (so a node is drained before the run
that moved it starts work); ``sync_slurm`` does it for every node (``gpuctl
monitor``'s reconcile, and the hand-off), retrying what failed before.
Slurm -> gpuctl: a node down, failed or drained by someone else, or a serving node not
responding, is a disagreement: ``gpuctl status`` shows it, and a sync records one event
in the node's history the first time it sees each such state.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, func, select

from provisioner.db.models import Event, Node
from provisioner.events import (
    Change,
    PoolsChanged,
    StateChange,
    SyncReport,
    last_state_changes,
)
from provisioner.handle import Gpuctl
from provisioner.inventory.lifecycle import State, record_event
from provisioner.slurm.apply import load_settings
from provisioner.slurm.client import (
    REASON_PREFIX,
    SlurmError,
    SlurmNode,
    cancel_jobs,
    drain,
    drain_reason,
    jobs_on,
    resume,
    sees_all_jobs,
    slurm_nodes,
)
from provisioner.slurm.pools import sync_pools

ACTOR_SLURM = "slurm"
# Only an in-service node takes jobs: a certified node has not passed the hand-off's
# gates (registration, slurmd -C, the smoke job) yet.
SERVING = (State.IN_SERVICE.value,)


# sinfo's %T states (sinfo(1) NODE STATE CODES): a node with jobs on it, and a node
# where none runs or can start.
JOBS_LEFT = ("draining", "allocated", "mixed", "completing", "failing")
QUIET = ("drained", "down", "fail")


class SlurmListener:
    """gpuctl's changes, mirrored in the live Slurm once ``handoff slurm --apply``
    recorded where it is (``provisioner.events.Listener``)."""

    name = "slurm"

    def __init__(self) -> None:
        # Once Slurm failed in this command, later changes are not sent (each try could
        # wait for a timeout per node); the reconcile tries again.
        self.down = ""

    def changed(self, gc: Gpuctl, changes: list[Change]) -> SyncReport | None:
        if load_settings(gc) is None:
            return None
        report = SyncReport(self.name)
        if self.down:
            report.error = self.down
            return report
        states = last_state_changes(changes)
        try:
            if states:
                _mirror(gc, states, report)
        except SlurmError as exc:
            report.error = self.down = str(exc)
            return report
        try:
            if any(isinstance(c, PoolsChanged) for c in changes):
                report.notes += sync_pools(gc) or []
        except SlurmError as exc:
            # A pool Slurm did not take (a reservation it refused) is reported; it does
            # not keep later drains of this command from reaching Slurm.
            report.error = f"pools: {exc}"
        return report

    def jobs_left(self, gc: Gpuctl, names: list[str]) -> dict[str, str] | None:
        """Nodes that are not quiet in Slurm: jobs still run there (sinfo's DRAINING,
        ALLOCATED, MIXED, COMPLETING, FAILING), or the drain did not take (IDLE: a job
        could start there). Quiet: DRAINED, DOWN, FAIL, a
        node Slurm does not know, or a DRAINING one that squeue shows no job on when
        gpuctl may see every job (24.11 was seen to show a node DRAINING for two minutes
        after its last job had ended). A DRAINED node that still has a job (suspended)
        is busy."""
        view = _slurm_view(gc, names)
        if view is None:
            return None
        out = {}
        for n, snode in view.items():
            if snode is None:  # a node in no partition (not listed) runs no job
                continue
            if snode.state in QUIET:
                # A node whose only jobs are suspended shows DRAINED (slurmctld
                # _suspend_job_nodes): they still hold its GPUs.
                held = jobs_on(n) if snode.drained else []
                if held:
                    out[n] = f"{snode.label()} in Slurm, but job {held[0]} still holds it"
                continue
            if snode.state == "draining" and sees_all_jobs() and not jobs_on(n):
                continue
            out[n] = (f"{snode.label()} in Slurm: jobs still run there"
                      if snode.state in JOBS_LEFT else
                      f"{snode.label()} in Slurm: not drained, jobs can start there")
        return out

    def kill_jobs(self, gc: Gpuctl, names: list[str]) -> dict[str, str] | None:
        """Cancel the jobs that still hold ``names`` (``--kill-jobs``); node -> which.

        Raises:
            SlurmError: Slurm cannot be asked, or refused.
        """
        view = _slurm_view(gc, names)
        if view is None:
            return None
        out = {}
        for n, snode in view.items():
            # Only on a node gpuctl drained: elsewhere new jobs could start as the old
            # ones go, and an admin's drain or DOWN is theirs.
            if snode is None or not snode.drained or not snode.by_gpuctl:
                state = f"{snode.label()} in Slurm" if snode else "not in Slurm"
                out[n] = f"{state}, not drained by gpuctl: no job cancelled"
                continue
            try:
                ids = jobs_on(n)
                if ids:
                    cancel_jobs(ids)
                    out[n] = f"cancelled job{'s' if len(ids) > 1 else ''} {', '.join(ids)}"
            except SlurmError as exc:  # this node's; the others' cancels stand
                out[n] = f"could not cancel its jobs: {exc}"
        return out

    def admin_holds(self, gc: Gpuctl, names: list[str]) -> dict[str, str] | None:
        """Nodes DOWN, FAIL or drained in Slurm by someone other than gpuctl, with by
        whom and why: remediation never acts on them.

        Raises:
            SlurmError: Slurm cannot be asked.
        """
        view = _slurm_view(gc, names)
        if view is None:
            return None
        return {n: f"{s.label()} in Slurm{f' by {s.reason_user}' if s.reason_user else ''}: "
                   f"{s.reason or 'no reason'}"
                for n, s in view.items() if s is not None and s.admin_owned}

    def reconcile(self, gc: Gpuctl) -> SyncReport | None:
        """Every node, then the pools (a pool change Slurm missed is caught up here)."""
        self.down = ""
        report = sync_slurm(gc)
        if report is not None and not report.error:
            try:
                report.notes += sync_pools(gc) or []
            except SlurmError as exc:
                report.error = f"pools: {exc}"
        return report


def _slurm_view(gc: Gpuctl, names: list[str]) -> dict[str, SlurmNode | None] | None:
    """Slurm's view of each of ``names`` (None: Slurm does not know it); None when gpuctl
    has not handed off to Slurm here."""
    if load_settings(gc) is None:
        return None
    view = slurm_nodes(names)
    return {n: view.get(n) for n in names}


def _wanted(snode: SlurmNode, serving: bool, reason: str, restate: bool = False) -> str:
    """What Slurm must do to the node: "resume", "drain", "foreign" (down, failed or
    drained by someone else: left alone, as LBNL NHC leaves a node it did not mark)
    or "". ``restate``: the same state with a new reason, which replaces gpuctl's."""
    if snode.admin_owned:
        return "foreign"
    if serving:
        return "resume" if snode.drained else ""
    # Not drained yet, or drained by gpuctl for another state (drained for maintenance,
    # then quarantined): Slurm gets the current one. A drain of the same state keeps
    # its (more precise) reason, such as the hand-off gate a node failed.
    state = reason.split(":", 1)[0]
    if not snode.drained or not snode.reason.startswith(f"{REASON_PREFIX} {state}:") \
            or (restate and snode.reason != drain_reason(reason)):
        return "drain"
    return ""


def _mirror(gc: Gpuctl, states: dict[str, StateChange], report: SyncReport) -> None:
    """Drain, resume or leave alone each node whose state just changed (only those
    Slurm knows). A node that stops serving is drained before its run's work starts."""
    view = slurm_nodes()
    to_drain: dict[str, str] = {}
    for name, change in states.items():
        snode = view.get(name)
        if snode is None:
            continue
        reason = f"{change.to_state}: {change.reason}"
        action = _wanted(snode, change.to_state in SERVING, reason, change.restate)
        if action == "drain":
            to_drain[name] = reason
        elif action == "resume":
            report.resumed.append(name)
        elif action == "foreign":
            report.foreign.append(name)
    if report.foreign:
        with gc.session() as session:
            for node in session.exec(select(Node).where(col(Node.name).in_(report.foreign))):
                _note_foreign_drain(session, node, view[node.name])
    _apply(to_drain, report)


def _apply(to_drain: dict[str, str], report: SyncReport) -> None:
    """One scontrol call per distinct reason (a run's nodes share one), one to resume."""
    by_reason: dict[str, list[str]] = {}
    for name, reason in to_drain.items():
        by_reason.setdefault(reason, []).append(name)
    for reason, names in by_reason.items():
        drain(names, reason)
        report.drained += names
    resume(report.resumed)


def _last_reasons(session: Session, node_ids: list[int]) -> dict[int, str]:
    """Each node's reason of its last state change, in one query."""
    last = (select(func.max(col(Event.id)).label("id"))
            .where(col(Event.node_id).in_(node_ids), Event.kind == "state")
            .group_by(col(Event.node_id)).subquery())
    return dict(session.exec(select(Event.node_id, Event.reason)
                             .join(last, col(last.c.id) == Event.id)).all())


def disagreement(state: str, snode: SlurmNode | None) -> str:
    """Why gpuctl's ``state`` and Slurm's view of the node disagree ("" if they agree).
    A node down, failed or drained by someone else is always one: gpuctl leaves it."""
    serving = state in SERVING
    if snode is None:
        return "not in Slurm" if state == State.IN_SERVICE.value else ""
    if snode.admin_owned and state != State.RETIRED.value:
        who = f" by {snode.reason_user}" if snode.reason_user else ""
        return f"{snode.label()} in Slurm{who}: {snode.reason or 'no reason'}"
    if serving and snode.drained:
        return f"{state} in gpuctl, {snode.label()} in Slurm ({snode.reason})"
    if serving and snode.not_responding:
        return f"{snode.label()} in Slurm" + (f": {snode.reason}" if snode.reason else "")
    if not serving and not snode.drained and state != State.RETIRED.value:
        return f"{state} in gpuctl, {snode.label()} in Slurm (takes jobs)"
    return ""


def sync_slurm(gc: Gpuctl, names: list[str] | None = None) -> SyncReport | None:
    """Push gpuctl's states of ``names`` (default: every node Slurm knows) to Slurm and
    record drains set by others. None when Slurm sync is off (no ``--apply`` yet).
    Never raises for Slurm trouble: the report carries the error, gpuctl's own state
    change stands, and the next sync retries."""
    if load_settings(gc) is None:
        return None
    report = SyncReport(ACTOR_SLURM)
    try:
        view = slurm_nodes()
        to_drain: dict[str, str] = {}
        with gc.session() as session:
            query = select(Node).where(col(Node.name).in_(list(view)))
            if names is not None:
                query = query.where(col(Node.name).in_(names))
            nodes = list(session.exec(query.order_by(col(Node.name))))
            reasons = _last_reasons(session, [n.id for n in nodes if n.id])
            for node in nodes:
                snode = view[node.name]
                held = gc.unverified.get(node.name) or (
                    "unverified: host key changed" if node.hostkey_mismatch else "")
                serving = node.state in SERVING and not held
                reason = f"{node.state}: " + (held or reasons.get(node.id or 0, node.state))
                action = _wanted(snode, serving, reason)
                if action == "drain":
                    to_drain[node.name] = reason
                elif action == "resume":
                    report.resumed.append(node.name)
                elif action == "foreign":
                    report.foreign.append(node.name)
                    _note_foreign_drain(session, node, snode)
        _apply(to_drain, report)
    except SlurmError as exc:
        report.error = str(exc)
    return report


def _note_foreign_drain(session: Session, node: Node, snode: SlurmNode) -> None:
    """One event per distinct drain someone else set on a serving node."""
    text = (f"{snode.label().split('*')[0].lower()} in Slurm by "
            f"{snode.reason_user or 'someone'}: {snode.reason}")[:500]
    last = session.exec(select(Event.reason).where(
        Event.node_id == node.id, Event.kind == "slurm")
        .order_by(col(Event.id).desc()).limit(1)).first()
    if last != text:
        record_event(session, node, "slurm", text, actor=ACTOR_SLURM, severity="warning")


def slurm_view(gc: Gpuctl) -> dict[str, Any] | None:
    """For ``gpuctl status``: Slurm's state of each node gpuctl handed off or that Slurm
    knows, and the disagreements. None when Slurm sync is off."""
    if load_settings(gc) is None:
        return None
    try:
        view = slurm_nodes()
    except SlurmError as exc:
        return {"error": str(exc), "nodes": [], "disagreements": []}
    rows, disagreements = [], []
    with gc.session() as session:
        for name, state in session.exec(select(Node.name, Node.state).where(
                col(Node.name).in_(list(view)) | (Node.state == State.IN_SERVICE.value))
                .order_by(col(Node.name))):
            snode = view.get(name)
            why = disagreement(state, snode)
            rows.append({"node": name, "gpuctl": state,
                         "slurm": snode.label() if snode else "absent",
                         "reason": snode.reason if snode else "", "disagreement": why})
            if why:
                disagreements.append({"node": name, "why": why})
    return {"error": "", "nodes": rows, "disagreements": disagreements}
