"""``provision_nodes``: lock the nodes, render the inventory, run the playbook through
ansible-runner, store every task result, and move each node to provisioned or failed."""

from __future__ import annotations

import json
import os
import queue
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml
from sqlmodel import col, select

from provisioner import __version__
from provisioner.db.models import Event, Node, Run, TaskResult
from provisioner.errors import InputError, NodesFailedError
from provisioner.fsutil import private_dir
from provisioner.handle import Gpuctl
from provisioner.inventory.lifecycle import (
    State,
    get_node,
    mark_hostkey_changed,
    record_event,
    transition,
)
from provisioner.provision.inventory import build_inventory, group_name, render_inventory
from provisioner.provision.runner import RunnerJob, TaskEvent
from provisioner.runs import RunScope, RunStatus, recover_abandoned, select_nodes
from provisioner.shipped import shipped_dir

ELIGIBLE = {State.DISCOVERED, State.PROVISIONED, State.FAILED, State.CERTIFIED}
BECOME_ENV = "GPUCTL_BECOME_PASSWORD"
# A certificate says what burn-in measured on a driver, CUDA and fabric manager: a
# provision run that changes any of them (or reboots into a new module) voids it; one
# that changes nothing there leaves a certified node certified.
INVALIDATES_CERTIFICATE = frozenset({"driver", "cuda", "fabricmanager", "nouveau", "reboot"})
# What OpenSSH prints when the node's key differs from the one in gpuctl's known_hosts.
HOSTKEY_CHANGED = "REMOTE HOST IDENTIFICATION HAS CHANGED"


@dataclass
class NodeProgress:
    name: str
    status: str = "pending"  # pending | running | ok | failed | unreachable
    task: str = ""
    ok: int = 0
    changed: int = 0
    failed: int = 0
    skipped: int = 0
    reason: str = ""
    changed_roles: list[str] = field(default_factory=list)


@dataclass
class ProvisionSummary:
    run_id: int
    status: str
    check: bool
    nodes: list[NodeProgress] = field(default_factory=list)

    @property
    def failed(self) -> list[NodeProgress]:
        return [n for n in self.nodes if n.status in ("failed", "unreachable")]

    @property
    def changed(self) -> int:
        return sum(n.changed for n in self.nodes)

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "status": self.status, "check": self.check,
                "changed": self.changed, "nodes": [asdict(n) for n in self.nodes]}


