#!/usr/bin/python3
"""Ansible module: read, in one call, everything the gpuctl roles check on a node.

Its PCI and Secure Boot readers repeat provisioner/probe/node_probe.py on purpose: both
run on the node, where neither can import the other (Ansible ships only this file and
its module_utils; the probe is sent alone over SSH).
"""

import glob
import hashlib
import os
import subprocess

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: gpuctl_node_state
short_description: Read a GPU node's provisioning state in one round trip
description:
  - Package install and hold (apt) or versionlock (dnf) state, file checksums and
    modes, service state, loaded kernel modules, NVIDIA devices on the PCI bus, whether
    this is an NVLink 5 system, free disk space and Secure Boot.
  - Read-only; lets every later task run only when the node is not already as wanted.
options:
  packages: {type: list, elements: str, default: []}
  files: {type: list, elements: str, default: []}
  services: {type: list, elements: str, default: []}
  processes:
    description: Programs (absolute paths) to look for among the running processes,
      whatever started them; each gets the command lines of its processes.
    type: list
    elements: str
    default: []
  package_manager: {type: str, default: auto, choices: [auto, dpkg, rpm]}
"""

SECURE_BOOT = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-e9ffa4da5dbe"


def run(argv):
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return 127, ""
    return proc.returncode, proc.stdout


def read(path):
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def upstream(version):
    """The upstream part of an installed package's version: no epoch ("3:"), no Debian
    revision or rpm release (the last "-..."): what /sys/module/nvidia/version says."""
    if not version:
        return None
    version = version.split(":", 1)[1] if ":" in version else version
    return version.rsplit("-", 1)[0]


def packages(names, manager):
    out = {n: {"installed": False, "version": None, "upstream": None, "held": False}
           for n in names}
    plain = [n for n in names if not n.startswith("@")]  # dnf module streams: not queried
    if not plain:
        return out
    if manager == "dpkg":
        _, text = run(["dpkg-query", "-W", "-f=${Package}\t${Status}\t${Version}\n"] + plain)
        for line in text.splitlines():
            name, status, version = (line.split("\t") + ["", ""])[:3]
            if name in out:
                words = status.split()
                installed = words[-1:] == ["installed"]
                out[name] = {"installed": installed, "version": version or None,
                             "upstream": upstream(version) if installed else None,
                             "held": words[:1] == ["hold"]}
    elif manager == "rpm":
        locked = versionlocked()
        for name in plain:
            # A capability such as 'dnf-command(versionlock)' is asked for by what
            # provides it; a package name by itself, so that an alias another package
            # only provides reads "not installed", as `rpm -q` says.
            argv = ["rpm", "-q", "--qf", "%{VERSION}-%{RELEASE}\n"] + (
                ["--whatprovides"] if "(" in name else []) + [name]
            code, text = run(argv)
            if code == 0:
                version = text.strip().splitlines()[0]
                out[name] = {"installed": True, "version": version,
                             "upstream": upstream(version), "held": name in locked}
    return out


def versionlocked():
    """Names in dnf's versionlock list (lines 'name-epoch:version-release.*')."""
    text = read("/etc/dnf/plugins/versionlock.list") or ""
    names = set()
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        parts = line.split("-")
        for i in range(len(parts) - 1, 0, -1):
            if ":" in parts[i]:
                names.add("-".join(parts[:i]))
                break
    return names


