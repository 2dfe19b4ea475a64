"""``gpuctl handoff slurm --apply [--smoke]``: the live hand-off, end to end, with no
user job on a node before it passed every gate.

1. Plan the config change against the admin's whole configuration and refuse what
   slurmctld would reject (``apply.plan_config``); refuse a node name Slurm already
   has as a dynamic node (``scontrol create node``, 22.05+: in Slurm, not in any file).
2. Write and activate it the way the installed release documents, confirm, roll back
   with slurmctld's own error (``activate.apply_plan``). New nodes join DRAINED with
   gpuctl's reason.
3. Gates, each node on its own: registered with slurmctld with the certified GRES;
   ``slurmd -C`` (Slurm's view of the hardware) matches gpuctl's snapshot; with
   ``--smoke``, the training smoke job passes, run in a maintenance reservation only
   gpuctl's job may use (the nodes are resumed inside it, so a user's job waiting for
   them still cannot start).
4. A node that fails a gate is drained with the reason and stays certified; the
   others move to in-service, which resumes them in Slurm (``sync``). Whatever
   happens, the reservation is deleted only after the nodes that did not pass are
   drained.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlmodel import select

from provisioner.burnin.command import DEFAULT_PYTHON
from provisioner.db.models import Node
from provisioner.errors import GpuctlError, InputError
from provisioner.fleet.handoff import HandoffInput, HandoffNode, HandoffResult, hand_off
from provisioner.handle import Gpuctl
from provisioner.inventory.lifecycle import State, get_node, record_event
from provisioner.slurm.activate import apply_plan, conf_lock
from provisioner.slurm.apply import SlurmSettings, plan_config, save_settings, verified_plan
from provisioner.slurm.client import (
    SlurmError,
    create_reservation,
    delete_reservation,
    drain,
    node_details,
    resume,
    run_slurm,
    slurm_nodes,
)
from provisioner.slurm.conf import NAME, layout, read_effective
from provisioner.slurm.gates import compare_hardware, wait_registered
from provisioner.slurm.render import gres_type, real_memory_mib, render_slurm
from provisioner.slurm.smoke import SmokeResult, run_smoke
from provisioner.ssh.exec import Target, run_on_each
from provisioner.ssh.hostkeys import KnownHosts


@dataclass
class LiveHandoff:
    result: HandoffResult
    action: str = "none"
    slurm: dict[str, str] = field(default_factory=dict)  # node -> Slurm state
    smoke: SmokeResult | None = None
    notes: list[str] = field(default_factory=list)
    reservation: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.result.run_id, "nodes": self.result.nodes,
                "moved": self.result.moved, "problems": self.result.problems,
                "skipped": self.result.skipped, "written": self.result.written,
                "action": self.action, "slurm": self.slurm, "notes": self.notes,
                "smoke": self.smoke.to_dict() if self.smoke else None}


def _gres(n: HandoffNode) -> str:
    return f"gpu:{gres_type(n)}:{n.gpus}"


def _refuse_dynamic(conf_dir: Path, names: list[str]) -> None:
    """A name gpuctl would add that Slurm knows but no file defines is a dynamic node
    (scontrol(1) ``create node``): two definitions of one node."""
    defined = set(layout(read_effective(conf_dir / "slurm.conf")).nodes)
    known = node_details(names)  # scontrol: sinfo misses a node in no partition
    clash = sorted(n for n in names if n in known and n not in defined)
    if clash:
        raise InputError(f"{clash[0]} is a dynamic node in Slurm (not in slurm.conf); "
                         f"delete it there first (scontrol delete nodename={clash[0]}) "
                         "or hand it off under another name; nothing was written")


def live_handoff(gc: Gpuctl, names: list[str], sku: str | None, *, conf_dir: Path,
                 partition: str | None, restart_command: str, wait: float,
                 smoke: bool = False, smoke_steps: int = 200,
                 smoke_timeout: float = 600, slurmd_restart_command: str | None = None,
                 smoke_user: str | None = None,
                 gres_autodetect: str | None = None) -> LiveHandoff:
    """Hand the certified nodes to the live Slurm (see the module docstring).

    Raises:
        InputError: nothing to hand off, a bad name, or a change slurmctld would refuse
            (nothing written).
        SlurmError: slurmctld did not take the change (rolled back, nothing moved).
    """
    if partition is not None and not NAME.fullmatch(partition):
        raise InputError(f"--partition {partition[:40]!r}: a Slurm partition name is "
                         "letters, digits, '_' and '-'")
    live = LiveHandoff(result=None)  # type: ignore[arg-type]
    settings = SlurmSettings(str(conf_dir), os.environ.get("SLURM_CONF"), restart_command)
    if slurmd_restart_command:
        settings.slurmd_restart_command = slurmd_restart_command
    verifying: list[str] = []

    def write(doc: HandoffInput) -> str:
        files = render_slurm(doc.nodes, partition, gres_autodetect)
        conf = [ln for ln in files["slurm.conf"].splitlines() if not ln.startswith("#")]
        gres = [ln for ln in files["gres.conf"].splitlines() if not ln.startswith("#")]
        with gc.session() as session:
            keep = set(session.exec(select(Node.name).where(
                Node.state != State.RETIRED.value)).all())
            targets = {n.name: Target.of(n) for n in session.exec(select(Node))}
        known = KnownHosts(gc.paths.known_hosts)
        if gres_autodetect:
            _check_gpu_plugin([targets[n.name] for n in doc.nodes if n.name in targets],
                              gres_autodetect, known)
        with conf_lock(conf_dir):
            plan = plan_config(conf_dir, conf, gres, keep)
            _refuse_dynamic(conf_dir, plan.added)
            save_settings(gc, settings)
            live.action, live.notes = apply_plan(
                plan, restart_command, timeout=max(30.0, min(wait, 300.0)),
                restart_slurmds=lambda nodes: _restart_slurmds(
                    [targets[n] for n in nodes if n in targets],
                    settings.slurmd_restart_command, known))
        return ", ".join(str(p) for p in plan.files) or f"{conf_dir} (unchanged)"

    def verify(nodes: list[HandoffNode]) -> dict[str, str]:
        # Nodes in service already serve: gpuctl checks they registered with the new
        # configuration, and leaves them to monitor; the others are gpuctl's to verify.
        new = {n.name for n in nodes if n.state != State.IN_SERVICE.value}
        verifying.extend(sorted(new))
        view, problems = wait_registered({n.name: _gres(n) for n in nodes}, wait)
        live.slurm = {name: node.label() for name, node in view.items()}
        with gc.session() as session:
            targets = {n.name: Target.of(get_node(session, n.name)) for n in nodes}
        known = KnownHosts(gc.paths.known_hosts)
        problems.update(_hardware_problems(
            [n for n in nodes if n.name not in problems], targets, known))
        good = [n for n in nodes if n.name not in problems and n.name in new]
        if smoke and good:
            # Longer than both smoke phases (alone, then together) can take.
            name = f"gpuctl-verify-{secrets.token_hex(4)}"
            create_reservation(name, [n.name for n in good], [smoke_user or "root"],
                               int(2 * smoke_timeout // 60) + 10)
            live.reservation = name
            _resume_gpuctl_drained([n.name for n in good])
            live.smoke = _smoke(gc, good, [targets[n.name] for n in good], known,
                                partition, smoke_steps, smoke_timeout, live.reservation,
                                smoke_user)
            _record_smoke(gc, good, live.smoke)
            for name, why in live.smoke.nodes.items():
                if why:
                    problems[name] = f"smoke job failed: {why}"
        passed = [n.name for n in nodes if n.name not in problems and n.name in new]
        if passed:
            try:
                with conf_lock(conf_dir):
                    apply_plan(verified_plan(conf_dir, passed), restart_command)
            except GpuctlError as exc:
                problems.update({name: f"not recorded as verified in slurm.conf: {exc}"
                                 for name in passed})
        _drain_failed({n: why for n, why in problems.items() if n in new})
        return problems

    try:
        live.result = hand_off(gc, "slurm", names, sku, dry_run=False, write=write,
                               verify=verify)
    except BaseException:
        # Fail closed: nothing gpuctl was verifying may take jobs now. If that cannot be
        # done, the reservation stays: it keeps users off them until it ends.
        try:
            _drain_failed({n: "hand-off interrupted before its gates passed"
                           for n in verifying}, "certified: ")
        except BaseException:
            live.reservation = ""
        raise
    finally:
        if live.reservation:
            with contextlib.suppress(SlurmError):
                delete_reservation(live.reservation)
    return live


def _resume_gpuctl_drained(names: list[str]) -> None:
    """Resume the nodes that gpuctl drained (never a drain someone else set)."""
    view = slurm_nodes(names)
    resume([n for n in names if n in view and view[n].drained and view[n].by_gpuctl])


def _drain_failed(problems: dict[str, str],
                  prefix: str = "certified: hand-off gate failed: ") -> None:
    """Each node that failed a gate: drained with its reason, unless it is down,
    failed or drained for a reason gpuctl did not set (the admin's, left alone).

    Raises:
        SlurmError: Slurm could not be asked or told.
    """
    view = slurm_nodes(list(problems)) if problems else {}
    for name, why in problems.items():
        snode = view.get(name)
        if snode is not None and not snode.admin_owned:
            drain([name], f"{prefix}{why}")


def _restart_slurmds(targets: list[Target], command: str, known: KnownHosts) -> list[str]:
    """Restart slurmd on gpuctl's nodes (FAQ, <= 24.05: every slurmd after nodes are
    added or removed); returns a note for each that failed."""

    notes = []
    for name, res in run_on_each(targets, command, known_hosts=known,
                                 command_timeout=60).items():
        if isinstance(res, GpuctlError):
            notes.append(f"{name}: cannot restart slurmd: {res}")
        elif res.exit_code != 0:
            notes.append(f"{name}: {command!r} exited {res.exit_code}: "
                         + res.stderr.decode("utf-8", "replace").strip()[-160:])
    return notes


def _check_gpu_plugin(targets: list[Target], mode: str, known: KnownHosts) -> None:
    """Each node's Slurm has the gpu plugin AutoDetect=``mode`` loads (gpu_<mode>.so in
    the PluginDir slurmctld reports): without it slurmd would find no GPU.

    Raises:
        InputError: a node lacks it, or cannot be asked (nothing written).
    """
    config = dict(re.findall(r"^(\w+)\s*=\s*(.*?)\s*$", run_slurm(
        ["scontrol", "show", "config"]), re.MULTILINE))
    dirs = [d for d in config.get("PluginDir", "").split(":") if d.startswith("/")]
    if not dirs:
        raise InputError("--gres-autodetect: scontrol show config names no PluginDir; "
                         "nothing was written")
    test = " || ".join(f"test -e {shlex.quote(d + f'/gpu_{mode}.so')}" for d in dirs)

    missing = [
        f"{name}: cannot look for gpu_{mode}.so: {res}" if isinstance(res, GpuctlError) else
        f"{name} has no gpu_{mode}.so in {':'.join(dirs)} (its Slurm was built without "
        "it; Debian's packages have no gpu_nvml)"
        for name, res in run_on_each(targets, test, known_hosts=known,
                                     command_timeout=30).items()
        if isinstance(res, GpuctlError) or res.exit_code != 0]
    if missing:
        raise InputError(f"refused --gres-autodetect {mode}: {missing[0]}; hand off without "
                         "it (gpuctl writes File= and Cores= from the scan); nothing was "
                         "written")


def _hardware_problems(nodes: list[HandoffNode], targets: dict[str, Target],
                       known: KnownHosts) -> dict[str, str]:
    """``slurmd -C`` on each node (over SSH) against the NodeName line gpuctl wrote."""

    by_name = {n.name: n for n in nodes}
    out = {}
    for name, res in run_on_each([targets[n.name] for n in nodes], "slurmd -C",
                                 known_hosts=known, command_timeout=30).items():
        if isinstance(res, GpuctlError):
            out[name] = f"cannot run slurmd -C: {res}"
        elif res.exit_code != 0:
            out[name] = "slurmd -C failed: " + res.stderr.decode(
                "utf-8", "replace").strip()[-160:]
        elif diffs := compare_hardware(res.stdout.decode("utf-8", "replace"),
                                       cpus=by_name[name].cpus,
                                       memory_mib=real_memory_mib(by_name[name])):
            out[name] = "; ".join(diffs)
    return out


def _smoke(gc: Gpuctl, nodes: list[HandoffNode], targets: list[Target], known: KnownHosts,
           partition: str | None, steps: int, timeout: float, reservation: str,
           user: str | None) -> SmokeResult:
    first = nodes[0].host_vars
    python = first.get("gpuctl_burnin_python") or DEFAULT_PYTHON
    env = " ".join(shlex.quote(v) for v in first.get("gpuctl_burnin_env", "").split())
    gpus = min(n.gpus for n in nodes) or 1
    # On CPU-only lab nodes the ranks share this machine: two per node is enough.
    procs = 2 if first.get("gpuctl_burnin_floors") == "cpu-lab" else gpus
    # One task per node (torchrun) with every CPU of the smallest node: whole nodes.
    cpus = min((n.cpus for n in nodes if n.cpus), default=1)
    log_dir = gc.paths.runs_dir / time.strftime("smoke-%Y%m%dT%H%M%S")
    try:
        return run_smoke(targets, gpus_per_node=gpus, python=python, env=env,
                         known_hosts=known, log_dir=log_dir, partition=partition,
                         steps=steps, procs=procs, timeout=timeout,
                         reservation=reservation, user=user, cpus_per_task=cpus)
    except SlurmError as exc:
        return SmokeResult("", False, str(exc), nodes={n.name: str(exc) for n in nodes})


def _record_smoke(gc: Gpuctl, nodes: list[HandoffNode], result: SmokeResult) -> None:
    with gc.session() as session:
        for n in nodes:
            why = result.nodes.get(n.name, result.reason if not result.passed else "")
            record_event(session, get_node(session, n.name), "smoke",
                         (f"failed: {why}" if why else
                          f"passed: job {result.job_id}: {result.reason}")[:500],
                         actor=gc.actor, severity="critical" if why else "info")
