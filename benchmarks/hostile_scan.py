"""A fleet scan with hostile nodes in it, side by side with the same scan without them.

    sudo .venv/bin/python benchmarks/hostile_scan.py [--nodes 20] [--timeout 10]

Starts N lab nodes (127.0.201.0/24, a throw-away GPUCTL_HOME), scans them all, then
makes two of them hostile, as a node is met over SSH (its own ``python3``, first on the
probe's PATH, replaced): one closes its output (stdout and stderr) and keeps the session
open for 150 s, one prints 100 kB of random bytes. Scans again with ``--timeout``.
Prints each scan's wall time and outcomes, and the ratio of the hostile scan to
(timeout + the normal scan).
Target: N-2 nodes ok, the two named, ratio <= 1.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from provisioner.cli import main as _gpuctl
from provisioner.paths import Paths
from provisioner.ssh.exec import Target, run_on_node
from provisioner.ssh.hostkeys import KnownHosts

HOSTILE = {"hang": "exec >&- 2>&-; sleep 150", "garbage": "head -c 100000 /dev/urandom"}


def gpuctl(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = _gpuctl(list(argv))
    return code, out.getvalue()


def scan(timeout: float) -> tuple[float, dict[str, dict[str, str]]]:
    start = time.perf_counter()
    _, out = gpuctl("scan", "--all", "--accept-new", "--timeout", str(timeout), "--json")
    seconds = time.perf_counter() - start
    return seconds, {r["name"]: r for r in json.loads(out)["results"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="gpuctl-bench-hostile-"))
    os.environ["GPUCTL_HOME"] = str(home)
    os.environ.pop("GPUCTL_DB", None)
    paths = Paths.from_env()
    try:
        gpuctl("init")
        code, _ = gpuctl("lab", "up", "--nodes", str(args.nodes), "--first-address",
                         "127.0.201.10")
        if code:
            print("lab up failed", file=sys.stderr)
            return 1
        normal, first = scan(args.timeout)
        ok = sum(r["outcome"] == "ok" for r in first.values())
        print(f"{args.nodes} nodes, all healthy:   {normal:6.2f} s  ({ok} ok)")
        key = str(paths.lab_dir / "id_ed25519")
        hostile = {}
        for offset, (kind, body) in enumerate(HOSTILE.items()):
            index = args.nodes - len(HOSTILE) + offset
            name, address = f"gpu-node-{index + 1:02d}", f"127.0.201.{10 + index}"
            run_on_node(Target(name, address, 22, "root", key),
                        "cat > /usr/local/bin/python3 <<'EOF'\n#!/bin/sh\n"
                        f"{body}\nEOF\nchmod 755 /usr/local/bin/python3",
                        known_hosts=KnownHosts(paths.known_hosts))
            hostile[name] = kind
        seconds, second = scan(args.timeout)
        ok = sum(r["outcome"] == "ok" for r in second.values())
        print(f"{args.nodes} nodes, 2 hostile:      {seconds:6.2f} s  ({ok} ok)")
        for name, kind in hostile.items():
            print(f"  {name} ({kind}): {second[name]['outcome']}: "
                  f"{second[name]['message'][:90]}")
        ratio = seconds / (args.timeout + normal)
        print(f"hostile scan / (timeout {args.timeout:g} s + normal scan): {ratio:.2f} "
              "(target <= 1)")
        return 0 if ok == args.nodes - len(HOSTILE) and ratio <= 1 else 1
    finally:
        gpuctl("lab", "down")
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
