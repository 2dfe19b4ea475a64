"""NVIDIA DCGM diagnostics beside gpuctl's own tests (``gpuctl burnin --with-dcgm``).

``dcgmi diag -r <1|2|3|4> --json`` prints one document of test categories, each with
tests, each with per-GPU results::

    {"DCGM GPU Diagnostic": {"test_categories": [{"category": "Hardware", "tests": [
        {"name": "GPU Memory", "results": [{"gpu_id": "0", "status": "Pass"}, ...]}]}],
     "version": "3.3.9"}}

DCGM 4 names the top key "DCGM Diagnostic", its tests by plugin ("memory") and results by
``entity_id``; both are read. Each DCGM test and GPU becomes a verdict ``dcgm_<test>``:
Pass passes; Fail and Warn fail; Skip fails for the tests the run level runs on every GPU
(LEVEL_TESTS) and passes, with DCGM's words kept, for the checks that depend on the host
(EUD packages, a deployment check that does not apply). The node fails when dcgmi exits
non-zero, reports a runtime error, skips every test, or gives no result for a test its
run level runs.
"""

from __future__ import annotations

import re
from typing import Any

from provisioner.burnin.levels import LEVELS
from provisioner.burnin.thresholds import Verdict

# The tests each run level adds, from NVIDIA/DCGM nvvs/src/NvidiaValidationSuite.cpp,
# NvidiaValidationSuite::FillTestVectors (the same in DCGM 3.3.9 and 4.6.0): -r 1 the
# software (deployment) checks; -r 2 (medium) adds memory and pcie; -r 3 (long) adds
# diagnostic (GEMM), memory_bandwidth, targeted_stress and targeted_power; -r 4 (xlong)
# adds memtest and pulse_test. Left out: what that function adds only on some hosts (eud
# and cpu_eud only as root and with the EUD package, rist with an environment variable;
# DCGM 4's nvbandwidth and nccl_tests plugins need their binaries).
LEVEL_TESTS: dict[int, frozenset[str]] = {1: frozenset()}
LEVEL_TESTS[2] = LEVEL_TESTS[1] | {"memory", "pcie"}
LEVEL_TESTS[3] = LEVEL_TESTS[2] | {"diagnostic", "memory_bandwidth", "targeted_stress",
                                   "targeted_power"}
LEVEL_TESTS[4] = LEVEL_TESTS[3] | {"memtest", "pulse_test"}
# A test's slug as DCGM 3 names it for display (dcgmi/Diag.cpp at 3.3.9: DISPLAY_MEMORY
# "GPU Memory", DISPLAY_PULSE_TEST "Pulse Test", ...) or DCGM 4 by plugin ("memory",
# "pulse_test"; DCGM 4 folds the deployment checks into one test, "software"), to the
# plugin. A Skip of any of these fails: DCGM 4's "software" skipped is every deployment
# check unmade; DCGM 3's deployment checks, one test each, may be skipped (not on this
# host) and keep DCGM's words as a note.
PLUGINS = {"gpu_memory": "memory", "targeted_power": "targeted_power",
           "targeted_stress": "targeted_stress", "memory_bandwidth": "memory_bandwidth",
           "pulse_test": "pulse_test", "software": "software",
           **{name: name for name in LEVEL_TESTS[4]}}
# dcgmi exits with its dcgmReturn_t (dcgmi/main_dcgmi.cpp), which the shell sees modulo
# 256; the two a diagnostic that ran returns when a test failed (dcgmi/Diag.cpp,
# GetFailureResult; values from dcgmlib/dcgm_structs.h).
EXIT_CODES = {-30 & 0xFF: "DCGM_ST_NVVS_ERROR: a test reported an error",
              -51 & 0xFF: "DCGM_ST_NVVS_ISOLATE_ERROR: an error that calls for isolating "
                          "the GPU"}


def dcgm_command(level: str) -> str:
    return f"dcgmi diag -r {LEVELS[level].dcgm} --json"


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:50] or "test"


def _messages(result: dict[str, Any]) -> str:
    parts = []
    for key in ("warnings", "info"):
        items = result.get(key)
        for item in items if isinstance(items, list) else [items] if items else []:
            text = item.get("warning") or item.get("message") if isinstance(item, dict) \
                else item
            if text:
                parts.append(str(text).strip())
    return "; ".join(parts)[:300]


def _gpu(result: dict[str, Any]) -> int | None:
    for key in ("gpu_id", "entity_id", "gpu_ids"):
        value = str(result.get(key, "")).strip()
        if value.isdigit() and len(value) <= 4:  # a GPU index, never a 20-digit number
            return int(value)
    return None


