"""``burnin_nodes``: run the agent on each node over SSH, judge the results against the
node's threshold profile, store them, and certify or quarantine the node."""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import StatementError

from provisioner.burnin.command import (
    DEFAULT_PYTHON,
    _agent_command,
    agent_script,
    burnin_env,
)
from provisioner.burnin.dcgm import dcgm_command, dcgm_verdicts
from provisioner.burnin.health import as_dict, health_evidence, health_verdicts
from provisioner.burnin.levels import LEVELS
from provisioner.burnin.multinode import fabric_test
from provisioner.burnin.thresholds import (
    Verdict,
    evaluate,
    fleet_digest_verdicts,
    fleet_medians_by_kind,
    fleet_outlier_verdicts,
    gpu_outlier_verdicts,
    node_profile,
)
from provisioner.catalogue import Sku
from provisioner.db.models import (
    BurninArtifact,
    BurninResult,
    Certificate,
    HardwareSnapshot,
    Node,
    utcnow,
)
from provisioner.errors import GpuctlError, InputError, NodesFailedError
from provisioner.handle import Gpuctl
from provisioner.inventory.lifecycle import State, get_node, mark_hostkey_changed, transition
from provisioner.probe.node_json import NodeOutputError, agent_document, loads
from provisioner.runs import RunScope, RunStatus, recover_abandoned, select_nodes
from provisioner.ssh.exec import Target, run_on_node
from provisioner.ssh.hostkeys import HostKeyChanged, KnownHosts

ELIGIBLE = {State.PROVISIONED, State.CERTIFIED, State.FAILED}
# --all takes only nodes ready for burn-in; failed or interrupted ones must be named.
ELIGIBLE_ALL = {State.PROVISIONED, State.CERTIFIED}
CERTIFICATE_DAYS = 90
MAX_SAMPLES_PER_GPU = 720  # telemetry kept for reports: evenly thinned to this many


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
    seed: int = 0

    @property
    def failed(self) -> list[NodeBurnin]:
        return [n for n in self.nodes if n.verdict != "pass"]

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "level": self.level, "seed": self.seed,
                "nodes": [asdict(n) for n in self.nodes]}


def _inventory_verdict(node: Node, sku: Sku | None, doc: dict[str, Any],
                       profile: dict[str, Any]) -> Verdict:
    """The GPUs the node's driver reports now, against what its SKU must have: count,
    model, and memory (the profile's ``gpu_memory_mib_min``: a part with less memory is
    another SKU, or a GPU with memory retired)."""
    gpus = [g for g in doc.get("inventory", []) if isinstance(g, dict)]
    if sku is None:
        return Verdict("inventory_match", None, float(len(gpus)), "GPUs", None, True, "")
    wrong = [g.get("name") for g in gpus if not sku.matches_model(str(g.get("name")))]
    min_mib = profile.get("gpu_memory_mib_min")
    small = [i for i, g in enumerate(gpus) if min_mib and isinstance(g.get("memory_mib"), int)
             and g["memory_mib"] < int(min_mib)]
    ok = len(gpus) == sku.gpu_count and not wrong and not small
    problems = [f"{len(gpus)} GPUs, SKU {node.sku} has {sku.gpu_count}"
                if len(gpus) != sku.gpu_count else ""]
    problems.append(f"unexpected model {wrong[0]}" if wrong else "")
    problems.append(f"GPU {small[0]} has {gpus[small[0]]['memory_mib']} MiB, below {min_mib}"
                    if small else "")
    reason = "" if ok else "inventory: " + "; ".join(p for p in problems if p)
    return Verdict("inventory_match", None, float(len(gpus)), "GPUs",
                   float(sku.gpu_count), ok, reason)


