"""The burn-in agent's one NVML entry point (``nvml``/``nvml_query``) and its one
``nvidia-smi --query-gpu`` reader, against fake pynvml modules and a fake nvidia-smi."""

from __future__ import annotations

import os
import stat
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from provisioner.burnin import agent  # noqa: E402

# --query-gpu lines as nvidia-smi prints them (power.draw [N/A] where a GPU cannot report
# it, the throttle reasons as a hex mask), a line that is no GPU's, one a cell short.
SAMPLE_LINES = ["0, 45, 312.50, 1980, 0x0000000000000004, 5, 16",
                "1, 47, [N/A], 1410, 0x0000000000000048, 4, 8",
                "No devices were found", "2, 47, 100.0, 1410, 0x0, 4"]


class NVMLError(Exception):
    """pynvml's base error class (its NVMLError_* subclasses derive from it)."""


def fake_pynvml(gpus: int = 2, init_error: str | None = None) -> types.ModuleType:
    """A module standing in for pynvml: counts nvmlInit and nvmlShutdown, knows no
    NVLink, and raises NVMLError for what an old GPU does not report (power)."""
    mod = types.ModuleType("pynvml")
    calls = {"init": 0, "shutdown": 0}

    def init() -> None:
        calls["init"] += 1
        if init_error:
            raise NVMLError(init_error)

    def not_supported(*args: Any) -> Any:
        raise NVMLError("Not Supported")

    def pci(h: int) -> Any:
        return types.SimpleNamespace(busId=f"00000000:{0x18 + h:02X}:00.0".encode())

    functions: dict[str, Callable[..., Any]] = {
        "nvmlInit": init,
        "nvmlShutdown": lambda: calls.__setitem__("shutdown", calls["shutdown"] + 1),
        "nvmlDeviceGetCount": lambda: gpus,
        "nvmlDeviceGetHandleByIndex": lambda i: i,
        "nvmlDeviceGetIndex": lambda h: h,
        "nvmlDeviceGetNvLinkState": not_supported,
        "nvmlDeviceGetName": lambda h: b"NVIDIA H100 80GB HBM3",
        "nvmlDeviceGetUUID": lambda h: f"GPU-{h}",
        "nvmlDeviceGetPciInfo": pci,
        "nvmlDeviceGetMemoryInfo": lambda h: types.SimpleNamespace(total=81559 << 20),
        "nvmlDeviceGetPowerUsage": not_supported,
        "nvmlDeviceGetTemperature": lambda h, sensor: 60 + h,
        "nvmlDeviceGetClockInfo": lambda h, clock: 1980,
        "nvmlDeviceGetCurrentClocksEventReasons": lambda h: 0x4,
        "nvmlDeviceGetCurrPcieLinkGeneration": lambda h: 5,
        "nvmlDeviceGetCurrPcieLinkWidth": lambda h: 16,
    }
    for name, func in functions.items():
        setattr(mod, name, func)
    mod.NVMLError = NVMLError  # type: ignore[attr-defined]
    mod.calls = calls  # type: ignore[attr-defined]
    return mod


