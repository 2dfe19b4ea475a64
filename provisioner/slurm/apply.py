"""``gpuctl handoff slurm --apply``: put the certified nodes into the cluster's live
Slurm configuration, safely.

gpuctl owns one marked block in ``slurm.conf`` and one in ``gres.conf`` (in
``--slurm-conf-dir``); everything outside the blocks is the admin's and is kept byte for
byte. A change is planned first (``plan_config``) against the admin's whole effective
configuration (``provisioner.slurm.conf``: Includes followed) and refused, nothing
written, when slurmctld would reject it: a node, host or partition defined twice, a
partition naming a node that is gone, a name Slurm does not take, or a syntax error
the installed ``scontrol`` finds. The admin's ``GresTypes`` values are merged, never
replaced (for a repeated key the last value wins). Files are replaced atomically
through a symbolic link's target (a shared slurm.conf stays shared), keeping owner
and mode, after a copy of the old one is kept as ``<name>.gpuctl-bak``; the old bytes
are kept for the rollback (``provisioner.slurm.activate``).

A node new to the block joins Slurm drained (``State=DRAIN Reason="gpuctl: ..."``,
slurm.conf(5) NodeName ``State``/``Reason``), so no job lands on it before every
gate of the hand-off has passed. A node handed off before keeps its line's state
words, and stays in the block while gpuctl knows it (drained in Slurm when it is not
serving), so Slurm keeps its history.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from provisioner.errors import InputError
from provisioner.fsutil import write_bytes_atomically
from provisioner.handle import Gpuctl
from provisioner.slurm.client import REASON_PREFIX
from provisioner.slurm.conf import (
    NAME,
    ConfLine,
    layout,
    new_problems,
    read_effective,
    setting_values,
)

BEGIN = "# BEGIN gpuctl managed block (gpuctl handoff slurm --apply rewrites it; edit " \
    "outside it)"
END = "# END gpuctl managed block"
DEFAULT_RESTART = "systemctl restart slurmctld"
DEFAULT_SLURMD_RESTART = "systemctl restart slurmd"
SETTINGS = "slurm.json"
JOIN_STATE = f'State=DRAIN Reason="{REASON_PREFIX} joining: not verified yet"'


@dataclass
class SlurmSettings:
    """Where gpuctl's Slurm lives, recorded by the last ``--apply`` so that later
    commands (monitor from a timer, drain) reach the same controller."""

    conf_dir: str
    slurm_conf: str | None
    restart_command: str
    slurmd_restart_command: str = DEFAULT_SLURMD_RESTART

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
                                 doc.get("restart_command") or DEFAULT_RESTART,
                                 doc.get("slurmd_restart_command") or DEFAULT_SLURMD_RESTART)
        if not (isinstance(settings.conf_dir, str) and isinstance(settings.restart_command, str)
                and isinstance(settings.slurmd_restart_command, str)
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
    """(before, block lines, after) of a file; an absent block is empty, at the end.
    Lines end at ``\\n`` only, as Slurm reads them (a form feed is not a line break)."""
    lines = text.split("\n")
    if BEGIN not in lines:
        return text, [], ""
    start = lines.index(BEGIN)
    try:
        end = lines.index(END, start)
    except ValueError:
        raise InputError("gpuctl's block in the Slurm config has no END line; restore it "
                         "(or the .gpuctl-bak copy)") from None
    before = "\n".join(lines[:start]) + ("\n" if start else "")
    return before, lines[start + 1:end], "\n".join(lines[end + 1:])


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


def _state_words(line: str) -> str:
    """The ``State=... [Reason="..."]`` words gpuctl put at the end of a NodeName line."""
    found = re.search(r'State=\S+(?: Reason="[^"]*")?$', line)
    return found.group(0) if found else "State=UNKNOWN"


@dataclass
class ConfigPlan:
    """A checked change to the Slurm config: each changed file's old bytes (None: it
    did not exist) and new text, and what it does to gpuctl's nodes."""

    conf_dir: Path
    files: dict[Path, tuple[bytes | None, str]] = field(default_factory=dict)
    nodes: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    log_file: str = ""  # SlurmctldLogFile, where slurmctld writes its fatal line

    # Nodes Slurm knew whose NodeName line (CPUs, memory, Gres) or gres.conf lines
    # (File=, Cores=) change: before 23.11 only a restart applies that (slurm.conf(5)
    # 22.05 NODE CONFIGURATION: "Changes in node configuration (e.g. adding nodes,
    # changing their processor count, etc.) require restarting both the slurmctld
    # daemon and the slurmd daemons"; gres.conf(5) Cores).
    redefined: list[str] = field(default_factory=list)

    @property
    def node_list_changed(self) -> bool:
        return bool(self.added or self.removed)

    def text(self, name: str) -> str | None:
        for path, (_, new) in self.files.items():
            if path.name == name:
                return new
        return None


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc}") from None