def burnin_nodes(
    gc: Gpuctl,
    names: list[str],
    *,
    all_nodes: bool = False,
    level: str = "quick",
    seconds: float | None = None,
    profile: str | None = None,
    parallel: int = 8,
    with_dcgm: bool = False,
    multinode: bool = False,
    certificate_days: int = CERTIFICATE_DAYS,
    seed: int | None = None,
    on_result: Callable[[NodeBurnin], None] | None = None,
    wait_jobs: float = 0.0,
) -> BurninSummary:
    """Burn in the nodes and certify or quarantine each one.

    Raises:
        InputError: bad selection or options; NodeBusyError: a node is held by a run.
        NodesFailedError: interrupted (the agents were stopped, the nodes marked failed).
    """
    if level not in LEVELS:
        raise InputError(f"unknown level {level!r}; use quick, standard or extended")
    recover_abandoned(gc)
    with gc.session() as session:
        nodes = select_nodes(session, names, all_nodes,
                             ELIGIBLE_ALL if all_nodes else ELIGIBLE, "burn in",
                             "provision it first")
        snapshots = {n.name: session.get(HardwareSnapshot, n.last_snapshot_id)
                     if n.last_snapshot_id else None for n in nodes}
    # Every node of the run computes the same seeded products (so nodes of one model can
    # be compared), and every run other ones; the seed is kept with the run to replay it.
    seed = secrets.randbelow(2**31) if seed is None else seed
    args = {"nodes": [n.name for n in nodes], "level": level, "seconds": seconds,
            "profile": profile, "with_dcgm": with_dcgm, "multinode": multinode, "seed": seed}
    interrupted = False
    with RunScope(gc, "burnin", args, nodes, busy=State.BURNING_IN,
                  start_reason=f"burn-in ({level}) started", wait=wait_jobs) as run:
        summary = BurninSummary(run.run_id, level, [], seed)
        try:
            outcomes = _run_agents(gc, nodes, level, seconds, parallel, with_dcgm, seed)
        except KeyboardInterrupt:
            interrupted = True
            run.status = RunStatus.INTERRUPTED
        if not interrupted:
            by_node = fleet_medians_by_kind(
                {n.name: n.sku for n in nodes},
                {name: doc for name, (err, doc) in outcomes.items() if err is None and doc})
            judged = {}
            for n in nodes:
                medians = by_node.get(n.name, {})
                try:
                    judged[n.name] = _judge(gc, n, *outcomes[n.name], profile, medians)
                except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
                    # A document that passed the intake checks and still breaks a judge
                    # fails its node, not the run (the other nodes are judged).
                    why = _unusable(exc)
                    outcomes[n.name] = (why, {})
                    judged[n.name] = _judge(gc, n, why, {}, profile, medians)
            across = fleet_digest_verdicts({name: doc for name, (err, doc) in
                                            outcomes.items() if err is None and doc})
            for name, extra in across.items():
                judged[name][1].extend(extra)
                judged[name][2].extend(v.reason for v in extra)
            if multinode:
                fabric_test(gc, nodes, outcomes, judged, run.run_id, level)
            for node in nodes:
                err, doc = outcomes[node.name]
                try:
                    result = _store(gc, node, snapshots[node.name], err, doc,
                                    *judged[node.name], run.run_id, level, certificate_days)
                except (TypeError, ValueError, OverflowError, StatementError) as exc:
                    # What this node sent cannot be stored (its transaction rolled back):
                    # it fails, with why; the other nodes are stored.
                    why = _unusable(exc)
                    result = _store(gc, node, snapshots[node.name], why, {},
                                    *_judge(gc, node, why, {}, profile, {}), run.run_id,
                                    level, certificate_days)
                summary.nodes.append(result)
                run.node_ok[node.name] = result.verdict == "pass"
                if on_result:
                    on_result(result)
            run.summary = {"seed": seed,
                           "certified": [n.name for n in summary.nodes if n.verdict == "pass"],
                           "quarantined": [n.name for n in summary.nodes
                                           if n.verdict == "fail"],
                           "failed": [n.name for n in summary.nodes if n.verdict == "error"]}
    if interrupted:
        raise NodesFailedError(f"burn-in interrupted: run {run.run_id} marked interrupted, the "
                               "agents stopped, its nodes marked failed (burn them in again "
                               "by name)")
    return summary


def _unusable(exc: Exception) -> str:
    """Why a node's agent document failed it after intake (one line)."""
    return f"agent output is unusable ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})"


