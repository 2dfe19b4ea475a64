"""Verdicts from threshold profiles: floors, correctness, and the fleet-relative check."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from provisioner.burnin.thresholds import (
    Verdict,
    evaluate,
    fleet_medians,
    fleet_medians_by_kind,
    fleet_outlier_verdicts,
    gpu_outlier_verdicts,
    load_profile,
)
from provisioner.catalogue import catalogue
from provisioner.errors import InputError
from provisioner.handle import Gpuctl
from provisioner.paths import Paths


def test_shipped_profiles_gate_every_throughput_test(paths: Paths) -> None:
    h100 = load_profile(Gpuctl(paths), "h100-sxm-8")
    assert h100["tests"]["all_reduce_busbw"]["min"] == 460
    assert h100["tests"]["h2d_bandwidth"]["min"] == 48
    assert h100["tests"]["p2p_bandwidth"]["min"] == 335
    a100 = load_profile(Gpuctl(paths), "a100-sxm4-8")
    assert (a100["tests"]["h2d_bandwidth"]["min"], a100["tests"]["p2p_bandwidth"]["min"],
            a100["tests"]["all_reduce_busbw"]["min"]) == (21, 235, 228)
    for name in (*GPU_SKUS, "cpu-lab"):
        tests = load_profile(Gpuctl(paths), name)["tests"]
        assert all(isinstance(t["min"], int | float) and t["min"] > 0 for t in tests.values())


def test_site_override_and_unknown_profile(paths: Paths) -> None:
    (paths.home / "thresholds").mkdir(parents=True)
    (paths.home / "thresholds/cpu-lab.yml").write_text("tests:\n  gemm_float32: {min: 7}\n")
    assert load_profile(Gpuctl(paths), "cpu-lab")["tests"] == {"gemm_float32": {"min": 7}}
    # A site file replaces a SKU's catalogue profile too.
    (paths.home / "thresholds/h100-sxm-8.yml").write_text("tests: {}\n")
    assert load_profile(Gpuctl(paths), "h100-sxm-8") == {"tests": {}}
    with pytest.raises(InputError, match="no threshold profile 'h900'"):
        load_profile(Gpuctl(paths), "h900")


PROFILE = {"fleet_outlier_fraction": 0.9,
           "tests": {"gemm_bfloat16": {"min": 600}, "all_reduce_busbw": {"min": 460}}}


def r(test: str, value: float, device: int | None = 0, ok: bool = True, **detail):  # type: ignore[no-untyped-def]
    return {"test": test, "value": value, "unit": "X", "device": device, "ok": ok,
            "detail": detail}


def test_floor_correctness_and_fleet_outlier() -> None:
    verdicts = evaluate([
        r("gemm_bfloat16", 700), r("gemm_bfloat16", 550, device=1),
        r("gemm_bfloat16", 750, device=2, ok=False, repeat_bit_identical=False),
        r("all_reduce_busbw", 470, device=None),
    ], PROFILE, {"all_reduce_busbw": 600})
    assert [v.passed for v in verdicts] == [True, False, False, False]
    assert verdicts[1].reason == "gemm_bfloat16 on GPU 1: 550 X < 600 X"
    assert "silent data corruption" in verdicts[2].reason
    assert "below 90% of the fleet median 600" in verdicts[3].reason


def test_fleet_comparison_judges_a_gpu_by_its_part_not_one_measurement() -> None:
    """CI (stop 17) failed a healthy lab GPU whose bfloat16 GEMM alone read 24% of the
    fleet median while another node started: one dtype is not a slow part, all four are."""
    medians = {"gemm_bfloat16": 0.13, "gemm_float16": 0.01, "gemm_tf32": 0.1,
               "gemm_float32": 0.1, "memory_bandwidth": 50, "all_reduce_busbw": 1.0}
    profile = {"fleet_outlier_fraction": 0.30, "fleet_dtype_floor_fraction": 0, "tests": {}}
    noisy = [r("gemm_bfloat16", 0.0315), r("gemm_float16", 0.011), r("gemm_tf32", 0.09),
             r("gemm_float32", 0.1), r("memory_bandwidth", 45)]
    # Per measurement (evaluate) the GPU's throughput is not compared with the fleet...
    assert all(v.passed for v in evaluate(noisy, profile, medians))
    # ...by part it is, and 0.24 x 1.1 x 0.9 x 1.0 (geometric mean 0.69) passes.
    assert fleet_outlier_verdicts(noisy, profile, medians) == []
    # Where one dtype has a floor of its own (a real SKU's default, 70%), it fails alone.
    [dtype] = fleet_outlier_verdicts(noisy, {"fleet_outlier_fraction": 0.30}, medians)
    assert (dtype.test, dtype.device, dtype.threshold) == ("gemm_bfloat16_vs_fleet_median", 0,
                                                           0.7)
    slow = [r(t, medians[t] / 10, device=d) for d in (0, 1) for t in medians
            if t.startswith("gemm_")] + [r("memory_bandwidth", 10, device=1)]
    verdicts = fleet_outlier_verdicts(slow, profile, medians)
    assert [(v.test, v.device) for v in verdicts] == [
        ("compute_vs_fleet", 0), ("compute_vs_fleet", 1), ("memory_bandwidth_vs_fleet", 1)]
    assert verdicts[0].reason == ("compute on GPU 0: 10% of the fleet median (bfloat16, "
                                  "float16, tf32, float32), below 30% (a slow GPU or node)")
    assert not any(v.passed for v in verdicts)
    # Without a fleet (fewer than 3 nodes) or with the comparison off, nothing is judged.
    assert fleet_outlier_verdicts(slow, profile, {}) == []
    assert fleet_outlier_verdicts(slow, {**profile, "fleet_outlier_fraction": 0}, medians) == []
    # Node-wide measurements are still compared one by one.
    [busbw] = evaluate([r("all_reduce_busbw", 0.2, device=None)], profile, medians)
    assert not busbw.passed and "below 30% of the fleet median 1" in busbw.reason
    # ... unless the profile gives them a fraction of their own: 0 turns it off (the CPU
    # lab, where a collective's wall clock is the machine's load).
    node_off = {**profile, "fleet_node_fraction": 0}
    [busbw] = evaluate([r("all_reduce_busbw", 0.2, device=None)], node_off, medians)
    assert busbw.passed
    assert fleet_outlier_verdicts(slow, node_off, medians) == verdicts  # GPUs still judged


def test_fleet_medians_need_three_nodes() -> None:
    nodes = [[r("gemm_bfloat16", v)] for v in (700, 710, 300)]
    assert fleet_medians(nodes) == {"gemm_bfloat16": 700}
    assert fleet_medians(nodes[:2]) == {}


# Every throughput measurement the agent can emit (memory_test is a correctness test).
THROUGHPUT_TESTS = {"gemm_bfloat16", "gemm_float16", "gemm_tf32", "gemm_float32",
                    "memory_bandwidth", "h2d_bandwidth", "d2h_bandwidth", "p2p_bandwidth",
                    "all_reduce_busbw", "all_gather_busbw", "multinode_all_reduce_busbw"}
CPU_ONLY_SKIPS = {"h2d_bandwidth", "d2h_bandwidth", "p2p_bandwidth"}  # CUDA-only tests


GPU_SKUS = sorted(n for n, s in catalogue().items() if s.gpu_count > 0)


@pytest.mark.parametrize("name", GPU_SKUS + ["cpu-lab"])
def test_every_throughput_test_is_gated_on_a_number(paths: Paths, name: str) -> None:
    profile = load_profile(Gpuctl(paths), name)
    wanted = THROUGHPUT_TESTS - (CPU_ONLY_SKIPS if name == "cpu-lab" else set())
    floors = {t for t, spec in profile["tests"].items() if spec.get("min") is not None}
    assert wanted <= floors, wanted - floors


def test_nodes_are_judged_by_their_sku_an_unknown_one_by_generic(paths: Paths) -> None:
    from provisioner.burnin.thresholds import node_profile

    gc = Gpuctl(paths)
    name, h200 = node_profile(gc, "h200-sxm-8", {})
    assert name == "h200-sxm-8" and h200["tests"]["all_reduce_busbw"]["min"] == 431
    assert h200["gpu_memory_mib_min"] == 143000 and h200["telemetry"]["nvlink_links"] == 18
    # The lab: the SKU's rules with the CPU's throughput floors.
    name, lab = node_profile(gc, "h200-sxm-8", {"gpuctl_burnin_floors": "cpu-lab"})
    assert name == "h200-sxm-8+cpu-lab" and lab["fleet_outlier_fraction"] == 0.30
    assert lab["tests"]["gemm_float32"]["min"] == 0.0005
    assert lab["gpu_memory_mib_min"] == 143000 and lab["telemetry"]["max_temp_c"] == 87
    assert node_profile(gc, None, {})[0] == "generic"
    assert node_profile(gc, "no-such-sku", {})[0] == "generic"
    assert node_profile(gc, "h100-sxm-8", {}, "a100-sxm4-8")[0] == "a100-sxm4-8"


def test_nodes_whose_gpus_agree_on_a_wrong_product_are_outvoted_by_the_fleet() -> None:
    from provisioner.burnin.thresholds import fleet_digest_verdicts

    def doc(digest: str, gpus: int = 2, torch: str = "2.11",
            env: dict[str, str] | None = None) -> dict:  # type: ignore[type-arg]
        return {"torch": torch, "product_environment": {"cublas": "12.9.1", "env": env or {}},
                "devices": [{"name": "NVIDIA H100", "multiprocessors": 132}] * gpus,
                "results": [{"test": "gemm_bfloat16", "device": i, "detail": {
                    "product_digest": digest, "n": 8192, "seed": 5}} for i in range(gpus)]}

    docs = {"a": doc("x"), "b": doc("x"), "c": doc("y"), "d": doc("x")}
    out = fleet_digest_verdicts(docs)
    assert list(out) == ["c"] and [v.device for v in out["c"]] == [0, 1]
    assert "differs from 6 of 8 GPUs of its model in this run (seed 5)" in out["c"][0].reason
    # Two nodes cannot outvote each other; another torch build is another key.
    assert fleet_digest_verdicts({"a": doc("x"), "c": doc("y")}) == {}
    assert fleet_digest_verdicts({"a": doc("x"), "b": doc("x"), "c": doc("y", torch="2.9")}
                                 ) == {}
    # So is a host whose environment steers cuBLAS (finding 9 of issue 22): its other
    # product is not silent data corruption.
    tf32_off = doc("y", env={"NVIDIA_TF32_OVERRIDE": "0"})
    assert fleet_digest_verdicts({"a": doc("x"), "b": doc("x"), "d": doc("x"),
                                  "c": tf32_off}) == {}


def test_a_mixed_run_compares_each_kind_with_its_own() -> None:
    """4 nodes of one SKU and 3 of a slower one (an L40S runs at about 57% of an H100),
    one slow node in each: each kind is judged against its own median, so the healthy
    nodes of the slower SKU pass and the slow node of each kind is caught."""
    import copy
    import json as _json
    from pathlib import Path as _Path

    from provisioner.burnin.thresholds import fleet_medians_by_kind, fleet_outlier_verdicts

    real = _json.loads((_Path(__file__).parents[1] / "data/h200-agent-quick.json").read_text())

    def scaled(factor: float) -> dict:  # type: ignore[type-arg]
        doc = copy.deepcopy(real)
        for r in doc["results"]:
            if r["test"].startswith("gemm_") and r.get("value") is not None:
                r["value"] *= factor
        return doc

    speed = {"h1": 1.0, "h2": 0.98, "h3": 0.99, "h4": 0.5, "l1": 0.57, "l2": 0.56, "l3": 0.28}
    docs = {name: scaled(f) for name, f in speed.items()}
    kinds = {name: "h100-sxm-8" if name[0] == "h" else "l40s-4" for name in docs}
    profile = {"fleet_outlier_fraction": 0.9}

    def failing(by_node: dict) -> set[str]:  # type: ignore[type-arg]
        return {name for name, doc in docs.items()
                if fleet_outlier_verdicts(doc["results"], profile, by_node[name])}

    assert failing(fleet_medians_by_kind(kinds, docs)) == {"h4", "l3"}
    # The run, 3 H100 and 2 L40S: one median over the whole run, as before,
    # failed both healthy L40S; by kind, the 2 L40S get no fleet comparison (fewer than
    # 3) and pass.
    docs = {n: d for n, d in docs.items() if n in ("h1", "h2", "h3", "l1", "l2")}
    assert failing(fleet_medians_by_kind(dict.fromkeys(docs, "any"), docs)) == {"l1", "l2"}
    assert failing(fleet_medians_by_kind(kinds, docs)) == set()


REAL_DOC = Path(__file__).parents[1] / "data/h200-agent-quick.json"
DTYPES = ("gemm_bfloat16", "gemm_float16", "gemm_tf32", "gemm_float32")


def node_doc(gpus: int, speed: Callable[[int, str], float] = lambda gpu, test: 1.0
             ) -> dict[str, Any]:
    """The real H200 agent document, its one GPU's results copied to ``gpus`` GPUs, each
    GEMM value scaled by ``speed(gpu, test)``."""
    real = json.loads(REAL_DOC.read_text())
    results = []
    for gpu in range(gpus):
        for r in copy.deepcopy(real["results"]):
            r["device"] = gpu
            if r["test"] in DTYPES:
                r["value"] *= speed(gpu, r["test"])
            results.append(r)
    return {**real, "gpus": gpus, "results": results}


def noisy(seed: int) -> Callable[[int, str], float]:
    """Each GPU and dtype within +-10% of the real measurement."""
    rng = random.Random(seed)
    table: dict[tuple[int, str], float] = {}
    return lambda gpu, test: table.setdefault((gpu, test), rng.uniform(0.9, 1.1))


def failed(verdicts: list[Verdict]) -> list[tuple[str, int | None]]:
    return [(v.test, v.device) for v in verdicts if not v.passed]


def test_one_dtype_at_half_speed_fails_naming_the_dtype(paths: Paths) -> None:
    """GPU 3 at 50% in bfloat16 alone averages 84% over the four dtypes, above the part's
    80%: the dtype's own 70% floor fails it, and the reason says which dtype."""
    profile = load_profile(Gpuctl(paths), "h200-sxm-8")
    doc = node_doc(8, lambda gpu, test: 0.5 if (gpu, test) == (3, "gemm_bfloat16") else 1.0)
    verdicts = gpu_outlier_verdicts(doc["results"], profile)
    assert failed(verdicts) == [("gemm_bfloat16_vs_node_median", 3)]
    assert verdicts[0].reason == (
        "gemm_bfloat16 on GPU 3: 50% of its node's median GPU in bfloat16 alone, below 70% "
        "(a part slow in one precision)")


