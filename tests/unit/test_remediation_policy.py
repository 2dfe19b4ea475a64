"""The remediation policy file: the shipped one loads and cites a source for every rule,
a site file replaces it, and every malformed policy is one line naming file and rule."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner.errors import InputError
from provisioner.paths import Paths
from provisioner.remediate.policy import (
    RUNGS,
    load_policy,
    parse_duration,
    parse_policy,
    policy_path,
    read_policy,
)
from provisioner.shipped import shipped_dir

SHIPPED = shipped_dir() / "inventory" / "remediation.yml"


def test_shipped_policy_loads_and_every_rule_cites_a_source(paths: Paths) -> None:
    policy = load_policy(paths.home)
    assert policy.path == str(SHIPPED)
    assert policy.repeat_count == 2 and policy.repeat_window == timedelta(days=7)
    assert policy.default.first == "none"  # an unknown finding: a person decides
    assert len(policy.rules) >= 10
    for rule in policy.rules:
        assert rule.source and rule.first in RUNGS and rule.ceiling in RUNGS, rule.name
    # The faults each have a rule: XIDs, ECC and row-remap states, NVLink down,
    # a lost GPU, fabric not registered.
    kinds = set().union(*(r.kinds for r in policy.rules))
    assert {"xid", "ecc-uncorrectable", "ecc-memory-state", "row-remap-failure",
            "row-remap-pending", "nvlink", "gpu-missing", "fabric"} <= kinds


def test_shipped_xid_rules_follow_the_catalog_buckets(paths: Paths) -> None:
    policy = load_policy(paths.home)

    def first(code: int) -> str:
        rule = policy.rule_for("xid", "critical", code)
        assert rule is not None, code
        return rule.first

    assert first(79) == "reboot"  # RESTART_BM
    assert [first(c) for c in (46, 62, 95, 119, 120)] == ["reset"] * 5  # RESET_GPU
    assert first(48) == "reset"  # WORKFLOW_XID_48 -> component reset
    assert first(13) == "none"  # RESTART_APP
    assert policy.rule_for("xid", "critical", 154) is None  # the default decides
    assert "RESTART_BM" in (policy.rule_for("xid", "critical", 79) or policy.default).source


def test_site_file_replaces_the_shipped_policy(paths: Paths) -> None:
    site = paths.home / "remediation.yml"
    site.write_text(yaml.safe_dump({
        "repeat": {"count": 3, "window": "36h"},
        "rules": [{"name": "only", "match": {"kind": "nvlink"}, "first": "reboot",
                   "ceiling": "power-cycle", "source": "site runbook 7"}]}))
    assert policy_path(paths.home) == site
    policy = load_policy(paths.home)
    assert [r.name for r in policy.rules] == ["only"]
    assert (policy.repeat_count, policy.repeat_window) == (3, timedelta(hours=36))
    assert policy.rule_for("xid", "critical", 79) is None


def test_durations() -> None:
    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration(" 90 m ") == timedelta(minutes=90)
    assert parse_duration("45s") == timedelta(seconds=45)
    for bad in ("7 days", 7, "1w", "", None, "-1d"):
        assert parse_duration(bad) is None, bad


def _doc(**changes: Any) -> dict[str, Any]:
    rule = {"name": "r1", "match": {"kind": "xid", "xid": [79]}, "first": "reboot",
            "ceiling": "rma", "source": "NVIDIA Xid catalog: RESTART_BM"}
    rule.update(changes.pop("rule", {}))
    for key in [k for k, v in rule.items() if v is None]:
        del rule[key]
    doc: dict[str, Any] = {"rules": [rule]}
    doc.update(changes)
    return doc


BAD = [
    ("not a mapping", ["a"], "must be a mapping with 'rules'"),
    ("unknown top key", _doc(ladder=["reset"]), "unknown key 'ladder'"),
    ("no rules", {"rules": []}, "'rules' must be a non-empty list"),
    ("rule not a mapping", {"rules": ["reset"]}, "rule 1: must be a mapping"),
    ("rule without name", _doc(rule={"name": None}), "rule 1: needs a 'name'"),
    ("unknown rule key", _doc(rule={"rung": "reset"}), "rule 'r1': unknown key 'rung'"),
    ("no match", _doc(rule={"match": None}), "rule 'r1': needs 'match'"),
    ("unknown match key", _doc(rule={"match": {"kind": "xid", "code": 79}}),
     "rule 'r1': match: unknown key 'code'"),
    ("kind not a string", _doc(rule={"match": {"kind": 3}}), "rule 'r1': match.kind"),
    ("xid not codes", _doc(rule={"match": {"kind": "xid", "xid": ["79"]}}),
     "rule 'r1': match.xid must be a list of positive XID codes"),
    ("xid on another kind", _doc(rule={"match": {"kind": "nvlink", "xid": [74]}}),
     "rule 'r1': match.xid applies only to kind 'xid'"),
    ("bad severity", _doc(rule={"match": {"kind": "nvlink", "severity": ["fatal"]}}),
     "rule 'r1': match.severity"),
    ("unknown first rung", _doc(rule={"first": "reinstall"}),
     "rule 'r1': first: 'reinstall' is not a rung"),
    ("unknown ceiling", _doc(rule={"ceiling": "replace"}),
     "rule 'r1': ceiling: 'replace' is not a rung"),
    ("ceiling below first", _doc(rule={"first": "power-cycle", "ceiling": "reset"}),
     "rule 'r1': ceiling reset is below first rung power-cycle"),
    ("no source", _doc(rule={"source": " "}), "rule 'r1': needs a 'source'"),
    ("repeat count 0", _doc(repeat={"count": 0, "window": "7d"}),
     "repeat.count: 0 must be a whole number of at least 1"),
    ("repeat count not a number", _doc(repeat={"count": "two"}), "repeat.count"),
    ("window not a duration", _doc(repeat={"count": 2, "window": "a week"}),
     "repeat.window: 'a week' is not a duration"),
    ("window a bare number", _doc(repeat={"window": 7}), "repeat.window: 7 is not"),
    ("breaker nodes negative", _doc(breaker={"max_nodes": -1}), "breaker.max_nodes"),
    ("breaker percent over 100", _doc(breaker={"max_percent": 150}),
     "breaker.max_percent: 150 must be a number from 0 to 100"),
    ("nvswitch_reset unknown", _doc(nvswitch_reset="sometimes"), "nvswitch_reset"),
    ("hook command a string", _doc(rma_hook={"command": "open-ticket --now"}),
     "rma_hook.command must be a list of arguments"),
    ("hook url not http", _doc(rma_hook={"url": "file:///etc/passwd"}),
     "rma_hook.url: 'file:///etc/passwd' must be an http:// or https:// URL"),
    ("hook both", _doc(rma_hook={"command": ["t"], "url": "http://127.0.0.1/"}),
     "give command or url, not both"),
    ("hook timeout", _doc(rma_hook={"url": "http://127.0.0.1/", "timeout": "soon"}),
     "rma_hook.timeout"),
    ("default bad rung", _doc(default={"first": "wipe", "ceiling": "rma", "source": "x"}),
     "default: first: 'wipe' is not a rung"),
]


@pytest.mark.parametrize(("doc", "message"), [(d, m) for _, d, m in BAD],
                         ids=[name for name, _, _ in BAD])
def test_malformed_policy_is_one_line_naming_file_and_rule(tmp_path: Path, doc: Any,
                                                           message: str) -> None:
    path = tmp_path / "remediation.yml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(InputError) as err:
        read_policy(path)
    text = str(err.value)
    assert text.startswith(f"{path}: ") and message in text
    assert "\n" not in text


def test_duplicate_rule_names_and_invalid_yaml(tmp_path: Path) -> None:
    doc = _doc()
    doc["rules"].append(dict(doc["rules"][0]))
    with pytest.raises(InputError, match="rule 'r1': a second rule has this name"):
        parse_policy(doc, "site.yml")
    path = tmp_path / "remediation.yml"
    path.write_text("rules: [\n  - {name: x\n")
    with pytest.raises(InputError, match="not valid YAML") as err:
        read_policy(path)
    assert "\n" not in str(err.value)


def test_a_rule_may_match_several_kinds_and_severities() -> None:
    policy = parse_policy(_doc(rule={"match": {"kind": ["pcie-downgrade"],
                                               "severity": "critical"}}), "p")
    assert policy.rule_for("pcie-downgrade", "critical", None) is not None
    assert policy.rule_for("pcie-downgrade", "warning", None) is None
