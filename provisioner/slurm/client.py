"""Slurm's command-line tools behind one entry point (``run_slurm``), and the few calls
gpuctl makes: read node states, drain, resume, reconfigure, submit.

gpuctl runs where an admin runs ``scontrol``: on the controller or a host with its
configuration (``SLURM_CONF`` is honoured, as by Slurm's own commands). Syntax from the
Slurm 22.05 man pages: scontrol(1) ``update NodeName=.. State=DRAIN Reason=..`` and
``State=RESUME``; sinfo(1) ``-N -h -o`` with ``%N`` node, ``%T`` extended state (a
trailing ``*`` means not responding), ``%G`` gres, ``%u`` who set the reason, ``%E``
the reason.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from typing import Any

from provisioner.errors import GpuctlError

# Every drain gpuctl sets starts with this, so a drain by someone else is told apart.
REASON_PREFIX = "gpuctl:"
TIMEOUT = 60.0


class SlurmError(GpuctlError):
    """A Slurm command failed or Slurm is not reachable."""


@dataclass
class SlurmNode:
    name: str
    state: str  # sinfo's extended state without flags: idle, allocated, mixed, drained,
    #             draining, down, ...
    not_responding: bool
    gres: str
    reason: str
    reason_user: str

    @property
    def drained(self) -> bool:
        return self.state in ("drained", "draining", "drain")

    @property
    def by_gpuctl(self) -> bool:
        return self.reason.startswith(REASON_PREFIX)

    @property
    def admin_owned(self) -> bool:
        """DOWN, FAIL or DRAIN for a reason gpuctl did not set: never gpuctl's to
        change (an admin's "PSU dead", or Slurm's own "Not responding")."""
        return (self.drained or self.state in ("down", "fail", "failing")) \
            and not self.by_gpuctl

    def label(self) -> str:
        return self.state.upper() + ("*" if self.not_responding else "")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_slurm(argv: list[str], *, timeout: float = TIMEOUT,
              env: dict[str, str] | None = None, input_text: str | None = None) -> str:
    """Run one Slurm command (``input_text`` on its standard input); returns its stdout.

    Raises:
        SlurmError: the tool is missing, timed out or failed (its last error line).
    """
    if shutil.which(argv[0]) is None:
        raise SlurmError(f"{argv[0]} not found: gpuctl talks to Slurm through its "
                         "commands; run it where scontrol works (install slurm-client)")
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                             env=env or slurm_env(), check=False, input=input_text)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{' '.join(argv[:3])} gave no answer in {timeout:g} s") from None
    if res.returncode != 0:
        lines = (res.stderr or res.stdout).strip().splitlines() or [f"exit {res.returncode}"]
        raise SlurmError(f"{' '.join(argv[:2])} failed: {lines[-1][:240]}")
    return res.stdout


def slurm_env() -> dict[str, str]:
    """gpuctl's environment for Slurm's commands, without what would filter their output
    behind gpuctl's back: an admin's ``SQUEUE_USERS``/``SQUEUE_STATES``/... and
    ``SINFO_PARTITION`` (squeue(1), sinfo(1) ENVIRONMENT VARIABLES) and
    ``SLURM_CLUSTERS``."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("SQUEUE_", "SINFO_")) and k != "SLURM_CLUSTERS"}


def slurm_version(timeout: float = 15.0) -> tuple[int, int, int]:
    """The Slurm release of the client tools, from ``scontrol --version`` (Debian 12's
    prints "slurm-wlm 22.05.8"; the first N.N.N is taken). scontrol reads the
    configuration first, so this needs a readable ``slurm.conf``.

    Raises:
        SlurmError: scontrol is missing or fails, or prints no version.
    """
    out = run_slurm(["scontrol", "--version"], timeout=timeout)
    found = re.search(r"\b(\d+)\.(\d+)\.(\d+)", out)
    if found is None:
        raise SlurmError(f"scontrol --version printed no version: {out.strip()[:80]!r}")
    major, minor, patch = (int(x) for x in found.groups())
    return major, minor, patch


def parse_sinfo(text: str) -> dict[str, SlurmNode]:
    """``sinfo -N -h -o '%N|%T|%G|%u|%E'`` (one line per node and partition)."""
    out: dict[str, SlurmNode] = {}
    for line in text.splitlines():
        parts = line.split("|", 4)
        if len(parts) != 5 or not parts[0].strip():
            continue
        name, state, gres, user, reason = (p.strip() for p in parts)
        not_responding = state.endswith("*")
        state = state.rstrip("*~#!%$@^-").lower()
        out[name] = SlurmNode(name, state, not_responding, gres,
                              "" if reason == "none" else reason,
                              "" if user in ("Unknown", "(null)") else user)
    return out


def slurm_nodes(names: list[str] | None = None) -> dict[str, SlurmNode]:
    """Every node Slurm knows (or only ``names``), by name."""
    argv = ["sinfo", "-N", "-h", "-o", "%N|%T|%G|%u|%E"]
    if names:
        argv += ["-n", ",".join(names)]
    return parse_sinfo(run_slurm(argv))


def jobs_on(node: str) -> list[str]:
    """The jobs that hold ``node`` now (running, completing, suspended, ...: squeue's
    default states but pending), by id (squeue(1) ``-a -w``: hidden partitions too).
    Only as complete as what gpuctl's user may see: ``sees_all_jobs``."""
    out = run_slurm(["squeue", "-a", "-h", "-w", node, "-o", "%i|%t"])
    return [job for job, _, state in (line.partition("|") for line in out.splitlines())
            if job.strip() and state.strip() not in ("", "PD")]


