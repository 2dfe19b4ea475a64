"""Per-SKU burn-in thresholds (YAML) and the verdicts they give.

Profiles live in ``inventory/thresholds/<profile>.yml``; a file of the same name under
``<data dir>/thresholds/`` replaces it. Every throughput test is gated on a number, and a
node well below its SKU's fleet median fails even above the absolute floor.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

import yaml

from provisioner.errors import InputError
from provisioner.paths import Paths
from provisioner.project import project_dir


@dataclass(frozen=True)
class Verdict:
    test: str
    device: int | None
    value: float | None
    unit: str
    threshold: float | None
    passed: bool
    reason: str


def load_profile(paths: Paths, name: str) -> dict[str, Any]:
    """The threshold profile ``name``, site override first.

    Raises:
        InputError: no such profile, or it is not a mapping with ``tests``.
    """
    for base in (paths.home / "thresholds", project_dir() / "inventory/thresholds"):
        path = base / f"{name}.yml"
        if path.is_file():
            try:
                doc = yaml.safe_load(path.read_text())
            except yaml.YAMLError as exc:
                raise InputError(f"{path}: not valid YAML ({exc})") from None
            if not isinstance(doc, dict) or not isinstance(doc.get("tests"), dict):
                raise InputError(f"{path}: needs a 'tests' mapping")
            return doc
    known = sorted(p.stem for p in (project_dir() / "inventory/thresholds").glob("*.yml"))
    raise InputError(f"no threshold profile {name!r}; known: {', '.join(known)}")


def evaluate(results: list[dict[str, Any]], profile: dict[str, Any],
             fleet_medians: dict[str, float] | None = None) -> list[Verdict]:
    """One verdict per measurement: correctness first, then the absolute floor, then the
    fleet-relative floor (``fleet_outlier_fraction`` x the SKU's median for that test)."""
    tests: dict[str, Any] = profile["tests"]
    fraction = float(profile.get("fleet_outlier_fraction", 0.9))
    out = []
    for r in results:
        name, value, unit = r["test"], r.get("value"), r.get("unit", "")
        limit = tests.get(name, {}).get("min")
        where = f"GPU {r['device']}" if r.get("device") is not None else "node"
        if not r.get("ok", True):
            detail = r.get("detail", {})
            why = ("silent data corruption: results differ between repeats"
                   if detail.get("repeat_bit_identical") is False else
                   f"silent data corruption: error {detail.get('relative_error'):.2e} > "
                   f"{detail.get('tolerance')}" if "relative_error" in detail else
                   f"{detail.get('errors')} memory errors" if "errors" in detail else
                   "wrong result")
            out.append(Verdict(name, r.get("device"), value, unit, limit, False,
                               f"{name} on {where}: {why}"))
            continue
        if limit is not None and (value is None or value < limit):
            out.append(Verdict(name, r.get("device"), value, unit, limit, False,
                               f"{name} on {where}: {value:.4g} {unit} < {limit} {unit}"
                               if value is not None else f"{name} on {where}: no value"))
            continue
        median = (fleet_medians or {}).get(name)
        if median and value is not None and value < fraction * median:
            out.append(Verdict(name, r.get("device"), value, unit, limit, False,
                               f"{name} on {where}: {value:.4g} {unit} is below "
                               f"{fraction:.0%} of the fleet median {median:.4g}"))
            continue
        out.append(Verdict(name, r.get("device"), value, unit, limit, True, ""))
    return out


def fleet_medians(per_node: list[list[dict[str, Any]]]) -> dict[str, float]:
    """Median per test over the nodes' per-node means (needs at least 3 nodes)."""
    if len(per_node) < 3:
        return {}
    by_test: dict[str, list[float]] = {}
    for results in per_node:
        means: dict[str, list[float]] = {}
        for r in results:
            if r.get("value") is not None:
                means.setdefault(r["test"], []).append(float(r["value"]))
        for test, values in means.items():
            by_test.setdefault(test, []).append(statistics.fmean(values))
    return {t: statistics.median(v) for t, v in by_test.items() if len(v) >= 3}
