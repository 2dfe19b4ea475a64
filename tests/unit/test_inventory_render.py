"""Rendering the Ansible inventory from the database."""

from __future__ import annotations

import json

import pytest
import yaml

from provisioner.errors import InputError
from provisioner.handle import Gpuctl
from provisioner.inventory.registry import NodeSpec, add_nodes
from provisioner.paths import Paths
from provisioner.provision.inventory import export_inventory, group_name, render_inventory
from provisioner.provision.runner import to_task_event


def _nodes(paths: Paths) -> None:
    add_nodes(Gpuctl(paths), [
        NodeSpec(name="gpu017", address="127.0.0.17", sku="h100-sxm-8",
                 labels={"rack": "r12", "gpuctl.io/pool": "team-a"},
                 ansible_vars={"ansible_python_interpreter": "/usr/bin/python3"}),
        NodeSpec(name="gpu018", address="127.0.0.18", port=2222, user="ops", key_path="/k"),
    ])


def test_yaml_inventory_groups_and_hostvars(paths: Paths) -> None:
    _nodes(paths)
    doc = yaml.safe_load(export_inventory(Gpuctl(paths), "yaml"))
    children = doc["all"]["children"]
    assert set(children) == {"gpuctl", "sku_h100_sxm_8", "rack_r12",
                             "gpuctl_io_pool_team_a", "state_registered"}
    h17 = children["sku_h100_sxm_8"]["hosts"]["gpu017"]
    assert h17["ansible_host"] == "127.0.0.17" and h17["gpuctl_expected_gpus"] == 8
    assert h17["ansible_python_interpreter"] == "/usr/bin/python3"
    h18 = children["gpuctl"]["hosts"]["gpu018"]
    assert (h18["ansible_port"], h18["ansible_user"]) == (2222, "ops")
    assert "StrictHostKeyChecking=yes" in doc["all"]["vars"]["ansible_ssh_common_args"]


def test_json_matches_ansible_inventory_list_shape(paths: Paths) -> None:
    _nodes(paths)
    doc = json.loads(export_inventory(Gpuctl(paths), "json"))
    assert doc["rack_r12"] == {"hosts": ["gpu017"]}
    assert doc["_meta"]["hostvars"]["gpu018"]["ansible_ssh_private_key_file"] == "/k"
    failed = json.loads(export_inventory(Gpuctl(paths), "json", state="failed"))
    assert failed["all"]["children"] == []


def test_group_names_are_ansible_safe() -> None:
    assert group_name("sku_h100-sxm-8") == "sku_h100_sxm_8"
    assert group_name("9rack") == "g_9rack"
    with pytest.raises(InputError, match="unknown inventory format"):
        render_inventory(None, "toml")  # type: ignore[arg-type]


def test_runner_events_become_task_results() -> None:
    ok = to_task_event({"event": "runner_on_ok", "event_data": {
        "host": "n1", "task": "Install x", "role": "driver", "task_action": "apt",
        "res": {"changed": True}, "duration": 1.5}})
    assert ok is not None and (ok.status, ok.seconds, ok.role) == ("changed", 1.5, "driver")
    failed = to_task_event({"event": "runner_on_failed", "event_data": {
        "host": "n1", "task": "t", "res": {"msg": "boom", "stderr": "E: x" * 1000}}})
    assert failed is not None and failed.status == "failed"
    assert failed.message.startswith("boom | E: x") and len(failed.message) == 2000
    ignored = to_task_event({"event": "runner_on_failed", "event_data": {
        "host": "n1", "task": "t", "ignore_errors": True, "res": {"msg": "x"}}})
    assert ignored is not None and ignored.status == "ok"
    assert to_task_event({"event": "playbook_on_stats", "event_data": {}}) is None
