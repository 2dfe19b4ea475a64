"""``burnin_nodes``: run the agent on each node over SSH, judge the results against the
node's threshold profile, store them, and certify or quarantine the node."""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from importlib import resources
from typing import Any

from provisioner.burnin.thresholds import Verdict, evaluate, fleet_medians, load_profile
from provisioner.db.engine import session_scope
from provisioner.db.models import (
    BurninResult,
    Certificate,
    HardwareSnapshot,
    Node,
    Run,
    utcnow,
)
from provisioner.errors import GpuctlError, InputError
from provisioner.inventory.lifecycle import State, transition
from provisioner.inventory.registry import current_actor, get_node, select_nodes
from provisioner.paths import Paths
from provisioner.provision import locks
from provisioner.skus import SKUS
from provisioner.ssh.exec import Target, run_on_node
from provisioner.ssh.hostkeys import KnownHosts

ELIGIBLE = {State.PROVISIONED, State.CERTIFIED, State.FAILED, State.BURNING_IN}
DEFAULT_PYTHON = "/opt/gpuctl/burnin/bin/python3"
LEVEL_TIMEOUT = {"quick": 900.0, "standard": 3600.0, "extended": 6 * 3600.0}
CERTIFICATE_DAYS = 90


@dataclass
class NodeBurnin:
    name: str
    verdict: str  # pass | fail | error
    profile: str = ""
    failures: list[str] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class BurninSummary:
    run_id: int
    level: str
    nodes: list[NodeBurnin]

    @property
    def failed(self) -> list[NodeBurnin]:
        return [n for n in self.nodes if n.verdict != "pass"]

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "level": self.level,
                "nodes": [asdict(n) for n in self.nodes]}


def agent_script() -> bytes:
    return resources.files("provisioner.burnin").joinpath("agent.py").read_bytes()


def _agent_command(python: str, level: str, seconds: float | None) -> str:
    """Save the agent (sent on stdin) to a private temp dir on the node and run it from
    there: its collectives start worker processes that re-import it from its file."""
    args = f"--level {level}" + (f" --seconds {seconds:g}" if seconds else "")
    return ('d=$(mktemp -d /tmp/gpuctl-burnin.XXXXXX) && cat > "$d/agent.py" && '
            f'{shlex.quote(python)} "$d/agent.py" {args}; rc=$?; rm -rf "$d"; exit $rc')


def _inventory_verdict(node: Node, doc: dict[str, Any]) -> Verdict:
    """The GPUs the node's driver reports now, against what its SKU must have."""
    sku = SKUS.get(node.sku or "")
    gpus = [g for g in doc.get("inventory", []) if isinstance(g, dict)]
    if sku is None:
        return Verdict("inventory_match", None, float(len(gpus)), "GPUs", None, True, "")
    wrong = [g.get("name") for g in gpus if sku.model_match not in str(g.get("name"))]
    ok = len(gpus) == sku.gpu_count and not wrong
    reason = "" if ok else (
        f"inventory: {len(gpus)} GPUs, SKU {node.sku} has {sku.gpu_count}"
        + (f"; unexpected model {wrong[0]}" if wrong else ""))
    return Verdict("inventory_match", None, float(len(gpus)), "GPUs",
                   float(sku.gpu_count), ok, reason)


def burnin_nodes(
    paths: Paths,
    names: list[str],
    *,
    all_nodes: bool = False,
    level: str = "quick",
    seconds: float | None = None,
    profile: str | None = None,
    parallel: int = 8,
    on_result: Callable[[NodeBurnin], None] | None = None,
) -> BurninSummary:
    """Burn in the nodes and certify or quarantine each one.

    Raises:
        InputError: bad selection or options; NodeBusyError: a node is held by a run.
    """
    if level not in LEVEL_TIMEOUT:
        raise InputError(f"unknown level {level!r}; use quick, standard or extended")
    db_url = paths.db_url
    with session_scope(db_url) as session:
        nodes = select_nodes(session, names, all_nodes, ELIGIBLE, "burn in",
                             "provision it first")
        snapshots = {n.name: session.get(HardwareSnapshot, n.last_snapshot_id)
                     if n.last_snapshot_id else None for n in nodes}
        actor = current_actor()
        run = Run(kind="burnin", actor=actor, args_json=json.dumps(
            {"nodes": [n.name for n in nodes], "level": level, "seconds": seconds,
             "profile": profile}))
        session.add(run)
        session.flush()
        assert run.id is not None
        run_id = run.id
    node_ids = {n.id: n.name for n in nodes if n.id is not None}
    locks.acquire(db_url, node_ids, run_id, locks.holder_id(actor))
    try:
        with session_scope(db_url) as session:
            for n in nodes:
                node = get_node(session, n.name)
                if node.state != State.BURNING_IN:
                    transition(session, node, State.BURNING_IN, actor=actor, run_id=run_id,
                               reason=f"burn-in ({level}) started")
        outcomes = _run_agents(paths, nodes, level, seconds, parallel)
        medians = fleet_medians([o[1].get("results", []) for o in outcomes.values()
                                 if o[1]])
        summary = BurninSummary(run_id, level, [])
        for node in nodes:
            err, doc = outcomes[node.name]
            result = _judge_and_store(paths, node, snapshots[node.name], err, doc, profile,
                                      medians, run_id, level, actor)
            summary.nodes.append(result)
            if on_result:
                on_result(result)
    finally:
        locks.release(db_url, run_id)
        with session_scope(db_url) as session:
            stored = session.get(Run, run_id)
            assert stored is not None
            stored.finished_at = utcnow()
            stored.status = "done"
            session.add(stored)
    return summary


