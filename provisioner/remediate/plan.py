"""What to do about one node's findings: the rung to run, or why nothing runs.

``plan_remediation`` is pure: the findings, the node's past attempts and the facts that
make an action safe are handed in (by ``gpuctl monitor --remediate``, ``gpuctl
remediate``); it decides and explains, and changes nothing. ``--plan`` prints exactly
this decision.

Choices this module makes (the policy file says where each rung comes from):

- An admin's drain or DOWN in the scheduler, and the control host, refuse every rung:
  gpuctl never acts on a node a person took out, or on the machine it runs on.
- Several findings: the one whose rung is highest governs (it is the fault the lower
  rungs would not clear), and its fault key is the one the history is read by.
- A rung that cannot run safely climbs to the next one, and the decision says why:
  ``reset`` with processes on the GPU (or not known to have none), ``reset`` on an
  NVSwitch system where the GPU cannot be reset alone, ``power-cycle`` with no BMC.
  Climbing past the rule's ceiling leaves the node to a person (``none``). Skipping a
  missing BMC climbs to ``rma`` where the ceiling allows: a node a reboot did not fix and
  gpuctl cannot power-cycle needs hands on it, which is what the RMA ticket asks for.
- An RMA already requested for the fault (and not closed by a success) is not requested
  again: the hook runs once per RMA.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

from provisioner.remediate.policy import LADDER, Policy, Rule, rung_index

OUTCOMES = ("succeeded", "failed", "requested")  # requested: an RMA asked for


class FindingLike(Protocol):
    """What the planner reads of a finding (``provisioner.scan.findings.Finding``)."""

    @property
    def kind(self) -> str: ...
    @property
    def severity(self) -> str: ...
    @property
    def message(self) -> str: ...
    @property
    def xid(self) -> int | None: ...
    @property
    def gpu(self) -> str | None: ...


@dataclass(frozen=True)
class Attempt:
    """One rung run on a node for a fault: when, which fault key, which rung, and how it
    ended (``succeeded``: the fault cleared and the node re-certified; ``failed``;
    ``requested`` for the ``rma`` rung: the ticket was asked for)."""

    at: datetime
    fault: str
    rung: str
    outcome: str


@dataclass(frozen=True)
class NodeFacts:
    """What makes an action safe on the node, gathered by the caller.

    ``admin_drained``: drained or DOWN in the scheduler by someone other than gpuctl
    (``admin_reason`` says by whom or why). ``gpus_in_use``: PCI bus ids of GPUs with
    processes; None when it could not be read (then no GPU counts as idle).
    ``fabric_manager_running``: None when unknown (treated as not running).
    """

    name: str
    admin_drained: bool = False
    admin_reason: str = ""
    control_host: bool = False
    nvswitch: bool = False
    fabric_manager_running: bool | None = None
    gpus_in_use: frozenset[str] | None = None
    has_bmc: bool = False


@dataclass(frozen=True)
class Decision:
    """The rung to run (``reset``, ``reboot``, ``power-cycle``, ``rma``) or ``none``,
    with the rule and source behind it; ``refused`` when the node may not be acted on.
    ``gpus``: the PCI bus ids a reset targets (empty: every GPU). ``skipped``: the rungs
    passed over on the way and why."""

    node: str
    rung: str
    reason: str
    fault: str | None = None
    rule: str | None = None
    source: str = ""
    refused: bool = False
    gpus: tuple[str, ...] = ()
    findings: tuple[str, ...] = ()
    skipped: tuple[str, ...] = field(default_factory=tuple)

    @property
    def acts(self) -> bool:
        return self.rung != "none" and not self.refused

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "acts": self.acts}


def fault_key(finding: FindingLike) -> str:
    """The key a fault's repeats are counted by: ``xid-79`` for an XID, else the kind."""
    return f"xid-{finding.xid}" if finding.kind == "xid" and finding.xid else finding.kind


def bus_key(bus_id: str) -> str:
    """``18:00`` from ``00000000:18:00.0``, ``0000:18:00`` or ``18:00.0``: the form the
    kernel log and nvidia-smi share."""
    match = re.search(r"([0-9a-fA-F]{2}:[0-9a-fA-F]{2})(\.[0-7])?$", bus_id.strip())
    return match.group(1).lower() if match else bus_id.strip().lower()


@dataclass
class _Candidate:
    finding: FindingLike
    rule: Rule
    fault: str
    rung: str
    why: str


