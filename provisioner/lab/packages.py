"""The lab's stand-in NVIDIA packages, named as NVIDIA's own repositories name them.

Each lab OS gets the names its real repository uses, aliases included, so that a
playbook that asks for a wrong name fails in the lab as it would on a real node. The
naming is written here independently of the playbooks' table
(playbooks/vars/nvidia_packages.yml), from the same sources:

- Ubuntu (NVIDIA's CUDA repository, ubuntu2204/ubuntu2404): the driver is
  ``nvidia-driver-<branch>[-open]``. Fabric manager and NSCQ carry the branch up to 575
  (``nvidia-fabricmanager-570``, ``libnvidia-nscq-570``); from 580 they are
  ``nvidia-fabricmanager`` and ``libnvidia-nscq``, and the suffixed names are only
  aliases (NVIDIA/gpu-driver-container, commit dc7857e "Fix: precompiled R580 package
  install error": ``nvidia-fabricmanager=${DRIVER_VERSION}-1`` from 580,
  ``nvidia-fabricmanager-${DRIVER_BRANCH}`` before; ``libnvsdm`` likewise).
  NVLink 5 systems also need ``nvlsm`` and ``infiniband-diags`` (same file,
  ``nvlink5_pkgs_install``).
- Debian 12 (NVIDIA's debian12 repository): Debian-style, unsuffixed names for every
  branch; the compute-only driver is ``nvidia-driver-cuda`` with
  ``nvidia-kernel-open-dkms`` or ``nvidia-kernel-dkms`` (NVIDIA Driver Installation
  Guide, Debian, compute-only system). The branch is chosen by version, so the
  repository holds several versions of one name, as the real one does. No fabric
  manager is served for Debian: gpuctl found no primary source for its Debian names,
  and the playbooks refuse NVSwitch systems on Debian rather than guess.
- RHEL/Rocky (NVIDIA's CUDA repository, rhel8/rhel9): the driver comes from the
  ``nvidia-driver`` module, streams ``<branch>-open`` and ``<branch>-dkms``
  (NVIDIA/ansible-role-nvidia-driver tasks/install-redhat.yml, ``@nvidia-driver:<branch>-dkms``;
  gpu-driver-container rhel9/precompiled/Dockerfile, ``dnf module enable
  nvidia-driver:${DRIVER_STREAM}-open``), whose kmod packages need ``dkms`` from EPEL.
  Fabric manager below 580 is ``nvidia-fabric-manager`` (``nvidia-fabricmanager-<branch>``
  is a Provides alias) with ``libnvidia-nscq-<branch>``; from 580 ``nvidia-fabricmanager``
  and ``libnvidia-nscq`` (the same Dockerfile, ``if [ "$DRIVER_BRANCH" -ge "580" ]``).

Versions come from the profiles' captures and NVIDIA's release names; branch 590 and
later (unsuffixed Ubuntu driver names, NVIDIA Driver Installation Guide "Ubuntu 590 and
later packages") is in the playbooks' table but not built here: no 590 version string
was at hand from a primary source.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path

STANDIN_SMI = Path(__file__).with_name("standin_smi.py")
STANDIN_DCGMI = Path(__file__).with_name("standin_dcgmi.py")
# branch -> (driver version, highest CUDA version the driver supports)
DRIVERS = {"550": ("550.144.03", "12.4"), "570": ("570.124.06", "12.8"),
           "575": ("575.57.08", "12.9"), "580": ("580.65.06", "13.0")}
CUDA = {"12-4": "12.4.1", "12-8": "12.8.1", "12-9": "12.9.1", "13-0": "13.0.0"}
DCGM3_VERSION = "1:3.3.9"
DCGM4_VERSION = "1:4.2.3-1"
CTK_VERSION = "1.17.8-1"
REPO_IN_NODE = "/srv/gpuctl-lab/repo"
# Which OS family each lab OS's repository is built for.
OS_REPO = {"ubuntu22.04": "ubuntu", "debian12": "debian", "rocky9": "rhel"}

DAEMON = """#!/bin/sh
# gpuctl lab stand-in daemon
{check}
trap 'kill $! 2>/dev/null; exit 0' TERM INT
while :; do sleep 3600 & wait $!; done
"""
# An init script that runs the daemon with the arguments systemd would give it: the
# unit's ExecStart=, overridden by the last ExecStart= of a drop-in (systemd.unit(5):
# an empty ExecStart= resets the list). Lab nodes run no systemd; their sysvinit-like
# init runs this, so a drop-in changes what the daemon does here as it would there.
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
UNIT=/lib/systemd/system/{name}.service
exec_args() {{
  line=$(cat "$UNIT" /etc/systemd/system/{name}.service.d/*.conf 2>/dev/null \\
         | grep '^ExecStart=.' | tail -n 1)
  set -- ${{line#ExecStart=}}
  [ $# -gt 0 ] && shift
  echo "$@"
}}
case "$1" in
  start)
    {precheck}
    start-stop-daemon --start --quiet --oknodo --background --make-pidfile \\
      --pidfile "$PIDFILE" --startas {daemon} -- $(exec_args) ;;
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
# The persistence daemon's unit as Ubuntu's packaging ships it: persistence mode off
# until an admin turns it on (NVIDIA/ansible-role-nvidia-driver's
# files/nvidia-persistenced-override.conf replaces this ExecStart with
# --persistence-mode). The stand-in ships the same unit on every OS.
PERSISTENCED_UNIT = """[Unit]
Description=NVIDIA Persistence Daemon
Wants=syslog.target

