"""The admin's whole Slurm configuration as slurmctld reads it, and the checks gpuctl
runs on a changed copy before anything is written.

Parsing follows Slurm's own reader (src/common/parse_config.c, tags slurm-22-05-8-1
and slurm-24-11-5-1): lines are read with ``fgets`` (split on ``\\n`` only); an
unescaped ``#`` starts a comment; a trailing ``\\`` continues the line; keys are
case-insensitive; ``Include FILE`` (case-insensitive, FILE up to the next blank, ``%c``
replaced by the ClusterName in lower case, a relative FILE taken from slurm.conf's
directory, no globbing) reads FILE in place. A record line (``NodeName=``,
``PartitionName=``, ``NodeSet=``) is ``key=value`` words; a value may be quoted.

The checks are the ones slurmctld makes fatal at start-up (read_config.c,
slurmctld/read_config.c): a node or partition defined twice ("Duplicated NodeName",
"duplicate entry for partition"), two nodes on one NodeHostName ("Duplicated
NodeHostName"), a partition naming a node that is not defined ("Invalid node names in
partition"). A client command (``scontrol``) parses the file's syntax but none of these
(tried on Debian 12's 22.05.8: a duplicate partition, node or host and an undefined
node all pass ``scontrol show hostnames``), so gpuctl checks them itself, and lets
the installed ``scontrol`` check the syntax of the candidate (``syntax_check``).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from provisioner.errors import InputError

# Slurm names gpuctl writes (nodes, partitions, QOS): what slurmctld accepts everywhere.
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_INCLUDE_DEPTH = 16
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_HOSTS = 100_000
RECORDS = ("nodename", "partitionname", "nodeset", "frontendname", "downnodes")


@dataclass
class ConfLine:
    """One logical line: where it is, its text, and its ``key=value`` words (keys in
    lower case, in order)."""

    file: str
    lineno: int
    text: str
    words: list[tuple[str, str]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.words[0][0] if self.words else ""

    @property
    def value(self) -> str:
        return self.words[0][1] if self.words else ""

    def get(self, key: str) -> str | None:
        for k, v in self.words:
            if k == key:
                return v
        return None

    def where(self) -> str:
        return f"{self.file}:{self.lineno}: {self.text.strip()[:160]}"


def _strip_comment(line: str) -> str:
    """parse_config.c _strip_comments: ``#`` after an even number of backslashes."""
    backslashes = 0
    for i, ch in enumerate(line):
        if ch == "#" and backslashes % 2 == 0:
            return line[:i]
        backslashes = backslashes + 1 if ch == "\\" else 0
    return line


def _words(text: str) -> list[tuple[str, str]]:
    """``key=value`` words; a value may be in double quotes (``Reason="a b"``)."""
    out = []
    for m in re.finditer(r'(\S+?)=("[^"]*"|\S*)|(\S+)', text):
        if m.group(3) is not None:
            out.append((m.group(3).lower(), ""))
        else:
            out.append((m.group(1).lower(), m.group(2).strip('"')))
    return out


def parse_text(text: str, file: str) -> list[tuple[int, str]]:
    """(line number, logical line) of a file's text, comments and continuations done."""
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.split("\n"), 1):
        line = _strip_comment(raw)
        if not pending:
            start = number
        stripped = line.rstrip("\r")
        if stripped.endswith("\\") and not stripped.endswith("\\\\"):
            pending += stripped[:-1]
            continue
        line, pending = pending + line, ""
        if line.strip():
            out.append((start, line))
    if pending.strip():
        out.append((start, pending))
    return out


def read_effective(slurm_conf: Path, override: dict[Path, str] | None = None
                   ) -> list[ConfLine]:
    """Every logical line slurmctld reads, in order, following ``Include``. Files in
    ``override`` (by resolved path) are read from there instead of the disk: the
    candidate gpuctl is about to write.

    Raises:
        InputError: a file is missing, unreadable, too large or includes itself.
    """
    override = {p.resolve(): t for p, t in (override or {}).items()}
    lines: list[ConfLine] = []
    base = slurm_conf.parent
    cluster = ""

    def read(path: Path, depth: int, stack: tuple[Path, ...]) -> None:
        nonlocal cluster
        real = path.resolve()
        if real in stack or depth > MAX_INCLUDE_DEPTH:
            raise InputError(f"{path}: Include loop or nesting deeper than "
                             f"{MAX_INCLUDE_DEPTH}")
        if real in override:
            text = override[real]
        else:
            try:
                if real.stat().st_size > MAX_FILE_BYTES:
                    raise InputError(f"{path} is over {MAX_FILE_BYTES} bytes")
                text = real.read_text(errors="replace")
            except FileNotFoundError:
                raise InputError(f"{path} not found (named by the Slurm config)") from None
            except OSError as exc:
                raise InputError(f"cannot read {path}: {exc}") from None
        for number, logical in parse_text(text, str(path)):
            inc = re.match(r"(?i)include\s+(\S+)", logical.strip())
            if inc:
                name = inc.group(1).replace("%c", cluster.lower())
                if "*" in name:
                    continue  # Slurm skips a glob with an error (parse_config.c)
                target = Path(name) if name.startswith("/") else base / name
                read(target, depth + 1, (*stack, real))
                continue
            words = _words(logical)
            entry = ConfLine(str(path), number, logical, words)
            if entry.key == "clustername":
                cluster = entry.value
            lines.append(entry)

    read(slurm_conf, 0, ())
    return lines


