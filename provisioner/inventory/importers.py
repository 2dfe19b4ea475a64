"""Parsers for the inventory files admins already have: Ansible INI, Ansible YAML, CSV.

Each parser returns every host as a validated :class:`NodeSpec`, or raises one
InputError that lists every bad line with its number, so an import is all-or-nothing.
Secrets in the file (``ansible_password``, ``ansible_become_pass``...) are never kept.
"""

from __future__ import annotations

import csv
import io
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from provisioner.errors import InputError
from provisioner.handle import Gpuctl
from provisioner.inventory.registry import NodeSpec, add_nodes
from provisioner.inventory.validate import SECRET_VARS, check_port, parse_label

MAX_INVENTORY_BYTES = 10 * 1024 * 1024
MAX_HOSTS = 100_000
MAX_GROUP_DEPTH = 64


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without aliases: ``*anchor`` lets 1 KB expand to gigabytes (each level of
    aliases multiplies the next) or refer to itself, and an inventory has no need of
    them. The composer refuses the first one, with its line."""

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not accepted in an inventory",
                event.start_mark)
        return super().compose_node(parent, index)

CONNECTION_VARS = frozenset({"ansible_host", "ansible_port", "ansible_user",
                             "ansible_ssh_private_key_file"})
# Host variables that describe the node's BMC (NodeSpec's bmc_* fields).
BMC_VARS = {"gpuctl_bmc": "bmc_url", "gpuctl_bmc_user": "bmc_user",
            "gpuctl_bmc_password_from": "bmc_password_from", "gpuctl_bmc_ca": "bmc_ca"}
# A BMC password written into an inventory: refused, never kept (and never echoed).
BMC_SECRET_VARS = frozenset({"gpuctl_bmc_password", "bmc_password"})
_RANGE = re.compile(r"\[([0-9]+|[a-z]):([0-9]+|[a-z])\]")
_SECTION = re.compile(r"^\[([^\]:\s]+)(?::(vars|children))?\]$")


@dataclass
class _Host:
    line: int
    vars: dict[str, str] = field(default_factory=dict)
    groups: list[str] = field(default_factory=list)


class _Errors:
    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[tuple[int, str]] = []

    def add(self, line: int, message: str) -> None:
        self.items.append((line, message))

    def raise_if_any(self) -> None:
        if not self.items:
            return
        items = sorted(self.items)
        if len(items) == 1:  # one problem, one line
            raise InputError(f"{self.source}: line {items[0][0]}: {items[0][1]}; nothing "
                             "imported")
        # Several: every bad line listed, so one fix-up pass repairs the file.
        head = f"{self.source}: {len(items)} bad lines, nothing imported"
        raise InputError(head + "".join(f"\n  line {n}: {msg}" for n, msg in items[:50]) + (
            f"\n  (+{len(items) - 50} more)" if len(items) > 50 else ""))


MAX_PATTERN_HOSTS = 10000


def expand_host_pattern(pattern: str) -> list[str]:
    """Expand Ansible ranges: ``gpu[01:03]`` -> gpu01, gpu02, gpu03.

    Raises:
        InputError: a malformed or reversed range, or ranges that together expand past
            10,000 hosts (``gpu[0:9999][0:9999]`` is refused before expanding anything).
    """
    total = 1
    for start, end in _RANGE.findall(pattern):
        if start.isdigit() and end.isdigit():
            total *= max(0, int(end) - int(start) + 1)
        elif not start.isdigit() and not end.isdigit():
            total *= max(0, ord(end) - ord(start) + 1)
        if total > MAX_PATTERN_HOSTS:
            raise InputError(f"host pattern {pattern[:60]!r} expands past "
                             f"{MAX_PATTERN_HOSTS} hosts")
    return _expand(pattern)


def _expand(pattern: str) -> list[str]:
    match = _RANGE.search(pattern)
    if not match:
        return [pattern]
    start, end = match.groups()
    if start.isdigit() != end.isdigit():
        raise InputError(f"range [{start}:{end}] mixes letters and numbers")
    if start.isdigit():
        lo, hi, width = int(start), int(end), len(start)
        if hi < lo:
            raise InputError(f"range [{start}:{end}] is reversed")
        values = [str(i).zfill(width) for i in range(lo, hi + 1)]
    else:
        if end < start:
            raise InputError(f"range [{start}:{end}] is reversed")
        values = [chr(c) for c in range(ord(start), ord(end) + 1)]
    prefix, suffix = pattern[: match.start()], pattern[match.end():]
    out: list[str] = []
    for value in values:
        out.extend(_expand(prefix + value + suffix))
    return out


def _spec_from_vars(name: str, hvars: dict[str, str], groups: list[str]) -> NodeSpec:
    labels: dict[str, str] = {}
    if groups:
        labels["group"] = ",".join(g for g in groups if g not in ("all", "ungrouped"))[:63]
        if not labels["group"]:
            del labels["group"]
    sku = None
    ansible_vars: dict[str, str] = {}
    bmc: dict[str, str] = {}
    for key, value in hvars.items():
        if key in ("gpuctl_sku", "sku"):
            sku = value
        elif key in BMC_VARS:
            bmc[BMC_VARS[key]] = value
        elif key in BMC_SECRET_VARS:
            raise InputError(f"{key}: a BMC password is never stored; name where it is "
                             "with gpuctl_bmc_password_from=env:VARIABLE or file:PATH")
        elif key in CONNECTION_VARS or key in SECRET_VARS:
            continue
        elif key.startswith("ansible_"):
            ansible_vars[key] = value
        else:
            k, v = parse_label(f"{key}={value}")
            labels[k] = v
    return NodeSpec(
        name=name,
        address=hvars.get("ansible_host"),
        port=check_port(hvars.get("ansible_port", 22)),
        user=hvars.get("ansible_user", "root"),
        key_path=hvars.get("ansible_ssh_private_key_file"),
        labels=labels,
        sku=sku,
        ansible_vars=ansible_vars,
        **bmc,
    )


def _group_closure(children: dict[str, list[str]], group: str) -> set[str]:
    seen, stack = set(), [group]
    while stack:
        g = stack.pop()
        if g in seen:
            continue
        seen.add(g)
        stack.extend(children.get(g, []))
    return seen


def _build_specs(
    hosts: dict[str, _Host],
    group_vars: dict[str, dict[str, str]],
    children: dict[str, list[str]],
    errors: _Errors,
) -> list[NodeSpec]:
    if len(hosts) > MAX_HOSTS:
        raise InputError(f"{errors.source}: {len(hosts)} hosts; at most {MAX_HOSTS} per "
                         "import (split the file)")
    closures = {group: _group_closure(children, group) for group in group_vars}
    specs = []
    for name, host in hosts.items():
        merged: dict[str, str] = {}
        for group, gvars in group_vars.items():
            if group == "all" or closures[group] & set(host.groups):
                merged.update(gvars)
        merged.update(host.vars)
        try:
            specs.append(_spec_from_vars(name, merged, host.groups))
        except InputError as exc:
            errors.add(host.line, str(exc))
    return specs


def parse_ini(text: str, source: str = "inventory") -> list[NodeSpec]:
    """Parse an Ansible INI inventory."""
    errors = _Errors(source)
    hosts: dict[str, _Host] = {}
    group_vars: dict[str, dict[str, str]] = {}
    children: dict[str, list[str]] = {}
    group, mode = "ungrouped", "hosts"
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            match = _SECTION.match(line)
            if not match:
                errors.add(number, f"malformed section header {line[:60]!r}")
                # Keep checking the lines below it, so that every bad line is reported.
                group, mode = "ungrouped", "hosts"
                continue
            group, mode = match.group(1), match.group(2) or "hosts"
            continue
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as exc:
            errors.add(number, f"cannot parse ({exc})")
            continue
        if mode == "children":
            children.setdefault(group, []).append(tokens[0])
            continue
        if mode == "vars":
            key, sep, value = line.partition("=")
            if not sep or not key.strip():
                errors.add(number, "group variable must be key=value")
            else:
                group_vars.setdefault(group, {})[key.strip()] = value.strip().strip("'\"")
            continue
        pattern, assignments = tokens[0], tokens[1:]
        hvars: dict[str, str] = {}
        bad = [a for a in assignments if "=" not in a]
        if bad:
            errors.add(number, f"expected key=value after the host, got {bad[0][:40]!r}")
            continue
        for assignment in assignments:
            key, value = assignment.split("=", 1)
            hvars[key] = value
        try:
            names = expand_host_pattern(pattern)
        except InputError as exc:
            errors.add(number, str(exc))
            continue
        for name in names:
            host = hosts.setdefault(name, _Host(line=number))
            host.vars.update(hvars)
            if group not in host.groups:
                host.groups.append(group)
    specs = _build_specs(hosts, group_vars, children, errors)
    errors.raise_if_any()
    return specs


def _scalar(node: yaml.Node) -> str:
    if not isinstance(node, yaml.ScalarNode):
        raise InputError("expected a plain value")
    return str(node.value)


def _mapping(node: yaml.Node | None) -> Iterable[tuple[yaml.Node, yaml.Node]]:
    if node is None or (isinstance(node, yaml.ScalarNode) and node.value in ("", "null", "~")):
        return []
    if not isinstance(node, yaml.MappingNode):
        raise InputError("expected a mapping")
    return node.value


def parse_yaml(text: str, source: str = "inventory") -> list[NodeSpec]:
    """Parse an Ansible YAML inventory (``all: {hosts:, children:, vars:}``)."""
    errors = _Errors(source)
    try:
        root = yaml.compose(text, Loader=_NoAliasLoader)
    except RecursionError:
        errors.add(1, "nested too deeply")
        errors.raise_if_any()
        return []
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        errors.add(mark.line + 1 if mark else 1, f"not valid YAML ({getattr(exc, 'problem', exc)})")
        errors.raise_if_any()
        return []
    hosts: dict[str, _Host] = {}
    group_vars: dict[str, dict[str, str]] = {}
    children: dict[str, list[str]] = {}

    def walk_group(name: str, node: yaml.Node, depth: int = 0) -> None:
        if depth > MAX_GROUP_DEPTH:
            raise InputError(f"groups nested more than {MAX_GROUP_DEPTH} deep")
        for key_node, value_node in _mapping(node):
            line = key_node.start_mark.line + 1
            try:
                key = _scalar(key_node)
                if key == "hosts":
                    for host_key, host_val in _mapping(value_node):
                        hname = _scalar(host_key)
                        hvars = {_scalar(k): _scalar(v) for k, v in _mapping(host_val)}
                        for expanded in expand_host_pattern(hname):
                            host = hosts.setdefault(
                                expanded, _Host(line=host_key.start_mark.line + 1))
                            host.vars.update(hvars)
                            if name not in host.groups:
                                host.groups.append(name)
                elif key == "vars":
                    group_vars.setdefault(name, {}).update(
                        {_scalar(k): _scalar(v) for k, v in _mapping(value_node)})
                elif key == "children":
                    for child_key, child_val in _mapping(value_node):
                        child = _scalar(child_key)
                        children.setdefault(name, []).append(child)
                        walk_group(child, child_val, depth + 1)
                else:
                    errors.add(line, f"unknown key {key[:40]!r} in group {name!r} "
                                     "(expected hosts, vars or children)")
            except InputError as exc:
                errors.add(line, str(exc))

    try:
        top = list(_mapping(root))
    except InputError:
        errors.add(1, "the top level must be a mapping of groups such as 'all:'")
        top = []
    for key_node, value_node in top:
        try:
            walk_group(_scalar(key_node), value_node)
        except InputError as exc:
            errors.add(key_node.start_mark.line + 1, str(exc))
    specs = _build_specs(hosts, group_vars, children, errors)
    errors.raise_if_any()
    return specs


CSV_COLUMNS = ("name", "address", "port", "user", "key", "sku", "labels", "bmc", "bmc_user",
               "bmc_password_from", "bmc_ca")


def parse_csv(text: str, source: str = "inventory") -> list[NodeSpec]:
    """Parse a CSV with a header row: name (required), address, port, user, key, sku,
    labels (``k=v`` pairs separated by ``;`` or spaces), and the node's BMC: bmc (its
    https Redfish URL), bmc_user, bmc_password_from (env:VARIABLE or file:PATH), bmc_ca."""
    errors = _Errors(source)
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in reader.fieldnames or []]
    unknown = [h for h in header if h not in CSV_COLUMNS]
    if "name" not in header or unknown:
        errors.add(1, f"header must name columns from {', '.join(CSV_COLUMNS)} including "
                      f"'name'" + (f"; unknown: {', '.join(unknown)[:80]}" if unknown else ""))
        errors.raise_if_any()
    reader.fieldnames = header
    specs = []
    try:
        for row in reader:
            line = reader.line_num
            if None in row:
                errors.add(line, "more fields than the header has columns")
                continue
            values = {k: (v or "").strip() for k, v in row.items()}
            try:
                labels = dict(parse_label(p) for p in re.split(r"[;\s]+", values.get("labels", ""))
                              if p)
                specs.append(NodeSpec(
                    name=values["name"], address=values.get("address") or None,
                    port=values.get("port") or 22,  # type: ignore[arg-type]
                    user=values.get("user") or "root", key_path=values.get("key") or None,
                    sku=values.get("sku") or None, labels=labels,
                    bmc_url=values.get("bmc") or None, bmc_user=values.get("bmc_user") or None,
                    bmc_password_from=values.get("bmc_password_from") or None,
                    bmc_ca=values.get("bmc_ca") or None,
                ))
            except InputError as exc:
                errors.add(line, str(exc))
    except csv.Error as exc:
        errors.add(reader.line_num, f"not valid CSV ({exc})")
    errors.raise_if_any()
    return specs


def read_bounded(path: Path, limit: int = MAX_INVENTORY_BYTES) -> bytes:
    """At most ``limit`` bytes of ``path``, whatever it is (a file, /dev/stdin, a pipe,
    /dev/zero): the cap applies to what is read, not to what stat() says.

    Raises:
        InputError: more than ``limit`` bytes, or unreadable.
    """
    try:
        with path.open("rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise InputError(f"{path}: more than {limit // (1024 * 1024)} MiB is too large for "
                         "an inventory")
    return data


def parse_inventory_file(path: Path) -> list[NodeSpec]:
    """Read ``path`` and parse it by extension (.ini/.cfg/none, .yml/.yaml, .csv).

    Raises:
        InputError: unreadable, too large, not text, or any bad line.
    """
    if path.is_dir():
        raise InputError(f"{path} is a directory, not an inventory file")
    try:
        text = read_bounded(path).decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    if "\x00" in text:
        raise InputError(f"{path}: not a text file (NUL bytes)")
    suffix = path.suffix.lower()
    if suffix in (".yml", ".yaml"):
        specs = parse_yaml(text, str(path))
    elif suffix == ".csv":
        specs = parse_csv(text, str(path))
    else:
        specs = parse_ini(text, str(path))
    if not specs:
        raise InputError(f"{path}: no hosts found")
    return specs


def import_nodes(gc: Gpuctl, path: Path, *, replace: bool = False) -> list[str]:
    """Parse an Ansible INI/YAML or CSV inventory and register every host in it.

    Raises:
        InputError: the file is unreadable or any line is bad; nothing is imported.
    """
    return add_nodes(gc, parse_inventory_file(path), replace=replace)