# A job id as squeue's %i prints it: plain, an array task (123_4) or a heterogeneous
# component (123+0).
_JOB_ID = re.compile(r"\d{1,12}(?:[_+]\d{1,12})?")


def cancel_jobs(job_ids: list[str]) -> None:
    """``scancel`` these jobs (scancel(1): SIGTERM, then SIGKILL after slurm.conf's
    ``KillWait``), by id: the jobs gpuctl saw on a node, not every job that may come to
    use it.

    Raises:
        SlurmError: an id that is not one, or scancel failed.
    """
    bad = [j for j in job_ids if not _JOB_ID.fullmatch(j)]
    if bad:
        raise SlurmError(f"not a Slurm job id: {bad[0][:40]!r}")
    if job_ids:
        run_slurm(["scancel", *job_ids])


@functools.lru_cache(maxsize=1)
def sees_all_jobs() -> bool:
    """Whether squeue shows gpuctl every user's jobs: as root, or where slurm.conf's
    ``PrivateData`` does not hide jobs (slurm.conf(5); slurmctld packs only the caller's
    own jobs for a non-operator otherwise). Asked once per process: a wait polls it."""
    if os.geteuid() == 0:
        return True
    out = run_slurm(["scontrol", "show", "config"])
    found = re.search(r"^PrivateData\s*=\s*(.*)$", out, re.MULTILINE)
    return not found or "jobs" not in found.group(1).lower()


def drain_reason(reason: str) -> str:
    """The Reason gpuctl sets for ``reason``: prefixed, one line, no quotes (scontrol
    takes it as one argument; no shell is involved), no control characters or escape
    sequences (a node's XID line may carry them), at most 200 characters."""
    text = re.sub(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]", " ", f"{REASON_PREFIX} {reason}")
    text = re.sub(r"[\x00-\x1f\x7f-\x9f\"']+", " ", text)
    return re.sub(r" {2,}", " ", text).strip()[:200]


def drain(names: list[str], reason: str) -> None:
    """DRAIN in Slurm: running jobs finish, no new ones start (scontrol(1)). A node
    already drained gets the new reason."""
    if names:
        run_slurm(["scontrol", "update", f"NodeName={','.join(names)}", "State=DRAIN",
                   f"Reason={drain_reason(reason)}"])


def resume(names: list[str]) -> None:
    if names:
        run_slurm(["scontrol", "update", f"NodeName={','.join(names)}", "State=RESUME"])


def reconfigure() -> None:
    run_slurm(["scontrol", "reconfigure"])


def ping(timeout: float = 15.0) -> str:
    """"" when ``scontrol ping`` says the primary slurmctld is UP, else what it said."""
    try:
        out = run_slurm(["scontrol", "ping"], timeout=timeout)
    except SlurmError as exc:
        return str(exc)
    return "" if re.search(r"\bis UP\b", out) else (out.strip()[:200] or "no answer")


def fields_of(line: str) -> dict[str, str]:
    """A ``scontrol show ... -o`` line's ``Key=value`` words, each key's first: text a
    node or user sets (``Extra=``, ``Comment=``, ``Reason=``) comes after the fields
    gpuctl reads and cannot stand in for them (``Extra=x Gres=gpu:8``)."""
    out: dict[str, str] = {}
    for key, value in re.findall(r"(\w+)=(\S*)", line):
        out.setdefault(key, value)
    return out


def node_details(names: list[str]) -> dict[str, dict[str, str]]:
    """``scontrol show node -o``'s single-word fields (State=IDLE+DRAIN, Gres=...) of
    each node Slurm knows among ``names``."""
    if not names:
        return {}
    try:
        out = run_slurm(["scontrol", "show", "node", "-o", ",".join(names)])
    except SlurmError as exc:
        # scontrol prints "Node NAME not found" (on stdout) for each unknown name and
        # exits 1 (src/scontrol/info_node.c, 22.05 to 24.11), so the error shows only
        # the last line; an unparsable list gives "Invalid node name". Ask for each
        # name alone.
        if len(names) == 1:
            if f"Node {names[0]} not found" in str(exc) or "Invalid node name" in str(exc):
                return {}
            raise
        found: dict[str, dict[str, str]] = {}
        for name in names:
            found.update(node_details([name]))
        return found
    out_nodes = {}
    for line in out.splitlines():
        fields = fields_of(line)
        if fields.get("NodeName"):
            out_nodes[fields["NodeName"]] = fields
    return out_nodes


def create_reservation(name: str, nodes: list[str], users: list[str], minutes: int) -> None:
    """A reservation of ``nodes`` that only ``users``' jobs (``--reservation=NAME``)
    may use, from now (scontrol(1) "create reservation"; ``Flags=MAINT`` lets it
    cover nodes that are in another reservation, and marks the time as maintenance
    in accounting)."""
    run_slurm(["scontrol", "create", "reservation", f"ReservationName={name}",
               f"Nodes={','.join(nodes)}", f"Users={','.join(users)}", "StartTime=now",
               f"Duration={max(1, minutes)}", "Flags=MAINT"])


def delete_reservation(name: str) -> None:
    run_slurm(["scontrol", "delete", f"ReservationName={name}"])
