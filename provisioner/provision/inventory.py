"""Render the Ansible inventory from the database (jinja2 templates in ``templates/``).

Groups: ``sku_<sku>``, ``state_<state>`` and one per label ``<key>_<value>``, so plays
and ``--limit`` can target SKUs, racks and pools. Host variables: how to connect, the
node's SKU and expected GPU count, and the node's stored non-secret Ansible variables.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import jinja2
from sqlmodel import col, select

from provisioner import __version__
from provisioner.db.engine import redact_url
from provisioner.db.models import Node
from provisioner.errors import InputError
from provisioner.handle import Gpuctl
from provisioner.inventory.validate import check_stored_node
from provisioner.paths import Paths
from provisioner.shipped import shipped_dir

FORMATS = ("ini", "yaml", "json")


@dataclass
class Inventory:
    hostvars: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)
    all_vars: dict[str, Any] = field(default_factory=dict)

    def add(self, group: str, host: str) -> None:
        members = self.groups.setdefault(group_name(group), [])
        if host not in members:
            members.append(host)


def group_name(text: str) -> str:
    """An Ansible-safe group name: letters, digits and underscores, not starting with a
    digit."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", text)
    return name if not name[:1].isdigit() else f"g_{name}"


def known_hosts_args(paths: Paths) -> str:
    """SSH options that make Ansible use gpuctl's own known_hosts, strictly."""
    return f"-o UserKnownHostsFile={paths.known_hosts} -o StrictHostKeyChecking=yes"


def build_inventory(gc: Gpuctl, nodes: list[Node],
                    extra_all_vars: dict[str, Any] | None = None) -> Inventory:
    inv = Inventory(all_vars={"ansible_ssh_common_args": known_hosts_args(gc.paths),
                              **(extra_all_vars or {})})
    for node in nodes:
        check_stored_node(node.name, node.address)
        hv: dict[str, Any] = {"ansible_host": node.address, "ansible_port": node.port,
                              "ansible_user": node.user}
        if node.key_path:
            hv["ansible_ssh_private_key_file"] = node.key_path
        if node.sku:
            hv["gpuctl_sku"] = node.sku
            sku = gc.sku(node.sku)
            if sku is not None:
                hv["gpuctl_expected_gpus"] = sku.gpu_count
        hv.update(json.loads(node.vars_json or "{}"))
        inv.hostvars[node.name] = hv
        inv.add("gpuctl", node.name)
        if node.sku:
            inv.add(f"sku_{node.sku}", node.name)
        inv.add(f"state_{node.state}", node.name)
        for key, value in json.loads(node.labels_json).items():
            inv.add(f"{key}_{value}" if value else key, node.name)
    return inv


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(shipped_dir() / "templates"),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        autoescape=False,  # noqa: S701  (renders Ansible inventories, not HTML)
    )
    env.filters["ini_value"] = json.dumps  # INI values are parsed as Python literals
    env.filters["yaml_value"] = json.dumps
    return env


def render_inventory(inv: Inventory, fmt: str, source: str = "gpuctl") -> str:
    """The inventory as Ansible INI, YAML, or ``ansible-inventory --list`` JSON.

    Raises:
        InputError: an unknown format.
    """
    if fmt not in FORMATS:
        raise InputError(f"unknown inventory format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "json":
        doc: dict[str, Any] = {"_meta": {"hostvars": inv.hostvars},
                               "all": {"children": sorted(inv.groups), "vars": inv.all_vars}}
        for group, hosts in sorted(inv.groups.items()):
            doc[group] = {"hosts": hosts}
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"
    template = _env().get_template("inventory.ini.j2" if fmt == "ini" else "inventory.yml.j2")
    return template.render(version=__version__, source=source, groups=inv.groups,
                           hostvars=inv.hostvars, all_vars=inv.all_vars)


def export_inventory(gc: Gpuctl, fmt: str, *, state: str | None = None) -> str:
    """Render every node (or those in ``state``) as an inventory."""
    with gc.session() as session:
        query = select(Node).order_by(col(Node.name))
        if state:
            query = query.where(Node.state == state)
        nodes = list(session.exec(query))
    return render_inventory(build_inventory(gc, nodes), fmt, redact_url(gc.db_url))
