"""The HTML report in a real browser (headless Chromium): it renders, its scripts run
without console errors, and every plot drew something."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.ui.report_html import render_html
from tests.browser import PageCheck, assert_page_ok, open_page
from tests.report_fixtures import sample_doc

pytestmark = pytest.mark.e2e


def test_report_renders_in_chromium(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(render_html(sample_doc()))
    check = open_page(page, tmp_path)
    assert_page_ok(check, plots=10)


def test_the_browser_check_catches_broken_pages(tmp_path: Path) -> None:
    """The same check fails on an empty plot and on a script error."""
    html = render_html(sample_doc())
    broken = html.replace('class="mark', 'class="nomark', 3).replace(
        "// Self-check", "undefinedFunction(); // Self-check")
    page = tmp_path / "broken.html"
    page.write_text(broken)
    check: PageCheck = open_page(page, tmp_path)
    assert any("undefinedFunction" in line for line in check.console), check.console
    with pytest.raises(AssertionError):
        assert_page_ok(check)
    empty = html.replace('class="mark', 'class="nomark')
    page.write_text(empty)
    check = open_page(page, tmp_path)
    assert int(check.attrs["data-empty-plots"]) > 0
