"""The burn-in agent's measurements and correctness checks, on the CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from provisioner.burnin import agent  # noqa: E402
from provisioner.burnin.thresholds import evaluate, failure_reason  # noqa: E402


@pytest.fixture(autouse=True)
def no_hung_sources(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Each test starts as a process that has seen no driver read hang, and runs its
    products on one thread as the agent's logical devices do: torch's thread pool on
    cores another test keeps busy (the suite runs two at once) crawls."""
    monkeypatch.setattr(agent, "_UNANSWERED", {})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

CPU = torch.device("cpu")
REAL_MATMUL = torch.matmul


def test_gemm_reports_throughput_and_passes_on_healthy_hardware() -> None:
    m = agent.gemm(CPU, "float32", 128, 0.2, 0, seed=42)
    assert m.test == "gemm_float32" and m.unit == "TFLOPS" and m.value > 0
    assert m.ok and m.detail["repeat_bit_identical"] and m.detail["seed"] == 42
    # Every product was checked, not a sample of them.
    assert m.detail["repeat_checks"] == m.detail["iterations"] > 8
    assert m.detail["freivalds_rows"] == 0 and m.detail["freivalds_ratio"] < 1
    assert m.detail["reference_elements"] == 0 and m.detail["reference_ratio"] < 1
    busy = m.detail.get("thread_cpu_seconds", m.detail["seconds"])
    assert m.detail["iterations"] * 2 * 128 ** 3 / busy / 1e12 == pytest.approx(m.value,
                                                                               rel=0.05)
    # The seed chooses the inputs.
    other = agent.gemm(CPU, "float32", 128, 0.05, 0, seed=43)
    assert other.detail["product_digest"] != m.detail["product_digest"]


def test_a_cpu_device_is_timed_by_the_cpu_time_its_thread_got(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One thread per logical device (the lab): its throughput is its work over its
    thread's CPU time, so a busy machine does not make it look slow; the extra products
    of a slow part still count against it."""
    assert torch.get_num_threads() == 1  # the fixture's
    m = agent.gemm(CPU, "float32", 128, 0.2, 0, seed=42)
    slow_calls = {"n": 0}

    def slow(a, b, out=None):  # type: ignore[no-untyped-def]
        slow_calls["n"] += 1
        REAL_MATMUL(a, b)  # a slow part: every product done twice, busy
        return REAL_MATMUL(a, b, out=out)

    monkeypatch.setattr(torch, "matmul", slow)
    half = agent.gemm(CPU, "float32", 128, 0.2, 0, seed=42)
    busy = m.detail["thread_cpu_seconds"]
    assert 0 < busy <= m.detail["seconds"] + 0.01
    assert m.detail["iterations"] * 2 * 128 ** 3 / busy / 1e12 == pytest.approx(m.value,
                                                                               rel=0.01)
    assert slow_calls["n"] > 8 and half.value < 0.75 * m.value, (half.value, m.value)


def _one_flip_at(call: int) -> Any:
    calls = {"n": 0}

    def flaky(a, b, out=None):  # type: ignore[no-untyped-def]
        result = REAL_MATMUL(a, b, out=out)
        calls["n"] += 1
        if calls["n"] == call:  # one product, one element, the lowest mantissa bit
            result.view(-1).view(torch.int32)[1234] ^= 1
        return result

    return flaky


def test_one_flipped_bit_in_one_product_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not every 8th product: the 7th of hundreds (the loop runs 8 at least, after the
    2 first products), off by one bit in one element."""
    monkeypatch.setattr(agent.torch, "matmul", _one_flip_at(9))
    m = agent.gemm(CPU, "float32", 64, 0.05, 3, seed=1)
    assert not m.ok and m.detail["repeat_mismatches"] == 1
    assert m.detail["repeat_words_wrong"] == 1
    why = failure_reason(m.detail)
    assert "1 of" in why and "products differ from the first" in why and "seed 1" in why


def test_a_consistently_wrong_product_fails_freivalds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent.torch, "matmul",
                        lambda a, b, out=None: REAL_MATMUL(a, b, out=out).mul_(1.001))
    m = agent.gemm(CPU, "float32", 64, 0.05, 0)
    assert m.detail["repeat_bit_identical"] and m.detail["freivalds_rows"] > 0
    assert m.detail["reference_elements"] > 0 and not m.ok
    assert "wrong against a float64 reference" in failure_reason(m.detail)


