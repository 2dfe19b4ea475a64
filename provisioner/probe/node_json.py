"""JSON from a node, read as untrusted: integers of at most MAX_DIGITS digits, finite
numbers only, and a burn-in agent's document checked for the shape the judges read.
Any such defect is a ``NodeOutputError`` naming the field: the node fails, the run goes
on for the others."""

from __future__ import annotations

import json
import math
from typing import Any

from provisioner.errors import GpuctlError

MAX_DIGITS = 20
INT64 = 2**63 - 1
MAX_DEVICES = 1024


class NodeOutputError(GpuctlError):
    """A node's output is unusable; the message names what was wrong."""


def _int(text: str) -> int:
    # Checked before converting: Python refuses over 4300 digits, and a database column
    # holds 64 bits.
    if len(text.lstrip("-")) > MAX_DIGITS or not -INT64 <= (value := int(text)) <= INT64:
        raise ValueError(f"an integer out of range ({text[:24]})")
    return value


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"a number out of range ({text[:24]})")
    return value


def _constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def loads(text: str | bytes) -> Any:
    """``json.loads`` for a node's output.

    Raises:
        NodeOutputError: not JSON, or a number no node could have measured.
    """
    try:
        return json.loads(text, parse_int=_int, parse_float=_float,
                          parse_constant=_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise NodeOutputError(f"not JSON ({type(exc).__name__}: {str(exc)[:120]})") from None


MAX_VALUE = 1e15  # no measurement (TFLOPS, GB/s, GiB, errors, seconds) comes near this
SCALAR = (str, int, float, type(None))  # values the judges use as keys or compare


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) \
        and abs(value) <= MAX_VALUE


def _check_detail(where: str, detail: dict[str, Any]) -> None:
    for key in ("n", "seed", "dtype", "product_digest"):
        if not isinstance(detail.get(key), SCALAR) or (
                isinstance(detail.get(key), str) and len(detail[key]) > 200):
            raise NodeOutputError(f"{where}.detail.{key} is not a short scalar")
    matrix = detail.get("matrix")
    if matrix is not None and not (isinstance(matrix, list) and all(
            isinstance(row, list) and all(v is None or _number(v) for v in row)
            for row in matrix)):
        raise NodeOutputError(f"{where}.detail.matrix is not a matrix of numbers")


def _check_result(i: int, r: Any) -> None:
    where = f"results[{i}]"
    if not isinstance(r, dict):
        raise NodeOutputError(f"{where} is not an object")
    if not isinstance(r.get("test"), str) or not 0 < len(r["test"]) <= 100:
        raise NodeOutputError(f"{where}.test is not a test name")
    value = r.get("value")
    if value is not None and not _number(value):
        raise NodeOutputError(f"{where}.value ({r['test'][:40]}) is not a number in range")
    device = r.get("device")
    if device is not None and (isinstance(device, bool) or not isinstance(device, int)
                               or not 0 <= device < MAX_DEVICES):
        raise NodeOutputError(f"{where}.device ({r['test'][:40]}) is not a GPU index")
    if not isinstance(r.get("ok", True), bool):
        raise NodeOutputError(f"{where}.ok ({r['test'][:40]}) is not true or false")
    if not isinstance(r.get("unit", ""), str) or not isinstance(r.get("detail", {}), dict):
        raise NodeOutputError(f"{where} ({r['test'][:40]}) has a malformed unit or detail")
    _check_detail(f"{where} ({r['test'][:40]})", r.get("detail") or {})


def _list_of(value: Any, kind: type | tuple[type, ...]) -> bool:
    return isinstance(value, list) and all(isinstance(v, kind) for v in value)


def _check_sections(doc: dict[str, Any]) -> None:
    """The parts of the document besides the results that the judges, the stored
    artifact and the report read."""
    if not isinstance(doc.get("torch"), SCALAR) or not isinstance(doc.get("backend"), SCALAR):
        raise NodeOutputError("torch or backend is not a scalar")
    gpus = doc.get("gpus")
    if gpus is not None and (isinstance(gpus, bool) or not isinstance(gpus, int)
                             or not 0 <= gpus <= MAX_DEVICES):
        raise NodeOutputError("gpus is not a GPU count")
    devices = doc.get("devices")
    if devices is not None and not (_list_of(devices, dict) and all(
            isinstance(d.get(k), SCALAR) for d in devices for k in ("name", "multiprocessors"))):
        raise NodeOutputError("devices is malformed")
    telemetry = doc.get("telemetry")
    if telemetry is not None:
        samples = telemetry.get("samples") if isinstance(telemetry, dict) else None
        if not isinstance(telemetry, dict) or (samples is not None and not (
                _list_of(samples, dict) and all(
                    isinstance(x.get("gpu"), int | type(None)) for x in samples))):
            raise NodeOutputError("telemetry.samples is malformed")
    health = doc.get("health")
    if health is not None:
        if not isinstance(health, dict):
            raise NodeOutputError("health is malformed")
        for when in ("before", "after"):
            part = health.get(when)
            if part is None:
                continue
            if not isinstance(part, dict) or not all(
                    part.get(k) is None or _list_of(part[k], str)
                    for k in ("xid_lines", "sxid_lines")) or not isinstance(
                    part.get("smi_xml"), str | type(None)):
                raise NodeOutputError(f"health.{when} is malformed")


def agent_document(text: str | bytes) -> dict[str, Any]:
    """The burn-in agent's document, checked where the judges read it.

    Raises:
        NodeOutputError: not JSON, or not a result document (the field is named).
    """
    doc = loads(text)
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        raise NodeOutputError("not a result document (no results list)")
    for i, r in enumerate(doc["results"]):
        _check_result(i, r)
    _check_sections(doc)
    for key in ("inventory", "nvlink"):
        if doc.get(key) is not None and not isinstance(doc[key], dict | list):
            raise NodeOutputError(f"{key} is malformed")
    return doc