def _prune_partition(line: str, defined: set[str]) -> str:
    """A partition line of gpuctl's block, with only nodes that are still defined."""
    match = re.search(r"(?<!\S)Nodes=(\S*)", line)
    if not match:
        return line
    kept = [n for n in match.group(1).split(",") if n in defined]
    repl = f"Nodes={','.join(kept)}" if kept else ""
    return re.sub(r"\s+", " ", line[:match.start()] + repl + line[match.end():]).strip()


def _check_names(block: list[str]) -> None:
    for line in block:
        match = re.match(r"(NodeName|PartitionName)=(\S*)", line)
        if match and not NAME.fullmatch(match.group(2)):
            raise InputError(f"{match.group(1)}={match.group(2)[:40]!r} is not a name Slurm "
                             "takes (letters, digits, '_' and '-'); nothing was written")


def _without_state(line: str) -> str:
    return line.removesuffix(_state_words(line)).rstrip()


def _node_lines(block: list[str], name: str) -> list[str]:
    return [ln for ln in block if ln.startswith(f"NodeName={name} ")]


def _gres_body(old: list[str], new: list[str], kept: set[str]) -> list[str]:
    """gres.conf's block: the kept nodes' old lines and the new nodes' lines, each node
    where it was (an unchanged block is an unchanged file), new nodes last."""
    def node(line: str) -> str:
        found = re.match(r"NodeName=(\S+)", line)
        return found.group(1) if found else ""

    lines: dict[str, list[str]] = {}
    for line in old:
        if node(line) in kept:
            lines.setdefault(node(line), []).append(line)
    fresh: dict[str, list[str]] = {}
    for line in new:
        fresh.setdefault(node(line), []).append(line)
    lines.update(fresh)
    order = list(dict.fromkeys(node(ln) for ln in old))
    order += sorted(n for n in lines if n not in order)
    return [ln for n in order for ln in lines.get(n, [])]


