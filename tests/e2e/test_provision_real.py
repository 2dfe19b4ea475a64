"""Provisioning against the package names real servers have (issue: driver branches
570/580, B200 and NVLink 5, Rocky 9 with dnf module streams, air-gapped mirrors, and a
verify step that names what is wrong). Lab nodes' repositories follow NVIDIA's real
naming, aliases included (provisioner/lab/packages.py), so a wrong name fails here as
it would on a real node."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from provisioner.db.engine import session_scope
from provisioner.db.models import Node, TaskResult
from provisioner.lab.netrepo import (
    DEBIAN_ARCHIVE_IN_NODE,
    DEBIAN_KEYRING,
    DEBIAN_SUITE,
    build_epel,
    build_network_repo,
    build_ubuntu_archive,
    sign_release,
    stop_agent,
)
from provisioner.lab.packages import NVLSM, NVLSM_CONFIG, NVLSM_PIDFILE
from tests.e2e.conftest import command_json, scan_json

pytestmark = pytest.mark.e2e


def provision(gpuctl: Any, *args: str) -> tuple[int, dict[str, Any]]:
    return command_json(gpuctl, "provision", *args)


def by_name(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in summary["nodes"]}


def set_vars(db_url: str, name: str, **values: str) -> None:
    """Per-node Ansible variables, as `gpuctl nodes import` of an inventory with host
    vars would set them (the lab registered the node with its own)."""
    with session_scope(db_url) as session:
        node = session.exec(select(Node).where(Node.name == name)).one()
        node.vars_json = json.dumps({**json.loads(node.vars_json), **values}, sort_keys=True)
        session.add(node)


def changed_tasks(db_url: str, run_id: int, node: str) -> set[str]:
    with session_scope(db_url) as session:
        node_id = session.exec(select(Node.id).where(Node.name == node)).one()
        rows = session.exec(select(TaskResult).where(TaskResult.run_id == run_id,
                                                     TaskResult.node_id == node_id)).all()
    return {r.task for r in rows if r.status == "changed"}


def node_sh(lab: Any, name: str, script: str) -> subprocess.CompletedProcess[bytes]:
    return lab.lab.node_exec(name, ["sh", "-c", script])


def test_branches_570_and_580_then_verify_names_what_is_wrong(  # type: ignore[no-untyped-def]
        lab, gpuctl, paths, tmp_path, www) -> None:
    """h100-sxm-8 on Ubuntu 22.04, from each kind of repository a site has:
    - node 01 takes the default path: NVIDIA's repository URL only (the lab's over HTTP,
      signed with a lab key standing in for NVIDIA's), cuda-keyring from it with its
      source list and its pin (600 for every NVIDIA package). It came with the older
      570.86.15 driver and, held beside it, the branch's newest fabric manager, as a
      vendor image might: fabric manager must become 570.86.15 (570.124.06 would refuse
      to start) despite both;
    - node 02 (branch 580) reads a mirror signed with the site's key, NVIDIA's URL closed;
    - node 03 a local mirror out of step: no fabric manager for the newest 570 driver;
      it also has Ubuntu's own archive, whose nvidia-driver-570-open is newer than
      NVIDIA's: the driver must still be NVIDIA's (570.124.06, below)."""
    root, url = www
    lab.up(3, "--fault", "gpu-node-03:fabricmanager-mismatch")
    key = signed_mirror(paths, tmp_path, root)
    base = f"{url}/compute/cuda/repos"
    build_network_repo(root / "compute/cuda/repos", "ubuntu22.04",
                       paths.home / "lab/repos/good", base, tmp_path / "nvidia-gnupg")
    held = node_sh(lab, "gpu-node-01", f"echo 'deb [trusted=yes] {base}/ubuntu2204/x86_64/ /'"
                   " > /etc/apt/sources.list.d/vendor.list && apt-get update -qq && "
                   "apt-get install -y -qq nvidia-driver-570-open=570.86.15-1 "
                   "libnvidia-compute-570=570.86.15-1 nvidia-fabricmanager-570=570.124.06-1 && "
                   "apt-mark hold nvidia-driver-570-open nvidia-fabricmanager-570 && "
                   "rm /etc/apt/sources.list.d/vendor.list")
    assert held.returncode == 0, held
    build_ubuntu_archive(root / "ubuntu")
    archive = node_sh(lab, "gpu-node-03", f"echo 'deb [trusted=yes] {url}/ubuntu/ /' > "
                      "/etc/apt/sources.list.d/ubuntu.list")
    assert archive.returncode == 0, archive
    scan_json(gpuctl, "--all", "--accept-new")
    set_vars(paths.db_url, "gpu-node-01", nvidia_repo_trusted="false",
             nvidia_repo_mirror_url="", nvidia_repo_base=base)
    set_vars(paths.db_url, "gpu-node-02", driver_branch="580", cuda_toolkit_version="13-0",
             nvidia_repo_trusted="false", nvidia_repo_mirror_url=f"{url}/mirror/",
             nvidia_repo_mirror_key=str(key), nvidia_repo_base="http://127.0.0.1:9/unreachable")
    code, summary = provision(gpuctl, "--all")
    assert code == 3, summary
    nodes = by_name(summary)
    assert nodes["gpu-node-01"]["status"] == nodes["gpu-node-02"]["status"] == "ok", \
        {n: v.get("reason") for n, v in nodes.items()}
    reason = nodes["gpu-node-03"]["reason"]
    assert reason.startswith("fabric manager for driver 570.124.06 failed to install "
                             "(nvidia-fabricmanager-570=570.124.06-* ") and \
        "(a mirror out of step?)" in reason, reason
    # Ansible names a task once, from the first host's variables: what each node got is
    # read on the node. 570 carries the branch in fabric manager's name; 580 does not,
    # and no package of the suffixed name is installed (none exists in the repository).
    q = "dpkg-query -W -f='${Package} ${Version} ${Status}\\n' "
    one = node_sh(lab, "gpu-node-01", q + "nvidia-driver-570-open nvidia-fabricmanager-570 "
                                          "libnvidia-nscq-570")
    assert one.returncode == 0 and one.stdout.decode().count("hold ok installed") == 3, one
    assert one.stdout.decode().count(" 570.86.15-1 ") == 3, one
    keyring = node_sh(lab, "gpu-node-01", "dpkg-query -W cuda-keyring && ls "
                      "/etc/apt/preferences.d /etc/apt/sources.list.d")
    assert keyring.returncode == 0 and b"cuda-repository-pin-600" in keyring.stdout and \
        b"cuda-ubuntu2204-x86_64.list" in keyring.stdout, keyring
    mirror = node_sh(lab, "gpu-node-02", "cat /etc/apt/sources.list.d/gpuctl-nvidia.list; "
                     "dpkg-query -W cuda-keyring")
    assert f"deb [signed-by=/usr/share/keyrings/gpuctl-nvidia-mirror.asc] {url}/mirror/ /" \
        in mirror.stdout.decode() and mirror.returncode != 0, mirror  # nothing from NVIDIA
    two = node_sh(lab, "gpu-node-02", q + "nvidia-driver-580-open nvidia-fabricmanager "
                                          "libnvidia-nscq")
    assert two.returncode == 0 and two.stdout.decode().count("hold ok installed") == 3, two
    assert "nvidia-fabricmanager 580.82.07-1" in two.stdout.decode()
    alias = node_sh(lab, "gpu-node-02", q + "nvidia-fabricmanager-580")
    assert b"installed" not in alias.stdout.replace(b"not-installed", b""), alias
    for name, branch in (("gpu-node-01", "570"), ("gpu-node-02", "580")):
        smi = node_sh(lab, name, "nvidia-smi --query-gpu=driver_version,persistence_mode "
                                 "--format=csv,noheader | sort -u")
        assert smi.stdout.decode().split(",")[0] == {"570": "570.86.15",
                                                     "580": "580.82.07"}[branch], smi
        assert smi.stdout.decode().strip().endswith("Enabled"), smi  # the drop-in did it

    code, summary = provision(gpuctl, "gpu-node-01", "gpu-node-02")
    assert code == 0 and summary["changed"] == 0, summary

    # verify fails, naming the cause: the open modules loaded where the pin now says
    # proprietary, and a persistence daemon whose drop-in is gone.
    set_vars(paths.db_url, "gpu-node-01", driver_kernel_modules="proprietary")
    res = node_sh(lab, "gpu-node-02", "rm /etc/systemd/system/nvidia-persistenced.service.d/"
                                      "gpuctl.conf && /etc/init.d/nvidia-persistenced restart")
    assert res.returncode == 0, res
    code, summary = provision(gpuctl, "gpu-node-01", "gpu-node-02", "--tags", "verify")
    assert code == 3, summary
    nodes = by_name(summary)
    assert nodes["gpu-node-01"]["reason"].startswith(
        "the loaded nvidia module is open (taint OE), pinned: proprietary"), nodes
    assert nodes["gpu-node-02"]["reason"].startswith(
        "persistence mode is off on 8 of 8 GPUs (nvidia-persistenced running)"), nodes


def test_installing_a_driver_loads_nothing_the_role_loads_it_or_reboots(  # type: ignore[no-untyped-def]
        lab, gpuctl, paths) -> None:
    """Installing the driver builds its module and loads nothing (DKMS and NVIDIA's
    packages' post-install do not: packages.py BUILD). Nodes that came with a driver:
    - node 01 runs 550.90.07 (h100-sxm-8's image) and gets 570.124.06: the loaded module
      is not the installed one until a reboot, which gpuctl does;
    - node 02 runs none (an admin unloaded it) and nouveau does not hold the GPUs:
      `modprobe nvidia` loads it, no reboot;
    - node 03 as node 01, with reboots not allowed: it fails, naming both versions;
    - node 04 runs the open modules of 570.124.06 and is pinned to the proprietary ones
      of the same version: the open ones run until a reboot, which gpuctl does."""
    lab.up(4, "--driver", "--node-profile", "gpu-node-02:h200-sxm-8",
           "--node-profile", "gpu-node-04:h200-sxm-8")
    scan_json(gpuctl, "--all", "--accept-new")
    # As `rmmod nvidia` needs it: nothing holds the module.
    unloaded = node_sh(lab, "gpu-node-02", "/etc/init.d/nvidia-fabricmanager stop && "
                                           "/etc/init.d/nvidia-persistenced stop; "
                                           "rm -r /sys/module/nvidia /dev/nvidia*")
    assert unloaded.returncode == 0, unloaded
    set_vars(paths.db_url, "gpu-node-03", reboot_allowed="false")
    set_vars(paths.db_url, "gpu-node-04", driver_kernel_modules="proprietary")
    code, summary = provision(gpuctl, "--all", "--tags", "driver,fabricmanager,verify")
    assert code == 3, summary
    nodes = by_name(summary)
    assert nodes["gpu-node-01"]["status"] == nodes["gpu-node-02"]["status"] == "ok", \
        {n: v.get("reason") for n, v in nodes.items()}
    assert nodes["gpu-node-03"]["reason"].startswith(
        "the nvidia module needs a reboot to load (driver 570.124.06 is installed, 550.90.07 "
        "is loaded); reboot_allowed is false"), nodes
    # Node 03 as an admin finds it: the new libraries, the old module.
    smi = node_sh(lab, "gpu-node-03", "nvidia-smi -L")
    assert smi.returncode != 0 and smi.stdout.startswith(
        b"Failed to initialize NVML: Driver/library version mismatch"), smi
    one = changed_tasks(paths.db_url, summary["run_id"], "gpu-node-01")
    two = changed_tasks(paths.db_url, summary["run_id"], "gpu-node-02")
    assert "Reboot to load the nvidia module" in one and "Load the nvidia module" not in one, one
    assert "Load the nvidia module" in two and "Reboot to load the nvidia module" not in two, two
    assert nodes["gpu-node-04"]["status"] == "ok", nodes["gpu-node-04"]
    four = changed_tasks(paths.db_url, summary["run_id"], "gpu-node-04")
    assert "Reboot to load the nvidia module" in four, four
    taint = node_sh(lab, "gpu-node-04", "cat /sys/module/nvidia/taint")
    assert taint.stdout == b"POE\n", taint
    for name in ("gpu-node-01", "gpu-node-02"):
        now = node_sh(lab, name, "cat /sys/module/nvidia/version; dpkg-query -W -f="
                                 "'${Version}\\n' nvidia-fabricmanager-570; ls /dev/nvidiactl")
        assert now.stdout.decode().split() == ["570.124.06", "570.124.06-1",
                                               "/dev/nvidiactl"], (name, now)
    code, summary = provision(gpuctl, "gpu-node-01", "gpu-node-02", "gpu-node-04", "--tags",
                              "driver,fabricmanager,verify")
    assert code == 0 and summary["changed"] == 0, summary


def test_b200_provisions_nvlink5_packages_and_passes_verify(lab, gpuctl, paths) -> None:  # type: ignore[no-untyped-def]
    lab.up(1, "--profile", "b200-8")
    scan_json(gpuctl, "--all", "--accept-new")
    # With DCGM and the container toolkit, on a node that has containerd (a stand-in
    # binary: only its presence counts).
    set_vars(paths.db_url, "gpu-node-01", dcgm_install="true", container_toolkit_install="true")
    lab.lab.put_file("gpu-node-01", "/usr/bin/containerd", b"#!/bin/sh\nexit 0\n", 0o755)
    code, summary = provision(gpuctl, "--all")
    assert code == 0, summary
    changed = changed_tasks(paths.db_url, summary["run_id"], "gpu-node-01")
    assert {"Install nvidia-driver-580-open", "Install the fabric manager packages",
            "Load the NVLink 5 management ports' modules now", "Start fabric manager"} \
        <= changed, changed
    pkgs = node_sh(lab, "gpu-node-01", "dpkg-query -W -f='${Package} ${Version}\\n' "
                                       "nvidia-fabricmanager libnvidia-nscq libnvsdm nvlsm "
                                       "infiniband-diags")
    assert pkgs.returncode == 0 and len(pkgs.stdout.splitlines()) == 5, pkgs
    assert pkgs.stdout.decode().count(" 580.82.07-1") == 3, pkgs  # the driver's version
    mods = node_sh(lab, "gpu-node-01", "ls /sys/module; cat /etc/modules-load.d/*.conf")
    assert {"mlx5_core", "ib_umad", "nvidia"} <= set(mods.stdout.decode().split()), mods
    # NVLSM runs as fabric manager's start script started it: NVIDIA's config, the
    # management port's GUID, the pid file beside fabric manager's; no service of its own.
    sm = node_sh(lab, "gpu-node-01", f"tr '\\0' ' ' < /proc/$(cat {NVLSM_PIDFILE})/cmdline; "
                                     "ls /etc/init.d")
    assert f"{NVLSM} -F {NVLSM_CONFIG} -B --pid_file {NVLSM_PIDFILE} -g 0x0c42a1030001" \
        in sm.stdout.decode(), sm
    assert "nvlsm" not in sm.stdout.decode().split(), sm
    # DCGM 4 for the driver's CUDA major (580: CUDA 13), its host engine running; the
    # nvidia runtime registered with containerd.
    dcgm = node_sh(lab, "gpu-node-01", "dpkg-query -W -f='${Status}' datacenter-gpu-manager-4-"
                                       "cuda13 && /etc/init.d/nvidia-dcgm status && grep -c "
                                       "runtimes.nvidia /etc/containerd/config.toml")
    assert dcgm.returncode == 0 and dcgm.stdout.decode().endswith("installed1\n"), dcgm
    code, summary = provision(gpuctl, "--all")
    assert code == 0 and summary["changed"] == 0, summary

    # NVLSM started any other way leaves the fabric down, and verify says so: a second
    # subnet manager beside fabric manager's; NVLSM alone with fabric manager started
    # without its script; no NVLSM at all.
    for why, script in (
            ("2 NVLSM processes", "start-stop-daemon --start --background --make-pidfile "
                                  f"--pidfile /run/second-sm.pid --startas {NVLSM} -- "
                                  f"--config {NVLSM_CONFIG}"),
            ("1 NVLSM process", "/etc/init.d/nvidia-fabricmanager stop && "
                                f"start-stop-daemon --start --background --make-pidfile "
                                f"--pidfile {NVLSM_PIDFILE} --startas {NVLSM} -- --config "
                                f"{NVLSM_CONFIG} && "
                                "mkdir -p /run/nvidia-fabricmanager && start-stop-daemon "
                                "--start --background --make-pidfile --pidfile "
                                "/run/nvidia-fabricmanager/nv-fabricmanager.pid --startas "
                                "/usr/bin/nv-fabricmanager -- -c /usr/share/nvidia/nvswitch/"
                                "fabricmanager.cfg"),
            ("0 NVLSM processes", f"/etc/init.d/nvidia-fabricmanager restart && "
                                  f"kill $(cat {NVLSM_PIDFILE})")):
        done = node_sh(lab, "gpu-node-01", script)
        assert done.returncode == 0, (why, done)
        code, summary = provision(gpuctl, "--all", "--tags", "verify")
        assert code == 3, (why, summary)
        reason = summary["nodes"][0]["reason"]
        assert reason.startswith("NVSwitch fabric not up: fabric manager running (1 "
                                 f"nv-fabricmanager process, {why}: fabric manager starts "
                                 "the one NVLSM), fabric state In Progress on 8 of 8 GPUs"), \
            (why, reason)
        node_sh(lab, "gpu-node-01", "/etc/init.d/nvidia-fabricmanager stop; start-stop-daemon "
                                    "--stop --oknodo --pidfile /run/second-sm.pid; "
                                    "/etc/init.d/nvidia-fabricmanager start")
    code, summary = provision(gpuctl, "--all", "--tags", "verify")
    assert code == 0, summary


def test_rocky9_provisions_through_dnf_module_streams(  # type: ignore[no-untyped-def]
        lab, gpuctl, paths, tmp_path, www) -> None:
    """Node 01 reads local mirrors of NVIDIA's repository and EPEL; node 02 takes the
    default path: NVIDIA's repository URL with gpgcheck and its D42D0685.pub key (the
    lab's, over HTTP, every rpm signed with a lab key standing in for NVIDIA's), and
    EPEL's key and its epel-release rpm by URL (EPEL's rpms signed with another key; the
    rpm by URL is checked against it). Both run twice: 0 changed."""
    lab.up(2, "--os", "rocky9")
    root, url = www
    base = f"{url}/compute/cuda/repos"
    build_network_repo(root / "compute/cuda/repos", "rocky9",
                       paths.home / "lab/repos/good", base, tmp_path / "nvidia-gnupg")
    epel = build_epel(root, paths.home / "lab/repos/good", url, tmp_path / "epel-gnupg")
    scan_json(gpuctl, "--all", "--accept-new")
    set_vars(paths.db_url, "gpu-node-02", nvidia_repo_trusted="false",
             nvidia_repo_mirror_url="", nvidia_repo_epel_mirror_url="",
             nvidia_repo_base=base, nvidia_repo_epel_release_url=epel,
             nvidia_repo_epel_key_url=f"{url}/pub/epel/RPM-GPG-KEY-EPEL-9")
    code, summary = provision(gpuctl, "--all")
    assert code == 0, {n["name"]: n.get("reason") for n in summary["nodes"]}
    changed = changed_tasks(paths.db_url, summary["run_id"], "gpu-node-01")
    assert {"Install @nvidia-driver:570-open", "Point dnf at the NVIDIA repository (and "
            "the EPEL mirror)", "Enable CRB (EPEL's packages build on it)",
            "Version-lock the fabric manager packages with the driver",
            "Rebuild the initramfs"} <= changed, changed
    assert "Install EPEL (DKMS for the driver's module streams)" in changed_tasks(
        paths.db_url, summary["run_id"], "gpu-node-02")
    for node in ("gpu-node-01", "gpu-node-02"):
        rpm = node_sh(lab, node, "rpm -q kmod-nvidia-open-dkms nvidia-fabric-manager "
                                 "libnvidia-nscq-570 dkms nvidia-persistenced; "
                                 "rpm -q nvidia-fabricmanager-570")
        out = rpm.stdout.decode()
        assert "kmod-nvidia-open-dkms-570.124.06" in out and "dkms-3.1.6" in out, out
        assert "nvidia-persistenced-570.124.06" in out, out  # nvidia-driver-cuda's
        # The alias resolves for dnf but is no package name: `rpm -q` of it fails, as
        # the issue found on real RHEL.
        assert "package nvidia-fabricmanager-570 is not installed" in out, out
        streams = node_sh(lab, node, "dnf -q module list --enabled nvidia-driver")
        assert "570-open" in streams.stdout.decode(), streams
        lock = node_sh(lab, node, "cat /etc/dnf/plugins/versionlock.list")
        assert "nvidia-fabric-manager-0:570.124.06" in lock.stdout.decode(), lock
        # The drop-in runs the daemon where RHEL's package puts it (/usr/sbin).
        smi = node_sh(lab, node, "nvidia-smi --query-gpu=persistence_mode "
                                 "--format=csv,noheader | sort -u")
        assert smi.stdout.decode().strip() == "Enabled", (node, smi)
    # Node 02 trusts what it installed by key: NVIDIA's (the repo's gpgkey) and EPEL's.
    keys = node_sh(lab, "gpu-node-02", "rpm -q gpg-pubkey --qf '%{SUMMARY}\\n'; "
                                       "rpm -q epel-release")
    out = keys.stdout.decode()
    assert "gpuctl lab NVIDIA stand-in" in out and "gpuctl lab EPEL stand-in" in out and \
        "epel-release-9" in out, keys
    code, summary = provision(gpuctl, "--all")
    assert code == 0 and summary["changed"] == 0, summary


def debian_names_and_no_fabric_manager(lab: Any, gpuctl: Any, paths: Any, run_id: int) -> None:
    # A PCIe system: no NVSwitch, no NVLink 5 port, so no fabric manager.
    with session_scope(paths.db_url) as session:
        rows = session.exec(select(TaskResult).where(TaskResult.run_id == run_id)).all()
    statuses = {r.task: r.status for r in rows}
    assert statuses["Skip fabric manager on systems without NVSwitch"] == "ok"
    assert statuses["Install the fabric manager packages"] == "skipped"
    detail = json.loads(gpuctl("nodes", "show", "gpu-node-01", "--json").out)
    assert detail["node"]["state"] == "provisioned"
    q = node_sh(lab, "gpu-node-01", "dpkg-query -W -f='${Package} ${Version}\\n' "
                                    "nvidia-driver-cuda nvidia-kernel-open-dkms nvidia-smi "
                                    "nvidia-persistenced")
    # The repository holds every branch under one name: the pin picked 570, for what
    # gpuctl names and for what they depend on (nvidia-smi, at the exact version). The
    # persistence daemon is a package of its own, which gpuctl names.
    assert sorted(q.stdout.decode().splitlines()) == [
        f"{name} 570.124.06-1" for name in ("nvidia-driver-cuda", "nvidia-kernel-open-dkms",
                                             "nvidia-persistenced", "nvidia-smi")], q


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def http_server(root: Path) -> Iterator[str]:
    """``root`` served over HTTP on loopback; yields its URL."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                               "127.0.0.1", "--directory", str(root)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):  # until it listens
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def www(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory served over HTTP on loopback for the test's whole run: (dir, URL)."""
    root = tmp_path / "www"
    root.mkdir()
    with http_server(root) as url:
        yield root, url
    for home in tmp_path.glob("*gnupg"):  # the agents signing started
        stop_agent(home)


def signed_mirror(paths: Any, tmp_path: Path, root: Path) -> Path:
    """NVIDIA's repository for the lab's OS mirrored under ``root/mirror`` and signed with
    the site's own key; returns the key (armored), as a site hands it to gpuctl."""
    repo = root / "mirror"
    shutil.copytree(paths.home / "lab/repos/good", repo)
    key = tmp_path / "mirror.asc"
    key.write_bytes(sign_release(repo, tmp_path / "site-gnupg"))
    return key


def test_debian12_from_a_signed_mirror_and_the_network(  # type: ignore[no-untyped-def]
        lab, gpuctl, paths, tmp_path, www) -> None:
    """Debian 12 with PCIe GPUs: Debian's package names, no fabric manager. Node 01 is an
    air-gapped site: NVIDIA's debian12 repository mirrored and signed with the site's key,
    served over HTTP on loopback, NVIDIA's own URLs a closed port. Node 02 takes the
    default path: NVIDIA's URL (the lab's) and cuda-keyring from it. Both run twice.
    Both take Debian's archive (the lab's, signed) with main only, as installed: node 01
    in deb822 (debian.sources), node 02 as a one-line entry in sources.list; NVIDIA's
    DKMS package needs three packages of Debian's contrib, which gpuctl adds beside the
    admin's entry, Signed-By kept (apt refuses the archive's entries otherwise)."""
    lab.up(2, "--os", "debian12", "--profile", "l40s-4",
           "--fault", "gpu-node-01:repo-unreachable")
    scan_json(gpuctl, "--all", "--accept-new")
    one_line = (f"deb [signed-by={DEBIAN_KEYRING}] file:{DEBIAN_ARCHIVE_IN_NODE} "
                f"{DEBIAN_SUITE} main\n")
    # Node 02's Debian mirror first lists contrib in its Release but serves no contrib
    # index: gpuctl's entry does not take (apt's error says why), gpuctl's sources are
    # put back as they were, and apt reads the node's sources as before.
    broken = f"{DEBIAN_ARCHIVE_IN_NODE}-broken"
    moved = node_sh(lab, "gpu-node-02", f"rm /etc/apt/sources.list.d/debian.sources && "
                    f"cp -a {DEBIAN_ARCHIVE_IN_NODE} {broken} && "
                    f"rm {broken}/dists/{DEBIAN_SUITE}/contrib/*/Packages* && echo '"
                    + one_line.replace(DEBIAN_ARCHIVE_IN_NODE, broken).strip()
                    + "' > /etc/apt/sources.list")
    assert moved.returncode == 0, moved
    code, summary = provision(gpuctl, "gpu-node-02", "--tags", "repo")
    assert code == 3, summary
    reason = summary["nodes"][0]["reason"]
    assert reason.startswith(
        "Debian's contrib is needed for glx-alternative-nvidia, nvidia-installer-cleanup, "
        "nvidia-kernel-common (NVIDIA's Debian driver packages depend on them); gpuctl's "
        f"contrib entries for file:{broken} {DEBIAN_SUITE} did not take and were put back as "
        f"they were: E: Failed to fetch file:{broken}/dists/{DEBIAN_SUITE}/contrib/binary-"
        "amd64/Packages"), reason
    after = node_sh(lab, "gpu-node-02", "ls /etc/apt/sources.list.d; apt-get update -qq && "
                                        f"sed -i 's|{broken}|{DEBIAN_ARCHIVE_IN_NODE}|' "
                                        "/etc/apt/sources.list")
    assert after.returncode == 0 and b"gpuctl-debian-contrib" not in after.stdout, after
    root, url = www
    key = signed_mirror(paths, tmp_path, root)
    repo = root / "mirror"
    base = f"{url}/compute/cuda/repos"
    build_network_repo(root / "compute/cuda/repos", "debian12",
                       paths.home / "lab/repos/good", base, tmp_path / "nvidia-gnupg")
    set_vars(paths.db_url, "gpu-node-01", nvidia_repo_trusted="false",
             nvidia_repo_mirror_url=f"{url}/mirror/",
             nvidia_repo_mirror_key=str(key),
             nvidia_repo_base="http://127.0.0.1:9/unreachable")
    set_vars(paths.db_url, "gpu-node-02", nvidia_repo_trusted="false",
             nvidia_repo_mirror_url="", nvidia_repo_base=base)
    code, summary = provision(gpuctl, "--all")
    assert code == 0, {n["name"]: n.get("reason") for n in summary["nodes"]}
    listing = node_sh(lab, "gpu-node-01", "cat /etc/apt/sources.list.d/gpuctl-nvidia.list")
    assert (f"deb [signed-by=/usr/share/keyrings/gpuctl-nvidia-mirror.asc] "
            f"{url}/mirror/ /") in listing.stdout.decode(), listing
    keyring = node_sh(lab, "gpu-node-02", "dpkg-query -W cuda-keyring && cat "
                                          "/etc/apt/sources.list.d/gpuctl-nvidia.list")
    assert keyring.returncode == 0 and f"deb [signed-by=/usr/share/keyrings/cuda-archive-" \
        f"keyring.gpg] {base}/debian12/x86_64/ /" in keyring.stdout.decode(), keyring
    for node in ("gpu-node-01", "gpu-node-02"):
        smi = node_sh(lab, node, "nvidia-smi --query-gpu=persistence_mode --format=csv,"
                                 "noheader | sort -u")
        assert smi.stdout.decode().strip() == "Enabled", (node, smi)
        # Debian's unit turns persistence mode on by itself: gpuctl's drop-in is what
        # runs the daemon, from the path Debian's package puts it in.
        cmd = node_sh(lab, node, "tr '\\0' ' ' < /proc/$(cat /run/nvidia-persistenced.pid)"
                                 "/cmdline")
        assert " /usr/bin/nvidia-persistenced --user root --persistence-mode " in \
            cmd.stdout.decode(), (node, cmd)  # (the stand-in daemon is a shell script)
    debian_names_and_no_fabric_manager(lab, gpuctl, paths, summary["run_id"])
    contrib = {n: node_sh(lab, n, "cat /etc/apt/sources.list.d/gpuctl-debian-contrib.*; "
                                  "dpkg-query -W -f='${Status}\\n' nvidia-installer-cleanup "
                                  "nvidia-kernel-common glx-alternative-nvidia")
               for n in ("gpu-node-01", "gpu-node-02")}
    assert (f"Types: deb\nURIs: file:{DEBIAN_ARCHIVE_IN_NODE}\nSuites: {DEBIAN_SUITE}\n"
            f"Components: contrib\nSigned-By: {DEBIAN_KEYRING}\n") in \
        contrib["gpu-node-01"].stdout.decode(), contrib
    assert one_line.replace(" main", " contrib") in contrib["gpu-node-02"].stdout.decode()
    assert all(c.stdout.decode().count("install ok installed") == 3 for c in contrib.values())
    code, summary = provision(gpuctl, "--all")
    assert code == 0 and summary["changed"] == 0, summary


    # A mirror signed by another key is refused: apt checks the signature.
    (repo / "InRelease").write_text((repo / "InRelease").read_text().replace(
        "Origin: NVIDIA", "Origin: tampered"))
    node_sh(lab, "gpu-node-01", "rm -f /etc/apt/sources.list.d/gpuctl-nvidia.list")
    set_vars(paths.db_url, "gpu-node-01", nvidia_repo_apt_retries="1")
    code, summary = provision(gpuctl, "gpu-node-01", "--tags", "repo")
    assert code == 3, summary
    assert "Refresh the apt cache" in summary["nodes"][0]["reason"], summary


def test_preflight_refuses_debian_nvswitch_and_rhel8_python(lab, gpuctl, paths) -> None:  # type: ignore[no-untyped-def]
    lab.up(1, "--os", "debian12")
    scan_json(gpuctl, "--all", "--accept-new")
    code, summary = provision(gpuctl, "--all", "--tags", "preflight")
    assert code == 3
    assert summary["nodes"][0]["reason"].startswith(
        "NVSwitch system on Debian: gpuctl has no verified fabric manager package names"), summary
    # RHEL 8's platform Python is 3.6, on which ansible-core 2.19 runs no module: the
    # node is refused before any module runs, with the fix. (A stand-in interpreter that
    # answers the version question as RHEL 8's /usr/libexec/platform-python does.)
    lab.lab.put_file("gpu-node-01", "/usr/libexec/platform-python",
                     b"#!/bin/sh\necho 3.6\n", 0o755)
    set_vars(paths.db_url, "gpu-node-01",
             ansible_python_interpreter="/usr/libexec/platform-python")
    code, summary = provision(gpuctl, "--all", "--tags", "preflight")
    assert code == 3
    assert summary["nodes"][0]["reason"].startswith(
        "the node's Python /usr/libexec/platform-python is 3.6; ansible-core needs 3.8 or "
        "later on the node: install python39"), summary