def _run_agents(paths: Paths, nodes: list[Node], level: str, seconds: float | None,
                parallel: int) -> dict[str, tuple[str | None, dict[str, Any]]]:
    known = KnownHosts(paths.known_hosts)
    script = agent_script()

    def one(node: Node) -> tuple[str | None, dict[str, Any]]:
        hv = json.loads(node.vars_json or "{}")
        python = hv.get("gpuctl_burnin_python", DEFAULT_PYTHON)
        target = Target(node.name, node.address, node.port, node.user, node.key_path)
        try:
            res = run_on_node(target, _agent_command(python, level, seconds),
                              known_hosts=known, stdin_data=script,
                              command_timeout=LEVEL_TIMEOUT[level], max_output=64 << 20)
        except GpuctlError as exc:
            return str(exc).removeprefix(f"{node.name}: "), {}
        if res.exit_code != 0:
            tail = res.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            return f"agent exited {res.exit_code}: {tail[0][:200]}", {}
        try:
            doc = json.loads(res.stdout)
            if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
                raise ValueError("no results")
        except ValueError as exc:
            return f"agent output is not a result document ({exc})", {}
        return None, doc

    out: dict[str, tuple[str | None, dict[str, Any]]] = {}
    with ThreadPoolExecutor(max(1, min(parallel, len(nodes)))) as pool:
        futures = {pool.submit(one, n): n.name for n in nodes}
        for fut in as_completed(futures):
            out[futures[fut]] = fut.result()
    return out


def _judge_and_store(paths: Paths, node: Node, snapshot: HardwareSnapshot | None,
                     err: str | None, doc: dict[str, Any], profile_name: str | None,
                     medians: dict[str, float], run_id: int, level: str,
                     actor: str) -> NodeBurnin:
    hv = json.loads(node.vars_json or "{}")
    name = profile_name or hv.get("gpuctl_burnin_profile") or node.sku or "cpu-lab"
    if err is not None:
        verdicts: list[Verdict] = []
        failures = [f"agent: {err}"]
    else:
        profile = load_profile(paths, name)
        verdicts = [_inventory_verdict(node, doc)] + evaluate(
            doc["results"], profile, medians)
        failures = [v.reason for v in verdicts if not v.passed]
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
    by_test = {(r["test"], r.get("device")): r for r in doc.get("results", [])}
    with session_scope(paths.db_url) as session:
        stored = get_node(session, node.name)
        assert stored.id is not None
        for v in verdicts:
            detail = by_test.get((v.test, v.device), {}).get("detail", {})
            session.add(BurninResult(
                run_id=run_id, node_id=stored.id, gpu_index=v.device, test=v.test,
                value=v.value, unit=v.unit, threshold=v.threshold,
                verdict="pass" if v.passed else "fail", reason=v.reason,
                detail_json=json.dumps(detail)[:20000]))
        if failures:
            reason = "; ".join(failures[:3])[:500]
            transition(session, stored, State.QUARANTINED if err is None else State.FAILED,
                       actor=actor, run_id=run_id, reason=f"burn-in failed: {reason}")
        else:
            now = utcnow()
            session.add(Certificate(
                node_id=stored.id, run_id=run_id, profile=name, level=level,
                driver_version=snapshot.driver_version if snapshot else None,
                cuda_version=snapshot.cuda_version if snapshot else None,
                results_digest=digest, issued_at=now,
                expires_at=now + timedelta(days=CERTIFICATE_DAYS)))
            transition(session, stored, State.CERTIFIED, actor=actor, run_id=run_id,
                       reason=f"burn-in ({level}, profile {name}) passed")
    return NodeBurnin(node.name, "pass" if not failures else ("error" if err else "fail"),
                      name, failures, [asdict(v) for v in verdicts])
