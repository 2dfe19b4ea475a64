"""Write a lab node's simulated hardware: its /sys tree, GPU state, kernel log, tools."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sysconfig
from pathlib import Path
from typing import Any

from provisioner.lab.netrepo import (
    DEBIAN_ARCHIVE_IN_NODE,
    DEBIAN_KEYRING,
    DEBIAN_SUITE,
    cached_debian_archive,
)
from provisioner.lab.os_images import os_files
from provisioner.lab.packages import fabricmanager_files
from provisioner.lab.profiles import get_profile

STANDIN_SMI = Path(__file__).with_name("standin_smi.py")
DMESG = """#!/bin/sh
# gpuctl lab stand-in dmesg: the node's own kernel log, not the host's. With the
# kernel-log-unreadable fault it fails as util-linux's dmesg does for a user that
# kernel.dmesg_restrict keeps out.
if [ -e /etc/gpuctl-lab/kmsg-unreadable ]; then
    echo "dmesg: read kernel buffer failed: Operation not permitted" >&2
    exit 1
fi
cat /etc/gpuctl-lab/kmsg 2>/dev/null
"""
NO_JOURNAL = """#!/bin/sh
echo "No journal files were found." >&2
echo "-- No entries --"
"""
# A booted kernel's log is never empty: its first lines, as every kernel prints them.
BOOT_LOG = ("Linux version {release} (gpuctl lab node)",
            "Command line: BOOT_IMAGE=/boot/vmlinuz-{release} root=/dev/sda1 ro quiet")
GEN_SPEED = {1: "2.5 GT/s PCIe", 2: "5.0 GT/s PCIe", 3: "8.0 GT/s PCIe", 4: "16.0 GT/s PCIe",
             5: "32.0 GT/s PCIe", 6: "64.0 GT/s PCIe"}


def _cpus_by_socket() -> list[str]:
    """This host's processors per CPU socket (in physical id order), each as sysfs
    writes a cpulist ("0-27,56-83"): a lab GPU is local to the CPUs of one socket, as
    a real GPU's /sys/bus/pci/devices/*/local_cpulist is to its NUMA node's."""
    sockets: dict[str, list[int]] = {}
    proc = None
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "processor":
            proc = int(value)
        elif key.strip() == "physical id" and proc is not None:
            sockets.setdefault(value.strip(), []).append(proc)
    out = []
    for key in sorted(sockets, key=lambda k: (len(k), k)):
        ranges: list[list[int]] = []
        for cpu in sorted(sockets[key]):
            if ranges and ranges[-1][1] == cpu - 1:
                ranges[-1][1] = cpu
            else:
                ranges.append([cpu, cpu])
        out.append(",".join(f"{a}-{b}" if b > a else f"{a}" for a, b in ranges))
    return out or [f"0-{(os.cpu_count() or 1) - 1}"]


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def render_sysfs(sys_dir: Path, spec: dict[str, Any],
                 modules: dict[str, str | None] | None = None) -> None:
    """(Re)build the node's simulated /sys from its spec (bind-mounted into the node).

    ``modules`` (at boot) says which kernel modules are loaded; without it the loaded
    modules are kept as they are, as on a running machine.
    """
    # The directory itself is bind-mounted into the running node: empty it, keep it.
    sys_dir.mkdir(parents=True, exist_ok=True)
    for child in sys_dir.iterdir():
        if child.name == "module" and modules is None or child.name == "fs":
            continue  # fs/cgroup: this machine's cgroup tree, bound in (node_init)
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    if modules is not None:
        (sys_dir / "module").mkdir(parents=True, exist_ok=True)
        if modules.get("nouveau"):
            _write(sys_dir / "module/nouveau/initstate", "live\n")
        if modules.get("nvidia"):
            _write(sys_dir / "module/nvidia/version", f"{modules['nvidia']}\n")
            _write(sys_dir / "module/nvidia/taint", f"{modules.get('nvidia_taint', '')}\n")
        for name in str(modules.get("others") or "").split():
            _write(sys_dir / f"module/{name}/initstate", "live\n")
    profile = get_profile(spec["profile"])
    dmi = sys_dir / "class/dmi/id"
    for key, value in {"sys_vendor": profile.system_vendor,
                       "product_name": profile.system_product,
                       "product_serial": spec["system_serial"], "board_vendor":
                       profile.system_vendor, "bios_version": BIOS_VERSION,
                       "chassis_serial": spec["system_serial"]}.items():
        _write(dmi / key, value + "\n")
    local_cpus = _cpus_by_socket()
    for i, gpu in enumerate(spec["gpus"]):
        dev = sys_dir / "bus/pci/devices" / gpu["bus_id"].lower()
        # GPUs 0-3 on the first socket, 4-7 on the second (where the host has one).
        numa = min(i * 2 // 8, len(local_cpus) - 1)
        for key, value in {
            "vendor": "0x10de", "device": gpu["device_id"], "class": "0x030200",
            "current_link_speed": GEN_SPEED[gpu["pcie_gen_current"]],
            "max_link_speed": GEN_SPEED[gpu["pcie_gen_max"]],
            "current_link_width": str(gpu["pcie_width_current"]),
            "max_link_width": str(gpu["pcie_width_max"]), "numa_node": str(numa),
            "local_cpulist": local_cpus[numa],
        }.items():
            _write(dev / key, value + "\n")
    for bus in profile.nvswitches:
        dev = sys_dir / "bus/pci/devices" / bus
        for key, value in {"vendor": "0x10de", "device": profile.nvswitch_device,
                           "class": "0x068000"}.items():
            _write(dev / key, value + "\n")
    nets = [("eno1", "1", 100000, "up"), ("eno2", "1", 100000, "down")]
    nets += [(f"ibp{i}s0", "32", profile.ib_rate_gbps * 1000, "up")
             for i in range(profile.ib_ports)]
    for i, (name, dtype, speed, state) in enumerate(nets):
        base = sys_dir / "class/net" / name
        _write(base / "type", dtype + "\n")
        _write(base / "speed", f"{speed}\n")
        _write(base / "operstate", state + "\n")
        _write(base / "address", f"0c:42:a1:{i:02x}:{spec['index']:02x}:01\n")
    for i in range(profile.ib_ports):
        port = sys_dir / f"class/infiniband/mlx5_{i}/ports/1"
        down = f"ib-port-down:{i}" in spec["faults"]
        _write(port / "state", "1: DOWN\n" if down else "4: ACTIVE\n")
        _write(port / "phys_state", "3: Disabled\n" if down else "5: LinkUp\n")
        _write(port / "rate", f"{profile.ib_rate_gbps} Gb/sec (4X NDR)\n")
        _write(port / "link_layer", "InfiniBand\n")
    for k in range(profile.nvlink5_mgmt_ports):
        # PCI VPD is binary; the read-only keywords carry the part's identity.
        dev = sys_dir / f"class/infiniband/mlx5_{profile.ib_ports + k}"
        _write(dev / "device/vpd", "\x82\x10NVIDIA ConnectX-7\x90\x0cPN:SW_MNG_CX7\x78")
        # infiniband sysfs node_guid: four groups of four hex digits.
        _write(dev / "node_guid", f"0c42:a103:00{spec['index']:02x}:{k:04x}\n")
    (sys_dir / "block").mkdir(parents=True, exist_ok=True)
    nvme = sys_dir / "block/nvme0n1"
    _write(nvme / "size", "7501476528\n")
    _write(nvme / "device/model", "SAMSUNG MZQL23T8HCLS-00A07\n")
    _write(nvme / "device/serial", f"S64H{spec['index']:06d}\n")
    _write(nvme / "queue/rotational", "0\n")
    (sys_dir / "firmware/efi/efivars").mkdir(parents=True, exist_ok=True)
    (sys_dir / "firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-e9ffa4da5dbe") \
        .write_bytes(b"\x06\x00\x00\x00\x00")


SHUTDOWN = """#!/bin/sh
# gpuctl lab stand-in shutdown/reboot: ask the node's PID 1 to reboot the node.
case " $* " in
  *" -c "*) exit 0 ;;
