"""``gpuctl handoff slurm --apply``: put the certified nodes into the cluster's live
Slurm configuration and wait until Slurm has them.

gpuctl owns one marked block in ``slurm.conf`` and one in ``gres.conf`` (in
``--slurm-conf-dir``); everything outside the blocks is the admin's and is kept byte for
byte. Each file is replaced atomically (temporary file, rename) after a copy of the old
one is kept as ``<name>.gpuctl-bak``. A node handed off before stays in the block while
gpuctl knows it (drained in Slurm when it is not serving), so Slurm keeps its history.

When the block's node list changes, gpuctl restarts slurmctld with the admin's command
(``--restart-command``, default ``systemctl restart slurmctld``), then runs ``scontrol
reconfigure`` for the slurmd: Slurm 22.05's ``scontrol reconfigure`` refuses a new node
count and slurmctld exits ("node count has changed before reconfiguration from 1 to 3.
You have to restart slurmctld", seen on Debian 12's 22.05.8). A restart is right on
every version (later releases reworked reconfigure, CHANGELOG/slurm-23.11.md, but gpuctl
does not rely on that). When only the nodes' attributes change, ``scontrol
reconfigure``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from provisioner.errors import InputError
from provisioner.fsutil import write_bytes_atomically
from provisioner.handle import Gpuctl
from provisioner.slurm.client import SlurmError, SlurmNode, reconfigure, slurm_nodes

BEGIN = "# BEGIN gpuctl managed block (gpuctl handoff slurm --apply rewrites it; edit " \
    "outside it)"
END = "# END gpuctl managed block"
DEFAULT_RESTART = "systemctl restart slurmctld"
SETTINGS = "slurm.json"


@dataclass
class SlurmSettings:
    """Where gpuctl's Slurm lives, recorded by the last ``--apply`` so that later
    commands (monitor from a timer, drain) reach the same controller."""

    conf_dir: str
    slurm_conf: str | None
    restart_command: str

    def activate(self) -> None:
        """Point Slurm's commands at this configuration (unless SLURM_CONF is set)."""
        if self.slurm_conf and not os.environ.get("SLURM_CONF"):
            os.environ["SLURM_CONF"] = self.slurm_conf


def load_settings(gc: Gpuctl) -> SlurmSettings | None:
    """The Slurm settings, or None when no hand-off was applied (Slurm sync is off)."""
    path = gc.paths.home / SETTINGS
    try:
        doc = json.loads(path.read_text())
        settings = SlurmSettings(doc["conf_dir"], doc.get("slurm_conf"),
                                 doc.get("restart_command") or DEFAULT_RESTART)
        if not (isinstance(settings.conf_dir, str) and isinstance(settings.restart_command, str)
                and isinstance(settings.slurm_conf, str | None)):
            raise TypeError("a setting is not text")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path} is unreadable ({exc}); re-run `gpuctl handoff slurm "
                         "--apply`") from None
    settings.activate()
    return settings


def save_settings(gc: Gpuctl, settings: SlurmSettings) -> None:
    write_bytes_atomically(gc.paths.home / SETTINGS,
                           json.dumps(asdict(settings), indent=1).encode())


def split_block(text: str) -> tuple[str, list[str], str]:
    """(before, block lines, after) of a file; an absent block is empty, at the end."""
    lines = text.splitlines()
    if BEGIN not in lines:
        return text, [], ""
    start = lines.index(BEGIN)
    try:
        end = lines.index(END, start)
    except ValueError:
        raise InputError("gpuctl's block in the Slurm config has no END line; restore it "
                         "(or the .gpuctl-bak copy)") from None
    before = "\n".join(lines[:start])
    after = "\n".join(lines[end + 1:])
    return (before + "\n" if before else ""), lines[start + 1:end], \
        (after + "\n" if after else "")


def with_block(text: str, block: list[str]) -> str:
    before, _, after = split_block(text)
    if before and not before.endswith("\n"):
        before += "\n"
    return before + "\n".join([BEGIN, *block, END]) + "\n" + after


