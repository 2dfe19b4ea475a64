"""DCGM's diagnostic as gpuctl judges it: skipped, warned, missing and exit codes.

No real ``dcgmi diag --json`` capture is at hand; the documents are built in the shapes
dcgmi writes them: DCGM 3.3's (the lab stand-in's, provisioner/lab/standin_dcgmi.py) and
DCGM 4's (NVIDIA/DCGM dcgmi/Diag.cpp, HelperJsonBuildOutput: tests named by plugin,
results by entity_group/entity_id, warnings with error_id/category/severity, info as
strings).
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from provisioner.burnin.dcgm import LEVEL_TESTS, dcgm_verdicts
from provisioner.lab import standin_dcgmi
from provisioner.ssh.exec import ExecResult

GPU = {"index": 0, "pcie_width_current": 16, "pcie_width_max": 16, "thermal_slowdown": False,
       "ecc_dram_uncorrectable": 0, "remap_failure": False}


def _standin(level: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
             ) -> tuple[int, dict[str, Any]]:
    """What the lab's stand-in dcgmi (DCGM 3.3.9's layout) prints for two healthy GPUs."""
    state = tmp_path / "gpus.json"
    state.write_text(json.dumps({"gpus": [GPU, {**GPU, "index": 1}]}))
    monkeypatch.setattr(standin_dcgmi, "STATE", str(state))
    out = io.StringIO()
    with redirect_stdout(out):
        code = standin_dcgmi.main(["diag", "-r", str(level), "--json"])
    return code, json.loads(out.getvalue())


def _v4(tests: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """DCGM 4's document: one category per test, results per GPU entity."""
    return {"DCGM Diagnostic": {"test_categories": [
        {"category": "Hardware", "tests": [{"name": name, "results": [
            {"entity_group": "GPU", "entity_group_id": 1, **r} for r in results]}]}
        for name, results in tests.items()]}, "metadata": {"version": "4.6.0"}}


def _passed(level: int) -> dict[str, list[dict[str, Any]]]:
    return {name: [{"entity_id": 0, "status": "Pass"}]
            for name in ["software", *sorted(LEVEL_TESTS[level])]}


def _failures(stored: dict[str, Any]) -> list[str]:
    return [v.reason for v in dcgm_verdicts(stored) if not v.passed]