def files(paths):
    out = {}
    for path in paths:
        try:
            with open(path, "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()
            out[path] = {"sha256": digest, "mode": "%04o" % (os.stat(path).st_mode & 0o7777)}
        except OSError:
            out[path] = None
    return out


def services(names):
    systemd = os.path.isdir("/run/systemd/system")
    out = {}
    for name in names:
        if systemd:
            running = run(["systemctl", "is-active", "--quiet", name])[0] == 0
            enabled = run(["systemctl", "is-enabled", "--quiet", name])[0] == 0
        else:
            script = "/etc/init.d/" + name
            running = os.path.exists(script) and run([script, "status"])[0] == 0
            enabled = bool(glob.glob("/etc/rc[2345].d/S*" + name))
        out[name] = {"running": running, "enabled": enabled}
    return out


# Interpreters a daemon that is a script runs under (its program is then argv[1]).
INTERPRETERS = ("sh", "dash", "bash")


def processes(programs):
    """Each program's running processes (their command lines): a process whose
    executable is the program (a binary replaced by an upgrade reads "(deleted)"), or a
    shell running it as a script. A tool that only names it (strace, gdb, sudo) is not
    one."""
    out = {p: [] for p in programs}
    if not programs:
        return out
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            exe = os.readlink("/proc/%s/exe" % pid)
            with open("/proc/%s/cmdline" % pid, "rb") as fh:
                args = fh.read().decode(errors="replace").rstrip("\0").split("\0")
        except OSError:  # gone, or a kernel thread
            continue
        if exe.endswith(" (deleted)"):
            exe = exe[:-len(" (deleted)")]
        for program in programs:
            if exe == program or (os.path.basename(exe) in INTERPRETERS
                                  and args[1:2] == [program]):
                out[program].append(" ".join(args))
    return out


def pci():
    gpus = switches = 0
    for dev in glob.glob("/sys/bus/pci/devices/*"):
        if read(dev + "/vendor") != "0x10de":
            continue
        cls = read(dev + "/class") or ""
        if cls.startswith(("0x0300", "0x0302")):
            gpus += 1
        elif cls.startswith("0x0680"):
            switches += 1
    return {"gpus": gpus, "nvswitches": switches}


def secure_boot():
    if not os.path.isdir("/sys/firmware/efi"):
        return "legacy-bios"
    try:
        with open(SECURE_BOOT, "rb") as fh:
            data = fh.read(5)
    except OSError:
        return "unknown"
    return "enabled" if len(data) == 5 and data[4] == 1 else "disabled"


def ini_sections(pattern):
    """{section: {key: value}} of every ini file matching ``pattern`` (dnf's own format)."""
    out = {}
    for path in sorted(glob.glob(pattern)):
        section = None
        for line in (read(path) or "").splitlines():
            line = line.strip()
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1].strip()
                out.setdefault(section, {})
            elif section and "=" in line and not line.startswith(("#", ";")):
                key, _, value = line.partition("=")
                out[section][key.strip()] = value.strip()
    return out


def dnf_state():
    """Which yum repositories are enabled, and dnf's record of its modules
    (/etc/dnf/modules.d/<module>.module: stream, installed profiles, state)."""
    repos = {name: kv.get("enabled", "1") in ("1", "true", "True", "yes")
             for name, kv in ini_sections("/etc/yum.repos.d/*.repo").items()}
    modules = {name: {"stream": kv.get("stream"), "state": kv.get("state"),
                      "profiles": [p for p in kv.get("profiles", "").split(",") if p]}
               for name, kv in ini_sections("/etc/dnf/modules.d/*.module").items()}
    # Streams whose profile is installed, named as the roles ask for them.
    streams = ["@%s:%s" % (name, m["stream"]) for name, m in modules.items()
               if m["state"] == "enabled" and m["profiles"]]
    return {"repos": repos, "modules": modules, "streams": streams}


def nvlink5():
    """NVLink 5 systems, as NVIDIA's driver container finds them: an InfiniBand device
    whose PCI VPD says SW_MNG (the NVSwitch trays' management ports)."""
    for vpd in glob.glob("/sys/class/infiniband/*/device/vpd"):
        try:
            with open(vpd, "rb") as fh:
                if b"SW_MNG" in fh.read():
                    return True
        except OSError:
            continue
    return False


def main():
    module = AnsibleModule(argument_spec={
        "packages": {"type": "list", "elements": "str", "default": []},
        "files": {"type": "list", "elements": "str", "default": []},
        "services": {"type": "list", "elements": "str", "default": []},
        "processes": {"type": "list", "elements": "str", "default": []},
        "package_manager": {"type": "str", "default": "auto", "choices": ["auto", "dpkg", "rpm"]},
    }, supports_check_mode=True)
    manager = module.params["package_manager"]
    if manager == "auto":
        manager = "dpkg" if os.path.exists("/usr/bin/dpkg-query") else "rpm"
    st = os.statvfs("/")
    module.exit_json(
        changed=False,
        free_bytes=st.f_bavail * st.f_frsize,
        secure_boot=secure_boot(),
        pci=pci(),
        nvlink5=nvlink5(),
        dnf=dnf_state() if manager == "rpm" else {"repos": {}, "modules": {}, "streams": []},
        modules={"nouveau": os.path.isdir("/sys/module/nouveau"),
                 "nvidia": read("/sys/module/nvidia/version"),
                 "nvidia_taint": read("/sys/module/nvidia/taint"),
                 "mlx5_core": os.path.isdir("/sys/module/mlx5_core"),
                 "ib_umad": os.path.isdir("/sys/module/ib_umad")},
        packages=packages(module.params["packages"], manager),
        files=files(module.params["files"]),
        services=services(module.params["services"]),
        processes=processes(module.params["processes"]),
    )


if __name__ == "__main__":
    main()