esac
# PID 1 reboots the node a moment after this signal, so this command returns first.
kill -USR1 1
echo "Reboot scheduled"
"""
INIT = """#!/bin/sh
# gpuctl lab stand-in: the node's PID 1 is provisioner/lab/node_init.py (sysvinit-like).
echo "init: this lab node's init is gpuctl's; it cannot be started again" >&2
exit 1
"""
UPDATE_INITRAMFS = """#!/bin/sh
# gpuctl lab stand-in: the lab boots no initramfs; record that it was rebuilt.
mkdir -p /var/lib/gpuctl-lab && date +%s > /var/lib/gpuctl-lab/initramfs-updated
echo "update-initramfs: Generating /boot/initrd.img-$(uname -r)"
"""
# The firmware the simulated machines run (DMI and their BMC say the same).
BIOS_VERSION = "2.1.0"
# Faults that act on the agent's computation (one per node).
COMPUTE_FAULTS = ("sdc", "sdc-persistent", "slow-gpu", "slow-node", "xid", "gpu-lost",
                  "gpu-hung", "nvswitch-sxid", "nic-down")
# Burn-in faults act on the node's Python environment, as faulty silicon would act on the
# computation: the agent's code is the same as on a healthy node.
COMPUTE_FAULT = """# gpuctl lab fault {kind}: this node's matrix products misbehave.
import builtins
import sys

