"""``gpuctl handoff slurm --apply [--smoke]``: the live hand-off, end to end.

Write gpuctl's blocks into the cluster's config, make slurmctld read them, resume the
nodes gpuctl had drained, wait until every node registered IDLE with the GPUs it was
certified with, compare ``slurmd -C`` (Slurm's view of the hardware) with gpuctl's
snapshot, and optionally run the training smoke job. Only nodes that pass every step
move to in-service; the others stay certified, each with the reason.
"""

from __future__ import annotations

import os
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlmodel import select

from provisioner.burnin.command import DEFAULT_PYTHON
from provisioner.db.models import Node
from provisioner.errors import GpuctlError
from provisioner.fleet.handoff import HandoffInput, HandoffNode, HandoffResult, hand_off
from provisioner.handle import Gpuctl
from provisioner.inventory.lifecycle import State, get_node, record_event
from provisioner.slurm.apply import (
    SlurmSettings,
    activate_config,
    compare_hardware,
    save_settings,
    wait_registered,
    write_config,
)
from provisioner.slurm.client import SlurmError
from provisioner.slurm.render import gres_type, real_memory_mib, render_slurm
from provisioner.slurm.smoke import SmokeResult, run_smoke
from provisioner.slurm.sync import sync_slurm
from provisioner.ssh.exec import Target, run_on_node
from provisioner.ssh.hostkeys import KnownHosts


@dataclass
class LiveHandoff:
    result: HandoffResult
    action: str = "none"
    slurm: dict[str, str] = field(default_factory=dict)  # node -> Slurm state
    smoke: SmokeResult | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.result.run_id, "nodes": self.result.nodes,
                "moved": self.result.moved, "problems": self.result.problems,
                "skipped": self.result.skipped, "written": self.result.written,
                "action": self.action, "slurm": self.slurm,
                "smoke": self.smoke.to_dict() if self.smoke else None}


def _gres(n: HandoffNode) -> str:
    return f"gpu:{gres_type(n)}:{n.gpus}"


def live_handoff(gc: Gpuctl, names: list[str], sku: str | None, *, conf_dir: Path,
                 partition: str | None, restart_command: str, wait: float,
                 smoke: bool = False, smoke_steps: int = 200,
                 smoke_timeout: float = 600) -> LiveHandoff:
    """Hand the certified nodes to the live Slurm (see the module docstring).

    Raises:
        InputError: nothing to hand off, or the config directory is unusable.
        SlurmError: Slurm could not be made to read the config (nothing moved).
    """
    live = LiveHandoff(result=None)  # type: ignore[arg-type]

    def write(doc: HandoffInput) -> str:
        files = render_slurm(doc.nodes, partition)
        conf = [ln for ln in files["slurm.conf"].splitlines() if not ln.startswith("#")]
        gres = [ln for ln in files["gres.conf"].splitlines() if not ln.startswith("#")]
        with gc.session() as session:
            keep = set(session.exec(select(Node.name).where(
                Node.state != State.RETIRED.value)).all())
        changed, node_list_changed = write_config(conf_dir, conf, gres, keep)
        save_settings(gc, SlurmSettings(str(conf_dir), os.environ.get("SLURM_CONF"),
                                        restart_command))
        if changed:
            live.action = activate_config(node_list_changed, restart_command)
        return ", ".join(changed) or f"{conf_dir} (unchanged)"

    def verify(nodes: list[HandoffNode]) -> dict[str, str]:
        sync_slurm(gc)  # resume what gpuctl drained; drain what is not serving
        view, problems = wait_registered({n.name: _gres(n) for n in nodes}, wait)
        live.slurm = {name: node.label() for name, node in view.items()}
        with gc.session() as session:
            targets = {n.name: Target.of(get_node(session, n.name)) for n in nodes}
        known = KnownHosts(gc.paths.known_hosts)
        problems.update(_hardware_problems(
            [n for n in nodes if n.name not in problems], targets, known))
        good = [n for n in nodes if n.name not in problems]
        if smoke and good:
            live.smoke = _smoke(gc, good, [targets[n.name] for n in good], known, partition,
                                smoke_steps, smoke_timeout)
            _record_smoke(gc, good, live.smoke)
            if not live.smoke.passed:
                problems.update({n.name: f"smoke job failed: {live.smoke.reason}"
                                 for n in good})
        return problems

    live.result = hand_off(gc, "slurm", names, sku, dry_run=False, write=write,
                           verify=verify)
    return live


def _hardware_problems(nodes: list[HandoffNode], targets: dict[str, Target],
                       known: KnownHosts) -> dict[str, str]:
    """``slurmd -C`` on each node (over SSH) against the NodeName line gpuctl wrote."""

    def check(n: HandoffNode) -> tuple[str, str]:
        try:
            res = run_on_node(targets[n.name], "slurmd -C", known_hosts=known,
                              max_output=65536, command_timeout=30)
        except GpuctlError as exc:
            return n.name, f"cannot run slurmd -C: {exc}"
        if res.exit_code != 0:
            return n.name, "slurmd -C failed: " + res.stderr.decode(
                "utf-8", "replace").strip()[-160:]
        diffs = compare_hardware(res.stdout.decode("utf-8", "replace"), cpus=n.cpus,
                                 memory_mib=real_memory_mib(n))
        return n.name, "; ".join(diffs)

    with ThreadPoolExecutor(max_workers=min(32, max(1, len(nodes)))) as pool:
        return {name: why for name, why in pool.map(check, nodes) if why}


def _smoke(gc: Gpuctl, nodes: list[HandoffNode], targets: list[Target], known: KnownHosts,
           partition: str | None, steps: int, timeout: float) -> SmokeResult:
    first = nodes[0].host_vars
    python = first.get("gpuctl_burnin_python") or DEFAULT_PYTHON
    env = " ".join(shlex.quote(v) for v in first.get("gpuctl_burnin_env", "").split())
    gpus = min(n.gpus for n in nodes) or 1
    # On CPU-only lab nodes the ranks share this machine: two per node is enough.
    procs = 2 if first.get("gpuctl_burnin_floors") == "cpu-lab" else gpus
    log_dir = gc.paths.runs_dir / time.strftime("smoke-%Y%m%dT%H%M%S")
    try:
        return run_smoke(targets, gpus_per_node=gpus, python=python, env=env,
                         known_hosts=known, log_dir=log_dir,
                         partition=partition, steps=steps, procs=procs, timeout=timeout)
    except SlurmError as exc:
        return SmokeResult("", False, str(exc))


def _record_smoke(gc: Gpuctl, nodes: list[HandoffNode], result: SmokeResult) -> None:
    with gc.session() as session:
        for n in nodes:
            record_event(session, get_node(session, n.name), "smoke",
                         f"{'passed' if result.passed else 'failed'}: job {result.job_id}: "
                         f"{result.reason}"[:500], actor=gc.actor,
                         severity="info" if result.passed else "critical")
