"""gpuctl node probe: runs ON the node, Python 3 standard library only.

Sent over one SSH exec as ``python3 -``; prints one JSON document on stdout. It reads
/sys and /proc first and runs tools second (nvidia-smi, dmesg), each output capped;
it never installs or changes anything. The control host treats what it prints as
untrusted input.
"""

import glob
import json
import os
import platform
import socket
import subprocess
import sys
import time

PROBE_VERSION = 1
TOOL_CAP = 8 * 1024 * 1024
TOOL_TIMEOUT = 60
SECURE_BOOT = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-e9ffa4da5dbe"
GT_TO_GEN = {"2.5": 1, "5.0": 2, "5": 2, "8.0": 3, "8": 3, "16.0": 4, "16": 4, "32.0": 5,
             "32": 5, "64.0": 6, "64": 6}
errors = []  # type: list[str]


def read(path, cap=65536):
    try:
        with open(path, "rb") as fh:
            return fh.read(cap).decode("utf-8", "replace").strip()
    except OSError:
        return None


def read_int(path):
    text = read(path)
    try:
        return int(text, 0) if text is not None else None
    except ValueError:
        return None


def run_tool(argv):
    """Run a tool; return (exit code, stdout bytes capped at TOOL_CAP) or (None, None)."""
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL)
    except OSError:
        return None, None
    chunks, total, deadline = [], 0, time.monotonic() + TOOL_TIMEOUT
    assert proc.stdout is not None
    truncated = False
    while time.monotonic() < deadline:
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if total > TOOL_CAP:
            truncated = True
            break
    if truncated or time.monotonic() >= deadline:
        proc.kill()
        proc.wait()
        errors.append("%s output %s; discarded" % (
            argv[0], "exceeded %d bytes" % TOOL_CAP if truncated else "timed out"))
        return proc.returncode, None
    return proc.wait(), b"".join(chunks)


def os_release():
    info = {}
    text = read("/etc/os-release") or ""
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            info[key] = value.strip().strip('"')
    return {"id": info.get("ID"), "version_id": info.get("VERSION_ID"),
            "pretty_name": info.get("PRETTY_NAME")}


def dmi():
    base = "/sys/class/dmi/id/"
    keys = ["sys_vendor", "product_name", "product_serial", "board_vendor", "board_name",
            "bios_version", "chassis_serial"]
    return {k: read(base + k) for k in keys}


def cpu():
    text = read("/proc/cpuinfo", 4 * 1024 * 1024) or ""
    model, sockets, cores, threads = None, set(), set(), 0
    phys = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "processor":
            threads += 1
        elif key == "model name" and model is None:
            model = value
        elif key == "physical id":
            phys = value
            sockets.add(value)
        elif key == "core id":
            cores.add((phys, value))
    return {"model": model, "sockets": len(sockets) or 1, "cores": len(cores) or threads,
            "threads": threads}