def _run_agents(gc: Gpuctl, nodes: list[Node], level: str, seconds: float | None,
                parallel: int, with_dcgm: bool, seed: int
                ) -> dict[str, tuple[str | None, dict[str, Any]]]:
    known = KnownHosts(gc.paths.known_hosts)
    script = agent_script()

    def one(node: Node) -> tuple[str | None, dict[str, Any]]:
        hv = json.loads(node.vars_json or "{}")
        python = hv.get("gpuctl_burnin_python", DEFAULT_PYTHON)
        target = Target.of(node)
        try:
            env = burnin_env(hv)
        except InputError as exc:
            return str(exc), {}
        try:
            res = run_on_node(target, _agent_command(python, level, seconds, env,
                                                     len(script), seed),
                              known_hosts=known, stdin_data=script, keep_stdin_open=True,
                              command_timeout=LEVELS[level].timeout_s, max_output=64 << 20)
        except HostKeyChanged as exc:
            why = str(exc).removeprefix(f"{node.name}: ")
            with gc.session() as session:
                mark_hostkey_changed(session, get_node(session, node.name),
                                     f"burn-in refused by SSH: {why}", actor=gc.actor)
            return why, {}
        except GpuctlError as exc:
            return str(exc).removeprefix(f"{node.name}: "), {}
        if res.exit_code != 0:
            tail = res.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            return f"agent exited {res.exit_code}: {tail[0][:200]}", {}
        try:
            doc = agent_document(res.stdout)
        except NodeOutputError as exc:
            return f"agent output is unusable: {exc}", {}
        if with_dcgm:
            # After our tests, not during them: DCGM's stress would skew both.
            doc["dcgm"] = _run_dcgm(target, known, level)
        return None, doc

    out: dict[str, tuple[str | None, dict[str, Any]]] = {}
    pool = ThreadPoolExecutor(max(1, min(parallel, len(nodes))))
    try:
        futures = {pool.submit(one, n): n.name for n in nodes}
        for fut in as_completed(futures):
            out[futures[fut]] = fut.result()
    except KeyboardInterrupt:
        # Stop the agents on the nodes (a stress test must not keep the GPUs busy after
        # the admin pressed Ctrl-C); their SSH commands then return and the pool drains.
        pool.shutdown(wait=False, cancel_futures=True)
        stop_agents(gc, nodes)
        pool.shutdown(wait=True)
        raise
    pool.shutdown(wait=True)
    return out


# Matches the agent's temp dir in a command line, but not this pattern's own text.
STOP_AGENTS = "pkill -TERM -f '[/]tmp/gpuctl-burnin[.]'; true"


def stop_agents(gc: Gpuctl, nodes: list[Node]) -> None:
    """Best effort: end every burn-in agent (and torchrun) process on the nodes."""
    known = KnownHosts(gc.paths.known_hosts)

    def one(node: Node) -> None:
        target = Target.of(node)
        # An unreachable node: nothing more can be done from here.
        with contextlib.suppress(GpuctlError):
            run_on_node(target, STOP_AGENTS, known_hosts=known, command_timeout=30,
                        max_output=1 << 16)

    with ThreadPoolExecutor(max(1, min(32, len(nodes)))) as pool:
        list(pool.map(one, nodes))


def _run_dcgm(target: Target, known: KnownHosts, level: str) -> dict[str, Any]:
    """``dcgmi diag -r <level> --json`` on the node: DCGM's own JSON with its exit code,
    the last line of its stderr and the run level (all judged by dcgm_verdicts), or why
    there is none."""
    try:
        res = run_on_node(target, dcgm_command(level), known_hosts=known,
                          command_timeout=LEVELS[level].timeout_s, max_output=16 << 20)
    except GpuctlError as exc:
        return {"error": str(exc).removeprefix(f"{target.name}: ")[:300]}
    text = res.stdout.decode("utf-8", "replace")
    stderr = res.stderr.decode("utf-8", "replace").strip()
    if res.exit_code == 127:
        return {"error": "dcgmi not found (install datacenter-gpu-manager)"}
    try:
        parsed = loads(text[text.find("{"):] if "{" in text else text)
    except NodeOutputError:
        tail = text.strip() or stderr
        return {"error": f"dcgmi diag -r {LEVELS[level].dcgm} exited {res.exit_code} "
                         f"without JSON: {tail.splitlines()[-1][:200] if tail else ''}"}
    return {"exit_code": res.exit_code, "run_level": LEVELS[level].dcgm,
            "stderr": stderr.splitlines()[-1][:200] if stderr else "", "output": parsed}


def _thin(samples: list[Any]) -> list[Any]:
    """At most MAX_SAMPLES_PER_GPU samples per GPU, evenly spaced, first and last kept."""
    by_gpu: dict[Any, list[Any]] = {}
    for s in samples:
        if isinstance(s, dict):
            by_gpu.setdefault(s.get("gpu"), []).append(s)
    out = []
    for rows in by_gpu.values():
        if len(rows) > MAX_SAMPLES_PER_GPU:
            step = (len(rows) - 1) / (MAX_SAMPLES_PER_GPU - 1)
            rows = [rows[round(k * step)] for k in range(MAX_SAMPLES_PER_GPU)]
        out += rows
    return out


