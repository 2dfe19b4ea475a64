"""``gpuctl doctor``: is this control host ready to run gpuctl? One check per
prerequisite, each saying what it found and, when it fails, what to do.

Read-only: it creates, migrates and writes no data (the database is opened read-only,
SQLite in ``mode=ro``, which may leave a WAL database's -wal/-shm index files beside it
as any reader does), and it connects to nothing but the configured database and, when a
Slurm hand-off was applied, the Slurm controller through ``scontrol --version``.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from provisioner.db.engine import schema_revision
from provisioner.errors import GpuctlError
from provisioner.handle import Gpuctl
from provisioner.shipped import shipped_dir, shipped_origin

MIN_PYTHON = (3, 11)
MIN_ANSIBLE_CORE = (2, 16)
# Slurm releases gpuctl's adapter is built and tested for (Debian 12's 22.05 and
# Debian 13's 24.11, and the releases between).
SLURM_TESTED = ((22, 5), (24, 11))
SLURM_TOOLS = ("scontrol", "sinfo", "sacctmgr", "sbatch")
NVIDIA_REPO = "https://developer.download.nvidia.com/compute/cuda/repos"


@dataclass
class Check:
    """One prerequisite: what was found (``detail``) and, if it fails, the fix."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass
class DoctorReport:
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks]}


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
        if digits != piece:
            break
    return tuple(parts)


def check_python(version: tuple[int, ...] | None = None) -> Check:
    version = version or tuple(sys.version_info[:3])
    shown = ".".join(map(str, version))
    if version[:2] >= MIN_PYTHON:
        return Check("python", True, f"Python {shown} ({sys.executable})")
    return Check("python", False, f"Python {shown} is older than gpuctl needs",
                 f"install gpuctl with Python {'.'.join(map(str, MIN_PYTHON))} or newer "
                 "(pipx install --python python3.11 gpuctl)")


def _run(argv: list[str], timeout: float = 30) -> tuple[int, str]:
    """(exit status, first output line) of a short local command; 127 if it cannot
    start, 124 if it outlives ``timeout``."""
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                             check=False)
    except OSError as exc:
        return 127, str(exc)
    except subprocess.TimeoutExpired:
        return 124, f"no answer in {timeout:g} s"
    lines = (res.stdout or res.stderr).strip().splitlines()
    return res.returncode, lines[0][:200] if lines else ""


def ansible_playbook() -> str | None:
    """The ansible-playbook gpuctl runs: the one installed beside it (a pipx or venv
    install need not be on PATH; ``provision.runner`` puts its directory first)."""
    beside = Path(sys.executable).parent / "ansible-playbook"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("ansible-playbook")


def check_ansible() -> Check:
    fix = "pip install 'ansible-core>=2.16' into gpuctl's environment (pipx reinstall gpuctl)"
    try:
        version = metadata.version("ansible-core")
    except metadata.PackageNotFoundError:
        return Check("ansible-core", False, "ansible-core is not installed beside gpuctl", fix)
    if _version_tuple(version)[:2] < MIN_ANSIBLE_CORE:
        return Check("ansible-core", False, f"ansible-core {version} is older than "
                     f"{'.'.join(map(str, MIN_ANSIBLE_CORE))}", fix)
    program = ansible_playbook()
    if program is None:
        return Check("ansible-core", False, f"ansible-core {version} is installed but "
                     "ansible-playbook is not found", fix)
    rc, line = _run([program, "--version"])
    if rc != 0:
        return Check("ansible-core", False, f"{program} --version failed: {line}", fix)
    return Check("ansible-core", True, f"ansible-core {version} ({program})")


def check_tool(name: str, why: str, package: str) -> Check:
    path = shutil.which(name)
    if path is None:
        return Check(name, False, f"{name} not found on PATH ({why})",
                     f"install {package} (apt-get install {package}, "
                     f"dnf install {package.replace('openssh-client', 'openssh-clients')})")
    return Check(name, True, path)


def check_shipped() -> Check:
    try:
        root = shipped_dir()
    except GpuctlError as exc:
        return Check("shipped files", False, str(exc), "pipx reinstall gpuctl")
    return Check("shipped files", True, f"playbooks, catalogue and templates in {root} "
                 f"({shipped_origin()})")


