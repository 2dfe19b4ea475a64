"""gpuctl burn-in agent: runs ON the node, needs torch (pynvml optional).

The same code runs on CUDA with NCCL and on CPU with gloo (the lab). Every test returns
measurements with a unit; pass/fail against per-SKU thresholds is decided by the
control host, except for correctness checks (silent data corruption, memory patterns),
whose failure is a fact, not a threshold.

    python3 agent.py --level quick [--seconds 5] > results.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# Relative error of a GEMM block against a float64 reference that a correct GPU stays
# well inside (accumulation in fp32; inputs rounded to the dtype).
GEMM_TOLERANCE = {"float32": 1e-5, "tf32": 5e-3, "float16": 5e-3, "bfloat16": 2e-2}
DTYPES = {"float32": torch.float32, "tf32": torch.float32, "float16": torch.float16,
          "bfloat16": torch.bfloat16}


@dataclass
class Measurement:
    test: str
    value: float | None
    unit: str
    device: int | None = None  # GPU index; None for node-wide tests
    ok: bool = True  # correctness; thresholds are applied by the control host
    detail: dict[str, Any] = field(default_factory=dict)


def devices() -> list[torch.device]:
    if torch.cuda.is_available():
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [torch.device("cpu")]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm(device: torch.device, dtype_name: str, n: int, seconds: float,
         index: int | None = None) -> Measurement:
    """Sustained matmul throughput, and two silent-data-corruption checks: the same
    product repeated must be bit-identical, and a block must match a float64 reference
    computed on the CPU (a different algorithm on different hardware)."""
    dtype = DTYPES[dtype_name]
    if device.type == "cpu" and dtype_name in ("float16", "tf32"):
        dtype_name_used = "float32" if dtype_name == "tf32" else dtype_name
    else:
        dtype_name_used = dtype_name
    gen = torch.Generator(device="cpu").manual_seed(1234 + n)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = dtype_name == "tf32"
    first = torch.matmul(a, b)
    sync(device)
    iters, mismatches, checks, start = 0, 0, 0, time.perf_counter()
    deadline = start + seconds
    out = torch.empty_like(first)
    while True:
        torch.matmul(a, b, out=out)
        iters += 1
        if iters % 8 == 0:
            # The same product must come out bit-identical every time; comparing is
            # O(n^2) against the GEMM's O(n^3), so every 8th product is checked.
            checks += 1
            mismatches += not bool(torch.equal(out, first))
            if time.perf_counter() >= deadline:
                break
    sync(device)
    elapsed = time.perf_counter() - start
    tflops = 2 * n ** 3 * iters / elapsed / 1e12
    checks += 1
    mismatches += not bool(torch.equal(out, first))
    repeat_equal = mismatches == 0
    rows = slice(0, min(n, 64))
    ref = a[rows].double().cpu() @ b.double().cpu()
    got = first[rows].double().cpu()
    rel_err = float((got - ref).norm() / ref.norm())
    tol = GEMM_TOLERANCE[dtype_name]
    ok = repeat_equal and math.isfinite(rel_err) and rel_err <= tol
    return Measurement(f"gemm_{dtype_name}", tflops, "TFLOPS", index, ok, {
        "n": n, "iterations": iters, "seconds": round(elapsed, 3), "dtype": dtype_name_used,
        "repeat_bit_identical": repeat_equal, "repeat_mismatches": mismatches,
        "repeat_checks": checks, "relative_error": rel_err, "tolerance": tol,
    })


def memory_bandwidth(device: torch.device, megabytes: int, seconds: float,
                     index: int | None = None) -> Measurement:
    """Device memory bandwidth from large copies: (read + write) bytes / time."""
    elems = megabytes * 1024 * 1024 // 4
    src = torch.ones(elems, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    iters, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        dst.copy_(src)
        iters += 1
        sync(device)
    elapsed = time.perf_counter() - start
    return Measurement("memory_bandwidth", 2 * src.numel() * 4 * iters / elapsed / 1e9, "GB/s",
                       index, True, {"megabytes": megabytes, "iterations": iters})


PATTERNS = (0x00000000, 0xFFFFFFFF, 0xAAAAAAAA, 0x55555555)


MEMTEST_CHUNK = 1 << 26  # words compared at a time (256 MiB): bounds the temporaries


def memory_test(device: torch.device, megabytes: int, index: int | None = None) -> Measurement:
    """Write patterns (all zeros, all ones, alternating bits, walking ones, a seeded random
    fill) over ``megabytes`` of memory and read every word back. Comparisons go chunk by
    chunk, so the test can cover most of a GPU's memory without running out of it."""
    elems = megabytes * 1024 * 1024 // 4
    buf = torch.empty(elems, dtype=torch.int32, device=device)
    errors, passes = 0, 0
    fills = [torch.tensor(p, dtype=torch.int64).to(torch.int32).item() for p in PATTERNS]
    fills += [1 << bit if bit < 31 else -(1 << 31) for bit in range(0, 32, 8)]
    for value in fills:
        buf.fill_(value)
        for start in range(0, elems, MEMTEST_CHUNK):
            errors += int((buf[start:start + MEMTEST_CHUNK] != value).sum().item())
        passes += 1
    gen = torch.Generator(device="cpu").manual_seed(7)
    rand = torch.randint(-(2 ** 31), 2 ** 31 - 1, (min(elems, 1 << 22),), generator=gen,
                         dtype=torch.int32).to(device)
    width = rand.numel()
    for start in range(0, elems - width + 1, width):
        buf[start:start + width].copy_(rand)
    for start in range(0, elems - width + 1, width):
        errors += int((buf[start:start + width] != rand).sum().item())
    passes += 1
    del buf
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return Measurement("memory_test", megabytes / 1024, "GiB", index, errors == 0,
                       {"errors": errors, "patterns": passes})