def test_one_dtype_at_two_thirds_fails_in_the_node_and_against_the_fleet(paths: Paths
                                                                        ) -> None:
    """At 66% in tf32 alone a GPU passed both part checks (in the node 90% of the median,
    against the fleet 90% too); the dtype floors fail it in both, naming tf32."""
    profile = load_profile(Gpuctl(paths), "h200-sxm-8")
    docs = {f"n{i}": node_doc(8, noisy(i)) for i in range(3)}
    docs["n3"] = node_doc(8, lambda gpu, test: 0.66 if (gpu, test) == (5, "gemm_tf32")
                          else 1.0)
    medians = fleet_medians_by_kind(dict.fromkeys(docs, "h200-sxm-8"), docs)["n3"]
    results = docs["n3"]["results"]
    assert failed(gpu_outlier_verdicts(results, profile)) == [("gemm_tf32_vs_node_median", 5)]
    [fleet] = fleet_outlier_verdicts(results, profile, medians)
    assert (fleet.test, fleet.device) == ("gemm_tf32_vs_fleet_median", 5)
    assert fleet.reason.startswith("gemm_tf32 on GPU 5: 6") and fleet.reason.endswith(
        "of the fleet median in tf32 alone, below 70% (slow in one precision)")


def test_healthy_nodes_pass_every_relative_check(paths: Paths) -> None:
    """The real document as measured, and 8-GPU nodes within +-10% per GPU and dtype."""
    profile = load_profile(Gpuctl(paths), "h200-sxm-8")
    real = json.loads(REAL_DOC.read_text())
    docs = {"real": real, "copy": copy.deepcopy(real), **{
        f"n{i}": node_doc(8, noisy(100 + i)) for i in range(4)}}
    kinds = dict.fromkeys(docs, "h200-sxm-8")
    by_node = fleet_medians_by_kind(kinds, docs)
    for name, doc in docs.items():
        assert gpu_outlier_verdicts(doc["results"], profile) == [], name
        assert fleet_outlier_verdicts(doc["results"], profile, by_node[name]) == [], name
    # The real document beside two copies of itself is its own fleet median.
    three = {"a": real, "b": copy.deepcopy(real), "c": copy.deepcopy(real)}
    medians = fleet_medians_by_kind(dict.fromkeys(three, "h200-sxm-8"), three)["a"]
    assert medians and fleet_outlier_verdicts(real["results"], profile, medians) == []


