"""``scan_nodes``: probe many nodes in parallel; one bad node never stops the others."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlmodel import Session, col, select

from provisioner.bmc.redfish import BmcTarget
from provisioner.catalogue import infer_sku
from provisioner.db.models import HardwareSnapshot, Node
from provisioner.errors import GpuctlError, InputError, NotFoundError
from provisioner.handle import Gpuctl
from provisioner.inventory.lifecycle import State, get_node, mark_hostkey_changed, record_event
from provisioner.probe.facts import HardwareFacts, parse_probe_output, probe_command, probe_script
from provisioner.runs import RunScope, RunStatus, recover_abandoned
from provisioner.scan.findings import (
    Finding,
    bmc_findings,
    drift_findings,
    health_findings,
    new_only,
)
from provisioner.scan.store import apply_findings, store_snapshot
from provisioner.ssh.exec import AuthFailed, CommandTimeout, Target, Unreachable, run_on_node
from provisioner.ssh.hostkeys import HostKeyChanged, HostKeyError, KnownHosts

OUTCOMES = ("ok", "drift", "fault", "unreachable", "refused", "error")
MAX_PROBE_OUTPUT = 16 * 1024 * 1024


@dataclass
class NodeScanResult:
    name: str
    outcome: str
    message: str = ""
    findings: list[Finding] = field(default_factory=list)
    gpus: int | None = None
    seconds: float = 0.0


@dataclass
class ScanSummary:
    run_id: int
    status: str
    results: list[NodeScanResult]

    def counts(self) -> dict[str, int]:
        return {o: sum(r.outcome == o for r in self.results) for o in OUTCOMES}

    @property
    def failed(self) -> list[NodeScanResult]:
        return [r for r in self.results if r.outcome in ("unreachable", "refused", "error")]

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "status": self.status, "counts": self.counts(),
                "results": [asdict(r) for r in self.results]}


@dataclass
class _Probe:
    target: Target
    facts: HardwareFacts | None = None
    error: GpuctlError | None = None
    seconds: float = 0.0
    # The node's BMC, asked for its system serial once the OS answered.
    bmc_url: str | None = None
    bmc_serial: str | None = None
    bmc_error: str | None = None


def probe_with_bmc(target: Target, bmc: BmcTarget | None, known_hosts: KnownHosts,
                   accept_new: bool, connect_timeout: float,
                   command_timeout: float) -> _Probe:
    """``probe_node``, then (if the node answered and has a BMC) the BMC's serial."""
    probe = probe_node(target, known_hosts, accept_new, connect_timeout, command_timeout)
    if bmc is not None and probe.facts is not None:
        from provisioner.bmc import read_system_serial  # noqa: PLC0415 (loads sushy)

        probe.bmc_url = bmc.url
        try:
            probe.bmc_serial = read_system_serial(bmc)
        except GpuctlError as exc:
            probe.bmc_error = str(exc).removeprefix(f"{target.name}: ")
    return probe


def probe_node(target: Target, known_hosts: KnownHosts, accept_new: bool,
                connect_timeout: float, command_timeout: float) -> _Probe:
    start = time.monotonic()
    try:
        result = run_on_node(target, probe_command(), known_hosts=known_hosts,
                             stdin_data=probe_script(), accept_new=accept_new,
                             connect_timeout=connect_timeout, command_timeout=command_timeout,
                             max_output=MAX_PROBE_OUTPUT)
        if result.exit_code != 0 and not result.stdout:
            err = result.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            raise GpuctlError(f"{target.name}: probe exited {result.exit_code}: "
                              f"{err[0][:160]}")
        facts = parse_probe_output(result.stdout)
        return _Probe(target, facts=facts, seconds=time.monotonic() - start)
    except GpuctlError as exc:
        return _Probe(target, error=exc, seconds=time.monotonic() - start)


def _classify(exc: GpuctlError) -> str:
    if isinstance(exc, HostKeyError | AuthFailed):
        return "refused"
    # A node that does not finish within --timeout is as good as unreachable.
    return "unreachable" if isinstance(exc, Unreachable | CommandTimeout) else "error"


def _record(gc: Gpuctl, probe: _Probe, run_id: int) -> NodeScanResult:
    name = probe.target.name
    try:
        return _store_probe(gc, probe, run_id)
    except NotFoundError:
        return NodeScanResult(name, "error", "node was removed during the scan; nothing "
                              "stored", seconds=probe.seconds)


def probe_failed(session: Session, node: Node, probe: _Probe, *, kind: str, actor: str,
                 run_id: int) -> NodeScanResult:
    """A node the probe did not get facts from: a changed host key flags the node (every
    later SSH path refuses it), anything else is a warning event of ``kind``."""
    assert probe.error is not None
    outcome = _classify(probe.error)
    message = str(probe.error).removeprefix(f"{node.name}: ")
    if isinstance(probe.error, HostKeyChanged):
        mark_hostkey_changed(session, node, message, actor=actor, run_id=run_id)
    else:
        record_event(session, node, kind, f"{outcome}: {message}"[:500], actor=actor,
                     run_id=run_id, severity="warning")
    return NodeScanResult(node.name, outcome, message, seconds=probe.seconds)


def judge_facts(session: Session, node: Node, facts: HardwareFacts, findings: list[Finding]
                ) -> tuple[list[Finding], list[Finding]]:
    """``findings`` (this snapshot's health) against the node's last snapshot: returns
    (every finding, with new XIDs only and drift added; the ones it did not show)."""
    prev_snap = session.get(HardwareSnapshot, node.last_snapshot_id) \
        if node.last_snapshot_id else None
    prev = json.loads(prev_snap.facts_json) if prev_snap else None
    if prev:
        findings = new_only(prev, findings, facts) + drift_findings(prev, facts)
    seen = {(f["kind"], f["message"]) for f in (prev or {}).get("findings", [])}
    return findings, [f for f in findings if (f.kind, f.message) not in seen]