@pytest.fixture(autouse=True)
def fresh_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as a process that has not tried NVML yet, nor seen a source hang."""
    monkeypatch.setattr(agent, "_NVML", {"key": None, "lib": None, "tried": False})
    monkeypatch.setattr(agent, "_UNANSWERED", {})


@pytest.fixture
def smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[list[str]], Path]:
    """Puts an ``nvidia-smi`` on PATH that prints the given lines and writes its arguments
    to the file returned."""
    def install(lines: list[str]) -> Path:
        args = tmp_path / "args"
        script = tmp_path / "nvidia-smi"
        script.write_text("#!/bin/sh\n" + f'echo "$@" > {args}\n' +
                          "".join(f"echo '{line}'\n" for line in lines))
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
        return args

    return install


def test_query_returns_the_default_without_pynvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    assert agent.nvml() is None
    assert agent.nvml_query("nvmlDeviceGetCount") is None
    assert agent.nvml_query("nvmlDeviceGetCount", default="N/A") == "N/A"
    assert agent.nvml_query(lambda: 1, default=0) == 0  # not even called


def test_query_returns_the_default_when_nvml_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert agent.nvml() is fake
    assert agent.nvml_query("nvmlDeviceGetTemperature", 1, 0) == 61
    assert agent.nvml_query("nvmlDeviceGetPowerUsage", 0, default=-1) == -1  # NVMLError
    assert agent.nvml_query("nvmlDeviceGetPowerUsage", 0) is None
    assert agent.nvml_query("nvmlDeviceGetFanSpeed", 0, default=-1) == -1  # not in pynvml
    assert agent.nvml_query(lambda h: fake.nvmlDeviceGetPciInfo(h).busId, 1) == \
        b"00000000:19:00.0"
    assert agent.nvml_query(lambda: fake.nvmlDeviceGetNvLinkState(0, 0), default=7) == 7


def test_a_failed_nvml_init_is_remembered_and_nvidia_smi_answers(
        monkeypatch: pytest.MonkeyPatch, smi: Callable[[list[str]], Path]) -> None:
    fake = fake_pynvml(init_error="Driver Not Loaded")
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    # Printed whatever is asked: each query takes the lines with its number of cells.
    smi(["0, NVIDIA H100 80GB HBM3, GPU-abc, 00000000:18:00.0, 81559",
         "1, NVIDIA H100 80GB HBM3, GPU-def, 00000000:19:00.0, [N/A]", SAMPLE_LINES[0]])
    assert agent.nvml_query("nvmlDeviceGetCount", default=-1) == -1
    assert agent.gpu_inventory() == [
        {"index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-abc",
         "pci_bus_id": "00000000:18:00.0", "memory_mib": 81559},
        {"index": 1, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-def",
         "pci_bus_id": "00000000:19:00.0", "memory_mib": None}]
    assert agent.Telemetry().source == "nvidia-smi"
    assert agent.nvlink_status() == []  # the fake nvidia-smi prints no "GPU n:" lines
    assert fake.calls["init"] == 1


def test_nvml_is_initialised_once_for_every_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    at_exit: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
    monkeypatch.setattr(agent.atexit, "register", lambda f, *a: at_exit.append((f, a)))
    t = agent.Telemetry()
    t.sample()
    t.sample()
    inventory = agent.gpu_inventory()
    status = agent.nvlink_status()
    assert agent.Telemetry().source == t.source == "nvml"
    assert fake.calls == {"init": 1, "shutdown": 0}
    assert [g["pci_bus_id"] for g in inventory] == ["00000000:18:00.0", "00000000:19:00.0"]
    assert status == [{"gpu": 0, "links": []}, {"gpu": 1, "links": []}]
    assert t.samples[1] == {"t": t.samples[1]["t"], "gpu": 1, "temp_c": 61, "power_w": None,
                            "sm_mhz": 1980, "throttle": 4, "pcie_gen": 5, "pcie_width": 16}
    assert len(t.samples) == 4
    # NVML is shut down once, at exit.
    assert len(at_exit) == 1
    func, args = at_exit[0]
    func(*args)
    assert fake.calls == {"init": 1, "shutdown": 1}


def test_a_driver_failing_part_way_falls_back_to_nvidia_smi(
        monkeypatch: pytest.MonkeyPatch, smi: Callable[[list[str]], Path]) -> None:
    def lost(h: int) -> str:
        raise NVMLError("GPU is lost")

    fake = fake_pynvml()
    fake.nvmlDeviceGetUUID = lost  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    smi(["0, NVIDIA H100 80GB HBM3, GPU-abc, 00000000:18:00.0, 81559"])
    assert [g["uuid"] for g in agent.gpu_inventory()] == ["GPU-abc"]


def test_query_gpu_reads_n_a_and_hex_throttle_masks(
        monkeypatch: pytest.MonkeyPatch, smi: Callable[[list[str]], Path]) -> None:
    args = smi(SAMPLE_LINES)
    rows = agent.smi_query_gpu(list(agent.SMI_SAMPLE), 30)
    assert args.read_text().split() == [
        "--query-gpu=index,temperature.gpu,power.draw,clocks.sm,"
        "clocks_throttle_reasons.active,pcie.link.gen.current,pcie.link.width.current",
        "--format=csv,noheader,nounits"]
    assert [r["index"] for r in rows] == ["0", "1"]  # not the message, not the short line
    assert rows[1] == {"index": "1", "temperature.gpu": "47", "power.draw": "[N/A]",
                       "clocks.sm": "1410",
                       "clocks_throttle_reasons.active": "0x0000000000000048",
                       "pcie.link.gen.current": "4", "pcie.link.width.current": "8"}
    assert agent._number(rows[1]["power.draw"]) is None
    assert agent._number(rows[1]["clocks_throttle_reasons.active"]) == 0x48

    monkeypatch.setitem(sys.modules, "pynvml", None)
    t = agent.Telemetry()
    t.sample()
    assert t.source == "nvidia-smi"
    assert [{k: v for k, v in s.items() if k != "t"} for s in t.samples] == [
        {"gpu": 0, "temp_c": 45.0, "power_w": 312.5, "sm_mhz": 1980.0, "throttle": 4,
         "pcie_gen": 5, "pcie_width": 16},
        {"gpu": 1, "temp_c": 47.0, "power_w": None, "sm_mhz": 1410.0, "throttle": 0x48,
         "pcie_gen": 4, "pcie_width": 8}]
    assert [list(s) for s in t.samples] == [["t", "gpu", "temp_c", "power_w", "sm_mhz",
                                             "throttle", "pcie_gen", "pcie_width"]] * 2


def test_query_gpu_is_empty_without_nvidia_smi(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi here
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert agent.smi_query_gpu(["name"]) == []
    assert agent.gpu_inventory() == []
    assert agent.Telemetry().source == "none"


@pytest.fixture
def hung_gpu(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A fake pynvml whose temperature reads never return (as on a GPU whose driver hung),
    NVML's bound cut to 0.5 s; the stuck threads are let go at the end."""
    import threading

    release = threading.Event()
    fake = fake_pynvml()
    fake.nvmlDeviceGetTemperature = lambda h, sensor: release.wait(600)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(agent, "NVML_TIMEOUT_S", 0.5)
    yield fake
    release.set()