def check_data_dir(gc: Gpuctl) -> Check:
    home = gc.paths.home
    name = "data dir"
    try:
        info = home.stat()  # a data dir linked to a bigger disk is checked where it is
    except FileNotFoundError:
        return Check(name, False, f"{home} does not exist", "run `gpuctl init`")
    except OSError as exc:
        return Check(name, False, f"{home}: {exc.strerror}", f"check {home}'s permissions")
    if not stat.S_ISDIR(info.st_mode):
        return Check(name, False, f"{home} is not a directory", f"move {home} aside, then "
                     "`gpuctl init`")
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid != os.geteuid():
        return Check(name, False, f"{home} belongs to uid {info.st_uid}, not to this user "
                     f"(uid {os.geteuid()})", f"chown -R {os.geteuid()} {home}, or run "
                     "gpuctl as its owner")
    if mode & 0o077:
        # It holds the SSH known_hosts, the SQLite database and the run artifacts.
        can = "change" if mode & 0o022 else "read"
        return Check(name, False, f"{home} has mode {mode:04o}: other users can {can} its "
                     "known_hosts, database and run records", f"chmod 700 {home}")
    if not os.access(home, os.W_OK | os.X_OK):
        return Check(name, False, f"{home} is not writable", f"chmod u+rwx {home}")
    return Check(name, True, f"{home} (mode {mode:04o})")


def check_database(gc: Gpuctl) -> Check:
    shown = gc.db_display
    try:
        revision, head = schema_revision(gc.db_url)
    except GpuctlError as exc:
        # The message already says what to do when it names a command or a package.
        said = any(hint in str(exc) for hint in ("gpuctl init", "pip install"))
        return Check("database", False, str(exc), "" if said else
                     "check the server and the URL in --db/GPUCTL_DB")
    if revision is None:
        return Check("database", False, f"{shown} has no gpuctl schema", "run `gpuctl init`")
    if revision < head:
        return Check("database", False, f"{shown} is at schema {revision}; this gpuctl "
                     f"needs {head}", "back it up (`gpuctl db backup`), then `gpuctl init` "
                     "migrates it")
    if revision > head:
        return Check("database", False, f"{shown} is at schema {revision}, newer than this "
                     f"gpuctl knows ({head}): a newer gpuctl wrote it", "upgrade gpuctl "
                     "(pipx upgrade gpuctl)")
    return Check("database", True, f"{shown}, schema {revision} (current)")