def host_device_bandwidth(device: torch.device, megabytes: int, index: int) -> list[Measurement]:
    """Pinned host <-> device copy bandwidth (CUDA only)."""
    host = torch.empty(megabytes * 1024 * 1024, dtype=torch.uint8).pin_memory()
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
                               "GB/s", index))
    return out


def p2p_matrix(megabytes: int) -> Measurement:
    """GPU-to-GPU copy bandwidth for every ordered pair; the value is the lowest pair."""
    devs = devices()
    size = megabytes * 1024 * 1024
    matrix: list[list[float | None]] = [[None] * len(devs) for _ in devs]
    for i, src_dev in enumerate(devs):
        src = torch.empty(size, dtype=torch.uint8, device=src_dev)
        for j, dst_dev in enumerate(devs):
            if i == j:
                continue
            dst = torch.empty(size, dtype=torch.uint8, device=dst_dev)
            dst.copy_(src)
            sync(src_dev)
            sync(dst_dev)
            start, reps = time.perf_counter(), 10
            for _ in range(reps):
                dst.copy_(src)
            sync(src_dev)
            sync(dst_dev)
            matrix[i][j] = size * reps / (time.perf_counter() - start) / 1e9
    values = [v for row in matrix for v in row if v is not None]
    return Measurement("p2p_bandwidth", min(values) if values else None, "GB/s", None, True,
                       {"matrix": matrix})


# -- collectives -------------------------------------------------------------------------

# all_gather_single replaced all_gather_into_tensor in newer torch releases.
GATHER = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def bus_factor(op: str, ranks: int) -> float:
    """nccl-tests' busbw = algbw * factor: all_reduce 2(n-1)/n, all_gather (n-1)/n."""
    return 2 * (ranks - 1) / ranks if op == "all_reduce" else (ranks - 1) / ranks


