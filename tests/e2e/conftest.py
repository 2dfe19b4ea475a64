"""Lab fixtures: each test gets its own lab on its own 127.0.N.0/24 block.

scripts/test.sh runs the suite in two pytest-xdist workers: each worker hands out blocks
from its own share of 127.0.40.0 to 127.0.239.0, and a test that looks for processes
looks only at its own lab's (:func:`lab_processes`)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from provisioner.lab.nodes import Lab
from provisioner.paths import Paths


def _worker_blocks() -> Iterator[int]:
    """This worker's share of the blocks 40 to 239 (all of them without xdist)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    share = 200 // workers
    for block in itertools.count(40 + worker * share):
        if block >= 40 + (worker + 1) * share:
            raise RuntimeError(f"lab blocks used up: {share} per worker")
        yield block


_blocks = _worker_blocks()


class LabHandle:
    def __init__(self, gpuctl: Any, paths: Paths) -> None:
        self.gpuctl, self.paths = gpuctl, paths
        self.lab = Lab(paths)
        self.block = next(_blocks)

    def up(self, nodes: int, *args: str, bmc: bool = False) -> list[dict[str, Any]]:
        """``lab up``; without ``bmc`` the nodes get no BMC (its emulator's start and the
        scan's questions to it cost CI time that tests of other things need not pay;
        tests/e2e/test_bmc.py runs them)."""
        result = self.gpuctl("lab", "up", "--nodes", str(nodes), "--first-address",
                             f"127.0.{self.block}.10", "--json", *args,
                             *(() if bmc else ("--no-bmc",)))
        assert result.code == 0, result
        return json.loads(result.out)  # type: ignore[no-any-return]

    def address(self, index: int) -> str:
        return f"127.0.{self.block}.{10 + index}"


@pytest.fixture
def lab(gpuctl: Any, paths: Paths) -> Iterator[LabHandle]:
    handle = LabHandle(gpuctl, paths)
    yield handle
    handle.lab.down()


def lab_processes(lab: Lab, pattern: str) -> list[int]:
    """PIDs of processes matching ``pgrep -f PATTERN`` that run on ``lab``'s nodes (below
    one of its nodes' init), not another test's lab beside it."""
    pgrep = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True,
                           check=False)
    assert pgrep.returncode in (0, 1), pgrep  # 1: none matched; else pgrep failed
    found = pgrep.stdout.split()
    holders = {pid for pid in map(lab.holder_pid, lab.names()) if pid is not None}
    mine = []
    for pid in map(int, found):
        parent = pid
        try:
            while parent > 1 and parent not in holders:
                status = Path(f"/proc/{parent}/status").read_text()
                parent = int(status.split("PPid:")[1].split()[0])
        except (OSError, IndexError, ValueError):
            continue  # gone while we looked
        if parent in holders:
            mine.append(pid)
    return mine


def interruptible() -> None:
    """``preexec_fn`` for a gpuctl started to be sent SIGINT: a test runner started in the
    background by a shell without job control ignores SIGINT, its children inherit
    that, and Python then never raises KeyboardInterrupt. An admin's terminal does not."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def provisioned_by_lab(paths: Paths, names: list[str] | None = None) -> None:
    """``names`` (default: every node) as a successful provision leaves them: the lab's
    ``--driver`` nodes come with the driver and, on NVSwitch systems, fabric manager
    (provisioning has its own tests: test_provision*.py)."""
    from sqlmodel import select  # noqa: PLC0415

    from provisioner.db.engine import session_scope  # noqa: PLC0415
    from provisioner.db.models import Node  # noqa: PLC0415
    from provisioner.inventory.lifecycle import State, transition  # noqa: PLC0415

    with session_scope(paths.db_url) as session:
        for node in session.exec(select(Node).order_by(Node.name)).all():
            if names is None or node.name in names:
                for state in (State.PROVISIONING, State.PROVISIONED):
                    transition(session, node, state, actor="test set-up",
                               reason="lab --driver: provisioned by the lab")


def wait_for(predicate: Callable[[], bool], timeout: float = 120,
             interval: float = 0.1) -> None:
    """Poll ``predicate`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting")


def command_json(gpuctl: Any, command: str, *args: str) -> tuple[int, dict[str, Any]]:
    """Run ``gpuctl COMMAND --json ARGS``: its exit code and the document it printed."""
    result = gpuctl(command, "--json", *args)
    assert result.out, result
    return result.code, json.loads(result.out)


def scan_json(gpuctl: Any, *args: str) -> tuple[int, dict[str, Any]]:
    return command_json(gpuctl, "scan", *args)


def by_node(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in summary["results"]}


class _HalfDeadServer:
    """A TCP listener that never speaks SSH (mode 'silent') or speaks garbage."""

    def __init__(self, address: str, mode: str) -> None:
        self.sock = socket.create_server((address, 22))
        self.mode, self.conns = mode, []  # type: ignore[var-annotated]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            if self.mode == "garbage":
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n" + os.urandom(4096))
                conn.close()

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def half_dead(lab) -> Iterator[list[str]]:  # type: ignore[no-untyped-def]
    servers = [_HalfDeadServer(lab.address(5), "silent"),
               _HalfDeadServer(lab.address(6), "garbage")]
    yield [lab.address(5), lab.address(6)]
    for server in servers:
        server.close()
