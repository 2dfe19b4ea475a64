"""Scan speed on the same lab nodes, side by side in one run.

    sudo .venv/bin/python benchmarks/scan.py [--nodes 64] [--parallel 32]

Prints wall times and ratios for:
  * gpuctl scan --all (the full probe: sysfs, nvidia-smi -q -x, dmesg; parsed and stored)
  * ansible all -m setup with forks = gpuctl's parallelism (Ansible's fact gathering)
  * a bare paramiko loop: connect, authenticate, run `true`, same parallelism
Targets: gpuctl >= 5x faster than ansible setup; gpuctl <= 2x bare paramiko.
Everything runs against lab nodes on 127.0.200.0/24 in a throw-away GPUCTL_HOME.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paramiko

from provisioner.cli import main as _gpuctl


def gpuctl(argv: list[str]) -> int:
    """The real CLI, its output swallowed (only the timings are printed)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return _gpuctl(argv)


def timed(label: str, func):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    func()
    seconds = time.perf_counter() - start
    print(f"  {label:<34} {seconds:7.2f} s", flush=True)
    return seconds


def bare_paramiko(addresses: list[str], key_path: Path, parallel: int) -> None:
    key = paramiko.PKey.from_path(key_path)

    def one(address: str) -> None:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # noqa: S507 (lab only)
        client.connect(address, username="root", pkey=key, allow_agent=False,
                       look_for_keys=False, timeout=10)
        _, stdout, _ = client.exec_command("true")
        assert stdout.channel.recv_exit_status() == 0
        client.close()

    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, addresses))


def ansible_setup(addresses: list[str], key_path: Path, parallel: int, work: Path) -> None:
    inventory = work / "hosts.ini"
    lines = ["[lab]"] + [f"n{i} ansible_host={a}" for i, a in enumerate(addresses)]
    lines += ["[lab:vars]", "ansible_user=root", f"ansible_ssh_private_key_file={key_path}",
              "ansible_python_interpreter=/usr/bin/python3"]
    inventory.write_text("\n".join(lines) + "\n")
    env = {**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_STDOUT_CALLBACK":
           "oneline", "ANSIBLE_LOCAL_TEMP": str(work / "tmp")}
    ansible = Path(sys.executable).with_name("ansible")
    res = subprocess.run([str(ansible), "all", "-i", str(inventory), "-m", "setup", "-f",
                          str(parallel)], env=env, capture_output=True, text=True, check=False)
    ok = res.stdout.count("SUCCESS")
    if ok != len(addresses):
        raise SystemExit(f"ansible setup reached {ok} of {len(addresses)} nodes:\n"
                         f"{res.stdout[-2000:]}{res.stderr[-2000:]}")


@contextlib.contextmanager
def driver_lab(nodes: int, first_address: str) -> Iterator[Path]:
    """A throw-away GPUCTL_HOME with ``nodes`` h100-sxm-8 lab nodes that have the driver
    (so the probe runs nvidia-smi -q -x); yields the work dir; everything goes after."""
    work = Path(tempfile.mkdtemp(prefix="gpuctl-bench-"))
    os.environ["GPUCTL_HOME"] = str(work / "home")
    try:
        print(f"lab up: {nodes} h100-sxm-8 nodes with the driver", flush=True)
        if gpuctl(["init"]) != 0 or gpuctl(["lab", "up", "--nodes", str(nodes),
                                            "--first-address", first_address, "--driver",
                                            "--json"]) != 0:
            raise SystemExit("lab up failed")
        yield work
    finally:
        gpuctl(["lab", "down"])
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=64)
    parser.add_argument("--parallel", type=int, default=32)
    args = parser.parse_args()
    with driver_lab(args.nodes, "127.0.200.10") as work:
        key = work / "home/lab/id_ed25519"
        addresses = [f"127.0.200.{10 + i}" for i in range(args.nodes)]
        # Warm-up: record host keys, and page the probe and python into the cache.
        gpuctl(["scan", "--all", "--accept-new", "--json"])
        print(f"timings ({args.nodes} nodes, parallelism {args.parallel}):")
        t_gpuctl = timed("gpuctl scan --all", lambda: gpuctl(
            ["scan", "--all", "--parallel", str(args.parallel), "--json"]))
        t_ansible = timed(f"ansible all -m setup -f {args.parallel}",
                          lambda: ansible_setup(addresses, key, args.parallel, work))
        t_bare = timed("bare paramiko connect + true",
                       lambda: bare_paramiko(addresses, key, args.parallel))
        print("ratios:")
        print(f"  ansible setup / gpuctl scan = {t_ansible / t_gpuctl:5.2f}x  (target >= 5)")
        print(f"  gpuctl scan / bare paramiko = {t_gpuctl / t_bare:5.2f}x  (target <= 2)")
        return 0


if __name__ == "__main__":
    sys.exit(main())
