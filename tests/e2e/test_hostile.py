"""Hostile inventories: each finishes with a one-line error, in under 2 s of CPU and
200 MB of address space (enforced on the gpuctl process with resource limits, and
measured), and leaves the nodes already stored alone."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e
CPU_S, MEMORY = 2, 200 << 20
# A bound on the wall time that catches a hang (a read that never ends), not a timing:
# the machine is shared, and the CPU limit bounds the work.
WALL_S = 15


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_S, CPU_S))
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def _alias_bomb(levels: int = 11) -> str:
    """The 1.3 KB inventory that ran for over 120 s at 630 MB: each level's children
    alias the previous level ten times."""
    lines = ["all:", "  children:", "    g0: &g0 {hosts: {gpu01: {}}}"]
    for i in range(1, levels):
        refs = ", ".join(f"c{j}: *g{i - 1}" for j in range(10))
        lines.append(f"    g{i}: &g{i} {{children: {{{refs}}}}}")
    return "\n".join(lines) + "\n"


def _run(home: Path, *args: str, stdin: Any = None) -> tuple[int, str, float, float]:
    """Run gpuctl with the limits; its exit code, stderr, wall time and CPU time. The CPU
    time is the gpuctl process's own (wait4(2) on it): the test process's other
    children, reaped meanwhile, are not counted."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", "provisioner", *args], stdin=stdin,
                                stdout=subprocess.DEVNULL, stderr=err, preexec_fn=_limits,
                                env={**os.environ, "GPUCTL_HOME": str(home)})
        killer = threading.Timer(60, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    return proc.returncode, stderr, wall, usage.ru_utime + usage.ru_stime


CASES = {
    "yaml alias bomb": ("bomb.yml", _alias_bomb()),
    "cyclic anchor": ("cycle.yml", "all: &r\n  children:\n    x: *r\n"),
    "deep nesting": ("deep.yml", "all: " + "[" * 200_000 + "]" * 200_000 + "\n"),
    "range product": ("ranges.ini", "[gpus]\ngpu[0:9999][0:9999]\n"),
    "binary": ("garbage.ini", None),
    "huge groups": ("groups.ini", "".join(f"[g{i}:children]\ng{i + 1}\n"
                                          for i in range(50_000))),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_inventory_files(case: str, gpuctl, gpuctl_home, tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert gpuctl("nodes", "add", "keep-me", "--address", "127.0.0.9").code == 0
    name, text = CASES[case]
    path = tmp_path / name
    if text is None:
        path.write_bytes(os.urandom(1 << 20))
    else:
        path.write_text(text)
    code, err, wall, cpu = _run(gpuctl_home, "nodes", "import", str(path))
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), (case, err[-500:])
    assert cpu < CPU_S and wall < WALL_S, (case, cpu, wall)
    listed = json.loads(gpuctl("nodes", "list", "--json").out)
    assert [n["name"] for n in listed] == ["keep-me"]


@pytest.mark.parametrize("source", ["/dev/zero", "stdin"])
def test_the_size_cap_applies_to_what_is_read(source: str, gpuctl_home, tmp_path) -> None:  # type: ignore[no-untyped-def]
    big = tmp_path / "big.ini"
    with big.open("w") as fh:
        fh.write("[gpus]\n")
        for i in range(700_000):  # about 17 MB of valid lines
            fh.write(f"gpu{i:07d} ansible_host=127.0.0.1\n")
    if source == "stdin":
        with big.open("rb") as stdin:
            code, err, wall, cpu = _run(gpuctl_home, "nodes", "import", "/dev/stdin",
                                        stdin=stdin)
    else:
        code, err, wall, cpu = _run(gpuctl_home, "nodes", "import", "/dev/zero")
    assert code == 1 and "more than 10 MiB is too large" in err and "Traceback" not in err
    assert cpu < CPU_S and wall < WALL_S, (cpu, wall)