_real_import = builtins.__import__


def _hook(name, *args, **kwargs):
    module = _real_import(name, *args, **kwargs)
    dist = sys.modules.get("torch.distributed")
    if ("{kind}" == "nic-down" and dist is not None and hasattr(dist, "all_reduce")
            and not getattr(dist, "_gpuctl_lab", 0)
            and "TORCHELASTIC_RUN_ID" in sys.modules["os"].environ):
        # The node's fabric NIC is down: collectives with other nodes (torchrun's) fail;
        # its own GPUs still talk to each other.
        dist._gpuctl_lab = 1

        def all_reduce(*a, **k):
            raise RuntimeError("Connection refused")

        dist.all_reduce = all_reduce
    torch = sys.modules.get("torch")
    ready = torch is not None and not getattr(torch.__spec__, "_initializing", True)
    if ready and not getattr(torch, "_gpuctl_lab", 0):
        torch._gpuctl_lab = 1
        import itertools, os, threading, time

        real, calls = torch.matmul, itertools.count(1)

        def log(line):
            with open("/etc/gpuctl-lab/kmsg", "a") as fh:
                fh.write("[%.6f] %s\\n" % (time.monotonic() + 5000, line))

        def matmul(a, b, out=None):
            # The agent names each GPU's thread gpuctl-gpu<N> (CPU devices stand for GPUs).
            gpu = threading.current_thread().name
            n = next(calls)  # this call's number, atomically (the GPUs' threads race)
            if "{kind}" == "gpu-lost" and gpu == "gpuctl-gpu{lost}":
                # GPU 1 (lab/faults.py logs its XID) is off the bus: every CUDA call
                # on it fails, and the first one makes the driver log XID 79 again.
                if not getattr(torch, "_gpuctl_lost", 0):
                    torch._gpuctl_lost = 1
                    log("NVRM: Xid (PCI:{bus1}): 79, pid=%d, name=python3, GPU has fallen "
                        "off the bus." % os.getpid())
                raise RuntimeError("CUDA error: unspecified launch failure")
            if "{kind}" == "gpu-hung" and gpu == "gpuctl-gpu2" and n > 8:
                # GPU 2 hangs mid-test: the call never returns, as a CUDA call waiting on
                # work a hung GPU never completes. nvidia-smi still answers here (on real
                # hardware it may hang too: the agent bounds its reads of it as well).
                threading.Event().wait()
            result = real(a, b, out=out)
            if "{kind}" == "xid" and n == 1:
                # The GPU falls off the bus under load: the driver logs a new XID.
                log("NVRM: Xid (PCI:{bus}): 79, pid=%d, name=python3, GPU has fallen off "
                    "the bus." % os.getpid())
            if "{kind}" == "nvswitch-sxid" and n == 1:
                # An NVSwitch reports a link error while the GPUs talk through it.
                log("nvidia-nvswitch0: SXid (PCI:{switch}): 12028, Non-fatal, Link 32 egress "
                    "non-posted PRIV error (First)")
            if "{kind}" == "sdc" and n % 3 == 0:
                result.view(-1)[7] += 1.0
            if "{kind}" == "sdc-persistent":
                # Every product on every GPU of the node, the same last bit of the same
                # element: the GPUs agree with each other and with themselves.
                result.view(-1)[:2].view(torch.int16)[0] ^= 1
            # The slow faults below do extra work, busy: the agent times a CPU device by
            # its thread's CPU time (agent._DeviceClock), which a sleep would not slow.
            if "{kind}" == "slow-gpu" and gpu == "gpuctl-gpu0":
                # Busy, not sleeping: GPU 0 does every product twice (half speed) and
                # takes its share of the machine, as a slow part would.
                real(a, b)
            if "{kind}" == "slow-node":
                # Every GPU alike at an eighth of the speed, busy: the node's GPUs agree
                # with each other, so only the other nodes of the run show it is slow.
                for _ in range(7):
                    real(a, b)
            return result

        torch.matmul = matmul
    return module


