"""Lifecycle operations, pools, status and hand-off on a database filled directly."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from sqlmodel import select

from provisioner.db.models import Event, Node, NodeLock, Run
from provisioner.errors import InputError, TransitionError
from provisioner.fleet import handoff as ho
from provisioner.fleet import ops, pools
from provisioner.fleet.status import fleet_status
from provisioner.handle import Gpuctl
from provisioner.slurm.render import render_slurm
from provisioner.targets.ansible import render_ansible
from provisioner.targets.k8s import render_k8s
from provisioner.targets.prometheus import render_prometheus
from tests.fleet_fixtures import fill_fleet

# fill_fleet cycles states: gpu00000 in-service, 01 certified, 02 quarantined,
# 03 provisioned, 04 failed, 05 drained, 06 in-service, 07 certified, ...


@pytest.fixture
def fleet(gc: Gpuctl) -> Gpuctl:
    fill_fleet(gc.db_url, 12, expired_every=6)  # gpu00000 and gpu00006 expired
    return gc


def _state(gc: Gpuctl, name: str) -> str:
    with gc.session() as session:
        return session.exec(select(Node.state).where(Node.name == name)).one()


def test_drain_and_undrain_return_to_the_previous_state(fleet: Gpuctl) -> None:
    assert [c.to_state for c in ops.apply(fleet, "drain", ["gpu00001", "gpu00006"],
                                          "PSU swap")] == ["drained", "drained"]
    ops.apply(fleet, "undrain", ["gpu00001", "gpu00006"])
    assert _state(fleet, "gpu00001") == "certified"
    assert _state(fleet, "gpu00006") == "in-service"
    with fleet.session() as session:
        reasons = session.exec(select(Event.reason).where(
            Event.to_state == "drained", Event.actor != "fixture")).all()
    assert all(r == "drain: PSU swap" for r in reasons) and len(reasons) == 2


def test_illegal_transitions_are_refused_listing_the_allowed_ones(fleet: Gpuctl) -> None:
    with pytest.raises(TransitionError, match=r"gpu00004 cannot drain from failed \(to "
                       r"drained\); allowed from failed: burning-in, discovered, "):
        ops.apply(fleet, "drain", ["gpu00001", "gpu00004"])
    assert _state(fleet, "gpu00001") == "certified"  # all or nothing
    with pytest.raises(TransitionError, match="gpu00001 is certified, not drained"):
        ops.apply(fleet, "undrain", ["gpu00001"])
    ops.apply(fleet, "retire", ["gpu00003"])
    with pytest.raises(TransitionError, match=r"allowed from retired: none \(final state\)"):
        ops.apply(fleet, "release", ["gpu00003"], "oops")


def test_quarantine_and_release_need_a_reason(fleet: Gpuctl) -> None:
    with pytest.raises(InputError, match="quarantine needs --reason"):
        ops.apply(fleet, "quarantine", ["gpu00001"], "  ")
    ops.apply(fleet, "quarantine", ["gpu00001"], "users report NaNs on GPU 3")
    assert _state(fleet, "gpu00001") == "quarantined"
    ops.apply(fleet, "release", ["gpu00001"], "GPU 3 replaced")
    assert _state(fleet, "gpu00001") == "discovered"


def test_nodes_held_by_a_run_are_refused(fleet: Gpuctl) -> None:
    with fleet.session() as session:
        node = session.exec(select(Node).where(Node.name == "gpu00001")).one()
        run = Run(kind="burnin", actor="t")
        session.add(run)
        session.flush()
        session.add(NodeLock(node_id=node.id, run_id=run.id, holder="t"))  # type: ignore[arg-type]
    with pytest.raises(TransitionError, match="gpu00001 is held by run"):
        ops.apply(fleet, "drain", ["gpu00001"])


def test_pools_slice_certified_capacity(fleet: Gpuctl) -> None:
    pools.create_pool(fleet, "llm", "h100-sxm-8", 16, accounts=["llm,llm-ops"])
    pools.create_pool(fleet, "vision", "h100-sxm-8", 6, open_to_all=True)
    for bad, msg in ((("Bad_Name", "h100-sxm-8", 8), "lower-case"),
                     # re.match with $ took a trailing newline (issue 20)
                     (("team\n", "h100-sxm-8", 8), "lower-case"),
                     (("x", "h900", 8), "unknown SKU"), (("x", "h100-sxm-8", 0), "at least 1"),
                     (("llm", "h100-sxm-8", 8), "pool llm exists")):
        with pytest.raises(InputError, match=msg):
            pools.create_pool(fleet, *bad, open_to_all=True)
    for access, msg in (({}, "say who may use the pool"),
                        ({"accounts": ["a b"]}, "account 'a b' is not"),
                        ({"accounts": ["ok", "x\nMaxTime=1"]}, "account 'x.nMaxTime=1'"),
                        ({"groups": ["Wheel"]}, "group 'Wheel'"),
                        ({"groups": ["g"], "open_to_all": True}, "--open is a pool for")):
        with pytest.raises(InputError, match=msg):
            pools.create_pool(fleet, "x", "h100-sxm-8", 8, **access)  # type: ignore[arg-type]
    view = pools.get_pool(fleet, "llm")
    assert (view.accounts, view.groups) == (["llm", "llm-ops"], [])
    assert pools.assign(fleet, "llm", [], None) == ["gpu00000[0-7]", "gpu00001[0-7]"]
    with pytest.raises(InputError, match="pool llm has 0 of 16 GPUs left"):
        pools.assign(fleet, "llm", ["gpu00006"], 8)
    assert pools.assign(fleet, "vision", ["gpu00006"], 4) == ["gpu00006[0-3]"]
    assert pools.assign(fleet, "vision", ["gpu00006"], 2) == ["gpu00006[4-5]"]
    with pytest.raises(InputError, match="only certified or in-service nodes join pools"):
        pools.assign(fleet, "vision", ["gpu00002"], 1)
    with pytest.raises(InputError, match="--gpus must be one of 1, 2, 4, 8"):
        pools.assign(fleet, "vision", ["gpu00007"], 3)
    # A quarantined node's slices stop counting as usable; retiring frees them.
    ops.apply(fleet, "quarantine", ["gpu00001"], "fan failure")
    views = {p.name: p for p in pools.list_pools(fleet)}
    assert (views["llm"].assigned, views["llm"].usable) == (16, 8)
    assert (views["vision"].assigned, views["vision"].usable) == (6, 6)
    ops.apply(fleet, "retire", ["gpu00001"], "fan failure")
    assert pools.release(fleet, "vision", ["gpu00006"]) == 6
    views = {p.name: p for p in pools.list_pools(fleet)}
    status = fleet_status(fleet)
    assert views["llm"].assigned == 8 and views["vision"].assigned == 0
    assert [(p["name"], p["assigned"], p["usable"]) for p in status["pools"]] == [
        ("llm", 8, 8), ("vision", 0, 0)]


def test_status_counts_and_flags_expired_certificates(fleet: Gpuctl) -> None:
    s = fleet_status(fleet, now=datetime.now(UTC))
    assert s["nodes"] == 12 and s["gpus"] == 96
    assert s["states"] == {"in-service": 2, "certified": 2, "quarantined": 2,
                           "provisioned": 2, "failed": 2, "drained": 2}
    assert s["skus"] == [{"sku": "h100-sxm-8", "nodes": 12, "gpus": 96,
                          "certified_gpus": 32, "in_service_gpus": 16}]
    assert s["certification"]["expired"] == 2
    attention = {a["node"]: a["reason"] for a in s["attention"]["nodes"]}
    assert s["attention"]["total"] == 6
    assert attention["gpu00000"].startswith("certificate expired")
    assert attention["gpu00002"] == "burn-in failed: xid on GPU 3: XID 79"
    assert s["last_runs"]["burnin"]["status"] == "ok"


def test_slurm_handoff(fleet: Gpuctl, tmp_path: Path) -> None:
    with fleet.session() as session:
        chosen, skipped = ho.select_handoff(session, fleet.skus(), [], None)
    # gpu00000 and gpu00006 have expired certificates: left out, with the reason.
    assert [n.name for n in chosen] == ["gpu00001", "gpu00007"]
    assert [s.split(":")[0] for s in skipped] == ["gpu00000", "gpu00006"]
    assert all(re.fullmatch(r"gpu0000[06]: certificate expired \d{4}-\d\d-\d\d; re-run "
                            r"burn-in", s) for s in skipped), skipped
    files = render_slurm(chosen, "h100")
    lines = files["slurm.conf"].splitlines()
    assert lines[1] == "GresTypes=gpu"
    assert lines[2] == ("NodeName=gpu00001 NodeAddr=127.1.0.1 CPUs=384 Boards=1 "
                        "SocketsPerBoard=2 CoresPerSocket=96 ThreadsPerCore=2 "
                        "RealMemory=2034237 Gres=gpu:h100:8 Features=h100,h100-sxm-8,"
                        "rack_r000 State=UNKNOWN")
    assert lines[-1] == ("PartitionName=h100 Nodes=gpu00001,gpu00007 Default=NO "
                         "MaxTime=INFINITE State=UP")
    assert "NodeName=gpu00007 Name=gpu Type=h100 File=/dev/nvidia[0-7]" in files["gres.conf"]


def test_handoff_cli_moves_certified_nodes_in_service(fleet: Gpuctl, gpuctl, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "slurm"
    result = gpuctl("handoff", "slurm", "-o", str(out), "--dry-run")
    assert result.code == 0 and (out / "slurm.conf").is_file()
    assert _state(fleet, "gpu00001") == "certified"
    result = gpuctl("handoff", "slurm", "-o", str(out))
    assert "skipped gpu00000: certificate expired" in result.err
    said = " ".join(result.err.split())  # the terminal wraps it where the path ends
    assert "2 nodes" in said and "2 moved to in-service" in said, result
    assert _state(fleet, "gpu00001") == "in-service"
    runs = json.loads(gpuctl("runs", "list", "--kind", "handoff", "--json").out)
    assert [(r["status"], r["summary"]["moved"]) for r in runs] == [("ok", 2), ("ok", 0)]
    result = gpuctl("handoff", "k8s", "gpu00002")
    assert result.code == 1 and "gpu00002: quarantined, not certified" in result.err


LABEL_NAME = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def test_k8s_labels_are_valid_kubernetes_labels(fleet: Gpuctl) -> None:
    with fleet.session() as session:
        chosen, _ = ho.select_handoff(session, fleet.skus(), [], None)
    chosen[0].gpu_model = "NVIDIA H100 80GB HBM3 (weird/name) " + "x" * 80
    doc = yaml.safe_load(render_k8s(chosen))
    assert doc["kind"] == "List" and [i["kind"] for i in doc["items"]] == ["Node", "Node"]
    labels = doc["items"][1]["metadata"]["labels"]
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert labels["nvidia.com/gpu.count"] == "8" and labels["nvidia.com/gpu.memory"] == "81559"
    assert labels["nvidia.com/gpu.family"] == "hopper"
    assert labels["nvidia.com/cuda.driver.major"] == "570"
    for item in doc["items"]:
        for key, value in item["metadata"]["labels"].items():
            assert LABEL_NAME.match(key.split("/")[-1]) and len(key.split("/")[-1]) <= 63
            assert isinstance(value, str) and LABEL_VALUE.match(value) and len(value) <= 63, \
                (key, value)


def test_ansible_handoff_is_accepted_by_ansible_inventory(fleet: Gpuctl, tmp_path: Path) -> None:
    with fleet.session() as session:
        chosen, _ = ho.select_handoff(session, fleet.skus(), [], None)
    path = tmp_path / "in-service.yml"
    path.write_text(render_ansible(chosen))
    tool = shutil.which("ansible-inventory") or str(Path(__file__).parents[2] /
                                                     ".venv/bin/ansible-inventory")
    proc = subprocess.run([tool, "-i", str(path), "--list"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    inv = json.loads(proc.stdout)
    assert inv["sku_h100_sxm_8"]["hosts"] == ["gpu00001", "gpu00007"]
    assert inv["_meta"]["hostvars"]["gpu00001"]["ansible_host"] == "127.1.0.1"
    assert "[WARNING]" not in proc.stderr


def test_prometheus_textfile_passes_promtool(fleet: Gpuctl, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (scripts/test.sh installs prometheus)")
    with fleet.session() as session:
        node = session.exec(select(Node).where(Node.name == "gpu00003")).one()
        node.sku = 'we"ird\\sku'  # hostile text in a label value must be escaped
        session.add(node)
        session.flush()
        chosen, _ = ho.select_handoff(session, fleet.skus(), [], None)
        states = [tuple(r) for r in session.exec(select(Node.name, Node.sku, Node.state)
                                                 .order_by(Node.name)).all()]
        text = render_prometheus(states, chosen)  # type: ignore[arg-type]
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'sku="we\\"ird\\\\sku"' in text
    assert text.count("gpuctl_node_state{") == 12
    assert 'gpuctl_burnin_value{node="gpu00007",test="all_reduce_busbw",gpu="",' \
           'unit="GB/s"} 478.5' in text
    # And promtool does fail on a broken file (so the check above can fail).
    bad = subprocess.run([promtool, "check", "metrics"], input=text.replace(
        "# TYPE gpuctl_node_state gauge", "# TYPE gpuctl_node_state nonsense"),
        capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode != 0


def test_bad_input_gives_one_line_errors_and_changes_nothing(fleet: Gpuctl, gpuctl) -> None:  # type: ignore[no-untyped-def]
    result = gpuctl("handoff", "slurm", "-o", "/proc/gpuctl-nope")
    assert result.code == 1
    assert result.err.strip().splitlines()[-1].startswith("Error: cannot write /proc/")
    assert _state(fleet, "gpu00001") == "certified"  # nothing handed off
    result = gpuctl("pool", "assign", "nosuch")
    assert (result.code, result.err.strip()) == (1, "Error: no pool 'nosuch'")
    result = gpuctl("drain", "gpu00001", "no-such-node")
    assert result.code == 1 and "no-such-node" in result.err and len(
        result.err.strip().splitlines()) == 1
    assert _state(fleet, "gpu00001") == "certified"
    result = gpuctl("--db", "postgresql+psycopg://nobody:pw@127.0.0.1:1/x", "status")
    assert result.code == 1
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "Error: cannot open database postgresql+psycopg://nobody:***@127.0.0.1:1/x")
    assert "pw" not in result.err


def test_live_handoff_failures_are_one_line_and_move_nothing(fleet: Gpuctl, gpuctl,  # type: ignore[no-untyped-def]
                                                             tmp_path, monkeypatch) -> None:
    result = gpuctl("handoff", "slurm", "--apply", "--slurm-conf-dir", str(tmp_path / "none"))
    assert result.code == 1 and result.err.startswith(
        f"Error: {tmp_path / 'none' / 'slurm.conf'} not found: --slurm-conf-dir must be the "
        "cluster's"), result
    assert _state(fleet, "gpu00001") == "certified"
    # No controller answers (this is not a Slurm host): one line, nothing written, no
    # node moves. (Writing, the restart and its rollback are tests/e2e/test_slurm_safety.)
    conf = tmp_path / "etc"
    conf.mkdir()
    (conf / "slurm.conf").write_text("ClusterName=prod\n")
    monkeypatch.setenv("GPUCTL_SLURM_RESTART", "false")
    monkeypatch.setenv("SLURM_CONF", str(conf / "slurm.conf"))
    result = gpuctl("handoff", "slurm", "--apply", "--slurm-conf-dir", str(conf))
    assert result.code == 1 and result.err.startswith("Error: "), result
    assert "\n" not in result.err.strip() and "Traceback" not in result.err
    assert (conf / "slurm.conf").read_text() == "ClusterName=prod\n"
    assert not (conf / "slurm.conf.gpuctl-bak").exists()
    assert _state(fleet, "gpu00001") == "certified"
    # A partition name that would write a second line into slurm.conf: refused first.
    result = gpuctl("handoff", "slurm", "--apply", "--slurm-conf-dir", str(conf),
                    "--partition", "h100\nMaxJobCount=4242")
    assert result.code == 1 and "--partition 'h100\\nMaxJobCount=4242'" in result.err, result
    assert (conf / "slurm.conf").read_text() == "ClusterName=prod\n"
    runs = json.loads(gpuctl("runs", "list", "--kind", "handoff", "--json").out)
    assert runs[0]["status"] == "failed"
    # --apply and --dry-run, or --smoke without --apply, are usage errors.
    assert gpuctl("handoff", "slurm", "--apply", "--dry-run").code == 2
    assert gpuctl("handoff", "slurm", "--smoke").code == 2
