"""nvidia-smi -q -x parsing on real captures, and refusal of hostile XML."""

from __future__ import annotations

import pytest

from provisioner.probe.smi_xml import SmiParseError, parse_smi_xml, parse_xid_lines
from tests.conftest import DATA


def test_real_a100_capture_with_mig() -> None:
    report = parse_smi_xml((DATA / "a100-sxm4-80gb-mig.xml").read_bytes())
    assert (report.driver_version, report.cuda_version) == ("535.54.03", "12.2")
    [gpu] = report.gpus
    assert gpu.model == "NVIDIA A100-SXM4-80GB"
    assert gpu.uuid == "GPU-513536b6-7d19-9063-b049-1e69664bb298"
    assert gpu.serial == "1650522003820"
    assert gpu.pci_bus_id == "00000000:01:00.0"
    assert gpu.vbios == "92.00.36.00.02"
    assert gpu.memory_mib == 81920
    assert (gpu.pcie_gen_current, gpu.pcie_gen_max) == (4, 4)
    assert (gpu.pcie_width_current, gpu.pcie_width_max) == (16, 16)
    assert (gpu.ecc_mode, gpu.mig_mode, gpu.mig_devices) == ("Enabled", "Enabled", 4)
    assert gpu.ecc_uncorrectable_aggregate == 0
    assert gpu.remapped_rows_failure is None  # "N/A" in this capture
    assert gpu.retired_pages_sbe is None
    assert (gpu.temperature_c, gpu.power_limit_w) == (27, 500.0)
    assert gpu.thermal_slowdown is False


def test_standin_capture_reports_row_remap_failure() -> None:
    report = parse_smi_xml((DATA / "standin-h100-remap-failure.xml").read_bytes())
    assert len(report.gpus) == 8
    failed = [g.index for g in report.gpus if g.remapped_rows_failure]
    assert failed == [2]
    assert report.gpus[2].remapped_rows_uncorrectable == 1
    assert report.gpus[0].remapped_rows_failure is False


@pytest.mark.parametrize("payload, words", [
    (b"\xff\xfe garbage \x00\x01", "not valid XML"),
    (b"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
     "not valid XML"),
    (b"<html><body>hi</body></html>", "expected <nvidia_smi_log>"),
    (b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
     b"<nvidia_smi_log>&b;</nvidia_smi_log>", "forbidden XML"),
    (b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY x SYSTEM "file:///etc/shadow">]>'
     b"<nvidia_smi_log>&x;</nvidia_smi_log>", "forbidden XML"),
    (b"<nvidia_smi_log>" + b"<gpu/>" * 65 + b"</nvidia_smi_log>", "65 GPUs"),
])
def test_hostile_or_broken_xml_is_refused_with_a_reason(payload: bytes, words: str) -> None:
    with pytest.raises(SmiParseError, match=words):
        parse_smi_xml(payload)


def test_missing_fields_are_none_not_errors() -> None:
    report = parse_smi_xml(b"<nvidia_smi_log><gpu id='00000000:3B:00.0'>"
                           b"<product_name>Tesla T4</product_name></gpu></nvidia_smi_log>")
    gpu = report.gpus[0]
    assert gpu.model == "Tesla T4"
    assert gpu.pci_bus_id == "00000000:3b:00.0"
    assert gpu.memory_mib is None and gpu.pcie_width_current is None


def test_xid_lines_from_kernel_log() -> None:
    lines = [
        "[ 1234.5] NVRM: Xid (PCI:0000:18:00): 79, pid=2817, name=python3, GPU has fallen off "
        "the bus.",
        "[ 1300.0] NVRM: Xid (PCI:0000:2a:00): 13, pid=1, Graphics Exception",
        "[ 1400.0] usb 1-1: new device",
        12345,
    ]
    assert parse_xid_lines(lines) == [
        {"pci": "0000:18:00", "xid": 79,
         "message": "pid=2817, name=python3, GPU has fallen off the bus."},
        {"pci": "0000:2a:00", "xid": 13, "message": "pid=1, Graphics Exception"},
    ]


def test_run_counters_on_driver_580_and_their_absence_on_535() -> None:
    """Driver 580's H200 capture has the clocks event reason counters (microseconds) and
    the PCIe replay counters; driver 535.54.03's A100 capture has only the latter."""
    h200 = (DATA / "h200-nvidia-smi-q-x.xml").read_text()
    [gpu] = parse_smi_xml(h200).gpus
    assert gpu.clocks_event_counters is True
    assert gpu.run_counters == {
        "pcie_replays": 0, "pcie_replay_rollovers": 0, "sw_power_cap_us": 0,
        "sync_boost_us": 0, "sw_thermal_slowdown_us": 0, "hw_thermal_slowdown_us": 0,
        "hw_power_brake_slowdown_us": 0}
    [a100] = parse_smi_xml((DATA / "a100-sxm4-80gb-mig.xml").read_bytes()).gpus
    assert a100.clocks_event_counters is False
    assert a100.run_counters == {"pcie_replays": 0, "pcie_replay_rollovers": 0}


@pytest.mark.parametrize(("text", "value"), [
    ("711320000000 us", 711_320_000_000),  # hours of power capping: past 32 bits, kept
    ("N/A", "absent"),                      # not reported: no value, not a failure
    ("12 ms", None),                        # not the unit nvidia-smi prints: unreadable
    ("-5 us", None),
    ("9007199254740992 us", None),          # 2**53: past what a float holds exactly
])
def test_a_counter_that_is_not_a_count_is_unreadable(text: str, value: object) -> None:
    h200 = (DATA / "h200-nvidia-smi-q-x.xml").read_text().replace(
        "<clocks_event_reasons_counters_hw_therm_slowdown>0 us<",
        f"<clocks_event_reasons_counters_hw_therm_slowdown>{text}<")
    [gpu] = parse_smi_xml(h200).gpus
    assert gpu.run_counters.get("hw_thermal_slowdown_us", "absent") == value
