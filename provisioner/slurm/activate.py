"""Make slurmctld read a changed configuration the way Slurm documents it for the
installed release, confirm that it took, and put the old one back, with slurmctld's
own error, when it did not.

Per release (SchedMD/slurm doc/html/faq.shtml, "How should I add nodes to Slurm?"):
up to 24.05, adding or removing nodes needs slurmctld and every slurmd restarted
(tags slurm-22-05-8-1 and slurm-24-05-8-1); "on Slurm 24.11 and newer", ``scontrol
reconfigure`` is enough (tag slurm-24-11-5-1). Any other change is a ``scontrol
reconfigure`` on every release. From 23.11 a reconfigure that fails leaves slurmctld
running with the old configuration (CHANGELOG/slurm-23.11.md reworked reconfigure to
re-exec slurmctld), so there a restart would be the *less* safe path. On 22.05, a
``systemctl restart slurmctld`` returns 0 before the new slurmctld reads its
configuration, and a fatal error ends it a moment later: gpuctl watches slurmctld's
log (``SlurmctldLogFile``, else its journal) from before the change for a ``fatal:``
line while it waits for ``scontrol ping`` to say UP and for the nodes to be listed.

gpuctl restarts the slurmd of the nodes it manages (over its SSH, the admin's
``--slurmd-restart-command``) and asks every other slurmd to re-read the file with
``scontrol reconfigure``; the admin's own nodes are the admin's to restart.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from provisioner.errors import InputError
from provisioner.slurm.apply import ConfigPlan, pool_plan, restore_plan, write_plan
from provisioner.slurm.client import (
    SlurmError,
    ping,
    reconfigure,
    slurm_nodes,
    slurm_version,
)
from provisioner.slurm.conf import syntax_check

RECONFIGURE_ADDS_NODES = (24, 11)
RECONFIGURE_KEEPS_OLD = (23, 11)
MAX_LOG_READ = 1024 * 1024


class LogTail:
    """What slurmctld logs from now on: its log file, else its systemd journal."""

    def __init__(self, path: str) -> None:
        self.path = Path(path) if path else None
        self.since = time.time()
        try:
            self.offset = self.path.stat().st_size if self.path else 0
        except OSError:
            self.offset = 0

    def fatal(self) -> str:
        """The first ``fatal:`` line slurmctld wrote since, without its timestamp."""
        for line in self._new_lines():
            found = re.search(r"\bfatal: .*", line)
            if found:
                return found.group(0)[:300]
        return ""

    def _new_lines(self) -> list[str]:
        if self.path is not None:
            try:
                with open(self.path, "rb") as fh:
                    size = os.fstat(fh.fileno()).st_size
                    fh.seek(self.offset if size >= self.offset else 0)  # rotated
                    return fh.read(MAX_LOG_READ).decode("utf-8", "replace").splitlines()
            except OSError:
                return []
        if shutil.which("journalctl") is None:
            return []
        try:
            res = subprocess.run(["journalctl", "-u", "slurmctld", f"--since=@{int(self.since)}",
                                  "-o", "cat", "-q", "--no-pager"], capture_output=True,
                                 timeout=5, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return []
        return res.stdout[:MAX_LOG_READ].decode("utf-8", "replace").splitlines()


def _run_restart(command: str) -> str:
    """Run the admin's restart command: "" or why it failed."""
    try:
        res = subprocess.run(shlex.split(command), capture_output=True, text=True,
                             timeout=120, check=False)
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        return f"restart command {command!r} failed: {exc}"
    if res.returncode != 0:
        err = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"restart command {command!r} exited {res.returncode}: {err[0][:200]}"
    return ""


