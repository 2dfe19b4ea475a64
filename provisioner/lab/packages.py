"""The lab's apt repository of stand-in NVIDIA packages, built with dpkg-deb.

The packages carry the real names the playbooks install (``nvidia-driver-570-open``,
``cuda-toolkit-12-8``, ``nvidia-fabricmanager-570``, ...). They install stand-in tools
and simulate what the real ones do to a machine: the driver "builds" its module and
loads it (or asks for a reboot while nouveau is loaded), fabric manager refuses to start
against a driver of another version. They exist only in the lab's repository.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path

from provisioner.errors import LabError

STANDIN_SMI = Path(__file__).with_name("standin_smi.py")
STANDIN_DCGMI = Path(__file__).with_name("standin_dcgmi.py")
# branch -> (driver version, highest CUDA version the driver supports)
DRIVERS = {"550": ("550.144.03", "12.4"), "570": ("570.124.06", "12.8"),
           "575": ("575.57.08", "12.9"), "580": ("580.65.06", "13.0")}
CUDA = {"12-4": "12.4.1", "12-8": "12.8.1", "12-9": "12.9.1", "13-0": "13.0.0"}
DCGM_VERSION = "1:3.3.9"
CTK_VERSION = "1.17.8-1"
REPO_IN_NODE = "/srv/gpuctl-lab/repo"

DAEMON = """#!/bin/sh
# gpuctl lab stand-in daemon
{check}
trap 'kill $! 2>/dev/null; exit 0' TERM INT
while :; do sleep 3600 & wait $!; done
"""
INIT_SCRIPT = """#!/bin/sh
### BEGIN INIT INFO
# Provides:          {name}
# Required-Start:    $remote_fs
# Required-Stop:     $remote_fs
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: {name} (gpuctl lab stand-in)
### END INIT INFO
PIDFILE=/run/{name}.pid
case "$1" in
  start)
    {precheck}
    start-stop-daemon --start --quiet --oknodo --background --make-pidfile \\
      --pidfile "$PIDFILE" --startas {daemon} ;;
  stop) start-stop-daemon --stop --quiet --oknodo --retry 5 --pidfile "$PIDFILE" \\
      --remove-pidfile ;;
  status) start-stop-daemon --status --pidfile "$PIDFILE" ;;
  restart|force-reload) "$0" stop; "$0" start ;;
  *) echo "Usage: $0 {{start|stop|status|restart}}"; exit 2 ;;
esac
"""
FM_CHECK = """drv=$(cat /sys/module/nvidia/version 2>/dev/null)
if [ "$drv" != "{version}" ]; then
  echo "fabric manager NVIDIA GPU driver interface version {version} don't match with driver \
version ${{drv:-(not loaded)}}. Please update with matching NVIDIA driver package." >&2
  exit 1
