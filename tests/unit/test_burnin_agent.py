"""The burn-in agent's measurements and correctness checks, on the CPU."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from provisioner.burnin import agent  # noqa: E402


def test_gemm_reports_throughput_and_passes_on_healthy_hardware() -> None:
    m = agent.gemm(torch.device("cpu"), "float32", 128, 0.2)
    assert m.test == "gemm_float32" and m.unit == "TFLOPS" and m.value > 0
    assert m.ok and m.detail["repeat_bit_identical"]
    assert m.detail["relative_error"] < 1e-5
    assert m.detail["iterations"] * 2 * 128 ** 3 / m.detail["seconds"] / 1e12 == \
        pytest.approx(m.value, rel=0.05)


def test_gemm_catches_silent_data_corruption(monkeypatch: pytest.MonkeyPatch) -> None:
    real = torch.matmul
    calls = {"n": 0}

    def flaky(a, b, out=None):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        result = real(a, b)
        if calls["n"] % 3 == 0:  # every third product has one flipped element
            result[5, 7] += 1.0
        if out is not None:
            out.copy_(result)
            return out
        return result

    monkeypatch.setattr(agent.torch, "matmul", flaky)
    m = agent.gemm(torch.device("cpu"), "float32", 64, 0.05)
    assert not m.ok and m.detail["repeat_mismatches"] > 0


def test_gemm_catches_a_consistently_wrong_product(monkeypatch: pytest.MonkeyPatch) -> None:
    real = torch.matmul
    monkeypatch.setattr(agent.torch, "matmul",
                        lambda a, b, out=None: real(a, b, out=out).mul_(1.001) if out is not None
                        else real(a, b).mul_(1.001))
    m = agent.gemm(torch.device("cpu"), "float32", 64, 0.05)
    assert m.detail["repeat_bit_identical"] and m.detail["relative_error"] > 1e-4
    assert not m.ok


def test_memory_test_and_bandwidth() -> None:
    m = agent.memory_test(torch.device("cpu"), 8)
    assert m.ok and m.detail == {"errors": 0, "patterns": 9} and m.value == 8 / 1024
    bw = agent.memory_bandwidth(torch.device("cpu"), 8, 0.1)
    assert bw.unit == "GB/s" and bw.value > 0


def test_bus_bandwidth_factors_match_nccl_tests() -> None:
    assert agent.bus_factor("all_reduce", 8) == pytest.approx(1.75)
    assert agent.bus_factor("all_gather", 8) == pytest.approx(0.875)
    assert agent.bus_factor("all_reduce", 2) == pytest.approx(1.0)


def test_devices_are_stressed_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """With several devices each test runs on all of them concurrently, in device order,
    one test kind at a time (two CPU "devices" stand in for GPUs here)."""
    import threading

    seen: list[tuple[str, int]] = []
    real_gemm = agent.gemm

    def gemm(device, dtype_name, n, seconds, index=None):  # type: ignore[no-untyped-def]
        seen.append((dtype_name, threading.get_ident()))
        return real_gemm(device, dtype_name, n, seconds, index)

    monkeypatch.setattr(agent, "devices", lambda: [agent.torch.device("cpu")] * 2)
    monkeypatch.setattr(agent, "gemm", gemm)
    doc = agent.run_level("quick", seconds=0.05, ranks=1)
    names = [r["test"] for r in doc["results"]]
    assert names[:8] == ["gemm_bfloat16"] * 2 + ["gemm_float16"] * 2 + ["gemm_tf32"] * 2 + \
        ["gemm_float32"] * 2
    assert names.count("memory_test") == 2 and all(r["ok"] for r in doc["results"])
    # Each dtype ran on two threads; no dtype overlapped another (TF32 is global).
    assert [d for d, _ in seen] == ["bfloat16"] * 2 + ["float16"] * 2 + ["tf32"] * 2 + \
        ["float32"] * 2
    assert len({t for _, t in seen[:2]}) == 2


def test_memory_test_finds_a_flipped_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bit that does not hold what was written (here: flipped after every large int32
    copy) is counted, across the chunked comparison."""
    torch = agent.torch
    real_copy = torch.Tensor.copy_

    def flaky_copy(self, src, *args, **kwargs):  # type: ignore[no-untyped-def]
        out = real_copy(self, src, *args, **kwargs)
        if self.dtype == torch.int32 and self.numel() >= 1 << 20:
            self.view(-1)[3] ^= 1
        return out

    monkeypatch.setattr(agent, "MEMTEST_CHUNK", 1 << 20)
    monkeypatch.setattr(torch.Tensor, "copy_", flaky_copy)
    m = agent.memory_test(torch.device("cpu"), 64)
    assert not m.ok and m.detail["errors"] == 4  # one per 4 Mi-word block of 64 MiB

