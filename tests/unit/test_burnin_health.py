"""Telemetry, NVLink and DCGM verdicts, from the raw facts the agent ships back."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from provisioner.burnin import agent
from provisioner.burnin.dcgm import dcgm_verdicts
from provisioner.burnin.health import health_verdicts, nvlink_verdicts
from provisioner.lab import standin_smi

PROFILE = {"tests": {}, "telemetry": {"max_temp_c": 87, "nvlink_links": 18}}


def _gpu(i: int, **over: Any) -> dict[str, Any]:
    g = {"index": i, "model": "NVIDIA H100 80GB HBM3", "architecture": "Hopper",
         "bus_id": f"0000:{0x18 + i:02x}:00.0", "device_id": "0x2330", "uuid": f"GPU-{i}",
         "serial": str(i), "memory_mib": 81559, "vbios": "x", "pcie_gen_max": 5,
         "pcie_gen_current": 5, "pcie_width_max": 16, "pcie_width_current": 16,
         "power_limit_w": 700.0, "temperature_c": 40, "mig": False,
         "ecc_dram_uncorrectable": 0, "remapped_rows": True, "remap_unc": 0,
         "remap_failure": False, "thermal_slowdown": False}
    g.update(over)
    return g


def _xml(gpus: list[dict[str, Any]], st: dict[str, Any] | None = None) -> str:
    st = {"driver_version": "570.124.06", "cuda_version": "12.8", **(st or {})}
    return ("<?xml version=\"1.0\" ?><nvidia_smi_log><driver_version>570.124.06"
            "</driver_version><cuda_version>12.8</cuda_version><attached_gpus>"
            f"{len(gpus)}</attached_gpus>" + "".join(standin_smi.gpu_xml(g, st) for g in gpus)
            + "</nvidia_smi_log>")


def _doc(before: list[dict[str, Any]], after: list[dict[str, Any]] | None = None,
         xid_before: list[str] | None = None, xid_after: list[str] | None = None,
         samples: list[dict[str, Any]] | None = None, sxid_after: list[str] | None = None,
         st: dict[str, Any] | None = None) -> dict[str, Any]:
    after = before if after is None else after
    log = {"source": "dmesg", "lines": 900}  # a readable kernel log
    return {"health": {"before": {"smi_xml": _xml(before, st), "xid_lines": xid_before or [],
                                  "kernel_log": log},
                       "after": {"smi_xml": _xml(after, st), "xid_lines": xid_after or [],
                                 "sxid_lines": sxid_after or [], "kernel_log": log}},
            "telemetry": {"samples": samples or []}, "nvlink": None}


def _failures(doc: dict[str, Any]) -> list[str]:
    return [v.reason for v in health_verdicts(doc, PROFILE) if not v.passed]


def test_healthy_gpus_pass_with_a_verdict_per_check() -> None:
    gpus = [_gpu(0), _gpu(1)]
    samples = [{"t": 1.0, "gpu": 0, "temp_c": 60, "throttle": 0x4}]  # power cap is normal
    verdicts = health_verdicts(_doc(gpus, samples=samples), PROFILE)
    assert all(v.passed for v in verdicts)
    assert {(v.test, v.device) for v in verdicts} >= {
        ("xid", 0), ("xid", 1), ("ecc_uncorrectable", 1), ("row_remap", 0), ("throttle", 1),
        ("temperature", 0)}


def test_only_new_xids_fail_and_name_the_gpu_by_bus() -> None:
    old = "[100.1] NVRM: Xid (PCI:0000:19:00): 31, pid=1, name=x, MMU Fault"
    new = "[200.2] NVRM: Xid (PCI:0000:19:00): 79, pid=2, name=python3, GPU has fallen off"
    gpus = [_gpu(0), _gpu(1)]
    assert _failures(_doc(gpus, xid_before=[old], xid_after=[old])) == []
    failures = _failures(_doc(gpus, xid_before=[old], xid_after=[old, new]))
    assert len(failures) == 1 and failures[0].startswith("xid on GPU 1: XID 79 during burn-in")


def test_ecc_remap_throttle_and_heat_fail_with_reasons() -> None:
    before = [_gpu(0), _gpu(1), _gpu(2), _gpu(3)]
    after = [_gpu(0), _gpu(1, ecc_dram_uncorrectable=3), _gpu(2, remap_failure=True),
             _gpu(3, thermal_slowdown=True, temperature_c=93)]
    failures = _failures(_doc(before, after))
    assert "ecc_uncorrectable on GPU 1: 3 uncorrectable ECC errors (volatile 3, aggregate " \
        "3; 3 new during burn-in)" in failures
    assert any(f.startswith("row_remap on GPU 2: row remapping failed") for f in failures)
    assert any(f.startswith("throttle on GPU 3: hw_slowdown, hw_thermal_slowdown") or
               f.startswith("throttle on GPU 3: hw_thermal_slowdown") for f in failures)
    assert "temperature on GPU 3: 93 C > 87 C" in failures
    assert not any("GPU 0" in f for f in failures)


def test_power_brake_seen_only_in_samples_fails() -> None:
    samples = [{"t": 1.0, "gpu": 0, "temp_c": 50, "throttle": 0x4},
               {"t": 2.0, "gpu": 0, "temp_c": 51, "throttle": 0x84}]
    assert _failures(_doc([_gpu(0)], samples=samples)) == [
        "throttle on GPU 0: hw_power_brake_slowdown active during burn-in (up to 51 C)"]


def test_a_gpu_lost_during_the_run_and_a_dead_smi_fail() -> None:
    assert "gpu_health on node: 1 GPUs disappeared during burn-in" in _failures(
        _doc([_gpu(0), _gpu(1)], [_gpu(0)]))
    doc = _doc([_gpu(0)])
    doc["health"]["after"]["smi_xml"] = None
    assert _failures(doc) == ["gpu_health on node: nvidia-smi stopped answering during burn-in"]
    doc["health"]["after"]["smi_xml"] = "\x00\xff garbage"
    assert _failures(doc) == ["gpu_health on node: nvidia-smi stopped answering during burn-in"]


def test_no_driver_means_no_health_verdicts() -> None:
    assert health_verdicts({"health": {"before": {"smi_xml": None},
                                       "after": {"smi_xml": None}}}, PROFILE) == []
    assert health_verdicts({}, PROFILE) == []


def test_nvlink_status_parsing_and_verdicts() -> None:
    text = ("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-a)\n\t Link 0: 26.562 GB/s\n"
            "\t Link 1: <inactive>\nGPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-b)\n"
            "\t Link 0: 26.562 GB/s\n\t Link 1: 26.562 GB/s\n")
    status = agent.parse_nvlink_status(text)
    assert [len(g["links"]) for g in status] == [2, 2]
    verdicts = nvlink_verdicts(status, {"telemetry": {}})
    assert [(v.device, v.passed, v.reason) for v in verdicts] == [
        (0, False, "nvlink on GPU 0: link 1 inactive"), (1, True, "")]
    short = nvlink_verdicts(status[1:], {"telemetry": {"nvlink_links": 18}})
    assert short[0].reason == "nvlink on GPU 1: 2 links, 18 expected"
    # PCIe GPUs have no links and no verdict.
    assert nvlink_verdicts(agent.parse_nvlink_status("GPU 0: NVIDIA L40S (UUID: x)\n"),
                           {"telemetry": {}}) == []


def _dcgm(results: list[dict[str, Any]], key: str = "DCGM GPU Diagnostic") -> dict[str, Any]:
    return {"output": {key: {"test_categories": [
        {"category": "Hardware", "tests": [{"name": "GPU Memory", "results": results}]}]}}}


def test_dcgm_results_become_verdicts() -> None:
    verdicts = dcgm_verdicts(_dcgm([
        {"gpu_id": "0", "status": "Pass"},
        {"gpu_id": "1", "status": "Fail", "warnings": [{"warning": "DBE on GPU 1",
                                                        "error_id": 95}]},
        {"gpu_id": "2", "status": "Skip"}]))
    # A skipped memory test fails: the run level runs it (test_burnin_dcgm.py).
    assert [(v.test, v.device, v.passed) for v in verdicts] == [
        ("dcgm_gpu_memory", 0, True), ("dcgm_gpu_memory", 1, False),
        ("dcgm_gpu_memory", 2, False)]
    assert verdicts[1].reason == "dcgm_gpu_memory on GPU 1: DCGM says Fail (DBE on GPU 1)"
    # DCGM 4's key and entity ids.
    v4 = dcgm_verdicts(_dcgm([{"entity_id": "3", "status": "Fail"}], "DCGM Diagnostic"))
    assert v4[0].device == 3 and not v4[0].passed


@pytest.mark.parametrize("stored, reason", [
    ({"error": "dcgmi not found (install datacenter-gpu-manager)"},
     "dcgm on node: dcgmi not found (install datacenter-gpu-manager)"),
    ({"output": {"something": 1}}, "dcgm on node: dcgmi printed JSON without test_categories"),
    ({"output": {"DCGM GPU Diagnostic": {"test_categories": []}}},
     "dcgm on node: dcgmi reported no test results"),
])
def test_dcgm_without_results_fails(stored: dict[str, Any], reason: str) -> None:
    assert [(v.passed, v.reason) for v in dcgm_verdicts(stored)] == [(False, reason)]


def test_telemetry_falls_back_to_nvidia_smi(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Without pynvml, samples come from ``nvidia-smi --query-gpu`` (a real program on
    PATH here, printing what the real one prints)."""
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho '0, 45, 312.50, 1980, 0x0000000000000004, 5, 16'\n"
                   "echo '1, 47, [N/A], 1410, 0x0000000000000048, 4, 8'\necho 'garbage'\n")
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setitem(__import__("sys").modules, "pynvml", None)  # no NVML
    with agent.Telemetry(interval=0.05) as t:
        pass
    assert t.source == "nvidia-smi"
    first = [s for s in t.samples if s["gpu"] == 0][0]
    second = [s for s in t.samples if s["gpu"] == 1][0]
    assert (first["temp_c"], first["power_w"], first["sm_mhz"], first["throttle"]) == \
        (45.0, 312.5, 1980.0, 4)
    assert second["power_w"] is None and second["throttle"] == 0x48
    assert (first["pcie_gen"], first["pcie_width"], second["pcie_width"]) == (5, 16, 8)
    json.dumps(t.samples)  # what the agent prints must be JSON


