"""The remediation policy: ``inventory/remediation.yml`` (shipped), replaced whole by
``<data dir>/remediation.yml``. Each rule maps findings to the rung of the escalation
ladder they start on, the rung they may climb to, and the source that says so.

Loading validates everything; a malformed policy is one ``InputError`` line naming the
file and the rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from provisioner.errors import InputError
from provisioner.shipped import shipped_dir

# The ladder, lowest first. ``none`` is below it: no automatic action.
LADDER = ("reset", "reboot", "power-cycle", "rma")
RUNGS = ("none", *LADDER)
NVSWITCH_RESET = ("individual", "reboot")
POLICY_FILE = "remediation.yml"

_DURATION = re.compile(r"^\s*(\d{1,6})\s*(s|m|h|d)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_TOP_KEYS = {"repeat", "breaker", "nvswitch_reset", "rma_hook", "default", "rules"}
_RULE_KEYS = {"name", "match", "first", "ceiling", "source"}
_MATCH_KEYS = {"kind", "xid", "severity"}
_SEVERITIES = ("info", "warning", "critical")


def rung_index(rung: str) -> int:
    """Position on the ladder (``none`` is -1)."""
    return RUNGS.index(rung) - 1


@dataclass(frozen=True)
class Rule:
    """Findings of ``kinds`` (and for XIDs, of ``xids``; of ``severities`` when given)
    start on rung ``first`` and may climb to ``ceiling``, because ``source`` says so."""

    name: str
    kinds: frozenset[str]
    first: str
    ceiling: str
    source: str
    xids: frozenset[int] = frozenset()
    severities: frozenset[str] = frozenset()

    def matches(self, kind: str, severity: str, xid: int | None) -> bool:
        if kind not in self.kinds:
            return False
        if self.severities and severity not in self.severities:
            return False
        return not self.xids or xid in self.xids


@dataclass(frozen=True)
class BreakerLimits:
    """At most ``max_nodes`` nodes, and ``max_percent`` of a SKU's serving nodes
    (rounded up), draining or remediating at once."""

    max_nodes: int = 2
    max_percent: float = 10.0


@dataclass(frozen=True)
class RmaHook:
    """The site's ticket hook: an argv (no shell) or an http(s) URL; neither is no hook."""

    command: tuple[str, ...] = ()
    url: str = ""
    timeout_s: float = 30.0

    @property
    def configured(self) -> bool:
        return bool(self.command or self.url)


@dataclass(frozen=True)
class Policy:
    path: str  # where it was read from, for messages
    rules: tuple[Rule, ...]
    default: Rule
    repeat_count: int = 2
    repeat_window: timedelta = timedelta(days=7)
    breaker: BreakerLimits = field(default_factory=BreakerLimits)
    nvswitch_reset: str = "individual"
    rma_hook: RmaHook = field(default_factory=RmaHook)

    def rule_for(self, kind: str, severity: str, xid: int | None) -> Rule | None:
        """The first rule matching the finding, or None."""
        return next((r for r in self.rules if r.matches(kind, severity, xid)), None)


def policy_path(home: Path) -> Path:
    """The policy file in force: ``<home>/remediation.yml`` when the site has one, else
    the shipped ``inventory/remediation.yml``."""
    site = home / POLICY_FILE
    return site if site.is_file() else shipped_dir() / "inventory" / POLICY_FILE


def load_policy(home: Path) -> Policy:
    """The remediation policy for the data dir ``home`` (``gc.paths.home``).

    Raises:
        InputError: the file is not valid YAML or breaks a rule of its format; the one
            line names the file and the rule.
    """
    return read_policy(policy_path(home))


