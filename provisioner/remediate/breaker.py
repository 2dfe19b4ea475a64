"""The circuit breaker: how many nodes gpuctl may drain and remediate at once.

A bug, a bad policy or a fabric-wide event can make every node look faulty at the same
time; acting on all of them would take the fleet down faster than any fault. So at most
``max_nodes`` nodes, and at most ``max_percent`` of a SKU's serving nodes (rounded up),
are worked on at once. The others wait: they stay drained (the monitor quarantined them)
and ``status`` shows the reason this module gives.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from provisioner.remediate.policy import BreakerLimits


@dataclass(frozen=True)
class BreakerNode:
    name: str
    sku: str | None


@dataclass(frozen=True)
class Waiting:
    name: str
    reason: str


@dataclass
class BreakerVerdict:
    """Which candidates may act now (``act``, in the order given) and which wait, with
    the reason ``status`` shows."""

    act: list[str] = field(default_factory=list)
    wait: list[Waiting] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"act": self.act, "wait": [asdict(w) for w in self.wait]}


def sku_limit(serving: int, max_percent: float) -> int:
    """How many of a SKU's nodes may be worked on at once: ``max_percent`` of its
    ``serving`` nodes, rounded up (so one node of a SKU that serves at all)."""
    return math.ceil(serving * max_percent / 100 - 1e-9)


def circuit_breaker(candidates: Sequence[BreakerNode], active: Sequence[BreakerNode],
                    serving: Mapping[str | None, int],
                    limits: BreakerLimits) -> BreakerVerdict:
    """Split ``candidates`` (nodes a decision would act on, most urgent first) into
    those that may act now and those that wait.

    Args:
        candidates: nodes whose decision acts, in the order they should be served.
        active: nodes gpuctl is draining or remediating now (open records not waiting).
            A candidate already among them keeps its slot.
        serving: each SKU's serving nodes now (certified or in service); a SKU missing
            here serves none.
        limits: the policy's ``breaker``.
    """
    busy = {n.name for n in active}
    in_flight = len(busy)
    per_sku = Counter(n.sku for n in active)
    verdict = BreakerVerdict()
    for node in candidates:
        if node.name in busy:
            verdict.act.append(node.name)
            continue
        reason = _over(node, in_flight, per_sku[node.sku], serving.get(node.sku, 0), limits)
        if reason:
            verdict.wait.append(Waiting(node.name, f"circuit breaker: {reason}"))
            continue
        verdict.act.append(node.name)
        busy.add(node.name)
        in_flight += 1
        per_sku[node.sku] += 1
    return verdict


def _over(node: BreakerNode, in_flight: int, sku_busy: int, sku_serving: int,
          limits: BreakerLimits) -> str | None:
    if in_flight >= limits.max_nodes:
        return (f"{in_flight} node{'s' if in_flight != 1 else ''} already draining or "
                f"remediating, at most {limits.max_nodes} at once (breaker.max_nodes)")
    allowed = sku_limit(sku_serving, limits.max_percent)
    sku = node.sku or "(no SKU)"
    if sku_serving <= 0:
        return f"no {sku} node serves, so breaker.max_percent allows none to be worked on"
    if sku_busy >= allowed:
        return (f"{sku_busy} {sku} node{'s' if sku_busy != 1 else ''} already draining "
                f"or remediating; {limits.max_percent:g}% of its {sku_serving} serving "
                f"node{'s' if sku_serving != 1 else ''} allows {allowed} "
                "(breaker.max_percent)")
    return None
