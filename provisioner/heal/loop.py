"""``remediate_nodes``: the loop from a broken node back to service, or to RMA.

For each node (every quarantined one, or those named): plan (``plan_remediation``), pass
the circuit breaker, then for a node that acts: its record opens; a serving node named by
hand is quarantined first (the listeners drain it in the scheduler); gpuctl waits until
no job runs there (``Gpuctl.wait_quiet``, bounded by ``drain_timeout``; jobs are never
killed: a node still busy stays drained, its record ``draining``, and the next pass goes
on); then the rung runs, the node is re-scanned and burned in again, and a node certified
goes back to the state it served in (``in-service`` resumes it in the scheduler). A rung
that fails (or whose re-scan or burn-in fails) is recorded ``failed`` and the planner,
reading that history, climbs one rung, in the same record, until the fault clears, the
ceiling says a person decides, or ``rma``: the evidence bundle is written and the site's
hook called once. Every exception closes the node's record as ``failed`` with why.

A node an admin took out, the control host, a node past the breaker: listed, not acted on.
``plan_only`` runs the planner and the breaker and changes nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlmodel import col, select

from provisioner.db.models import Node, Remediation
from provisioner.errors import GpuctlError, InputError
from provisioner.events import StateChange, note_change
from provisioner.fsutil import private_dir, write_bytes_atomically
from provisioner.handle import Gpuctl
from provisioner.heal.gather import NodeInfo, candidates, serving_per_sku
from provisioner.heal.steps import Steps
from provisioner.inventory.lifecycle import (
    SERVING,
    State,
    get_node,
    record_event,
    transition,
)
from provisioner.remediate.breaker import BreakerNode, Waiting, circuit_breaker
from provisioner.remediate.hook import run_rma_hook
from provisioner.remediate.plan import Decision, NodeFacts, plan_remediation
from provisioner.remediate.policy import LADDER, Policy, load_policy
from provisioner.remediate.record import (
    advance,
    attempts_of,
    close,
    events_of,
    open_remediation,
    open_remediation_of,
)
from provisioner.runs import RunScope, recover_abandoned

ACTIONS = ("reset", "reboot", "power-cycle")
# Open states a later pass takes over; any other open state was left by a process that
# died mid-rung (closed as failed: nobody knows what the node went through).
RESUMABLE = ("quarantined", "waiting-breaker", "draining")
ACTIVE = ("draining", "drain-succeeded", "remediating", "remediation-succeeded",
          "re-certifying")


@dataclass
class NodeRemediation:
    """What happened to one node. ``outcome``: planned (``--plan``), in-service,
    certified, rma, failed, waiting-breaker, draining (jobs still ran at the deadline),
    refused, none (nothing automatic), error."""

    name: str
    outcome: str
    message: str
    decision: dict[str, Any] = field(default_factory=dict)
    remediation_id: int | None = None
    rungs: list[str] = field(default_factory=list)


@dataclass
class RemediationSummary:
    run_id: int | None
    plan_only: bool
    policy: str
    nodes: list[NodeRemediation] = field(default_factory=list)

    @property
    def waiting(self) -> list[NodeRemediation]:
        return [n for n in self.nodes if n.outcome == "waiting-breaker"]

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "plan_only": self.plan_only, "policy": self.policy,
                "nodes": [asdict(n) for n in self.nodes]}


def remediate_nodes(gc: Gpuctl, names: list[str] | None = None, *, plan_only: bool = False,
                    drain_timeout: float = 1800.0, action: str | None = None,
                    level: str = "quick", burnin_seconds: float | None = None,
                    boot_timeout: float = 600.0, kill_jobs: bool = False,
                    steps: Steps | None = None,
                    now: datetime | None = None) -> RemediationSummary:
    """Remediate ``names`` (default: every quarantined node and every open record); see
    the module docstring.

    Args:
        action: by hand (``gpuctl remediate NODE --action``): run this rung once, whatever
            the policy's ladder says; refusals (admin, control host, breaker) still hold.
        level, burnin_seconds: the re-burn-in's level and per-test seconds.
        drain_timeout: seconds to wait for the scheduler's jobs to end on a node.
        kill_jobs: past ``drain_timeout``, have the scheduler cancel the jobs still on
            the node (then wait up to ``KILL_GRACE_S`` for them to go); without it, jobs
            are never touched.
        boot_timeout: seconds a node has to come back after a reboot or power cycle.
        steps: the steps that reach nodes (tests hand in their own).

    Raises:
        InputError: an unknown action, a bad policy file, or ``action`` without names.
        NotFoundError: a named node does not exist.
    """
    if action is not None and action not in ACTIONS:
        raise InputError(f"--action {action!r}: one of {', '.join(ACTIONS)}")
    if action is not None and not names:
        raise InputError("name the node to remediate by hand")
    steps = steps or Steps()
    now = now or datetime.now(UTC)
    policy = load_policy(gc.paths.home)
    if not plan_only:
        recover_abandoned(gc)
    nodes = candidates(gc, names)
    held = gc.admin_holds([n.name for n in nodes]) if nodes else {}
    decisions = {n.name: _decide(gc, n, policy, held.get(n.name, ""), action, now, steps)
                 for n in nodes}
    acting = [n for n in nodes if decisions[n.name].acts
              and decisions[n.name].rung != "rma"]
    with gc.session() as session:
        active = [BreakerNode(name, sku) for name, sku in _active_nodes(session)]
    # The breaker's base is each SKU's nodes that serve or would (broken ones among
    # them): the one broken node of a one-node SKU may still be worked on.
    base = serving_per_sku(gc)
    for n in nodes:
        if n.state not in SERVING:
            base[n.sku] = base.get(n.sku, 0) + 1
    verdict = circuit_breaker([BreakerNode(n.name, n.sku) for n in acting], active,
                              base, policy.breaker)
    waits = {w.name: w for w in verdict.wait}
    summary = RemediationSummary(None, plan_only, policy.path)
    if plan_only:
        for n in nodes:
            d = decisions[n.name]
            why = waits[n.name].reason if n.name in waits else d.reason
            summary.nodes.append(NodeRemediation(
                n.name, "waiting-breaker" if n.name in waits else
                "planned" if d.acts else "refused" if d.refused else "none",
                why, d.to_dict(), n.record_id))
        return summary
    with _one_remediation(gc), RunScope(gc, "remediate", {
            "nodes": [n.name for n in nodes], "action": action,
            "level": level}) as run:
        summary.run_id = run.run_id
        loop = _Loop(gc, policy, steps, run.run_id, level, burnin_seconds, boot_timeout,
                     now, action)
        loop.kill_jobs = kill_jobs
        results = [loop.settle_stale(n) for n in nodes]
        outcome = {r.name: r for r in results if r is not None}
        ready = [n for n in nodes if n.name not in outcome]
        for n in ready:
            d = decisions[n.name]
            if n.name in waits:
                outcome[n.name] = loop.guarded(n, d, lambda n=n, d=d: loop.hold(
                    n, d, waits[n.name]))
            elif d.acts and d.rung == "rma":
                outcome[n.name] = loop.guarded(n, d, lambda n=n, d=d: loop.rma(n, d))
            elif not d.acts:
                if n.record_id is not None:  # waiting, and now nothing is automatic
                    loop.settle(n, f"no longer acted on: {d.reason}"[:500])
                outcome[n.name] = NodeRemediation(n.name, "refused" if d.refused else "none",
                                                  d.reason, d.to_dict(), n.record_id)
        drained = loop.drain([n for n in ready if n.name in verdict.act], decisions,
                             drain_timeout, outcome)
        for n in drained:
            d = decisions[n.name]
            outcome[n.name] = loop.guarded(n, d, lambda n=n, d=d: loop.ladder(n, d))
        summary.nodes = [outcome[n.name] for n in nodes]
        run.node_ok = {r.name: r.outcome not in ("failed", "error") for r in summary.nodes}
        run.summary = {r.name: r.outcome for r in summary.nodes}
    return summary


@contextlib.contextmanager
def _one_remediation(gc: Gpuctl) -> Iterator[None]:
    """One remediation run at a time on this control host (an flock on the data dir's
    ``remediate.lock``): two at once would each pass the breaker, act on the same node
    and close each other's records as abandoned.

    Raises:
        GpuctlError: another remediation holds the lock.
    """
    path = gc.paths.home / "remediate.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise GpuctlError("another remediation is running on this control host "
                              f"({path} is locked); try again when it ends") from None
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _active_nodes(session: Any) -> list[tuple[str, str | None]]:
    """Nodes gpuctl is draining or remediating now: (name, SKU)."""
    return list(session.exec(select(Node.name, Node.sku).join(
        Remediation, col(Remediation.node_id) == Node.id).where(
        col(Remediation.state).in_(ACTIVE))).all())


def _decide(gc: Gpuctl, n: NodeInfo, policy: Policy, held: str, action: str | None,
            now: datetime, steps: Steps) -> Decision:
    if n.state not in (State.QUARANTINED.value, *SERVING) and n.record_id is None:
        # Retired, being provisioned or burned in by another run, failed: not a node
        # this loop may touch, even by hand.
        return Decision(n.name, "none", f"refused: node is {n.state}; remediation acts "
                        "on quarantined or serving nodes", refused=True)
    facts = NodeFacts(n.name, admin_drained=bool(held), admin_reason=held,
                      control_host=n.control_host, nvswitch=n.nvswitch, has_bmc=n.has_bmc)
    decision = plan_remediation(n.findings, n.history, policy, facts, now)
    wants_reset = any(s.startswith("reset: could not tell") for s in decision.skipped)
    if (wants_reset or action == "reset") and not decision.refused:
        # Asked only when a reset is in question: one SSH call.
        busy, fm = steps.gpus(gc, n.name, n.nvswitch)
        facts = replace(facts, gpus_in_use=busy, fabric_manager_running=fm)
        decision = plan_remediation(n.findings, n.history, policy, facts, now)
    if action is None or decision.refused:
        return decision
    if action == "power-cycle" and not n.has_bmc:
        return replace(decision, rung="none", refused=True,
                       reason="refused: power-cycle asked for, but no BMC is known")
    if action == "reset" and (facts.gpus_in_use is None or facts.gpus_in_use):
        return replace(decision, rung="none", refused=True, reason="refused: reset asked "
                       "for, but processes use the GPUs (or that could not be read)")
    return replace(decision, rung=action, fault=decision.fault or "by-hand",
                   rule=decision.rule or "by-hand",
                   reason=f"by hand: {gc.actor} asked for {action}; the plan said: "
                          f"{decision.rung}: {decision.reason}")


# How long cancelled jobs have to leave a node (scancel(1) sends SIGTERM, then SIGKILL
# after slurm.conf's KillWait, 30 s by default; epilogs run after).
KILL_GRACE_S = 120.0


class _Loop:
    def __init__(self, gc: Gpuctl, policy: Policy, steps: Steps, run_id: int, level: str,
                 seconds: float | None, boot_timeout: float, now: datetime,
                 action: str | None) -> None:
        self.gc, self.policy, self.steps, self.run_id = gc, policy, steps, run_id
        self.level, self.seconds, self.boot_timeout = level, seconds, boot_timeout
        self.now, self.action = now, action
        self.kill_jobs = False

    @property
    def dir(self) -> Path:
        return private_dir(self.gc.paths.runs_dir / f"remediate-{self.run_id}")

    def guarded(self, n: NodeInfo, d: Decision, body: Any) -> NodeRemediation:
        """Run ``body``; any exception closes the node's open record as failed with why
        (a GpuctlError is the node's outcome; anything else, a bug, is raised again)."""
        try:
            result: NodeRemediation = body()
            return result
        except BaseException as exc:
            why = str(exc) if isinstance(exc, GpuctlError) else \
                f"{type(exc).__name__}: {exc}"
            rid = self.settle(n, f"failed: {why}"[:500])
            if not isinstance(exc, GpuctlError):
                raise
            return NodeRemediation(n.name, "error", why, d.to_dict(), rid)

    def settle(self, n: NodeInfo, message: str) -> int | None:
        """The node's open record closed as failed, and the node quarantined again in the
        same transaction: a remediation that did not end in service leaves its node where
        no job and no other gpuctl run (provision, burn-in --all) takes it."""
        with self.gc.session() as session:
            record = open_remediation_of(session, n.node_id)
            if record is None:
                return n.record_id
            close(session, record, "failed", actor=self.gc.actor, message=message)
            self._requarantine(session, n, f"remediation {record.id} failed: {message}")
            return record.id

    def _requarantine(self, session: Any, n: NodeInfo, reason: str) -> None:
        node = get_node(session, n.name)
        if node.state not in (State.QUARANTINED.value, State.RETIRED.value):
            transition(session, node, State.QUARANTINED, actor=self.gc.actor,
                       run_id=self.run_id, reason=reason[:500])

    def settle_stale(self, n: NodeInfo) -> NodeRemediation | None:
        """A record left mid-rung by a process that died: closed as failed."""
        if not n.record_state or n.record_state in RESUMABLE:
            return None
        rid = self.settle(n, f"abandoned in {n.record_state} (the process running it "
                              "ended); a person checks the node")
        return NodeRemediation(n.name, "failed", f"remediation {rid} was abandoned in "
                               f"{n.record_state}: closed as failed", {}, rid)

    def _record(self, session: Any, n: NodeInfo, d: Decision) -> Remediation:
        """The node's open record, or a new one for the decision's fault."""
        record = open_remediation_of(session, n.node_id)
        if record is None:
            record = open_remediation(
                session, n.node_id, fault=d.fault or "unknown", rule=d.rule or "",
                actor=self.gc.actor, message=d.reason[:500],
                evidence={"findings": list(d.findings), "decision": d.to_dict(),
                          "facts": n.facts, "run": self.run_id})
        n.record_id = record.id
        return record

    def hold(self, n: NodeInfo, d: Decision, wait: Waiting) -> NodeRemediation:
        with self.gc.session() as session:
            record = self._record(session, n, d)
            if record.state != "waiting-breaker":
                advance(session, record, "waiting-breaker", actor=self.gc.actor,
                        message=wait.reason[:500])
        return NodeRemediation(n.name, "waiting-breaker", wait.reason, d.to_dict(),
                               n.record_id)

    def drain(self, nodes: list[NodeInfo], decisions: dict[str, Decision], timeout: float,
              outcome: dict[str, NodeRemediation]) -> list[NodeInfo]:
        """Open records, quarantine serving nodes named by hand, wait for their jobs;
        returns the nodes drained (the others stay ``draining``, in ``outcome``)."""
        for n in nodes:
            d = decisions[n.name]
            with self.gc.session() as session:
                record = self._record(session, n, d)
                node = get_node(session, n.name)
                if node.state in SERVING:
                    n.served_as = node.state
                    transition(session, node, State.QUARANTINED, actor=self.gc.actor,
                               run_id=self.run_id, reason=f"remediation {record.id}: "
                               f"{d.rung} by hand"[:500])
                if record.state != "draining":
                    advance(session, record, "draining", actor=self.gc.actor,
                            message=f"{d.rung}: {d.reason}"[:500])
        left = self.gc.wait_quiet([n.name for n in nodes], timeout) if nodes else {}
        killed: dict[str, str] = {}
        cancelled: list[str] = []
        if left and self.kill_jobs:
            killed = self.gc.kill_jobs(list(left))
            cancelled = [n for n, what in killed.items() if what.startswith("cancelled")]
            with self.gc.session() as session:
                for name, what in killed.items():
                    record_event(session, get_node(session, name),
                                 "jobs-killed" if name in cancelled else "note",
                                 f"--kill-jobs after {timeout:g} s: {what}"[:500],
                                 actor=self.gc.actor, run_id=self.run_id, severity="warning")
            if cancelled:  # the others stay as they were: nothing to wait for there
                still = self.gc.wait_quiet(cancelled, KILL_GRACE_S)
                left = {n: why for n, why in left.items() if n not in cancelled} | still
        for n in nodes:
            if n.name in left:
                done = f"{killed[n.name]}, still busy {KILL_GRACE_S:g} s later" \
                    if n.name in cancelled else killed.get(n.name, "no job killed")
                outcome[n.name] = NodeRemediation(
                    n.name, "draining", f"still busy after {timeout:g} s: {left[n.name]}; "
                    f"left drained, {done}", decisions[n.name].to_dict(), n.record_id)
        return [n for n in nodes if n.name not in left]

    def ladder(self, n: NodeInfo, d: Decision) -> NodeRemediation:
        gc, rungs = self.gc, list[str]()
        with gc.session() as session:
            record = self._record(session, n, d)
            advance(session, record, "drain-succeeded", actor=gc.actor,
                    message="no job runs on the node")
        while True:
            # An admin may take the node out while gpuctl waits or works: asked again
            # before every rung (a node whose scheduler cannot say is held too).
            held = gc.admin_holds([n.name]).get(n.name)
            if held:
                self.settle(n, f"stopped before {d.rung}: {held}"[:500])
                return NodeRemediation(n.name, "refused", f"stopped before {d.rung}: "
                                       f"{held}", d.to_dict(), n.record_id, rungs)
            rungs.append(d.rung)
            self._advance(n, "remediating", f"{d.rung}: {d.reason}", rung=d.rung)
            result = self.steps.rung(gc, n.name, d.rung, d.gpus, self.boot_timeout)
            why = result.message
            if result.ok:
                self._advance(n, "remediation-succeeded", result.message,
                              after=result.evidence)
                self._advance(n, "re-certifying", "re-scan, then burn-in")
                ok, why, evidence = self._recertify(n)
                if ok:
                    state = self._hand_back(n, d.rung)
                    self._advance(n, "in-service", f"{d.rung} cleared it: {why}; "
                                  f"node {state}", rung=d.rung, outcome="succeeded",
                                  after=evidence)
                    return NodeRemediation(n.name, state, why, d.to_dict(), n.record_id,
                                           rungs)
                self._advance(n, "remediating", why, rung=d.rung, outcome="failed",
                              after=evidence)
            else:
                self._advance(n, "remediating", why, rung=d.rung, outcome="failed",
                              after=result.evidence)
            if self.action is not None:  # by hand: one step
                self.settle(n, f"{d.rung} by hand failed: {why}"[:500])
                return NodeRemediation(n.name, "failed", why, d.to_dict(), n.record_id,
                                       rungs)
            d = self._replan(n, d)
            if d.rung == "rma" and d.acts:
                return self.rma(n, d, rungs)
            if not d.acts:
                self.settle(n, f"{why}; {d.reason}"[:500])
                return NodeRemediation(n.name, "failed", f"{why}; {d.reason}", d.to_dict(),
                                       n.record_id, rungs)

    def _replan(self, n: NodeInfo, d: Decision) -> Decision:
        with self.gc.session() as session:
            history = attempts_of(session, n.node_id)
        facts = NodeFacts(n.name, control_host=n.control_host, nvswitch=n.nvswitch,
                          has_bmc=n.has_bmc)
        return plan_remediation(n.findings, history, self.policy, facts, self.now)

    def _advance(self, n: NodeInfo, to: str, message: str, **kw: Any) -> None:
        with self.gc.session() as session:
            record = session.get(Remediation, n.record_id)
            assert record is not None
            advance(session, record, to, actor=self.gc.actor, message=message[:500], **kw)

    def _recertify(self, n: NodeInfo) -> tuple[bool, str, dict[str, Any]]:
        scan = self.steps.rescan(self.gc, n.name)
        if not scan.ok:
            return False, scan.message, {"scan": scan.evidence}
        with self.gc.session() as session:
            node = get_node(session, n.name)
            if node.state == State.QUARANTINED.value:
                transition(session, node, State.PROVISIONED, actor=self.gc.actor,
                           run_id=self.run_id, reason=f"remediation {n.record_id}: "
                           f"{scan.message}; re-certifying")
        burn = self.steps.burnin(self.gc, n.name, self.level, self.seconds)
        evidence = {"scan": scan.evidence, "burnin": burn.evidence}
        return burn.ok, f"{scan.message}; {burn.message}", evidence

    def _hand_back(self, n: NodeInfo, rung: str) -> str:
        """A certified node back in the state it served in: in-service resumes it in
        the scheduler (its listener); a node that served as certified stays so."""
        with self.gc.session() as session:
            node = get_node(session, n.name)
            if node.state == State.CERTIFIED.value and n.served_as == \
                    State.IN_SERVICE.value:
                transition(session, node, State.IN_SERVICE, actor=self.gc.actor,
                           run_id=self.run_id, reason=f"remediation {n.record_id}: "
                           f"re-certified after {rung}")
            return node.state

    def rma(self, n: NodeInfo, d: Decision, rungs: list[str] | None = None
            ) -> NodeRemediation:
        """The node stays quarantined; the evidence bundle is written and the site's
        hook called once."""
        with self.gc.session() as session:
            record = self._record(session, n, d)
            events = [{"at": e.at.isoformat(), "actor": e.actor, "from": e.from_state,
                       "to": e.to_state, "rung": e.rung, "outcome": e.outcome,
                       "message": e.message} for e in events_of(session, record)]
            history = [asdict(a) for a in attempts_of(session, n.node_id)]
        bundle = {"node": n.name, "sku": n.sku, "fault": d.fault, "rule": d.rule,
                  "source": d.source, "reason": d.reason,
                  "findings": [asdict(f) for f in n.findings], "history": history,
                  "remediation": {"id": n.record_id, "events": events},
                  "last_facts": n.facts, "run": self.run_id}
        path = self.dir / f"rma-{n.name}.json"
        write_bytes_atomically(path, json.dumps(bundle, indent=1, default=str).encode())
        with self.gc.session() as session:  # a part to replace: out of service first
            self._requarantine(session, n, f"rma: {d.reason}")
            # The scheduler's reason says so (a node quarantined already keeps its
            # state; its drain reason follows): the admin who reads sinfo sees the RMA.
            node = get_node(session, n.name)
            reason = f"rma: {d.reason}"[:500]  # (the reason names the fault)
            note_change(session, StateChange(n.name, node.state, node.state, reason,
                                             self.run_id, restate=True))
            record_event(session, node, "rma", reason, actor=self.gc.actor,
                         run_id=self.run_id, severity="critical")
        hook = run_rma_hook(self.policy.rma_hook, node=n.name, evidence=path,
                            payload={"fault": d.fault, "reason": d.reason,
                                     "findings": list(d.findings)})
        message = f"rma: {d.reason}; ticket: {hook.detail}"
        with self.gc.session() as session:
            record = self._record(session, n, d)
            close(session, record, "rma", actor=self.gc.actor, message=message[:500],
                  after={"evidence": str(path), "hook": hook.to_dict()})
        return NodeRemediation(n.name, "rma", message, d.to_dict(), n.record_id,
                               [*(rungs or []), "rma"])


__all__ = ["ACTIONS", "LADDER", "NodeRemediation", "RemediationSummary", "remediate_nodes"]