fi"""


@dataclass
class Package:
    name: str
    version: str
    description: str
    files: dict[str, tuple[str | bytes, int]] = field(default_factory=dict)
    postinst: str = ""
    postrm: str = ""
    extra_control: dict[str, str] = field(default_factory=dict)


def _service(name: str, daemon: str, check: str = "") -> dict[str, tuple[str | bytes, int]]:
    precheck = f"{daemon} --check || exit 1" if check else ":"
    return {
        daemon: (DAEMON.format(check=f'[ "$1" = --check ] && {{\n{check}\nexit 0\n}}'
                               if check else ""), 0o755),
        f"/etc/init.d/{name}": (INIT_SCRIPT.format(name=name, daemon=daemon,
                                                   precheck=precheck), 0o755),
    }


def driver_package(branch: str, open_modules: bool, *, fail_build: bool = False) -> Package:
    version, cuda = DRIVERS[branch]
    flavor = "open" if open_modules else "proprietary"
    name = f"nvidia-driver-{branch}" + ("-open" if open_modules else "")
    build = (f'echo "Error! Bad return status for module build on kernel: $(uname -r) (x86_64)"'
             f' >&2\necho "Consult /var/lib/dkms/nvidia/{version}/build/make.log for more '
             f'information." >&2\nexit 10' if fail_build else
             'if [ -d /sys/module/nouveau ]; then\n'
             '  echo "nouveau is loaded: nvidia.ko will load after a reboot"\n'
             '  : > /var/run/reboot-required\n'
             'else\n'
             f'  mkdir -p /sys/module/nvidia && echo {version} > /sys/module/nvidia/version\n'
             'fi')
    files: dict[str, tuple[str | bytes, int]] = {
        "/usr/bin/nvidia-smi": (STANDIN_SMI.read_bytes(), 0o755),
        "/usr/share/gpuctl-lab/driver.json": (json.dumps(
            {"version": version, "cuda": cuda, "flavor": flavor, "branch": branch}), 0o644),
        **_service("nvidia-persistenced", "/usr/bin/nvidia-persistenced"),
    }
    return Package(
        name, f"{version}-1", f"NVIDIA driver {branch} ({flavor} kernel modules), lab stand-in",
        files,
        postinst=f'echo "Building nvidia/{version} ({flavor}) for $(uname -r) with DKMS"\n'
                 + build,
        postrm='[ "$1" = remove ] || [ "$1" = purge ] && rm -rf /sys/module/nvidia || true',
        extra_control={"Provides": "nvidia-kernel-driver", "Conflicts": "nvidia-kernel-driver",
                       "Replaces": "nvidia-kernel-driver"},
    )


def fabricmanager_files(version: str) -> dict[str, tuple[bytes, int]]:
    """The stand-in fabric manager's daemon and init script, for driver ``version``."""
    return {path: (content.encode() if isinstance(content, str) else content, mode)
            for path, (content, mode) in _service(
                "nvidia-fabricmanager", "/usr/bin/nv-fabricmanager",
                FM_CHECK.format(version=version)).items()}


def fabricmanager_package(branch: str, version: str | None = None) -> Package:
    version = version or DRIVERS[branch][0]
    return Package(f"nvidia-fabricmanager-{branch}", f"{version}-1",
                   f"NVIDIA Fabric Manager {version} for NVSwitch systems, lab stand-in",
                   dict(fabricmanager_files(version)))


def all_packages(*, fail_driver_build: bool = False,
                 fabricmanager_skew: bool = False) -> list[Package]:
    """Every package in the repository; the flags make the faulty variants."""
    pkgs: list[Package] = []
    for branch in DRIVERS:
        pkgs += [driver_package(branch, True, fail_build=fail_driver_build),
                 driver_package(branch, False, fail_build=fail_driver_build)]
        older = "570.86.15" if branch == "570" else f"{branch}.00.01"
        pkgs.append(fabricmanager_package(branch, older if fabricmanager_skew else None))
        pkgs.append(Package(f"libnvidia-nscq-{branch}", f"{DRIVERS[branch][0]}-1",
                            "NVSwitch configuration and query library, lab stand-in",
                            {f"/usr/share/gpuctl-lab/nscq-{branch}": ("", 0o644)}))
    for short, version in CUDA.items():
        dotted = short.replace("-", ".")
        prefix = f"/usr/local/cuda-{dotted}"
        nvcc = (f'#!/bin/sh\necho "nvcc: NVIDIA (R) Cuda compiler driver"\n'
                f'echo "Cuda compilation tools, release {dotted}, V{version}"\n')
        pkgs.append(Package(
            f"cuda-toolkit-{short}", f"{version}-1", f"CUDA Toolkit {version}, lab stand-in",
            {f"{prefix}/bin/nvcc": (nvcc, 0o755),
             f"{prefix}/version.json": (json.dumps({"cuda": {"version": version}}), 0o644)},
            postinst=f"update-alternatives --install /usr/local/cuda cuda {prefix} "
                     f"{int(short.replace('-', ''))}",
            postrm=f'[ "$1" = remove ] && update-alternatives --remove cuda {prefix} || true'))
    dcgmi = STANDIN_DCGMI.read_text()
    pkgs.append(Package("datacenter-gpu-manager", DCGM_VERSION,
                        "NVIDIA Data Center GPU Manager, lab stand-in",
                        {"/usr/bin/dcgmi": (dcgmi, 0o755),
                         **_service("nvidia-dcgm", "/usr/bin/nv-hostengine")}))
    ctk = ('#!/bin/sh\ncase "$1" in\n  --version) echo "NVIDIA Container Toolkit CLI version '
           '1.17.8";;\n  *) echo "nvidia-ctk (lab stand-in): $*";;\nesac\n')
    pkgs.append(Package("nvidia-container-toolkit", CTK_VERSION,
                        "NVIDIA Container Toolkit, lab stand-in",
                        {"/usr/bin/nvidia-ctk": (ctk, 0o755)}))
    pkgs.append(Package(f"linux-headers-{platform.release()}", "1.0-1",
                        "Kernel headers for the running kernel, lab stand-in",
                        {f"/usr/src/linux-headers-{platform.release()}/.gpuctl-lab": ("", 0o644)}))
    return pkgs


