"""Open an HTML file in headless Chromium: screenshot, DOM after scripts, console lines."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-extensions", "--no-first-run", "--disable-sync", "--mute-audio",
         "--enable-logging=stderr", "--v=0"]


@dataclass
class PageCheck:
    screenshot: Path
    attrs: dict[str, str]
    console: list[str]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed (scripts/test.sh installs it)")
    pytest.skip("chromium is not installed; scripts/test.sh installs it")


def open_page(html: Path, tmp: Path) -> PageCheck:
    browser = chromium()
    shot = tmp / "screenshot.png"
    common = [browser, *FLAGS, f"--user-data-dir={tmp / 'profile'}"]
    res = subprocess.run([*common, f"--screenshot={shot}", "--window-size=1280,3000",
                          html.as_uri()], capture_output=True, text=True, timeout=120,
                         check=False)
    dom = subprocess.run([*common, "--dump-dom", html.as_uri()], capture_output=True,
                         text=True, timeout=120, check=False)
    root = re.search(r"<html([^>]*)>", dom.stdout)
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', root.group(1))) if root else {}
    console = [line for line in (res.stderr + dom.stderr).splitlines() if ":CONSOLE" in line]
    return PageCheck(shot, attrs, console)


def assert_page_ok(check: PageCheck, plots: int | None = None) -> None:
    assert check.screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert check.screenshot.stat().st_size > 20_000, "screenshot looks blank"
    assert check.console == [], check.console
    assert check.attrs.get("data-ready") == "1", check.attrs
    assert "data-js-errors" not in check.attrs, check.attrs
    assert check.attrs.get("data-empty-plots") == "0", check.attrs
    assert check.attrs.get("data-marks-outside") == "0", check.attrs
    assert int(check.attrs.get("data-plots", "0")) > 0
    if plots is not None:
        assert int(check.attrs["data-plots"]) == plots