def memory_bytes():
    for line in (read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return None


def disks():
    out = []
    for dev in sorted(glob.glob("/sys/block/*")):
        name = os.path.basename(dev)
        if name.startswith(("loop", "ram", "zram", "dm-", "md", "sr", "nbd")):
            continue
        sectors = read_int(dev + "/size")
        out.append({"name": name, "size_bytes": sectors * 512 if sectors is not None else None,
                    "model": read(dev + "/device/model"), "serial": read(dev + "/device/serial"),
                    "rotational": read(dev + "/queue/rotational") == "1"})
    return out


def nics():
    out = []
    for dev in sorted(glob.glob("/sys/class/net/*")):
        name = os.path.basename(dev)
        if name == "lo":
            continue
        kind = "infiniband" if read(dev + "/type") == "32" else "ethernet"
        speed = read_int(dev + "/speed")
        out.append({"name": name, "kind": kind, "mac": read(dev + "/address"),
                    "speed_mbps": speed if speed and speed > 0 else None,
                    "state": read(dev + "/operstate")})
    return out


def ib_ports():
    out = []
    for port in sorted(glob.glob("/sys/class/infiniband/*/ports/*")):
        device = port.split("/")[4]
        rate = read(port + "/rate") or ""
        try:
            rate_gbps = float(rate.split()[0])
        except (ValueError, IndexError):
            rate_gbps = None
        state = (read(port + "/state") or "").split(":")[-1].strip() or None
        phys = (read(port + "/phys_state") or "").split(":")[-1].strip() or None
        out.append({"device": device, "port": int(os.path.basename(port)), "state": state,
                    "phys_state": phys, "rate_gbps": rate_gbps,
                    "link_layer": read(port + "/link_layer")})
    return out


def link_gen(text):
    if not text:
        return None
    return GT_TO_GEN.get(text.split()[0])


def cpu_packages():
    """Processor number -> physical package (socket) id, from /proc/cpuinfo."""
    text = read("/proc/cpuinfo", 4 * 1024 * 1024) or ""
    out, proc = {}, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "processor":
            proc = value
        elif key == "physical id" and proc is not None:
            out[proc] = value
    return out


def cpulist(text):
    """Linux's cpulist format ("0-27,56-83") -> processor numbers (as strings); none at
    all when any part of it is not that format."""
    out = set()
    for part in (text or "").split(","):
        low, dash, high = part.strip().partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            return set()
        first, last = int(low), int(high or low)
        out.update(str(i) for i in range(first, min(last, first + 65536) + 1))
    return out


def device_socket(dev, packages):
    """The CPU socket a PCI device is local to (its local_cpulist), as Slurm and hwloc
    count sockets: the logical index in physical id order. None when its CPUs span
    sockets or are not known."""
    order = sorted(set(packages.values()), key=lambda p: (len(p), p))
    found = {packages[c] for c in cpulist(read(dev + "/local_cpulist")) if c in packages}
    return order.index(found.pop()) if len(found) == 1 else None


def pci_gpus():
    out = []
    packages = cpu_packages()
    for dev in sorted(glob.glob("/sys/bus/pci/devices/*")):
        if read(dev + "/vendor") != "0x10de":
            continue
        cls = read(dev + "/class") or ""
        if not cls.startswith(("0x0300", "0x0302")):
            continue
        driver = os.path.basename(os.path.realpath(dev + "/driver")) \
            if os.path.exists(dev + "/driver") else None
        out.append({
            "bus_id": os.path.basename(dev), "device_id": read(dev + "/device"),
            "driver": driver,
            "link_gen_current": link_gen(read(dev + "/current_link_speed")),
            "link_gen_max": link_gen(read(dev + "/max_link_speed")),
            "link_width_current": read_int(dev + "/current_link_width"),
            "link_width_max": read_int(dev + "/max_link_width"),
            "numa_node": read_int(dev + "/numa_node"),
            "socket": device_socket(dev, packages),
        })
    return out


def secure_boot():
    if not os.path.isdir("/sys/firmware/efi"):
        return "legacy-bios"
    try:
        with open(SECURE_BOOT, "rb") as fh:
            data = fh.read(8)
    except OSError:
        return "unknown"
    return "enabled" if len(data) >= 5 and data[4] == 1 else "disabled"


def nvidia_smi():
    code, data = run_tool(["nvidia-smi", "-q", "-x"])
    if code is None and data is None:
        return {"available": False, "xml": None, "exit_code": None}
    text = data.decode("utf-8", "replace") if data is not None else None
    return {"available": True, "xml": text, "exit_code": code}


def nvlink_lines():
    """``nvidia-smi nvlink --status``: its GPU and Link lines, parsed on the control host
    (None without nvidia-smi, or when it fails)."""
    code, data = run_tool(["nvidia-smi", "nvlink", "--status"])
    if code != 0 or data is None:
        return None
    lines = [line.strip()[:200] for line in data.decode("utf-8", "replace").splitlines()]
    return [line for line in lines if line.startswith(("GPU ", "Link "))][:4096]


def xid_lines():
    code, data = run_tool(["dmesg"])
    if not data:
        return []
    lines = [ln for ln in data.decode("utf-8", "replace").splitlines() if "NVRM: Xid" in ln]
    return lines[-200:]


def nvml():
    try:
        import pynvml  # noqa: PLC0415  (optional on the node)
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
            count = pynvml.nvmlDeviceGetCount()
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # NVML raises its own error types per failure
        return {"error": str(exc)[:200]}
    if isinstance(version, bytes):
        version = version.decode()
    return {"driver_version": version, "device_count": count}


def main():
    doc = {
        "probe": "python",
        "probe_version": PROBE_VERSION,
        "hostname": socket.gethostname(),
        "kernel": platform.release(),
        "os": os_release(),
        "dmi": dmi(),
        "cpu": cpu(),
        "memory_bytes": memory_bytes(),
        "disks": disks(),
        "nics": nics(),
        "ib_ports": ib_ports(),
        "pci_gpus": pci_gpus(),
        "nouveau_loaded": os.path.isdir("/sys/module/nouveau"),
        "nvidia_module_loaded": os.path.isdir("/sys/module/nvidia"),
        "nvidia_module_version": read("/sys/module/nvidia/version"),
        "secure_boot": secure_boot(),
        "smi": nvidia_smi(),
        "nvlink_lines": nvlink_lines(),
        "xid_lines": xid_lines(),
        "nvml": nvml(),
    }
    doc["errors"] = errors
    json.dump(doc, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
