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

import contextlib
import fcntl
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from provisioner.errors import InputError
from provisioner.slurm.apply import ConfigPlan, pool_plan, restore_plan, write_plan
from provisioner.slurm.client import (
    SlurmError,
    node_details,
    ping,
    reconfigure,
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


@contextlib.contextmanager
def conf_lock(conf_dir: Path, timeout: float = 300) -> Iterator[None]:
    """Hold gpuctl's lock on the configuration directory (flock(2) on the directory
    itself: nothing is written there for it) from planning a change until it is
    confirmed or rolled back, so two gpuctl commands (a hand-off and monitor's pool
    sync, or two hosts sharing /etc/slurm over a filesystem with flock) never plan
    from the same file and overwrite each other.

    Raises:
        SlurmError: another gpuctl held it for ``timeout`` seconds.
    """
    try:
        fd = os.open(conf_dir, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        raise InputError(f"{conf_dir / 'slurm.conf'} not found: --slurm-conf-dir must be "
                         "the cluster's Slurm configuration directory") from None
    except OSError as exc:
        raise InputError(f"cannot open {conf_dir}: {exc.strerror}") from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SlurmError(f"another gpuctl has been changing {conf_dir} for "
                                     f"{timeout:g} s; nothing was changed") from None
                time.sleep(0.5)
        yield
    finally:
        os.close(fd)  # releases the lock


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
                # scontrol, not sinfo: sinfo lists a node only through its partitions.
                seen = node_details(nodes)
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
    # Up to 24.05 a changed node list needs a restart (scontrol(1) reconfigure, FAQ
    # #add_nodes); before 23.11 so does a node defined anew (ConfigPlan.redefined).
    # From 23.11 reconfigure starts new daemons on the new files (scontrol(1) 24.11).
    restart = ((plan.node_list_changed and version < RECONFIGURE_ADDS_NODES)
               or (bool(plan.redefined) and version < RECONFIGURE_KEEPS_OLD))
    action = "restart" if restart else "reconfigure"
    write_plan(plan)
    try:
        why = _run_restart(restart_command) if restart else _reconfigure()
        if why:
            # The command failed because slurmctld died reading the files: its own line
            # says why (give the log a moment to be written).
            fatal = _wait_fatal(log, 3.0)
            why = f"slurmctld: {fatal} ({why})" if fatal else why
        else:
            why = confirm(plan.nodes, log, timeout)
    except BaseException:
        # Interrupted (Ctrl-C, SIGTERM) between the write and the confirmation: the old
        # files go back and slurmctld to them before the interruption goes on.
        with contextlib.suppress(Exception):
            _restore(plan, restart_command, version, restart, timeout)
        raise
    if why:
        how, state = _restore(plan, restart_command, version, restart, timeout)
        raise SlurmError(f"slurmctld did not take the new configuration: {why}; gpuctl "
                         f"restored the previous {', '.join(p.name for p in plan.files)} "
                         f"and {how}: " + ("slurmctld is UP" if not state else
                                           f"slurmctld is NOT UP: {state}"))
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


def _wait_fatal(log: LogTail, seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while True:
        fatal = log.fatal()
        if fatal or time.monotonic() > deadline:
            return fatal
        time.sleep(0.2)


def _reconfigure() -> str:
    try:
        reconfigure()
    except SlurmError as exc:
        return str(exc)
    return ""


def _restore(plan: ConfigPlan, restart_command: str, version: tuple[int, int, int],
             restarted: bool, timeout: float) -> tuple[str, str]:
    """Put the old files back and slurmctld on them: (what was done, "" when slurmctld
    is UP after it, else why not).

    Raises:
        SlurmError: the old files could not be written back.
    """
    try:
        restore_plan(plan)
    except OSError as exc:
        raise SlurmError(f"slurmctld did not take the new configuration, and gpuctl "
                         f"could not restore {', '.join(p.name for p in plan.files)}: "
                         f"{exc}; restore them from the .gpuctl-bak copies") from None
    log = LogTail(plan.log_file)
    if restarted or version < RECONFIGURE_KEEPS_OLD or ping(timeout=10):
        # The new files ended (or may have ended) the running slurmctld: start it on
        # the old ones.
        return "restarted slurmctld", _run_restart(restart_command) or confirm([], log,
                                                                               timeout)
    # From 23.11 a failed reconfigure kept the old configuration running; one that
    # took it but was not confirmed in time did not: re-read the restored files.
    return ("slurmctld kept the old configuration",
            _reconfigure() or confirm([], log, timeout))


def apply_pool_partitions(conf_dir: Path, lines: list[str], prefix: str,
                          restart_command: str) -> bool:
    """Make the block's pool partitions ``lines`` and activate them (a reconfigure:
    the node list does not change); False when nothing changed."""
    with conf_lock(conf_dir):
        plan = pool_plan(conf_dir, lines, prefix)
        action, _ = apply_plan(plan, restart_command)
    return action != "none"
