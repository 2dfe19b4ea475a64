"""The loop's steps that reach a node, as one injectable object (``Steps``): the facts
the planner needs, the rung, the re-scan and the re-burn-in. ``Steps()`` is the real
thing; tests hand in their own."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from provisioner.errors import GpuctlError
from provisioner.handle import Gpuctl
from provisioner.heal.actions import (
    ActionResult,
    NodeAccess,
    gpu_processes,
    gpu_reset,
    power_cycle,
    reboot,
)


@dataclass
class Check:
    """A re-scan's or re-burn-in's verdict: ``ok``, the words, the evidence."""

    ok: bool
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)


def probe_gpus(gc: Gpuctl, name: str, nvswitch: bool) -> tuple[frozenset[str] | None,
                                                                 bool | None]:
    """GPUs with processes and whether Fabric Manager runs (``actions.gpu_processes``)."""
    return gpu_processes(NodeAccess.of(gc, name), nvswitch)


def run_rung(gc: Gpuctl, name: str, rung: str, gpus: tuple[str, ...],
             boot_timeout: float) -> ActionResult:
    """Run ``rung`` (reset, reboot, power-cycle) on the node."""
    access = NodeAccess.of(gc, name)
    if rung == "reset":
        return gpu_reset(access, gpus)
    if rung == "reboot":
        return reboot(access, boot_timeout)
    if rung == "power-cycle":
        return power_cycle(gc, access, boot_timeout)
    return ActionResult(False, f"{rung} is not a rung that acts on the node")


def rescan(gc: Gpuctl, name: str) -> Check:
    """``scan_nodes`` for the node: ok when it answered with no critical finding."""
    from provisioner.scan.run import scan_nodes  # noqa: PLC0415

    summary = scan_nodes(gc, [name], parallel=1)
    result = summary.results[0]
    critical = [f for f in result.findings if f.severity == "critical"]
    evidence = {"scan_run": summary.run_id, "outcome": result.outcome,
                "findings": [f"{f.kind}: {f.message}" for f in result.findings]}
    if result.outcome in ("unreachable", "refused", "error"):
        return Check(False, f"re-scan: {result.outcome}: {result.message}", evidence)
    if critical:
        return Check(False, "re-scan: " + "; ".join(f"{f.kind}: {f.message}"
                                                    for f in critical[:3]), evidence)
    return Check(True, f"re-scan (run {summary.run_id}): no critical finding", evidence)


def reburn(gc: Gpuctl, name: str, level: str, seconds: float | None) -> Check:
    """``burnin_nodes`` for the node at ``level``: ok when it certified it."""
    from provisioner.burnin.run import burnin_nodes  # noqa: PLC0415

    try:
        summary = burnin_nodes(gc, [name], level=level, seconds=seconds, parallel=1)
    except GpuctlError as exc:
        return Check(False, f"re-burn-in could not run: {exc}")
    node = summary.nodes[0]
    evidence = {"burnin_run": summary.run_id, "level": level, "verdict": node.verdict,
                "failures": node.failures[:10]}
    if node.verdict != "pass":
        return Check(False, f"re-burn-in ({level}, run {summary.run_id}): {node.verdict}: "
                     + "; ".join(node.failures[:2]), evidence)
    return Check(True, f"re-burn-in ({level}, run {summary.run_id}): certified", evidence)


@dataclass
class Steps:
    """The steps that reach nodes (see the module docstring)."""

    gpus: Callable[[Gpuctl, str, bool], tuple[frozenset[str] | None, bool | None]] = \
        probe_gpus
    rung: Callable[[Gpuctl, str, str, tuple[str, ...], float], ActionResult] = run_rung
    rescan: Callable[[Gpuctl, str], Check] = rescan
    burnin: Callable[[Gpuctl, str, str, float | None], Check] = reburn
