"""Report renderers on a realistic document: JUnit, Markdown, JSON, HTML."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from provisioner.ui.report import render_json, render_junit, render_markdown
from provisioner.ui.report_html import render_html
from tests.report_fixtures import sample_doc


def test_junit_has_one_testcase_per_node_per_test() -> None:
    doc = sample_doc()
    root = ET.fromstring(render_junit(doc))
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["h100-01", "h100-02"]
    per_node = len(doc["nodes"][0]["results"])
    assert all(len(s.findall("testcase")) == per_node for s in suites)
    assert root.get("tests") == str(2 * per_node) and root.get("failures") == "1"
    failed = [c for c in root.iter("testcase") if c.find("failure") is not None]
    assert [(c.get("classname"), c.get("name")) for c in failed] == [
        ("burnin.h100-02", "gemm_bfloat16[gpu5]")]
    assert "410 TFLOPS < 600" in failed[0].find("failure").get("message")  # type: ignore[union-attr]


def test_junit_survives_control_characters_and_agent_errors() -> None:
    doc = sample_doc()
    doc["nodes"][1]["results"][1]["reason"] = "bad \x01\x1b[31m output"
    doc["nodes"][0].update(results=[], verdict="error", reason="agent exited 1: \x00oops")
    root = ET.fromstring(render_junit(doc))  # parses: no raw control characters
    errors = [c for c in root.iter("testcase") if c.find("error") is not None]
    assert len(errors) == 1 and errors[0].get("name") == "agent"
    assert root.get("errors") == "1"


def test_markdown_escapes_cells() -> None:
    doc = sample_doc()
    doc["nodes"][1]["failures"] = ["a | b <script>"]
    text = render_markdown(doc)
    assert "a \\| b &lt;script&gt;" in text
    assert "**1 of 2 nodes passed**" in text


def test_json_round_trips() -> None:
    doc = sample_doc()
    assert json.loads(render_json(doc)) == doc


def test_html_is_self_contained_escaped_and_has_every_plot() -> None:
    doc = sample_doc()
    doc["nodes"][1]["failures"][0] = "<img src=x onerror=alert(1)>"
    html = render_html(doc)
    assert "<img src=x" not in html and "&lt;img src=x" in html
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in html
    # 4 throughput charts, per node: temperature, power, P2P heatmap.
    assert html.count('<svg class="plot"') == 4 + 2 * 3
    assert 'data-marks="0"' not in html
    # Node names and states in the summary table are never wrapped.
    assert "td.name, td.state { white-space: nowrap; }" in html
    assert html.count('<td class="name">') == len(doc["nodes"])
    assert "<td>4</td><td>17 of 18</td>" in html.replace("\n", "").replace("      ", "")