@pytest.mark.parametrize("level", [1, 2, 4])
def test_clean_runs_pass_in_both_layouts(level: int, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    code, doc = _standin(level, tmp_path, monkeypatch)
    assert code == 0
    assert _failures({"exit_code": 0, "run_level": level, "stderr": "", "output": doc}) == []
    assert _failures({"exit_code": 0, "run_level": level, "output": _v4(_passed(level))}) == []


def test_a_skipped_test_of_the_level_fails_in_dcgms_words() -> None:
    tests = _passed(4)
    tests["pulse_test"] = [{"entity_id": 0, "status": "Skip",
                            "info": ["The pulse_test test is skipped."]}]
    assert _failures({"exit_code": 0, "run_level": 4, "output": _v4(tests)}) == [
        "dcgm_pulse_test on GPU 0: DCGM skipped it, but dcgmi diag -r 4 runs it (The "
        "pulse_test test is skipped.)"]
    # DCGM 3's display name for the memory test, at level 2.
    v3 = {"DCGM GPU Diagnostic": {"test_categories": [
        {"category": "Integration", "tests": [{"name": "PCIe", "results": [
            {"gpu_id": "0", "status": "Pass"}]}]},
        {"category": "Hardware", "tests": [{"name": "GPU Memory", "results": [
            {"gpu_id": "0", "status": "Skip", "info": "The memory test is skipped."}]}]}]}}
    assert _failures({"exit_code": 0, "run_level": 2, "output": v3}) == [
        "dcgm_gpu_memory on GPU 0: DCGM skipped it, but dcgmi diag -r 2 runs it (The memory "
        "test is skipped.)"]


def test_a_skip_the_level_does_not_promise_passes_with_its_note() -> None:
    """EUD runs only as root with its package; DCGM 3's deployment checks, one test each,
    may not apply to a host: their Skip passes, DCGM's words kept."""
    tests = {**_passed(4), "eud": [{"entity_id": 0, "status": "Skip",
                                    "info": ["EUD package not installed"]}],
             "Inforom": [{"entity_id": 0, "status": "Skip"}]}
    verdicts = dcgm_verdicts({"exit_code": 0, "run_level": 4, "output": _v4(tests)})
    assert all(v.passed for v in verdicts)
    assert [v.reason for v in verdicts if v.test == "dcgm_eud"] == ["EUD package not installed"]


def test_a_warning_fails_as_dcgms_own_json_counts_it() -> None:
    tests = {**_passed(2), "software": [{"entity_id": 0, "status": "Warn", "warnings": [
        {"warning": "Persistence mode for GPU 0 is disabled.", "error_id": 56,
         "error_category": 3, "error_severity": 5}]}]}
    assert _failures({"exit_code": 0, "run_level": 2, "output": _v4(tests)}) == [
        "dcgm_software on GPU 0: DCGM says Warn (Persistence mode for GPU 0 is disabled.)"]


def test_a_non_zero_exit_fails_with_its_meaning_and_stderr(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    clean = _v4(_passed(2))
    assert _failures({"exit_code": 226, "run_level": 2, "output": clean,
                      "stderr": "Error: the diagnostic reported an error"}) == [
        "dcgm on node: dcgmi diag -r 2 exited 226 (DCGM_ST_NVVS_ERROR: a test reported an "
        "error; Error: the diagnostic reported an error)"]
    assert _failures({"exit_code": 3, "run_level": 2, "output": clean, "stderr": ""}) == [
        "dcgm on node: dcgmi diag -r 2 exited 3"]
    # The stand-in exits as dcgmi does when a test fails: both are reported.
    state = tmp_path / "gpus.json"
    state.write_text(json.dumps({"gpus": [{**GPU, "pcie_width_current": 8}]}))
    monkeypatch.setattr(standin_dcgmi, "STATE", str(state))
    out = io.StringIO()
    with redirect_stdout(out):
        code = standin_dcgmi.main(["diag", "-r", "2", "--json"])
    failures = _failures({"exit_code": code, "run_level": 2, "output": json.loads(
        out.getvalue())})
    assert failures[0].startswith("dcgm on node: dcgmi diag -r 2 exited 226")
    assert failures[1].startswith("dcgm_pcie on GPU 0: DCGM says Fail (GPU 0 PCIe link "
                                  "width x8")


def test_every_test_skipped_or_one_missing_fails() -> None:
    skipped = {name: [{"entity_id": 0, "status": "Skip"}] for name in ("Denylist", "Inforom")}
    assert _failures({"exit_code": 0, "run_level": 1, "output": _v4(skipped)}) == [
        "dcgm on node: DCGM skipped all 2 tests"]
    tests = _passed(2)
    del tests["pcie"]
    assert _failures({"exit_code": 0, "run_level": 2, "output": _v4(tests)}) == [
        "dcgm_pcie on node: dcgmi diag -r 2 runs pcie, but DCGM reported no result for it"]


def test_a_runtime_error_fails_with_dcgms_text() -> None:
    doc = {"DCGM Diagnostic": {"version": "4.6.0",
                               "runtime_error": "Unable to connect to the host engine"}}
    assert _failures({"exit_code": 1, "run_level": 1, "output": doc}) == [
        "dcgm on node: dcgmi diag -r 1 exited 1",
        "dcgm on node: DCGM's runtime error: Unable to connect to the host engine"]


def test_run_dcgm_stores_the_exit_code_stderr_and_level(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    from provisioner.burnin import run

    doc = _v4(_passed(2))
    answer = ExecResult(226, b"noise\n" + json.dumps(doc).encode(),
                        b"warning: first\nError: the diagnostic reported an error\n")
    monkeypatch.setattr(run, "run_on_node", lambda *a, **k: answer)
    stored = run._run_dcgm(None, None, "standard")  # type: ignore[arg-type]
    assert stored == {"exit_code": 226, "run_level": 2, "output": doc,
                      "stderr": "Error: the diagnostic reported an error"}


def test_a_skip_of_a_test_of_a_higher_level_passes() -> None:
    """Targeted Power is a level-3 test: a level-2 run that lists it as skipped has
    broken no promise (review of issue 22)."""
    tests = {**_passed(2), "targeted_power": [{"entity_id": 0, "status": "Skip"}]}
    verdicts = dcgm_verdicts({"exit_code": 0, "run_level": 2, "output": _v4(tests)})
    assert all(v.passed for v in verdicts), [v.reason for v in verdicts if not v.passed]