def plan_config(conf_dir: Path, conf_lines: list[str], gres_lines: list[str],
                keep: set[str], partition_lines: list[str] | None = None,
                partition_prefix: str = "") -> ConfigPlan:
    """Plan gpuctl's blocks: ``conf_lines``/``gres_lines`` for the nodes handed off now
    (node lines are replaced, a PartitionName line covers every node of the block),
    plus the lines of earlier nodes in ``keep``. With ``partition_lines``, the block's
    partitions named ``partition_prefix...`` are replaced by them instead (pools).

    Raises:
        InputError: no slurm.conf, an unreadable file, or a change slurmctld would
            refuse (the conflicting line named); nothing is written.
    """
    slurm_conf, gres_conf = conf_dir / "slurm.conf", conf_dir / "gres.conf"
    old_conf = _read(slurm_conf)
    if old_conf is None:
        raise InputError(f"{slurm_conf} not found: --slurm-conf-dir must be the cluster's "
                         "Slurm configuration directory")
    old_gres = _read(gres_conf)
    conf_text = old_conf.decode("utf-8", "replace")
    gres_text = (old_gres or b"").decode("utf-8", "replace")
    _, old_block, _ = split_block(conf_text)
    old_nodes = block_node_lines(old_block)
    if partition_lines is not None:  # a pool change: the nodes stay as they are
        new_nodes: dict[str, str] = {}
        kept = old_nodes
    else:
        new_nodes = block_node_lines(conf_lines)
        kept = {n: ln for n, ln in old_nodes.items() if n in keep and n not in new_nodes}
    admin = read_effective(slurm_conf, {slurm_conf: with_block(conf_text, [])})
    admin_nodes = set(layout(admin).nodes)
    body: list[str] = []
    admin_gres = setting_values(admin, "GresTypes")
    if (new_nodes or kept) and "gpu" not in admin_gres:
        body.append("GresTypes=" + ",".join([*admin_gres, "gpu"]))
    lines = dict(kept)
    for name, line in new_nodes.items():
        words = _state_words(old_nodes[name]) if name in old_nodes else JOIN_STATE
        lines[name] = f"{_without_state(line)} {words}"
    # The block's order stays (an unchanged node list is an unchanged file: nothing to
    # activate); new nodes come last.
    body += [lines[n] for n in old_nodes if n in lines]
    body += [lines[n] for n in sorted(lines) if n not in old_nodes]
    names = sorted(new_nodes) + sorted(kept)
    defined = set(names) | admin_nodes
    if partition_lines is not None:
        parts = [ln for ln in old_block if ln.startswith("PartitionName=")
                 and not ln.startswith(f"PartitionName={partition_prefix}")]
        parts += partition_lines
    else:
        parts = [re.sub(r"Nodes=\S+", f"Nodes={','.join(sorted(names))}", ln)
                 for ln in conf_lines if ln.startswith("PartitionName=")]
        named = {ln.split()[0] for ln in parts}
        # Pool partitions and partitions of earlier hand-offs stay.
        parts += [ln for ln in old_block if ln.startswith("PartitionName=")
                  and ln.split()[0] not in named]
    body += [_prune_partition(ln, defined) for ln in parts]
    _check_names(body)
    new_conf = with_block(conf_text, body)
    _, old_gres_block, _ = split_block(gres_text)
    redefined: list[str] = []
    if partition_lines is not None:
        gres_body = old_gres_block
    else:
        gres_body = _gres_body(old_gres_block, gres_lines, set(kept))
    redefined = sorted(n for n in set(new_nodes) & set(old_nodes)
                       if _node_lines(old_gres_block, n) != _node_lines(gres_body, n)
                       or _without_state(old_nodes[n]) != _without_state(lines[n]))
    new_gres = with_block(gres_text, gres_body)
    before = read_effective(slurm_conf)
    after = read_effective(slurm_conf, {slurm_conf: new_conf})
    problems = new_problems(before, after)
    final_gres = setting_values(after, "GresTypes")
    if (new_nodes or kept) and not {"gpu", *admin_gres} <= set(final_gres):
        last = [ln for ln in after if ln.key == "grestypes"][-1]
        problems.append(f"GresTypes={','.join(final_gres)} comes after gpuctl's block "
                        f"and drops gpu: {last.where()} (add gpu to it)")
    if problems:
        raise InputError(f"refused, slurmctld would not start with it: {problems[0]}; "
                         "nothing was written")
    plan = ConfigPlan(conf_dir, nodes=names, added=sorted(set(names) - set(old_nodes)),
                      removed=sorted(set(old_nodes) - set(names)),
                      log_file=_log_file(after), redefined=redefined)
    if new_conf.encode() != old_conf:
        plan.files[slurm_conf] = (old_conf, new_conf)
    if new_gres.encode() != (old_gres or b"") and (gres_body or old_gres is not None):
        plan.files[gres_conf] = (old_gres, new_gres)
    return plan


def _log_file(lines: list[ConfLine]) -> str:
    found = [ln.value for ln in lines if ln.key == "slurmctldlogfile"]
    return found[-1] if found else ""