def test_burnin_env_is_validated_and_quoted() -> None:
    from provisioner.burnin.command import _agent_command, _torchrun_command, burnin_env
    from provisioner.errors import InputError

    env = burnin_env({"gpuctl_burnin_env": "NCCL_IB_HCA=mlx5_0,mlx5_1 X=a;b"})
    assert env == {"NCCL_IB_HCA": "mlx5_0,mlx5_1", "X": "a;b"}
    assert "X='a;b' " in _agent_command("/usr/bin/python3", "quick", None, env)
    for bad in ("lower=x", "NOEQUALS", "$(reboot)=1"):
        with pytest.raises(InputError, match="is not NAME=value"):
            burnin_env({"gpuctl_burnin_env": bad})
    cmd = _torchrun_command("/opt/py", 3, 8, "127.0.0.1:29401", False, "127.0.0.2",
                            "gpuctl-burnin-7", {}, 1000, 900)
    assert "--nnodes=3 --nproc-per-node=8 --rdzv-backend=c10d" in cmd
    assert "--rdzv-conf=is_host=0,join_timeout=120 --local-addr=127.0.0.2" in cmd


class _FakeNvml:
    """The pynvml calls the agent makes, answering like a 2-GPU HGX node whose GPU 1 has
    link 3 down (no GPU on this machine; the real library is exercised on GPU nodes)."""

    class NVMLError(Exception):
        pass

    def __init__(self) -> None:
        self.shutdowns = 0

    def nvmlInit(self) -> None:  # noqa: N802
        pass

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return 2

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:  # noqa: N802
        return i

    def nvmlDeviceGetIndex(self, h: int) -> int:  # noqa: N802
        return h

    def nvmlDeviceGetNvLinkState(self, h: int, link: int) -> int:  # noqa: N802
        if link >= 18:
            raise self.NVMLError("invalid argument")
        return 0 if (h, link) == (1, 3) else 1

    def nvmlDeviceGetName(self, h: int) -> bytes:  # noqa: N802
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:  # noqa: N802
        return type("Mem", (), {"total": 81559 << 20})()

    def nvmlDeviceGetUUID(self, h: int) -> str:  # noqa: N802
        return f"GPU-{h}"

    def nvmlDeviceGetPciInfo(self, h: int) -> Any:  # noqa: N802
        return type("Pci", (), {"busId": f"00000000:{0x18 + h:02X}:00.0".encode()})()

    def nvmlDeviceGetCurrPcieLinkWidth(self, h: int) -> int:  # noqa: N802
        return 16

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:  # noqa: N802
        return 612_000

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:  # noqa: N802
        return 61 + h

    def nvmlDeviceGetClockInfo(self, h: int, clock: int) -> int:  # noqa: N802
        return 1980

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: int) -> int:  # noqa: N802
        return 0x4