def _result_verdict(name: str, plugin: str | None, result: dict[str, Any],
                    level: int | None) -> Verdict:
    """One DCGM result. DCGM's own JSON prints a Warn as "Fail" (dcgmi/Diag.cpp,
    HelperDisplayDiagResult, in 2.4.7, 3.3.9 and 4.6.0: only Pass and Skip are printed
    as themselves), so DCGM counts a warning against every test; so does gpuctl, should
    a "Warn" reach it. "Not Run" (DCGM 4's fifth result) is read as a Skip."""
    status = str(result.get("status", "")).strip().lower()
    gpu = _gpu(result)
    where = f"GPU {gpu}" if gpu is not None else "node"
    note = _messages(result)
    said = f" ({note})" if note else ""
    if status == "pass":
        return Verdict(name, gpu, None, "pass", None, True, note)
    if status in ("skip", "not run"):
        # Only a test the run level runs must not be skipped; with the level unknown,
        # any known test (fail closed).
        if plugin is None or (level is not None and plugin not in LEVEL_TESTS[level]):
            return Verdict(name, gpu, None, status, None, True, note)
        runs = f"dcgmi diag -r {level} runs it" if level else "its run level runs it"
        return Verdict(name, gpu, None, status, None, False,
                       f"{name} on {where}: DCGM skipped it, but {runs}{said}")
    if status in ("fail", "warn"):
        return Verdict(name, gpu, None, status, None, False,
                       f"{name} on {where}: DCGM says {status.title()}{said}")
    return Verdict(name, gpu, None, status[:20] or "?", None, False,
                   f"{name} on {where}: DCGM reported status {status[:20]!r}{said}")


def _exit_verdict(stored: dict[str, Any], level: int | None) -> list[Verdict]:
    code = stored.get("exit_code")
    if not isinstance(code, int) or code == 0:
        return []
    meaning = EXIT_CODES.get(code, "")
    stderr = str(stored.get("stderr") or "").strip()[:200]
    detail = "; ".join(part for part in (meaning, stderr) if part)
    return [Verdict("dcgm", None, float(code), "exit code", 0.0, False,
                    f"dcgm on node: dcgmi diag{f' -r {level}' if level else ''} exited "
                    f"{code}" + (f" ({detail})" if detail else ""))]


def dcgm_verdicts(stored: dict[str, Any]) -> list[Verdict]:
    """Verdicts from what ``_run_dcgm`` stored: DCGM's output, its exit code, the last
    line of its stderr and the run level, or why there is no output."""
    if "error" in stored:
        return [Verdict("dcgm", None, None, "", None, False, f"dcgm on node: {stored['error']}")]
    level = stored.get("run_level") if stored.get("run_level") in LEVEL_TESTS else None
    output = stored.get("output")
    doc = None
    if isinstance(output, dict):
        doc = output.get("DCGM GPU Diagnostic") or output.get("DCGM Diagnostic")
    out = _exit_verdict(stored, level)
    if isinstance(doc, dict) and doc.get("runtime_error"):
        return out + [Verdict("dcgm", None, None, "", None, False, "dcgm on node: DCGM's "
                              f"runtime error: {str(doc['runtime_error']).strip()[:300]}")]
    categories = doc.get("test_categories") if isinstance(doc, dict) else None
    if not isinstance(categories, list):
        return out + [Verdict("dcgm", None, None, "", None, False,
                              "dcgm on node: dcgmi printed JSON without test_categories")]
    results: list[Verdict] = []
    seen: set[str] = set()
    for cat in categories:
        tests = cat.get("tests") if isinstance(cat, dict) else None
        for test in tests if isinstance(tests, list) else []:
            if not isinstance(test, dict) or not isinstance(test.get("results"), list):
                continue
            slug = _slug(str(test.get("name", "")))
            plugin = PLUGINS.get(slug)
            runs = [r for r in test["results"] if isinstance(r, dict)]
            if plugin is not None and runs:
                seen.add(plugin)
            results += [_result_verdict(f"dcgm_{slug}", plugin, r, level) for r in runs]
    if not results:
        return out + [Verdict("dcgm", None, None, "", None, False,
                              "dcgm on node: dcgmi reported no test results")]
    if all(v.unit in ("skip", "not run") for v in results):
        out.append(Verdict("dcgm", None, float(len(results)), "skipped", 0.0, False,
                           f"dcgm on node: DCGM skipped all {len(results)} tests"))
    for plugin in sorted(LEVEL_TESTS[level] - seen if level else ()):
        out.append(Verdict(f"dcgm_{plugin}", None, None, "", None, False,
                           f"dcgm_{plugin} on node: dcgmi diag -r {level} runs {plugin}, "
                           "but DCGM reported no result for it"))
    return out + results