def _yaml_vars(path: Path) -> dict[str, Any]:
    """A group_vars file's variables ({} for one holding only comments, as Ansible reads
    it).

    Raises:
        GpuctlError: not UTF-8 YAML, or not a mapping.
    """
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as exc:  # ValueError: not UTF-8
        raise GpuctlError(f"{path}: {str(exc).splitlines()[0][:160]}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise GpuctlError(f"{path} is not a mapping of variables")
    return doc


def _all_group_files(group_vars: Path) -> list[Path]:
    """The files Ansible reads for group ``all`` in a group_vars directory: ``all``,
    ``all.yml``, ``all.yaml``, ``all.json``, then ``all/`` (its files in name order)."""
    files = [group_vars / n for n in ("all", "all.yml", "all.yaml", "all.json")]
    files = [f for f in files if f.is_file()]
    if (group_vars / "all").is_dir():
        files += sorted(f for f in (group_vars / "all").rglob("*") if f.is_file()
                        and f.suffix in ("", ".yml", ".yaml", ".json"))
    return files


def nvidia_repo_setting(gc: Gpuctl) -> tuple[str, str]:
    """(the URL nodes install NVIDIA's packages from, where that was set): the site's
    ``<data dir>/group_vars/all.yml`` over the shipped group_vars over the role's
    default. A node's own host variables can still override it.

    Raises:
        GpuctlError: a group_vars file is not YAML or not a mapping.
    """
    shipped = shipped_dir()
    sources = [(shipped / "playbooks/roles/nvidia_repo/defaults/main.yml", "the role default")]
    sources += [(f, "gpuctl's group_vars") for f in
                _all_group_files(shipped / "inventory/group_vars")]
    sources += [(f, "the site's group_vars") for f in
                _all_group_files(gc.paths.home / "group_vars")]
    base, mirror, where_base, where_mirror = NVIDIA_REPO, "", "built in", ""
    for path, what in sources:
        values = _yaml_vars(path)
        if values.get("nvidia_repo_base"):
            base, where_base = str(values["nvidia_repo_base"]), f"{what} ({path})"
        if "nvidia_repo_mirror_url" in values:
            mirror = str(values["nvidia_repo_mirror_url"] or "")
            where_mirror = f"{what} ({path})"
    return (mirror, where_mirror) if mirror else (base, where_base)


def check_nvidia_repo(gc: Gpuctl) -> Check:
    name = "NVIDIA repository"
    try:
        url, where = nvidia_repo_setting(gc)
    except GpuctlError as exc:
        return Check(name, False, str(exc), "fix the file's YAML")
    fix = ("set nvidia_repo_mirror_url in the data dir's group_vars/all.yml to an "
           "http(s):// or file: URL laid out like NVIDIA's repository, or leave it empty")
    if "{{" in url and "\n" not in url:
        return Check(name, True, f"{url} (a Jinja2 expression Ansible evaluates per node; "
                     f"not checked here; from {where})")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        # It goes into an apt sources line or a yum .repo file on every node.
        return Check(name, False, f"{url[:120]!r} from {where} holds whitespace or "
                     "control characters", fix)
    try:
        parsed = urlparse(url)
        parsed.port  # noqa: B018  (parses the port: an invalid one raises here)
    except ValueError as exc:
        return Check(name, False, f"{url!r} from {where} is not a valid URL ({exc})", fix)
    if parsed.scheme in ("http", "https") and parsed.netloc:
        official = url.startswith(NVIDIA_REPO)
        return Check(name, True, f"{url} ({'NVIDIA' if official else 'mirror'}, from "
                     f"{where}{'; nodes need to reach it' if official else ''})")
    if parsed.scheme == "file" and parsed.path.startswith("/"):
        return Check(name, True, f"{url} (a mirror on each node's disk, from {where})")
    return Check(name, False, f"{url!r} from {where} is not an http(s):// or file: URL", fix)


def check_slurm(gc: Gpuctl) -> list[Check]:
    """Slurm's client tools and release, when a Slurm hand-off was applied (else none)."""
    from provisioner.slurm.apply import load_settings  # noqa: PLC0415
    from provisioner.slurm.client import SlurmError, slurm_version  # noqa: PLC0415

    try:
        settings = load_settings(gc)
    except GpuctlError as exc:  # its message says to re-run the hand-off
        return [Check("slurm", False, str(exc))]
    if settings is None:
        return []
    missing = [tool for tool in SLURM_TOOLS if shutil.which(tool) is None]
    if missing:
        return [Check("slurm", False, f"{', '.join(missing)} not found on PATH (a Slurm "
                      "hand-off is applied: gpuctl drains and resumes nodes with them)",
                      "install slurm-client (Debian) or slurm (RHEL) of the cluster's "
                      "release")]
    try:
        version = slurm_version()
    except SlurmError as exc:
        return [Check("slurm", False, str(exc), f"check SLURM_CONF and {settings.conf_dir}"
                      "; `scontrol ping` must answer")]
    shown = f"{version[0]}.{version[1]:02d}.{version[2]}"  # as Slurm writes it: 22.05.8
    low, high = SLURM_TESTED
    if version[:2] < low:
        return [Check("slurm", False, f"Slurm {shown} is older than gpuctl supports "
                      f"({low[0]}.{low[1]:02d})", "upgrade Slurm")]
    note = "" if version[:2] <= high else (f"; newer than the {high[0]}.{high[1]:02d} gpuctl "
                                           "was tested with")
    return [Check("slurm", True, f"Slurm {shown} ({settings.conf_dir}){note}")]


def run_doctor(gc: Gpuctl) -> DoctorReport:
    """Every check, in order; each check settles itself (none raises)."""
    steps: list[Callable[[], Check | list[Check]]] = [
        check_python, check_ansible,
        lambda: check_tool("ssh", "Ansible reaches the nodes with it", "openssh-client"),
        lambda: check_tool("ssh-keygen", "makes the key pair the nodes trust",
                           "openssh-client"),
        check_shipped, lambda: check_data_dir(gc), lambda: check_database(gc),
        lambda: check_nvidia_repo(gc), lambda: check_slurm(gc)]
    checks: list[Check] = []
    for step in steps:
        result = step()
        checks += result if isinstance(result, list) else [result]
    return DoctorReport(checks)