def _versions() -> dict[str, str]:
    out = {"gpuctl": __version__}
    for dist in ("ansible-core", "ansible-runner"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "unknown"
    return out


def _control_machine_id() -> str:
    """This host's machine id, read the way Ansible's ``ansible_machine_id`` fact is."""
    for path in ("/var/lib/dbus/machine-id", "/etc/machine-id"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text:
            return text
    return ""


def last_failed_nodes(gc: Gpuctl) -> list[str]:
    """Nodes the most recent provision run (not a dry run) left failed: by a task, by an
    interruption, or because its process died and the run was recovered as abandoned.

    Raises:
        InputError: there was no such run.
    """
    with gc.session() as session:
        runs = session.exec(select(Run).where(Run.kind == "provision")
                            .order_by(col(Run.id).desc())).all()
        run = next((r for r in runs if not json.loads(r.args_json).get("check")
                    and r.status != RunStatus.RUNNING), None)
        if run is None:
            raise InputError("no earlier provision run to retry")
        rows = session.exec(select(Node.name).join(Event, col(Event.node_id) == Node.id)
                            .where(Event.run_id == run.id, Event.to_state == State.FAILED,
                                   Node.state == State.FAILED)).all()
        return sorted(set(rows))


def _prepare_run_dir(gc: Gpuctl, run_id: int, nodes: list[Node],
                     all_vars: dict[str, Any]) -> tuple[Path, Path]:
    # The run's directory holds its inventory and Ansible's records: gpuctl's own, never
    # a link planted where it should be.
    run_dir = private_dir(gc.paths.runs_dir) / f"provision-{run_id}"
    if run_dir.is_dir() and not run_dir.is_symlink():
        # Left by an older database's run of the same number: none of it is this run's.
        shutil.rmtree(run_dir)
    run_dir = private_dir(run_dir)
    inv_dir = private_dir(run_dir / "inventory")
    group_vars = inv_dir / "group_vars"
    shutil.copytree(shipped_dir() / "inventory/group_vars", group_vars, dirs_exist_ok=True)
    # Each SKU's pins are the ``provision`` part of its catalogue file: group sku_<name>.
    for sku in gc.skus().values():
        (group_vars / f"{group_name('sku_' + sku.name)}.yml").write_text(
            f"# From {sku.source} (provision)\n" + yaml.safe_dump(sku.provision, sort_keys=True))
    site = gc.paths.home / "group_vars"
    if site.is_dir():
        shutil.copytree(site, group_vars, dirs_exist_ok=True)
    hosts = inv_dir / "hosts.yml"
    hosts.write_text(render_inventory(build_inventory(gc, nodes, all_vars), "yaml",
                                      f"provision run {run_id}"))
    return run_dir, hosts


def _store(gc: Gpuctl, run_id: int, node_ids: dict[str, int], batch: list[TaskEvent]) -> None:
    rows = [TaskResult(run_id=run_id, node_id=node_ids[e.host], task=e.task[:256],
                       role=e.role, action=e.action, status=e.status, message=e.message,
                       seconds=e.seconds) for e in batch
            if e.status != "started" and e.host in node_ids]
    if rows:
        with gc.session() as session:
            session.add_all(rows)


def _apply(progress: dict[str, NodeProgress], event: TaskEvent) -> None:
    node = progress.get(event.host)
    if node is None:
        return
    node.task = event.task
    if event.status == "started":
        if node.status == "pending":
            node.status = "running"
        return
    if event.status in ("ok", "changed", "skipped"):
        setattr(node, event.status, getattr(node, event.status) + 1)
        if event.status == "changed":
            node.ok += 1
            if event.role and event.role not in node.changed_roles:
                node.changed_roles.append(event.role)
    else:
        node.failed += 1
        node.status = event.status
        # The last failure decides (a rescue explains the failure before it); one line.
        node.reason = " ".join(f"{event.message} (task: {event.task})".split())[:500]


def provision_nodes(
    gc: Gpuctl,
    names: list[str],
    *,
    all_nodes: bool = False,
    retry_failed: bool = False,
    tags: str | None = None,
    check: bool = False,
    diff: bool = False,
    forks: int = 16,
    allow_control_host: bool = False,
    vault_password_file: str | None = None,
    on_progress: Callable[[list[NodeProgress]], None] | None = None,
    wait_jobs: float = 0.0,
) -> ProvisionSummary:
    """Run playbooks/provision.yml on the nodes.

    Raises:
        InputError: bad selection or options; nothing runs.
        NodeBusyError: another run holds one of the nodes; nothing runs.
        NodesFailedError: the run was interrupted (results received are kept).
    """
    recover_abandoned(gc)
    if retry_failed:
        if names or all_nodes:
            raise InputError("--retry-failed picks the nodes itself; name no nodes")
        names = last_failed_nodes(gc)
        if not names:
            raise InputError("no node failed in the last provision run")
    if not 1 <= forks <= 500:
        raise InputError("--forks must be between 1 and 500")
    with gc.session() as session:
        nodes = select_nodes(session, names, all_nodes, ELIGIBLE, "provision",
                             "scan nodes first; release quarantined ones")
    # Secrets never reach the database, the run directory or Ansible's environment.
    become_password = os.environ.pop(BECOME_ENV, None)
    args = {"nodes": [n.name for n in nodes], "tags": tags, "check": check, "diff": diff,
            "forks": forks, "retry_failed": retry_failed, "versions": _versions(),
            "become_password": "from environment" if become_password else None}
    progress = {n.name: NodeProgress(n.name) for n in nodes}
    certified = {n.name for n in nodes if n.state == State.CERTIFIED}
    status = "not started"  # ansible-runner's final status once it ran
    with RunScope(gc, "provision", args, nodes,
                  busy=None if check else State.PROVISIONING,
                  start_reason="provision started", wait=wait_jobs) as run:
        node_ids = {n.name: n.id for n in nodes if n.id is not None}
        try:
            all_vars = {"preflight_control_machine_id": _control_machine_id(),
                        "preflight_allow_control_host": allow_control_host}
            run_dir, hosts = _prepare_run_dir(gc, run.run_id, nodes, all_vars)
            job = RunnerJob(run_dir=run_dir, project=shipped_dir() / "playbooks",
                            playbook="provision.yml", inventory=hosts, limit=list(node_ids),
                            tags=tags, forks=forks, check=check, diff=diff,
                            become_password=become_password,
                            vault_password_file=vault_password_file)
            try:
                job.start()
                status = _drain(job, gc, run.run_id, node_ids, progress, on_progress)
            finally:
                job.cleanup()
            if status == "failed" and not any(p.status != "pending"
                                              for p in progress.values()):
                detail = job.stdout_tail().strip().splitlines()[-1:] or ["no output"]
                for p in progress.values():
                    p.status = "failed"
                    p.reason = f"ansible-playbook failed: {detail[0][:300]}"
        finally:
            _close_progress(progress, status)
            _settle_nodes(gc, run.run_id, progress, check, certified)
            run.node_ok = {p.name: p.status == "ok" for p in progress.values()}
            run.summary = {"ok": [n for n, p in progress.items() if p.status == "ok"],
                           "failed": [n for n, p in progress.items() if p.status != "ok"],
                           "changed": sum(p.changed for p in progress.values())}
            if status == "interrupted":
                run.status = RunStatus.INTERRUPTED
    summary = ProvisionSummary(run.run_id, str(run.status), check, list(progress.values()))
    if status == "interrupted":
        raise NodesFailedError(f"provision interrupted: run {run.run_id} marked interrupted, "
                               f"{sum(p.ok + p.failed for p in progress.values())} task "
                               "results kept")
    return summary


def _close_progress(progress: dict[str, NodeProgress], status: str) -> None:
    """Give every node still pending or running its final status and reason."""
    for p in progress.values():
        if p.status not in ("pending", "running"):
            continue
        if status == "interrupted":
            p.status, p.reason = "failed", "interrupted before the playbook finished"
        elif p.status == "pending":
            # Ansible reported nothing for this node: it was never provisioned.
            p.status, p.reason = "failed", f"no task ran on this node (ansible-runner {status})"
        elif status in ("successful", "failed"):
            p.status = "ok" if status == "successful" or p.failed == 0 else "failed"
            if p.status == "failed" and not p.reason:
                p.reason = "no result from Ansible"
        else:
            p.status, p.reason = "failed", f"ansible-runner ended {status}"


def _drain(job: RunnerJob, gc: Gpuctl, run_id: int, node_ids: dict[str, int],
           progress: dict[str, NodeProgress],
           on_progress: Callable[[list[NodeProgress]], None] | None) -> str:
    interrupted = False
    while True:
        try:
            batch: list[TaskEvent] = []
            deadline = time.monotonic() + 0.25
            while time.monotonic() < deadline:
                try:
                    batch.append(job.events.get(timeout=0.05))
                except queue.Empty:
                    if not job.alive():
                        break
            for event in batch:
                _apply(progress, event)
            _store(gc, run_id, node_ids, batch)
            if on_progress:
                on_progress(list(progress.values()))
            if not job.alive() and job.events.empty():
                break
        except KeyboardInterrupt:
            interrupted = True
            job.cancelled.set()
    if interrupted or job.status == "canceled":
        job.kill_leftovers()
        return "interrupted"
    return job.status


def _settle_nodes(gc: Gpuctl, run_id: int, progress: dict[str, NodeProgress],
                  check: bool, certified: set[str]) -> None:
    with gc.session() as session:
        for p in progress.values():
            node = get_node(session, p.name)
            if check:
                record_event(session, node, "note", f"provision dry run (--check): {p.status}"
                             f", {p.changed} would change", actor=gc.actor, run_id=run_id)
                continue
            if node.state != State.PROVISIONING:
                continue
            if p.status == "unreachable" and HOSTKEY_CHANGED in p.reason:
                mark_hostkey_changed(session, node, f"provision refused by SSH: {p.reason}"
                                     [:500], actor=gc.actor, run_id=run_id)
            voiding = sorted(set(p.changed_roles) & INVALIDATES_CERTIFICATE)
            if p.status == "ok" and p.name in certified and not voiding:
                transition(session, node, State.CERTIFIED, actor=gc.actor, run_id=run_id,
                           reason=f"provisioned: {p.changed} changed, none in the driver, "
                           "CUDA or fabric manager: certificate kept")
            elif p.status == "ok":
                why = f"; {', '.join(voiding)} changed: burn in again to certify" \
                    if p.name in certified else ""
                transition(session, node, State.PROVISIONED, actor=gc.actor, run_id=run_id,
                           reason=f"provisioned: {p.ok} ok, {p.changed} changed{why}")
            else:
                transition(session, node, State.FAILED, actor=gc.actor, run_id=run_id,
                           reason=p.reason or p.status)
