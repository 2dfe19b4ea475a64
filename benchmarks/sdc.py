"""Fault-injection campaign for the burn-in agent: detection and false-positive rates.

    .venv/bin/python benchmarks/sdc.py [--trials 100] [--kinds transient,stuck-bit,...]
                                       [--device cpu|cuda] [--overhead-only]

Each fault kind is injected into the agent's own code paths (the faults act on torch, as
faulty silicon acts on the computation; the agent is not told), ``--trials`` times with
the fault and ``--trials`` times without, with fresh random placement each time:

  transient      one product in the GEMM loop gets one bit flipped (random product,
                 element and bit, any dtype)
  tile-swap      one product has two aligned 64x64 tiles swapped (a misrouted write)
  sign-pair      one product has the sign bits of two 64-bit words flipped (two faults
                 whose +2^63 cancelled in the old word sum)
  dropped-write  one product is never written: the buffer keeps what it held
  scaled-element a one-GPU node: one random element of every product comes out x(1+2^-6)
                 (persistent and peerless: only the float64 reference can see it)
  stuck-element  one GPU of four gets the same bit of the same element wrong in every
                 product (a persistent fault: repeats agree, so only the cross-GPU and
                 float64 checks can see it)
  bias           one GPU of four adds 0.1% of the mean magnitude to every element
  stuck-bit      one bit of one word of the memory-test buffer is stuck at 0 or 1: a
                 thread keeps forcing it in memory while the test writes and reads
  collective     one rank of three sends every element with one mantissa bit (0-22)
                 stuck at 0 or 1, in an all-reduce (its timed iterations included) or an
                 all-gather (the check must see it, and name the sender for all-gather)
  dead-rank      one rank of two dies at a random collective (the agent must report it,
                 name it and return within seconds, not hang)
  slow-gpu       one GPU of four runs its products at half speed, while two other
                 "nodes" load the same host (the in-node comparison must name it)
  mixed-fleet    3 H100 nodes and 2 L40S nodes (each GPU's GEMMs and memory bandwidth at
                 1.2 x its SKU's shipped floor, +-5% noise), one node of each SKU at 0.6 x
                 in faulty trials: the slow ones must fail, no healthy one may

Prints one table: detected / injected, false positives / healthy runs, and the rate of
naming the right GPU or rank. Then the cost of the SDC checks: the agent's GEMM with its
checks against the same loop without them, side by side (target <= 5%).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import multiprocessing as mp
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import yaml  # noqa: E402

from provisioner.burnin import agent  # noqa: E402
from provisioner.burnin.thresholds import (  # noqa: E402
    evaluate,
    fleet_medians_by_kind,
    fleet_outlier_verdicts,
    gpu_outlier_verdicts,
)

REAL_MATMUL = torch.matmul
CPU = torch.device("cpu")


def flip_bit(t: torch.Tensor, index: int, bit: int) -> None:
    """XOR one bit of element ``index`` of ``t``, in place, on its raw bits."""
    bits = 16 if t.element_size() == 2 else 32
    ints = t.view(torch.int16 if bits == 16 else torch.int32).view(-1)
    mask = 1 << bit
    ints[index] ^= mask - (1 << bits) if mask >= 1 << (bits - 1) else mask


@contextlib.contextmanager
def patched_matmul(hook: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
                   ) -> Iterator[None]:
    torch.matmul = hook  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.matmul = REAL_MATMUL


def cpu_devices(k: int) -> tuple[list[torch.device], list[dict[str, Any]]]:
    devs = [CPU] * k
    return devs, [{"index": i, "name": "cpu", "multiprocessors": None} for i in range(k)]


def gemm_on_all(k: int, dtype: str, n: int, seconds: float, seed: int
                ) -> list[agent.Measurement]:
    devs, idents = cpu_devices(k)
    runner = agent.DeviceRunner(devs, idents)
    try:
        batch = runner.run(f"gemm_{dtype}", "TFLOPS", lambda i, dev: agent.gemm(
            dev, dtype, n, seconds, i, seed), 120)
    finally:
        runner.close()
    agent.cross_gpu_check(batch, idents)
    return batch


def on_gpu(i: int) -> bool:
    return threading.current_thread().name == f"gpuctl-gpu{i}"


# -- fault kinds: each returns (detected, named right) for one trial ---------------------

def trial_transient(rng: random.Random, faulty: bool, device: torch.device = CPU,
                    n: int = 96, seconds: float = 0.02) -> tuple[bool, bool]:
    dtype = rng.choice(agent.DTYPE_ORDER)
    target, calls = rng.randint(2, 40), [0]
    index, bits = rng.randrange(n * n), 16 if dtype in ("bfloat16", "float16") else 32
    bit = rng.randrange(bits)

    def hook(a: torch.Tensor, b: torch.Tensor, out: Any = None) -> torch.Tensor:
        result = REAL_MATMUL(a, b, out=out)
        calls[0] += 1
        if faulty and calls[0] == target:
            flip_bit(result, index, bit)
        return result

    with patched_matmul(hook):
        m = agent.gemm(device, dtype, n, seconds, 0, rng.randrange(1 << 30))
    if faulty and calls[0] < target:  # the loop ended first: run again
        return trial_transient(rng, faulty, device, n, seconds)
    if not faulty and not m.ok:
        print(f"  false positive ({dtype}): {m.detail}", flush=True)
    return not m.ok, not m.ok


def _one_product_changed(rng: random.Random, faulty: bool,
                         change: Callable[[torch.Tensor, torch.Tensor | None], Any],
                         n: int = 128) -> tuple[bool, bool]:
    """One random product of the loop changed by ``change(result, out)`` (``out`` is the
    buffer the agent passed, None for the products made outside the loop)."""
    dtype = rng.choice(agent.DTYPE_ORDER)
    target, calls = rng.randint(3, 30), [0]

    def hook(a: torch.Tensor, b: torch.Tensor, out: Any = None) -> torch.Tensor:
        calls[0] += 1
        if faulty and calls[0] == target:
            return change(REAL_MATMUL(a, b), out)
        return REAL_MATMUL(a, b, out=out)

    with patched_matmul(hook):
        m = agent.gemm(CPU, dtype, n, 0.03, 0, rng.randrange(1 << 30))
    if faulty and calls[0] < target:  # the loop ended first: run again
        return _one_product_changed(rng, faulty, change, n)
    return not m.ok, not m.ok


def _written(result: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    if out is None:
        return result
    out.copy_(result)
    return out


def trial_tile_swap(rng: random.Random, faulty: bool) -> tuple[bool, bool]:
    tiles = rng.sample([(r, c) for r in (0, 64) for c in (0, 64)], 2)

    def change(result: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        (r1, c1), (r2, c2) = tiles
        one = result[r1:r1 + 64, c1:c1 + 64].clone()
        result[r1:r1 + 64, c1:c1 + 64] = result[r2:r2 + 64, c2:c2 + 64]
        result[r2:r2 + 64, c2:c2 + 64] = one
        return _written(result, out)

    return _one_product_changed(rng, faulty, change)


def trial_sign_pair(rng: random.Random, faulty: bool) -> tuple[bool, bool]:
    pick = rng.sample(range(128 * 128 // 4), 2)  # 64-bit words of the smallest dtype

    def change(result: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        words = result.view(-1).view(torch.int64)
        words[pick] ^= torch.tensor(-(2 ** 63), dtype=torch.int64)
        return _written(result, out)

    return _one_product_changed(rng, faulty, change)


def trial_dropped_write(rng: random.Random, faulty: bool) -> tuple[bool, bool]:
    def change(result: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        return result if out is None else out  # the write never happens

    return _one_product_changed(rng, faulty, change)


def trial_scaled_element(rng: random.Random, faulty: bool) -> tuple[bool, bool]:
    n = 128
    index = rng.randrange(n * n)
    dtype = rng.choice(agent.DTYPE_ORDER)

    def hook(a: torch.Tensor, b: torch.Tensor, out: Any = None) -> torch.Tensor:
        result = REAL_MATMUL(a, b, out=out)
        if faulty:
            flat = result.view(-1)
            flat[index] = flat[index] * (1 + 2 ** -6)
        return result

    with patched_matmul(hook):
        batch = gemm_on_all(1, dtype, n, 0.02, rng.randrange(1 << 30))
    if not faulty and not batch[0].ok:
        print(f"  false positive ({dtype}): {batch[0].detail}", flush=True)
    return not batch[0].ok, not batch[0].ok


def _one_gpu_wrong(rng: random.Random, faulty: bool, change: Callable[[torch.Tensor], Any]
                   ) -> tuple[bool, bool]:
    bad = rng.randrange(4)
    dtype = rng.choice(agent.DTYPE_ORDER)

    def hook(a: torch.Tensor, b: torch.Tensor, out: Any = None) -> torch.Tensor:
        result = REAL_MATMUL(a, b, out=out)
        if faulty and on_gpu(bad):
            change(result)
        return result

    with patched_matmul(hook):
        batch = gemm_on_all(4, dtype, 96, 0.02, rng.randrange(1 << 30))
    failed = [m.device for m in batch if not m.ok]
    return bool(failed), failed == [bad]


def trial_stuck_element(rng: random.Random, faulty: bool) -> tuple[bool, bool]:
    index, bit = rng.randrange(96 * 96), rng.randrange(16)  # a bit every dtype has
    return _one_gpu_wrong(rng, faulty, lambda t: flip_bit(t, index, bit))


def trial_bias(rng: random.Random, faulty: bool) -> tuple[bool, bool]:
    return _one_gpu_wrong(rng, faulty, lambda t: t.add_(t.abs().mean() * 1e-3))


def trial_stuck_bit(rng: random.Random, faulty: bool) -> tuple[bool, bool]:
    """A stuck cell: while the memory test runs, a thread keeps forcing one bit of one
    word of its buffer to 0 or 1 in memory (found through the allocation, not through
    anything the test compares with), so every write there is undone within
    microseconds, as a cell that cannot hold the other value."""
    megabytes = 4
    words = megabytes << 18
    word, bit, value = rng.randrange(words), rng.randrange(32), rng.randrange(2)
    mask = 1 << bit
    real_empty = torch.empty
    stop, cell = threading.Event(), {}

    def empty(*args: Any, **kwargs: Any) -> torch.Tensor:
        t = real_empty(*args, **kwargs)
        if t.dtype == torch.int32 and t.numel() == words and "ptr" not in cell:
            # The tensor is kept until the thread stops: the cell must outlive the test.
            cell["tensor"], cell["ptr"] = t, ctypes.c_uint32.from_address(
                t.data_ptr() + 4 * word)
        return t

    def force() -> None:
        while not stop.is_set():
            c = cell.get("ptr")
            if c is not None:
                c.value = (c.value | mask) if value else (c.value & ~mask & 0xFFFFFFFF)
            time.sleep(0)

    forcer = threading.Thread(target=force, daemon=True)
    if faulty:
        forcer.start()
    torch.empty = empty  # type: ignore[assignment]
    chunk, agent.MEMTEST_CHUNK = agent.MEMTEST_CHUNK, 1 << 16  # several chunks
    try:
        m = agent.memory_test(CPU, megabytes, 0, rng.randrange(1 << 30))
    finally:
        torch.empty = real_empty
        agent.MEMTEST_CHUNK = chunk
        stop.set()
        if faulty:
            forcer.join()
    return not m.ok, not m.ok


def trial_slow_gpu(rng: random.Random, faulty: bool) -> tuple[bool, bool]:
    bad = rng.randrange(4)

    def hook(a: torch.Tensor, b: torch.Tensor, out: Any = None) -> torch.Tensor:
        if faulty and on_gpu(bad):
            REAL_MATMUL(a, b)  # the same work twice: half speed
        return REAL_MATMUL(a, b, out=out)

    # What the lab's quick level runs: the four dtypes, one after another, on all GPUs.
    seed = rng.randrange(1 << 30)
    with patched_matmul(hook):
        batch = [m for dtype in agent.DTYPE_ORDER
                 for m in gemm_on_all(4, dtype, 256, 0.3, seed)]
    verdicts = gpu_outlier_verdicts([{"test": m.test, "device": m.device, "value": m.value,
                                      "unit": m.unit} for m in batch], LAB_PROFILE)
    named = sorted({v.device for v in verdicts})  # its part and its slowest dtypes
    return bool(named), named == [bad]


# -- collectives (in processes of their own) ---------------------------------------------

def _stuck(t: torch.Tensor, bit: int, value: int) -> None:
    """Every float32 of ``t`` with ``bit`` forced to ``value``, in place."""
    ints = t.view(torch.int32)
    mask = (1 << bit) - (1 << 32) if bit == 31 else 1 << bit
    if value:
        ints.bitwise_or_(mask)
    else:
        ints.bitwise_and_(~mask)


def _collective_worker(rank: int, world: int, port: int, plan: list[Any], results: Any
                       ) -> None:
    import torch.distributed as dist  # noqa: PLC0415

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    real_ar, real_gather = dist.all_reduce, agent.GATHER
    state: dict[str, Any] = {"fault": None}

    # The faulty rank's link: whatever it sends has the bit stuck (its own buffer is
    # changed before it goes out, as a stuck lane would change it on the wire).
    def ar(t: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if state["fault"]:
            _stuck(t, *state["fault"])
        return real_ar(t, *args, **kwargs)

    def gather(out: torch.Tensor, chunk: torch.Tensor) -> Any:
        if state["fault"]:
            chunk = chunk.clone()
            _stuck(chunk, *state["fault"])
        return real_gather(out, chunk)

    dist.all_reduce = ar  # type: ignore[assignment]
    agent.dist.all_reduce = ar  # type: ignore[assignment]
    agent.GATHER = gather
    elems = 3 * 4096
    chunk, out = torch.empty(elems // world), torch.empty(elems)
    for t, (op, bad, fault, seed) in enumerate(plan):
        state["fault"] = fault if bad == rank else None
        if op == "all_reduce":
            _, answer = agent.timed_all_reduce(torch.empty(elems), rank, world, 3, seed)
        else:
            answer = agent.check_all_gather(out, chunk, rank, world, seed)
        results.put((t, rank, answer))
    dist.destroy_process_group()


def run_collective_campaign(rng: random.Random, trials: int) -> dict[str, list[Any]]:
    world = 3
    plan = []
    for faulty in [True] * trials + [False] * trials:
        op = rng.choice(["all_reduce", "all_gather"])
        plan.append((op, rng.randrange(world) if faulty else None,
                     (rng.randrange(23), rng.randrange(2)), rng.randrange(1 << 30)))
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = agent._free_port()
    procs = [ctx.Process(target=_collective_worker, args=(r, world, port, plan, results))
             for r in range(world)]
    for p in procs:
        p.start()
    answers: dict[int, dict[int, Any]] = {}
    for _ in range(len(plan) * world):
        t, rank, answer = results.get(timeout=600)
        answers.setdefault(t, {})[rank] = answer
    for p in procs:
        p.join(timeout=60)
    out: dict[str, list[Any]] = {"faulty": [], "healthy": []}
    for t, (op, bad, _, _) in enumerate(plan):
        seen = answers[t]
        detected = any(seen.values())
        if op == "all_gather":
            senders = {s for v in seen.values() for s in v}
            named = senders == ({bad} if bad is not None else set())
        else:
            named = detected
        out["faulty" if bad is not None else "healthy"].append((detected, named))
    return out


DEAD_RANK_SITE = """
import builtins, os, sys
_real = builtins.__import__
def _hook(name, *args, **kwargs):
    module = _real(name, *args, **kwargs)
    d = sys.modules.get("torch.distributed")
    if d is not None and hasattr(d, "all_reduce") and not getattr(d, "_sdc", 0):
        d._sdc, real, calls = 1, d.all_reduce, [0]
        dead, when = int(os.environ["SDC_DEAD_RANK"]), int(os.environ["SDC_DEAD_AT"])
        def all_reduce(*a, **k):
            calls[0] += 1
            if d.get_rank() == dead and calls[0] == when:
                os._exit(int(os.environ.get("SDC_DEAD_CODE", "3")))
            return real(*a, **k)
        d.all_reduce = all_reduce
    return module
