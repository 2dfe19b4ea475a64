"""The whole agent at the quick level on the CPU, collectives over gloo included."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.e2e

AGENT = Path(__file__).parents[2] / "provisioner/burnin/agent.py"


def test_agent_quick_level_on_cpu() -> None:
    res = subprocess.run([sys.executable, str(AGENT), "--level", "quick", "--seconds", "0.2",
                          "--ranks", "2"], capture_output=True, text=True, timeout=300,
                         check=True)
    doc = json.loads(res.stdout)
    assert doc["backend"] == "cpu" and doc["gpus"] == 0
    tests = {r["test"]: r for r in doc["results"]}
    assert set(tests) == {"gemm_bfloat16", "gemm_float16", "gemm_tf32", "gemm_float32",
                          "memory_bandwidth", "memory_test", "all_reduce_busbw",
                          "all_gather_busbw"}
    assert all(r["ok"] for r in doc["results"]), doc["results"]
    ar = tests["all_reduce_busbw"]
    largest = max(ar["detail"]["sizes"], key=lambda s: s["bytes"])
    assert ar["value"] == largest["busbw"] == pytest.approx(largest["algbw"] * 1.0)
    assert ar["detail"]["backend"] == "gloo" and ar["detail"]["ranks"] == 2
    assert doc["telemetry"]["available"] is False


def _agent_process(*args: str) -> subprocess.Popen[bytes]:
    import os
    import subprocess
    import sys

    from provisioner.burnin import agent

    # Its own session, as sshd gives a command: the watchdog ends the process group.
    return subprocess.Popen([sys.executable, agent.__file__, "--level", "quick",
                             "--seconds", "30", "--ranks", "1", *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})


def test_the_agent_stops_when_its_ssh_channel_closes() -> None:
    import time

    proc = _agent_process("--watch-stdin")
    time.sleep(3)  # torch imported, tests running
    assert proc.poll() is None
    start = time.monotonic()
    assert proc.stdin is not None
    proc.stdin.close()  # what the node sees when gpuctl (or sshd) dies
    proc.wait(timeout=20)
    assert time.monotonic() - start < 5
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert b"the SSH session closed" in err and proc.returncode != 0


def test_the_agent_prints_its_document_before_its_deadline() -> None:
    """Tests of 30 s each and 8 s to the watchdog: none starts, the document names each
    test not run, and it comes out before the watchdog fires."""
    import time

    start = time.monotonic()
    proc = _agent_process("--deadline", "8")
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - start < 8 + 5, err  # 5 s for Python and the torch import
    assert proc.returncode == 0 and b"are up" not in err, err
    doc = json.loads(out)
    assert doc["stopped_early"].startswith("the level's deadline (8 s, the last 2 s kept "
                                           "for the closing reads): gemm_bfloat16, ")
    assert {r["test"] for r in doc["results"]} == {
        "gemm_bfloat16", "gemm_float16", "gemm_tf32", "gemm_float32", "memory_bandwidth",
        "memory_test"}
    assert all(not r["ok"] and r["detail"]["error"].startswith("not run: ")
               and r["detail"]["error"].endswith("s were left before the level's deadline")
               for r in doc["results"])


def test_the_watchdog_stops_the_agent_at_its_deadline() -> None:
    """The backstop, for an agent stuck where nothing of its own bounds it."""
    import os
    import time

    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", (
        "import time; from provisioner.burnin import agent; "
        "agent.start_watchdog(False, 2); time.sleep(60)")], stderr=subprocess.PIPE,
        start_new_session=True, env={**os.environ, "PYTHONPATH": str(AGENT.parents[2])})
    _, err = proc.communicate(timeout=40)
    assert time.monotonic() - start < 20
    assert b"the level's 2 s are up" in err and proc.returncode != 0




def test_a_dead_collective_rank_is_named_within_seconds(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """Rank 1 dies in the middle of the all-reduces (as a process does when its GPU falls
    off the bus): both collectives fail naming rank 1 and its exit code, in seconds,
    not after a 600 s wait; rank 0, which only saw it go, is not blamed."""
    import importlib.util
    import os
    import time

    from provisioner.burnin import agent

    # The benchmark's fault: rank SDC_DEAD_RANK exits at its SDC_DEAD_AT-th all-reduce.
    spec = importlib.util.spec_from_file_location(
        "sdc_benchmark", Path(__file__).parents[2] / "benchmarks/sdc.py")
    assert spec is not None and spec.loader is not None
    sdc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sdc)
    (tmp_path / "sitecustomize.py").write_text(sdc.DEAD_RANK_SITE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(tmp_path), str(Path(__file__).parents[2])]))
    for name, value in (("SDC_DEAD_RANK", "1"), ("SDC_DEAD_AT", "3"), ("SDC_DEAD_CODE", "7")):
        monkeypatch.setenv(name, value)
    start = time.monotonic()
    # spawn: the ranks read this test's environment (a forkserver an earlier test in
    # this process started keeps its own). The agent's forkserver ranks run in the lab
    # burn-in tests.
    ms = agent.collectives(2, [1 << 12, 1 << 16], iters=2, start="spawn")
    assert time.monotonic() - start < 60
    assert [m.test for m in ms] == ["all_reduce_busbw", "all_gather_busbw"]
    for m in ms:
        assert not m.ok and m.value is None and m.detail["bad_ranks"] == [1]
        assert m.detail["error"] == "rank 1 died (exit code 7)"