def read_policy(path: Path) -> Policy:
    """Read and validate one policy file (see ``load_policy``)."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    return parse_policy(doc, str(path))


def parse_policy(doc: Any, where: str) -> Policy:
    """Validate a loaded policy document; ``where`` names it in messages."""

    def fail(what: str) -> InputError:
        return InputError(f"{where}: {what}")

    if not isinstance(doc, dict):
        raise fail("the policy must be a mapping with 'rules'")
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise fail(f"unknown key {unknown[0]!r}; known: {', '.join(sorted(_TOP_KEYS))}")
    rules_doc = doc.get("rules")
    if not isinstance(rules_doc, list) or not rules_doc:
        raise fail("'rules' must be a non-empty list")
    rules: list[Rule] = []
    for i, item in enumerate(rules_doc, 1):
        rule = _rule(item, f"rule {i}", fail)
        if any(r.name == rule.name for r in rules):
            raise fail(f"rule {rule.name!r}: a second rule has this name")
        rules.append(rule)
    default_doc = doc.get("default", {"first": "none", "ceiling": "none",
                                      "source": "gpuctl: no rule matched"})
    if not isinstance(default_doc, dict):
        raise fail("'default' must be a mapping with first, ceiling and source")
    default = _rule({"name": "default", "match": {"kind": "*"}, **default_doc}, "default",
                    fail)
    count, window = _repeat(doc.get("repeat", {}), fail)
    nvswitch = doc.get("nvswitch_reset", "individual")
    if nvswitch not in NVSWITCH_RESET:
        raise fail(f"nvswitch_reset: {nvswitch!r} is not one of "
                   f"{', '.join(NVSWITCH_RESET)}")
    return Policy(where, tuple(rules), default, count, window,
                  _breaker(doc.get("breaker", {}), fail), nvswitch,
                  _hook(doc.get("rma_hook", {}), fail))


def parse_duration(value: Any) -> timedelta | None:
    """``7d``, ``12h``, ``30m``, ``45s`` as a timedelta; None for anything else."""
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None:
        return None
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def _strings(value: Any) -> list[str] | None:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or \
            not all(isinstance(x, str) and x.strip() for x in items):
        return None
    return [x.strip() for x in items]


def _rule(item: Any, label: str, fail: Any) -> Rule:
    if not isinstance(item, dict):
        raise fail(f"{label}: must be a mapping with name, match, first, ceiling, source")
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        raise fail(f"{label}: needs a 'name'")
    label = f"rule {name!r}" if label != "default" else "default"
    unknown = sorted(set(item) - _RULE_KEYS)
    if unknown:
        raise fail(f"{label}: unknown key {unknown[0]!r}; known: "
                   f"{', '.join(sorted(_RULE_KEYS))}")
    match = item.get("match")
    if not isinstance(match, dict):
        raise fail(f"{label}: needs 'match', a mapping with 'kind'")
    unknown = sorted(set(match) - _MATCH_KEYS)
    if unknown:
        raise fail(f"{label}: match: unknown key {unknown[0]!r}; known: "
                   f"{', '.join(sorted(_MATCH_KEYS))}")
    kinds = _strings(match.get("kind"))
    if kinds is None:
        raise fail(f"{label}: match.kind must be a finding kind or a list of them")
    xids: list[int] = []
    if "xid" in match:
        raw = match["xid"]
        xids = raw if isinstance(raw, list) else [raw]
        if not xids or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0
                               for x in xids):
            raise fail(f"{label}: match.xid must be a list of positive XID codes")
        if kinds != ["xid"]:
            raise fail(f"{label}: match.xid applies only to kind 'xid'")
    severities: list[str] = []
    if "severity" in match:
        severities = _strings(match["severity"]) or []
        if not severities or not set(severities) <= set(_SEVERITIES):
            raise fail(f"{label}: match.severity must list {', '.join(_SEVERITIES)}")
    first, ceiling = item.get("first"), item.get("ceiling")
    for key, rung in (("first", first), ("ceiling", ceiling)):
        if rung not in RUNGS:
            raise fail(f"{label}: {key}: {rung!r} is not a rung; rungs: {', '.join(RUNGS)}")
    if rung_index(str(ceiling)) < rung_index(str(first)):
        raise fail(f"{label}: ceiling {ceiling} is below first rung {first}")
    source = item.get("source")
    if not isinstance(source, str) or not source.strip():
        raise fail(f"{label}: needs a 'source' saying why (a document, or 'gpuctl: ...' "
                   "where none says)")
    return Rule(name.strip(), frozenset(kinds), str(first), str(ceiling),
                " ".join(source.split()), frozenset(xids), frozenset(severities))


def _repeat(doc: Any, fail: Any) -> tuple[int, timedelta]:
    if not isinstance(doc, dict):
        raise fail("'repeat' must be a mapping with count and window")
    count = doc.get("count", 2)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise fail(f"repeat.count: {count!r} must be a whole number of at least 1")
    window = parse_duration(doc.get("window", "7d"))
    if window is None or window <= timedelta(0):
        raise fail(f"repeat.window: {doc.get('window')!r} is not a duration "
                   "(e.g. 7d, 12h, 30m)")
    return count, window


def _breaker(doc: Any, fail: Any) -> BreakerLimits:
    if not isinstance(doc, dict):
        raise fail("'breaker' must be a mapping with max_nodes and max_percent")
    nodes = doc.get("max_nodes", 2)
    if not isinstance(nodes, int) or isinstance(nodes, bool) or nodes < 0:
        raise fail(f"breaker.max_nodes: {nodes!r} must be a whole number, 0 or more")
    percent = doc.get("max_percent", 10)
    if not isinstance(percent, int | float) or isinstance(percent, bool) or \
            not 0 <= percent <= 100:
        raise fail(f"breaker.max_percent: {percent!r} must be a number from 0 to 100")
    return BreakerLimits(nodes, float(percent))


def _hook(doc: Any, fail: Any) -> RmaHook:
    if not isinstance(doc, dict):
        raise fail("'rma_hook' must be a mapping with command or url")
    command = doc.get("command") or []
    if not isinstance(command, list) or not all(isinstance(a, str) and a for a in command):
        raise fail("rma_hook.command must be a list of arguments (run without a shell)")
    url = doc.get("url") or ""
    if not isinstance(url, str):
        raise fail("rma_hook.url must be a string")
    if url:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise fail(f"rma_hook.url: {url!r} must be an http:// or https:// URL")
    if command and url:
        raise fail("rma_hook: give command or url, not both")
    timeout = parse_duration(doc.get("timeout", "30s"))
    if timeout is None or timeout <= timedelta(0):
        raise fail(f"rma_hook.timeout: {doc.get('timeout')!r} is not a duration (e.g. 30s)")
    return RmaHook(tuple(command), url, timeout.total_seconds())
