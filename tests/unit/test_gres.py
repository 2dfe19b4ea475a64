"""gres.conf from the scan: one line per GPU in PCI bus order with its device minor,
and Cores= of the socket its PCI device is local to (gres.conf(5), gres.html)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from provisioner.errors import InputError
from provisioner.fleet.handoff import HandoffNode, gpu_devices
from provisioner.probe import node_probe
from provisioner.probe.facts import parse_probe_output
from provisioner.slurm.apply import plan_config
from provisioner.slurm.render import gres_lines, render_slurm

# Two sockets of two cores with two threads each, numbered as Linux numbers them on
# most x86 servers: the first thread of every core, then the siblings.
CPUINFO = "".join(f"processor\t: {cpu}\nphysical id\t: {socket}\ncore id\t\t: {core}\n\n"
                  for cpu, socket, core in [(0, 0, 0), (1, 0, 1), (2, 1, 0), (3, 1, 1),
                                            (4, 0, 0), (5, 0, 1), (6, 1, 0), (7, 1, 1)])


def test_the_probe_finds_the_socket_a_gpu_is_local_to(monkeypatch: pytest.MonkeyPatch) -> None:
    files = {"/proc/cpuinfo": CPUINFO, "/d/a/local_cpulist": "2-3,6-7",
             "/d/b/local_cpulist": "0-1,4-5", "/d/c/local_cpulist": "0-7",
             "/d/e/local_cpulist": "0-999999999999", "/d/f/local_cpulist": "x-1,,3-"}
    monkeypatch.setattr(node_probe, "read", lambda path, cap=0: files.get(path))
    packages = node_probe.cpu_packages()
    assert packages == {"0": "0", "1": "0", "2": "1", "3": "1", "4": "0", "5": "0",
                        "6": "1", "7": "1"}
    assert node_probe.device_socket("/d/a", packages) == 1
    assert node_probe.device_socket("/d/b", packages) == 0
    # No NUMA affinity (every CPU is local), a hostile range, garbage, nothing at all.
    for dev in ("/d/c", "/d/e", "/d/f", "/d/missing"):
        assert node_probe.device_socket(dev, packages) is None, dev
    assert node_probe.device_socket("/d/a", {}) is None  # cpuinfo without physical id


def test_sockets_and_minors_reach_the_handoff_by_bus_id() -> None:
    facts = {"gpus": [{"pci_bus_id": "00000000:9a:00.0", "minor_number": 0},
                      {"pci_bus_id": "00000000:18:00.0", "minor_number": 3},
                      {"pci_bus_id": "00000000:2a:00.0", "minor_number": "3"}],
             "pci_gpus": [{"bus_id": "0000:18:00.0", "socket": 0},
                          {"bus_id": "0000:9a:00.0", "socket": 1}, "junk"]}
    assert gpu_devices(facts) == [("0000:18:00.0", 3, 0), ("0000:2a:00.0", None, None),
                                  ("0000:9a:00.0", 0, 1)]
    assert gpu_devices({}) == []


def test_a_probe_socket_out_of_range_is_not_used() -> None:
    doc = ('{"probe": "python", "pci_gpus": [{"bus_id": "0000:18:00.0", "socket": 99, '
           '"numa_node": -1}, {"bus_id": "0000:19:00.0", "socket": 1, "numa_node": 1}]}')
    facts = parse_probe_output(doc.encode())
    assert [(p["socket"], p["numa_node"]) for p in facts.pci_gpus] == [(None, -1), (1, 1)]


NODE = HandoffNode(name="gpu01", address="127.0.0.21", sku="h100-sxm-8", state="certified",
                   cpus=8, sockets=2, cores=4, memory_mib=1024, gpus=4, gpu_model="H100",
                   gpu_memory_mib=81559, driver="570.1", cuda="12.8", labels={},
                   cert_issued=datetime.now(UTC), cert_expires=None, cert_profile="quick",
                   cert_run=1)


def test_one_gres_line_per_gpu_in_bus_order_with_its_sockets_cores() -> None:
    # Minors out of PCI order (gres.html: /dev/nvidiaN need not follow PCI order).
    node = replace(NODE, gpu_devices=[("0000:18:00.0", 1, 0), ("0000:2a:00.0", 0, 0),
                                      ("0000:9a:00.0", 3, 1), ("0000:ab:00.0", 2, None)])
    assert gres_lines(node, "h100") == [
        "NodeName=gpu01 Name=gpu Type=h100 File=/dev/nvidia1 Cores=0-1",
        "NodeName=gpu01 Name=gpu Type=h100 File=/dev/nvidia0 Cores=0-1",
        "NodeName=gpu01 Name=gpu Type=h100 File=/dev/nvidia3 Cores=2-3",
        "NodeName=gpu01 Name=gpu Type=h100 File=/dev/nvidia2"]
    # One core per socket: a single index.
    one = replace(node, cpus=2, cores=2)
    assert gres_lines(one, "h100")[2].endswith("File=/dev/nvidia3 Cores=1")
    # A minor not known or repeated, or a GPU missing from the scan: the old single line.
    for devices in (node.gpu_devices[:3], [*node.gpu_devices[:3], ("0000:ab:00.0", None, 1)],
                    [*node.gpu_devices[:3], ("0000:ab:00.0", 3, 1)]):
        assert gres_lines(replace(node, gpu_devices=devices), "h100") == [
            "NodeName=gpu01 Name=gpu Type=h100 File=/dev/nvidia[0-3]"]
    # CPU topology unknown: files, no Cores.
    assert all("Cores" not in ln for ln in gres_lines(replace(node, sockets=None), "h100"))


def test_a_changed_gres_line_of_a_known_node_is_flagged(tmp_path: Path) -> None:
    (tmp_path / "slurm.conf").write_text("ClusterName=c\nSlurmctldHost=h\n")
    conf = ["NodeName=gpu01 NodeAddr=127.0.0.21 Gres=gpu:h100:1 State=UNKNOWN"]
    first = plan_config(tmp_path, conf, ["NodeName=gpu01 Name=gpu Type=h100 "
                                         "File=/dev/nvidia0"], set())
    assert first.added == ["gpu01"] and first.redefined == []
    for path, (_, text) in first.files.items():
        path.write_text(text)
    same = plan_config(tmp_path, conf, ["NodeName=gpu01 Name=gpu Type=h100 "
                                        "File=/dev/nvidia0"], {"gpu01"})
    assert not same.files and same.redefined == []
    cores = plan_config(tmp_path, conf, ["NodeName=gpu01 Name=gpu Type=h100 "
                                         "File=/dev/nvidia0 Cores=0-1"], {"gpu01"})
    assert cores.redefined == ["gpu01"] and not cores.node_list_changed
    # A NodeName line that changes (more memory after a DIMM swap) too; its state
    # words alone do not.
    bigger = plan_config(tmp_path, [conf[0].replace("Gres=", "RealMemory=1000 Gres=")],
                         ["NodeName=gpu01 Name=gpu Type=h100 File=/dev/nvidia0"], {"gpu01"})
    assert bigger.redefined == ["gpu01"]


def test_autodetect_lines_and_values_gpuctl_does_not_write() -> None:
    node = replace(NODE, gpu_devices=[("0000:18:00.0", 0, 0), ("0000:2a:00.0", 1, 0),
                                      ("0000:9a:00.0", 2, 1), ("0000:ab:00.0", 3, 1)])
    assert gres_lines(node, "h100", "nvml")[0] == (
        "NodeName=gpu01 AutoDetect=nvml Name=gpu Type=h100 File=/dev/nvidia0 Cores=0-1")
    gres = render_slurm([node], None, "nvidia")["gres.conf"]
    assert gres.count("AutoDetect=nvidia") == 4
    with pytest.raises(InputError, match="--gres-autodetect 'rsmi': one of nvml, nvidia"):
        render_slurm([node], None, "rsmi")
