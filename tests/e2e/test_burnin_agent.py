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
