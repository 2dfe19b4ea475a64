"""``gpuctl status --watch`` in a real terminal (tmux): it draws the fleet, follows
changes made by another gpuctl, and quits on q."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from provisioner.fleet import ops
from provisioner.handle import Gpuctl
from provisioner.paths import Paths
from tests.fleet_fixtures import fill_fleet

pytestmark = pytest.mark.e2e


def _tmux(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=30,
                          check=False)


@pytest.fixture
def session() -> Iterator[str]:
    if shutil.which("tmux") is None:
        if os.environ.get("CI"):
            pytest.fail("tmux is not installed (scripts/test.sh installs it)")
        pytest.skip("tmux is not installed")
    name = f"gpuctl-test-{os.getpid()}"
    yield name
    _tmux("kill-session", "-t", name)


def _wait_for(session: str, check: Callable[[str], bool], timeout: float = 30.0) -> str:
    screen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        screen = _tmux("capture-pane", "-p", "-t", session).stdout
        if check(screen):
            return screen
        time.sleep(0.2)
    raise AssertionError(f"screen never matched; last screen:\n{screen}")


def test_status_watch_in_tmux(paths: Paths, session: str, tmp_path: Path) -> None:
    fill_fleet(paths.db_url, 12)
    gpuctl = Path(sys.executable).with_name("gpuctl")
    env = f"GPUCTL_HOME={shlex.quote(str(paths.home))} GPUCTL_DB={shlex.quote(paths.db_url)}"
    started = _tmux("new-session", "-d", "-s", session, "-x", "160", "-y", "60",
                    f"env -u COLUMNS -u LINES {env} TERM=xterm-256color {gpuctl} status --watch "
                    "--interval 0.5")
    assert started.returncode == 0, started.stderr
    screen = _wait_for(session, lambda s: "gpuctl fleet" in s and "Needs attention" in s)
    assert "12 nodes, 96 GPUs" in screen
    assert re.search(r"drained\s+│\s+2\b", screen), screen
    assert "q quits" in screen
    # Another gpuctl drains a node: the dashboard follows.
    ops.apply(Gpuctl(paths), "drain", ["gpu00001"], "PSU swap")
    screen = _wait_for(session, lambda s: re.search(r"drained\s+│\s+3\b", s) is not None)
    (tmp_path / "status-watch.txt").write_text(screen)
    capture = os.environ.get("GPUCTL_SCREEN_CAPTURE")  # for docs: where to keep the screen
    if capture:
        Path(capture).write_text(screen)
    # Keyboard: down to the second node needing attention, enter shows its detail,
    # esc goes back to the fleet.
    assert "> gpu00002" in screen
    _tmux("send-keys", "-t", session, "Down")
    _wait_for(session, lambda s: "> gpu00004" in s)
    _tmux("send-keys", "-t", session, "Enter")
    screen = _wait_for(session, lambda s: "gpuctl nodes show gpu00004" in s)
    assert "state failed" in screen and "History" in screen
    _tmux("send-keys", "-t", session, "b")
    _wait_for(session, lambda s: "Needs attention" in s)
    _tmux("send-keys", "-t", session, "q")
    deadline = time.monotonic() + 10
    while _tmux("has-session", "-t", session).returncode == 0:
        assert time.monotonic() < deadline, "status --watch did not quit on q"
        time.sleep(0.2)
