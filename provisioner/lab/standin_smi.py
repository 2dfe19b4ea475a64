#!/usr/bin/python3
"""Stand-in nvidia-smi for gpuctl lab nodes (installed on the node; stdlib only).

Implements the parts gpuctl and admins use: ``-q -x`` (the v12 XML schema),
``--query-gpu=... --format=csv[,noheader][,nounits]`` and ``--query-compute-apps``
(with ``-i``), ``-L``, ``topo -m``, ``nvlink --status``, ``-pm 0|1`` and ``-r``.
The GPUs come from /etc/gpuctl-lab/gpus.json, written by
``gpuctl lab``; with a replayed capture the real XML is printed, patched only where a
fault was injected.
"""

import json
import math
import os
import sys
import time
import xml.etree.ElementTree as ET

STATE = "/etc/gpuctl-lab/gpus.json"
DRIVER = "/usr/share/gpuctl-lab/driver.json"


class VersionMismatch(Exception):
    """The loaded module is not the installed libraries' version (a driver update
    without a reboot)."""


def load():
    """Hardware from the lab, driver version from the installed driver package; the
    module must be loaded (as /sys/module/nvidia says) or the driver is unreachable,
    and be the installed version or NVML refuses it."""
    if not os.path.isdir("/sys/module/nvidia"):
        raise OSError("nvidia module not loaded")
    with open(STATE) as fh:
        st = json.load(fh)
    with open(DRIVER) as fh:
        driver = json.load(fh)
    try:
        with open("/sys/module/nvidia/version") as fh:
            loaded = fh.read().strip()
    except OSError:
        loaded = driver["version"]
    if loaded != driver["version"]:
        raise VersionMismatch(driver["version"])
    st["driver_version"], st["cuda_version"] = driver["version"], driver["cuda"]
    return st


