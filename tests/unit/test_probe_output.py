"""Parsing what the node probe prints: real output, and untrusted garbage."""

from __future__ import annotations

import json

import pytest

from provisioner.probe import node_probe
from provisioner.probe.facts import ProbeOutputError, parse_probe_output
from tests.conftest import DATA


def test_real_probe_output_from_a_gpu_less_vm() -> None:
    facts = parse_probe_output((DATA / "probe-debian12-vm.json").read_bytes())
    assert facts.os_name == "Debian GNU/Linux 12 (bookworm)"
    assert facts.cpu_model == "AMD EPYC" and facts.cpu_cores == 2
    assert facts.memory_bytes == 25276502016
    assert facts.disks[0]["name"] == "vda" and facts.disks[0]["size_bytes"] == 274877906944
    assert facts.smi_status == "absent" and facts.gpus == [] and facts.pci_gpus == []
    assert facts.secure_boot == "legacy-bios"


def _doc(**overrides: object) -> bytes:
    doc = json.loads((DATA / "probe-debian12-vm.json").read_text())
    doc.update(overrides)
    return json.dumps(doc).encode()


def test_probe_output_with_real_smi_capture_gives_gpus() -> None:
    xml = (DATA / "a100-sxm4-80gb-mig.xml").read_text()
    facts = parse_probe_output(_doc(smi={"available": True, "xml": xml, "exit_code": 0}))
    assert facts.smi_status == "ok"
    assert facts.driver_version == "535.54.03"
    assert [g.serial for g in facts.gpus] == ["1650522003820"]


def test_failing_nvidia_smi_is_a_warning_not_a_crash() -> None:
    text = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
    facts = parse_probe_output(_doc(smi={"available": True, "xml": text, "exit_code": 9}))
    assert facts.smi_status == "failed"
    assert facts.gpus == []
    assert any("exit 9" in w and "couldn't communicate" in w for w in facts.warnings)


def test_garbage_smi_xml_is_unusable_with_reason() -> None:
    facts = parse_probe_output(_doc(smi={"available": True, "xml": "\ufffd\x00junk",
                                         "exit_code": 0}))
    assert facts.smi_status == "unusable"
    assert any("not valid XML" in w for w in facts.warnings)


@pytest.mark.parametrize("raw, words", [
    (b"\xff\xfe\x00junk", "not UTF-8"),
    (b"Welcome to node17! Last login: yesterday", "not JSON"),
    (b"[1, 2, 3]", "not a gpuctl probe document"),
    (b'{"probe": "evil"}', "not a gpuctl probe document"),
    (b"[" * 100000 + b"]" * 100000, "not JSON"),
])
def test_unusable_probe_output_raises_one_line_error(raw: bytes, words: str) -> None:
    with pytest.raises(ProbeOutputError, match=words) as err:
        parse_probe_output(raw)
    assert "\n" not in str(err.value)


def test_wrong_types_become_not_available() -> None:
    facts = parse_probe_output(_doc(memory_bytes="lots", cpu={"model": ["x"], "cores": True},
                                    disks="nope", nics=[1, {"name": "x" * 5000}],
                                    hostname="h" * 10000))
    assert facts.memory_bytes is None and facts.cpu_model is None and facts.cpu_cores is None
    assert facts.disks == []
    assert len(facts.nics) == 1 and len(facts.nics[0]["name"]) == 512
    assert len(facts.hostname or "") == 512


def test_node_probe_cpu_and_memory_from_real_proc_files(monkeypatch: pytest.MonkeyPatch) -> None:
    files = {"/proc/cpuinfo": (DATA / "proc-cpuinfo-epyc-2core.txt").read_text(),
             "/proc/meminfo": (DATA / "proc-meminfo-24g.txt").read_text()}
    monkeypatch.setattr(node_probe, "read", lambda path, cap=0: files.get(path))
    assert node_probe.cpu() == {"model": "AMD EPYC", "sockets": 1, "cores": 2, "threads": 2}
    assert node_probe.memory_bytes() == 24684084 * 1024


def test_pcie_speed_strings_map_to_generations() -> None:
    assert node_probe.link_gen("32.0 GT/s PCIe") == 5
    assert node_probe.link_gen("16.0 GT/s PCIe") == 4
    assert node_probe.link_gen("2.5 GT/s PCIe") == 1
    assert node_probe.link_gen("Unknown") is None
    assert node_probe.link_gen(None) is None
