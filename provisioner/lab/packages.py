"""The lab's stand-in NVIDIA packages, named as NVIDIA's own repositories name them.

Each lab OS gets the names its real repository uses, aliases included, so that a
playbook that asks for a wrong name fails in the lab as it would on a real node. The
naming is written here independently of the playbooks' table
(playbooks/vars/nvidia_packages.yml), from the same sources:

- Ubuntu (NVIDIA's CUDA repository, ubuntu2204/ubuntu2404): the driver is
  ``nvidia-driver-<branch>[-open]``. Fabric manager and NSCQ carry the branch up to 575
  (``nvidia-fabricmanager-570``, ``libnvidia-nscq-570``); from 580 they are
  ``nvidia-fabricmanager`` and ``libnvidia-nscq`` (NVIDIA/gpu-driver-container, commit
  dc7857e "Fix: precompiled R580 package install error" and 78fa4ac:
  ``nvidia-fabricmanager=${DRIVER_VERSION}-1`` from 580,
  ``nvidia-fabricmanager-${DRIVER_BRANCH}`` before; ``libnvsdm`` likewise). No source
  says NVIDIA's 580 packages also provide the suffixed names, so the stand-ins do not
  (Canonical's own archive has a real ``nvidia-fabricmanager-580``: another origin).
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
# branch -> (the releases the lab's repository carries, oldest first; the highest CUDA
# version the driver supports). Two releases per branch, so that a package installed at
# "the branch" rather than at the driver's exact version gets the wrong one. Release
# names from NVIDIA/gpu-driver-container's CI version lists: 550.144.03 and 570.124.06
# (b867541), 550.163.01 (dd8ada0), 570.86.15 (17e3860), 575.57.08 (53214bf; the only
# 575 release at hand), 580.65.06 (78fa4ac), 580.82.07 (2a97658).
DRIVERS = {"550": (("550.144.03", "550.163.01"), "12.4"),
           "570": (("570.86.15", "570.124.06"), "12.8"),
           "575": (("575.57.08",), "12.9"),
           "580": (("580.65.06", "580.82.07"), "13.0")}
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
# An init script that runs what systemd would run: the unit's ExecStart=, overridden by
# the last ExecStart= of a drop-in (systemd.unit(5): an empty ExecStart= resets the
# list), program and arguments; a program that is not there fails the start, as
# systemd's status=203/EXEC. Lab nodes run no systemd; their sysvinit-like init runs
# this, so a drop-in changes what the daemon does here as it would there. A service
# without a unit runs its daemon.
# The lab's init scripts start alike: an LSB header, and `lines KEY`, the unit's KEY=
# lines and then its drop-ins' (systemd reads them in that order).
INIT_HEAD = """#!/bin/sh
### BEGIN INIT INFO
# Provides:          {name}
# Required-Start:    $remote_fs
# Required-Stop:     $remote_fs
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: {name} (gpuctl lab stand-in)
### END INIT INFO
lines() {{
  cat /lib/systemd/system/{name}.service /etc/systemd/system/{name}.service.d/*.conf \\
    2>/dev/null | grep "^$1=."
}}
"""
INIT_SCRIPT = INIT_HEAD + """PIDFILE=/run/{name}.pid
case "$1" in
  start)
    cmd=$(lines ExecStart | tail -n 1)
    set -- ${{cmd#ExecStart=}}
    [ $# -gt 0 ] || set -- {daemon}
    if [ ! -x "$1" ]; then
      echo "{name}: $1: No such file or directory (status=203/EXEC)" >&2
      exit 1
    fi
    program=$1; shift
    start-stop-daemon --start --quiet --oknodo --background --make-pidfile \\
      --pidfile "$PIDFILE" --startas "$program" -- "$@" ;;
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
# The persistence daemon's unit as Ubuntu's packaging ships it
# (canonical/nvidia-graphics-drivers, debian/templates/nvidia-compute-utils-flavour.
# nvidia-persistenced.service.in, the same on 570-server, 580-server and 580): persistence
# mode off until an admin turns it on (NVIDIA/ansible-role-nvidia-driver's
# files/nvidia-persistenced-override.conf replaces this ExecStart with
# --persistence-mode), and static: no [Install]; a udev rule starts it when the driver
# binds (debian/71-nvidia.rules, SYSTEMD_WANTS). That NVIDIA's CUDA repository builds its
# Ubuntu packages from this packaging is a guess (their versions, -0ubuntu1, suggest it).
PERSISTENCED_UNIT = """[Unit]
Description=NVIDIA Persistence Daemon
Wants=syslog.target
StopWhenUnneeded=true

[Service]
Type=forking
ExecStart=/usr/bin/nvidia-persistenced --user nvidia-persistenced --no-persistence-mode --verbose
ExecStopPost=/bin/rm -rf /var/run/nvidia-persistenced
"""
# RHEL: NVIDIA's rpm (NVIDIA/yum-packaging-nvidia-persistenced, nvidia-persistenced.service
# at 36bbbbd): the daemon in /usr/sbin (its spec moves %{_bindir} to %{_sbindir}), an
# [Install] section.
PERSISTENCED_UNIT_RHEL = """[Unit]
Description=NVIDIA Persistence Daemon
After=syslog.target

[Service]
Type=forking
ExecStart=/usr/sbin/nvidia-persistenced --user nvidia-persistenced
ExecStopPost=/bin/rm -rf /var/run/nvidia-persistenced/*
TimeoutSec=300

[Install]
WantedBy=multi-user.target
"""
# Debian: the daemon is a package of its own, Debian's nvidia-persistenced (contrib/utils;
# pexip/os-nvidia-persistenced debian/control, a fork of Debian's packaging), whose unit
# is NVIDIA's template (NVIDIA/nvidia-persistenced init/systemd/nvidia-persistenced.
# service.template at 502de54, __USER__ replaced by Debian's nvpd: debian/rules): an
# [Install] section, persistence mode as the daemon's default. That NVIDIA's debian12
# repository carries the same split is a guess from NVIDIA's own Debian packaging
# (NVIDIA/debian-packaging-nvidia-driver debian/control.in: nvidia-smi a package of its
# own; nvidia-persistenced only Recommended by nvidia-driver and libcuda1).
PERSISTENCED_UNIT_DEBIAN = """[Unit]
Description=NVIDIA Persistence Daemon
Wants=syslog.target
IgnoreOnIsolate=true

[Service]
Type=forking
ExecStart=/usr/bin/nvidia-persistenced --user nvpd
ExecStopPost=/bin/rm -rf /var/run/nvidia-persistenced

[Install]
WantedBy=multi-user.target
"""
# What the driver's DKMS build does on a node: build the module for the running kernel
# and install it under /lib/modules, and no more. It loads at the next boot (boot.py),
# or when something runs `modprobe nvidia` (the lab's modprobe, render.py MODPROBE).
# Nothing in the install loads it:
# - Ubuntu: canonical/nvidia-graphics-drivers debian/templates/nvidia-dkms-flavour.
#   postinst.in (03ea199) runs update-initramfs and /usr/lib/dkms/common.postinst;
# - DKMS: dell/dkms dkms_common.postinst.in (793fdab) ends in `dkms install` without
#   --modprobe-on-install, and dkms.in loads modules only with that option
#   (`modprobe_on_install`, commented out in dkms_framework.conf.in);
# - RHEL: NVIDIA/yum-packaging-dkms-nvidia dkms-open-nvidia.spec and dkms-nvidia.spec
#   (b28ed69), %post: dkms add, build, install;
# - what loads it: NVIDIA's driver container runs `modprobe nvidia`
#   (gpu-driver-container ubuntu22.04/nvidia-driver `_load_driver`, 06a208c);
#   NVIDIA/ansible-role-nvidia-driver reboots after a driver install (tasks/main.yml,
#   "reboot after driver install", f68d4a7).
BUILD = """echo "Installing /lib/modules/$(uname -r)/updates/dkms/nvidia.ko"
echo "depmod..."
"""
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
    """A dnf module stream (modulemd v2): the packages of its default profile, and
    ``extra`` ones that are the stream's but installed by name."""
    module: str
    stream: str
    packages: list[Package]
    extra: list[Package] = field(default_factory=list)


def taint(open_modules: bool) -> str:
    return "OE" if open_modules else "POE"


def service_files(name: str, daemon: str,
                  unit: str = "") -> dict[str, tuple[str | bytes, int]]:
    files: dict[str, tuple[str | bytes, int]] = {
        daemon: (DAEMON.format(check=""), 0o755),
        f"/etc/init.d/{name}": (INIT_SCRIPT.format(name=name, daemon=daemon), 0o755),
    }
    if unit:
        files[f"/lib/systemd/system/{name}.service"] = (unit, 0o644)
    return files


def newest(branch: str) -> str:
    """The branch's newest release in the lab's repository (what `<branch>.*` gets)."""
    return DRIVERS[branch][0][-1]


def driver_json(branch: str, flavor: str, version: str) -> str:
    return json.dumps({"version": version, "cuda": DRIVERS[branch][1], "flavor": flavor,
                       "branch": branch})


def userspace_files() -> dict[str, tuple[str | bytes, int]]:
    """nvidia-smi and the persistence daemon (the driver's user-space part)."""
    return {"/usr/bin/nvidia-smi": (STANDIN_SMI.read_bytes(), 0o755),
            **service_files("nvidia-persistenced", "/usr/bin/nvidia-persistenced",
                            unit=PERSISTENCED_UNIT)}


def kernel_files(branch: str, version: str,
                 open_modules: bool) -> dict[str, tuple[str | bytes, int]]:
    flavor = "open" if open_modules else "proprietary"
    return {"/usr/share/gpuctl-lab/driver.json": (driver_json(branch, flavor, version),
                                                  0o644)}


def build_script(version: str, open_modules: bool, fail: bool) -> str:
    flavor = "open" if open_modules else "proprietary"
    body = FAILED_BUILD if fail else BUILD
    return (f'echo "Building nvidia/{version} ({flavor}) for $(uname -r) with DKMS"\n'
            + body.format(version=version, taint=taint(open_modules)))


# Fabric manager's systemd unit. NVIDIA's unit text is not at hand from a primary source;
# its lines below are from what its users quote: from 570 "nvidia-fabricmanager 570+
# ships a systemd unit whose ExecStartPre invokes nvidia-fabricmanager-start.sh --mode
# precheck" (spectrocloud/CanvOS PR #700), and a `systemctl status` of it on a node
# ("Loaded: .../nvidia-fabricmanager.service; enabled", "ExecStartPre=/usr/bin/
# nvidia-fabricmanager-start.sh --mode precheck (code=exited)", "ExecStart=/usr/bin/
# nvidia-fabricmanager-start.sh --mode start (code=exited)", "Main PID: (nv-fabricmanage)":
# the script exits and the daemon runs on, hence Type=forking; "enabled": an [Install]).
# The archive ships it as systemd/nvidia-fabricmanager.service (Azure/aks-gpu
# fm_run_package_installer.sh copies it to /lib/systemd/system).
FM_UNIT = """[Unit]
Description=NVIDIA fabric manager service

[Service]
Type=forking
ExecStartPre=/usr/bin/nvidia-fabricmanager-start.sh --mode precheck
ExecStart=/usr/bin/nvidia-fabricmanager-start.sh --mode start

[Install]
WantedBy=multi-user.target
"""
FM_CONFIG = "/usr/share/nvidia/nvswitch/fabricmanager.cfg"
FM_PIDFILE = "/var/run/nvidia-fabricmanager/nv-fabricmanager.pid"
NVLSM = "/opt/nvidia/nvlsm/sbin/nvlsm"
NVLSM_CONFIG = "/usr/share/nvidia/nvlsm/nvlsm.conf"
NVLSM_PIDFILE = "/var/run/nvidia-fabricmanager/nvlsm.pid"
# The start script's interface and what it does, as NVIDIA's driver container calls it
# (NVIDIA/gpu-driver-container ubuntu22.04/nvidia-driver `_start_daemons`, from commit
# 7796e73: "Starting from driver 570.158.01, the interface for the
# nvidia-fabricmanager-start.sh script was changed", PR #383):
#   nvidia-fabricmanager-start.sh --mode start --fm-config-file FILE --fm-pid-file FILE
#     --nvlsm-config-file FILE --nvlsm-pid-file FILE
# with the paths used as defaults here. It "is used to selectively start FabricManager
# and NVLSM processes depending on the underlying platform" (FM user guide, quoted in
# siderolabs/extensions PR #717): an NVLink 5 system is one whose InfiniBand device's VPD
# says SW_MNG (the same file, `_assert_nvlink5_system`), and needs ib_umad loaded
# ('Kernel module "ib_umad" has not been loaded, fabric manager cannot be started',
# CanvOS PR #700). The command lines are those a B300 node's `systemctl status
# nvidia-fabricmanager` shows (a third-party capture, secondary): NVLSM as
# `nvlsm -F FILE -B --pid_file FILE -g GUID`, fabric manager as `nv-fabricmanager -c FILE
# -g GUID`, the GUID the management port's as `ibstat` gives it (the script fails
# without ibstat: infiniband-diags). The messages "Detected NVL5+ system"/"Detected
# Pre-NVL5 system" are the script's (CanvOS PR #700). How the real script daemonizes is
# not public: here start-stop-daemon does it.
FM_START = f"""#!/bin/sh
# nvidia-fabricmanager-start.sh (gpuctl lab stand-in)
mode=start fm_cfg={FM_CONFIG} fm_pid={FM_PIDFILE}
sm_cfg={NVLSM_CONFIG} sm_pid={NVLSM_PIDFILE}
while [ $# -gt 0 ]; do
  case "$1" in
    --mode) mode=$2 ;;
    --fm-config-file) fm_cfg=$2 ;;
    --fm-pid-file) fm_pid=$2 ;;
    --nvlsm-config-file) sm_cfg=$2 ;;
    --nvlsm-pid-file) sm_pid=$2 ;;
    *) echo "nvidia-fabricmanager-start.sh: unknown argument $1" >&2; exit 1 ;;
  esac
  shift 2
done
guid=
for dev in /sys/class/infiniband/*/device; do
  grep -q SW_MNG "$dev/vpd" 2>/dev/null || continue
  if ! command -v ibstat >/dev/null; then
    echo "ibstat not found: install infiniband-diags" >&2
    exit 1
  fi
  ca=${{dev%/device}}
  guid=$(ibstat -p "${{ca##*/}}" | head -n 1)
  break
done
if [ -z "$guid" ]; then
  echo "Detected Pre-NVL5 system"
else
  echo "Detected NVL5+ system"
  if [ ! -d /sys/module/ib_umad ]; then
    echo 'Kernel module "ib_umad" has not been loaded, fabric manager cannot be started' >&2
    exit 1
  fi
fi
[ "$mode" = precheck ] && exit 0
[ "$mode" = start ] || {{ echo "nvidia-fabricmanager-start.sh: unknown mode $mode" >&2; exit 1; }}
/usr/bin/nv-fabricmanager --check || exit 1
mkdir -p "$(dirname "$fm_pid")" "$(dirname "$sm_pid")"
if [ -n "$guid" ]; then
  start-stop-daemon --start --quiet --background --make-pidfile --pidfile "$sm_pid" \\
    --startas {NVLSM} -- -F "$sm_cfg" -B --pid_file "$sm_pid" -g "$guid" || exit 1
  set -- -g "$guid"
fi
start-stop-daemon --start --quiet --background --make-pidfile --pidfile "$fm_pid" \\
  --startas /usr/bin/nv-fabricmanager -- -c "$fm_cfg" "$@"
"""
# How the lab's init runs a Type=forking unit: ExecStartPre=, then the last ExecStart=;
# stopping ends every process the unit started, as systemd stops its control group.
FORKING_INIT = INIT_HEAD + """case "$1" in
  start)
    start-stop-daemon --status --pidfile {pidfile} && exit 0
    lines ExecStartPre | while IFS= read -r cmd; do
      ${{cmd#ExecStartPre=}} || exit 1
    done || exit 1
    cmd=$(lines ExecStart | tail -n 1)
    ${{cmd#ExecStart=}} ;;
  stop)
    for p in {pidfiles}; do
      start-stop-daemon --stop --quiet --oknodo --retry 5 --pidfile $p --remove-pidfile
    done ;;
  status) start-stop-daemon --status --pidfile {pidfile} ;;
  restart|force-reload) "$0" stop; "$0" start ;;
  *) echo "Usage: $0 {{start|stop|status|restart}}"; exit 2 ;;
esac
"""


def fabricmanager_files(version: str) -> dict[str, tuple[bytes, int]]:
    """The stand-in fabric manager of driver ``version``: its daemon, start script,
    config and unit (NVIDIA's layout), and the init script that runs the unit here."""
    files: dict[str, tuple[str | bytes, int]] = {
        "/usr/bin/nv-fabricmanager": (DAEMON.format(
            check=f'[ "$1" = --check ] && {{\n{FM_CHECK.format(version=version)}\nexit 0\n}}'),
            0o755),
        "/usr/bin/nvidia-fabricmanager-start.sh": (FM_START, 0o755),
        FM_CONFIG: ("# fabric manager configuration (gpuctl lab stand-in)\n", 0o644),
        "/lib/systemd/system/nvidia-fabricmanager.service": (FM_UNIT, 0o644),
        "/etc/init.d/nvidia-fabricmanager": (FORKING_INIT.format(
            name="nvidia-fabricmanager", pidfile=FM_PIDFILE,
            pidfiles=f"{FM_PIDFILE} {NVLSM_PIDFILE}"), 0o755)}
    return {path: (content.encode() if isinstance(content, str) else content, mode)
            for path, (content, mode) in files.items()}


def nvlsm_package() -> Package:
    """The NVLink subnet manager, unversioned (gpu-driver-container install.sh
    `nvlink5_pkgs_install`: "nvlsm infiniband-diags", no version). NVIDIA's layout: the
    binary in /opt/nvidia/nvlsm/sbin and its config in /usr/share/nvidia/nvlsm
    (siderolabs/extensions nvidia-fabricmanager production/pkg.yaml, from NVIDIA's nvlsm
    redist archive). No unit and no init script: fabric manager's start script starts it.
    The version string is a guess (none at hand)."""
    return Package("nvlsm", "2025.06.4-1", "NVLink subnet manager, lab stand-in",
                   {NVLSM: (DAEMON.format(check=""), 0o755),
                    NVLSM_CONFIG: ("# NVLSM configuration (gpuctl lab stand-in)\n", 0o644)})


def versioned(base: str, branch: str, version: str) -> Package:
    """A library that follows the driver: ``<base>-<branch>`` up to 575, ``<base>`` from
    580 (see the module docstring)."""
    name = base if int(branch) >= 580 else f"{base}-{branch}"
    return Package(name, f"{version}-1", f"{base} {version}, lab stand-in",
                   {f"/usr/share/gpuctl-lab/{name}": (version, 0o644)})


def fabricmanager_packages(family: str, branch: str, version: str) -> list[Package]:
    """Fabric manager and NSCQ of driver ``version``; NVSDM (NVLink 5) from 570."""
    new = int(branch) >= 580
    if family == "rhel":
        fm = "nvidia-fabricmanager" if new else "nvidia-fabric-manager"
    else:
        fm = "nvidia-fabricmanager" if new else f"nvidia-fabricmanager-{branch}"
    # RHEL's nvidia-fabric-manager provides nvidia-fabricmanager-<branch> (the package
    # table's source); Ubuntu's unsuffixed 580 package provides nothing of the kind.
    alias = [f"nvidia-fabricmanager-{branch}"] if fm == "nvidia-fabric-manager" else []
    out = [Package(fm, f"{version}-1", f"NVIDIA Fabric Manager {version}, lab stand-in",
                   dict(fabricmanager_files(version)), provides=alias),
           versioned("libnvidia-nscq", branch, version)]
    if int(branch) >= 570:
        out.append(versioned("libnvsdm", branch, version))
    return out


def compute_library(branch: str, version: str) -> Package:
    """Ubuntu's libnvidia-compute-<branch> (CUDA's and NVML's libraries) at ``version``."""
    return Package(f"libnvidia-compute-{branch}", version,
                   f"NVIDIA libcompute {version}, lab stand-in",
                   {f"/usr/share/gpuctl-lab/libnvidia-compute-{branch}": (version, 0o644)})


def driver_packages(family: str, branch: str, version: str, *,
                    fail_build: bool = False) -> list[Package]:
    out: list[Package] = []
    for open_modules in (True, False):
        flavor = "open" if open_modules else "proprietary"
        build = build_script(version, open_modules, fail_build)
        kernel = kernel_files(branch, version, open_modules)
        if family == "ubuntu":
            # The metapackage depends on its libraries at its exact version
            # (canonical/nvidia-graphics-drivers debian/templates/control.in at 007b2fb:
            # "libnvidia-compute-#FLAVOUR# (= ${binary:Version})"): one stands in for all.
            name = f"nvidia-driver-{branch}" + ("-open" if open_modules else "")
            out.append(Package(
                name, f"{version}-1", f"NVIDIA driver {branch} ({flavor} modules), lab stand-in",
                {**userspace_files(), **kernel}, postinst=build,
                provides=["nvidia-kernel-driver"], conflicts=["nvidia-kernel-driver"],
                depends=[f"libnvidia-compute-{branch} (= {version}-1)"]))
        elif family == "debian":
            name = "nvidia-kernel-open-dkms" if open_modules else "nvidia-kernel-dkms"
            out.append(Package(
                name, f"{version}-1", f"NVIDIA kernel module ({flavor}), DKMS, lab stand-in",
                kernel, postinst=build,
                provides=["nvidia-kernel-driver"], conflicts=["nvidia-kernel-driver"],
                depends=[p.name for p in debian_contrib_packages()]))
        else:
            name = "kmod-nvidia-open-dkms" if open_modules else "kmod-nvidia-latest-dkms"
            out.append(Package(
                name, f"{version}-1", f"NVIDIA kernel module ({flavor}), DKMS, lab stand-in",
                kernel, postinst=build,
                provides=["nvidia-kmod"], conflicts=["nvidia-kmod"], depends=["dkms"],
                epoch="3"))
    if family == "ubuntu":
        out.append(compute_library(branch, f"{version}-1"))
    if family == "debian":
        # nvidia-driver-cuda's own dependencies are not at hand (a guess: nvidia-smi,
        # not the persistence daemon, which NVIDIA's packaging only Recommends).
        out += [Package("nvidia-smi", f"{version}-1", "NVIDIA System Management Interface, "
                        "lab stand-in", {"/usr/bin/nvidia-smi": (STANDIN_SMI.read_bytes(), 0o755)}),
                Package("nvidia-persistenced", f"{version}-1",
                        "NVIDIA persistence daemon, lab stand-in",
                        service_files("nvidia-persistenced", "/usr/bin/nvidia-persistenced",
                                      unit=PERSISTENCED_UNIT_DEBIAN)),
                Package("nvidia-driver-cuda", f"{version}-1",
                        "NVIDIA driver CUDA integration, lab stand-in",
                        {"/usr/share/gpuctl-lab/nvidia-driver-cuda": (version, 0o644)},
                        depends=[f"nvidia-smi (= {version}-1)"])]
    elif family == "rhel":
        # nvidia-persistenced is a package of its own on RHEL, which nvidia-driver-cuda
        # requires at its exact version (NVIDIA/yum-packaging-nvidia-driver
        # nvidia-driver.spec, `%package cuda`: "Requires: nvidia-persistenced =
        # %{?epoch:%{epoch}:}%{version}").
        out += [Package("nvidia-driver", f"{version}-1", "NVIDIA driver, lab stand-in",
                        {"/usr/share/gpuctl-lab/nvidia-driver": (version, 0o644)}, epoch="3"),
                Package("nvidia-persistenced", f"{version}-1",
                        "NVIDIA persistence daemon, lab stand-in",
                        service_files("nvidia-persistenced", "/usr/sbin/nvidia-persistenced",
                                      unit=PERSISTENCED_UNIT_RHEL), epoch="3"),
                Package("nvidia-driver-cuda", f"{version}-1",
                        "NVIDIA driver CUDA integration (nvidia-smi), lab stand-in",
                        {"/usr/bin/nvidia-smi": (STANDIN_SMI.read_bytes(), 0o755)}, epoch="3",
                        depends=[f"nvidia-persistenced = 3:{version}"])]
    return out


# Debian's archive (lab: netrepo.build_debian_archive). NVIDIA's Debian packaging (Debian's
# own, mirrored as NVIDIA/debian-packaging-nvidia-driver debian/control.in at 5573996)
# makes the DKMS package pre-depend on nvidia-installer-cleanup and, through
# nvidia-kernel-support, depend on nvidia-kernel-common and (nvidia-alternative)
# glx-alternative-nvidia: packages Debian keeps in contrib (packages.debian.org,
# bookworm: nvidia-installer-cleanup and nvidia-kernel-common 20220217+3~deb12u1, source
# nvidia-support; glx-alternative-nvidia 1.2.2, source glx-alternatives; all [contrib]).
# The stand-in DKMS package depends on the three directly (a Pre-Depends is a Depends to
# apt's resolver); that NVIDIA's debian12 repository carries none of them is inferred
# from NVIDIA's Debian steps enabling contrib.
def debian_contrib_packages() -> list[Package]:
    """Debian's contrib packages NVIDIA's Debian driver needs, at bookworm's versions."""
    support = "20220217+3~deb12u1"
    return [Package("nvidia-installer-cleanup", support, "cleanup after driver installation "
                    "with the nvidia-installer (Debian contrib), lab stand-in"),
            Package("nvidia-kernel-common", support, "NVIDIA binary kernel module support "
                    "files (Debian contrib), lab stand-in"),
            Package("glx-alternative-nvidia", "1.2.2", "allows the selection of NVIDIA as "
                    "GLX provider (Debian contrib), lab stand-in")]


def driver_streams(branch: str, packages: list[Package]) -> list[ModuleStream]:
    """RHEL's nvidia-driver module: one stream per kernel-module flavour, each with every
    release of the branch."""
    def named(*names: str) -> list[Package]:
        return [p for p in packages if p.name in names]
    common = ("nvidia-driver", "nvidia-driver-cuda")
    return [ModuleStream("nvidia-driver", f"{branch}-{flavour}", named(*common, kmod),
                         extra=named("nvidia-persistenced"))
            for flavour, kmod in (("open", "kmod-nvidia-open-dkms"),
                                  ("dkms", "kmod-nvidia-latest-dkms"))]


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


# ibstat(8): the CAs by name, or with -p the port GUIDs of one (here from sysfs's
# node_guid, as 0x and 16 hex digits).
IBSTAT = """#!/bin/sh
if [ "$1" = -p ]; then
  printf '0x%s\\n' "$(tr -d ':\\n' < /sys/class/infiniband/$2/node_guid)"
else
  ls /sys/class/infiniband
fi
"""


def os_packages(family: str) -> list[Package]:
    """What the OS's own repositories serve that the roles install: kernel headers and,
    on RHEL, EPEL's dkms (served from the lab's EPEL stand-in, see ``epel_packages``)."""
    release = platform.release()
    ibdiags = Package("infiniband-diags", "48.0-1", "InfiniBand diagnostic tools, lab stand-in",
                      {"/usr/sbin/ibstat": (IBSTAT, 0o755)})
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
    driver module's streams. ``fabricmanager_skew``: a mirror out of step, whose fabric
    manager packages lag the driver (none for each branch's newest release)."""
    pkgs: list[Package] = []
    streams: list[ModuleStream] = []
    for branch, (versions, _) in DRIVERS.items():
        drivers = [p for v in versions
                   for p in driver_packages(family, branch, v, fail_build=fail_driver_build)]
        if family == "rhel":
            streams += driver_streams(branch, drivers)
        pkgs += drivers
        if family != "debian":  # see the module docstring: not served for Debian here
            for v in versions[:-1] if fabricmanager_skew else versions:
                pkgs += fabricmanager_packages(family, branch, v)
    if family != "debian":
        pkgs.append(nvlsm_package())
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
