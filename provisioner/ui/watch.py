"""``gpuctl status --watch``: the dashboard redrawn every interval, with a selectable
"Needs attention" list (up/down, j/k) and a node's detail (enter; back with esc/b)."""

from __future__ import annotations

import contextlib
import io
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.text import Text

from provisioner.ui.fleet import status_panel
from provisioner.ui.render import node_detail


@contextlib.contextmanager
def _keys() -> Iterator[bool]:
    """Single keypresses from a terminal (cbreak mode), restored afterwards; yields
    whether stdin is a terminal at all."""
    if not sys.stdin.isatty():
        yield False
        return
    fd = sys.stdin.fileno()
    old = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


KEYS = {"\x1b[A": "up", "\x1b[B": "down", "k": "up", "j": "down", "\n": "enter",
        "\r": "enter", "\x1b": "back", "\x7f": "back", "b": "back", "q": "quit",
        "Q": "quit"}


def _key(timeout: float) -> str | None:
    """One keypress as a name (up, down, enter, back, quit), or None on timeout."""
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    if not ready:
        return None
    key = os.read(sys.stdin.fileno(), 8).decode("utf-8", "replace")
    return KEYS.get(key, KEYS.get(key[:3], ""))


class WatchView:
    """What the watch screen shows: the dashboard of ``snapshot()`` with a selected row
    in "Needs attention", or that node's ``detail(name)``."""

    def __init__(self, console: Console, snapshot: Callable[[], dict[str, Any]],
                 detail: Callable[[str], Any], interval: float) -> None:
        self.console, self.snapshot, self.node = console, snapshot, detail
        self.selected = 0
        self.detail: str | None = None
        self.footer = (f"refresh every {interval:g} s; up/down select, enter shows the "
                       "node, esc back, q quits")
        self.names: list[str] = []

    def render(self) -> RenderableType:
        if self.detail is not None:
            return Panel(self._detail(self.detail), title=f"gpuctl nodes show {self.detail}",
                         subtitle="esc or b: back to the fleet; q quits", border_style="blue")
        doc = self.snapshot()
        self.names = [a["node"] for a in doc["attention"]["nodes"]]
        self.selected = min(self.selected, max(len(self.names) - 1, 0))
        return status_panel(doc, self.footer, self.selected if self.names else None,
                            self.console.width)

    def _detail(self, name: str) -> RenderableType:
        console = Console(file=io.StringIO(), force_terminal=True,
                          width=max(60, self.console.width - 4))
        node_detail(console, self.node(name))
        return Text.from_ansi(console.file.getvalue())  # type: ignore[attr-defined]

    def key(self, key: str) -> None:
        if key == "up":
            self.selected = max(0, self.selected - 1)
        elif key == "down":
            self.selected = min(len(self.names) - 1, self.selected + 1) if self.names else 0
        elif key == "enter" and self.detail is None and self.names:
            self.detail = self.names[self.selected]
        elif key == "back":
            self.detail = None


def watch(console: Console, view: WatchView, interval: float) -> None:
    """Redraw ``view`` every ``interval`` seconds (at once on a keypress) until q or
    Ctrl-C."""
    with _keys() as interactive, Live(view.render(), console=console, screen=True,
                                      auto_refresh=False) as live:
        try:
            while True:
                deadline = time.monotonic() + interval
                while (left := deadline - time.monotonic()) > 0:
                    if not interactive:
                        time.sleep(left)
                        break
                    key = _key(left)
                    if key == "quit":
                        return
                    if key:  # redraw at once on a keypress
                        view.key(key)
                        break
                live.update(view.render(), refresh=True)
        except KeyboardInterrupt:
            return