def _collective_worker(rank: int, world: int, port: int, sizes: list[int], iters: int,
                       backend: str, results: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(backend, rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)
    rows = []
    # Correctness first, on small exact integers: every rank contributes rank + 1.
    check = torch.full((1 << 16,), float(rank + 1), device=device)
    dist.all_reduce(check)
    bad = torch.tensor([0.0 if bool(torch.all(check == world * (world + 1) / 2)) else 1.0],
                       device=device)
    dist.all_reduce(bad)
    wrong = bool(bad.item())
    del check, bad
    for op in ("all_reduce", "all_gather"):
        for size in sizes:
            elems = max(world, size // 4 // world * world)
            if op == "all_reduce":
                buf = torch.ones(elems, device=device)
                call: Callable[[], Any] = functools.partial(dist.all_reduce, buf)
                nbytes = elems * 4
                keep: tuple[Any, ...] = (buf,)
            else:
                chunk = torch.ones(elems // world, device=device)
                out = torch.empty(elems, device=device)
                call = functools.partial(GATHER, out, chunk)
                nbytes = elems * 4  # nccl-tests counts the gathered (output) size
                keep = (chunk, out)
            call()
            sync(device)
            dist.barrier()
            start = time.perf_counter()
            for _ in range(iters):
                call()
            sync(device)
            seconds = (time.perf_counter() - start) / iters
            algbw = nbytes / seconds / 1e9
            rows.append({"op": op, "bytes": nbytes, "time_us": seconds * 1e6,
                         "algbw": algbw, "busbw": algbw * bus_factor(op, world)})
            if op == "all_reduce" and wrong:
                rows[-1]["wrong_result"] = True
            del call, keep  # free the largest buffers before the next size
            buf = chunk = out = None  # type: ignore[assignment]
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if rank == 0:
        results.put(rows)
    dist.destroy_process_group()


def _free_port() -> int:
    """A free TCP port on loopback for the rendezvous (several nodes may share a host's
    network namespace, so no fixed or PID-derived port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def collectives(ranks: int, sizes: list[int], iters: int) -> list[Measurement]:
    """All-reduce and all-gather inside the node, one process per GPU (NCCL) or ``ranks``
    processes on the CPU (gloo). Gated on the largest message, as nccl-tests users do."""
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_collective_worker,
                         args=(r, ranks, port, sizes, iters, backend, results))
             for r in range(ranks)]
    for p in procs:
        p.start()
    try:
        rows = results.get(timeout=600)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    out = []
    for op in ("all_reduce", "all_gather"):
        mine = [r for r in rows if r["op"] == op]
        largest = max(mine, key=lambda r: r["bytes"])
        out.append(Measurement(f"{op}_busbw", largest["busbw"], "GB/s", None,
                               not any(r.get("wrong_result") for r in mine),
                               {"backend": backend, "ranks": ranks, "sizes": mine}))
    return out


# -- telemetry ---------------------------------------------------------------------------

# nvidia-smi's --query-gpu fields for one telemetry sample; the throttle bitmask is the
# same one NVML's nvmlDeviceGetCurrentClocksEventReasons returns.
SMI_SAMPLE = ("index,temperature.gpu,power.draw,clocks.sm,clocks_throttle_reasons.active")


def _smi(args: list[str], timeout: float = 60.0, limit: int = 16 << 20) -> str | None:
    """stdout of ``nvidia-smi ARGS`` (at most ``limit`` bytes), or None when it fails."""
    try:
        proc = subprocess.run(["nvidia-smi", *args], capture_output=True, timeout=timeout,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
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


class Telemetry:
    """Samples the GPUs while tests run: temperature, power, SM clock, throttle reasons.
    Through NVML where pynvml is installed, else through ``nvidia-smi --query-gpu``; where
    there is neither (a CPU-only machine), there are no samples."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.samples: list[dict[str, Any]] = []
        self.source = "none"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handles: list[Any] = []
        self._nvml: Any = None
        try:
            import pynvml  # noqa: PLC0415

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i)
                             for i in range(pynvml.nvmlDeviceGetCount())]
            self.source = "nvml"
        except Exception:  # NVML missing or no driver: try nvidia-smi
            self._nvml = None
            if _smi(["--query-gpu=" + SMI_SAMPLE, "--format=csv,noheader,nounits"], 30):
                self.source = "nvidia-smi"

    @property
    def available(self) -> bool:
        return self.source != "none"

    def _query(self, func: str, *args: Any) -> Any:
        try:
            return getattr(self._nvml, func)(*args)
        except Exception:  # a metric this GPU does not support
            return None

    def sample(self) -> None:
        now = time.time()
        if self.source == "nvml":
            for i, h in enumerate(self._handles):
                power = self._query("nvmlDeviceGetPowerUsage", h)
                throttle = self._query("nvmlDeviceGetCurrentClocksEventReasons", h)
                if throttle is None:
                    throttle = self._query("nvmlDeviceGetCurrentClocksThrottleReasons", h)
                self.samples.append({
                    "t": now, "gpu": i,
                    "temp_c": self._query("nvmlDeviceGetTemperature", h, 0),
                    "power_w": power / 1000 if power is not None else None,
                    "sm_mhz": self._query("nvmlDeviceGetClockInfo", h, 1),
                    "throttle": throttle,
                })
        elif self.source == "nvidia-smi":
            out = _smi(["--query-gpu=" + SMI_SAMPLE, "--format=csv,noheader,nounits"], 30)
            for line in (out or "").splitlines()[:64]:
                cols = [c.strip() for c in line.split(",")]
                if len(cols) != 5 or not cols[0].isdigit():
                    continue
                throttle = _number(cols[4])
                self.samples.append({
                    "t": now, "gpu": int(cols[0]), "temp_c": _number(cols[1]),
                    "power_w": _number(cols[2]), "sm_mhz": _number(cols[3]),
                    "throttle": int(throttle) if throttle is not None else None,
                })

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
            self._thread.join()
        if self.available:
            self.sample()


def kernel_log() -> dict[str, Any]:
    """The kernel log's ``NVRM: Xid`` lines (the last 1000), from dmesg or the journal,
    with the source that answered; ``source`` None, and why, when neither could be read.

    A kernel log is never empty on a booted machine, so an answer with no line in it
    (``journalctl`` without a journal prints "No journal files were found" and exits 0)
    counts as unreadable: the control host then fails the XID check instead of passing
    an empty list."""
    tried = []
    for cmd in (["dmesg"], ["journalctl", "-k", "-b", "-o", "short-monotonic", "--no-pager"]):
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            tried.append(f"{cmd[0]}: {type(exc).__name__}: {exc}"[:200])
            continue
        text = proc.stdout[-(32 << 20):].decode("utf-8", "replace")
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("-- ")]
        if proc.returncode == 0 and lines and "No journal files were found" not in text:
            return {"source": cmd[0], "lines": len(lines),
                    "xid_lines": [ln for ln in lines if "NVRM: Xid" in ln][-1000:]}
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [
            "no kernel messages" if proc.returncode == 0 else f"exit {proc.returncode}"]
        tried.append(f"{cmd[0]}: {err[0]}"[:200])
    return {"source": None, "error": "; ".join(tried), "xid_lines": []}


