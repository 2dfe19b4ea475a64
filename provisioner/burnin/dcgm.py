"""NVIDIA DCGM diagnostics beside gpuctl's own tests (``gpuctl burnin --with-dcgm``).

``dcgmi diag -r <1|2|3> --json`` prints one document of test categories, each with tests,
each with per-GPU results::

    {"DCGM GPU Diagnostic": {"test_categories": [{"category": "Hardware", "tests": [
        {"name": "GPU Memory", "results": [{"gpu_id": "0", "status": "Pass"}, ...]}]}],
     "version": "3.3.9"}}

DCGM 4 names the top key "DCGM Diagnostic" and results by ``entity_id``; both are read.
Each DCGM test and GPU becomes a verdict ``dcgm_<test>``: Fail fails it, Pass, Skip and
Warn pass it (a warning's text is kept as its reason).
"""

from __future__ import annotations

import re
from typing import Any

from provisioner.burnin.levels import LEVELS
from provisioner.burnin.thresholds import Verdict


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


def dcgm_verdicts(stored: dict[str, Any]) -> list[Verdict]:
    """Verdicts from what ``_run_dcgm`` stored: DCGM's output, or why there is none."""
    if "error" in stored:
        return [Verdict("dcgm", None, None, "", None, False, f"dcgm on node: {stored['error']}")]
    output = stored.get("output")
    doc = None
    if isinstance(output, dict):
        doc = output.get("DCGM GPU Diagnostic") or output.get("DCGM Diagnostic")
    categories = doc.get("test_categories") if isinstance(doc, dict) else None
    if not isinstance(categories, list):
        return [Verdict("dcgm", None, None, "", None, False,
                        "dcgm on node: dcgmi printed JSON without test_categories")]
    out = []
    for cat in categories:
        tests = cat.get("tests") if isinstance(cat, dict) else None
        for test in tests if isinstance(tests, list) else []:
            if not isinstance(test, dict) or not isinstance(test.get("results"), list):
                continue
            name = f"dcgm_{_slug(str(test.get('name', '')))}"
            for result in test["results"]:
                if not isinstance(result, dict):
                    continue
                status = str(result.get("status", "")).strip().lower()
                gpu = _gpu(result)
                where = f"GPU {gpu}" if gpu is not None else "node"
                failed = status == "fail"
                note = _messages(result)
                out.append(Verdict(name, gpu, None, status or "?", None, not failed,
                                   f"{name} on {where}: DCGM says Fail"
                                   + (f" ({note})" if note else "") if failed else note))
    if not out:
        out.append(Verdict("dcgm", None, None, "", None, False,
                           "dcgm on node: dcgmi reported no test results"))
    return out