builtins.__import__ = _hook
"""


def run_dead_rank_campaign(rng: random.Random, trials: int, healthy: int
                           ) -> dict[str, list[Any]]:
    site = Path(tempfile.mkdtemp(prefix="gpuctl-sdc-"))
    (site / "sitecustomize.py").write_text(DEAD_RANK_SITE)
    old = dict(os.environ)
    out: dict[str, list[Any]] = {"faulty": [], "healthy": [], "seconds": []}
    # The surviving rank's traceback ("Connection reset by peer") for every trial is the
    # expected outcome: keep it off the table.
    saved_stderr = os.dup(2)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    try:
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(site), str(Path(__file__).resolve().parents[1]), old.get("PYTHONPATH", "")])
        for faulty in [True] * trials + [False] * healthy:
            dead = rng.randrange(2)
            os.environ["SDC_DEAD_RANK"] = str(dead if faulty else 99)
            os.environ["SDC_DEAD_AT"] = str(rng.randint(1, 8))  # 8 all-reduces a rank
            start = time.monotonic()
            # spawn: each trial's ranks read this trial's environment (a forkserver
            # keeps the one it started with).
            ms = agent.collectives(2, [1 << 12, 1 << 16], iters=2, start="spawn")
            out["seconds"].append(time.monotonic() - start)
            detected = any(not m.ok for m in ms)
            named = all(m.detail.get("bad_ranks") == [dead] for m in ms)
            out["faulty" if faulty else "healthy"].append((detected, named))
    finally:
        os.dup2(saved_stderr, 2)
        os.environ.clear()
        os.environ.update(old)
    return out


# -- mixed fleets (the control host's judgement, as burnin.run._judge applies it) -------

SKUS = Path(__file__).resolve().parents[1] / "inventory/skus"
PER_GPU = ("gemm_bfloat16", "gemm_float16", "gemm_tf32", "gemm_float32", "memory_bandwidth")


def _fleet_doc(rng: random.Random, floors: dict[str, float], gpus: int, factor: float
               ) -> dict[str, Any]:
    """A node's results: each GPU's test at 1.2 x the SKU's floor (a healthy part clears
    the shipped floors, about 70% of the datasheet, by that much), each with +-5% noise,
    times ``factor``."""
    return {"results": [{"test": t, "device": gpu, "unit": "", "ok": True, "detail": {},
                         "value": floors[t] * 1.2 * factor * rng.uniform(0.95, 1.05)}
                        for gpu in range(gpus) for t in PER_GPU]}


def trial_mixed_fleet(rng: random.Random, faulty: bool) -> tuple[bool, bool]:
    """``burnin --all`` over 3 H100 nodes and 2 L40S nodes: the SKU's floors, fleet
    medians per SKU and GPU count, and the in-node comparison. The slow L40S has one peer
    only, so its SKU's floor must catch it."""
    kinds, docs, slow = {}, {}, set()
    profiles = {}
    for sku, count, gpus in (("h100-sxm-8", 3, 8), ("l40s-4", 2, 4)):
        profiles[sku] = yaml.safe_load((SKUS / f"{sku}.yml").read_text())["burnin"]
        floors = {t: float(v["min"]) for t, v in profiles[sku]["tests"].items()}
        bad = rng.randrange(count) if faulty else None
        for k in range(count):
            name = f"{sku}-{k}"
            kinds[name] = sku
            if k == bad:
                slow.add(name)
            docs[name] = _fleet_doc(rng, floors, gpus, 0.6 if k == bad else 1.0)
    medians = fleet_medians_by_kind(kinds, docs)
    failed = set()
    for name, doc in docs.items():
        profile = profiles[kinds[name]]
        verdicts = evaluate(doc["results"], profile, medians.get(name, {}))
        verdicts += fleet_outlier_verdicts(doc["results"], profile, medians.get(name, {}))
        verdicts += gpu_outlier_verdicts(doc["results"], profile)
        if any(not v.passed for v in verdicts):
            failed.add(name)
    return bool(failed & slow) if faulty else bool(failed), failed == slow