[Service]
Type=forking
ExecStart=/usr/bin/nvidia-persistenced --user nvidia-persistenced --no-persistence-mode --verbose
ExecStopPost=/bin/rm -rf /var/run/nvidia-persistenced

[Install]
WantedBy=multi-user.target
"""
# What the driver's DKMS build does on a node: build the module for the running kernel
# and load it, or leave it for a reboot while nouveau holds the GPUs. The module's
# /sys/module/nvidia/taint says its licence as the kernel does (Documentation/
# admin-guide/tainted-kernels.rst: P = proprietary module; O = out-of-tree; E =
# unsigned): the open modules are MIT/GPL (NVIDIA/open-gpu-kernel-modules), so no P.
BUILD = """if [ -d /sys/module/nouveau ]; then
  echo "nouveau is loaded: nvidia.ko will load after a reboot"
  : > /var/run/reboot-required
else
  mkdir -p /sys/module/nvidia && echo {version} > /sys/module/nvidia/version
  echo {taint} > /sys/module/nvidia/taint
  # nvidia-modprobe's device files (devices.txt: char 195:N, nvidiactl 195:255), one
  # per NVIDIA display/3D controller on the bus.
  i=0
  for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor" 2>/dev/null)" = 0x10de ] || continue
    case "$(cat "$d/class" 2>/dev/null)" in 0x0300*|0x0302*) ;; *) continue ;; esac
    [ -e /dev/nvidia$i ] || mknod -m 666 /dev/nvidia$i c 195 $i
    i=$((i + 1))
  done
  [ -e /dev/nvidiactl ] || mknod -m 666 /dev/nvidiactl c 195 255
