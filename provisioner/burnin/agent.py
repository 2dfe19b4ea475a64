"""gpuctl burn-in agent: runs ON the node, needs torch (pynvml optional).

The same code runs on CUDA with NCCL and on CPU with gloo (the lab). Every test returns
measurements with a unit; pass/fail against per-SKU thresholds is decided by the
control host, except for correctness checks (silent data corruption, memory patterns),
whose failure is a fact, not a threshold.

    python3 agent.py --level quick [--seconds 5] > results.json
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import functools
import hashlib
import json
import math
import os
import queue
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

# CUDA numbers GPUs fastest first by default; nvidia-smi, NVML and the kernel log name
# them in PCI bus order. Set before torch initialises CUDA, so GPU i here is GPU i there
# (CUDA Programming Guide, "CUDA Environment Variables": CUDA_DEVICE_ORDER).
os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"

import torch  # noqa: E402  (after CUDA_DEVICE_ORDER)
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

# Unit roundoff of each GEMM's output (2^-p for a p-bit significand; TF32 products come
# out in fp32). The SDC checks' tolerances are multiples of these, so a check is as tight
# as the arithmetic allows: bit-exact where results must repeat, a few roundoffs where
# they are compared with a float64 reference.
UNIT_ROUNDOFF = {"float32": 2.0 ** -24, "tf32": 2.0 ** -24, "float16": 2.0 ** -11,
                 "bfloat16": 2.0 ** -8}
ACCUMULATE_ROUNDOFF = 2.0 ** -24  # fp32 accumulation (reduced-precision reductions off)
PROBES = 4  # Rademacher probe vectors in Freivalds' check
COUNT_SLOTS = 256  # products whose wrong-word counts are kept before they are summed
DTYPES = {"float32": torch.float32, "tf32": torch.float32, "float16": torch.float16,
          "bfloat16": torch.bfloat16}
DTYPE_ORDER = ("bfloat16", "float16", "tf32", "float32")


@dataclass
class Measurement:
    test: str
    value: float | None
    unit: str
    device: int | None = None  # GPU index (nvidia-smi's, PCI bus order); None: node-wide
    ok: bool = True  # correctness; thresholds are applied by the control host
    detail: dict[str, Any] = field(default_factory=dict)


def devices(cpu_devices: int = 1) -> list[torch.device]:
    """The GPUs, in PCI bus order (CUDA_DEVICE_ORDER above), or ``cpu_devices`` logical
    devices on the CPU: the lab's stand-ins for a node's GPUs, so that every per-GPU check
    (cross-GPU comparison, the slowest GPU against its peers) runs there too."""
    if torch.cuda.is_available():
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [torch.device("cpu")] * max(1, cpu_devices)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def product_words(t: torch.Tensor) -> torch.Tensor:
    """The product's raw bits as integers: 64-bit words where the size allows (fewer, wider
    comparisons), else the element's own width."""
    flat = t.reshape(-1)
    if flat.numel() * flat.element_size() % 8 == 0:
        return flat.view(torch.int64)
    return flat.view(torch.int16 if t.element_size() == 2 else torch.int32)


def product_digest(*products: torch.Tensor) -> str:
    """SHA-256 of the products' full bytes, for comparing GPUs (once per test): equal
    digests are equal products, bit for bit, wherever the bits differ."""
    h = hashlib.sha256()
    for t in products:
        h.update(product_words(t).cpu().numpy().tobytes())
    return h.hexdigest()[:32]


def rademacher(n: int, k: int, seed: int, device: torch.device) -> torch.Tensor:
    """``k`` probe vectors of random +-1 (n x k, float64). Unlike a Gaussian probe, no
    entry is near zero, so a wrong element shows in Freivalds' check at its full size."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    signs = torch.randint(0, 2, (n, k), generator=gen, dtype=torch.int64)
    return (signs * 2 - 1).to(dtype=torch.float64, device=device)


def _tf32_exact(t: torch.Tensor) -> torch.Tensor:
    """``t`` with each float32's low 13 mantissa bits cleared: values a TF32 tensor core
    takes as they are (TF32 keeps 10 of fp32's 23 explicit bits: NVIDIA A100 Tensor Core
    GPU Architecture whitepaper, "TF32"), so the product has no input rounding whatever
    rounding the hardware uses, and its reference bound is fp32 accumulation alone."""
    return (t.view(torch.int32) & ~0x1FFF).view(torch.float32)


def _gemm_inputs(n: int, dtype_name: str, device: torch.device, seed: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A, and two B: the loop alternates A.B1 and A.B2, so the output buffer holds the
    other product before each write and a dropped or partial write cannot pass for a
    correct one (gpu-burn refills instead; alternating costs no extra pass)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    a, b1, b2 = (torch.randn(n, n, generator=gen) for _ in range(3))
    if dtype_name == "tf32":
        a, b1, b2 = (_tf32_exact(t) for t in (a, b1, b2))
    dtype = DTYPES[dtype_name]
    a, b1, b2 = (t.to(device=device, dtype=dtype) for t in (a, b1, b2))
    return a, b1, b2, rademacher(n, PROBES, seed, device)


def freivalds(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, x: torch.Tensor,
              dtype_name: str) -> tuple[float, int]:
    """Freivalds' check of C = A.B in float64 with ``PROBES`` Rademacher vectors: C.x
    against A.(B.x), O(n^2). Returns the worst row's error as a multiple of its rounding
    bound (<= 1 passes) and the number of rows over it. The bound per row is 8 x the
    rounding a correct GEMM can make there: the output's roundoff on each element, and
    the accumulation roundoff, which grows with sqrt(n) and the element's natural scale
    |a_i|.|b_j|/sqrt(n)."""
    a64, b64, c64 = a.double(), b.double(), c.double()
    err = (c64 @ x - a64 @ (b64 @ x)).abs()
    out_term = UNIT_ROUNDOFF[dtype_name] * (c64.square() @ x.square()).sqrt()
    calc_term = ACCUMULATE_ROUNDOFF * a64.norm(dim=1, keepdim=True) * (
        b64.norm(dim=0).square() @ x.square()).sqrt()
    ratio = (err / (8 * (out_term + calc_term) + 1e-300)).amax(dim=1)
    return float(ratio.max()), int((~(ratio <= 1)).sum())  # a NaN row counts


def reference_check(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, dtype_name: str
                    ) -> tuple[float, int, float]:
    """The whole product, element by element, against a float64 product computed on the
    same device (other units, other algorithm: cuBLAS's DGEMM, or the CPU's), so a GPU
    with no peer to vote with still shows a persistent error. Returns the worst element's
    error over its bound, the elements over it, and the product's relative error. Each
    element's bound is 2 output roundoffs of its value (round to nearest makes at most one;
    on an H200, 64 rows of an fp16 product checked this way reached 0.51 of such a bound,
    a little over one roundoff) plus 8 x
    the fp32 accumulation's roundoff of its natural scale sqrt(n * sum_k a_ik^2 b_kj^2)
    (inputs are exact: bf16/fp16 products fit in fp32, TF32 inputs are made exact by
    ``_tf32_exact``)."""
    n = a.shape[1]
    a64, b64 = a.double(), b.double()
    ref = a64 @ b64
    scale = (a64.square() @ b64.square()).sqrt_()
    scale.mul_(8 * ACCUMULATE_ROUNDOFF * math.sqrt(n))
    diff = c.double().sub_(ref)
    rel = float(diff.norm() / ref.norm())
    bound = ref.abs_().mul_(2 * UNIT_ROUNDOFF[dtype_name]).add_(scale).add_(1e-300)
    ratio = diff.abs_().div_(bound)
    return float(ratio.max()), int((~(ratio <= 1)).sum()), rel  # a NaN element counts


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


class _DeviceClock:
    """The time a throughput is measured over. A GPU's: the wall clock. On the CPU (the
    lab) a logical device is one thread (set_num_threads(1): each product or copy runs in
    the calling thread), and its time is the CPU time that thread got: the lab's nodes
    share this machine's cores with whatever else runs (two test runs, other nodes), and
    a device's speed is its own, not its share of the machine. A slow part still shows:
    the lab's slow-gpu and slow-node faults do extra products, busy."""

    def __init__(self, device: torch.device) -> None:
        """Started now: make it after the device is synchronised."""
        self.thread = device.type == "cpu" and torch.get_num_threads() == 1
        self.started = time.thread_time() if self.thread else 0.0

    def seconds(self, wall: float) -> float:
        """The measured span: ``wall`` seconds of the wall clock, or the thread's CPU
        time over them."""
        return max(time.thread_time() - self.started, 1e-6) if self.thread else wall

    def detail(self, busy: float) -> dict[str, float]:
        return {"thread_cpu_seconds": round(busy, 6)} if self.thread else {}