# -- load for the slow-GPU kind ----------------------------------------------------------

def _busy_node(stop: Any) -> None:
    torch.set_num_threads(1)
    a = torch.randn(128, 128)
    while not stop.is_set():
        REAL_MATMUL(a, a)


# The in-node comparison as the lab's nodes are judged (gpu_outlier_fraction 0.75,
# gpu_dtype_floor_fraction 0.5).
LAB_PROFILE = yaml.safe_load((Path(__file__).resolve().parents[1]
                              / "inventory/thresholds/cpu-lab.yml").read_text())


KINDS: dict[str, Callable[[random.Random, bool], tuple[bool, bool]]] = {
    "transient": trial_transient, "tile-swap": trial_tile_swap,
    "sign-pair": trial_sign_pair, "dropped-write": trial_dropped_write,
    "scaled-element": trial_scaled_element, "stuck-element": trial_stuck_element,
    "bias": trial_bias, "stuck-bit": trial_stuck_bit, "slow-gpu": trial_slow_gpu,
    "mixed-fleet": trial_mixed_fleet,
}
ALL_KINDS = ["transient", "tile-swap", "sign-pair", "dropped-write", "scaled-element",
             "stuck-element", "bias", "stuck-bit", "collective", "dead-rank", "slow-gpu",
             "mixed-fleet"]