def test_a_two_gpu_node_judges_the_slower_against_the_faster(paths: Paths) -> None:
    """With 2 GPUs the median (their mean) cannot tell which is slow; the slower one is
    judged against the faster, and only it is named."""
    profile = load_profile(Gpuctl(paths), "h200-sxm-8")
    slow = node_doc(2, lambda gpu, test: 0.6 if gpu == 1 else 1.0)
    verdicts = gpu_outlier_verdicts(slow["results"], profile)
    assert failed(verdicts) == [("compute_vs_node", 1)] + [
        (f"{t}_vs_node_median", 1) for t in DTYPES]
    assert verdicts[0].reason == (
        "compute on GPU 1: 60% of the faster of its node's 2 GPUs (bfloat16, float16, "
        "tf32, float32), below 80% (a slow part)")
    one = node_doc(2, lambda gpu, test: 0.5 if (gpu, test) == (0, "gemm_float16") else 1.0)
    assert failed(gpu_outlier_verdicts(one["results"], profile)) == [
        ("gemm_float16_vs_node_median", 0)]
    for seed in range(20):
        healthy = node_doc(2, noisy(seed))
        assert gpu_outlier_verdicts(healthy["results"], profile) == [], seed
    # One GPU: nothing to compare with inside the node.
    assert gpu_outlier_verdicts(node_doc(1, lambda g, t: 0.1)["results"], profile) == []
