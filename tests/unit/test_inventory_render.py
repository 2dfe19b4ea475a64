"""Rendering the Ansible inventory from the database, and node locks."""

from __future__ import annotations

import json
import os
import socket

import pytest
import yaml

from provisioner.db.engine import session_scope
from provisioner.db.models import Node, NodeLock, Run
from provisioner.errors import InputError
from provisioner.inventory.registry import NodeSpec, add_nodes
from provisioner.paths import Paths
from provisioner.provision import locks
from provisioner.provision.inventory import export_inventory, group_name, render_inventory
from provisioner.provision.runner import to_task_event


def _nodes(paths: Paths) -> None:
    add_nodes(paths.db_url, [
        NodeSpec(name="gpu017", address="127.0.0.17", sku="h100-sxm-8",
                 labels={"rack": "r12", "gpuctl.io/pool": "team-a"},
                 ansible_vars={"ansible_python_interpreter": "/usr/bin/python3"}),
        NodeSpec(name="gpu018", address="127.0.0.18", port=2222, user="ops", key_path="/k"),
    ])


def test_yaml_inventory_groups_and_hostvars(paths: Paths) -> None:
    _nodes(paths)
    doc = yaml.safe_load(export_inventory(paths, "yaml"))
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
    doc = json.loads(export_inventory(paths, "json"))
    assert doc["rack_r12"] == {"hosts": ["gpu017"]}
    assert doc["_meta"]["hostvars"]["gpu018"]["ansible_ssh_private_key_file"] == "/k"
    assert json.loads(export_inventory(paths, "json", state="failed"))["all"]["children"] == []


def test_group_names_are_ansible_safe() -> None:
    assert group_name("sku_h100-sxm-8") == "sku_h100_sxm_8"
    assert group_name("9rack") == "g_9rack"
    with pytest.raises(InputError, match="unknown inventory format"):
        render_inventory(None, "toml")  # type: ignore[arg-type]


def _run(paths: Paths) -> int:
    with session_scope(paths.db_url) as session:
        run = Run(kind="provision", actor="t")
        session.add(run)
        session.flush()
        assert run.id is not None
        return run.id


def test_locks_exclusive_released_and_stale_taken_over(paths: Paths) -> None:
    _nodes(paths)
    first, second = _run(paths), _run(paths)
    me = f"root@{socket.gethostname()}"
    locks.acquire(paths.db_url, {1: "gpu017"}, first, f"{me} pid {os.getpid()}")
    with pytest.raises(locks.NodeBusyError, match=f"gpu017 is held by provision run {first}"):
        locks.acquire(paths.db_url, {1: "gpu017", 2: "gpu018"}, second, "x")
    assert locks.held_nodes(paths.db_url) == {"gpu017": first}  # all or none
    locks.release(paths.db_url, first)
    assert locks.held_nodes(paths.db_url) == {}
    # A lock left by a dead process on this host is taken over.
    with session_scope(paths.db_url) as session:
        session.add(NodeLock(node_id=1, run_id=first, holder=f"{me} pid 999999999"))
    locks.acquire(paths.db_url, {1: "gpu017"}, second, f"{me} pid {os.getpid()}")
    assert locks.held_nodes(paths.db_url) == {"gpu017": second}
    with session_scope(paths.db_url) as session:
        assert session.get(Node, 1) is not None


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