def test_a_hung_nvml_read_does_not_hang_telemetry(hung_gpu: Any) -> None:
    """The read is abandoned after its bound, NVML is named as unanswered with the call,
    and neither later reads nor leaving the telemetry block wait for it again."""
    import time

    start = time.monotonic()
    with agent.Telemetry(interval=0.1) as telemetry:
        time.sleep(0.3)
    assert time.monotonic() - start < 3
    assert telemetry.source == "nvml" and telemetry.samples == []
    assert telemetry.error == agent._UNANSWERED["nvml"] == (
        "nvmlDeviceGetTemperature did not return within 0.5 s (a hung GPU or driver); NVML "
        "not asked again")
    start = time.monotonic()
    assert agent.nvml_query("nvmlDeviceGetCount", default=-1) == -1
    assert agent.nvml_query("nvmlDeviceGetClockInfo", 0, 1) is None
    assert time.monotonic() - start < 1
    assert telemetry.as_dict()["error"] == telemetry.error


def test_a_hung_nvml_read_does_not_hang_the_agent(hung_gpu: Any, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("PATH", str(tmp_path))  # and no nvidia-smi to fall back on
    start = time.monotonic()
    doc = agent.run_level("quick", seconds=0.05, ranks=1, cpu_devices=2)
    assert time.monotonic() - start < 20
    assert [g["uuid"] for g in doc["inventory"]] == ["GPU-0", "GPU-1"]  # read before it hung
    assert all(r["ok"] for r in doc["results"])
    assert "nvmlDeviceGetTemperature did not return" in doc["telemetry"]["error"]
    assert doc["unanswered"]["nvml"] == doc["telemetry"]["error"]
    assert doc["nvlink"] is None and doc["stopped_early"] is None


def test_a_hung_nvidia_smi_is_killed_and_not_asked_again(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import time

    script = tmp_path / "nvidia-smi"
    script.write_text("#!/bin/sh\nexec sleep 60\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setitem(sys.modules, "pynvml", None)
    start = time.monotonic()
    assert agent._smi(["-q", "-x"], 0.5) is None
    assert time.monotonic() - start < 4
    assert agent._UNANSWERED["nvidia-smi"] == (
        "nvidia-smi -q did not exit within 0.5 s (a hung GPU or driver); not asked again")
    start = time.monotonic()
    snapshot = agent.health_snapshot()
    assert snapshot["smi_xml"] is None and agent.Telemetry().source == "none"
    assert time.monotonic() - start < 5  # the kernel log only