def rate(pairs: list[tuple[bool, bool]], which: int) -> str:
    hits = sum(p[which] for p in pairs)
    return f"{hits}/{len(pairs)} ({100 * hits / max(1, len(pairs)):.1f}%)"


def overhead(device: torch.device, n: int, seconds: float, rounds: int) -> None:
    print(f"\nSDC check cost on {device.type} (n={n}, {seconds:g} s x {rounds} rounds, "
          "alternating; target: checked / plain >= 0.95)")
    print(f"{'dtype':<10} {'plain TFLOPS':>13} {'checked TFLOPS':>15} {'ratio':>7}")
    for dtype in agent.DTYPE_ORDER:
        plain, checked = [], []
        for _ in range(rounds):
            plain.append(agent.gemm(device, dtype, n, seconds, 0, 1, check=False).value or 0.0)
            checked.append(agent.gemm(device, dtype, n, seconds, 0, 1).value or 0.0)
        p, c = statistics.median(plain), statistics.median(checked)
        print(f"{dtype:<10} {p:>13.4g} {c:>15.4g} {c / p:>7.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--kinds", default=",".join(ALL_KINDS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n", type=int, help="GEMM size for the cost (default 256 on CPU, "
                        "8192 on CUDA)")
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--overhead-only", action="store_true")
    parser.add_argument("--gpu-trials", type=int, default=0,
                        help="also inject transient faults into the real GEMM on --device "
                             "(n=8192) this many times, and run as many healthy trials")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    device = torch.device(args.device)
    if not args.overhead_only:
        torch.set_num_threads(1)
        print(f"fault-injection campaign on the CPU agent, {args.trials} trials per kind "
              f"with the fault and {args.trials} without (seed {args.seed})")
        print(f"{'kind':<14} {'detected':>18} {'false positives':>18} {'named right':>18}"
              f" {'s/trial':>8}")
        stop = mp.get_context("spawn").Event()
        load: list[Any] = []
        for kind in args.kinds.split(","):
            start = time.monotonic()
            if kind == "collective":
                res = run_collective_campaign(rng, args.trials)
            elif kind == "dead-rank":
                res = run_dead_rank_campaign(rng, args.trials, args.trials)
            else:
                if kind == "slow-gpu" and not load:  # two other nodes on this host
                    load = [mp.get_context("spawn").Process(target=_busy_node, args=(stop,))
                            for _ in range(2)]
                    for p in load:
                        p.start()
                res = {"faulty": [KINDS[kind](rng, True) for _ in range(args.trials)],
                       "healthy": [KINDS[kind](rng, False) for _ in range(args.trials)]}
            per = (time.monotonic() - start) / (2 * args.trials)
            print(f"{kind:<14} {rate(res['faulty'], 0):>18} {rate(res['healthy'], 0):>18} "
                  f"{rate(res['faulty'], 1):>18} {per:>8.2f}", flush=True)
            if kind == "dead-rank":
                secs = res["seconds"][:args.trials]
                print(f"{'':<14} a dead rank was reported after {statistics.median(secs):.1f} s "
                      f"(median), {max(secs):.1f} s at most")
        stop.set()
        for p in load:
            p.join(timeout=10)
        torch.set_num_threads(os.cpu_count() or 1)
    if args.gpu_trials:
        n = args.n or 8192
        print(f"\ntransient faults in the GEMM on {device} (n={n}), {args.gpu_trials} trials "
              "each way")
        res = {"faulty": [trial_transient(rng, True, device, n, 0.3)
                          for _ in range(args.gpu_trials)],
               "healthy": [trial_transient(rng, False, device, n, 0.3)
                           for _ in range(args.gpu_trials)]}
        print(f"{'transient':<14} {rate(res['faulty'], 0):>18} {rate(res['healthy'], 0):>18}",
              flush=True)
    overhead(device, args.n or (8192 if device.type == "cuda" else 256), args.seconds,
             args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