def test_a_small_persistent_error_on_one_gpu_is_outvoted(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """One GPU of four gets the last bit of one element wrong in every product: the
    repeats agree and the float64 checks cannot see a last-bit error, but the other GPUs'
    products differ from it, and the majority names it."""
    import threading

    def wrong_on_gpu2(a, b, out=None):  # type: ignore[no-untyped-def]
        result = REAL_MATMUL(a, b, out=out)
        if threading.current_thread().name == "gpuctl-gpu2":
            result.view(-1).view(torch.int16)[77] ^= 1
        return result

    monkeypatch.setattr(agent.torch, "matmul", wrong_on_gpu2)
    devs = [CPU] * 4
    idents = [{"index": i, "name": "cpu", "multiprocessors": None, "uuid": f"GPU-{i}",
               "pci_bus_id": f"0000:1{i}:00.0"} for i in range(4)]
    runner = agent.DeviceRunner(devs, idents)
    batch = runner.run("gemm_bfloat16", "TFLOPS", lambda i, dev: agent.gemm(
        dev, "bfloat16", 96, 0.05, i, 9), 60)
    runner.close()
    agent.cross_gpu_check(batch, idents)
    assert [m.ok for m in batch] == [True, True, False, True]
    bad = batch[2].detail
    assert bad["repeat_bit_identical"] and "differs from 3 of 4 GPUs" in bad["cross_gpu_mismatch"]
    assert bad["uuid"] == "GPU-2" and bad["pci_bus_id"] == "0000:12:00.0"
    assert "[GPU-2, 0000:12:00.0]" in failure_reason(bad)


def test_two_gpus_that_disagree_both_fail() -> None:
    ms = [agent.Measurement("gemm_float32", 1.0, "TFLOPS", i, True,
                            {"product_digest": d, "n": 8}) for i, d in enumerate("ab")]
    agent.cross_gpu_check(ms, [{"name": "H100"}] * 2)
    assert not ms[0].ok and not ms[1].ok
    assert "no majority" in ms[0].detail["cross_gpu_mismatch"]


def test_memory_test_patterns_and_bandwidth() -> None:
    m = agent.memory_test(CPU, 8, 0)
    assert m.ok and m.detail == {"errors": 0, "patterns": 12} and m.value == 8 / 1024
    bw = agent.memory_bandwidth(CPU, 8, 0.1)
    assert bw.unit == "GB/s" and bw.value > 0


def test_memory_test_finds_a_stuck_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bit stuck at 1 in one word (it reads 1 whatever was written) fails every pattern
    that writes a 0 there, across the chunked comparison."""
    real_ne = torch.Tensor.__ne__
    word = (3 << 20) + 5

    def ne(self, other):  # type: ignore[no-untyped-def]
        if self.dtype == torch.int32 and self.untyped_storage().nbytes() == 16 << 20:
            offset = self.storage_offset()
            if offset <= word < offset + self.numel():
                self.view(-1)[word - offset] |= 1 << 4
        return real_ne(self, other)

    monkeypatch.setattr(agent, "MEMTEST_CHUNK", 1 << 20)
    monkeypatch.setattr(torch.Tensor, "__ne__", ne)
    m = agent.memory_test(CPU, 16, 0)
    assert not m.ok and 4 <= m.detail["errors"] <= m.detail["patterns"]


def test_memory_test_own_address_pattern_catches_aliased_words(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two addresses that reach the same cell: every solid pattern reads back fine, the
    own-address pattern does not."""
    real_setitem = torch.Tensor.__setitem__

    def aliased(self, key, value):  # type: ignore[no-untyped-def]
        real_setitem(self, key, value)
        if self.dtype == torch.int32 and self.numel() == 1 << 20 and isinstance(key, slice):
            flat = self.view(-1)
            flat[1000] = flat[900]  # writing word 900 also lands on word 1000

    monkeypatch.setattr(torch.Tensor, "__setitem__", aliased)
    m = agent.memory_test(CPU, 4, 0)
    assert not m.ok and m.detail["errors"] >= 1


def test_bus_bandwidth_factors_match_nccl_tests() -> None:
    assert agent.bus_factor("all_reduce", 8) == pytest.approx(1.75)
    assert agent.bus_factor("all_gather", 8) == pytest.approx(0.875)
    assert agent.bus_factor("all_reduce", 2) == pytest.approx(1.0)


def test_collective_time_is_averaged_over_ranks_and_wrong_senders_named() -> None:
    def rows(time_us: float, wrong: int = 0, senders: list[int] | None = None
             ) -> list[dict[str, Any]]:
        return [{"op": "all_reduce", "bytes": 1 << 20, "time_us": time_us, "wrong": 0,
                 "wrong_senders": []},
                {"op": "all_gather", "bytes": 1 << 20, "time_us": time_us, "wrong": wrong,
                 "wrong_senders": senders or []}]

    ms = agent.summarize_collectives({0: rows(100.0), 1: rows(300.0, 1, [1])}, 2, "gloo")
    ar, ag = ms
    # nccl-tests' -a 1: the mean of the ranks' times (200 us), not rank 0's (100 us).
    assert ar.value == pytest.approx((1 << 20) / 200e-6 / 1e9) and ar.ok
    assert not ag.ok and ag.detail["bad_ranks"] == [1]
    assert "contribution of rank 1 arrived wrong" in ag.detail["error"]


def test_a_gpu_that_raises_is_named_and_the_others_go_on(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """Error isolation: GPU 1 raises a CUDA error in its first GEMM. It gets a failed
    result with the exception, its later tests are reported as not run, the other GPUs'
    results are complete, and the document still carries both health snapshots."""
    real_gemm = agent.gemm

    def gemm(device, dtype_name, n, seconds, index=None, seed=0):  # type: ignore[no-untyped-def]
        if index == 1:
            raise RuntimeError("CUDA error: unspecified launch failure")
        return real_gemm(device, dtype_name, n, seconds, index, seed)

    monkeypatch.setattr(agent, "gemm", gemm)
    doc = agent.run_level("quick", seconds=0.05, ranks=1, cpu_devices=3)
    by = {(r["test"], r["device"]): r for r in doc["results"]}
    first = by[("gemm_bfloat16", 1)]
    assert not first["ok"] and "RuntimeError: CUDA error" in first["detail"]["error"]
    later = by[("memory_test", 1)]
    assert not later["ok"] and later["detail"]["error"].startswith(
        "not run: GPU 1 failed in gemm_bfloat16")
    assert all(r["ok"] for r in doc["results"] if r["device"] != 1)
    assert {r["test"] for r in doc["results"] if r["device"] == 0} == {
        "gemm_bfloat16", "gemm_float16", "gemm_tf32", "gemm_float32", "memory_bandwidth",
        "memory_test"}
    assert set(doc["health"]) == {"before", "after"} and doc["seed"] == 0
    verdicts = evaluate(doc["results"], {"tests": {}})
    failed = [v for v in verdicts if not v.passed]
    assert {v.device for v in failed} == {1}
    assert "gemm_bfloat16 on GPU 1: RuntimeError: CUDA error" in failed[0].reason


def test_devices_are_stressed_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """With several devices each test runs on all of them concurrently, in device order,
    one test kind at a time (CPU "devices" stand in for GPUs here)."""
    import threading

    seen: list[tuple[str, str]] = []
    real_gemm = agent.gemm

    def gemm(device, dtype_name, n, seconds, index=None, seed=0):  # type: ignore[no-untyped-def]
        seen.append((dtype_name, threading.current_thread().name))
        return real_gemm(device, dtype_name, n, seconds, index, seed)

    monkeypatch.setattr(agent, "gemm", gemm)
    doc = agent.run_level("quick", seconds=0.05, ranks=1, cpu_devices=2)
    names = [r["test"] for r in doc["results"]]
    assert names[:8] == ["gemm_bfloat16"] * 2 + ["gemm_float16"] * 2 + ["gemm_tf32"] * 2 + \
        ["gemm_float32"] * 2
    assert names.count("memory_test") == 2 and all(r["ok"] for r in doc["results"])
    # Each dtype ran on two threads named after their GPU; no dtype overlapped another.
    assert [d for d, _ in seen] == ["bfloat16"] * 2 + ["float16"] * 2 + ["tf32"] * 2 + \
        ["float32"] * 2
    assert {t for _, t in seen[:2]} == {"gpuctl-gpu0", "gpuctl-gpu1"}


def test_a_hung_gpu_is_named_and_skipped_afterwards() -> None:
    import time

    devs = [CPU] * 3
    idents = [{"index": i, "uuid": f"GPU-{i}", "pci_bus_id": None} for i in range(3)]
    runner = agent.DeviceRunner(devs, idents)

    def test(i: int, dev: Any) -> agent.Measurement:
        if i == 2:
            time.sleep(3)  # never answers within the test's time
        return agent.Measurement("memory_test", 1.0, "GiB", i)

    first = runner.run("memory_test", "GiB", test, timeout=0.5)
    later = runner.run("memory_bandwidth", "GB/s", test, timeout=0.5)
    runner.close()
    assert [m.ok for m in first] == [True, True, False] and runner.hung
    assert first[2].detail["error"].startswith("did not finish within")
    assert first[2].detail["error"].endswith("s (hung)") and first[2].device == 2
    assert later[2].detail["error"] == "not run: GPU 2 hung in memory_test"
    assert [m.ok for m in later[:2]] == [True, True]


def test_numa_placement_reads_sysfs() -> None:
    """The GPU's NUMA node comes from its PCI device in sysfs (-1 there: unknown), and
    the node's CPUs from its cpulist; here read off this machine's own devices."""
    import glob
    import os

    assert agent.numa_node(None) is None
    assert agent.numa_node("00000000:ff:1f.7") is None  # no such device
    devices = sorted(glob.glob("/sys/bus/pci/devices/*/numa_node"))
    if devices:
        bus = devices[0].split("/")[-2]
        want = int(Path(devices[0]).read_text())
        assert agent.numa_node("0000" + bus) == (want if want >= 0 else None)
    if os.path.exists("/sys/devices/system/node/node0/cpulist"):
        assert 0 in (agent.numa_cpus(0) or set())
    with agent.on_numa_node_of({"pci_bus_id": None}) as node:
        assert node is None


PER_GPU_TESTS = ("gemm_bfloat16", "gemm_float16", "gemm_tf32", "gemm_float32",
                 "memory_bandwidth", "memory_test")


def test_a_short_deadline_gives_the_document_with_the_tests_not_run_named() -> None:
    """With 5 s to the watchdog, 2 are kept for the closing reads: the collectives (which
    need 10 s to start) are not started, and the document still lists every test."""
    import time

    start = time.monotonic()
    doc = agent.run_level("quick", seconds=0.1, ranks=2, cpu_devices=2, deadline_s=5)
    assert time.monotonic() - start < 5
    by = {(r["test"], r["device"]): r for r in doc["results"]}
    assert set(by) == {(t, d) for t in PER_GPU_TESTS for d in (0, 1)} | {
        ("all_reduce_busbw", None), ("all_gather_busbw", None)}
    for test in ("all_reduce_busbw", "all_gather_busbw"):
        assert not by[(test, None)]["ok"] and by[(test, None)]["detail"]["error"].endswith(
            " s were left before the level's deadline")
    assert doc["stopped_early"].startswith("the level's deadline (5 s, the last 2 s kept for "
                                           "the closing reads): ")
    assert doc["stopped_early"].endswith("all_reduce_busbw not run or not finished")
    assert doc["deadline_s"] == 5


def _run_with_gpu1_stuck(monkeypatch: pytest.MonkeyPatch, **kwargs: Any
                         ) -> tuple[dict[str, Any], float]:
    """``run_level`` on two CPU devices, GPU 1's first GEMM stuck until the run is over:
    the document and how long the run took."""
    import threading
    import time

    release = threading.Event()
    real_gemm = agent.gemm

    def gemm(device, dtype_name, n, seconds, index=None, seed=0):  # type: ignore[no-untyped-def]
        if index == 1:
            release.wait(60)
        return real_gemm(device, dtype_name, n, seconds, index, seed)

    monkeypatch.setattr(agent, "gemm", gemm)
    start = time.monotonic()
    try:
        doc = agent.run_level("quick", seconds=0.05, ranks=1, cpu_devices=2, **kwargs)
    finally:
        release.set()
    return doc, time.monotonic() - start


def test_a_gpu_still_busy_at_the_deadline_is_cut_and_the_rest_not_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """GPU 1's first GEMM never ends (within the CPU's 10 s hang bound): at the deadline
    it is reported unfinished, every later test of both GPUs as not run, and the
    document comes back before the watchdog would fire."""
    doc, took = _run_with_gpu1_stuck(monkeypatch, deadline_s=6)
    assert took < 6
    by = {(r["test"], r["device"]): r for r in doc["results"]}
    assert set(by) == {(t, d) for t in PER_GPU_TESTS for d in (0, 1)}
    assert by[("gemm_bfloat16", 0)]["ok"]
    cut = by[("gemm_bfloat16", 1)]
    assert not cut["ok"] and cut["detail"]["error"].startswith(
        "stopped at the level's deadline after ") and cut["detail"]["uuid"] is None
    assert by[("memory_test", 1)]["detail"]["error"] == (
        "not run: GPU 1's gemm_bfloat16 was stopped at the level's deadline")
    assert by[("memory_test", 0)]["detail"]["error"].startswith("not run: ")
    assert doc["hung"] and "gemm_bfloat16, gemm_float16" in doc["stopped_early"]
    failed = [v for v in evaluate(doc["results"], {"tests": {}}) if not v.passed]
    assert "gemm_bfloat16 on GPU 1: stopped at the level's deadline" in failed[0].reason


def test_a_hung_cpu_device_is_named_after_the_cpu_bound_not_120_s(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A lab GPU that hangs costs the run the CPU's bound, 10 s, 20 lab tests' worth (a
    GPU's 120 s allow for the driver's start-up, which the CPU has none of); the other
    GPU goes on. (Run with a 1 s bound, for the suite's time.)"""
    assert agent.CPU_HANG_S == 10.0
    monkeypatch.setattr(agent, "CPU_HANG_S", 1.0)
    doc, took = _run_with_gpu1_stuck(monkeypatch)
    by = {(r["test"], r["device"]): r for r in doc["results"]}
    hung = by[("gemm_bfloat16", 1)]
    assert not hung["ok"] and hung["detail"]["error"] == "did not finish within 1 s (hung)", hung
    assert by[("memory_test", 0)]["ok"] and 1 <= took < 20, took