def gemm(device: torch.device, dtype_name: str, n: int, seconds: float,
         index: int | None = None, seed: int = 0, check: bool = True) -> Measurement:
    """Sustained matmul throughput, with three silent-data-corruption checks:

    - every product is compared with the first of its kind, word for word
      (``product_words``, as gpu-burn compares every element with the first result): a
      transient error in any product, anywhere in it, fails, whatever its pattern (two
      swapped elements, rows or tiles, paired sign flips). The loop alternates two
      products, A.B1 and A.B2, into one buffer, so a dropped write leaves the wrong one;
    - the first product of each kind is compared element by element with a float64
      product on the same device (``reference_check``), and passes Freivalds' check with
      Rademacher probes: a persistent error (the same wrong answer every time) fails on
      a GPU with no peer;
    - their SHA-256 (its first 128 bits) goes to ``cross_gpu_check``: GPUs of one model
      given the same seed must agree bit for bit (cuBLAS guarantees bit-wise identical
      results on GPUs of the same architecture and SM count: cuBLAS Library User Guide,
      "Results reproducibility"), so an error too small for the reference fails too.

    Inputs come from ``seed`` (the control host varies it per run and records it).
    ``check=False`` runs the bare loop, for measuring what the checks cost
    (benchmarks/sdc.py)."""
    dtype_name_used = "float32" if device.type == "cpu" and dtype_name == "tf32" else dtype_name
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = dtype_name == "tf32"
        # Reductions in fp32, as the tolerances above assume (torch's default allows
        # fp16/bf16 partial sums in split-K GEMMs).
        torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    a, b1, b2, x = _gemm_inputs(n, dtype_name, device, seed)
    bs = (b1, b2)
    firsts = [torch.matmul(a, b) for b in bs]
    expected = [product_words(p) for p in firsts]
    # Each product's count of wrong words, in a slot of its own: two operations per
    # product (compare, count), folded into the totals once per COUNT_SLOTS products.
    counts = torch.zeros(COUNT_SLOTS, dtype=torch.int64, device=device)
    totals = torch.zeros(2, dtype=torch.int64, device=device)  # wrong products, words
    out = torch.empty_like(firsts[0])
    words = product_words(out)
    flags = torch.empty(words.shape, dtype=torch.bool, device=device)

    def fold() -> None:
        totals[0] += (counts != 0).sum()
        totals[1] += counts.sum()
        counts.zero_()

    sync(device)
    iters, start = 0, time.perf_counter()
    clock = _DeviceClock(device)
    deadline = start + seconds
    while True:
        which = iters % 2
        torch.matmul(a, bs[which], out=out)
        if check:
            torch.ne(words, expected[which], out=flags)
            torch.sum(flags, dim=0, out=counts[iters % COUNT_SLOTS])
        iters += 1
        if check and iters % COUNT_SLOTS == 0:
            fold()
        if iters % 8 == 0:
            sync(device)  # bounds the queue of launched work, so the clock is honest
            if time.perf_counter() >= deadline:
                break
    sync(device)
    elapsed = time.perf_counter() - start
    busy = clock.seconds(elapsed)
    tflops = 2 * n ** 3 * iters / busy / 1e12
    detail: dict[str, Any] = {"n": n, "iterations": iters, "seconds": round(elapsed, 3),
                              "dtype": dtype_name_used, "seed": seed, **clock.detail(busy)}
    if not check:
        return Measurement(f"gemm_{dtype_name}", tflops, "TFLOPS", index, True, detail)
    fold()
    bad_products, bad_words = (int(v) for v in totals.tolist())
    del flags, out
    pairs = list(zip(bs, firsts, strict=True))
    f = [freivalds(a, b, p, x, dtype_name_used) for b, p in pairs]
    r = [reference_check(a, b, p, dtype_name_used) for b, p in pairs]
    f_ratio, f_rows = max(v for v, _ in f), sum(rows for _, rows in f)
    r_ratio, r_bad = max(v for v, _, _ in r), sum(bad for _, bad, _ in r)
    rel_err = max(e for _, _, e in r)
    finite = all(math.isfinite(v) for v in (f_ratio, r_ratio, rel_err))
    ok = bad_products == 0 and f_rows == 0 and r_bad == 0 and finite
    detail.update({
        "repeat_bit_identical": bad_products == 0, "repeat_mismatches": bad_products,
        "repeat_words_wrong": bad_words, "repeat_checks": iters,
        # A NaN or infinity in a product is no number JSON allows: null, and said so.
        "freivalds_ratio": _finite(f_ratio), "freivalds_rows": f_rows,
        "freivalds_probes": PROBES, "reference_ratio": _finite(r_ratio),
        "reference_elements": r_bad, "relative_error": _finite(rel_err),
        "product_digest": product_digest(*firsts)})
    if not finite:
        detail["error"] = ("silent data corruption: a product holds a NaN or an infinity "
                           f"(seed {seed})")
    return Measurement(f"gemm_{dtype_name}", tflops, "TFLOPS", index, ok, detail)


def cross_gpu_check(results: list[Measurement], identities: list[dict[str, Any]]) -> None:
    """GPUs of one model (same name and SM count) ran the same seeded product: their
    digests must agree. A GPU outvoted by the others fails. With no majority (two GPUs,
    or a split), the GPUs' own checks break the tie: if the GPUs that passed all of
    theirs (repeats, Freivalds, the float64 reference) agree on one digest, that one is
    right; otherwise every disagreeing GPU fails, as there is no telling which is
    right."""
    groups: dict[tuple[Any, ...], list[Measurement]] = {}
    for m in results:
        if m.device is None or "product_digest" not in m.detail:
            continue
        ident = identities[m.device] if m.device < len(identities) else {}
        key = (m.test, ident.get("name"), ident.get("multiprocessors"), m.detail.get("n"))
        groups.setdefault(key, []).append(m)
    for members in groups.values():
        votes = Counter(m.detail["product_digest"] for m in members)
        if len(members) < 2 or len(votes) == 1:
            continue
        (top, count), = votes.most_common(1)
        majority = top if count > len(members) / 2 else None
        # Products whose GPU passed all its own checks (repeats, Freivalds, reference).
        passed = {m.detail["product_digest"] for m in members if m.ok}
        by_reference = majority is None and len(passed) == 1
        if by_reference:
            majority = next(iter(passed))
        for m in members:
            if m.detail["product_digest"] == majority:
                continue
            others = [o.device for o in members if o is not m]
            m.ok = False
            if by_reference:
                right = [str(o.device) for o in members
                         if o.detail["product_digest"] == majority]
                why = (f"its product differs from that of GPU{'s' * (len(right) > 1)} "
                       f"{', '.join(right)} of its model, which the float64 reference "
                       "confirms")
            elif majority:
                why = f"its product differs from {count} of {len(members)} GPUs of its model"
            else:
                why = (f"GPUs {', '.join(str(d) for d in [m.device, *others])} of one model "
                       "disagree and no majority or reference says which is right")
            m.detail["cross_gpu_mismatch"] = why