def _store_probe(gc: Gpuctl, probe: _Probe, run_id: int) -> NodeScanResult:
    name, actor = probe.target.name, gc.actor
    with gc.session() as session:
        node = get_node(session, name)
        if probe.error is not None:
            return probe_failed(session, node, probe, kind="scan", actor=actor,
                                run_id=run_id)
        facts = probe.facts
        assert facts is not None
        if node.sku is None:
            node.sku = infer_sku(gc.skus(), [g.model for g in facts.gpus]) \
                if facts.smi_status == "ok" \
                or not facts.pci_gpus else None
        health = health_findings(facts, gc.sku(node.sku))
        if probe.bmc_url:
            health += bmc_findings(facts, probe.bmc_url, probe.bmc_serial, probe.bmc_error)
        findings, fresh = judge_facts(session, node, facts, health)
        store_snapshot(session, node, facts, run_id, findings)
        apply_findings(session, node, fresh, actor=actor, run_id=run_id)
        notable = [f for f in findings if f.severity != "info"]
        outcome = "drift" if any(f.drift for f in notable) else ("fault" if notable else "ok")
        message = "; ".join(f.message for f in notable[:2])
        gpus = len(facts.gpus) if facts.smi_status == "ok" else len(facts.pci_gpus)
        return NodeScanResult(name, outcome, message, findings, gpus, probe.seconds)


def select_targets(gc: Gpuctl, names: list[str], all_nodes: bool) -> list[Target]:
    """The nodes to act on: ``names`` (all must exist) or every node not retired."""
    return [t for t, _ in select_targets_with_bmc(gc, names, all_nodes)]


def select_targets_with_bmc(gc: Gpuctl, names: list[str], all_nodes: bool
                            ) -> list[tuple[Target, BmcTarget | None]]:
    """``select_targets``, each with the node's BMC (None: it has none)."""
    if not names and not all_nodes:
        raise InputError("name the nodes to scan, or pass --all")
    with gc.session() as session:
        if all_nodes:
            nodes = list(session.exec(select(Node).where(Node.state != State.RETIRED)
                                      .order_by(col(Node.name))))
        else:
            nodes = [get_node(session, n) for n in dict.fromkeys(names)]
        return [(Target.of(n), BmcTarget.of(n) if n.bmc_url else None) for n in nodes]


def scan_nodes(
    gc: Gpuctl,
    names: list[str],
    *,
    all_nodes: bool = False,
    parallel: int = 32,
    accept_new: bool = False,
    connect_timeout: float = 10.0,
    command_timeout: float = 120.0,
    on_start: Callable[[int], None] | None = None,
    on_result: Callable[[NodeScanResult], None] | None = None,
) -> ScanSummary:
    """Probe the nodes, store a snapshot for each one reached, and flag faults/drift.

    Results are written node by node as they arrive, so an interrupted scan keeps
    everything it had received.

    Raises:
        InputError / NotFoundError: bad selection; nothing is scanned.
        GpuctlError: the scan was interrupted (what was received is stored).
    """
    if not 1 <= parallel <= 1024:
        raise InputError(f"--parallel {parallel} must be between 1 and 1024")
    recover_abandoned(gc)
    selected = select_targets_with_bmc(gc, names, all_nodes)
    targets = [t for t, _ in selected]
    bmcs = {t.name: b for t, b in selected}
    if on_start:
        on_start(len(targets))
    with gc.session() as session:
        mismatched = {n.name for n in session.exec(
            select(Node).where(col(Node.hostkey_mismatch).is_(True)))}
    known_hosts = KnownHosts(gc.paths.known_hosts)
    results: list[NodeScanResult] = []

    def deliver(result: NodeScanResult) -> None:
        results.append(result)
        if on_result:
            on_result(result)

    interrupted = False
    args = {"nodes": names, "all": all_nodes, "parallel": parallel, "accept_new": accept_new}
    with RunScope(gc, "scan", args) as run:
        pool = ThreadPoolExecutor(max_workers=min(parallel, max(1, len(targets))))
        try:
            futures: list[Future[_Probe]] = []
            for target in targets:
                if target.name in mismatched:
                    deliver(NodeScanResult(target.name, "refused", "host key changed earlier; "
                            f"verify it, then `gpuctl nodes forget-hostkey {target.name}`"))
                    continue
                futures.append(pool.submit(probe_with_bmc, target, bmcs[target.name],
                                           known_hosts, accept_new, connect_timeout,
                                           command_timeout))
            for fut in as_completed(futures):
                deliver(_record(gc, fut.result(), run.run_id))
        except KeyboardInterrupt:
            interrupted = True
            pool.shutdown(wait=False, cancel_futures=True)
        finally:
            pool.shutdown(wait=not interrupted)
        summary = ScanSummary(run.run_id, "", sorted(results, key=lambda r: r.name))
        failed = {r.name for r in summary.failed}
        run.node_ok = {t.name: t.name not in failed for t in targets}
        run.summary = {**summary.counts(), "failed": sorted(failed)}
        if interrupted:
            run.status = RunStatus.INTERRUPTED
    summary.status = str(run.status)
    if interrupted:
        raise GpuctlError(f"scan interrupted: {len(results)} of {len(targets)} nodes stored "
                          f"(run {run.run_id})")
    return summary
