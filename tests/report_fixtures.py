"""A realistic burn-in report document (two 8-GPU nodes, one failing), for report tests."""

from __future__ import annotations

from typing import Any


def sample_doc() -> dict[str, Any]:
    def results(node: int, bad: bool) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = [{"test": "inventory_match", "gpu": None, "value": 8.0,
                                       "unit": "GPUs", "threshold": 8.0, "verdict": "pass",
                                       "reason": ""}]
        for g in range(8):
            slow = bad and g == 5
            rows.append({"test": "gemm_bfloat16", "gpu": g, "value": 410.0 if slow else 702.5,
                         "unit": "TFLOPS", "threshold": 600.0,
                         "verdict": "fail" if slow else "pass",
                         "reason": f"gemm_bfloat16 on GPU {g}: 410 TFLOPS < 600 TFLOPS"
                         if slow else ""})
            rows.append({"test": "memory_bandwidth", "gpu": g, "value": 2900.0 + node,
                         "unit": "GB/s", "threshold": 2500.0, "verdict": "pass",
                         "reason": ""})
            rows.append({"test": "xid", "gpu": g, "value": 0.0, "unit": "events",
                         "threshold": 0.0, "verdict": "pass", "reason": ""})
        rows.append({"test": "all_reduce_busbw", "gpu": None, "value": 478.2, "unit": "GB/s",
                     "threshold": 460.0, "verdict": "pass", "reason": ""})
        rows.append({"test": "p2p_bandwidth", "gpu": None, "value": 351.0, "unit": "GB/s",
                     "threshold": 335.0, "verdict": "pass", "reason": ""})
        return rows

    def node(i: int, bad: bool) -> dict[str, Any]:
        res = results(i, bad)
        return {
            "name": f"h100-{i:02d}", "sku": "h100-sxm-8",
            "state_now": "quarantined" if bad else "certified",
            "verdict": "fail" if bad else "pass",
            "outcome": "quarantined" if bad else "certified",
            "reason": "burn-in failed: gemm" if bad else "burn-in passed",
            "failures": [r["reason"] for r in res if r["verdict"] != "pass"],
            "certificate": None if bad else {
                "profile": "h100-sxm-8", "level": "quick", "driver_version": "570.124.06",
                "cuda_version": "12.8", "results_digest": "ab" * 32,
                "issued_at": "2026-11-26T01:00:00+00:00",
                "expires_at": "2027-02-24T01:00:00+00:00"},
            "results": res, "backend": "cuda",
            # A ramp from idle to full load, as a burn-in's first seconds look.
            "telemetry": [{"t": 1000.0 + k, "gpu": g, "temp_c": 30.0 + 6 * k + g,
                           "power_w": 70.0 + 65 * k, "sm_mhz": 1980, "throttle": 4}
                          for k in range(10) for g in range(8)],
            "nvlink": [{"gpu": g, "links": [{"link": k, "active": not (bad and g == 4 and
                                                                        k == 3)}
                                            for k in range(18)]} for g in range(8)],
            "p2p_matrix": [[None if a == b else 350.0 + a + b for b in range(8)]
                           for a in range(8)],
            "collectives": {}, "dcgm": None,
        }

    return {"report": "gpuctl burn-in", "generated_at": "2026-11-26T02:00:00+00:00",
            "run": {"id": 7, "actor": "admin@ctl", "status": "done",
                    "started_at": "2026-11-26T01:00:00+00:00",
                    "finished_at": "2026-11-26T01:02:00+00:00", "level": "quick",
                    "duration": None, "with_dcgm": False},
            "summary": {"nodes": 2, "passed": 1, "failed": 1},
            "nodes": [node(1, False), node(2, True)]}