def health_snapshot() -> dict[str, Any]:
    """What the control host compares before and after the tests: ``nvidia-smi -q -x``
    (ECC counters, row remapping, throttle reasons, temperatures; parsed there, not here)
    and the kernel's XID lines (with where they came from)."""
    log = kernel_log()
    return {"t": time.time(), "smi_xml": _smi(["-q", "-x"], 120),
            "xid_lines": log.pop("xid_lines"), "kernel_log": log}


NVLINK_MAX_LINKS = 18  # NVML_NVLINK_MAX_LINKS


def _nvml_each_gpu(read: Callable[[Any, Any], dict[str, Any]]) -> list[dict[str, Any]] | None:
    """``read(pynvml, handle)`` for every GPU NVML sees; None without NVML or a driver."""
    try:
        import pynvml  # noqa: PLC0415

        pynvml.nvmlInit()
    except Exception:  # no pynvml, no driver: the caller asks nvidia-smi
        return None
    try:
        return [read(pynvml, pynvml.nvmlDeviceGetHandleByIndex(i))
                for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:  # a driver that fails mid-way: the caller asks nvidia-smi
        return None
    finally:
        pynvml.nvmlShutdown()


def _nvml_links(nvml: Any, handle: Any) -> dict[str, Any]:
    links = []
    for link in range(NVLINK_MAX_LINKS):
        try:
            state = nvml.nvmlDeviceGetNvLinkState(handle, link)
        except nvml.NVMLError:
            break  # no such link on this GPU (or no NVLink at all)
        links.append({"link": link, "active": bool(state)})
    return {"gpu": nvml.nvmlDeviceGetIndex(handle), "links": links}


def nvlink_status() -> list[dict[str, Any]] | None:
    """Each GPU's NVLink links and whether each is active: via NVML, else by parsing
    ``nvidia-smi nvlink --status`` (``Link 3: <inactive>``). None without a driver."""
    status = _nvml_each_gpu(_nvml_links)
    if status is not None:
        return status
    text = _smi(["nvlink", "--status"], 60)
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


def _nvml_name(nvml: Any, handle: Any) -> dict[str, Any]:
    name = nvml.nvmlDeviceGetName(handle)
    return {"name": name.decode() if isinstance(name, bytes) else name,
            "memory_mib": nvml.nvmlDeviceGetMemoryInfo(handle).total >> 20}


def gpu_inventory() -> list[dict[str, Any]]:
    """The GPUs this node's driver reports (name, memory), via NVML or nvidia-smi; empty
    when there is no driver. Independent of the backend the tests run on."""
    found = _nvml_each_gpu(_nvml_name)
    if found is not None:
        return found
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total",
                               "--format=csv,noheader,nounits"], capture_output=True,
                              text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if proc.returncode != 0:
        return []
    rows = [line.rsplit(",", 1) for line in proc.stdout.splitlines() if "," in line]
    return [{"name": n.strip(), "memory_mib": int(m) if m.strip().isdigit() else None}
            for n, m in rows]