def _artifact(doc: dict[str, Any]) -> dict[str, Any]:
    """What reports need from the agent's document, without the bulky raw XML."""
    telemetry = as_dict(doc.get("telemetry"))
    p2p = next((r.get("detail", {}).get("matrix") for r in doc.get("results", [])
                if isinstance(r, dict) and r.get("test") == "p2p_bandwidth"), None)
    collectives = {r["test"]: r.get("detail", {}).get("sizes")
                   for r in doc.get("results", []) if isinstance(r, dict)
                   and str(r.get("test", "")).endswith("_busbw")}
    return {"agent_version": doc.get("agent_version"), "backend": doc.get("backend"),
            "torch": doc.get("torch"), "inventory": doc.get("inventory"),
            "seed": doc.get("seed"), "devices": doc.get("devices"),
            # The XID lines and ECC/remap counters before and after: the evidence behind a
            # quarantine, kept for the RMA ticket (the raw nvidia-smi XML is not).
            "health": health_evidence(doc),
            "telemetry": {"source": telemetry.get("source"),
                          "samples": _thin(telemetry.get("samples") or [])},
            "nvlink": doc.get("nvlink"), "p2p_matrix": p2p, "collectives": collectives}


def _judge(gc: Gpuctl, node: Node, err: str | None, doc: dict[str, Any],
           profile_name: str | None, medians: dict[str, float]
           ) -> tuple[str, list[Verdict], list[str]]:
    """(profile name, verdicts, failure reasons) for one node's agent document."""
    hv = json.loads(node.vars_json or "{}")
    name, profile = node_profile(gc, node.sku, hv, profile_name)
    if err is not None:
        return name, [], [f"agent: {err}"]
    sku = gc.sku(node.sku)
    verdicts = [_inventory_verdict(node, sku, doc, profile), _backend_verdict(sku, doc, hv)]
    verdicts += evaluate(doc["results"], profile, medians) + health_verdicts(doc, profile)
    verdicts += fleet_outlier_verdicts(doc["results"], profile, medians)
    verdicts += gpu_outlier_verdicts(doc["results"], profile)
    if "dcgm" in doc:
        verdicts += dcgm_verdicts(doc["dcgm"])
    return name, verdicts, [v.reason for v in verdicts if not v.passed]


def _backend_verdict(sku: Sku | None, doc: dict[str, Any], host_vars: dict[str, Any]
                     ) -> Verdict:
    """A node whose SKU has GPUs must have been tested on them: an agent that fell back to
    the CPU (torch without CUDA, a driver that did not load) proves nothing about the
    GPUs, so it fails. Only nodes given CPU floors (``gpuctl_burnin_floors``, the lab)
    are judged on the CPU."""
    backend = str(doc.get("backend") or "unknown")
    wants_gpu = sku is not None and sku.gpu_count > 0 and not host_vars.get(
        "gpuctl_burnin_floors")
    ok = backend == "cuda" or not wants_gpu
    return Verdict("backend", None, None, backend, None, ok,
                   "" if ok else f"backend: the agent ran on {backend}, not on the GPUs "
                   f"(SKU {sku.name if sku else '?'}): is torch built with CUDA, is the "
                   "driver loaded?")


def _store(gc: Gpuctl, node: Node, snapshot: HardwareSnapshot | None, err: str | None,
           doc: dict[str, Any], name: str, verdicts: list[Verdict], failures: list[str],
           run_id: int, level: str, certificate_days: int) -> NodeBurnin:
    """Store one node's verdicts and artifacts; certify or quarantine it."""
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
    by_test = {(r["test"], r.get("device")): r for r in doc.get("results", [])}
    actor = gc.actor
    with gc.session() as session:
        stored = get_node(session, node.name)
        assert stored.id is not None
        for v in verdicts:
            detail = by_test.get((v.test, v.device), {}).get("detail", {})
            session.add(BurninResult(
                run_id=run_id, node_id=stored.id, gpu_index=v.device, test=v.test,
                value=v.value, unit=v.unit, threshold=v.threshold,
                verdict="pass" if v.passed else "fail", reason=v.reason,
                detail_json=json.dumps(detail)[:20000]))
        if doc:
            session.add(BurninArtifact(run_id=run_id, node_id=stored.id, kind="agent",
                                       content_json=json.dumps(_artifact(doc))))
        if "dcgm" in doc:
            session.add(BurninArtifact(run_id=run_id, node_id=stored.id, kind="dcgm",
                                       content_json=json.dumps(doc["dcgm"])))
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
                expires_at=now + timedelta(days=certificate_days)))
            transition(session, stored, State.CERTIFIED, actor=actor, run_id=run_id,
                       reason=f"burn-in ({level}, profile {name}) passed")
    return NodeBurnin(node.name, "pass" if not failures else ("error" if err else "fail"),
                      name, failures, [asdict(v) for v in verdicts])