def confirm(nodes: list[str], log: LogTail, timeout: float) -> str:
    """Wait until slurmctld answers ``scontrol ping`` as UP and lists ``nodes``: ""
    then, else why not (its fatal line the moment it logs one)."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        fatal = log.fatal()
        if fatal:
            return f"slurmctld: {fatal}"
        last = ping(timeout=10)
        if not last:
            try:
                seen = slurm_nodes(nodes) if nodes else {}
            except SlurmError as exc:
                seen, last = {}, str(exc)
            missing = [n for n in nodes if n not in seen]
            if not missing and not last:
                return ""
            last = last or f"slurmctld does not list {', '.join(missing[:3])}"
        if time.monotonic() > deadline:
            return f"not confirmed within {timeout:g} s: {last}"
        time.sleep(0.5)


def apply_plan(plan: ConfigPlan, restart_command: str, *,
               restart_slurmds: Callable[[list[str]], list[str]] | None = None,
               timeout: float = 60) -> tuple[str, list[str]]:
    """Check, write and activate ``plan``; returns (what was done: "none", "restart"
    or "reconfigure", notes).

    Raises:
        InputError: the installed scontrol cannot parse the new slurm.conf (nothing
            written), or a file cannot be written.
        SlurmError: slurmctld did not take it; the old files are back and slurmctld
            was brought back to them (the message says whether it is UP).
    """
    if not plan.files:
        return "none", []
    new_conf = plan.text("slurm.conf")
    if new_conf is not None:
        error = syntax_check(plan.conf_dir / "slurm.conf", new_conf)
        if error:
            raise InputError(f"refused: Slurm's scontrol cannot parse the new slurm.conf: "
                             f"{error}; nothing was written")
    version = slurm_version()
    log = LogTail(plan.log_file)
    write_plan(plan)
    restart = plan.node_list_changed and version < RECONFIGURE_ADDS_NODES
    action = "restart" if restart else "reconfigure"
    why = _run_restart(restart_command) if restart else _reconfigure()
    if not why:
        why = confirm(plan.nodes, log, timeout)
    if why:
        _roll_back(plan, restart_command, version, restart, why, timeout)
    notes = []
    if restart:
        if restart_slurmds is not None:
            notes += restart_slurmds(plan.nodes)
        # The admin's other slurmd read the new node list too (they are the admin's to
        # restart, as the FAQ asks for nodes added on <= 24.05).
        try:
            reconfigure()
        except SlurmError as exc:
            notes.append(f"scontrol reconfigure after the restart failed: {exc}")
    return action, notes


def _reconfigure() -> str:
    try:
        reconfigure()
    except SlurmError as exc:
        return str(exc)
    return ""


def _roll_back(plan: ConfigPlan, restart_command: str, version: tuple[int, int, int],
               restarted: bool, why: str, timeout: float) -> None:
    files = ", ".join(p.name for p in plan.files)
    try:
        restore_plan(plan)
    except OSError as exc:
        raise SlurmError(f"slurmctld did not take the new configuration ({why}), and "
                         f"gpuctl could not restore {files}: {exc}; restore them from "
                         "the .gpuctl-bak copies") from None
    log = LogTail(plan.log_file)
    if restarted or version < RECONFIGURE_KEEPS_OLD or ping(timeout=10):
        # The new files ended (or may have ended) the running slurmctld: start it on
        # the old ones. From 23.11 a failed reconfigure kept the old one running.
        done = _run_restart(restart_command)
        how = "restarted slurmctld"
    else:
        done, how = "", "slurmctld kept the old configuration"
    state = done or confirm([], log, timeout)
    raise SlurmError(f"slurmctld did not take the new configuration: {why}; gpuctl "
                     f"restored the previous {files} and {how}: "
                     + ("slurmctld is UP" if not state else f"slurmctld is NOT UP: {state}"))


def apply_pool_partitions(conf_dir: Path, lines: list[str], prefix: str,
                          restart_command: str) -> bool:
    """Make the block's pool partitions ``lines`` and activate them (a reconfigure:
    the node list does not change); False when nothing changed."""
    plan = pool_plan(conf_dir, lines, prefix)
    action, _ = apply_plan(plan, restart_command)
    return action != "none"
