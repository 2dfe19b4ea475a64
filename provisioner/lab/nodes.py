"""``gpuctl lab up/down/status/fault``: start, inspect and stop simulated GPU nodes.

Each node is a directory under the lab dir (overlay upper/work, simulated /sys, its
spec) plus one process tree: ``unshare`` -> node_init (PID 1 of the node) -> sshd.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from provisioner.catalogue import catalogue, infer_sku
from provisioner.errors import LabError, NotFoundError
from provisioner.lab.faults import REPO_VARIANTS, apply_fault
from provisioner.lab.keys import write_ed25519
from provisioner.lab.netrepo import DEBIAN_ARCHIVE_IN_NODE, cached_debian_archive
from provisioner.lab.os_images import LAB_OSES, install_base_rpms
from provisioner.lab.packages import REPO_IN_NODE
from provisioner.lab.profiles import get_profile, gpus_for
from provisioner.lab.render import node_files, render_sysfs
from provisioner.lab.repos import cached_repo
from provisioner.paths import Paths

NODE_INIT = Path(__file__).with_name("node_init.py")
SSHD_CONFIG = """# gpuctl lab node sshd
ListenAddress {address}:{port}
HostKey /etc/gpuctl-lab/ssh_host_ed25519_key
PidFile /run/gpuctl-lab-sshd.pid
UsePAM no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile /etc/gpuctl-lab/authorized_keys
StrictModes no
MaxStartups 200:30:400
MaxSessions 64
UseDNS no
Subsystem sftp internal-sftp
"""
REPO_BUILD = {"good": {}, "fail-build": {"fail_driver_build": True},
              "fm-skew": {"fabricmanager_skew": True}}


@dataclass
class LabNode:
    name: str
    address: str
    port: int
    profile: str
    sku: str | None
    os: str
    gpus: int
    faults: list[str]
    running: bool
    sshd: bool
    pid: int | None
    bmc: str | None = None  # its BMC's Redfish URL (None: the lab has no BMCs)
    bmc_up: bool = False  # the BMC emulator runs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The system tools the lab uses, with the Debian package that has each.
LAB_TOOLS = {"unshare": "util-linux", "nsenter": "util-linux", "mount": "util-linux",
             "/usr/sbin/sshd": "openssh-server", "dpkg-deb": "dpkg"}
RHEL_TOOLS = {"rpmbuild": "rpm", "createrepo_c": "createrepo-c"}
SLURM_TOOLS = {"slurmctld": "slurmctld", "slurmd": "slurmd", "munged": "munge",
               "scontrol": "slurm-client", "sinfo": "slurm-client", "sbatch": "slurm-client",
               "sacctmgr": "slurm-client", "slurmdbd": "slurmdbd", "mariadbd": "mariadb-server",
               "mariadb-install-db": "mariadb-server"}


def missing_lab_tools(os_name: str = "ubuntu22.04", with_slurm: bool = False
                      ) -> dict[str, str]:
    """The tools a lab of ``os_name`` nodes (and its Slurm) needs that this machine
    lacks, each with the Debian package that has it."""
    needs = dict(LAB_TOOLS)
    if os_name.startswith("rocky"):
        needs |= RHEL_TOOLS
    if with_slurm:
        needs |= SLURM_TOOLS
    return {tool: package for tool, package in needs.items()
            if not (os.path.exists(tool) if tool.startswith("/") else shutil.which(tool))}


def missing_line(missing: dict[str, str]) -> str:
    return (f"{', '.join(t.rsplit('/', 1)[-1] for t in missing)} not found (install "
            f"{' '.join(sorted(set(missing.values())))})")


def require_lab_support(os_name: str = "ubuntu22.04", *, tools: bool = True) -> None:
    """Raises LabError unless this is Linux, as root, with every tool the lab uses
    (``tools=False``: the platform and root only)."""
    if platform.system() != "Linux":
        raise LabError("the lab needs Linux namespaces; on this system use the Vagrantfile "
                       "(vagrant up) for a VM lab")
    if os.geteuid() != 0:
        raise LabError("the lab needs root (mount namespaces, overlayfs); run as root, or use "
                       "the Vagrantfile for a VM lab")
    missing = missing_lab_tools(os_name) if tools else {}
    if missing:
        # Every missing tool in one line: an admin installs them in one go.
        raise LabError(f"the lab needs tools this machine lacks: {missing_line(missing)}")


class Lab:
    """The lab under ``paths.lab_dir``."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.dir = paths.lab_dir
        self.client_key = self.dir / "id_ed25519"

    @staticmethod
    def wildcard_listener(port: int) -> bool:
        """True if something listens on 0.0.0.0:port (the nodes' addresses are taken)."""
        return _wildcard_listener(port)

    # -- node specs -------------------------------------------------------------
    def node_dir(self, name: str) -> Path:
        return self.dir / "nodes" / name

    def names(self) -> list[str]:
        base = self.dir / "nodes"
        return sorted(p.name for p in base.iterdir() if (p / "node.json").exists()) \
            if base.exists() else []

    def spec(self, name: str) -> dict[str, Any]:
        path = self.node_dir(name) / "node.json"
        if not path.exists():
            raise NotFoundError(f"no lab node named {name!r} (see `gpuctl lab status`)")
        spec: dict[str, Any] = json.loads(path.read_text())
        return spec

    def _save_spec(self, spec: dict[str, Any]) -> None:
        path = self.node_dir(spec["name"]) / "node.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(spec, indent=1))
        os.replace(tmp, path)

    def holder_pid(self, name: str) -> int | None:
        """PID (host numbering) of the node's init, if it is running."""
        pid_file = self.node_dir(name) / "holder.pid"
        try:
            pid = int(pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if str(self.node_dir(name)).encode() in cmdline else None

    # -- lifecycle --------------------------------------------------------------
    def up(self, count: int, *, profile: str = "h100-sxm-8", smi_xml: Path | None = None,
           faults: list[tuple[str, str]] | None = None, first_address: str = "127.0.0.10",
           port: int = 22, prefix: str = "gpu-node", driver: bool = False,
           os_name: str = "ubuntu22.04", node_profiles: dict[str, str] | None = None
           ) -> list[LabNode]:
        """Create and start ``count`` nodes, of ``profile`` but those ``node_profiles``
        gives another (node name -> profile: a fleet of several SKUs).

        Raises:
            LabError: unsupported host, a lab already up, bad profile/address/fault.
        """
        require_lab_support(os_name)
        if self.names():
            raise LabError(f"a lab is already up in {self.dir} ({len(self.names())} nodes); "
                           "run `gpuctl lab down` first")
        lab_profile = get_profile(profile)
        if os_name not in LAB_OSES:
            raise LabError(f"--os {os_name[:40]!r}: lab nodes run {', '.join(LAB_OSES)}")
        if not 1 <= count <= 200:
            raise LabError("--nodes must be between 1 and 200")
        try:
            first = ipaddress.IPv4Address(first_address)
        except ValueError:
            raise LabError(f"--first-address {first_address!r} is not an IPv4 address") from None
        if not first.is_loopback or not (first + count - 1).is_loopback:
            raise LabError("lab addresses must stay inside 127.0.0.0/8")
        if _wildcard_listener(port):
            raise LabError(f"port {port} is taken on all addresses (the host's own sshd?); "
                           "stop it or use --port 2222")
        names = [f"{prefix}-{i + 1:02d}" for i in range(count)]
        node_profiles = node_profiles or {}
        for node in node_profiles:
            if node not in names:
                raise LabError(f"profile for {node!r}, which is not one of "
                               f"{names[0]}..{names[-1]}")
            if smi_xml:
                raise LabError("a node's own profile and --smi-xml exclude each other")
        profile_of = {name: get_profile(node_profiles.get(name, profile)) for name in names}
        fault_map: dict[str, list[str]] = {}
        for node, kind in faults or []:
            if node not in names:
                raise LabError(f"fault for {node!r}, which is not one of {names[0]}..{names[-1]}")
            fault_map.setdefault(node, []).append(kind)
        replay_gpus = _gpus_from_capture(smi_xml) if smi_xml else None
        # A replayed capture is whatever GPUs it holds: its SKU comes from them (None when
        # no SKU of the catalogue matches), not from --profile.
        sku = infer_sku(catalogue(), [g["model"] for g in replay_gpus]) \
            if replay_gpus is not None else lab_profile.sku
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Only the repository variants this lab's nodes use now; a fault injected later
        # builds its variant then (``_repo``).
        needed = {"good"} | {v for kinds in fault_map.values() for k in kinds
                             if (v := REPO_VARIANTS.get(k))}
        for variant in sorted(needed):
            self._repo(variant, os_name)
        client_pub = write_ed25519(self.client_key, "gpuctl-lab")
        started: list[LabNode] = []
        try:
            for i, name in enumerate(names):
                spec = {
                    "name": name, "hostname": name, "index": i + 1, "os": os_name,
                    "address": str(first + i), "port": port,
                    "profile": node_profiles.get(name, profile),
                    "sku": sku if replay_gpus is not None else profile_of[name].sku,
                    "smi_xml": str(smi_xml.resolve()) if smi_xml else None, "driver": driver,
                    # A bare server loads nouveau; one with the driver had it blacklisted.
                    "nouveau": not driver, "repo": "good", "python": sys.executable,
                    "machine_id": uuid.uuid4().hex,
                    "sshd": True, "faults": [], "kmsg": [],
                    "system_serial": f"S{abs(hash(name)) % 10**9:09d}",
                    "gpus": [dict(g) for g in replay_gpus] if replay_gpus is not None
                    else gpus_for(profile_of[name], name),
                }
                if replay_gpus is not None and replay_gpus:
                    spec["driver_version"], spec["cuda_version"] = _versions(smi_xml)
                for kind in fault_map.get(name, []):
                    apply_fault(spec, kind)
                self._create(spec, client_pub)
                self._start(name)
                started.append(self.node(name))
        except BaseException:
            self.down()
            raise
        return started

    def _create(self, spec: dict[str, Any], client_pub: str) -> None:
        ndir = self.node_dir(spec["name"])
        for sub in ("upper", "work", "merged"):
            (ndir / sub).mkdir(parents=True, exist_ok=True)
        etc = ndir / "upper/etc/gpuctl-lab"
        write_ed25519(etc / "ssh_host_ed25519_key", f"root@{spec['name']}")
        (etc / "authorized_keys").write_text(client_pub)
        (etc / "sshd_config").write_text(SSHD_CONFIG.format(**spec))
        (ndir / "upper/etc/hostname").write_text(spec["hostname"] + "\n")
        (ndir / "sys").mkdir(exist_ok=True)
        if spec["repo"]:
            shutil.copytree(self.dir / "repos" / spec["repo"],
                            ndir / "upper" / REPO_IN_NODE.lstrip("/"))
        if spec["os"] == "debian12":  # Debian's own archive (render.node_files: its source)
            shutil.copytree(cached_debian_archive() / "archive",
                            ndir / "upper" / DEBIAN_ARCHIVE_IN_NODE.lstrip("/"))
        self._save_spec(spec)
        self._render(spec, running=False)
        install_base_rpms(spec["os"], ndir / "upper")

    def _render(self, spec: dict[str, Any], *, running: bool) -> None:
        ndir = self.node_dir(spec["name"])
        if running:
            render_sysfs(ndir / "sys", spec)
        files = node_files(spec)
        if running and spec["driver"]:
            # What the image came with (``--driver``) was written at creation; a running
            # node may have replaced it since (a provision to another branch).
            for path in set(files) - set(node_files({**spec, "driver": False})):
                del files[path]
        for path, (data, mode) in files.items():
            if running:
                self.put_file(spec["name"], path, data, mode)
            else:
                # Its directory through the lower root's symlinks: a merged-/usr host's
                # /lib is a link to usr/lib, which a real directory in the upper layer
                # would hide. (The file itself replaces what is there: /sbin/reboot is a
                # link to systemctl, which must stay systemctl.)
                parent = os.path.realpath(os.path.dirname(path))
                target = ndir / "upper" / parent.lstrip("/") / os.path.basename(path)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                os.chmod(target, mode)

    def _start(self, name: str) -> None:
        ndir = self.node_dir(name)
        for marker in ("ready", "failed"):
            (ndir / marker).unlink(missing_ok=True)
        with open(ndir / "init.log", "ab") as log:
            proc = subprocess.Popen(
                ["unshare", "--mount", "--uts", "--pid", "--fork", "--propagation", "private",
                 sys.executable, str(NODE_INIT), str(ndir)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if (ndir / "failed").exists() or proc.poll() is not None:
                detail = (ndir / "failed").read_text().strip() if (ndir / "failed").exists() \
                    else (ndir / "init.log").read_text()[-300:].strip()
                raise LabError(f"lab node {name} did not start: {detail}")
            if (ndir / "ready").exists():
                break
            time.sleep(0.02)
        else:
            raise LabError(f"lab node {name} did not start within 20 s")
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        (ndir / "holder.pid").write_text(children[0])

    def _stop(self, name: str) -> None:
        pid = self.holder_pid(name)
        if pid is None:
            return
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.02)

    def down(self, names: list[str] | None = None) -> list[str]:
        """Stop nodes (all by default) and delete their directories."""
        gone = []
        if names is None and (self.dir / "slurm").exists():
            from provisioner.lab.slurm import LabSlurm  # noqa: PLC0415 (only with a Slurm)

            LabSlurm(self).down()
        if names is None and (self.dir / "bmc").exists():
            from provisioner.lab.bmc import LabBmcs  # noqa: PLC0415 (only with BMCs)

            LabBmcs(self).down()
        for name in names if names is not None else self.names():
            self._stop(name)
            shutil.rmtree(self.node_dir(name), ignore_errors=True)
            gone.append(name)
        if not self.names():
            shutil.rmtree(self.dir, ignore_errors=True)
        return gone

    # -- inside a node ----------------------------------------------------------
    def node_exec(self, name: str, argv: list[str], stdin: bytes = b"",
                  timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` inside the node (its namespaces and root)."""
        pid = self.holder_pid(name)
        if pid is None:
            raise LabError(f"lab node {name} is not running")
        root = str(self.node_dir(name) / "merged")
        return subprocess.run(["nsenter", "-t", str(pid), "-m", "-u", "-p", "--", "chroot",
                               root, *argv], input=stdin, capture_output=True, timeout=timeout,
                              check=False)

    def put_file(self, name: str, path: str, data: bytes, mode: int = 0o644) -> None:
        script = 'mkdir -p "$(dirname "$1")" && cat > "$1.tmp" && chmod "$2" "$1.tmp" ' \
                 '&& mv "$1.tmp" "$1"'
        res = self.node_exec(name, ["sh", "-c", script, "sh", path, oct(mode)[2:]], stdin=data)
        if res.returncode != 0:
            raise LabError(f"cannot write {path} on {name}: {res.stderr.decode()[:200]}")

    def fault(self, name: str, kind: str) -> None:
        """Inject fault ``kind`` into a running node."""
        spec = self.spec(name)
        apply_fault(spec, kind)
        self._save_spec(spec)
        if kind == "unreachable":
            self.node_exec(name, ["sh", "-c", "kill $(cat /run/gpuctl-lab-sshd.pid)"])
            return
        if kind in REPO_VARIANTS:
            self._push_repo(name, spec["repo"])
            return
        if kind == "hostkey-changed":
            key = self.node_dir(name) / "newkey"
            write_ed25519(key, f"root@{name}")
            self.put_file(name, "/etc/gpuctl-lab/ssh_host_ed25519_key", key.read_bytes(), 0o600)
            key.unlink()
            key.with_name("newkey.pub").unlink()
            self.node_exec(name, ["sh", "-c", "kill $(cat /run/gpuctl-lab-sshd.pid); sleep 0.2;"
                                  " /usr/sbin/sshd -f /etc/gpuctl-lab/sshd_config"])
            return
        self._render(spec, running=True)

    def repair(self, name: str) -> list[str]:
        """A technician's visit: the node's hardware faults are fixed (its GPUs as its
        profile has them, an empty kernel log as after the reboot a part swap needs).
        Returns the faults cleared; access and repository faults stay."""
        spec = self.spec(name)
        if spec.get("smi_xml"):
            raise LabError(f"{name} replays a capture: its GPUs cannot be repaired")
        keep = {"unreachable", "hostkey-changed", "unsupported-os", *REPO_VARIANTS}
        cleared = [f for f in spec["faults"] if f not in keep]
        spec["faults"] = [f for f in spec["faults"] if f in keep]
        spec["gpus"] = gpus_for(get_profile(spec["profile"]), name)
        spec["kmsg"] = []
        self._save_spec(spec)
        self._render(spec, running=True)
        # The compute-fault hook (render.COMPUTE_FAULT) goes with the part it simulated.
        site = sysconfig.get_paths()["purelib"]
        self.node_exec(name, ["rm", "-f", f"{site}/sitecustomize.py"])
        return cleared

    def _repo(self, variant: str, os_name: str) -> Path:
        """The lab's repository variant for ``os_name``, built on first use (from the
        build cache when the same stand-ins were built before)."""
        repo = self.dir / "repos" / variant
        if not repo.exists():
            shutil.copytree(cached_repo(variant, os_name, REPO_BUILD[variant]), repo)
        return repo

    def _push_repo(self, name: str, variant: str | None) -> None:
        """Replace the node's package repository copy (None: remove it)."""
        data = b""
        if variant:
            self._repo(variant, self.spec(name).get("os", "ubuntu22.04"))
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                tar.add(self.dir / "repos" / variant, arcname=".")
            data = buf.getvalue()
        script = f"rm -rf {REPO_IN_NODE} && " + (
            f"mkdir -p {REPO_IN_NODE} && tar -C {REPO_IN_NODE} -xf -" if variant else "true")
        res = self.node_exec(name, ["sh", "-c", script], stdin=data)
        if res.returncode != 0:
            raise LabError(f"cannot change the repository on {name}: "
                           f"{res.stderr.decode()[:200]}")

    def node(self, name: str) -> LabNode:
        spec = self.spec(name)
        pid = self.holder_pid(name)
        return LabNode(name=name, address=spec["address"], port=spec["port"],
                       profile=spec["profile"], sku=spec.get("sku"),
                       os=spec.get("os", "ubuntu22.04"), gpus=len(spec["gpus"]),
                       faults=spec["faults"],
                       running=pid is not None, sshd=spec["sshd"], pid=pid,
                       bmc=spec.get("bmc"), bmc_up=bool(spec.get("bmc")) and self._bmc_up())

    def _bmc_up(self) -> bool:
        """Whether the lab's BMC emulator (``provisioner.lab.bmc``) runs."""
        try:
            pid = int((self.dir / "bmc" / "emulator.pid").read_text())
            return b"bmc_emulator" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return False

    def status(self) -> list[LabNode]:
        return [self.node(n) for n in self.names()]


def _wildcard_listener(port: int) -> bool:
    """True if something listens on 0.0.0.0:port, which would block the nodes' sshd."""
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    wanted = f"00000000:{port:04X}"
    return any(line.split()[1] == wanted and line.split()[3] == "0A" for line in lines)


def _gpus_from_capture(path: Path) -> list[dict[str, Any]]:
    """GPU dicts for a node that replays a real ``nvidia-smi -q -x`` capture."""
    from provisioner.probe.smi_xml import SmiParseError, parse_smi_xml  # noqa: PLC0415

    try:
        report = parse_smi_xml(path.read_bytes())
    except OSError as exc:
        raise LabError(f"cannot read --smi-xml {path}: {exc.strerror}") from None
    except SmiParseError as exc:
        raise LabError(f"--smi-xml {path}: {exc}") from None
    out = []
    for g in report.gpus:
        out.append({
            "index": g.index, "model": g.model or "NVIDIA GPU", "architecture": "",
            "bus_id": g.pci_bus_id[-12:], "device_id": "0x2330", "uuid": g.uuid or "",
            "serial": g.serial or "", "memory_mib": g.memory_mib or 0, "vbios": g.vbios or "",
            "pcie_gen_max": g.pcie_gen_max or 4, "pcie_gen_current": g.pcie_gen_current or 4,
            "pcie_width_max": g.pcie_width_max or 16,
            "pcie_width_current": g.pcie_width_current or 16,
            "power_limit_w": g.power_limit_w or 0.0, "temperature_c": g.temperature_c or 30,
            "mig": g.mig_mode == "Enabled", "ecc_dram_uncorrectable": 0,
            "remapped_rows": g.remapped_rows_failure is not None, "remap_unc": 0,
            "remap_failure": False, "thermal_slowdown": False,
        })
    return out


def _versions(path: Path | None) -> tuple[str | None, str | None]:
    from provisioner.probe.smi_xml import parse_smi_xml  # noqa: PLC0415

    assert path is not None
    report = parse_smi_xml(path.read_bytes())
    return report.driver_version, report.cuda_version
