"""``gpuctl provision`` end to end on lab nodes: real sshd, real ansible-core through
ansible-runner, the lab's stand-in NVIDIA packages."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlmodel import select

from provisioner.db.engine import session_scope
from provisioner.db.models import NodeLock, Run, TaskResult
from tests.e2e.conftest import interruptible, scan_json, wait_for

pytestmark = pytest.mark.e2e


def held_nodes(db_url: str) -> list[int]:
    with session_scope(db_url) as session:
        return list(session.exec(select(NodeLock.run_id)))


def provision_json(gpuctl, *args):  # type: ignore[no-untyped-def]
    result = gpuctl("provision", "--json", *args)
    assert result.out, result
    return result.code, json.loads(result.out)


def states(gpuctl):  # type: ignore[no-untyped-def]
    return {n["name"]: n["state"] for n in json.loads(gpuctl("nodes", "list", "--json").out)}


def test_provision_failures_rescan_and_second_run(lab, gpuctl, paths) -> None:  # type: ignore[no-untyped-def]
    lab.up(5, "--fault", "gpu-node-02:package-install-failure",
           "--fault", "gpu-node-03:unsupported-os", "--fault", "gpu-node-05:repo-unreachable")
    code, summary = scan_json(gpuctl, "--all", "--accept-new")
    assert code == 0
    assert all(r["gpus"] == 8 for r in summary["results"])  # on the PCI bus, no driver yet
    assert gpuctl("lab", "fault", "gpu-node-04", "unreachable").code == 0

    code, summary = provision_json(gpuctl, "--all")
    assert code == 3
    nodes = {n["name"]: n for n in summary["nodes"]}
    assert nodes["gpu-node-01"]["status"] == "ok" and nodes["gpu-node-01"]["changed"] > 5
    assert nodes["gpu-node-02"]["status"] == "failed"
    # The reason comes first, the task that gave it last.
    assert nodes["gpu-node-02"]["reason"].startswith("nvidia-driver-570-open failed to install")
    assert nodes["gpu-node-02"]["reason"].endswith(")") and "(task: " in \
        nodes["gpu-node-02"]["reason"]
    assert "Bad return status for module build" in nodes["gpu-node-02"]["reason"]
    assert nodes["gpu-node-03"]["status"] == "failed"
    assert "unsupported OS Fedora Linux 40 (supported: Ubuntu" in nodes["gpu-node-03"]["reason"]
    assert nodes["gpu-node-04"]["status"] == "unreachable"
    assert nodes["gpu-node-05"]["status"] == "failed"
    assert "Refresh the apt cache" in nodes["gpu-node-05"]["reason"], nodes["gpu-node-05"]
    assert states(gpuctl) == {"gpu-node-01": "provisioned", "gpu-node-02": "failed",
                              "gpu-node-03": "failed", "gpu-node-04": "failed",
                              "gpu-node-05": "failed"}
    history = json.loads(gpuctl("nodes", "show", "gpu-node-03", "--json").out)["events"]
    assert history[-1]["to"] == "failed" and history[-1]["reason"].startswith("unsupported OS")
    assert "(task: Refuse an unsupported operating system" in history[-1]["reason"]

    with session_scope(paths.db_url) as session:
        run = session.get(Run, summary["run_id"])
        assert run is not None and run.status == "partial"
        assert json.loads(run.args_json)["versions"]["ansible-core"]
        rows = session.exec(select(TaskResult).where(TaskResult.run_id == run.id)).all()
    tasks = {(r.task, r.status) for r in rows if r.node_id == 1}
    assert ("Install nvidia-driver-570-open", "changed") in tasks
    assert ("Reboot to load the nvidia module", "changed") in tasks  # nouveau was loaded
    assert ("Install the fabric manager packages", "changed") in tasks  # NVSwitch found

    # --retry-failed takes exactly the nodes that failed.
    code, summary = provision_json(gpuctl, "--retry-failed", "--tags", "preflight")
    assert sorted(n["name"] for n in summary["nodes"]) == \
        ["gpu-node-02", "gpu-node-03", "gpu-node-04", "gpu-node-05"]

    # The re-scan sees the driver the playbook installed.
    code, summary = scan_json(gpuctl, "gpu-node-01")
    detail = json.loads(gpuctl("nodes", "show", "gpu-node-01", "--json").out)
    assert detail["snapshot"]["driver_version"] == "570.124.06"
    assert detail["snapshot"]["cuda_version"] == "12.8"
    assert detail["snapshot"]["gpu_count"] == 8
    assert not detail["snapshot"]["nouveau_loaded"]

    # Certified, then provisioned again: nothing changes, so the certificate stands (a
    # provision --all no longer strips the fleet's certificates).
    result = gpuctl("burnin", "gpu-node-01", "--duration", "0.1", "--json")
    assert result.code == 0, result
    code, summary = provision_json(gpuctl, "gpu-node-01")
    assert code == 0 and summary["changed"] == 0
    assert states(gpuctl)["gpu-node-01"] == "certified"
    history = json.loads(gpuctl("nodes", "show", "gpu-node-01", "--json").out)["events"]
    assert history[-1]["reason"].endswith("none in the driver, CUDA or fabric manager: "
                                          "certificate kept"), history[-1]


def test_check_mode_changes_nothing(lab, gpuctl) -> None:  # type: ignore[no-untyped-def]
    lab.up(1)
    scan_json(gpuctl, "--all", "--accept-new")
    code, summary = provision_json(gpuctl, "--all", "--check", "--diff")
    assert code == 0 and summary["check"] is True and summary["changed"] > 0
    assert states(gpuctl) == {"gpu-node-01": "discovered"}
    code, scan = scan_json(gpuctl, "--all")
    detail = json.loads(gpuctl("nodes", "show", "gpu-node-01", "--json").out)
    assert detail["snapshot"]["driver_version"] is None  # nothing was installed


def test_registered_and_quarantined_nodes_are_refused(lab, gpuctl) -> None:  # type: ignore[no-untyped-def]
    lab.up(2, "--fault", "gpu-node-02:pcie-downgrade")
    result = gpuctl("provision", "gpu-node-01")
    assert result.code == 1 and "was never scanned" in result.err
    scan_json(gpuctl, "--all", "--accept-new")
    assert states(gpuctl)["gpu-node-02"] == "quarantined"  # x8 link seen in sysfs
    result = gpuctl("provision", "gpu-node-02")
    assert result.code == 1 and "gpu-node-02 is quarantined" in result.err


def _start(paths: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "provisioner", "provision", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "GPUCTL_HOME": str(paths)},
                            preexec_fn=interruptible)



def test_second_run_on_same_node_is_refused(lab, gpuctl, paths) -> None:  # type: ignore[no-untyped-def]
    lab.up(1)
    scan_json(gpuctl, "--all", "--accept-new")
    # (A short run is enough to hold the node: the lock is the run's, whatever its tags.
    # The repository role's apt runs take seconds; the second asks within one.)
    first = _start(paths.home, "gpu-node-01", "--tags", "repo")
    wait_for(lambda: held_nodes(paths.db_url))
    second = gpuctl("provision", "gpu-node-01")
    assert second.code == 1, second
    assert "gpu-node-01 is held by provision run" in second.err and "pid" in second.err
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, (out, err)
    assert held_nodes(paths.db_url) == []


def test_sigint_stops_ansible_and_keeps_results(lab, gpuctl, paths) -> None:  # type: ignore[no-untyped-def]
    lab.up(1)
    scan_json(gpuctl, "--all", "--accept-new")
    proc = _start(paths.home, "--all")

    def some_results() -> bool:
        with session_scope(paths.db_url) as session:
            return len(session.exec(select(TaskResult)).all()) >= 5

    wait_for(some_results)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, (out, err)
    assert "provision interrupted" in err and "Traceback" not in err
    with session_scope(paths.db_url) as session:
        run = session.exec(select(Run).where(Run.kind == "provision")).one()
        assert run.status == "interrupted"
        assert len(session.exec(select(TaskResult)).all()) >= 5
    assert states(gpuctl) == {"gpu-node-01": "failed"}
    assert held_nodes(paths.db_url) == []
    # This test's ansible-playbook only: another worker's runs are numbered from 1 too.
    leftovers = subprocess.run(
        ["pgrep", "-f", re.escape(f"{paths.runs_dir}/provision-{run.id}/") + "inventory"],
        capture_output=True, text=True, check=False)
    assert (leftovers.returncode, leftovers.stdout) == (1, ""), leftovers  # 1: none matched


def test_become_password_is_never_stored(lab, gpuctl, paths, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    secret = "s3cr3t-become-Pa55"
    lab.up(1)
    scan_json(gpuctl, "--all", "--accept-new")
    monkeypatch.setenv("GPUCTL_BECOME_PASSWORD", secret)
    code, summary = provision_json(gpuctl, "--all", "--tags", "preflight")
    assert code == 0, summary
    assert "GPUCTL_BECOME_PASSWORD" not in os.environ  # not passed on to Ansible either
    hits = [p for p in paths.home.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert hits == []


def test_export_is_accepted_by_ansible_inventory(gpuctl, tmp_path) -> None:  # type: ignore[no-untyped-def]
    gpuctl("nodes", "add", "gpu017", "--address", "127.0.0.17", "--key", "/keys/k",
           "--sku", "h100-sxm-8", "--label", "rack=r12")
    gpuctl("nodes", "add", "gpu018", "--address", "127.0.0.18", "--label", "pool=team-a")
    tool = Path(sys.executable).with_name("ansible-inventory")
    for fmt, suffix in (("ini", "ini"), ("yaml", "yml"), ("json", "json")):
        result = gpuctl("inventory", "export", "--format", fmt)
        assert result.code == 0, result
        if fmt == "json":
            # JSON is ansible-inventory's own --list format; feed it through a script.
            path = tmp_path / "inv.py"
            path.write_text(f"#!{sys.executable}\nprint({result.out!r})\n")
            path.chmod(0o755)
        else:
            path = tmp_path / f"inv.{suffix}"
            path.write_text(result.out)
        listed = subprocess.run([str(tool), "-i", str(path), "--list"], capture_output=True,
                                text=True, check=True)
        doc = json.loads(listed.stdout)
        hv = doc["_meta"]["hostvars"]
        assert hv["gpu017"]["ansible_host"] == "127.0.0.17", fmt
        assert hv["gpu017"]["ansible_port"] == 22 and hv["gpu017"]["gpuctl_expected_gpus"] == 8
        assert hv["gpu017"]["ansible_ssh_private_key_file"] == "/keys/k"
        assert "UserKnownHostsFile=" in hv["gpu018"]["ansible_ssh_common_args"]
        assert doc["sku_h100_sxm_8"]["hosts"] == ["gpu017"], fmt
        assert doc["rack_r12"]["hosts"] == ["gpu017"]
        assert doc["pool_team_a"]["hosts"] == ["gpu018"]
        assert sorted(doc["state_registered"]["hosts"]) == ["gpu017", "gpu018"]