def block_node_lines(block: list[str]) -> dict[str, str]:
    """NodeName=<name> lines of a block, by node name."""
    out = {}
    for line in block:
        match = re.match(r"NodeName=(\S+)", line)
        if match:
            out[match.group(1)] = line
    return out


def _write_with_backup(path: Path, text: str) -> bool:
    """Atomically replace ``path`` (keeping its mode and a .gpuctl-bak copy); False when
    it already holds ``text``."""
    old = path.read_text() if path.exists() else None
    if old == text:
        return False
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    if old is not None:
        shutil.copy2(path, path.with_name(path.name + ".gpuctl-bak"))
        tmp.chmod(path.stat().st_mode & 0o7777)
    else:
        tmp.chmod(0o644)
    os.replace(tmp, path)
    return True


def write_config(conf_dir: Path, conf_lines: list[str], gres_lines: list[str],
                 keep: set[str]) -> tuple[list[str], bool]:
    """Rewrite gpuctl's blocks: ``conf_lines``/``gres_lines`` for the nodes handed off
    now, plus the lines of earlier nodes in ``keep``. Returns (files changed, whether
    the node list changed).

    Raises:
        InputError: no slurm.conf in ``conf_dir``, or a file that cannot be written.
    """
    slurm_conf, gres_conf = conf_dir / "slurm.conf", conf_dir / "gres.conf"
    try:
        conf_text = slurm_conf.read_text()
        gres_text = gres_conf.read_text() if gres_conf.exists() else ""
    except FileNotFoundError:
        raise InputError(f"{slurm_conf} not found: --slurm-conf-dir must be the cluster's "
                         "Slurm configuration directory") from None
    except OSError as exc:
        raise InputError(f"cannot read the Slurm config in {conf_dir}: {exc}") from None
    before, old_block, after = split_block(conf_text)
    old_nodes = block_node_lines(old_block)
    new_nodes = block_node_lines(conf_lines)
    kept = {n: line for n, line in old_nodes.items() if n in keep and n not in new_nodes}
    outside = before + after
    body = [line for line in conf_lines if not line.startswith(("PartitionName=",
                                                                "GresTypes="))]
    if not re.search(r"^GresTypes=.*\bgpu\b", outside, re.M | re.I):
        body.insert(0, "GresTypes=gpu")
    body += list(kept.values())
    all_names = sorted(new_nodes) + sorted(kept)
    for line in conf_lines:
        if line.startswith("PartitionName="):
            body.append(re.sub(r"Nodes=\S+", f"Nodes={','.join(sorted(all_names))}", line))
    # Pool partitions (``gpuctl pool``), and partitions of earlier hand-offs not named
    # again, stay as they are.
    named = set(re.findall(r"^PartitionName=(\S+)", "\n".join(body), re.M))
    body += [line for line in old_block if line.startswith("PartitionName=")
             and line.split()[0].split("=", 1)[1] not in named]
    _, old_gres, _ = split_block(gres_text)
    gres_body = list(gres_lines) + [line for line in old_gres
                                    if (m := re.match(r"NodeName=(\S+)", line))
                                    and m.group(1) in kept]
    changed = []
    try:
        if _write_with_backup(slurm_conf, with_block(conf_text, body)):
            changed.append(str(slurm_conf))
        if _write_with_backup(gres_conf, with_block(gres_text, gres_body)):
            changed.append(str(gres_conf))
    except OSError as exc:
        raise InputError(f"cannot write the Slurm config in {conf_dir}: {exc}") from None
    return changed, set(old_nodes) != set(all_names)