def test_nvml_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeNvml()
    monkeypatch.setitem(__import__("sys").modules, "pynvml", fake)
    status = agent.nvlink_status()
    assert status is not None and [len(g["links"]) for g in status] == [18, 18]
    assert [v.reason for v in nvlink_verdicts(status, PROFILE) if not v.passed] == [
        "nvlink on GPU 1: link 3 inactive"]
    assert agent.gpu_inventory() == [
        {"index": i, "name": "NVIDIA H100 80GB HBM3", "uuid": f"GPU-{i}",
         "pci_bus_id": f"00000000:{0x18 + i:02X}:00.0", "memory_mib": 81559} for i in (0, 1)]
    with agent.Telemetry(interval=0.05) as t:
        pass
    assert t.source == "nvml"
    assert {(s["gpu"], s["temp_c"], s["power_w"], s["throttle"]) for s in t.samples} == {
        (0, 61, 612.0, 4), (1, 62, 612.0, 4)}
    # A metric the GPU (here: the fake) does not report is None, not an exception.
    assert {(s["pcie_width"], s["pcie_gen"]) for s in t.samples} == {(16, None)}
    assert fake.shutdowns == 0  # one NVML session for the process, shut down at exit


def test_inventory_checks_count_model_and_memory() -> None:
    from provisioner.burnin.run import _inventory_verdict
    from provisioner.catalogue import catalogue
    from provisioner.db.models import Node

    node = Node(name="n", address="127.0.0.1", sku="h100-sxm-8")
    sku = catalogue()["h100-sxm-8"]
    profile = {"tests": {}, "gpu_memory_mib_min": 81000}
    h100 = {"name": "NVIDIA H100 80GB HBM3", "memory_mib": 81559}
    assert _inventory_verdict(node, sku, {"inventory": [h100] * 8}, profile).passed
    v = _inventory_verdict(node, sku, {"inventory": [h100] * 7}, profile)
    assert v.reason == "inventory: 7 GPUs, SKU h100-sxm-8 has 8"
    small = {"name": "NVIDIA H100 80GB HBM3", "memory_mib": 65536}
    v = _inventory_verdict(node, sku, {"inventory": [h100] * 5 + [small] + [h100] * 2}, profile)
    assert v.reason == "inventory: GPU 5 has 65536 MiB, below 81000"
    v = _inventory_verdict(node, sku, {"inventory": [{"name": "NVIDIA A100-SXM4-80GB",
                                                 "memory_mib": 81920}] * 8}, profile)
    assert v.reason == "inventory: unexpected model NVIDIA A100-SXM4-80GB"
    # An 8x H100 PCIe box is not an HGX H100 (the catalogue excludes PCIe and NVL parts).
    v = _inventory_verdict(node, sku, {"inventory": [{"name": "NVIDIA H100 PCIe",
                                                      "memory_mib": 81559}] * 8}, profile)
    assert v.reason == "inventory: unexpected model NVIDIA H100 PCIe"


