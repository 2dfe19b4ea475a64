"""Burn-in agent overheads, side by side in one run.

    .venv/bin/python benchmarks/burnin.py [--n 1024] [--seconds 3] [--dtype float32]

Prints:
  * the agent's GEMM TFLOPS vs a plain torch.matmul loop of the same shape, dtype and
    device (target: agent / plain >= 0.9): the cost of the silent-data-corruption checks
  * the telemetry sampler's overhead on that GEMM (target <= 2%), sampling every 0.1 s
    (10x the agent's default rate). Without NVML (this CPU machine) the sampler has no
    GPU to read and its cost is the thread alone; on a GPU node it reads NVML.
Runs on CUDA when there is a GPU, else on the CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from provisioner.burnin import agent


def plain_matmul(device: torch.device, dtype: torch.dtype, n: int, seconds: float) -> float:
    gen = torch.Generator(device="cpu").manual_seed(1)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    out = torch.matmul(a, b)
    agent.sync(device)
    iters, start = 0, time.perf_counter()
    clock = agent._DeviceClock(device)  # the agent's clock: its thread's CPU time, or wall
    while True:
        torch.matmul(a, b, out=out)
        iters += 1
        if iters % 8 == 0:
            agent.sync(device)
            if time.perf_counter() - start >= seconds:
                break
    agent.sync(device)
    return 2 * n ** 3 * iters / clock.seconds(time.perf_counter() - start) / 1e12


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--dtype", default="float32", choices=sorted(agent.DTYPES))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    device = agent.devices()[0]
    dtype = agent.DTYPES[args.dtype]
    print(f"device {device}, {args.dtype} {args.n}x{args.n}, {args.seconds} s per "
          f"measurement, {args.rounds} rounds alternating", flush=True)
    plain, ours, sampled = [], [], []
    for _ in range(args.rounds):
        plain.append(plain_matmul(device, dtype, args.n, args.seconds))
        ours.append(agent.gemm(device, args.dtype, args.n, args.seconds).value or 0.0)
        with agent.Telemetry(interval=0.1):
            sampled.append(agent.gemm(device, args.dtype, args.n, args.seconds).value or 0.0)
    p, o, s = (statistics.median(x) for x in (plain, ours, sampled))
    print(f"  plain torch.matmul loop        {p:9.4f} TFLOPS")
    print(f"  agent gemm (with SDC checks)   {o:9.4f} TFLOPS")
    print(f"  agent gemm + telemetry @10 Hz  {s:9.4f} TFLOPS  (NVML "
          f"{'available' if agent.Telemetry().available else 'not available'})")
    print("ratios:")
    print(f"  agent / plain = {o / p:5.3f}  (target >= 0.9)")
    print(f"  telemetry overhead = {(1 - s / o) * 100:5.2f}%  (target <= 2%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