builtins.__import__ = _hook
"""
# What the node's kernel could load with modprobe: the stand-in loads those (into the
# node's simulated /sys, never into this machine's kernel) and fails on the rest as
# kmod's modprobe does. nvidia loads from what the driver package installed (its
# driver.json stands for the DKMS-built nvidia.ko), as the kernel would load it:
# - already loaded: nothing happens, whatever version is on disk (modprobe(8));
# - no GPU it can take (nouveau holds them, or none): the module's init fails with
#   -ENODEV after "NVRM: No NVIDIA devices probed." (NVIDIA/open-gpu-kernel-modules
#   kernel-open/nvidia/nv.c), which modprobe reports as "could not insert 'nvidia':
#   No such device";
# - else loaded, with its version and licence taint, and nvidia-modprobe's device
#   files (devices.txt: char 195:N, nvidiactl 195:255), one per NVIDIA display/3D
#   controller on the bus.
MODPROBE = """#!/bin/sh
# gpuctl lab stand-in modprobe
kmsg() { echo "[$(cut -d' ' -f1 /proc/uptime)] $1" >> /etc/gpuctl-lab/kmsg; }
load_nvidia() {
  [ -d /sys/module/nvidia ] && return 0
  json=/usr/share/gpuctl-lab/driver.json
  if [ ! -f $json ]; then
    echo "modprobe: FATAL: Module nvidia not found in directory /lib/modules/$(uname -r)" >&2
    return 1
  fi
  gpus=""
  for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor" 2>/dev/null)" = 0x10de ] || continue
    case "$(cat "$d/class" 2>/dev/null)" in 0x0300*|0x0302*) gpus="$gpus ${d##*/}" ;; esac
  done
  if [ -z "$gpus" ] || [ -d /sys/module/nouveau ]; then
    for g in $gpus; do kmsg "NVRM: GPU $g is already bound to nouveau."; done
    kmsg "NVRM: No NVIDIA devices probed."
    echo "modprobe: ERROR: could not insert 'nvidia': No such device" >&2
    return 1
  fi
  mkdir -p /sys/module/nvidia
  echo "$(sed -n 's/.*"version": *"\\([^"]*\\)".*/\\1/p' $json)" > /sys/module/nvidia/version
  if grep -q '"flavor": *"open"' $json; then echo OE; else echo POE; fi \\
    > /sys/module/nvidia/taint
  i=0
  for g in $gpus; do
    [ -e /dev/nvidia$i ] || mknod -m 666 /dev/nvidia$i c 195 $i
    i=$((i + 1))
  done
  [ -e /dev/nvidiactl ] || mknod -m 666 /dev/nvidiactl c 195 255
}
for m in "$@"; do case "$m" in -*) continue ;; esac
  if [ "$m" = nvidia ]; then
    load_nvidia || exit 1
  elif grep -qx "$m" /etc/gpuctl-lab/modules-available 2>/dev/null; then
    mkdir -p "/sys/module/$m" && echo live > "/sys/module/$m/initstate"
  else
    echo "modprobe: FATAL: Module $m not found in directory /lib/modules/$(uname -r)" >&2
    exit 1
  fi
