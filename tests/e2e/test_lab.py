"""The lab: real sshd nodes in their own namespaces, and a clean ``lab down``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from provisioner.errors import LabError
from provisioner.lab import nodes as lab_nodes
from provisioner.paths import Paths
from provisioner.ssh.exec import Target, run_on_node
from provisioner.ssh.hostkeys import KnownHosts

pytestmark = pytest.mark.e2e


def _ssh(paths: Paths, name: str, address: str, command: str) -> str:
    result = run_on_node(Target(name, address, 22, "root", str(paths.lab_dir / "id_ed25519")),
                         command, known_hosts=KnownHosts(paths.known_hosts), accept_new=True)
    assert result.exit_code == 0, result
    return result.stdout.decode()


def _listening(addresses: set[str]) -> set[str]:
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        ip_hex = local.split(":")[0]
        ip = ".".join(str(int(ip_hex[i:i + 2], 16)) for i in (6, 4, 2, 0))
        if state == "0A" and ip in addresses:
            found.add(ip)
    return found


def test_nodes_are_isolated_machines(lab, paths) -> None:  # type: ignore[no-untyped-def]
    lab.up(3, "--driver")
    names = [_ssh(paths, f"n{i}", lab.address(i), "hostname").strip() for i in range(3)]
    assert names == ["gpu-node-01", "gpu-node-02", "gpu-node-03"]
    _ssh(paths, "n0", lab.address(0), "echo only-here > /root/gpuctl-marker")
    assert _ssh(paths, "n0", lab.address(0), "cat /root/gpuctl-marker").strip() == "only-here"
    assert "missing" in _ssh(paths, "n1", lab.address(1),
                             "cat /root/gpuctl-marker 2>/dev/null || echo missing")
    assert not Path("/root/gpuctl-marker").exists()
    smi = _ssh(paths, "n2", lab.address(2), "nvidia-smi --query-gpu=index,name,memory.total "
                                             "--format=csv,noheader,nounits")
    assert smi.splitlines()[0] == "0, NVIDIA H100 80GB HBM3, 81559"
    assert len(smi.splitlines()) == 8
    topo = _ssh(paths, "n2", lab.address(2), "nvidia-smi topo -m")
    assert topo.splitlines()[1].startswith("GPU0\tX\tNV18")


def test_lab_down_leaves_no_process_mount_or_listener(lab, gpuctl, paths) -> None:  # type: ignore[no-untyped-def]
    lab.up(3)
    addresses = {lab.address(i) for i in range(3)}
    pids = [lab.lab.holder_pid(n) for n in lab.lab.names()]
    assert all(pids) and _listening(addresses) == addresses
    node_pids = [p for p in os.listdir("/proc") if p.isdigit()
                 and str(paths.lab_dir) in _cmdline(p)]
    assert len(node_pids) >= 6  # unshare + node init per node
    assert len(json.loads(gpuctl("nodes", "list", "--json").out)) == 3

    assert gpuctl("lab", "down").code == 0
    assert not [p for p in os.listdir("/proc") if p.isdigit() and str(paths.lab_dir)
                in _cmdline(p)]
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists()
    assert _listening(addresses) == set()
    assert str(paths.lab_dir) not in Path("/proc/self/mountinfo").read_text()
    assert not paths.lab_dir.exists()
    assert json.loads(gpuctl("nodes", "list", "--json").out) == []
    assert gpuctl("lab", "status", "--json").out.strip() == "[]"


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_second_lab_up_is_refused(lab, gpuctl) -> None:  # type: ignore[no-untyped-def]
    lab.up(1)
    again = gpuctl("lab", "up", "--nodes", "1", "--first-address", "127.0.250.10")
    assert again.code == 1 and "already up" in again.err


def test_lab_refuses_non_loopback_and_unknown_faults(gpuctl) -> None:  # type: ignore[no-untyped-def]
    res = gpuctl("lab", "up", "--nodes", "2", "--first-address", "192.0.2.10")
    assert res.code == 1 and "127.0.0.0/8" in res.err
    res = gpuctl("lab", "up", "--nodes", "1", "--fault", "gpu-node-01:melted")
    assert res.code == 1 and "unknown fault 'melted'" in res.err


def test_lab_needs_root_and_says_what_to_use_instead(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(lab_nodes.os, "geteuid", lambda: 1000)
    with pytest.raises(LabError, match="needs root.*Vagrantfile"):
        lab_nodes.require_lab_support()


def test_lab_up_names_everything_missing_in_one_line(gpuctl, monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # A control host with none of the lab's tools on PATH and a Python without torch.
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    result = gpuctl("lab", "up", "--nodes", "1", "--os", "rocky9", "--slurm",
                    "--first-address", "127.0.39.10", "--burnin-python", "/bin/false")
    assert result.code == 1 and result.err.strip().count("\n") == 0, result
    for named in ("unshare", "dpkg-deb", "rpmbuild", "createrepo_c", "slurmctld",
                  "util-linux", "slurm-client", "(install ", "--burnin-python /bin/false cannot "
                  "import torch"):
        assert named in result.err, (named, result.err)
    assert not (Paths.from_env().lab_dir / "nodes").exists()  # nothing was started