def activate_config(node_list_changed: bool, restart_command: str) -> str:
    """Make slurmctld read the new files; returns what was done.

    Raises:
        SlurmError: the restart command or ``scontrol reconfigure`` failed.
    """
    if node_list_changed:
        try:
            res = subprocess.run(shlex.split(restart_command), capture_output=True,
                                 text=True, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SlurmError(f"restart command {restart_command!r} failed: {exc}") from None
        if res.returncode != 0:
            err = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
            raise SlurmError(f"restart command {restart_command!r} exited "
                             f"{res.returncode}: {err[0][:200]}")
        _wait_controller()
        # The nodes' slurmd learn the new node list too.
        reconfigure()
        return "restart"
    reconfigure()
    return "reconfigure"


def _wait_controller(timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            slurm_nodes()
            return
        except SlurmError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def wait_registered(expected: dict[str, str], timeout: float,
                    poll: float = 0.5) -> tuple[dict[str, SlurmNode], dict[str, str]]:
    """Wait until each node (name -> the gres it must show, e.g. ``gpu:h100:8``) is in
    Slurm, responding, usable (idle, mixed or allocated) with that gres. Returns the
    last view and, for each node that did not get there, why (its state and reason)."""
    deadline = time.monotonic() + timeout
    while True:
        view = slurm_nodes(list(expected))
        problems = {}
        for name, gres in expected.items():
            node = view.get(name)
            if node is None:
                problems[name] = "not in Slurm"
            elif node.not_responding or node.state not in ("idle", "mixed", "allocated"):
                problems[name] = f"{node.label()}" + (f": {node.reason}" if node.reason
                                                      else "")
            elif not _gres_has(node.gres, gres):
                problems[name] = f"Slurm shows gres {node.gres or 'none'}, certified {gres}"
        if not problems or time.monotonic() > deadline:
            return view, problems
        time.sleep(poll)


def _gres_has(shown: str, wanted: str) -> bool:
    """``gpu:h100:8`` within sinfo's ``gpu:h100:8(S:0-1),...``."""
    items = [re.sub(r"\(.*?\)", "", g) for g in shown.split(",")]
    return wanted in items


def compare_hardware(slurmd_c: str, *, cpus: int | None, memory_mib: int | None) -> list[str]:
    """Differences between ``slurmd -C`` (Slurm's view of the node's hardware) and the
    NodeName line gpuctl wrote from its snapshot."""
    seen = dict(re.findall(r"(\w{1,40})=(\S{1,40})", slurmd_c[:65536]))
    out = []
    for key in ("CPUs", "RealMemory"):
        # A value that is not a count (a hostile or broken node) is a difference too.
        if key in seen and not re.fullmatch(r"[0-9]{1,12}", seen[key]):
            out.append(f"slurmd -C reports {key}={seen[key][:20]!r}, not a number")
            seen.pop(key)
    if cpus and seen.get("CPUs") and int(seen["CPUs"]) != cpus:
        out.append(f"slurmd -C reports CPUs={seen['CPUs']}, gpuctl's snapshot {cpus}")
    if memory_mib and seen.get("RealMemory") and int(seen["RealMemory"]) < memory_mib:
        out.append(f"slurmd -C reports RealMemory={seen['RealMemory']} MiB, below the "
                   f"{memory_mib} MiB configured")
    if not seen and not out:
        out.append("slurmd -C printed nothing usable")
    return out


def set_pool_partitions(conf_dir: Path, lines: list[str], prefix: str) -> bool:
    """Replace the pool partitions (``PartitionName=<prefix>...``) in gpuctl's block of
    slurm.conf with ``lines``; False when nothing changed.

    Raises:
        InputError: no block yet (hand nodes off with --apply first), or unwritable.
    """
    path = conf_dir / "slurm.conf"
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    _, block, _ = split_block(text)
    if not block and lines:
        raise InputError(f"{path} has no gpuctl block: hand the nodes off first "
                         "(gpuctl handoff slurm --apply)")
    body = [ln for ln in block if not ln.startswith(f"PartitionName={prefix}")] + lines
    try:
        return _write_with_backup(path, with_block(text, body))
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc}") from None