# -- main --------------------------------------------------------------------------------

def largest_message() -> int:
    """The all-reduce size gated on: 16 GiB as the public 8xH100 checks use, or a
    quarter of a smaller GPU's memory (a power of two), so it always fits."""
    total = torch.cuda.get_device_properties(0).total_memory
    return min(1 << 34, 1 << int(math.log2(total // 4)))


def _gemm_on(dtype: str, n: int, seconds: float, cuda: bool, i: int,
             dev: torch.device) -> Measurement:
    return gemm(dev, dtype, n, seconds, i if cuda else None)


def run_level(level: str, seconds: float | None = None, ranks: int | None = None,
              small: bool | None = None, scale: float = 1.0) -> dict[str, Any]:
    """Run every test at ``level`` (each ``scale`` x its base duration, or ``seconds``
    each); returns the JSON-able result document."""
    devs = devices()
    cuda = devs[0].type == "cuda"
    small = (not cuda) if small is None else small
    base = seconds if seconds is not None else (0.5 if small else 5.0) * scale
    n = 256 if small else 8192
    mem_mb = 64 if small else 2048
    results: list[Measurement] = []

    def each_gpu(test: Callable[[int, torch.device], Measurement]) -> list[Measurement]:
        """Run ``test`` on every device at once (one thread per GPU: the node is
        stressed as a whole, as training will, and a level takes as long on 8 GPUs as on
        one). Every thread runs the same test, so global switches such as TF32 agree."""
        if len(devs) == 1:
            return [test(0, devs[0])]

        def run(i: int) -> Measurement:
            if devs[i].type == "cuda":
                torch.cuda.set_device(devs[i])
            return test(i, devs[i])

        with ThreadPoolExecutor(len(devs)) as pool:
            return list(pool.map(run, range(len(devs))))

    def index(i: int) -> int | None:
        return i if cuda else None

    before = health_snapshot()
    with Telemetry() as telemetry:
        for dtype in ("bfloat16", "float16", "tf32", "float32"):
            results += each_gpu(functools.partial(_gemm_on, dtype, n, base, cuda))
        results += each_gpu(lambda i, dev: memory_bandwidth(dev, mem_mb, base, index(i)))

        def memtest(i: int, dev: torch.device) -> Measurement:
            if cuda:
                torch.cuda.empty_cache()  # what the GEMMs cached is free memory too
            test_mb = mem_mb if small or not cuda else int(
                torch.cuda.mem_get_info(dev)[0] * 0.8 / 2**20)
            return memory_test(dev, test_mb, index(i))

        results += each_gpu(memtest)
        if cuda:  # one GPU at a time: each is gated on its own PCIe link
            for i, dev in enumerate(devs):
                results += host_device_bandwidth(dev, 256, i)
        if cuda and len(devs) > 1:
            results.append(p2p_matrix(256))
        world = ranks or (len(devs) if cuda else 2)
        if world > 1:
            sizes = [1 << 16, 1 << 20, 1 << 24] if small else [1 << 20, 1 << 26,
                                                               largest_message()]
            results += collectives(world, sizes, iters=5 if small else 20)
    after = health_snapshot()
    return {
        "agent_version": 2, "level": level, "backend": "cuda" if cuda else "cpu",
        "torch": torch.__version__, "gpus": len(devs) if cuda else 0,
        "inventory": gpu_inventory(),
        "results": [asdict(r) for r in results],
        "telemetry": {"available": telemetry.available, "source": telemetry.source,
                      "samples": telemetry.samples},
        "health": {"before": before, "after": after}, "nvlink": nvlink_status(),
    }


def multinode_worker(sizes: list[int], iters: int) -> int:
    """One rank of the cross-node all-reduce, started by torchrun on every node (it sets
    RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous store). Global rank 0 prints the
    result; busbw as nccl-tests defines it, gated on the largest message."""
    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=timedelta(seconds=300))
    rank, world = dist.get_rank(), dist.get_world_size()
    rows: list[dict[str, Any]] = []
    for size in sizes:
        elems = max(world, size // 4 // world * world)
        buf = torch.ones(elems, device=device)
        dist.all_reduce(buf)
        sync(device)
        dist.barrier()
        start = time.perf_counter()
        for _ in range(iters):
            dist.all_reduce(buf)
        sync(device)
        seconds = (time.perf_counter() - start) / iters
        algbw = elems * 4 / seconds / 1e9
        rows.append({"op": "all_reduce", "bytes": elems * 4, "time_us": seconds * 1e6,
                     "algbw": algbw, "busbw": algbw * bus_factor("all_reduce", world)})
    nodes = int(os.environ.get("GROUP_WORLD_SIZE", "0")) or None
    dist.destroy_process_group()
    if rank == 0:
        largest = max(rows, key=lambda r: r["bytes"])
        json.dump({"agent_version": 2, "results": [asdict(Measurement(
            "multinode_all_reduce_busbw", largest["busbw"], "GB/s", None, True,
            {"backend": backend, "ranks": world, "nodes": nodes, "sizes": rows}))]},
            sys.stdout)
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
    args = parser.parse_args(argv)
    start_watchdog(args.watch_stdin, args.deadline)
    if args.multinode:
        small = args.small or not torch.cuda.is_available()
        sizes = [1 << 16, 1 << 20, 1 << 24] if small else [1 << 20, 1 << 26, 1 << 32]
        return multinode_worker(sizes, 5 if small else 20)
    json.dump(run_level(args.level, args.seconds, args.ranks, scale=args.scale), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
