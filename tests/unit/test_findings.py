"""Faults visible in one scan, and drift between two scans."""

from __future__ import annotations

import json
from typing import Any

from provisioner.catalogue import catalogue
from provisioner.probe.facts import HardwareFacts, parse_probe_output
from provisioner.scan.findings import drift_findings, health_findings, new_only
from tests.conftest import DATA

H100_XML = (DATA / "standin-h100-remap-failure.xml").read_text()
BUSES = ["0000:18:00.0", "0000:2a:00.0", "0000:3a:00.0", "0000:5d:00.0",
         "0000:9a:00.0", "0000:ab:00.0", "0000:ba:00.0", "0000:db:00.0"]


def facts(xml: str = H100_XML, buses: list[str] = BUSES, **extra: Any) -> HardwareFacts:
    doc = json.loads((DATA / "probe-debian12-vm.json").read_text())
    doc["smi"] = {"available": True, "xml": xml, "exit_code": 0}
    doc["pci_gpus"] = [{"bus_id": b, "link_width_current": 16, "link_width_max": 16}
                       for b in buses]
    doc.update(extra)
    return parse_probe_output(json.dumps(doc).encode())


def kinds(findings: list[Any], severity: str | None = None) -> list[str]:
    return [f.kind for f in findings if severity is None or f.severity == severity]


def test_row_remap_failure_is_critical() -> None:
    found = health_findings(facts(), catalogue()["h100-sxm-8"])
    assert kinds(found, "critical") == ["row-remap-failure"]
    assert "GPU 2 (00000000:3a:00.0)" in found[0].message


def test_gpu_missing_from_pci_versus_sku() -> None:
    found = health_findings(facts(buses=BUSES[:7]), catalogue()["h100-sxm-8"])
    assert "7 of 8 GPUs on the PCI bus" in [f.message for f in found
                                           if f.kind == "gpu-missing"][0]


def test_gpu_on_pci_but_not_seen_by_driver() -> None:
    xml = H100_XML.replace('<gpu id="00000000:DB:00.0">', '<gpux id="gone">', 1)
    xml = xml.replace("</gpu>\n</nvidia_smi_log>", "</gpux>\n</nvidia_smi_log>")
    found = health_findings(facts(xml=xml), catalogue()["h100-sxm-8"])
    assert any(f.kind == "gpu-missing" and "0000:db:00.0" in f.message for f in found)


def test_pcie_width_downgrade_critical_gen_only_warning() -> None:
    xml = H100_XML.replace("<current_link_width>16x</current_link_width>",
                           "<current_link_width>8x</current_link_width>", 1)
    xml = xml.replace("<current_link_gen>5</current_link_gen>",
                      "<current_link_gen>1</current_link_gen>", 2)
    found = [f for f in health_findings(facts(xml=xml), catalogue()["h100-sxm-8"])
             if f.kind == "pcie-downgrade"]
    assert [(f.severity, f.message.split(")")[0]) for f in found] == [
        ("critical", "GPU 0 (00000000:18:00.0"), ("warning", "GPU 0 (00000000:18:00.0"),
        ("warning", "GPU 1 (00000000:2a:00.0")]


def test_xids_reported_once() -> None:
    line = "[1.0] NVRM: Xid (PCI:0000:18:00): 79, pid=1, GPU has fallen off the bus."
    first = facts(xid_lines=[line])
    found = health_findings(first, catalogue()["h100-sxm-8"])
    assert ("xid", "critical") in [(f.kind, f.severity) for f in found]
    again = new_only(first.to_dict(), health_findings(first, catalogue()["h100-sxm-8"]), first)
    assert "xid" not in kinds(again)


def test_drift_gpu_gone_serial_changed_width_dropped_driver_changed() -> None:
    before = facts().to_dict()
    xml = H100_XML.replace("<driver_version>550.90.07</driver_version>",
                           "<driver_version>570.124.06</driver_version>")
    xml = xml.replace("<current_link_width>16x</current_link_width>",
                      "<current_link_width>4x</current_link_width>", 1)
    serial = before["gpus"][1]["serial"]
    xml = xml.replace(f"<serial>{serial}</serial>", "<serial>999</serial>")
    start = xml.index('<gpu id="00000000:DB:00.0">')
    xml = xml[:start] + xml[xml.index("</gpu>", start) + len("</gpu>"):]
    found = drift_findings(before, facts(xml=xml, buses=BUSES[:7]))
    assert sorted(kinds(found)) == ["driver-changed", "gpu-missing", "gpu-missing",
                                    "pcie-downgrade", "serial-changed"]
    assert all(f.drift for f in found)


def test_no_drift_between_identical_scans() -> None:
    assert drift_findings(facts().to_dict(), facts()) == []


def test_cpu_only_node_is_healthy() -> None:
    doc = (DATA / "probe-debian12-vm.json").read_bytes()
    assert health_findings(parse_probe_output(doc), catalogue()["cpu-only"]) == []