def test_an_unreadable_kernel_log_fails_closed() -> None:
    doc = _doc([_gpu(0), _gpu(1)])
    assert _failures(doc) == []
    doc["health"]["after"]["kernel_log"] = {"source": None, "error": "dmesg: denied"}
    bad = [v for v in health_verdicts(doc, PROFILE) if not v.passed]
    assert [v.test for v in bad] == ["kernel_log"]
    assert bad[0].reason.endswith("XIDs cannot be checked (after: dmesg: denied)")
    del doc["health"]["before"]["kernel_log"]  # an agent that said nothing about it
    assert "before: the agent reported no kernel log" in " ".join(
        v.reason for v in health_verdicts(doc, PROFILE) if not v.passed)


def test_extended_runs_dcgm_level_4_and_the_stand_in_answers_it(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import io
    import json as json_
    from contextlib import redirect_stdout

    from provisioner.burnin.dcgm import dcgm_command
    from provisioner.lab import standin_dcgmi

    assert [dcgm_command(lv) for lv in ("quick", "standard", "extended")] == [
        "dcgmi diag -r 1 --json", "dcgmi diag -r 2 --json", "dcgmi diag -r 4 --json"]
    state = tmp_path / "gpus.json"
    state.write_text(json_.dumps({"gpus": [_gpu(0), _gpu(1, ecc_dram_uncorrectable=2)]}))
    monkeypatch.setattr(standin_dcgmi, "STATE", str(state))
    out = io.StringIO()
    with redirect_stdout(out):
        assert standin_dcgmi.main(["diag", "-r", "4", "--json"]) == 226
    verdicts = dcgm_verdicts({"exit_code": 226, "output": json_.loads(out.getvalue())})
    failed = {(v.test, v.device) for v in verdicts if not v.passed}
    assert ("dcgm_memtest", 1) in failed and ("dcgm_pulse_test", 0) not in failed
    assert standin_dcgmi.main(["diag", "-r", "5", "--json"]) == 1


def test_ecc_must_be_on_now_and_after_the_next_reset() -> None:
    doc = _doc([_gpu(0), _gpu(1, ecc_mode="Disabled")])
    strict = {**PROFILE, "ecc_required": True}
    bad = [v for v in health_verdicts(doc, strict) if not v.passed]
    assert [(v.test, v.device) for v in bad] == [("ecc_mode", 1)]
    assert bad[0].reason.startswith("ecc_mode on GPU 1: ECC is Disabled (pending Disabled)")
    assert not [v for v in health_verdicts(doc, PROFILE) if v.test == "ecc_mode"]


def test_counters_under_load_fabric_and_sxid_fail_with_reasons() -> None:
    """The verdicts added for issue 10, each from what the stand-in nvidia-smi prints for
    the matching lab fault: correctable SRAM errors and remapped rows over Azure's public
    limits, a PCIe link below its maximum while the tests ran, a GPU not registered with
    the NVSwitch fabric, and a new NVSwitch SXid."""
    gpus = [_gpu(0, ecc_sram_correctable=12000), _gpu(1, remap_unc=600), _gpu(2)]
    samples = [{"t": 1.0, "gpu": 2, "pcie_gen": 5, "pcie_width": 8},
               {"t": 2.0, "gpu": 2, "pcie_gen": 5, "pcie_width": 16}]
    sxid = ("[ 9123.5] nvidia-nvswitch0: SXid (PCI:0000:05:00.0): 12028, Non-fatal, Link 32 "
            "egress non-posted PRIV error (First)")
    doc = _doc(gpus, samples=samples, sxid_after=[sxid], st={"nvswitch": True})
    profile = {**PROFILE, "fabric_required": True}
    failed = {(v.test, v.device): v.reason for v in health_verdicts(doc, profile)
              if not v.passed}
    assert failed[("ecc_sram_correctable", 0)] == (
        "ecc_sram_correctable on GPU 0: 12000 correctable SRAM ECC errors > 10000")
    assert failed[("remapped_rows", 1)] == (
        "remapped_rows on GPU 1: 600 rows remapped for uncorrectable errors > 512")
    assert failed[("pcie_link", 2)].startswith("pcie_link on GPU 2: x8 gen5 under load, its "
                                               "maximum is x16 gen5")
    # No fabric manager pidfile here: the stand-in reports the registration unfinished.
    assert failed[("fabric", 0)].startswith("fabric on GPU 0: fabric state In Progress")
    assert failed[("nvswitch_sxid", None)].startswith(
        "nvswitch_sxid on node: 1 new SXid during burn-in, first 12028 on nvidia-nvswitch0")
    # The same GPUs with counters under the limits, the link at x16 and no SXid pass.
    calm = _doc([_gpu(0, ecc_sram_correctable=10000), _gpu(1, remap_unc=512)],
                samples=[{"t": 1.0, "gpu": 0, "pcie_gen": 5, "pcie_width": 16}])
    verdicts = health_verdicts(calm, PROFILE)
    assert all(v.passed for v in verdicts)
    assert {"ecc_sram_correctable", "remapped_rows", "pcie_link"} <= {v.test for v in verdicts}


def test_fabric_unreadable_on_an_nvswitch_sku_fails() -> None:
    """A GPU that reports no fabric state (N/A) on a SKU that needs one fails closed."""
    doc = _doc([_gpu(0)], st={"nvswitch": False})
    fab = [v for v in health_verdicts(doc, {**PROFILE, "fabric_required": True})
           if v.test == "fabric"]
    assert len(fab) == 1 and not fab[0].passed
    assert "nvidia-smi reports no fabric state" in fab[0].reason


def test_the_ring_of_pairs_names_the_bad_node_or_link() -> None:
    from provisioner.burnin.multinode import blame, ring_rounds

    rounds = ring_rounds(4)
    assert rounds == [[(0, 1), (2, 3)], [(1, 2), (3, 0)]]
    assert ring_rounds(5) == [[(0, 1), (2, 3)], [(1, 2), (3, 4)], [(4, 0)]]
    for count in range(3, 9):  # every node in two pairs, no node twice in a round
        edges = [e for r in ring_rounds(count) for e in r]
        assert all(sum(i in e for e in edges) == 2 for i in range(count))
        assert all(len({i for e in r for i in e}) == 2 * len(r) for r in ring_rounds(count))
    # Node 2's NIC is down: both of its pairs fail, the others pass.
    assert blame(4, {(1, 2), (2, 3)}) == ({2}, set())
    # Only the cable between 0 and 1: each works with its other neighbour.
    assert blame(4, {(0, 1)}) == (set(), {(0, 1)})
    # Two nodes: a failure cannot be pinned on either, so it is the link's.
    assert blame(2, {(0, 1)}) == (set(), {(0, 1)})


H200_580 = (Path(__file__).parents[1] / "data/h200-nvidia-smi-q-x.xml").read_text()


def _h200(edit: tuple[str, str] | None = None, before_edit: tuple[str, str] | None = None,
          capture: str = H200_580) -> dict[str, Any]:
    """The real H200 capture (driver 580.159.04) before and after a burn-in, the
    after-snapshot (and, with ``before_edit``, the one before) with one field changed."""
    after, before = capture, capture
    if edit is not None:
        assert after.count(edit[0]) >= 1, edit
        after = after.replace(edit[0], edit[1], 1)
    if before_edit is not None:
        assert before.count(before_edit[0]) >= 1, before_edit
        before = before.replace(before_edit[0], before_edit[1], 1)
    log = {"source": "dmesg", "lines": 900}
    return {"health": {"before": {"smi_xml": before, "xid_lines": [], "kernel_log": log},
                       "after": {"smi_xml": after, "xid_lines": [], "sxid_lines": [],
                                 "kernel_log": log}},
            "telemetry": {"samples": []}, "nvlink": None}


@pytest.mark.parametrize(("edit", "named"), [
    (("<sram_uncorrectable_secded>0<", "<sram_uncorrectable_secded>3<"),
     "ecc_sram_uncorrectable on GPU 0: 3 uncorrectable SRAM ECC errors (volatile 3"),
    (("<sram_uncorrectable_parity>0</sram_uncorrectable_parity>\n\t\t\t\t<sram_uncorrectable_"
      "secded>0</sram_uncorrectable_secded>\n\t\t\t\t<dram_correctable>0</dram_correctable>\n"
      "\t\t\t\t<dram_uncorrectable>0</dram_uncorrectable>\n\t\t\t\t<sram_threshold",
      "<sram_uncorrectable_parity>3</sram_uncorrectable_parity>\n\t\t\t\t<sram_uncorrectable_"
      "secded>0</sram_uncorrectable_secded>\n\t\t\t\t<dram_correctable>0</dram_correctable>\n"
      "\t\t\t\t<dram_uncorrectable>0</dram_uncorrectable>\n\t\t\t\t<sram_threshold"),
     "ecc_sram_uncorrectable on GPU 0: 3 uncorrectable SRAM ECC errors (volatile 0, "
     "aggregate 3)"),
    (("<dram_uncorrectable>0</dram_uncorrectable>\n\t\t\t\t<sram_threshold",
      "<dram_uncorrectable>5</dram_uncorrectable>\n\t\t\t\t<sram_threshold"),
     "ecc_uncorrectable on GPU 0: 5 uncorrectable ECC errors (volatile 0, aggregate 5"),
    (("<dram_correctable>0<", "<dram_correctable>50000000<"),
     "ecc_dram_errors on GPU 0: 50000000 DRAM ECC errors (correctable volatile) > 20000000"),
    (("<unrepairable_memory>No<", "<unrepairable_memory>Yes<"),
     "ecc_memory_state on GPU 0: unrepairable_memory"),
    (("<channel_repair_pending>No<", "<channel_repair_pending>Yes<"),
     "ecc_memory_state on GPU 0: channel_repair_pending"),
    (("<tpc_repair_pending>No<", "<tpc_repair_pending>Yes<"),
     "ecc_memory_state on GPU 0: tpc_repair_pending"),
    (("<sram_threshold_exceeded>No<", "<sram_threshold_exceeded>Yes<"),
     "ecc_memory_state on GPU 0: sram_threshold_exceeded"),
])
def test_driver_580_ecc_fields_each_fail_naming_the_field(edit: tuple[str, str],
                                                            named: str) -> None:
    failures = [v.reason for v in health_verdicts(_h200(edit), PROFILE) if not v.passed]
    assert any(f.startswith(named) for f in failures), failures


def test_the_clean_driver_580_capture_passes_every_ecc_check() -> None:
    verdicts = health_verdicts(_h200(), PROFILE)
    tests = {v.test for v in verdicts}
    assert {"ecc_uncorrectable", "ecc_sram_uncorrectable", "ecc_dram_errors",
            "ecc_memory_state", "ecc_sram_correctable", "remapped_rows"} <= tests, tests
    assert all(v.passed for v in verdicts if v.test.startswith(("ecc", "remapped"))), \
        [v.reason for v in verdicts if not v.passed]


A100_535 = (Path(__file__).parents[1] / "data/a100-sxm4-80gb-mig.xml").read_text()
AGENT_H200 = Path(__file__).parents[1] / "data/h200-agent-quick.json"
HW_THERM = "<clocks_event_reasons_counters_hw_therm_slowdown>0 us<"


@pytest.mark.parametrize(("edit", "named"), [
    (("<dram_correctable>0<", "<dram_correctable>11<"),
     "ecc_dram_correctable_rise on GPU 0: 11 correctable DRAM ECC errors during burn-in "
     "(0 -> 11) > 10"),
    ((HW_THERM, "<clocks_event_reasons_counters_hw_therm_slowdown>1500000 us<"),
     "throttle_counters on GPU 0: hw_thermal_slowdown for 1.5 s during burn-in "
     "(nvidia-smi's clocks event reason counters)"),
    (("<clocks_event_reasons_counters_sw_therm_slowdown>0 us<",
      "<clocks_event_reasons_counters_sw_therm_slowdown>300 us<"),
     "throttle_counters on GPU 0: sw_thermal_slowdown for 300 us during burn-in"),
    (("<clocks_event_reasons_counters_hw_power_brake>0 us<",
      "<clocks_event_reasons_counters_hw_power_brake>2500 us<"),
     "throttle_counters on GPU 0: hw_power_brake_slowdown for 2.5 ms during burn-in"),
    ((HW_THERM, "<clocks_event_reasons_counters_hw_therm_slowdown>soon<"),
     "throttle_counters on GPU 0: hw_thermal_slowdown counter could not be read before "
     "and after the run"),
    (("<replay_counter>0<", "<replay_counter>81<"),
     "pcie_replays on GPU 0: 81 replays (0 -> 81) > 80 during burn-in"),
    (("<replay_rollover_counter>0<", "<replay_rollover_counter>1<"),
     "pcie_replays on GPU 0: the replay counter rolled over 1 times during burn-in"),
    (("<replay_counter>0<", "<replay_counter>lots<"),
     "pcie_replays on GPU 0: the PCIe replay counter could not be read"),
])
def test_counters_that_rose_during_the_run_fail_naming_the_field(edit: tuple[str, str],
                                                                  named: str) -> None:
    """A slowdown, replay burst or corrected errors between two 1 Hz samples leave their
    mark in the driver's counters: each fails its GPU, naming the counter."""
    failures = [v.reason for v in health_verdicts(_h200(edit), PROFILE) if not v.passed]
    assert any(f.startswith(named) for f in failures), failures
    assert len(failures) == 1, failures


def test_counters_at_their_limits_pass_and_a_profile_may_move_them() -> None:
    at_limits = _h200(("<dram_correctable>0<", "<dram_correctable>10<"))
    assert not [v for v in health_verdicts(at_limits, PROFILE) if not v.passed]
    replays = _h200(("<replay_counter>0<", "<replay_counter>80<"))
    assert not [v for v in health_verdicts(replays, PROFILE) if not v.passed]
    # Power capping is how a GPU under GEMM is meant to run: its counter may grow.
    capped = _h200(("<clocks_event_reasons_counters_sw_power_cap>0 us<",
                    "<clocks_event_reasons_counters_sw_power_cap>10043631 us<"))
    assert not [v for v in health_verdicts(capped, PROFILE) if not v.passed]
    lenient = {**PROFILE, "dram_correctable_rise_max": 100, "pcie_replays_max": 1000}
    assert not [v for v in health_verdicts(_h200(("<dram_correctable>0<",
                                                  "<dram_correctable>11<")), lenient)
                if not v.passed]
    # A counter reset during the run (a GPU reset clears volatile counts): what it holds
    # now came after the reset.
    reset = _h200(("<dram_correctable>0<", "<dram_correctable>12<"),
                  ("<dram_correctable>0<", "<dram_correctable>500<"))
    assert [v.reason for v in health_verdicts(reset, PROFILE) if not v.passed] == [
        "ecc_dram_correctable_rise on GPU 0: 12 correctable DRAM ECC errors during "
        "burn-in (500 -> 12) > 10"]


def test_a_counter_with_nothing_before_the_run_to_compare_fails_closed() -> None:
    unreadable_before = _h200(before_edit=(HW_THERM, HW_THERM.replace("0 us", "x")))
    assert [v.reason for v in health_verdicts(unreadable_before, PROFILE) if not v.passed
            ] == ["throttle_counters on GPU 0: hw_thermal_slowdown counter could not be "
                  "read before and after the run (<clocks_event_reasons_counters>), so a "
                  "slowdown between samples cannot be ruled out"]
    # The GPU is not in the snapshot before the run (another bus id): nothing compares.
    moved = _h200(before_edit=("<pci_bus_id>00000000:00:06.0<", "<pci_bus_id>00000000:00:07.0<"))
    failed = {v.test for v in health_verdicts(moved, PROFILE) if not v.passed}
    assert failed == {"ecc_dram_correctable_rise", "throttle_counters", "pcie_replays"}
    # The element is there but holds no counter at all.
    empty = _h200(("<clocks_event_reasons_counters>", "<clocks_event_reasons_counters/><x>"),
                  ("<clocks_event_reasons_counters>", "<clocks_event_reasons_counters/><x>"))
    empty["health"]["after"]["smi_xml"] = empty["health"]["after"]["smi_xml"].replace(
        "</clocks_event_reasons_counters>", "</x>")
    empty["health"]["before"]["smi_xml"] = empty["health"]["before"]["smi_xml"].replace(
        "</clocks_event_reasons_counters>", "</x>")
    assert [v.reason for v in health_verdicts(empty, PROFILE) if not v.passed] == [
        "throttle_counters on GPU 0: every bad reason's counter could not be read before "
        "and after the run (<clocks_event_reasons_counters>), so a slowdown between "
        "samples cannot be ruled out"]


def test_an_older_schema_without_event_counters_is_not_a_failure() -> None:
    """Driver 535.54.03 (the A100 capture) has no <clocks_event_reasons_counters>: no
    verdict on them, while its replay and DRAM counters are still compared."""
    verdicts = health_verdicts(_h200(capture=A100_535), PROFILE)
    tests = {v.test for v in verdicts}
    assert "throttle_counters" not in tests
    assert {"pcie_replays", "ecc_dram_correctable_rise"} <= tests
    assert all(v.passed for v in verdicts), [v.reason for v in verdicts if not v.passed]


def test_the_real_h200_agent_document_passes_every_check() -> None:
    """The agent's document from a real H200 (NVML telemetry, power capped for 10 s
    during the run, no bad counter moved) passes, with a verdict from each source."""
    doc = json.loads(AGENT_H200.read_text())
    verdicts = health_verdicts(doc, {"telemetry": {}})
    assert all(v.passed for v in verdicts), [v.reason for v in verdicts if not v.passed]
    assert {"throttle", "throttle_counters", "pcie_link", "pcie_replays",
            "ecc_dram_correctable_rise"} <= {v.test for v in verdicts}


@pytest.mark.parametrize(("drop", "named"), [
    (("throttle",), "throttle on GPU 0: nvml read no clocks event reasons in 29 samples, so "
                    "a slowdown during burn-in cannot be ruled out"),
    (("pcie_gen", "pcie_width"), "pcie_link on GPU 0: nvml read no PCIe link width or "
                                 "generation in 29 samples, so the link under load cannot "
                                 "be checked"),
    (("pcie_width",), "pcie_link on GPU 0: nvml read no PCIe link width in 29 samples"),
])
def test_telemetry_without_a_field_fails_the_check_it_feeds(drop: tuple[str, ...],
                                                            named: str) -> None:
    """The real H200 document with one field None in every sample (NVML answered, that
    metric did not): the check it feeds fails saying so, instead of passing unseen."""
    doc = json.loads(AGENT_H200.read_text())
    for sample in doc["telemetry"]["samples"]:
        sample.update(dict.fromkeys(drop))
    failures = [v.reason for v in health_verdicts(doc, {"telemetry": {}}) if not v.passed]
    assert len(failures) == 1 and failures[0].startswith(named), failures


def test_no_samples_from_a_gpu_the_agent_could_sample_fails_both_checks() -> None:
    doc = json.loads(AGENT_H200.read_text())
    doc["telemetry"]["samples"] = []
    assert {v.test for v in health_verdicts(doc, {"telemetry": {}}) if not v.passed} == {
        "throttle", "pcie_link"}
    # No maximum width in nvidia-smi -q to hold the sampled link against.
    doc = json.loads(AGENT_H200.read_text())
    for when in ("before", "after"):
        doc["health"][when]["smi_xml"] = doc["health"][when]["smi_xml"].replace(
            "<max_link_width>16x<", "<max_link_width>N/A<")
    assert [v.reason for v in health_verdicts(doc, {"telemetry": {}}) if not v.passed] == [
        "pcie_link on GPU 0: nvidia-smi -q gives no maximum link width to compare the link "
        "under load with"]


def test_telemetry_that_hung_is_one_node_verdict_not_every_gpus() -> None:
    """NVML hung at the first sample (the agent's telemetry.error): the node fails once,
    naming it, instead of each healthy GPU failing its throttle and PCIe checks."""
    doc = json.loads(AGENT_H200.read_text())
    doc["telemetry"]["samples"] = []
    doc["telemetry"]["error"] = "nvmlDeviceGetPowerUsage did not return within 30 s"
    failed = [v for v in health_verdicts(doc, {"telemetry": {}}) if not v.passed]
    assert [(v.test, v.device) for v in failed] == [("telemetry", None)]
    assert "did not return within 30 s" in failed[0].reason


def test_cpu_and_lab_runs_are_judged_as_before() -> None:
    """A CPU-only node (the agent could not sample: available False, no samples) keeps
    the snapshot-only checks; a lab node whose stand-in nvidia-smi answers the agent's
    query (throttle and link fields in every sample) passes them."""
    cpu = _doc([_gpu(0)])
    cpu["telemetry"] = {"available": False, "source": "none", "samples": []}
    assert _failures(cpu) == []
    assert "pcie_link" not in {v.test for v in health_verdicts(cpu, PROFILE)}
    lab = _doc([_gpu(0), _gpu(1)], samples=[
        {"t": 1.0, "gpu": g, "temp_c": 45.0, "power_w": 385.0, "sm_mhz": 1980.0,
         "throttle": 0x4, "pcie_gen": 5, "pcie_width": 16} for g in (0, 1)])
    lab["telemetry"].update(available=True, source="nvidia-smi")
    verdicts = health_verdicts(lab, PROFILE)
    assert all(v.passed for v in verdicts), [v.reason for v in verdicts if not v.passed]
    assert {("pcie_link", 1), ("throttle", 1)} <= {(v.test, v.device) for v in verdicts}


def test_the_evidence_kept_holds_the_counters_that_rose() -> None:
    from provisioner.burnin.health import health_evidence

    doc = _h200((HW_THERM, "<clocks_event_reasons_counters_hw_therm_slowdown>1500000 us<"))
    evidence = health_evidence(doc)
    assert evidence["before"][0]["run_counters"]["hw_thermal_slowdown_us"] == 0
    assert evidence["after"][0]["run_counters"]["hw_thermal_slowdown_us"] == 1_500_000
    assert evidence["after"][0]["ecc_dram_correctable_volatile"] == 0
    json.dumps(evidence)  # stored as JSON