done
"""
UNSUPPORTED_OS = """PRETTY_NAME="Fedora Linux 40 (Server Edition)"
NAME="Fedora Linux"
VERSION_ID=40
ID=fedora
"""


def available_modules(spec: dict[str, Any]) -> list[str]:
    """Modules the node's hardware has drivers for, beyond the GPU's: its ConnectX NICs."""
    profile = get_profile(spec["profile"])
    return ["mlx5_core", "mlx5_ib", "ib_umad", "ib_uverbs"] \
        if profile.ib_ports or profile.nvlink5_mgmt_ports else []


def driver_json(spec: dict[str, Any]) -> bytes:
    """What a preinstalled driver package would have written (``lab up --driver``)."""
    profile = get_profile(spec["profile"])
    return json.dumps({"version": spec.get("driver_version") or profile.driver_version,
                       "cuda": spec.get("cuda_version") or profile.cuda_version,
                       "flavor": "open", "branch": profile.driver_version.split(".")[0]}
                      ).encode()


def node_files(spec: dict[str, Any]) -> dict[str, tuple[bytes, int]]:
    """Files the node must have under its root: path -> (content, mode)."""
    profile = get_profile(spec["profile"])
    state = {
        "gpus": spec["gpus"], "nvswitch": profile.nvswitch, "ib_ports": profile.ib_ports,
        "faults": spec["faults"], "garbage": "garbage-output" in spec["faults"],
        "replay_xml": "/etc/gpuctl-lab/replay.xml" if spec.get("smi_xml") else None,
    }
    files: dict[str, tuple[bytes, int]] = {
        "/etc/gpuctl-lab/gpus.json": (json.dumps(state, indent=1).encode(), 0o644),
        "/etc/gpuctl-lab/kmsg": (("".join(
            f"[    0.00000{i}] {line.format(release=platform.release())}\n"
            for i, line in enumerate(BOOT_LOG)) + "".join(
            f"[{1000 + i * 7}.123456] {line}\n" for i, line in enumerate(spec["kmsg"])
        )).encode(), 0o644),
        "/usr/bin/dmesg": (DMESG.encode(), 0o755),
        "/etc/machine-id": (spec["machine_id"].encode() + b"\n", 0o444),
        "/var/lib/dbus/machine-id": (spec["machine_id"].encode() + b"\n", 0o444),
        "/usr/sbin/shutdown": (SHUTDOWN.encode(), 0o755),
        "/usr/sbin/reboot": (SHUTDOWN.encode(), 0o755),
        # PID 1 is the lab's own init, which starts the enabled /etc/init.d services at
        # boot as sysvinit does. Without this, /sbin/init stays this machine's link to
        # systemd, Ansible takes the node for an offline systemd host, and its service
        # module starts nothing (the playbooks would "start" fabric manager for nothing).
        "/usr/sbin/init": (INIT.encode(), 0o755),
        "/usr/sbin/update-initramfs": (UPDATE_INITRAMFS.encode(), 0o755),
        "/usr/sbin/modprobe": (MODPROBE.encode(), 0o755),
        "/etc/gpuctl-lab/modules-available": ("".join(
            f"{m}\n" for m in available_modules(spec)).encode(), 0o644),
        **os_files(spec.get("os", "ubuntu22.04")),
    }
    # The node's apt sees only the repository the playbooks configure (the lab's mirror):
    # lab nodes must never fetch from the Internet.
    for sources in ("/etc/apt/sources.list", "/etc/apt/sources.list.d/debian.sources"):
        if os.path.exists(sources):
            files[sources] = (b"# emptied by gpuctl lab: nodes use only the lab mirror\n",
                              0o644)
    if spec.get("os") == "debian12":
        # Debian's own archive, the lab's stand-in (netrepo.build_debian_archive), as a
        # Debian 12 install names it: deb822, main only, signed by Debian's keyring.
        key = cached_debian_archive() / "keyring.gpg"
        files["/etc/apt/sources.list.d/debian.sources"] = (
            f"Types: deb\nURIs: file:{DEBIAN_ARCHIVE_IN_NODE}\nSuites: {DEBIAN_SUITE}\n"
            f"Components: main\nSigned-By: {DEBIAN_KEYRING}\n".encode(), 0o644)
        files[DEBIAN_KEYRING] = (key.read_bytes(), 0o644)
    for kind in COMPUTE_FAULTS:
        if kind in spec["faults"] and spec["gpus"]:
            site = sysconfig.get_paths()["purelib"]  # the environment the agent runs in
            gpus = spec["gpus"]
            switches = get_profile(spec["profile"]).nvswitches or ("0000:05:00.0",)
            files[f"{site}/sitecustomize.py"] = (COMPUTE_FAULT.format(
                kind=kind, bus=gpus[0]["bus_id"].lower()[:-2],
                bus1=gpus[min(1, len(gpus) - 1)]["bus_id"].lower()[:-2],
                lost=min(1, len(gpus) - 1),  # GPU 1, or a one-GPU node's only one
                switch=switches[0]).encode(), 0o644)
            break
    if "kernel-log-unreadable" in spec["faults"]:
        files["/etc/gpuctl-lab/kmsg-unreadable"] = (b"", 0o644)
        # And no journal to fall back on, as on a host without a persistent journal:
        # what systemd's journalctl prints there (and exits 0).
        files["/usr/bin/journalctl"] = (NO_JOURNAL.encode(), 0o755)
    if "unsupported-os" in spec["faults"]:
        for path in ("/etc/redhat-release", "/etc/lsb-release"):
            files.pop(path, None)
        files["/etc/os-release"] = (UNSUPPORTED_OS.encode(), 0o644)
    if spec.get("smi_xml"):
        files["/etc/gpuctl-lab/replay.xml"] = (Path(spec["smi_xml"]).read_bytes(), 0o644)
    if spec["driver"] and spec["gpus"]:
        files["/usr/bin/nvidia-smi"] = (STANDIN_SMI.read_bytes(), 0o755)
        if get_profile(spec["profile"]).nvswitch:
            # As a vendor image with the driver has it on NVSwitch systems: the fabric
            # manager of the same version, enabled (a copy in rc2.d: init starts it).
            version = json.loads(driver_json(spec))["version"]
            service = fabricmanager_files(version)
            files.update(service)
            files["/etc/rc2.d/S01nvidia-fabricmanager"] = \
                service["/etc/init.d/nvidia-fabricmanager"]
        files["/usr/share/gpuctl-lab/driver.json"] = (driver_json(spec), 0o644)
    return files