def memory_bandwidth(device: torch.device, megabytes: int, seconds: float,
                     index: int | None = None) -> Measurement:
    """Device memory bandwidth from large copies: (read + write) bytes / time."""
    elems = megabytes * 1024 * 1024 // 4
    src = torch.ones(elems, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    iters, start = 0, time.perf_counter()
    clock = _DeviceClock(device)
    while time.perf_counter() - start < seconds:
        dst.copy_(src)
        iters += 1
        sync(device)
    busy = clock.seconds(time.perf_counter() - start)
    return Measurement("memory_bandwidth", 2 * src.numel() * 4 * iters / busy / 1e9, "GB/s",
                       index, True, {"megabytes": megabytes, "iterations": iters,
                                     **clock.detail(busy)})


PATTERNS = (0x00000000, 0xFFFFFFFF, 0xAAAAAAAA, 0x55555555)
MEMTEST_CHUNK = 1 << 26  # words written or compared at a time (256 MiB): bounds temporaries


def _constant(value: int, start: int, end: int) -> int:
    return value


def _as_int32(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


def memory_test(device: torch.device, megabytes: int, index: int | None = None,
                seed: int = 7) -> Measurement:
    """Write patterns over ``megabytes`` of memory and read every word back, as memtest86
    and cuda_memtest do: solid zeros and ones, alternating bits, walking ones, a seeded
    random fill, own address (each word holds its index, then the complement: catches
    address lines that alias two words) and moving inversions (write a pattern, then
    walking up, check each chunk and write its complement, then walking down, check and
    restore: catches cells disturbed by writes to their neighbours). Comparisons go chunk
    by chunk, so the test can cover most of a GPU's memory without running out of it."""
    elems = megabytes * 1024 * 1024 // 4
    buf = torch.empty(elems, dtype=torch.int32, device=device)
    errors, passes = 0, 0
    spans = [(s, min(elems, s + MEMTEST_CHUNK)) for s in range(0, elems, MEMTEST_CHUNK)]

    def count(memory: torch.Tensor, expect: Callable[[int, int], Any]) -> int:
        return sum(int((memory[s:e] != expect(s, e)).sum().item()) for s, e in spans)

    def address(s: int, e: int) -> torch.Tensor:
        return torch.arange(s, e, dtype=torch.int64, device=device).to(torch.int32)

    def not_address(s: int, e: int) -> torch.Tensor:
        return address(s, e).bitwise_not()

    fills = [_as_int32(p) for p in PATTERNS]
    fills += [_as_int32(1 << bit) for bit in range(0, 32, 8)]
    for value in fills:
        buf.fill_(value)
        errors += count(buf, functools.partial(_constant, value))
        passes += 1
    gen = torch.Generator(device="cpu").manual_seed(seed)
    rand = torch.randint(-(2 ** 31), 2 ** 31 - 1, (min(elems, 1 << 22),), generator=gen,
                         dtype=torch.int32).to(device)
    width = rand.numel()
    for start in range(0, elems - width + 1, width):
        buf[start:start + width].copy_(rand)
    for start in range(0, elems - width + 1, width):
        errors += int((buf[start:start + width] != rand).sum().item())
    passes += 1

    for expect in (address, not_address):  # own address, then its complement
        for s, e in spans:
            buf[s:e] = expect(s, e)
        errors += count(buf, expect)
        passes += 1
    pattern = _as_int32(0x5A5A5A5A if seed % 2 else 0xA5A5A5A5)
    buf.fill_(pattern)
    for s, e in spans:  # moving inversions, upwards
        errors += int((buf[s:e] != pattern).sum().item())
        buf[s:e] = ~pattern
    for s, e in reversed(spans):  # and downwards
        errors += int((buf[s:e] != ~pattern).sum().item())
        buf[s:e] = pattern
    errors += count(buf, functools.partial(_constant, pattern))
    passes += 1
    del buf, rand
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return Measurement("memory_test", megabytes / 1024, "GiB", index, errors == 0,
                       {"errors": errors, "patterns": passes})


# -- collectives -------------------------------------------------------------------------

# all_gather_single replaced all_gather_into_tensor in newer torch releases.
GATHER = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def bus_factor(op: str, ranks: int) -> float:
    """nccl-tests' busbw = algbw * factor: all_reduce 2(n-1)/n, all_gather (n-1)/n."""
    return 2 * (ranks - 1) / ranks if op == "all_reduce" else (ranks - 1) / ranks


def collective_timeout(largest: int) -> float:
    """Seconds any one collective may take before its ranks give up: 30 s, plus the
    largest message at 0.1 GB/s (far below any working link, far above a hang)."""
    return 30.0 + largest / 1e8


CHECK_CHUNK = 1 << 24  # elements made or compared at a time: bounds the temporaries


def _spans(n: int) -> list[tuple[int, int]]:
    return [(s, min(n, s + CHECK_CHUNK)) for s in range(0, n, CHECK_CHUNK)]


def _hash32(i: torch.Tensor, seed: int, salt: int) -> torch.Tensor:
    """A 32-bit mix of each index with ``seed`` (murmur-style multiply and shift; int64
    arithmetic kept below 2^63)."""
    h = (i * 0x5BD1E995 + seed * 0x1B873593 + salt) & 0xFFFFFFFF
    h = ((h ^ (h >> 15)) * 0x2C1B3C6D) & 0xFFFFFFFF
    return h ^ (h >> 13)


def pattern(start: int, end: int, seed: int, device: torch.device, clear: int = 0,
            narrow: bool = False) -> torch.Tensor:
    """Test data for elements ``start`` to ``end`` of a collective or a copy: float32s
    with random signs, all 23 mantissa bits random and a random exponent between 2^-126
    and 2^127 (never a subnormal, an infinity or a NaN), from a hash of the element's
    index and ``seed``. Every bit of the format changes from element to element, and
    every element differs, so a stuck bit, a dropped or a misplaced chunk all show
    (nccl-tests' ``-c`` likewise checks data that differs per element). ``narrow``
    keeps the exponent at 2^-31 or 2^-30, so that many sums of the same values stay
    finite; ``clear`` zeroes the lowest mantissa bits, for sums of up to 2^clear equal
    values to stay exact."""
    i = torch.arange(start, end, dtype=torch.int64, device=device)
    h = _hash32(i, seed, 0x2C1B3C6D)
    sign = h >> 31
    mantissa = h & (0x7FFFFF & ~((1 << clear) - 1))
    exponent = 96 + ((h >> 23) & 1) if narrow else 1 + _hash32(i, seed, 0x61C88647) % 254
    bits = (sign << 31) | (exponent << 23) | mantissa
    return (bits - (sign << 32)).to(torch.int32).view(torch.float32)


def fill_pattern(buf: torch.Tensor, seed: int, offset: int = 0) -> None:
    """``buf`` (float32) filled with ``pattern``'s elements from ``offset`` on."""
    for s, e in _spans(buf.numel()):
        buf[s:e] = pattern(offset + s, offset + e, seed, buf.device)


def fill_contribution(buf: torch.Tensor, rank: int, world: int, seed: int, clear: int = 0,
                      narrow: bool = False) -> None:
    """Rank ``rank``'s all-reduce input: element i holds ``pattern(i)`` where
    i mod world is this rank, else 0. Every sum then holds one non-zero term, so it is
    exact in any order the reduction takes (NCCL's rings, trees or NVLink SHARP), and
    every element of the result is known bit for bit: ``pattern(i)``."""
    for s, e in _spans(buf.numel()):
        values = pattern(s, e, seed, buf.device, clear, narrow)
        mine = torch.arange(s, e, device=buf.device) % world == rank
        buf[s:e] = values.where(mine, torch.zeros((), device=buf.device))


def wrong_reduced(buf: torch.Tensor, seed: int, clear: int = 0, times: float = 1.0,
                  rtol: float = 0.0, narrow: bool = False) -> int:
    """Elements of an all-reduce result (or a copy) that are not ``times`` x the pattern:
    bit for bit, or within ``rtol`` of it where the sums could not be exact (a NaN is
    never within it)."""
    wrong = 0
    for s, e in _spans(buf.numel()):
        expect = (pattern(s, e, seed, buf.device, clear, narrow).double() * times).float()
        got = buf[s:e]
        bad = ~((got - expect).abs() <= rtol * expect.abs()) if rtol else (
            got.view(torch.int32) != expect.view(torch.int32))
        wrong += int(bad.sum().item())
    return wrong


def check_all_reduce(buf: torch.Tensor, rank: int, world: int, seed: int = 0) -> int:
    """Fill this rank's share of the pattern, sum all-reduce, and count the elements that
    are not the pattern bit for bit. Returns the wrong elements."""
    fill_contribution(buf, rank, world, seed)
    dist.all_reduce(buf)
    return wrong_reduced(buf, seed)


def timed_all_reduce(buf: torch.Tensor, rank: int, world: int, iters: int, seed: int
                     ) -> tuple[float, int]:
    """Seconds per sum all-reduce over ``iters`` timed ones (after one untimed), and the
    wrong elements of the timed buffer and of a checked one after it.

    The timed iterations reduce the buffer in place, so after the first every rank holds
    the same sum S and each later one adds ``world`` copies of it: with the pattern's
    lowest log2(world) mantissa bits zeroed, every partial sum j*S (j <= world) is exact
    in any order for a power-of-two ``world``, and the buffer must be S * world^iters bit
    for bit; for other sizes, within the fold's rounding. The full-mantissa pattern
    is then checked in one more all-reduce (``check_all_reduce``)."""
    pow2 = world & (world - 1) == 0
    clear = world.bit_length() - 1 if pow2 else 0
    fill_contribution(buf, rank, world, seed, clear, narrow=True)
    device = buf.device
    dist.all_reduce(buf)
    sync(device)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(iters):
        dist.all_reduce(buf)
    sync(device)
    seconds = (time.perf_counter() - start) / max(1, iters)
    wrong = 0
    if math.log2(world) * iters < 150:  # (< 2^-29) * world^iters stays below fp32's 2^128
        wrong = wrong_reduced(buf, seed, clear, float(world) ** iters,
                              0.0 if pow2 else 2 * iters * world * 2.0 ** -24, narrow=True)
    return seconds, wrong + check_all_reduce(buf, rank, world, seed)


def check_all_gather(out: torch.Tensor, chunk: torch.Tensor, rank: int, world: int,
                     seed: int = 0, fill: bool = True) -> list[int]:
    """Every rank sends its chunk of the pattern (elements rank*len(chunk) on); the
    gathered buffer must be the whole pattern, bit for bit. Returns the ranks whose chunk
    arrived wrong (so the report names the sender). ``fill=False`` checks ``out`` as the
    last gather left it (the timed iterations)."""
    size = chunk.numel()
    if fill:
        fill_pattern(chunk, seed, rank * size)
        GATHER(out, chunk)
    senders = []
    for k in range(world):
        part = out[k * size:(k + 1) * size]
        if any(bool((part[s:e].view(torch.int32) != pattern(
                k * size + s, k * size + e, seed, out.device).view(torch.int32)).any())
               for s, e in _spans(size)):
            senders.append(k)
    return senders


def _collective_worker(rank: int, world: int, port: int, sizes: list[int], iters: int,
                       backend: str, results: Any, seed: int = 0, timeout: float = 60.0,
                       gpu: int | None = None) -> None:
    """One rank. A rank whose collective fails (a peer died or hung, the timeout ran
    out) says so before it exits, so the parent can tell it from the rank at fault."""
    try:
        _collective_rank(rank, world, port, sizes, iters, backend, results, seed, timeout,
                         rank if gpu is None else gpu)
    except Exception as exc:  # reported to the parent, which names the rank at fault
        results.put((rank, {"error": _error_text(exc)}))
        sys.exit(1)


def _collective_rank(rank: int, world: int, port: int, sizes: list[int], iters: int,
                     backend: str, results: Any, seed: int, timeout: float, gpu: int
                     ) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(backend, rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout))
    device = torch.device("cuda", gpu) if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)
    rows = []
    for op in ("all_reduce", "all_gather"):
        for size in sizes:
            elems = max(world, size // 4 // world * world)
            nbytes = elems * 4  # nccl-tests counts the gathered (output) size
            # Correctness on every size, the largest included, and of the buffer the
            # timed iterations left (nccl-tests -c checks each size): a wrong result is
            # a failure, not a bandwidth.
            if op == "all_reduce":
                buf = torch.empty(elems, device=device)
                seconds, wrong = timed_all_reduce(buf, rank, world, iters, seed)
                senders: list[int] = []
            else:
                chunk = torch.empty(elems // world, device=device)
                out = torch.empty(elems, device=device)
                check_all_gather(out, chunk, rank, world, seed)  # fills, gathers once
                sync(device)
                dist.barrier()
                start = time.perf_counter()
                for _ in range(iters):
                    GATHER(out, chunk)
                sync(device)
                seconds = (time.perf_counter() - start) / iters
                senders = check_all_gather(out, chunk, rank, world, seed, fill=False)
                wrong = len(senders)
            rows.append({"op": op, "bytes": nbytes, "time_us": seconds * 1e6,
                         "wrong": wrong, "wrong_senders": senders})
            buf = chunk = out = None  # type: ignore[assignment]  # free before the next size
            if device.type == "cuda":
                torch.cuda.empty_cache()
    results.put((rank, rows))
    dist.destroy_process_group()


def _free_port() -> int:
    """A free TCP port on loopback for the rendezvous (several nodes may share a host's
    network namespace, so no fixed or PID-derived port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def summarize_collectives(per_rank: dict[int, list[dict[str, Any]]], world: int,
                          backend: str) -> list[Measurement]:
    """Per op and size, the time averaged over the ranks (nccl-tests' default, ``-a 1``)
    and busbw from it; gated on the largest message. Any wrong element on any rank, at
    any size, fails the op and names the ranks that saw it (and, for all-gather, the
    ranks whose contribution arrived wrong)."""
    out = []
    for op in ("all_reduce", "all_gather"):
        by_size: dict[int, list[dict[str, Any]]] = {}
        for rank_rows in per_rank.values():
            for r in rank_rows:
                if r["op"] == op:
                    by_size.setdefault(r["bytes"], []).append(r)
        sizes: list[dict[str, Any]] = []
        bad_ranks: set[int] = set()
        senders: set[int] = set()
        for nbytes, rows in sorted(by_size.items()):
            seconds = statistics.fmean(r["time_us"] for r in rows) / 1e6
            algbw = nbytes / seconds / 1e9
            sizes.append({"op": op, "bytes": nbytes, "time_us": seconds * 1e6,
                          "algbw": algbw, "busbw": algbw * bus_factor(op, world),
                          "wrong": sum(r["wrong"] for r in rows)})
        for rank, rank_rows in per_rank.items():
            for r in rank_rows:
                if r["op"] == op and r["wrong"]:
                    bad_ranks.add(rank)
                    senders.update(r.get("wrong_senders") or [])
        largest = max(sizes, key=lambda r: r["bytes"])
        detail: dict[str, Any] = {"backend": backend, "ranks": world, "sizes": sizes,
                                  "averaged_over_ranks": len(per_rank)}
        if bad_ranks:
            detail["error"] = (f"wrong {op} result on rank{'s' if len(bad_ranks) > 1 else ''}"
                               f" {', '.join(map(str, sorted(bad_ranks)))}" + (
                                   f" (contribution of rank {', '.join(map(str, sorted(senders)))}"
                                   " arrived wrong)" if senders else ""))
            detail["bad_ranks"] = sorted(senders or bad_ranks)
        out.append(Measurement(f"{op}_busbw", largest["busbw"], "GB/s", None,
                               not bad_ranks, detail))
    return out


def collectives(ranks: int, sizes: list[int], iters: int, deadline_s: float | None = None,
                gpus: list[int] | None = None, seed: int = 0,
                start: str = "forkserver") -> list[Measurement]:
    """All-reduce and all-gather inside the node, one process per GPU (NCCL; ``gpus``
    names them, so a GPU already lost or hung is left out) or ``ranks`` processes on the
    CPU (gloo). A rank that dies or hangs fails both ops within a bounded time, naming
    the rank, instead of taking the whole agent down with it: each collective gives up
    after ``collective_timeout``, and the whole test after ``deadline_s`` at the latest
    (the agent's time left before its watchdog stops it).

    ``start``: the ranks' start method. forkserver, not fork: a CUDA context must not be
    forked (CUDA C Programming Guide), and the ranks start from a server that imported
    torch once, not each on its own (spawn: about 0.6 s more of a 2-core lab node's
    burn-in). The server is in the agent's process group, which the watchdog's killpg
    reaches, and it keeps the environment and imports of its first start: a caller that
    changes the ranks' environment between calls (the dead-rank campaign) takes spawn."""
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    # A backstop: a hung collective times out in its ranks, which then exit with an
    # error and are seen below within a second.
    budget = 60.0 + 2 * len(sizes) * collective_timeout(max(sizes))
    if deadline_s is not None:
        budget = max(5.0, min(budget, deadline_s))
    timeout = min(collective_timeout(max(sizes)), max(3.0, budget / 2))
    if start == "forkserver":
        ctx: Any = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["__main__", "torch", "torch.distributed"])
    else:
        ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    # Daemons: a rank that cannot be killed (stuck in the driver) must not hold the
    # agent's exit after its document is out.
    procs = [ctx.Process(target=_collective_worker, daemon=True, args=(
        r, ranks, port, sizes, iters, backend, results, seed, timeout,
        gpus[r] if gpus else None)) for r in range(ranks)]
    deadline = time.monotonic() + budget
    per_rank: dict[int, list[dict[str, Any]]] = {}
    complaints: dict[int, str] = {}  # ranks whose collective failed under them
    why, bad = "", list[int]()
    try:
        for p in procs:  # inside: a rank that cannot start leaves none behind
            p.start()
        while len(per_rank) < ranks:
            try:
                rank, rows = results.get(timeout=1.0)
                if isinstance(rows, dict):
                    complaints[rank] = str(rows.get("error"))
                else:
                    per_rank[rank] = rows
                continue
            except queue.Empty:
                pass
            # A rank that exited with an error without saying why died on its own (a
            # crash, a GPU gone); the others only saw it go.
            dead = [(r, p.exitcode) for r, p in enumerate(procs) if p.exitcode not in
                    (None, 0) and r not in per_rank and r not in complaints]
            if dead:
                why = "; ".join(f"rank {r} died (exit code {code})" for r, code in dead)
                bad = [r for r, _ in dead]
                break
            if complaints and all(p.exitcode is not None for p in procs):
                r, text = next(iter(sorted(complaints.items())))
                why = f"rank {r}: {text[:200]}"
                bad = sorted(complaints)
                break
            if time.monotonic() > deadline:
                missing = [r for r in range(ranks) if r not in per_rank]
                why = f"ranks {', '.join(map(str, missing))} did not finish in {budget:.0f} s"
                bad = missing
                break
    finally:
        # One deadline for all the ranks together (never beyond the budget): the ranks
        # that finished exit within it; the rest are killed at once, then reaped.
        settle = time.monotonic() + (0 if why else min(30.0, max(0.0, deadline -
                                                                  time.monotonic())))
        started = [p for p in procs if p.pid is not None]
        for p in started:
            p.join(timeout=max(0.0, settle - time.monotonic()))
        for p in started:
            if p.is_alive():
                p.kill()
        reap = time.monotonic() + 10
        for p in started:
            p.join(timeout=max(0.0, reap - time.monotonic()))
    out = [Measurement(f"{op}_busbw", None, "GB/s", None, False, {
        "backend": backend, "ranks": ranks, "error": why, "bad_ranks": bad})
        for op in ("all_reduce", "all_gather")] if why else summarize_collectives(
            per_rank, ranks, backend)
    for m in out:
        m.detail["seed"] = seed
        if gpus:  # rank i ran on GPU gpus[i]: a failure names the boards
            m.detail["gpus"] = gpus
            if m.detail.get("error"):
                m.detail["error"] += (" (ranks on GPUs: " + ", ".join(
                    f"{r}={g}" for r, g in enumerate(gpus)) + ")")
    return out


# -- telemetry ---------------------------------------------------------------------------

# nvidia-smi's --query-gpu fields for one telemetry sample, and the sample's key for each;
# the throttle bitmask is the same one NVML's nvmlDeviceGetCurrentClocksEventReasons returns.
SMI_SAMPLE = {"temperature.gpu": "temp_c", "power.draw": "power_w", "clocks.sm": "sm_mhz",
              "clocks_throttle_reasons.active": "throttle", "pcie.link.gen.current": "pcie_gen",
              "pcie.link.width.current": "pcie_width"}
SMI_INTEGERS = ("throttle", "pcie_gen", "pcie_width")


# Sources that did not answer in time (a hung GPU or driver), and why: the agent does not
# ask them again (each new call would hang too, and leave one more stuck process or
# thread), and the document names them.
_UNANSWERED: dict[str, str] = {}
NVML_TIMEOUT_S = 30.0  # one NVML read (or one pass over every GPU's)


def _run_bounded(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[bytes] | None:
    """Run ``cmd`` (stdin from /dev/null); None when it does not exit within ``timeout``.
    Killed then, and given 2 s to go, not waited for as ``subprocess.run`` waits after
    its timeout: a process stuck in the driver sleeps uninterruptibly (state D) and
    cannot be killed until the driver lets go (NVIDIA's answer on a hung nvidia-smi:
    "if so this means the driver is hung", NVIDIA/gpu-monitoring-tools issue 46).

    Raises:
        OSError: ``cmd`` could not be started.
    """
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=2)
        return None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _smi(args: list[str], timeout: float = 60.0, limit: int = 16 << 20) -> str | None:
    """stdout of ``nvidia-smi ARGS`` (at most ``limit`` bytes), or None when it fails, takes
    longer than ``timeout`` (nvidia-smi then counts as unanswered, ``_UNANSWERED``), or
    has hung before. nvidia-smi hangs with the driver: "nvidia-smi hangs indefinitely"
    (NVIDIA/open-gpu-kernel-modules issue 971, B200, 570.133.20)."""
    if "nvidia-smi" in _UNANSWERED or timeout <= 0:
        return None
    try:
        proc = _run_bounded(["nvidia-smi", *args], timeout)
    except OSError:
        return None
    if proc is None:
        _UNANSWERED["nvidia-smi"] = (f"nvidia-smi {args[0] if args else ''} did not exit "
                                     f"within {timeout:.3g} s (a hung GPU or driver); not "
                                     "asked again")
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout[:limit].decode("utf-8", "replace")


def _number(text: str) -> float | None:
    """A CSV cell of nvidia-smi: ``45``, ``312.50``, ``0x0000000000000040``, ``[N/A]``."""
    word = (text.strip().split() or [""])[0]
    try:
        return float(int(word, 16)) if word.lower().startswith("0x") else float(word)
    except ValueError:
        return None


def smi_query_gpu(fields: list[str], timeout: float = 60.0) -> list[dict[str, str]]:
    """``nvidia-smi --query-gpu=index,FIELDS --format=csv,noheader,nounits``: per GPU, each
    field's cell as text (``312.50``, ``0x0000000000000040``, ``[N/A]``; ``_number`` reads
    it), plus ``index``. Lines without an integer index or with a cell too many or too few
    are left out; empty without nvidia-smi."""
    names = ["index", *fields]
    text = _smi(["--query-gpu=" + ",".join(names), "--format=csv,noheader,nounits"], timeout)
    rows = []
    for line in (text or "").splitlines()[:64]:
        cells = [c.strip() for c in line.split(",")]
        if len(cells) == len(names) and cells[0].isdigit():
            rows.append({name: cells[i] for i, name in enumerate(names)})
    return rows


_NVML_LOCK = threading.Lock()
# sys.modules' ``pynvml`` when nvmlInit was last tried, and the module if that worked.
# Keyed on that entry, not tried once for good, so a pynvml put there later (a test's
# fake) is initialised in its turn.
_NVML: dict[str, Any] = {"key": None, "lib": None, "tried": False}
_ABSENT = object()


def _in_thread(call: Callable[[], Any], timeout: float) -> tuple[bool, bool, Any]:
    """(finished, returned, its value or exception) of ``call()`` run on a daemon thread
    for at most ``timeout`` s. A call that does not finish is abandoned: the thread stays
    blocked where it is (a C call into the driver cannot be interrupted) and does not
    keep the process from exiting."""
    box: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            box.append((True, call()))
        except BaseException as exc:  # noqa: BLE001  (handed to the caller as a value)
            box.append((False, exc))

    worker = threading.Thread(target=run, name="gpuctl-nvml", daemon=True)
    worker.start()
    worker.join(max(0.0, timeout))
    if not box:
        return False, False, None
    return True, *box[0]


def nvml() -> Any:
    """The pynvml module, initialised; None without pynvml or a driver, or when nvmlInit
    did not return within ``NVML_TIMEOUT_S`` (a driver issue made it hang on H200s with
    570.x: NVIDIA/go-nvml issue 152). Every NVML reader in the agent comes through here,
    so nvmlInit runs once per process (a failure is remembered too) and nvmlShutdown
    once, at exit (not after a hang)."""
    with _NVML_LOCK:
        if _NVML["tried"] and sys.modules.get("pynvml", _ABSENT) is _NVML["key"]:
            return _NVML["lib"]
        try:
            import pynvml  # noqa: PLC0415
        except Exception:  # no pynvml: the callers ask nvidia-smi
            lib = None
        else:
            finished, returned, _ = _in_thread(pynvml.nvmlInit, NVML_TIMEOUT_S)
            lib = pynvml if returned else None  # no driver: the callers ask nvidia-smi
            if not finished:
                _UNANSWERED["nvml"] = (f"nvmlInit did not return within "
                                       f"{NVML_TIMEOUT_S:.3g} s (a hung GPU or driver)")
            if lib is not None:
                atexit.register(_nvml_shutdown, pynvml)
        _NVML.update(key=sys.modules.get("pynvml", _ABSENT), lib=lib, tried=True)
        return lib


def _nvml_shutdown(lib: Any) -> None:
    if "nvml" in _UNANSWERED:
        return  # it would hang the exit behind the stuck call
    with contextlib.suppress(Exception):  # at exit, a failure has nobody to tell
        lib.nvmlShutdown()


def nvml_query(func: str | Callable[..., Any], *args: Any, default: Any = None,
               timeout: float | None = None) -> Any:
    """``pynvml.<func>(*args)``, or ``func(*args)`` for a callable, once NVML is
    initialised; ``default`` without pynvml or a driver, or when the call raises (an
    NVMLError such as a metric this GPU does not support, a function this pynvml lacks).
    After nvitop's ``nvmlQuery(func, *args, default=NA)``.

    The call runs on its own thread for at most ``timeout`` s (default
    ``NVML_TIMEOUT_S``; NVML is thread-safe:
    "safe to make simultaneous NVML calls from multiple threads", NVML API Reference):
    a GPU whose driver hangs hangs its nvmlDeviceGet* calls too. One that does not
    return gives ``default``, and NVML counts as unanswered from then on
    (``_UNANSWERED``): later calls give ``default`` at once."""
    lib = nvml()
    timeout = NVML_TIMEOUT_S if timeout is None else timeout
    if lib is None or "nvml" in _UNANSWERED or timeout <= 0:
        return default
    call = (lambda: getattr(lib, func)(*args)) if isinstance(func, str) else (
        lambda: func(*args))
    finished, returned, value = _in_thread(call, timeout)
    if not finished:
        name = func if isinstance(func, str) else "a read of every GPU"
        _UNANSWERED.setdefault("nvml", f"{name} did not return within {timeout:.3g} s (a "
                                       "hung GPU or driver); NVML not asked again")
    return value if returned else default


def _nvml_each_gpu(read: Callable[[Any, Any], Any], timeout: float | None = None
                   ) -> list[Any] | None:
    """``read(pynvml, handle)`` for every GPU NVML sees, within ``timeout`` s in all; None
    without NVML or a driver, when a read fails part-way or NVML does not answer in time
    (the caller then asks nvidia-smi)."""
    lib = nvml()
    return nvml_query(lambda: [read(lib, lib.nvmlDeviceGetHandleByIndex(i))
                               for i in range(lib.nvmlDeviceGetCount())], timeout=timeout)


def _left(until: float, cap: float) -> float:
    """Seconds from now to ``until`` (a ``time.monotonic()`` value), at most ``cap``."""
    return max(0.0, min(cap, until - time.monotonic()))


class Telemetry:
    """Samples the GPUs while tests run: temperature, power, SM clock, throttle reasons.
    Through NVML where pynvml is installed, else through ``nvidia-smi --query-gpu``; where
    there is neither (a CPU-only machine), there are no samples."""

    JOIN_S = 5.0  # how long leaving the block waits for a sample in progress

    def __init__(self, interval: float = 1.0, until: float = math.inf) -> None:
        """``until``: a ``time.monotonic()`` value no read of this object runs past (the
        agent's deadline for its closing reads)."""
        self.interval, self.until = interval, until
        self.samples: list[dict[str, Any]] = []
        self.source = "none"
        self.error: str | None = None  # why sampling stopped early
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        handles = _nvml_each_gpu(lambda lib, handle: handle, _left(until, NVML_TIMEOUT_S))
        self._handles: list[Any] = handles or []
        if handles is not None:
            self.source = "nvml"
        elif smi_query_gpu(list(SMI_SAMPLE), _left(until, 30)):
            self.source = "nvidia-smi"

    @property
    def available(self) -> bool:
        return self.source != "none"

    def sample(self) -> None:
        """One sample of every GPU; none once the source has stopped answering (each read
        is bounded: ``nvml_query``, ``_smi``), and ``error`` says why."""
        now = time.time()
        unanswered = _UNANSWERED.get("nvml" if self.source == "nvml" else "nvidia-smi")
        if unanswered:
            self.error = unanswered
            return
        t = _left(self.until, NVML_TIMEOUT_S)
        if self.source == "nvml":
            for i, h in enumerate(self._handles):
                power = nvml_query("nvmlDeviceGetPowerUsage", h, timeout=t)
                throttle = nvml_query("nvmlDeviceGetCurrentClocksEventReasons", h, timeout=t)
                if throttle is None:  # the name before NVML 12.535 (R535) deprecated it
                    throttle = nvml_query("nvmlDeviceGetCurrentClocksThrottleReasons", h,
                                          timeout=t)
                reading = {
                    "t": now, "gpu": i,
                    "temp_c": nvml_query("nvmlDeviceGetTemperature", h, 0, timeout=t),
                    "power_w": power / 1000 if power is not None else None,
                    "sm_mhz": nvml_query("nvmlDeviceGetClockInfo", h, 1, timeout=t),
                    "throttle": throttle,
                    "pcie_gen": nvml_query("nvmlDeviceGetCurrPcieLinkGeneration", h,
                                           timeout=t),
                    "pcie_width": nvml_query("nvmlDeviceGetCurrPcieLinkWidth", h, timeout=t),
                }
                if "nvml" in _UNANSWERED:  # a read hung part-way: not a sample
                    self.error = _UNANSWERED["nvml"]
                    return
                self.samples.append(reading)
        elif self.source == "nvidia-smi":
            for row in smi_query_gpu(list(SMI_SAMPLE), t):
                sample: dict[str, Any] = {"t": now, "gpu": int(row["index"])}
                for name, key in SMI_SAMPLE.items():
                    value = _number(row[name])
                    sample[key] = int(value) if key in SMI_INTEGERS and value is not None \
                        else value
                self.samples.append(sample)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> Telemetry:
        if self.available:
            self.sample()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread:
            # A sample in progress ends within its reads' bounds; this wait is shorter
            # still, and an abandoned sampler only adds to ``samples`` (read as a copy).
            self._thread.join(_left(self.until, self.JOIN_S))
            if self._thread.is_alive():
                self.error = self.error or (f"a sample did not finish within "
                                            f"{self.JOIN_S:.0f} s of the tests' end")
                return
        if self.available:
            self.sample()

    def as_dict(self) -> dict[str, Any]:
        """What the agent's document carries: a copy of the samples, and why sampling
        stopped early if it did."""
        out = {"available": self.available, "source": self.source,
               "samples": list(self.samples)}
        if self.error:
            out["error"] = self.error
        return out


def kernel_log(timeout: float = 60.0) -> dict[str, Any]:
    """The kernel log's ``NVRM: Xid`` lines (the last 1000), from dmesg or the journal,
    with the source that answered; ``source`` None, and why, when neither could be read.

    A kernel log is never empty on a booted machine, so an answer with no line in it
    (``journalctl`` without a journal prints "No journal files were found" and exits 0)
    counts as unreadable: the control host then fails the XID check instead of passing
    an empty list. Both reads end within ``timeout`` s in all."""
    tried = []
    until = time.monotonic() + timeout
    for cmd in (["dmesg"], ["journalctl", "-k", "-b", "-o", "short-monotonic", "--no-pager"]):
        try:
            proc = _run_bounded(cmd, _left(until, timeout))
        except OSError as exc:
            tried.append(f"{cmd[0]}: {type(exc).__name__}: {exc}"[:200])
            continue
        if proc is None:
            tried.append(f"{cmd[0]}: did not exit within {timeout:.3g} s")
            continue
        text = proc.stdout[-(32 << 20):].decode("utf-8", "replace")
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("-- ")]
        if proc.returncode == 0 and lines and "No journal files were found" not in text:
            return {"source": cmd[0], "lines": len(lines),
                    "xid_lines": [ln for ln in lines if "NVRM: Xid" in ln][-1000:],
                    "sxid_lines": [ln for ln in lines if ": SXid (" in ln][-1000:]}
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [
            "no kernel messages" if proc.returncode == 0 else f"exit {proc.returncode}"]
        tried.append(f"{cmd[0]}: {err[0]}"[:200])
    return {"source": None, "error": "; ".join(tried), "xid_lines": [], "sxid_lines": []}


def health_snapshot(timeout: float = 180.0) -> dict[str, Any]:
    """What the control host compares before and after the tests: ``nvidia-smi -q -x``
    (ECC counters, row remapping, throttle reasons, temperatures; parsed there, not here)
    and the kernel's XID lines (with where they came from), within ``timeout`` s in all
    (``smi_xml`` None when nvidia-smi did not answer in time: ``_UNANSWERED`` says)."""
    until = time.monotonic() + timeout
    log = kernel_log(_left(until, 60))
    return {"t": time.time(), "smi_xml": _smi(["-q", "-x"], _left(until, 120)),
            "xid_lines": log.pop("xid_lines"), "sxid_lines": log.pop("sxid_lines"),
            "kernel_log": log}


NVLINK_MAX_LINKS = 18  # NVML_NVLINK_MAX_LINKS


def _nvml_links(nvml: Any, handle: Any) -> dict[str, Any]:
    links = []
    for link in range(NVLINK_MAX_LINKS):
        try:
            state = nvml.nvmlDeviceGetNvLinkState(handle, link)
        except nvml.NVMLError:
            break  # no such link on this GPU (or no NVLink at all)
        links.append({"link": link, "active": bool(state)})
    return {"gpu": nvml.nvmlDeviceGetIndex(handle), "links": links}


def nvlink_status(timeout: float = 60.0) -> list[dict[str, Any]] | None:
    """Each GPU's NVLink links and whether each is active: via NVML, else by parsing
    ``nvidia-smi nvlink --status`` (``Link 3: <inactive>``), within ``timeout`` s in all.
    None without a driver, or when neither answered in time."""
    until = time.monotonic() + timeout
    status = _nvml_each_gpu(_nvml_links, _left(until, NVML_TIMEOUT_S))
    if status is not None:
        return status
    text = _smi(["nvlink", "--status"], _left(until, 60))
    return None if text is None else parse_nvlink_status(text)


def parse_nvlink_status(text: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for line in text.splitlines()[:2000]:
        line = line.strip()
        if line.startswith("GPU ") and ":" in line:
            index = line[4:line.index(":")]
            out.append({"gpu": int(index) if index.isdigit() else len(out), "links": []})
        elif line.startswith("Link ") and ":" in line and out:
            num, _, state = line[5:].partition(":")
            if num.strip().isdigit():
                out[-1]["links"].append({"link": int(num), "active":
                                         "inactive" not in state.lower(),
                                         "state": state.strip()[:40]})
    return out


def _nvml_ident(nvml: Any, handle: Any) -> dict[str, Any]:
    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    return {"index": nvml.nvmlDeviceGetIndex(handle),
            "name": text(nvml.nvmlDeviceGetName(handle)),
            "uuid": text(nvml.nvmlDeviceGetUUID(handle)),
            "pci_bus_id": text(nvml.nvmlDeviceGetPciInfo(handle).busId),
            "memory_mib": nvml.nvmlDeviceGetMemoryInfo(handle).total >> 20}


def gpu_inventory(timeout: float = 90.0) -> list[dict[str, Any]]:
    """The GPUs this node's driver reports (index, name, UUID, PCI bus id, memory), via
    NVML or nvidia-smi, within ``timeout`` s in all; empty when there is no driver (or it
    did not answer in time). Independent of the backend the tests run on."""
    until = time.monotonic() + timeout
    found = _nvml_each_gpu(_nvml_ident, _left(until, NVML_TIMEOUT_S))
    if found is not None:
        return found
    return [{"index": int(r["index"]), "name": r["name"], "uuid": r["uuid"],
             "pci_bus_id": r["pci.bus_id"],
             "memory_mib": int(r["memory.total"]) if r["memory.total"].isdigit() else None}
            for r in smi_query_gpu(["name", "uuid", "pci.bus_id", "memory.total"],
                                   _left(until, 60))]


def identities(devs: list[torch.device], inventory: list[dict[str, Any]]
               ) -> list[dict[str, Any]]:
    """Which board each tested device is: its UUID and PCI bus id, so a failure names the
    part to pull. On CUDA, matched to the driver's GPU by UUID (CUDA_DEVICE_ORDER is
    PCI_BUS_ID, so ordinals follow nvidia-smi's indices; the UUID makes sure). On the
    CPU, logical device i stands for the driver's GPU i (the lab)."""
    out = []
    for i, dev in enumerate(devs):
        ident: dict[str, Any] = {"index": i, "uuid": None, "pci_bus_id": None,
                                 "name": "cpu", "multiprocessors": None}
        if dev.type == "cuda":
            props = torch.cuda.get_device_properties(i)
            raw = getattr(props, "uuid", None)
            uuid = f"GPU-{raw}" if raw is not None else None
            match = next((g for g in inventory if uuid and g.get("uuid") == uuid), None)
            ident.update(name=props.name, multiprocessors=props.multi_processor_count,
                         uuid=uuid)
            if match is None and i < len(inventory) and uuid is None:
                match = inventory[i]
        else:
            match = inventory[i] if i < len(inventory) else None
        if match:
            ident.update(uuid=match.get("uuid") or ident["uuid"],
                         pci_bus_id=match.get("pci_bus_id"), driver_index=match.get("index"))
        out.append(ident)
    return out


# Environment variables that change which GEMM algorithm cuBLAS runs, or in what
# precision, and so a product's exact bits: cuBLAS's own (CUBLAS_WORKSPACE_CONFIG,
# CUBLASLT_*), CUDA's NVIDIA_TF32_OVERRIDE, and PyTorch's (its "CUDA Environment
# Variables" page: TORCH_ALLOW_TF32_CUBLAS_OVERRIDE, TORCH_BLAS_PREFER_CUBLASLT).
PRODUCT_ENV_PREFIXES = ("CUBLAS", "NVIDIA_TF32_OVERRIDE", "TORCH_ALLOW_TF32",
                        "TORCH_BLAS", "TORCH_CUBLAS")


def _cublas_version() -> str | None:
    """The loaded libcublas's version (cublasGetProperty: MAJOR, MINOR, PATCH), found
    through this process's mappings; None on the CPU or when it cannot be read."""
    try:
        with open("/proc/self/maps", "rb") as fh:
            paths = {ln.split()[-1] for ln in fh if b"libcublas.so" in ln}
        lib = ctypes.CDLL(os.fsdecode(sorted(paths)[0]))
        parts = []
        for prop in range(3):
            value = ctypes.c_int()
            if lib.cublasGetProperty(prop, ctypes.byref(value)) != 0:
                return None
            parts.append(str(value.value))
        return ".".join(parts)
    except Exception:  # a version is a label; without one the key says None
        return None


def product_environment() -> dict[str, Any]:
    """What decides a GEMM's exact bits beside the GPU model: torch, CUDA and cuBLAS
    versions and the variables above. Nodes compare digests only within one of these
    (a host with NVIDIA_TF32_OVERRIDE set, or another cuBLAS, is not corrupt)."""
    return {"torch": torch.__version__, "cuda": torch.version.cuda,
            "cublas": _cublas_version() if torch.cuda.is_available() else None,
            "env": {k: v[:200] for k, v in sorted(os.environ.items())
                    if k.startswith(PRODUCT_ENV_PREFIXES)}}


def numa_node(pci_bus_id: str | None) -> int | None:
    """The NUMA node of a PCI device, from sysfs; None when unknown (-1 there)."""
    if not pci_bus_id:
        return None
    bus = pci_bus_id.lower()
    bus = bus[4:] if len(bus.split(":")[0]) == 8 else bus  # 00000000:18:00.0 -> 0000:18:00.0
    try:
        with open(f"/sys/bus/pci/devices/{bus}/numa_node") as fh:
            node = int(fh.read().strip())
    except (OSError, ValueError):
        return None
    return node if node >= 0 else None


def numa_cpus(node: int) -> set[int] | None:
    """The CPUs of NUMA node ``node`` (sysfs cpulist: ``0-55,112-167``)."""
    try:
        with open(f"/sys/devices/system/node/node{node}/cpulist") as fh:
            text = fh.read().strip()
    except OSError:
        return None
    cpus: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        if lo.isdigit():
            cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus or None


@contextlib.contextmanager
def on_numa_node_of(ident: dict[str, Any]) -> Any:
    """Run the block on the CPUs of the GPU's NUMA node, so pinned host buffers are
    allocated there (nvbandwidth sets this affinity before its host-device copies; a
    buffer on the far socket reads low on a healthy link)."""
    node = numa_node(ident.get("pci_bus_id"))
    cpus = numa_cpus(node) if node is not None else None
    before = os.sched_getaffinity(0)
    allowed = (cpus or set()) & before
    if allowed:
        os.sched_setaffinity(0, allowed)
    try:
        yield node
    finally:
        if allowed:
            os.sched_setaffinity(0, before)


def host_device_bandwidth(device: torch.device, megabytes: int, index: int,
                          ident: dict[str, Any] | None = None) -> list[Measurement]:
    """Pinned host <-> device copy bandwidth (CUDA only), host buffer on the GPU's NUMA
    node."""
    with on_numa_node_of(ident or {}) as node:
        host = torch.empty(megabytes * 1024 * 1024, dtype=torch.uint8).pin_memory()
        host.fill_(1)  # first touch: the pages land on this NUMA node
    dev = torch.empty_like(host, device=device)
    out = []
    for name, dst, src in (("h2d_bandwidth", dev, host), ("d2h_bandwidth", host, dev)):
        dst.copy_(src, non_blocking=True)
        sync(device)
        start, reps = time.perf_counter(), 10
        for _ in range(reps):
            dst.copy_(src, non_blocking=True)
        sync(device)
        out.append(Measurement(name, host.numel() * reps / (time.perf_counter() - start) / 1e9,
                               "GB/s", index, True, {"numa_node": node}))
    return out


def p2p_matrix(megabytes: int, seed: int = 0) -> Measurement:
    """GPU-to-GPU copy bandwidth for every ordered pair; the value is the lowest pair.
    Pairs without peer access (``cudaDeviceCanAccessPeer``) are named: torch would copy
    through host memory and report a slow link where P2P is in fact off. What the last
    timed copy delivered is compared with what was sent, word for word (nvbandwidth
    times copies only; a link that corrupts data is not a fast link)."""
    devs = devices()
    size = megabytes * 1024 * 1024
    matrix: list[list[float | None]] = [[None] * len(devs) for _ in devs]
    no_peer = [(i, j) for i in range(len(devs)) for j in range(len(devs))
               if i != j and not torch.cuda.can_device_access_peer(i, j)]
    wrong: list[list[int]] = []
    for i, src_dev in enumerate(devs):
        src = torch.empty(size // 4, dtype=torch.float32, device=src_dev)
        fill_pattern(src, seed + i)
        for j, dst_dev in enumerate(devs):
            if i == j or (i, j) in no_peer:
                continue
            dst = torch.empty_like(src, device=dst_dev)
            dst.copy_(src)
            sync(src_dev)
            sync(dst_dev)
            start, reps = time.perf_counter(), 10
            for _ in range(reps):
                dst.copy_(src)
            sync(src_dev)
            sync(dst_dev)
            matrix[i][j] = size * reps / (time.perf_counter() - start) / 1e9
            bad = wrong_reduced(dst, seed + i)
            if bad:
                wrong.append([i, j, bad])
    values = [v for row in matrix for v in row if v is not None]
    detail: dict[str, Any] = {"matrix": matrix, "no_peer_access": no_peer,
                              "wrong_copies": wrong}
    errors = []
    if no_peer:
        errors.append(f"P2P disabled between {len(no_peer)} GPU pairs, first "
                      f"{no_peer[0][0]}->{no_peer[0][1]}")
    if wrong:
        errors.append(f"{len(wrong)} GPU pair{'s' * (len(wrong) > 1)} delivered wrong data, first "
                      f"{wrong[0][0]}->{wrong[0][1]} ({wrong[0][2]} words wrong)")
    if errors:
        detail["error"] = "; ".join(errors)
    return Measurement("p2p_bandwidth", min(values) if values else None, "GB/s", None,
                       not errors, detail)


def p2p_within(timeout: float, seed: int = 0) -> Measurement:
    """``p2p_matrix`` on a thread of its own for at most ``timeout`` s: a copy that hangs
    (a GPU or NVLink stuck mid-transfer) fails the test, named, and the agent goes on to
    print its document."""
    finished, returned, value = _in_thread(lambda: p2p_matrix(256, seed), timeout)
    if not finished:
        return Measurement("p2p_bandwidth", None, "GB/s", None, False, {
            "error": f"did not finish within {timeout:.0f} s (hung)"})
    if not returned:
        raise value
    return value


# -- main --------------------------------------------------------------------------------

def largest_message() -> int:
    """The all-reduce size gated on: 16 GiB as the public 8xH100 checks use, or a
    quarter of a smaller GPU's memory (a power of two), so it always fits."""
    total = torch.cuda.get_device_properties(0).total_memory
    return min(1 << 34, 1 << int(math.log2(total // 4)))


def _error_text(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:400]


class DeviceRunner:
    """Runs a test on every device, each in its own thread with its own error capture.

    A test that raises on one GPU (a CUDA error, a GPU fallen off the bus) gives that GPU
    a failed result naming it and the exception; the other GPUs go on. A test that does
    not finish in time marks the GPU hung. Either way the GPU's later tests are reported
    as not run, with why, and the agent still prints its document.

    Past ``stop_at`` (a ``time.monotonic()`` value: the level's deadline less the time
    kept for the closing reads) no test starts, and a test still running then is left
    behind: each is reported, with why, and named in ``cut``."""

    def __init__(self, devs: list[torch.device], idents: list[dict[str, Any]],
                 stop_at: float = math.inf) -> None:
        self.devs, self.idents, self.stop_at = devs, idents, stop_at
        self.lost: dict[int, str] = {}
        self.hung = False  # a thread was left behind (hung, or cut at the deadline)
        self.cut: list[str] = []  # tests not run, or not finished, for the deadline
        self._pool = ThreadPoolExecutor(len(devs))

    def deadline_note(self) -> str:
        """Why a test did not start: the time left before ``stop_at``."""
        return (f"not run: {max(0.0, self.stop_at - time.monotonic()):.0f} s were left "
                "before the level's deadline")

    def _one(self, i: int, test: Callable[[int, torch.device], Any]) -> Any:
        # The thread is named after the GPU it drives (the lab's faults act per GPU).
        threading.current_thread().name = f"gpuctl-gpu{i}"
        if self.devs[i].type == "cuda":
            torch.cuda.set_device(self.devs[i])
        return test(i, self.devs[i])

    def run(self, name: str, unit: str, test: Callable[[int, torch.device], Any],
            timeout: float, one_at_a_time: bool = False, needs: float = 0.0
            ) -> list[Measurement]:
        """``test(i, device)`` returns a Measurement or a list of them. It starts on a GPU
        only with more than ``needs`` s left before ``stop_at``."""
        futures: dict[int, Any] = {}
        started: dict[int, float] = {}
        done: set[Any] = set()
        late: dict[int, str] = {}
        for i in range(len(self.devs)):
            if i in self.lost:
                continue
            if self.stop_at - time.monotonic() <= needs:
                late[i] = self.deadline_note()
                continue
            started[i] = time.monotonic()
            futures[i] = self._pool.submit(self._one, i, test)
            if one_at_a_time:  # each gated on its own link: no sharing of the host
                done |= wait([futures[i]], timeout=_left(self.stop_at, timeout)).done
        if not one_at_a_time:
            done = wait(list(futures.values()), timeout=_left(self.stop_at, timeout)).done
        out: list[Measurement] = []
        for i, ident in enumerate(self.idents):
            tag = {"uuid": ident.get("uuid"), "pci_bus_id": ident.get("pci_bus_id")}
            fut = futures.get(i)
            if i in late:
                ms = [Measurement(name, None, unit, i, False, {"error": late[i]})]
            elif fut is None:
                ms = [Measurement(name, None, unit, i, False,
                                  {"error": f"not run: {self.lost[i]}"})]
            elif fut not in done and time.monotonic() - started[i] < timeout:
                # Cut by the deadline, not hung: what it did so far is not a result.
                self.lost[i] = f"GPU {i}'s {name} was stopped at the level's deadline"
                self.hung = True
                ms = [Measurement(name, None, unit, i, False, {"error": (
                    f"stopped at the level's deadline after "
                    f"{time.monotonic() - started[i]:.0f} s, unfinished")})]
            elif fut not in done:
                self.lost[i] = f"GPU {i} hung in {name}"
                self.hung = True
                ms = [Measurement(name, None, unit, i, False,
                                  {"error": f"did not finish within {timeout:.0f} s (hung)"})]
            elif fut.exception() is not None:
                why = _error_text(fut.exception())
                self.lost[i] = f"GPU {i} failed in {name} ({why[:120]})"
                ms = [Measurement(name, None, unit, i, False, {"error": why})]
            else:
                res = fut.result()
                ms = res if isinstance(res, list) else [res]
            for m in ms:
                m.detail.update(tag)
            out += ms
        if late or any(f not in done for f in futures.values()):
            self.cut.append(name)
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=not self.hung, cancel_futures=True)


def finish_reserve(deadline_s: float) -> float:
    """Seconds of the level's deadline kept back from the tests for what comes after them:
    the closing reads (``nvidia-smi -q -x``, the kernel log, NVLink), printing the
    document, and the start-up before the agent's clock began (SSH, the torch import),
    which the control host's clock counts. 5%, from 2 s to 60 s (45 s at quick's 900)."""
    return min(60.0, max(2.0, 0.05 * deadline_s))


COLLECTIVES_START_S = 10.0  # starting a process per rank and their group, before any data


# The CPU's (the lab's) hang bound: 20 times a lab test.
CPU_HANG_S = 10.0


def run_level(level: str, seconds: float | None = None, ranks: int | None = None,
              small: bool | None = None, scale: float = 1.0, seed: int = 0,
              cpu_devices: int | None = None, deadline_s: float | None = None
              ) -> dict[str, Any]:
    """Run every test at ``level`` (each ``scale`` x its base duration, or ``seconds``
    each); returns the JSON-able result document. It always returns one: a test that
    fails to run is a failed result, named.

    With ``deadline_s`` (seconds from now until the agent is stopped: its watchdog, the
    control host's timeout), the document is returned before then: no test starts in
    the last ``finish_reserve`` seconds, a test running then is left unfinished, and
    each is a failed result saying so (``stopped_early`` names them); every read of the
    driver before and after the tests is bounded to fit."""
    end = time.monotonic() + deadline_s if deadline_s else math.inf
    stop_at = end - finish_reserve(deadline_s) if deadline_s else math.inf
    reads_by = end - finish_reserve(deadline_s) / 4 if deadline_s else math.inf
    inventory = gpu_inventory(_left(stop_at, 90))
    devs = devices(cpu_devices if cpu_devices is not None
                   else min(4, max(1, len(inventory))))
    cuda = devs[0].type == "cuda"
    if not cuda and len(devs) > 1:
        # One core each for the logical devices, so they run side by side as GPUs do
        # and each one's throughput is its own.
        # The cores this process may run on (a container's cpuset), not the host's.
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // len(devs)))
    small = (not cuda) if small is None else small
    base = seconds if seconds is not None else (0.5 if small else 5.0) * scale
    n = 256 if small else 8192
    mem_mb = 64 if small else 2048
    # On the CPU (the lab) the memory test proves its code, not the host's DRAM: a
    # quarter of the bandwidth test's buffer runs every pattern in a quarter of the time.
    memtest_mb = mem_mb if cuda else 16
    idents = identities(devs, inventory)
    runner = DeviceRunner(devs, idents, stop_at)
    # How long a test may run before its GPU counts as hung: on a GPU, time for the
    # driver's and cuBLAS' first-call start-up too; on the CPU (the lab) there is none.
    limit = max(120.0 if cuda else CPU_HANG_S, 20 * base)
    results: list[Measurement] = []

    def memtest(i: int, dev: torch.device) -> Measurement:
        if cuda:
            torch.cuda.empty_cache()  # what the GEMMs cached is free memory too
        test_mb = memtest_mb if small or not cuda else int(
            torch.cuda.mem_get_info(dev)[0] * 0.8 / 2**20)
        return memory_test(dev, test_mb, i, seed)

    def node_wide(names: tuple[str, ...], unit: str, test: Callable[[], list[Measurement]],
                  needs: float = 0.0) -> list[Measurement]:
        if stop_at - time.monotonic() <= needs:
            runner.cut.append(names[0])
            return [Measurement(name, None, unit, None, False,
                                {"error": runner.deadline_note()}) for name in names]
        try:
            return test()
        except Exception as exc:  # reported as this test's failure, with the cause
            return [Measurement(name, None, unit, None, False, {"error": _error_text(exc)})
                    for name in names]

    def collectives_until_stop(world: int, sizes: list[int], iters: int,
                               gpus: list[int] | None) -> list[Measurement]:
        # Told the time left, so its own backstop stays below the agent's deadline.
        return collectives(world, sizes, iters=iters, gpus=gpus, seed=seed,
                           deadline_s=_left(stop_at, math.inf) if deadline_s else None)

    before = health_snapshot(_left(stop_at, 180))
    try:
        with Telemetry(until=reads_by) as telemetry:
            for k, dtype in enumerate(DTYPE_ORDER):
                batch = runner.run(f"gemm_{dtype}", "TFLOPS", functools.partial(
                    _gemm_on, dtype, n, base, seed + k), limit, needs=base)
                cross_gpu_check(batch, idents)
                results += batch
            results += runner.run("memory_bandwidth", "GB/s", lambda i, dev: memory_bandwidth(
                dev, mem_mb, base, i), limit, needs=base)
            results += runner.run("memory_test", "GiB", memtest, max(limit, 600.0),
                                  needs=base)
            if cuda:
                results += runner.run("h2d_bandwidth", "GB/s", lambda i, dev: (
                    host_device_bandwidth(dev, 256, i, idents[i])), limit, one_at_a_time=True,
                    needs=base)
            if cuda and len(devs) > 1 and runner.lost:
                results.append(Measurement("p2p_bandwidth", None, "GB/s", None, False, {
                    "error": f"not run: {'; '.join(sorted(set(runner.lost.values())))}"}))
            elif cuda and len(devs) > 1:
                results += node_wide(("p2p_bandwidth",), "GB/s",
                                     lambda: [p2p_within(limit, seed)], needs=base)
            # On GPUs, one rank per GPU still answering: a lost or hung GPU would take
            # the collective down with it (its own failure is reported already).
            healthy = [i for i in range(len(devs)) if i not in runner.lost] if cuda else None
            world = min(ranks or len(healthy), len(healthy)) if healthy is not None \
                else ranks or 2
            # CPU-sized messages stop at 4 MiB: making and checking each element's
            # hashed test data costs a CPU more than gloo's transfer of it.
            sizes = [1 << 16, 1 << 20, 1 << 22] if small else [1 << 20, 1 << 26,
                                                               largest_message()]
            if world > 1:
                results += node_wide(("all_reduce_busbw", "all_gather_busbw"), "GB/s",
                                     lambda: collectives_until_stop(
                                         world, sizes, 5 if small else 20,
                                         healthy[:world] if healthy else None),
                                     needs=COLLECTIVES_START_S)
            elif cuda and len(devs) > 1:
                results += [Measurement(name, None, "GB/s", None, False, {
                    "error": f"not run: {'; '.join(sorted(set(runner.lost.values())))}"})
                    for name in ("all_reduce_busbw", "all_gather_busbw")]
    finally:
        runner.close()
    after = health_snapshot(_left(reads_by, 180))
    nvlink = nvlink_status(_left(reads_by, 60))
    stopped = (f"the level's deadline ({deadline_s:.0f} s, the last "
               f"{finish_reserve(deadline_s):.0f} s kept for the closing reads): "
               f"{', '.join(dict.fromkeys(runner.cut))} not run or not finished"
               if runner.cut and deadline_s else None)
    return {
        "agent_version": 3, "level": level, "backend": "cuda" if cuda else "cpu",
        "torch": torch.__version__, "gpus": len(devs) if cuda else 0, "seed": seed,
        "devices": idents, "inventory": inventory, "hung": runner.hung,
        "product_environment": product_environment(),
        "deadline_s": deadline_s, "stopped_early": stopped,
        "results": [asdict(r) for r in results],
        "telemetry": telemetry.as_dict(),
        "health": {"before": before, "after": after}, "nvlink": nvlink,
        # Sources that stopped answering (a hung GPU or driver), and why.
        "unanswered": dict(_UNANSWERED),
    }


def _gemm_on(dtype: str, n: int, seconds: float, seed: int, i: int,
             dev: torch.device) -> Measurement:
    return gemm(dev, dtype, n, seconds, i, seed)


def multinode_worker(sizes: list[int], iters: int, seed: int = 0) -> int:
    """One rank of the cross-node all-reduce, started by torchrun on every node (it sets
    RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous store). Global rank 0 prints the
    result: busbw as nccl-tests defines it from the time averaged over all ranks, gated
    on the largest message. Every size's result, and the buffer its timed iterations
    left, is checked on every rank (``timed_all_reduce``)."""
    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=timedelta(seconds=collective_timeout(
        max(sizes))))
    rank, world = dist.get_rank(), dist.get_world_size()
    rows: list[dict[str, Any]] = []
    wrong = 0
    for size in sizes:
        elems = max(world, size // 4 // world * world)
        buf = torch.empty(elems, device=device)
        mine, size_wrong = timed_all_reduce(buf, rank, world, iters, seed)
        wrong += size_wrong  # every size, and the timed buffer, checked on every rank
        times = torch.tensor([mine], dtype=torch.float64, device=device)
        dist.all_reduce(times)
        seconds = float(times.item()) / world
        algbw = elems * 4 / seconds / 1e9
        rows.append({"op": "all_reduce", "bytes": elems * 4, "time_us": seconds * 1e6,
                     "algbw": algbw, "busbw": algbw * bus_factor("all_reduce", world)})
        buf = None  # type: ignore[assignment]  # free before the next size
    bad = torch.tensor([float(wrong > 0)], device=device)
    dist.all_reduce(bad)
    nodes = int(os.environ.get("GROUP_WORLD_SIZE", "0")) or None
    dist.destroy_process_group()
    if rank == 0:
        largest = max(rows, key=lambda r: r["bytes"])
        detail: dict[str, Any] = {"backend": backend, "ranks": world, "nodes": nodes,
                                  "sizes": rows, "averaged_over_ranks": world}
        if bad.item():
            detail["error"] = f"wrong all_reduce result on {int(bad.item())} ranks"
        json.dump({"agent_version": 3, "results": [asdict(Measurement(
            "multinode_all_reduce_busbw", largest["busbw"], "GB/s", None, not bad.item(),
            detail))]}, sys.stdout)
        sys.stdout.write("\n")
    return 0


def start_watchdog(watch_stdin: bool, deadline_s: float | None) -> None:
    """End the whole burn-in on the node (this process, its collective workers, torchrun,
    the wrapping shell: the SSH session's process group) when the control host is gone or
    the level's time is up, whichever comes first. A stress test must not keep a GPU busy
    for an admin who killed gpuctl, or behind a dead SSH session.

    With ``watch_stdin``, stdin is the SSH channel that gpuctl keeps open for the whole
    run: it reads end-of-file once gpuctl exits or dies, or the node's sshd does."""

    def stop(why: str) -> None:
        # stderr may lead nowhere by now (sshd gone): the message is best effort, the
        # stopping is not.
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(f"gpuctl burn-in agent: {why}; stopping every process of the "
                             "run\n")
            sys.stderr.flush()
        os.killpg(os.getpgrp(), signal.SIGTERM)
        time.sleep(10)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    def watch() -> None:
        # The raw descriptor, not sys.stdin: a daemon thread blocked in a buffered read
        # holds its lock, and the interpreter aborts at exit (SIGABRT) waiting for it.
        try:
            while os.read(0, 65536):
                pass
        except OSError:
            pass
        stop("the SSH session closed (gpuctl or the node's sshd is gone)")

    if watch_stdin:
        threading.Thread(target=watch, name="gpuctl-watchdog-stdin", daemon=True).start()
    if deadline_s:
        timer = threading.Timer(deadline_s, stop, (f"the level's {deadline_s:g} s are up",))
        timer.daemon = True
        timer.start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="gpuctl burn-in agent")
    parser.add_argument("--level", default="quick", help="the level's name, for the record")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="x each test's base duration (the control host's level table)")
    parser.add_argument("--seconds", type=float, help="per-test duration (default by level)")
    parser.add_argument("--ranks", type=int, help="collective ranks (default: GPUs, or 2)")
    parser.add_argument("--multinode", action="store_true",
                        help="be one rank of a cross-node all-reduce (under torchrun)")
    parser.add_argument("--small", action="store_true", help="CPU-sized messages")
    parser.add_argument("--watch-stdin", action="store_true",
                        help="stop everything when stdin (the SSH channel) closes")
    parser.add_argument("--deadline", type=float, help="stop everything after this many s")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the GEMM inputs, the reference block and the memory "
                             "test (the control host varies it per run and records it)")
    parser.add_argument("--cpu-devices", type=int,
                        help="logical devices on a CPU-only machine (default: the "
                             "driver's GPUs, at most 4)")
    args = parser.parse_args(argv)
    start_watchdog(args.watch_stdin, args.deadline)
    if args.multinode:
        small = args.small or not torch.cuda.is_available()
        sizes = [1 << 16, 1 << 20, 1 << 22] if small else [1 << 20, 1 << 26, 1 << 32]
        return multinode_worker(sizes, 5 if small else 20, args.seed)
    doc = run_level(args.level, args.seconds, args.ranks, scale=args.scale, seed=args.seed,
                    cpu_devices=args.cpu_devices, deadline_s=args.deadline)
    json.dump(doc, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()
    # The document is out: leave now. A thread stuck in a hung GPU's call (or cut at the
    # deadline, or in a driver read) would keep the interpreter from exiting,
    # nvmlShutdown could hang on such a GPU, and multiprocessing's exit handler joins a
    # collective rank stuck in the driver without a timeout.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
