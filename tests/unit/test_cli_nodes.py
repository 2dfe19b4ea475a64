"""``gpuctl init`` and ``gpuctl nodes ...`` as a user runs them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from tests.conftest import DATA


def test_init_creates_database(gpuctl, gpuctl_home) -> None:  # type: ignore[no-untyped-def]
    result = gpuctl("init")
    assert result.code == 0, result
    assert (gpuctl_home / "gpuctl.db").exists()
    assert gpuctl("init").code == 0  # idempotent


def test_add_list_show_label_remove(gpuctl) -> None:  # type: ignore[no-untyped-def]
    assert gpuctl("nodes", "add", "gpu017", "--address", "127.0.0.17", "--key", "/k",
                  "--label", "rack=r12", "--sku", "h100-sxm-8").code == 0
    assert gpuctl("nodes", "add", "gpu018", "--address", "127.0.0.18").code == 0
    listed = json.loads(gpuctl("nodes", "list", "--json").out)
    assert [(n["name"], n["state"], n["labels"]) for n in listed] == [
        ("gpu017", "registered", {"rack": "r12"}), ("gpu018", "registered", {})]
    only = json.loads(gpuctl("nodes", "list", "--label", "rack=r12", "--json").out)
    assert [n["name"] for n in only] == ["gpu017"]
    assert json.loads(gpuctl("nodes", "list", "--sku", "h100-sxm-8", "--json").out)[0][
        "name"] == "gpu017"
    assert json.loads(gpuctl("nodes", "list", "--state", "quarantined", "--json").out) == []
    table = gpuctl("nodes", "list").out
    assert "gpu017" in table and "127.0.0.17:22" in table and "rack=r12" in table

    assert gpuctl("nodes", "label", "gpu017", "--set", "pool=a", "--remove", "rack").code == 0
    detail = json.loads(gpuctl("nodes", "show", "gpu017", "--json").out)
    assert detail["node"]["labels"] == {"pool": "a"}
    assert [e["reason"] for e in detail["events"]] == [
        "node registered at 127.0.0.17:22", "labels pool=a -rack"]
    assert "never scanned" in gpuctl("nodes", "show", "gpu017").out

    assert gpuctl("nodes", "remove", "gpu017", "--yes").code == 0
    assert [n["name"] for n in json.loads(gpuctl("nodes", "list", "--json").out)] == ["gpu018"]


def test_duplicate_add_refused_unless_replace(gpuctl) -> None:  # type: ignore[no-untyped-def]
    gpuctl("nodes", "add", "gpu1", "--address", "127.0.0.1")
    again = gpuctl("nodes", "add", "gpu1", "--address", "127.0.0.2")
    assert again.code == 1 and "already registered: gpu1" in again.err
    assert gpuctl("nodes", "add", "gpu1", "--address", "127.0.0.2", "--replace").code == 0
    assert json.loads(gpuctl("nodes", "list", "--json").out)[0]["address"] == "127.0.0.2"


def test_hostile_host_is_a_one_line_error(gpuctl) -> None:  # type: ignore[no-untyped-def]
    for bad in ("-oProxyCommand=touch /tmp/x", "a;reboot", "x" * 300, "a\nb"):
        result = gpuctl("nodes", "add", "--", bad)
        assert result.code == 1, result
        assert result.err.startswith("Error: node name"), result
        assert "Traceback" not in result.err and len(result.err.strip().splitlines()) == 1
        via_address = gpuctl("nodes", "add", "gpu1", "--address", bad)
        assert via_address.code == 1 and via_address.err.startswith("Error: address"), \
            via_address
    assert json.loads(gpuctl("nodes", "list", "--json").out) == []


def test_import_formats_and_bad_file(gpuctl) -> None:  # type: ignore[no-untyped-def]
    inv = DATA / "inventories"
    assert gpuctl("nodes", "import", str(inv / "good.yml")).code == 0
    bad = gpuctl("nodes", "import", str(inv / "bad.csv"))
    assert bad.code == 1 and "3 bad lines, nothing imported" in bad.err
    assert "line 3:" in bad.err and "Traceback" not in bad.err
    assert len(json.loads(gpuctl("nodes", "list", "--json").out)) == 4


def test_unknown_node_and_usage_errors(gpuctl) -> None:  # type: ignore[no-untyped-def]
    missing = gpuctl("nodes", "show", "nope")
    assert missing.code == 1 and "no node named 'nope'" in missing.err
    assert gpuctl("nodes", "list", "--state", "bogus").code == 2
    assert gpuctl("scan").code == 1  # neither nodes nor --all


def test_bad_database_url_is_one_line(gpuctl, tmp_path) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "dir-not-db"
    target.mkdir()
    result = gpuctl("--db", str(target), "nodes", "list")
    assert result.code == 1 and result.err.startswith(f"Error: database {target} is a "
                                                      "directory"), result
    assert len(result.err.strip().splitlines()) == 1


def test_nodes_list_at_80_columns_keeps_names_and_states_whole(gpuctl, gc, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from tests.fleet_fixtures import fill_fleet

    fill_fleet(gc.db_url, 6, prefix="gpu-rack12-node-")
    monkeypatch.setenv("COLUMNS", "80")
    table = gpuctl("nodes", "list").out
    assert max(len(line) for line in table.splitlines()) <= 80, table
    for i, state in enumerate(("in-service", "certified", "quarantined", "provisioned",
                               "failed", "drained")):
        row = next(line for line in table.splitlines() if f"gpu-rack12-node-0000{i}" in line)
        assert f" {state} " in row, (state, table)


def test_list_and_show_count_gpus_the_same_way(gpuctl, gc) -> None:  # type: ignore[no-untyped-def]
    """Before a driver, both count the GPUs on the PCI bus (list said 2 where show said
    0 for the same node)."""
    from provisioner.db.models import HardwareSnapshot, Node

    assert gpuctl("nodes", "add", "gpu1", "--address", "127.0.0.21").code == 0
    with gc.session() as session:
        node = session.exec(Node.__table__.select()).first()  # type: ignore[attr-defined]
        snap = HardwareSnapshot(node_id=node.id, gpu_count=0, pci_gpu_count=2)
        session.add(snap)
        session.flush()
        stored = session.get(Node, node.id)
        stored.last_snapshot_id = snap.id  # type: ignore[union-attr]
        session.add(stored)
    listed = json.loads(gpuctl("nodes", "list", "--json").out)[0]["gpus"]
    shown = json.loads(gpuctl("nodes", "show", "gpu1", "--json").out)["node"]["gpus"]
    assert listed == shown == 2


def test_sigterm_unwinds_like_ctrl_c() -> None:
    """systemctl stop (SIGTERM) ends a command the way Ctrl-C does: its cleanups run
    (a hand-off drains what it was verifying, a run settles its nodes), then exit 143
    with one line, not a silent death half way."""
    proc = subprocess.Popen([sys.executable, "-m", "provisioner", "monitor", "--every",
                             "1h"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        time.sleep(3)  # past its first pass, asleep until the next
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143, (out, err)
    assert err.strip().splitlines()[-1] == "Terminated.", err
