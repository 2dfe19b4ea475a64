"""Every parser of node output, fed random and mutated real captures (Hypothesis): the
answer is a result or the parser's per-node error, never another exception, and no
number a database column cannot hold gets through. One hostile node must never stop a
scan, a monitor pass or a burn-in of the others."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provisioner.burnin.health import health_verdicts
from provisioner.burnin.run import _artifact
from provisioner.burnin.thresholds import (
    evaluate,
    fleet_digest_verdicts,
    fleet_medians,
    fleet_outlier_verdicts,
    gpu_outlier_verdicts,
)
from provisioner.probe.facts import ProbeOutputError, parse_probe_output
from provisioner.probe.node_json import NodeOutputError, agent_document
from provisioner.probe.smi_xml import (
    SmiParseError,
    parse_nvlink_lines,
    parse_smi_xml,
    parse_xid_lines,
)
from provisioner.slurm.gates import compare_hardware
from tests.conftest import DATA

ROOT = Path(__file__).parents[2]
PROBE = (DATA / "probe-debian12-vm.json").read_bytes()
AGENT = (DATA / "h200-agent-quick.json").read_bytes()
XMLS = [(DATA / n).read_bytes() for n in ("h200-nvidia-smi-q-x.xml", "a100-sxm4-80gb-mig.xml",
                                            "standin-h100-remap-failure.xml")]
INT64 = 2**63 - 1
EXAMPLES = 200

# What a broken or hostile node puts where a number or a string belongs.
HOSTILE = [b"9" * 5000, b"-" + b"9" * 400, b"1" * 21, b"1e999", b"-1e999", b"NaN",
           b"Infinity", b"-1", b"0", b"4294967296", b"18446744073709551616", b"0.5",
           b'"abc"', b'""', b"null", b"true", b"false", b"[]", b"{}", b'"\\u0000\\u001b[31m"',
           b'"' + b"x" * 100000 + b'"', b"[" * 50 + b"]" * 50]
TOKEN = re.compile(rb'-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|"(?:[^"\\]|\\.)*"')


def _mutate(data: st.DataObject, text: bytes, hostile: list[bytes]) -> bytes:
    """Replace a few tokens (numbers, strings) with hostile values, then maybe damage a
    few bytes: what a node with a broken tool or an attacker prints."""
    tokens = list(TOKEN.finditer(text))
    picked = data.draw(st.sets(st.integers(0, len(tokens) - 1), min_size=1, max_size=4))
    out = text
    for index in sorted(picked, reverse=True):  # from the end: earlier offsets stay valid
        m = tokens[index]
        out = out[:m.start()] + data.draw(st.sampled_from(hostile)) + out[m.end():]
    if data.draw(st.booleans()):
        pos = data.draw(st.integers(0, len(out)))
        out = out[:pos] + data.draw(st.binary(max_size=8)) + out[pos + 1:]
    return out


INT32 = 2**31 - 1  # the GPU counters' columns (PostgreSQL INTEGER)


def _ints_bounded(value: Any, limit: int = INT64) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return -limit <= value <= limit
    if isinstance(value, float):
        return value == value and abs(value) != float("inf")
    if isinstance(value, dict):
        return all(_ints_bounded(v, limit) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_ints_bounded(v, limit) for v in value)
    if hasattr(value, "__dataclass_fields__"):
        # A GPU's counters go to 32-bit columns.
        return _ints_bounded(vars(value), INT32 if type(value).__name__ == "SmiGpu"
                             else limit)
    return True


FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(st.data())
def test_probe_output(data: st.DataObject) -> None:
    raw = _mutate(data, PROBE, HOSTILE)
    try:
        facts = parse_probe_output(raw)
    except ProbeOutputError:
        return
    assert _ints_bounded(facts)
    json.dumps(facts.to_dict())  # storable as the snapshot's JSON


@FUZZ
@given(st.data())
def test_probe_output_with_nvidia_smi_xml(data: st.DataObject) -> None:
    xml = data.draw(st.sampled_from(XMLS))
    hostile_xml = [b"9" * 5000, b"9" * 400 + b" C", b"-" + b"9" * 40, b"1e999", b"N/A",
                   b"&lt;", b"", b"-1", b"4294967296", b"3000000000", b"2147483647"]
    # Mutate inside the XML text nodes, then carry it in a probe document as a node does.
    numbers = list(re.finditer(rb">(-?\d+(?:\.\d+)?)( [A-Za-z%/]+)?<", xml))
    for _ in range(data.draw(st.integers(1, 6))):
        m = numbers[data.draw(st.integers(0, len(numbers) - 1))]
        xml = xml[:m.start(1)] + data.draw(st.sampled_from(hostile_xml)) + xml[m.end(1):]
        numbers = list(re.finditer(rb">(-?\d+(?:\.\d+)?)( [A-Za-z%/]+)?<", xml))
    try:
        report = parse_smi_xml(xml)
        assert _ints_bounded(report)
    except SmiParseError:
        pass
    doc = json.loads(PROBE)
    doc["smi"] = {"available": True, "exit_code": 0, "xml": xml.decode("utf-8", "replace")}
    try:
        facts = parse_probe_output(json.dumps(doc).encode())
    except ProbeOutputError:
        return
    assert _ints_bounded(facts)


@FUZZ
@given(st.lists(st.one_of(st.text(max_size=200), st.integers(), st.none(),
                          st.sampled_from([
                              "NVRM: Xid (PCI:0000:18:00): " + "9" * 5000 + ", pid=1",
                              "NVRM: Xid (PCI:0000:18:00): 79, pid=1, GPU has fallen off",
                              "GPU " + "9" * 5000 + ": NVIDIA H100", "Link 99999999999: <inactive>",
                              "GPU 0: NVIDIA H100 (UUID: GPU-x)", "Link 3: <inactive>"])),
                max_size=50))
def test_xid_and_nvlink_lines(lines: list[Any]) -> None:
    assert _ints_bounded(parse_xid_lines(lines))
    assert _ints_bounded(parse_nvlink_lines(lines))


PROFILE = yaml.safe_load((ROOT / "inventory/thresholds/generic.yml").read_text())


@FUZZ
@given(st.data())
def test_agent_document_and_its_judges(data: st.DataObject) -> None:
    raw = _mutate(data, AGENT, HOSTILE)
    try:
        doc = agent_document(raw)
    except NodeOutputError:
        return
    assert _ints_bounded(doc)
    # What the control host does with an accepted document, for this node and the fleet.
    real = json.loads(AGENT)
    # With two healthy nodes beside it, so the fleet's medians and votes are computed.
    medians = fleet_medians([doc["results"], real["results"], real["results"]])
    assert medians
    evaluate(doc["results"], PROFILE, medians)
    health_verdicts(doc, PROFILE)
    fleet_outlier_verdicts(doc["results"], PROFILE, medians)
    gpu_outlier_verdicts(doc["results"], PROFILE)
    fleet_digest_verdicts({"hostile": doc, "a": real, "b": real})
    json.dumps(_artifact(doc))


@FUZZ
@given(st.text(max_size=300), st.sampled_from(["CPUs=abc", "CPUs=" + "9" * 5000,
                                               "RealMemory=-1", "RealMemory=1e9",
                                               "NodeName=n1 CPUs=64 RealMemory=515000"]))
def test_slurmd_c_lines(noise: str, line: str) -> None:
    diffs = compare_hardware(noise + " " + line, cpus=64, memory_mib=500000)
    assert all(isinstance(d, str) for d in diffs)


@pytest.mark.parametrize("raw", [PROBE, AGENT])
def test_the_real_captures_themselves_pass(raw: bytes) -> None:
    if raw is PROBE:
        assert parse_probe_output(raw).warnings == json.loads(raw).get("errors", [])
    else:
        assert agent_document(raw)["backend"] == "cuda"