def expand_hostlist(expr: str) -> list[str]:
    """Slurm's hostlist syntax: ``gpu[01-03,07],login1`` -> names (zero padding kept).

    Raises:
        InputError: malformed, or more than MAX_HOSTS names.
    """
    out: list[str] = []
    for part in re.findall(r"[^,\[]*(?:\[[^\]]*\][^,\[]*)*", expr):
        if not part:
            continue
        names = [""]
        for literal, ranges in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", part):
            pieces = [literal]
            if ranges:
                pieces = []
                for item in ranges.split(","):
                    lo, _, hi = item.partition("-")
                    if not lo.isdigit() or (hi and not hi.isdigit()):
                        raise InputError(f"malformed host list {expr[:80]!r}")
                    end = int(hi) if hi else int(lo)
                    if end - int(lo) > MAX_HOSTS:
                        raise InputError(f"host list {expr[:80]!r} is too large")
                    pieces += [literal + str(i).zfill(len(lo)) for i in range(int(lo),
                                                                                end + 1)]
            names = [n + p for n in names for p in pieces]
            if len(names) > MAX_HOSTS:
                raise InputError(f"host list {expr[:80]!r} is too large")
        out += [n for n in names if n]
        if len(out) > MAX_HOSTS:
            raise InputError(f"host list {expr[:80]!r} is too large")
    return out


@dataclass
class Layout:
    """What the effective configuration defines, for the checks."""

    nodes: dict[str, ConfLine] = field(default_factory=dict)
    hosts: dict[str, ConfLine] = field(default_factory=dict)
    partitions: dict[str, ConfLine] = field(default_factory=dict)
    nodesets: set[str] = field(default_factory=set)
    settings: dict[str, ConfLine] = field(default_factory=dict)  # last one wins
    problems: list[str] = field(default_factory=list)


def layout(lines: list[ConfLine]) -> Layout:
    """Index the records and list what slurmctld would refuse (see the module doc)."""
    out = Layout()
    for line in lines:
        if line.key == "nodename" and line.value.lower() != "default":
            try:
                names = expand_hostlist(line.value)
                hosts = expand_hostlist(line.get("nodehostname") or line.value)
            except InputError as exc:
                out.problems.append(f"{exc}: {line.where()}")
                continue
            for i, name in enumerate(names):
                if name in out.nodes:
                    out.problems.append(f"node {name} is defined twice: "
                                        f"{out.nodes[name].where()} and {line.where()}")
                out.nodes[name] = line
                host = hosts[i] if i < len(hosts) else name
                if host in out.hosts and out.hosts[host] is not line:
                    out.problems.append(f"two nodes on host {host}: "
                                        f"{out.hosts[host].where()} and {line.where()}")
                out.hosts[host] = line
        elif line.key == "nodeset":
            out.nodesets.add(line.value)
        elif line.key == "partitionname" and line.value.lower() != "default":
            if line.value in out.partitions:
                out.problems.append(f"partition {line.value} is defined twice: "
                                    f"{out.partitions[line.value].where()} and "
                                    f"{line.where()}")
            out.partitions[line.value] = line
        elif line.key not in RECORDS:
            out.settings[line.key] = line
    for line in out.partitions.values():
        try:
            members = expand_hostlist(line.get("nodes") or "")
        except InputError as exc:
            out.problems.append(f"{exc}: {line.where()}")
            continue
        undefined = [m for m in members if m.upper() != "ALL" and m not in out.nodes
                     and m not in out.nodesets]
        if undefined:
            out.problems.append(f"partition {line.value} names undefined node "
                                f"{undefined[0]}: {line.where()}")
    return out


def new_problems(before: list[ConfLine], after: list[ConfLine]) -> list[str]:
    """What the change adds to what slurmctld would refuse (an admin's configuration
    that slurmctld already runs with is not gpuctl's to judge)."""
    def key(problem: str) -> str:  # line numbers move when gpuctl's block grows
        return re.sub(r":\d+:", ":", problem)

    old = {key(p) for p in layout(before).problems}
    return [p for p in layout(after).problems if key(p) not in old]


def setting_values(lines: list[ConfLine], key: str) -> list[str]:
    """The comma-separated values of the last ``key=`` line (the one Slurm uses)."""
    found = [line for line in lines if line.key == key.lower()]
    return [v for v in found[-1].value.split(",") if v] if found else []


def syntax_check(slurm_conf: Path, candidate: str, timeout: float = 20) -> str:
    """Let the installed ``scontrol`` parse ``candidate`` as slurm.conf (its other
    files, Includes among them, seen as they are): "" when it parses, else Slurm's
    error line. Only the syntax: see the module doc."""
    with tempfile.TemporaryDirectory(prefix="gpuctl-slurm-check-") as tmp:
        for entry in slurm_conf.parent.iterdir():
            if entry.name != slurm_conf.name:
                os.symlink(entry, Path(tmp) / entry.name)
        conf = Path(tmp) / slurm_conf.name
        conf.write_text(candidate)
        try:
            res = subprocess.run(["scontrol", "show", "hostnames", "gpuctl-check"],
                                 capture_output=True, text=True, timeout=timeout,
                                 env={**os.environ, "SLURM_CONF": str(conf)}, check=False)
        except FileNotFoundError:
            return ""  # no scontrol here: run_slurm names it at the next step
        except subprocess.TimeoutExpired:
            return f"scontrol did not parse the new slurm.conf within {timeout:g} s"
    if res.returncode == 0:
        return ""
    errors = [ln for ln in res.stderr.splitlines() if "error" in ln] or \
        res.stderr.strip().splitlines()[-1:] or [f"exit {res.returncode}"]
    return errors[0].replace(str(conf), str(slurm_conf))[:300]
