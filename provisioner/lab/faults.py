"""Faults a lab node can be given, and what each does to the simulated hardware."""

from __future__ import annotations

from typing import Any

from provisioner.errors import LabError

FAULTS = {
    "gpu-missing": "the last GPU falls off the PCI bus",
    "pcie-downgrade": "GPU 0 trains its PCIe link at x8",
    "xid": "the kernel log gets XID 79 (GPU fallen off the bus) for GPU 0, and another one "
           "when the node's GPUs are next put under load",
    "ecc-uncorrectable": "GPU 1 reports uncorrectable DRAM ECC errors",
    "row-remap-failure": "GPU 2 reports a row-remapping failure",
    "thermal-throttle": "GPU 3 runs hot with hardware thermal slowdown active",
    "unreachable": "sshd is down",
    "hostkey-changed": "the node gets a new SSH host key",
    "garbage-output": "nvidia-smi prints 50 MB of non-UTF-8 junk",
    "repo-unreachable": "the node cannot reach the package repository",
    "package-install-failure": "the driver package fails its DKMS build when installed",
    "fabricmanager-mismatch": "the repository has no fabric manager for the newest driver of "
                              "the branch (a mirror out of step)",
    "unsupported-os": "the node runs an OS the playbooks do not support (Fedora 40)",
    "sdc": "every third matrix product on the node comes out with one wrong element",
    "sdc-persistent": "every matrix product on the node has the same element wrong in "
                      "its last bit, on every GPU alike",
    "slow-gpu": "GPU 0 runs its matrix products at half speed",
    "slow-node": "every GPU of the node runs its matrix products at an eighth of the speed "
                 "(the GPUs agree with each other: only the rest of the fleet shows it)",
    "gpu-lost": "GPU 1 falls off the bus: the kernel logs XID 79 for it at once, and its "
                "CUDA calls fail from the next burn-in's first GEMM on",
    "gpu-hung": "GPU 2 hangs mid-test: its matrix product never returns (its driver tools "
                "still answer)",
    "nvswitch-sxid": "an NVSwitch logs an SXid (12028, non-fatal link error) once the GPUs "
                     "are under load",
    "nic-down": "the node's fabric NIC is down: its collectives with other nodes fail",
    "sram-correctable": "GPU 6 reports 12000 correctable SRAM ECC errors",
    "remapped-rows": "GPU 7 has 600 rows remapped for uncorrectable errors",
    "fabric-unregistered": "the GPUs never complete their NVSwitch fabric registration (as "
                           "without a running fabric manager)",
    "nvlink-down": "NVLink link 3 of GPU 4 is inactive",
    "ecc-disabled": "GPU 5 runs with ECC disabled (current and pending)",
    "kernel-log-unreadable": "dmesg is refused (as under kernel.dmesg_restrict) and there "
                             "is no journal to read instead",
}
# Faults a power cycle (through the node's BMC) clears: the GPU that fell off the bus
# comes back, the kernel log starts afresh, a hung sshd starts again. The others model a
# part (uncorrectable ECC, remapped rows, a slow or missing GPU): they stay until the
# part is replaced (`gpuctl lab repair`).
TRANSIENT_FAULTS = frozenset({"gpu-lost", "xid", "unreachable"})
# Which repository copy a node gets: faults that change what the node's repo serves.
REPO_VARIANTS = {"package-install-failure": "fail-build",
                 "fabricmanager-mismatch": "fm-skew", "repo-unreachable": None}
GPU_FAULTS = {"gpu-missing", "pcie-downgrade", "xid", "ecc-uncorrectable", "ecc-disabled",
              "row-remap-failure", "thermal-throttle", "garbage-output", "sdc", "sdc-persistent",
              "slow-gpu", "slow-node", "nvlink-down", "gpu-lost", "gpu-hung", "nvswitch-sxid",
              "nic-down",
              "sram-correctable", "remapped-rows", "fabric-unregistered"}


def parse_fault(text: str) -> tuple[str, str]:
    """Parse ``NODE:KIND``.

    Raises:
        LabError: malformed, or an unknown kind (the message lists the known ones).
    """
    node, sep, kind = text.rpartition(":")
    if not sep or not node:
        raise LabError(f"fault {text[:60]!r} must be NODE:KIND")
    check_kind(kind)
    return node, kind


def check_kind(kind: str) -> None:
    if kind not in FAULTS:
        raise LabError(f"unknown fault {kind[:40]!r}; known: {', '.join(FAULTS)}")


def apply_fault(spec: dict[str, Any], kind: str) -> None:
    """Change the node spec so that it shows fault ``kind``."""
    check_kind(kind)
    gpus = spec["gpus"]
    if kind in GPU_FAULTS and not gpus:
        raise LabError(f"{spec['name']} has no GPUs, so it cannot have fault {kind}")

    def gpu(i: int) -> dict[str, Any]:
        return gpus[min(i, len(gpus) - 1)]

    if kind == "gpu-missing":
        gpus.pop()
    elif kind == "pcie-downgrade":
        gpu(0)["pcie_width_current"] = 8
    elif kind == "xid":
        bus = gpu(0)["bus_id"].lower()[:-2]
        spec["kmsg"].append(f"NVRM: Xid (PCI:{bus}): 79, pid=2817, name=python3, "
                            "GPU has fallen off the bus.")
    elif kind == "gpu-lost":
        # The driver logs the loss when it happens, idle or not, with no process named
        # (NVIDIA/open-gpu-kernel-modules#1151: "NVRM: Xid (PCI:0000:2b:00): 79, GPU has
        # fallen off the bus." then "NVRM: GPU 0000:2b:00.0: GPU has fallen off the bus."
        # on an idle desktop): a monitor pass sees it before any job fails on it.
        bus_id = gpu(1)["bus_id"].lower()
        spec["kmsg"].append(f"NVRM: Xid (PCI:{bus_id[:-2]}): 79, GPU has fallen off the bus.")
        spec["kmsg"].append(f"NVRM: GPU {bus_id}: GPU has fallen off the bus.")
    elif kind == "ecc-uncorrectable":
        gpu(1)["ecc_dram_uncorrectable"] = 2
    elif kind == "ecc-disabled":
        gpu(5)["ecc_mode"] = "Disabled"
    elif kind == "row-remap-failure":
        g = gpu(2)
        g.update(remapped_rows=True, remap_failure=True, remap_unc=1)
    elif kind == "sram-correctable":
        gpu(6)["ecc_sram_correctable"] = 12000
    elif kind == "remapped-rows":
        gpu(7).update(remapped_rows=True, remap_unc=600)
    elif kind == "thermal-throttle":
        gpu(3).update(thermal_slowdown=True, temperature_c=93)
    elif kind == "nvlink-down":
        g = gpu(4)
        if not g.get("nvlinks"):
            raise LabError(f"{spec['name']}'s GPUs have no NVLink, so it cannot have fault "
                           "nvlink-down")
        g["nvlink_down"] = [3]
    elif kind == "unreachable":
        spec["sshd"] = False
    elif kind in REPO_VARIANTS:
        spec["repo"] = REPO_VARIANTS[kind]
    if kind not in spec["faults"]:
        spec["faults"].append(kind)
