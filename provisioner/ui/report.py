"""Report renderers for the terminal, Markdown, JSON and JUnit XML."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET  # noqa: S405  (writing XML, never parsing it)
from typing import Any

from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table

from provisioner.ui.style import styled

VERDICT_STYLE = {"pass": "green", "fail": "bold red", "error": "red"}


def test_label(r: dict[str, Any]) -> str:
    return r["test"] + (f"[gpu{r['gpu']}]" if r.get("gpu") is not None else "")


def fmt_value(r: dict[str, Any]) -> str:
    value = r.get("value")
    if value is None:
        return r.get("unit") or "-"
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return f"{text} {r.get('unit') or ''}".strip()


def fmt_threshold(r: dict[str, Any]) -> str:
    t = r.get("threshold")
    return "" if t is None else f">= {t:g}" if r["test"] not in LOWER_IS_BETTER else f"<= {t:g}"


# Tests whose threshold is a ceiling (counts of bad events, temperatures).
LOWER_IS_BETTER = {"xid", "ecc_uncorrectable", "row_remap", "throttle", "temperature"}


def render_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2) + "\n"


def render_term(doc: dict[str, Any], console: Console, full: bool = False) -> None:
    run = doc["run"]
    s = doc["summary"]
    table = Table(title=f"burn-in run {run['id']} ({run['level']}, {run['started_at']}, "
                        f"by {escape(run['actor'])}): {s['passed']} of {s['nodes']} passed",
                  title_justify="left")
    for c in ("NODE", "SKU", "VERDICT", "NOW", "CERTIFIED UNTIL", "FAILURES"):
        table.add_column(c, overflow="fold")
    for n in doc["nodes"]:
        cert = n["certificate"]
        table.add_row(n["name"], n["sku"] or "-",
                      styled(n["verdict"], VERDICT_STYLE.get(n["verdict"])), n["state_now"],
                      (cert["expires_at"] or "")[:10] if cert else "-",
                      escape("; ".join(n["failures"][:3]) or
                             (n["reason"] if n["verdict"] == "error" else "")))
    parts: list[Any] = [table]
    for n in doc["nodes"]:
        rows = n["results"] if full else [r for r in n["results"] if r["verdict"] != "pass"]
        if not rows:
            continue
        t = Table(title=f"{n['name']}: {'all tests' if full else 'failed tests'}",
                  title_justify="left")
        for c in ("TEST", "VALUE", "THRESHOLD", "VERDICT", "REASON"):
            t.add_column(c, overflow="fold")
        for r in rows:
            t.add_row(test_label(r), fmt_value(r), fmt_threshold(r),
                      styled(r["verdict"], VERDICT_STYLE.get(r["verdict"])),
                      escape(r["reason"]))
        parts.append(t)
    console.print(Group(*parts))


def _md(text: Any) -> str:
    """A Markdown table cell: pipes escaped, one line, HTML disarmed."""
    return (str(text).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")
            .replace(">", "&gt;").replace("\n", " "))


def render_markdown(doc: dict[str, Any]) -> str:
    run, s = doc["run"], doc["summary"]
    out = [f"# gpuctl burn-in report: run {run['id']}", "",
           f"- Level: {run['level']}" + (f", {run['duration']} s per test"
                                          if run["duration"] else ""),
           f"- Started {run['started_at']} by {_md(run['actor'])}, finished "
           f"{run['finished_at'] or '-'}",
           f"- **{s['passed']} of {s['nodes']} nodes passed**", "",
           "| Node | SKU | Verdict | Now | Certified until | Failures |",
           "|---|---|---|---|---|---|"]
    for n in doc["nodes"]:
        cert = n["certificate"]
        out.append(f"| {_md(n['name'])} | {_md(n['sku'] or '-')} | **{n['verdict']}** | "
                   f"{n['state_now']} | {(cert['expires_at'] or '')[:10] if cert else '-'} | "
                   f"{_md('; '.join(n['failures'][:3]) or '')} |")
    for n in doc["nodes"]:
        out += ["", f"## {_md(n['name'])}: {n['verdict']}", ""]
        if n["verdict"] == "error":
            out += [_md(n["reason"]), ""]
        if n["certificate"]:
            c = n["certificate"]
            out += [f"Certificate: profile {c['profile']}, driver {c['driver_version'] or '-'},"
                    f" CUDA {c['cuda_version'] or '-'}, valid {c['issued_at']} to "
                    f"{c['expires_at']}, results sha256 `{c['results_digest'][:16]}...`", ""]
        if n["results"]:
            out += ["| Test | Value | Threshold | Verdict | Reason |", "|---|---|---|---|---|"]
            for r in n["results"]:
                out.append(f"| {_md(test_label(r))} | {_md(fmt_value(r))} | "
                           f"{_md(fmt_threshold(r))} | {r['verdict']} | {_md(r['reason'])} |")
    return "\n".join(out) + "\n"


_NOT_XML = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd]")


def _x(text: Any) -> str:
    """Text XML 1.0 can carry: node-reported strings may hold control characters."""
    return _NOT_XML.sub("?", str(text))


def render_junit(doc: dict[str, Any]) -> str:
    """One testsuite per node, one testcase per node per test (and GPU)."""
    run = doc["run"]
    suites = ET.Element("testsuites", name=f"gpuctl burn-in run {run['id']}")
    total = failures = errors = 0
    for n in doc["nodes"]:
        suite = ET.SubElement(suites, "testsuite", name=n["name"], hostname=n["name"],
                              timestamp=(run["started_at"] or "")[:19])
        props = ET.SubElement(suite, "properties")
        for key, value in (("sku", n["sku"]), ("level", run["level"]),
                           ("outcome", n["outcome"])):
            ET.SubElement(props, "property", name=key, value=_x(value or ""))
        cases = n["results"] or []
        n_fail = n_err = 0
        for r in cases:
            case = ET.SubElement(suite, "testcase", classname=f"burnin.{n['name']}",
                                 name=test_label(r), time="0")
            if r["verdict"] != "pass":
                n_fail += 1
                fail = ET.SubElement(case, "failure", message=_x(r["reason"][:500]),
                                     type=r["test"])
                fail.text = _x(f"{fmt_value(r)} (threshold {fmt_threshold(r) or 'none'})")
            else:
                ET.SubElement(case, "system-out").text = \
                    f"{fmt_value(r)} {fmt_threshold(r)}".strip()
        if not cases:
            case = ET.SubElement(suite, "testcase", classname=f"burnin.{n['name']}",
                                 name="agent", time="0")
            ET.SubElement(case, "error", message=_x(n["reason"][:500]), type="agent")
            n_err += 1
        suite.set("tests", str(max(len(cases), 1)))
        suite.set("failures", str(n_fail))
        suite.set("errors", str(n_err))
        total += max(len(cases), 1)
        failures += n_fail
        errors += n_err
    suites.set("tests", str(total))
    suites.set("failures", str(failures))
    suites.set("errors", str(errors))
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, "unicode") + "\n"