def plan_remediation(findings: Sequence[FindingLike], history: Sequence[Attempt],
                     policy: Policy, facts: NodeFacts, now: datetime) -> Decision:
    """Decide what to do about ``facts.name``'s current ``findings`` (see the module
    docstring for the choices), given its past ``history``. Changes nothing.

    Args:
        findings: the node's current findings (``Finding`` or anything shaped like it).
        history: its past attempts, any order, any fault.
        policy: ``load_policy(gc.paths.home)``.
        facts: what makes an action safe on the node.
        now: the time the repeat window is measured back from (timezone-aware).
    """
    if facts.control_host:
        return Decision(facts.name, "none", "refused: this is the control host; gpuctl "
                        "never acts on the machine it runs on", refused=True)
    if facts.admin_drained:
        why = f" ({facts.admin_reason})" if facts.admin_reason else ""
        return Decision(facts.name, "none", f"refused: drained or DOWN by an admin{why}; "
                        "gpuctl never acts on a node a person took out", refused=True)
    candidates = [_candidate(f, policy, history, now) for f in findings]
    live = [c for c in candidates if c is not None]
    if not live:
        return Decision(facts.name, "none", "no finding needs remediation")
    chosen = max(live, key=lambda c: rung_index(c.rung))  # the first of the highest
    covered = tuple(f"{c.finding.kind}: {c.finding.message}" for c in live)
    base = Decision(facts.name, "none", chosen.why, fault=chosen.fault,
                    rule=chosen.rule.name, source=chosen.rule.source, findings=covered)
    if chosen.rung == "none":
        return base
    rung, skipped = chosen.rung, []
    gpus = _reset_targets([c for c in live if c.rung == "reset"])
    while rung != "none":
        blocked = _blocked(rung, gpus, facts, policy)
        if blocked is None:
            break
        skipped.append(f"{rung}: {blocked}")
        rung = _next_rung(rung, chosen.rule.ceiling)
    if rung == "none":
        return replace(base, reason=f"{chosen.why}; no rung up to the ceiling "
                       f"({chosen.rule.ceiling}) can run: a person decides",
                       skipped=tuple(skipped))
    return replace(base, rung=rung, gpus=gpus if rung == "reset" else (),
                   skipped=tuple(skipped))


def _candidate(finding: FindingLike, policy: Policy, history: Sequence[Attempt],
               now: datetime) -> _Candidate | None:
    rule = policy.rule_for(finding.kind, finding.severity, finding.xid)
    if rule is None:
        if finding.severity != "critical":
            return None
        rule = policy.default
    key = fault_key(finding)
    recent = sorted((a for a in history if a.fault == key and
                     now - a.at <= policy.repeat_window), key=lambda a: a.at)
    ok = [i for i, a in enumerate(recent) if a.outcome == "succeeded"]
    successes = len(ok)
    episode = recent[ok[-1] + 1:] if ok else recent  # the attempts since the last success
    named = f"{key} ({rule.name})"
    rma = [a for a in episode if a.rung == "rma"]
    if rma:
        return _Candidate(finding, rule, key, "none", f"{named}: rma already requested "
                          f"{rma[-1].at.isoformat(timespec='seconds')}; waiting for a "
                          "person")
    if successes + 1 >= policy.repeat_count:
        seen = (f"seen {successes + 1} times within {_days(policy)} (policy: "
                f"{policy.repeat_count} in {_days(policy)})")
        if rule.ceiling == "rma":
            return _Candidate(finding, rule, key, "rma", f"{named} {seen}: straight to rma")
        return _Candidate(finding, rule, key, "none", f"{named} {seen}, and its ceiling "
                          f"is {rule.ceiling}: a person decides")
    failed = [a for a in episode if a.outcome == "failed" and a.rung in LADDER]
    if not failed:
        if rule.first == "none":
            return _Candidate(finding, rule, key, "none", f"{named}: no automatic action")
        return _Candidate(finding, rule, key, rule.first, f"{named}: first rung "
                          f"{rule.first}")
    top = max(failed, key=lambda a: rung_index(a.rung))
    nxt = _next_rung(top.rung, rule.ceiling)
    if nxt == "none":
        return _Candidate(finding, rule, key, "none", f"{named}: {top.rung} failed and "
                          f"the ceiling is {rule.ceiling}: a person decides")
    return _Candidate(finding, rule, key, nxt, f"{named}: {top.rung} failed, climbing "
                      f"to {nxt}")


def _days(policy: Policy) -> str:
    seconds = int(policy.repeat_window.total_seconds())
    return f"{seconds // 86400} days" if seconds % 86400 == 0 else f"{seconds} s"


def _next_rung(rung: str, ceiling: str) -> str:
    """One rung up, or ``none`` past the ceiling."""
    i = LADDER.index(rung) + 1
    if i >= len(LADDER) or i > rung_index(ceiling):
        return "none"
    return LADDER[i]


def _reset_targets(resets: list[_Candidate]) -> tuple[str, ...]:
    """The GPUs the reset findings name; empty (every GPU) when one names none."""
    if any(c.finding.gpu is None for c in resets):
        return ()
    return tuple(sorted({str(c.finding.gpu) for c in resets}))


def _blocked(rung: str, gpus: tuple[str, ...], facts: NodeFacts,
             policy: Policy) -> str | None:
    """Why ``rung`` cannot run on the node now, or None."""
    if rung == "reset":
        if facts.nvswitch and policy.nvswitch_reset == "reboot":
            return "the policy resets no GPU alone on NVSwitch systems (nvswitch_reset)"
        if facts.nvswitch and facts.fabric_manager_running is not True:
            return ("NVSwitch system without Fabric Manager running: every NVLink peer "
                    "would have to be reset together (nvidia-smi(1) -r)")
        if facts.gpus_in_use is None:
            return "could not tell whether processes use the GPU (nvidia-smi -r needs none)"
        busy = {bus_key(b) for b in facts.gpus_in_use}
        hit = sorted(g for g in gpus if bus_key(g) in busy) if gpus else sorted(busy)
        if hit:
            return f"processes on GPU {', '.join(hit)} (nvidia-smi -r needs none)"
    if rung == "power-cycle" and not facts.has_bmc:
        return "no BMC known for the node"
    return None