def esc(value):
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def gpu_xml(g, st):
    active = lambda flag: "Active" if flag else "Not Active"  # noqa: E731
    bus = g["bus_id"].upper()
    full_bus = "0000" + bus if len(bus) == 12 else bus
    mig = "Enabled" if g["mig"] else "Disabled"
    migdevs = "".join(
        "<mig_device><index>%d</index><gpu_instance_id>%d</gpu_instance_id>"
        "<compute_instance_id>0</compute_instance_id><fb_memory_usage><total>%d MiB</total>"
        "</fb_memory_usage></mig_device>" % (i, 7 + i, g["memory_mib"] // 8)
        for i in range(7)) if g["mig"] else ""
    if g["remapped_rows"]:
        remap = ("<remapped_rows><remapped_row_corr>0</remapped_row_corr>"
                 "<remapped_row_unc>%d</remapped_row_unc><remapped_row_pending>No"
                 "</remapped_row_pending><remapped_row_failure>%s</remapped_row_failure>"
                 "</remapped_rows>" % (g["remap_unc"], "Yes" if g["remap_failure"] else "No"))
    else:
        remap = "<remapped_rows>N/A</remapped_rows>"
    unc = g["ecc_dram_uncorrectable"]
    sram = g.get("ecc_sram_correctable", 0)
    state, status = fabric(st)
    persistence = persistence_mode(g)
    return f"""    <gpu id="{full_bus}">
        <product_name>{esc(g['model'])}</product_name>
        <product_brand>NVIDIA</product_brand>
        <product_architecture>{esc(g['architecture'])}</product_architecture>
        <persistence_mode>{persistence}</persistence_mode>
        <mig_mode><current_mig>{mig}</current_mig><pending_mig>{mig}</pending_mig></mig_mode>
        <mig_devices>{migdevs or 'None'}</mig_devices>
        <serial>{g['serial']}</serial>
        <uuid>{g['uuid']}</uuid>
        <minor_number>{g['index']}</minor_number>
        <vbios_version>{g['vbios']}</vbios_version>
        <pci>
            <pci_bus>{bus[5:7]}</pci_bus>
            <pci_device>00</pci_device>
            <pci_domain>0000</pci_domain>
            <pci_device_id>{g['device_id'][2:].upper()}10DE</pci_device_id>
            <pci_bus_id>{full_bus}</pci_bus_id>
            <pci_gpu_link_info>
                <pcie_gen>
                    <max_link_gen>{g['pcie_gen_max']}</max_link_gen>
                    <current_link_gen>{g['pcie_gen_current']}</current_link_gen>
                </pcie_gen>
                <link_widths>
                    <max_link_width>{g['pcie_width_max']}x</max_link_width>
                    <current_link_width>{g['pcie_width_current']}x</current_link_width>
                </link_widths>
            </pci_gpu_link_info>
            <replay_counter>0</replay_counter>
        </pci>
        <performance_state>P0</performance_state>
        <clocks_event_reasons>
            <clocks_event_reason_gpu_idle>Active</clocks_event_reason_gpu_idle>
            <clocks_event_reason_sw_power_cap>Not Active</clocks_event_reason_sw_power_cap>
            <clocks_event_reason_hw_slowdown>{active(g['thermal_slowdown'])}\
</clocks_event_reason_hw_slowdown>
            <clocks_event_reason_hw_thermal_slowdown>{active(g['thermal_slowdown'])}\
</clocks_event_reason_hw_thermal_slowdown>
            <clocks_event_reason_sw_thermal_slowdown>Not Active\
</clocks_event_reason_sw_thermal_slowdown>
        </clocks_event_reasons>
        <fb_memory_usage>
            <total>{g['memory_mib']} MiB</total>
            <reserved>0 MiB</reserved>
            <used>0 MiB</used>
            <free>{g['memory_mib']} MiB</free>
        </fb_memory_usage>
        <compute_mode>Default</compute_mode>
        <ecc_mode>
            <current_ecc>{g.get('ecc_mode', 'Enabled')}</current_ecc>
            <pending_ecc>{g.get('ecc_mode', 'Enabled')}</pending_ecc>
        </ecc_mode>
        <ecc_errors>
            <volatile>
                <sram_correctable>{sram}</sram_correctable>
                <sram_uncorrectable>0</sram_uncorrectable>
                <dram_correctable>0</dram_correctable>
                <dram_uncorrectable>{unc}</dram_uncorrectable>
            </volatile>
            <aggregate>
                <sram_correctable>{sram}</sram_correctable>
                <sram_uncorrectable>0</sram_uncorrectable>
                <dram_correctable>0</dram_correctable>
                <dram_uncorrectable>{unc}</dram_uncorrectable>
            </aggregate>
        </ecc_errors>
        <retired_pages>
            <multiple_single_bit_retirement><retired_count>N/A</retired_count></multiple_single_bit_retirement>
            <double_bit_retirement><retired_count>N/A</retired_count></double_bit_retirement>
            <pending_blacklist>N/A</pending_blacklist>
            <pending_retirement>N/A</pending_retirement>
        </retired_pages>
        {remap}
        <temperature>
            <gpu_temp>{g['temperature_c']} C</gpu_temp>
            <gpu_temp_max_threshold>92 C</gpu_temp_max_threshold>
            <gpu_temp_slow_threshold>89 C</gpu_temp_slow_threshold>
        </temperature>
        <gpu_power_readings>
            <power_state>P0</power_state>
            <power_draw>{g['power_limit_w'] * 0.1:.2f} W</power_draw>
            <current_power_limit>{g['power_limit_w']:.2f} W</current_power_limit>
            <default_power_limit>{g['power_limit_w']:.2f} W</default_power_limit>
            <max_power_limit>{g['power_limit_w']:.2f} W</max_power_limit>
        </gpu_power_readings>
        <fabric>
            <state>{state}</state>
            <status>{status}</status>
        </fabric>
        <processes />
    </gpu>
"""


def daemon_args(pidfile):
    """The command line of the daemon whose pidfile this is, or None when not running."""
    try:
        with open(pidfile) as fh:
            pid = int(fh.read().strip())
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            return fh.read().decode(errors="replace").split("\0")
    except (OSError, ValueError):
        return None


# Per-GPU persistence mode set with ``nvidia-smi -pm`` since the node booted.
PM_SET = "/run/gpuctl-lab/persistence-mode.json"


def _pm_set():
    try:
        with open(PM_SET) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def persistence_mode(g=None):
    """Enabled while nvidia-persistenced runs with --persistence-mode: the daemon turns
    it on for every GPU at start (nvidia-persistenced(1)); with --no-persistence-mode,
    or with no daemon, the driver's default is off. ``nvidia-smi -pm`` changes it for
    one GPU (``g``) until the node boots again."""
    chosen = _pm_set().get(g["bus_id"].upper()) if g is not None else None
    if chosen:
        return chosen
    args = daemon_args("/run/nvidia-persistenced.pid")
    return "Enabled" if args and "--persistence-mode" in args else "Disabled"


def selected(st, ident):
    """The GPUs ``-i`` names (an index, a UUID or a PCI bus id, as nvidia-smi(1) takes
    them; comma-separated), or every GPU; None when one is not found."""
    if ident is None:
        return list(st["gpus"])
    chosen = []
    for one in ident.split(","):
        one = one.strip().upper()
        match = [g for g in st["gpus"] if one in (str(g["index"]), g["uuid"].upper(),
                                                  g["bus_id"].upper(),
                                                  "0000" + g["bus_id"].upper())]
        if not match:
            return None
        chosen += match
    return chosen


def set_persistence(gpus, on):
    """``nvidia-smi -pm 0|1``: what nvidia-smi prints, per GPU, then "All done."."""
    state = _pm_set()
    for g in gpus:
        state[g["bus_id"].upper()] = "Enabled" if on else "Disabled"
        print("%s persistence mode for GPU %s." % ("Enabled" if on else "Disabled",
                                                    "0000" + g["bus_id"].upper()))
    os.makedirs(os.path.dirname(PM_SET), exist_ok=True)
    with open(PM_SET, "w") as fh:
        json.dump(state, fh)
    print("All done.")
    return 0


def reset(gpus):
    """``nvidia-smi -r``: refused while persistence mode holds a GPU open, as
    nvidia-persistenced's attachment counts as a client (NVIDIA/NVSentinel#1690: "The
    following GPUs could not be reset: GPU 00000000:1A:00.0: In use by another client",
    exit 255; after ``-pm 0`` the same reset printed "GPU 00000000:1A:00.0 was
    successfully reset." and exited 0; NVIDIA/gpu-operator#118 saw the same with the
    daemon running). Newer nvidia-smi toggles persistence mode itself when it reaches
    the daemon (NVIDIA/NVSentinel#1243); the lab models the stricter behaviour, which a
    caller must handle either way."""
    held = [g for g in gpus if persistence_mode(g) == "Enabled"]
    if held:
        print("The following GPUs could not be reset:")
        for g in held:
            print("  GPU %s: In use by another client" % ("0000" + g["bus_id"].upper()))
        print("\n%d device is currently being used by one or more other processes (e.g. "
              "Fabric Manager, CUDA application, graphics application such as an X "
              "server, or a monitoring application such as another instance of "
              "nvidia-smi). Please first kill all processes using this device and all "
              "compute applications running in the system." % len(held))
        return 255
    for g in gpus:
        print("GPU %s was successfully reset." % ("0000" + g["bus_id"].upper()))
    return 0


def nvlink5():
    """An NVLink 5 system: an InfiniBand device whose VPD says SW_MNG. (The playbooks'
    gpuctl_node_state module reads it the same way; each is installed alone on a node,
    so neither can import the other.)"""
    import glob
    for vpd in glob.glob("/sys/class/infiniband/*/device/vpd"):
        try:
            with open(vpd, "rb") as fh:
                if b"SW_MNG" in fh.read():
                    return True
        except OSError:
            continue
    return False


FM_PIDFILE = "/run/nvidia-fabricmanager/nv-fabricmanager.pid"
NVLSM_PIDFILE = "/run/nvidia-fabricmanager/nvlsm.pid"
NVLSM = "/opt/nvidia/nvlsm/sbin/nvlsm"


def arg(args, flag):
    """The value after ``flag`` in a command line, or None."""
    return args[args.index(flag) + 1] if flag in args[:-1] else None


def subnet_managers():
    """The node's NVLink subnet manager processes (a lab node has its own /proc)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as fh:
                args = fh.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if NVLSM in args[:2]:
            out.append(args)
    return out


def fabric(st):
    """A GPU's NVSwitch fabric registration: Completed once the fabric manager runs;
    before that NVML reports it not completed (which of Not Started / In Progress a real
    GPU shows is not documented; either fails gpuctl's check). N/A without NVSwitches, as
    on PCIe parts. On NVLink 5 the fabric comes up only through the subnet manager that
    fabric manager's start script started for it (the GUID fabric manager was given is
    the one NVLSM runs on), with no second subnet manager on the node, over the
    management ports' mlx5_core/ib_umad drivers."""
    if not st.get("nvswitch"):
        return "N/A", "N/A"
    fm = daemon_args(FM_PIDFILE)
    running = fm is not None and "fabric-unregistered" not in st.get("faults", [])
    if running and nvlink5():
        sm = daemon_args(NVLSM_PIDFILE)
        guid = arg(fm, "-g")
        running = bool(guid) and sm is not None and arg(sm, "-g") == guid \
            and len(subnet_managers()) == 1 \
            and all(os.path.isdir("/sys/module/" + m) for m in ("mlx5_core", "ib_umad"))
    return ("Completed", "Success") if running else ("In Progress", "N/A")


def patched_replay(st):
    tree = ET.parse(st["replay_xml"])  # noqa: S314  (the lab's own copy of a capture)
    root = tree.getroot()
    keep = {g["bus_id"].lower()[-12:]: g for g in st["gpus"]}
    for el in list(root.findall("gpu")):
        bus = (el.findtext("pci/pci_bus_id") or el.get("id") or "").lower()[-12:]
        g = keep.get(bus)
        if g is None:
            root.remove(el)
            continue
        width = el.find("pci/pci_gpu_link_info/link_widths/current_link_width")
        if width is not None:
            width.text = "%dx" % g["pcie_width_current"]
        for path in ("ecc_errors/volatile/dram_uncorrectable",
                     "ecc_errors/aggregate/dram_uncorrectable"):
            node = el.find(path)
            if node is not None and g["ecc_dram_uncorrectable"]:
                node.text = str(g["ecc_dram_uncorrectable"])
        for reasons in ("clocks_event_reasons", "clocks_throttle_reasons"):
            for node in el.findall(reasons + "/*"):
                if node.tag.endswith("hw_thermal_slowdown") and g["thermal_slowdown"]:
                    node.text = "Active"
    root.find("attached_gpus").text = str(len(root.findall("gpu")))
    return ET.tostring(root, encoding="unicode")


def query_xml(st):
    if st.get("garbage"):
        # Fault garbage-output: 50 MB of junk that is not UTF-8, let alone XML.
        chunk = bytes(range(256)) * 4096
        for _ in range(50 * 1024 * 1024 // len(chunk)):
            sys.stdout.buffer.write(chunk)
        return
    if st.get("replay_xml"):
        if st.get("faults"):
            sys.stdout.write(patched_replay(st))
        else:
            with open(st["replay_xml"], "rb") as fh:
                sys.stdout.buffer.write(fh.read())
        return
    sys.stdout.write('<?xml version="1.0" ?>\n<!DOCTYPE nvidia_smi_log SYSTEM '
                     '"nvsmi_device_v12.dtd">\n<nvidia_smi_log>\n')
    sys.stdout.write("    <driver_version>%s</driver_version>\n" % st["driver_version"])
    sys.stdout.write("    <cuda_version>%s</cuda_version>\n" % st["cuda_version"])
    sys.stdout.write("    <attached_gpus>%d</attached_gpus>\n" % len(st["gpus"]))
    for g in st["gpus"]:
        sys.stdout.write(gpu_xml(g, st))
    sys.stdout.write("</nvidia_smi_log>\n")


FIELDS = {
    "index": ("index", lambda g, st: g["index"]),
    "name": ("name", lambda g, st: g["model"]),
    "uuid": ("uuid", lambda g, st: g["uuid"]),
    "serial": ("serial", lambda g, st: g["serial"]),
    "pci.bus_id": ("pci.bus_id", lambda g, st: "0000" + g["bus_id"].upper()),
    "memory.total": ("memory.total [MiB]", lambda g, st: "%d MiB" % g["memory_mib"]),
    "driver_version": ("driver_version", lambda g, st: st["driver_version"]),
    "persistence_mode": ("persistence_mode", lambda g, st: persistence_mode(g)),
    "vbios_version": ("vbios_version", lambda g, st: g["vbios"]),
    # Readings wander a little over time, as a loaded GPU's do.
    "temperature.gpu": ("temperature.gpu", lambda g, st: g["temperature_c"] + (
        0 if g["thermal_slowdown"] else int(round(2 * math.sin(time.time() / 5 + g["index"]))))),
    "power.limit": ("power.limit [W]", lambda g, st: "%.2f W" % g["power_limit_w"]),
    "pcie.link.gen.current": ("pcie.link.gen.current", lambda g, st: g["pcie_gen_current"]),
    "pcie.link.gen.max": ("pcie.link.gen.max", lambda g, st: g["pcie_gen_max"]),
    "pcie.link.width.current": ("pcie.link.width.current",
                                lambda g, st: g["pcie_width_current"]),
    "pcie.link.width.max": ("pcie.link.width.max", lambda g, st: g["pcie_width_max"]),
    "ecc.mode.current": ("ecc.mode.current", lambda g, st: "Enabled"),
    "mig.mode.current": ("mig.mode.current",
                         lambda g, st: "Enabled" if g["mig"] else "Disabled"),
    "power.draw": ("power.draw [W]", lambda g, st: "%.2f W" % (
        g["power_limit_w"] * (0.55 + 0.1 * math.sin(time.time() / 7 + g["index"])))),
    "clocks.sm": ("clocks.current.sm [MHz]", lambda g, st: "%d MHz" % (
        1410 if g["thermal_slowdown"] else 1980)),
    "clocks_throttle_reasons.active": ("clocks_throttle_reasons.active", lambda g, st: throttle(g)),
    "clocks_event_reasons.active": ("clocks_event_reasons.active", lambda g, st: throttle(g)),
    "clocks_throttle_reasons.hw_thermal_slowdown": (
        "clocks_throttle_reasons.hw_thermal_slowdown",
        lambda g, st: "Active" if g["thermal_slowdown"] else "Not Active"),
}


def throttle(g):
    """The clocks-event bitmask: a loaded healthy GPU sits at its power cap (0x4); the
    thermal fault adds HW slowdown (0x8) and HW thermal slowdown (0x40)."""
    return "0x%016x" % (0x4 | (0x48 if g["thermal_slowdown"] else 0))


def nvlink_status(st):
    """``nvidia-smi nvlink --status``: each link's speed, or ``<inactive>``."""
    for g in st["gpus"]:
        print("GPU %d: %s (UUID: %s)" % (g["index"], g["model"], g["uuid"]))
        down = set(g.get("nvlink_down", []))
        for link in range(g.get("nvlinks", 0)):
            print("\t Link %d: %s" % (link, "<inactive>" if link in down else "26.562 GB/s"))
    return 0


def query_gpu(fields, fmt, gpus, st):
    if not fmt.startswith("csv"):
        sys.stderr.write("Only CSV format is supported.\n")
        return 2
    opts = fmt.split(",")[1:]
    names = [f.strip() for f in fields.split(",") if f.strip()]
    bad = [n for n in names if n not in FIELDS]
    if bad:
        sys.stderr.write('Field "%s" is not a valid field to query.\n' % bad[0])
        return 2
    if "noheader" not in opts:
        print(", ".join(FIELDS[n][0] for n in names))
    for g in gpus:
        values = []
        for n in names:
            value = str(FIELDS[n][1](g, st))
            if "nounits" in opts:
                value = value.split(" ")[0] if value.endswith((" MiB", " W", " MHz")) \
                    else value
            values.append(value)
        print(", ".join(values))
    return 0


def topo(st):
    n = len(st["gpus"])
    link = "NV18" if st.get("nvswitch") else "SYS"
    nics = ["NIC%d" % i for i in range(st.get("ib_ports", 0))]
    cols = ["GPU%d" % i for i in range(n)] + nics
    print("\t" + "\t".join(cols) + "\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID")
    for i in range(n):
        row = ["X" if i == j else link for j in range(n)]
        row += ["PIX" if k == i else "SYS" for k in range(len(nics))]
        half = 0 if i < max(1, n // 2) else 1
        print("GPU%d\t%s\t%s\t%d\t\tN/A" % (i, "\t".join(row),
              "0-55,112-167" if half == 0 else "56-111,168-223", half))
    for k, nic in enumerate(nics):
        row = ["PIX" if k == i else "SYS" for i in range(n)]
        row += ["X" if k == j else "SYS" for j in range(len(nics))]
        print("%s\t%s" % (nic, "\t".join(row)))
    print("\nLegend:\n\n  X    = Self\n  SYS  = Connection traversing PCIe as well as the SMP "
          "interconnect between NUMA nodes\n  PIX  = Connection traversing at most a single "
          "PCIe bridge\n  NV#  = Connection traversing a bonded set of # NVLinks")
    if nics:
        print("\nNIC Legend:\n")
        for k, nic in enumerate(nics):
            print("  %s: mlx5_%d" % (nic, k))
    return 0


def main(argv):
    try:
        st = load()
    except VersionMismatch as exc:
        # What nvidia-smi prints when NVML's library and the loaded module differ
        # (NVML_ERROR_LIB_RM_VERSION_MISMATCH, 18 in nvml.h; users' captures of the two
        # lines). Its exit status is a guess: NVML's error code.
        major_minor = ".".join(str(exc).split(".")[:2])
        sys.stdout.write("Failed to initialize NVML: Driver/library version mismatch\n"
                         f"NVML library version: {major_minor}\n")
        return 18
    except OSError:
        sys.stdout.write("NVIDIA-SMI has failed because it couldn't communicate with the "
                         "NVIDIA driver. Make sure that the latest NVIDIA driver is installed "
                         "and running.\n\n")
        return 9
    args = list(argv)
    if args[:2] == ["-q", "-x"] or args[:1] in (["-qx"], ["--xml-format"]):
        query_xml(st)
        return 0
    if args[:1] == ["topo"] and "-m" in args:
        return topo(st)
    if args[:1] == ["nvlink"] and ("--status" in args or "-s" in args):
        return nvlink_status(st)
    if args[:1] == ["-L"]:
        for g in st["gpus"]:
            print("GPU %d: %s (UUID: %s)" % (g["index"], g["model"], g["uuid"]))
        return 0
    ident = next((args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-i", "--id")),
                 None)
    gpus = selected(st, ident)
    if gpus is None:
        print("No devices were found")
        return 6
    if args[:1] in (["-r"], ["--gpu-reset"]):
        return reset(gpus)
    if args[:1] == ["-pm"] and len(args) > 1 and args[1] in ("0", "1"):
        return set_persistence(gpus, args[1] == "1")
    fmt = next((a.split("=", 1)[1] for a in args if a.startswith("--format=")), None)
    if any(a.startswith("--query-compute-apps=") for a in args) and fmt is not None:
        # The lab's GPUs run no CUDA process (the burn-in agent computes on the CPU):
        # the header alone, or nothing with noheader.
        if "noheader" not in fmt:
            print(next(a for a in args if a.startswith("--query-compute-apps="))
                  .split("=", 1)[1].replace(",", ", "))
        return 0
    query = next((a.split("=", 1)[1] for a in args if a.startswith("--query-gpu=")), None)
    if query is not None and fmt is not None:
        return query_gpu(query, fmt, gpus, st)
    if not args:
        print("gpuctl lab stand-in nvidia-smi: driver %s, CUDA %s, %d GPUs"
              % (st["driver_version"], st["cuda_version"], len(st["gpus"])))
        return 0
    sys.stderr.write("stand-in nvidia-smi: unsupported arguments: %s\n" % " ".join(args))
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except BrokenPipeError:
        os._exit(0)