def _replace(path: Path, data: bytes | None, like: os.stat_result | None) -> None:
    """``data`` into the file ``path`` names (through a symbolic link to its target),
    atomically, with the old file's owner and mode (``like``); None removes it."""
    real = Path(os.path.realpath(path))
    if data is None:
        real.unlink(missing_ok=True)
        return
    fd, name = tempfile.mkstemp(prefix=f".{real.name}.", suffix=".tmp", dir=real.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if like is not None:
                os.fchmod(fh.fileno(), stat.S_IMODE(like.st_mode))
                if (like.st_uid, like.st_gid) != (os.geteuid(), os.getegid()):
                    os.fchown(fh.fileno(), like.st_uid, like.st_gid)
            else:
                os.fchmod(fh.fileno(), 0o644)
            os.fsync(fh.fileno())
        os.replace(name, real)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def write_plan(plan: ConfigPlan) -> list[str]:
    """Write the plan's files (keeping ``<name>.gpuctl-bak`` copies); returns them.

    Raises:
        InputError: a file cannot be written (the ones written before are restored).
    """
    done: list[Path] = []
    try:
        for path, (old, new) in plan.files.items():
            like = os.stat(path) if old is not None else None
            if old is not None:
                real = Path(os.path.realpath(path))
                _replace(real.with_name(real.name + ".gpuctl-bak"), old, like)
            if like is None and path.name == "gres.conf":
                like = os.stat(plan.conf_dir / "slurm.conf")  # owner of the directory's
            _replace(path, new.encode(), like)
            done.append(path)
    except OSError as exc:
        restore_plan(plan, done)
        raise InputError(f"cannot write the Slurm config in {plan.conf_dir}: {exc}; "
                         "nothing was changed") from None
    return [str(p) for p in done]


def restore_plan(plan: ConfigPlan, paths: list[Path] | None = None) -> None:
    """Put the old bytes of the plan's files (or of ``paths``) back."""
    for path in paths if paths is not None else list(plan.files):
        old, _ = plan.files[path]
        like = os.stat(path) if path.exists() else None
        _replace(path, old, like)


def write_config(conf_dir: Path, conf_lines: list[str], gres_lines: list[str],
                 keep: set[str]) -> tuple[list[str], bool]:
    """Plan and write gpuctl's blocks (see ``plan_config``) without activating them;
    returns (files changed, whether the node list changed)."""
    plan = plan_config(conf_dir, conf_lines, gres_lines, keep)
    return write_plan(plan), plan.node_list_changed


def set_pool_partitions(conf_dir: Path, lines: list[str], prefix: str) -> bool:
    """Replace the pool partitions (``PartitionName=<prefix>...``) in gpuctl's block of
    slurm.conf with ``lines`` (checked like any change, see ``plan_config``) and write
    it without activating it; False when nothing changed.

    Raises:
        InputError: no block yet (hand nodes off with --apply first), a change slurmctld
            would refuse, or unwritable.
    """
    plan = pool_plan(conf_dir, lines, prefix)
    return bool(write_plan(plan)) if plan.files else False


def pool_plan(conf_dir: Path, lines: list[str], prefix: str) -> ConfigPlan:
    """The checked change that makes the block's pool partitions ``lines``."""
    path = conf_dir / "slurm.conf"
    text = (_read(path) or b"").decode("utf-8", "replace")
    _, block, _ = split_block(text)
    if not block and lines:
        raise InputError(f"{path} has no gpuctl block: hand the nodes off first "
                         "(gpuctl handoff slurm --apply)")
    return plan_config(conf_dir, [], [], set(), partition_lines=lines,
                       partition_prefix=prefix)


def verified_plan(conf_dir: Path, names: list[str]) -> ConfigPlan:
    """The checked change that lets ``names`` (which passed every gate) keep their
    state across a slurmctld restart: their lines' ``State=DRAIN Reason=...`` becomes
    ``State=UNKNOWN`` (slurm.conf(5): the state is then recovered, not set). A line
    keeps DRAIN until then because 22.05's slurmctld applies a line's DRAIN to the node
    again at every restart (seen in the lab), which is right only for a node that has
    not passed."""
    path = conf_dir / "slurm.conf"
    raw = _read(path) or b""
    if raw.decode("utf-8", "replace").encode() != raw:
        # Written back, bytes that are not UTF-8 would change (and a rollback could not
        # restore them): the admin's file is left as it is.
        raise InputError(f"{path} is not UTF-8 text; gpuctl leaves it as it is")
    text = raw.decode()
    _, block, _ = split_block(text)
    wanted = set(names)
    lines = []
    for line in block:
        match = re.match(r"NodeName=(\S+)", line)
        if match and match.group(1) in wanted:
            line = f"{_without_state(line)} State=UNKNOWN"
        lines.append(line)
    plan = ConfigPlan(conf_dir, nodes=sorted(block_node_lines(block)))
    new = with_block(text, lines)
    if new != text:
        plan.files[path] = (raw, new)
    plan.log_file = _log_file(read_effective(path, {path: new}))
    return plan