def _build_deb(pkg: Package, out_dir: Path, work: Path) -> Path:
    root = work / pkg.name
    (root / "DEBIAN").mkdir(parents=True)
    control = {"Package": pkg.name, "Version": pkg.version, "Architecture": "all",
               "Maintainer": "gpuctl lab <lab@localhost>", "Section": "misc",
               "Priority": "optional", **pkg.extra_control, "Description": pkg.description}
    (root / "DEBIAN/control").write_text("".join(f"{k}: {v}\n" for k, v in control.items()))
    for script, body in (("postinst", pkg.postinst), ("postrm", pkg.postrm)):
        if body:
            path = root / "DEBIAN" / script
            path.write_text(f"#!/bin/sh\nset -e\n{body}\nexit 0\n")
            path.chmod(0o755)
    for rel, (content, mode) in pkg.files.items():
        path = root / rel.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        path.chmod(mode)
    deb = out_dir / f"{pkg.name}_{pkg.version.replace(':', '%3a')}_all.deb"
    res = subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root),
                          str(deb)], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise LabError(f"dpkg-deb failed for {pkg.name}: {res.stderr.strip()[:200]}")
    return deb


def _index(repo: Path, debs: list[tuple[Package, Path]]) -> None:
    stanzas = []
    for _pkg, deb in debs:
        data = deb.read_bytes()
        control = subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True,
                                 check=True).stdout.strip()
        stanzas.append(f"{control}\nFilename: ./{deb.name}\nSize: {len(data)}\n"
                       f"MD5sum: {hashlib.md5(data).hexdigest()}\n"  # noqa: S324 (apt index)
                       f"SHA256: {hashlib.sha256(data).hexdigest()}\n")
    packages = "\n".join(stanzas).encode()
    (repo / "Packages").write_bytes(packages)
    (repo / "Packages.gz").write_bytes(gzip.compress(packages, mtime=0))
    lines = ["Origin: gpuctl-lab", "Label: NVIDIA CUDA", "Suite: stable",
             "Codename: gpuctl-lab", f"Date: {formatdate(usegmt=True)}", "SHA256:"]
    for name in ("Packages", "Packages.gz"):
        blob = (repo / name).read_bytes()
        lines.append(f" {hashlib.sha256(blob).hexdigest()} {len(blob)} {name}")
    (repo / "Release").write_text("\n".join(lines) + "\n")


def build_repo(repo: Path, **variant: bool) -> Path:
    """Build the repository (one variant) into ``repo``; returns it."""
    if not shutil.which("dpkg-deb"):
        raise LabError("dpkg-deb not found: the lab's package repository needs dpkg")
    if repo.exists():
        shutil.rmtree(repo)
    repo.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="gpuctl-lab-pkg-") as tmp:
        debs = [(pkg, _build_deb(pkg, repo, Path(tmp))) for pkg in all_packages(**variant)]
    _index(repo, debs)
    os.chmod(repo, 0o755)  # noqa: S103  (nodes read it as a package repository)
    return repo
