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


def _check_result(i: int, r: Any) -> None:
    where = f"results[{i}]"
    if not isinstance(r, dict):
        raise NodeOutputError(f"{where} is not an object")
    if not isinstance(r.get("test"), str) or not 0 < len(r["test"]) <= 100:
        raise NodeOutputError(f"{where}.test is not a test name")
    value = r.get("value")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise NodeOutputError(f"{where}.value ({r['test'][:40]}) is not a number")
    device = r.get("device")
    if device is not None and (isinstance(device, bool) or not isinstance(device, int)
                               or not 0 <= device < MAX_DEVICES):
        raise NodeOutputError(f"{where}.device ({r['test'][:40]}) is not a GPU index")
    if not isinstance(r.get("ok", True), bool):
        raise NodeOutputError(f"{where}.ok ({r['test'][:40]}) is not true or false")
    if not isinstance(r.get("unit", ""), str) or not isinstance(r.get("detail", {}), dict):
        raise NodeOutputError(f"{where} ({r['test'][:40]}) has a malformed unit or detail")


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
    for key in ("telemetry", "health", "inventory", "nvlink"):
        if doc.get(key) is not None and not isinstance(doc[key], dict | list):
            raise NodeOutputError(f"{key} is malformed")
    return doc