fi"""
FAILED_BUILD = """echo "Error! Bad return status for module build on kernel: $(uname -r) \
(x86_64)" >&2
echo "Consult /var/lib/dkms/nvidia/{version}/build/make.log for more information." >&2
exit 10"""


@dataclass
class Package:
    name: str
    version: str
    description: str
    files: dict[str, tuple[str | bytes, int]] = field(default_factory=dict)
    postinst: str = ""
    postrm: str = ""
    provides: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    depends: list[str] = field(default_factory=list)
    epoch: str = ""


@dataclass
class ModuleStream:
    """A dnf module stream (modulemd v2) and the packages of its default profile."""
    module: str
    stream: str
    packages: list[Package]


def taint(open_modules: bool) -> str:
    return "OE" if open_modules else "POE"


def service_files(name: str, daemon: str, check: str = "",
                  unit: str = "") -> dict[str, tuple[str | bytes, int]]:
    precheck = f"{daemon} --check || exit 1" if check else ":"
    files: dict[str, tuple[str | bytes, int]] = {
        daemon: (DAEMON.format(check=f'[ "$1" = --check ] && {{\n{check}\nexit 0\n}}'
                               if check else ""), 0o755),
        f"/etc/init.d/{name}": (INIT_SCRIPT.format(name=name, daemon=daemon,
                                                   precheck=precheck), 0o755),
    }
    if unit:
        files[f"/lib/systemd/system/{name}.service"] = (unit, 0o644)
    return files


def driver_json(branch: str, flavor: str, version: str | None = None) -> str:
    version = version or DRIVERS[branch][0]
    return json.dumps({"version": version, "cuda": DRIVERS[branch][1], "flavor": flavor,
                       "branch": branch})


def userspace_files() -> dict[str, tuple[str | bytes, int]]:
    """nvidia-smi and the persistence daemon (the driver's user-space part)."""
    return {"/usr/bin/nvidia-smi": (STANDIN_SMI.read_bytes(), 0o755),
            **service_files("nvidia-persistenced", "/usr/bin/nvidia-persistenced",
                            unit=PERSISTENCED_UNIT)}


def kernel_files(branch: str, open_modules: bool) -> dict[str, tuple[str | bytes, int]]:
    flavor = "open" if open_modules else "proprietary"
    return {"/usr/share/gpuctl-lab/driver.json": (driver_json(branch, flavor), 0o644)}


def build_script(branch: str, open_modules: bool, fail: bool) -> str:
    version = DRIVERS[branch][0]
    flavor = "open" if open_modules else "proprietary"
    body = FAILED_BUILD if fail else BUILD
    return (f'echo "Building nvidia/{version} ({flavor}) for $(uname -r) with DKMS"\n'
            + body.format(version=version, taint=taint(open_modules)))


REMOVE_MODULE = '[ "$1" = remove ] || [ "$1" = purge ] || [ "$1" = 0 ] && ' \
    'rm -rf /sys/module/nvidia || true'


def fabricmanager_files(version: str) -> dict[str, tuple[bytes, int]]:
    """The stand-in fabric manager's daemon and init script, for driver ``version``."""
    return {path: (content.encode() if isinstance(content, str) else content, mode)
            for path, (content, mode) in service_files(
                "nvidia-fabricmanager", "/usr/bin/nv-fabricmanager",
                FM_CHECK.format(version=version)).items()}


def nvlink5_packages(family: str, branch: str) -> list[Package]:
    """NVLink 5 (B200) companions of fabric manager from NVIDIA's repository: the NVLink
    subnet manager and the NVSwitch device monitoring library (infiniband-diags comes
    from the OS's repository: ``os_packages``)."""
    version = DRIVERS[branch][0]
    nvsdm = "libnvsdm" if int(branch) >= 580 else f"libnvsdm-{branch}"
    return [
        Package("nvlsm", "2025.06.4-1", "NVLink subnet manager, lab stand-in",
                service_files("nvlsm", "/usr/sbin/nvlsm")),
        Package(nvsdm, f"{version}-1", "NVSwitch device monitoring library, lab stand-in",
                {f"/usr/share/gpuctl-lab/{nvsdm}": ("", 0o644)},
                provides=[f"libnvsdm-{branch}"] if nvsdm == "libnvsdm" else []),
    ]


def fabricmanager_packages(family: str, branch: str,
                           version: str | None = None) -> list[Package]:
    version = version or DRIVERS[branch][0]
    new = int(branch) >= 580
    if family == "rhel":
        fm = "nvidia-fabricmanager" if new else "nvidia-fabric-manager"
    else:
        fm = "nvidia-fabricmanager" if new else f"nvidia-fabricmanager-{branch}"
    nscq = "libnvidia-nscq" if new else f"libnvidia-nscq-{branch}"
    alias = f"nvidia-fabricmanager-{branch}"
    return [
        Package(fm, f"{version}-1", f"NVIDIA Fabric Manager {version}, lab stand-in",
                dict(fabricmanager_files(version)),
                provides=[alias] if fm != alias else []),
        Package(nscq, f"{DRIVERS[branch][0]}-1", "NVSwitch query library, lab stand-in",
                {f"/usr/share/gpuctl-lab/{nscq}": ("", 0o644)},
                provides=[f"libnvidia-nscq-{branch}"] if nscq != f"libnvidia-nscq-{branch}"
                else []),
    ]


def driver_packages(family: str, branch: str, *, fail_build: bool = False) -> list[Package]:
    version = DRIVERS[branch][0]
    out: list[Package] = []
    for open_modules in (True, False):
        flavor = "open" if open_modules else "proprietary"
        build = build_script(branch, open_modules, fail_build)
        if family == "ubuntu":
            name = f"nvidia-driver-{branch}" + ("-open" if open_modules else "")
            out.append(Package(
                name, f"{version}-1", f"NVIDIA driver {branch} ({flavor} modules), lab stand-in",
                {**userspace_files(), **kernel_files(branch, open_modules)},
                postinst=build, postrm=REMOVE_MODULE,
                provides=["nvidia-kernel-driver"], conflicts=["nvidia-kernel-driver"]))
        elif family == "debian":
            name = "nvidia-kernel-open-dkms" if open_modules else "nvidia-kernel-dkms"
            out.append(Package(
                name, f"{version}-1", f"NVIDIA kernel module ({flavor}), DKMS, lab stand-in",
                kernel_files(branch, open_modules), postinst=build, postrm=REMOVE_MODULE,
                provides=["nvidia-kernel-driver"], conflicts=["nvidia-kernel-driver"]))
        else:
            name = "kmod-nvidia-open-dkms" if open_modules else "kmod-nvidia-latest-dkms"
            out.append(Package(
                name, f"{version}-1", f"NVIDIA kernel module ({flavor}), DKMS, lab stand-in",
                kernel_files(branch, open_modules), postinst=build, postrm=REMOVE_MODULE,
                provides=["nvidia-kmod"], conflicts=["nvidia-kmod"], depends=["dkms"],
                epoch="3"))
    if family == "debian":
        out.append(Package("nvidia-driver-cuda", f"{version}-1",
                           "NVIDIA driver CUDA integration (nvidia-smi), lab stand-in",
                           userspace_files()))
    elif family == "rhel":
        out += [Package("nvidia-driver", f"{version}-1", "NVIDIA driver, lab stand-in",
                        service_files("nvidia-persistenced", "/usr/bin/nvidia-persistenced",
                                      unit=PERSISTENCED_UNIT), epoch="3"),
                Package("nvidia-driver-cuda", f"{version}-1",
                        "NVIDIA driver CUDA integration (nvidia-smi), lab stand-in",
                        {"/usr/bin/nvidia-smi": (STANDIN_SMI.read_bytes(), 0o755)}, epoch="3")]
    return out


def driver_streams(branch: str, packages: list[Package]) -> list[ModuleStream]:
    """RHEL's nvidia-driver module: one stream per kernel-module flavour."""
    by_name = {p.name: p for p in packages}
    common = [by_name["nvidia-driver"], by_name["nvidia-driver-cuda"]]
    return [ModuleStream("nvidia-driver", f"{branch}-open",
                         common + [by_name["kmod-nvidia-open-dkms"]]),
            ModuleStream("nvidia-driver", f"{branch}-dkms",
                         common + [by_name["kmod-nvidia-latest-dkms"]])]


def tool_packages(family: str) -> list[Package]:
    """CUDA toolkits, DCGM 3 and 4, the container toolkit: named alike on every OS."""
    pkgs: list[Package] = []
    for short, version in CUDA.items():
        dotted = short.replace("-", ".")
        prefix = f"/usr/local/cuda-{dotted}"
        nvcc = (f'#!/bin/sh\necho "nvcc: NVIDIA (R) Cuda compiler driver"\n'
                f'echo "Cuda compilation tools, release {dotted}, V{version}"\n')
        pkgs.append(Package(
            f"cuda-toolkit-{short}", f"{version}-1", f"CUDA Toolkit {version}, lab stand-in",
            {f"{prefix}/bin/nvcc": (nvcc, 0o755),
             f"{prefix}/version.json": (json.dumps({"cuda": {"version": version}}), 0o644)},
            postinst=f"ln -sfn {prefix} /usr/local/cuda"))
    dcgmi = STANDIN_DCGMI.read_text()
    # DCGM 3 is datacenter-gpu-manager; DCGM 4 is one package per CUDA major
    # (datacenter-gpu-manager-4-cuda12, -cuda13), service nvidia-dcgm for both.
    pkgs.append(Package("datacenter-gpu-manager", DCGM3_VERSION,
                        "NVIDIA Data Center GPU Manager 3, lab stand-in",
                        {"/usr/bin/dcgmi": (dcgmi, 0o755),
                         **service_files("nvidia-dcgm", "/usr/bin/nv-hostengine")}))
    for major in ("12", "13"):
        pkgs.append(Package(f"datacenter-gpu-manager-4-cuda{major}", DCGM4_VERSION,
                            f"NVIDIA Data Center GPU Manager 4 for CUDA {major}, lab stand-in",
                            {"/usr/bin/dcgmi": (dcgmi, 0o755),
                             **service_files("nvidia-dcgm", "/usr/bin/nv-hostengine")},
                            conflicts=["datacenter-gpu-manager"]))
    pkgs.append(Package("nvidia-container-toolkit", CTK_VERSION,
                        "NVIDIA Container Toolkit, lab stand-in",
                        {"/usr/bin/nvidia-ctk": (CTK.encode(), 0o755)}))
    return pkgs


# `nvidia-ctk runtime configure --runtime=docker|containerd` adds an "nvidia" runtime to
# the runtime's config file (NVIDIA Container Toolkit install guide, "Configuring
# Docker/containerd"); the stand-in writes the same marker and is idempotent.
CTK = """#!/bin/sh
case "$1" in
  --version) echo "NVIDIA Container Toolkit CLI version 1.17.8"; exit 0 ;;
  runtime)
    rt=docker
    for a in "$@"; do case "$a" in --runtime=*) rt=${a#--runtime=} ;; esac; done
    case "$rt" in
      docker) f=/etc/docker/daemon.json
        mkdir -p /etc/docker
        echo '{"runtimes": {"nvidia": {"args": [], "path": "nvidia-container-runtime"}}}' > $f ;;
      containerd) f=/etc/containerd/config.toml
        mkdir -p /etc/containerd
        printf '%s\\n  runtime_type = "io.containerd.runc.v2"\\n' \\
          '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]' >> $f ;;
      *) echo "unsupported runtime $rt" >&2; exit 1 ;;
    esac
    echo "INFO Wrote updated config to $f" ;;
  *) echo "nvidia-ctk (lab stand-in): $*" ;;
esac
"""


def os_packages(family: str) -> list[Package]:
    """What the OS's own repositories serve that the roles install: kernel headers and,
    on RHEL, EPEL's dkms (served from the lab's EPEL stand-in, see ``epel_packages``)."""
    release = platform.release()
    ibdiags = Package("infiniband-diags", "48.0-1", "InfiniBand diagnostic tools, lab stand-in",
                      {"/usr/sbin/ibstat": ("#!/bin/sh\nls /sys/class/infiniband\n", 0o755)})
    if family == "rhel":
        return [Package(f"kernel-devel-{release}", "1.0-1",
                        "Kernel headers for the running kernel, lab stand-in",
                        {f"/usr/src/kernels/{release}/.gpuctl-lab": ("", 0o644)}), ibdiags,
                # dnf's plugins: their code is this machine's (Debian's dnf-plugins-core),
                # the rpms record them as a Rocky install has them, by what they provide.
                Package("python3-dnf-plugin-versionlock", "4.3.0-13.el9",
                        "dnf versionlock plugin, lab stand-in",
                        provides=["dnf-command(versionlock)"]),
                Package("dnf-plugins-core", "4.3.0-13.el9", "Core dnf plugins, lab stand-in",
                        provides=["dnf-command(config-manager)"])]
    return [Package(f"linux-headers-{release}", "1.0-1",
                    "Kernel headers for the running kernel, lab stand-in",
                    {f"/usr/src/linux-headers-{release}/.gpuctl-lab": ("", 0o644)}), ibdiags]


def epel_packages() -> list[Package]:
    return [Package("dkms", "3.1.6-1.el9", "Dynamic Kernel Module Support (EPEL), lab stand-in",
                    {"/usr/sbin/dkms": ("#!/bin/sh\necho 'dkms (lab stand-in)'\n", 0o755)})]


def all_packages(family: str, *, fail_driver_build: bool = False,
                 fabricmanager_skew: bool = False) -> tuple[list[Package], list[ModuleStream]]:
    """Every package of one OS family's NVIDIA repository (one variant), and on RHEL the
    driver module's streams."""
    pkgs: list[Package] = []
    streams: list[ModuleStream] = []
    for branch in DRIVERS:
        drivers = driver_packages(family, branch, fail_build=fail_driver_build)
        if family == "rhel":
            streams += driver_streams(branch, drivers)
        pkgs += drivers
        older = "570.86.15" if branch == "570" else f"{branch}.00.01"
        if family != "debian":  # see the module docstring: not served for Debian here
            pkgs += fabricmanager_packages(family, branch, older if fabricmanager_skew else None)
    for branch in ("570", "580") if family != "debian" else ():
        pkgs += [p for p in nvlink5_packages(family, branch)
                 if p.name not in {q.name for q in pkgs}]
    pkgs += tool_packages(family) + os_packages(family)
    return _unique(pkgs), streams


def _unique(pkgs: list[Package]) -> list[Package]:
    seen: set[tuple[str, str]] = set()
    out = []
    for p in pkgs:
        if (p.name, p.version) not in seen:
            seen.add((p.name, p.version))
            out.append(p)
    return out
