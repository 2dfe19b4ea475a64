"""The playbooks' package table against the lab's stand-in repositories, which are
written apart from it from the same NVIDIA sources: every name the roles would install
for a branch the lab builds must be a real package there (an alias that another package
only provides does not count: apt cannot hold it, `rpm -q` says not installed)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner.lab.packages import DRIVERS, all_packages, fabricmanager_packages, newest
from provisioner.shipped import shipped_dir

FAMILIES = {"Ubuntu": "ubuntu", "Debian": "debian", "RedHat": "rhel"}


def table() -> dict[str, Any]:
    return yaml.safe_load((shipped_dir() / "playbooks/vars/nvidia_packages.yml").read_text())


def row(family: str, branch: str) -> dict[str, Any]:
    """The row playbooks/group_vars/all.yml selects: the last whose `since` <= branch."""
    rows = [r for r in table()["nvidia_package_table"][family] if r["since"] <= int(branch)]
    return rows[-1]


def names(values: list[str], branch: str) -> list[str]:
    return [v.replace("{b}", branch) for v in values]


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("branch", ["570", "580"])
def test_every_name_in_the_table_is_a_real_package_of_the_lab_repository(
        family: str, branch: str) -> None:
    pkgs, streams = all_packages(FAMILIES[family])
    real = {p.name for p in pkgs}
    r = row(family, branch)
    wanted = [n for flavour in ("open", "proprietary") for n in names(r["driver"][flavour], branch)]
    wanted += names(r["fabricmanager"], branch) + names(r["nvlink5_versioned"], branch)
    for name in wanted:
        if name.startswith("@"):
            module, stream = name[1:].split(":")
            assert (module, stream) in {(s.module, s.stream) for s in streams}, name
        else:
            assert name in real, f"{family} {branch}: {name} is not a package in the lab repo"
    if family != "Debian":
        assert set(table()["nvlink5_tools"]) <= real


def test_the_aliases_exist_only_as_provides() -> None:
    """What broke real RHEL nodes: the suffixed fabric manager name installs (something
    provides it) but is no package. On Ubuntu 580 no source gives the suffixed name at
    all: neither a package nor provided."""
    pkgs, _ = all_packages("rhel")
    assert "nvidia-fabricmanager-570" not in {p.name for p in pkgs}
    assert any("nvidia-fabricmanager-570" in p.provides for p in pkgs)
    ubuntu, _ = all_packages("ubuntu")
    assert not any("nvidia-fabricmanager-580" in [p.name, *p.provides] for p in ubuntu)


def test_the_570_row_would_fail_on_580() -> None:
    """The table's 580 row is load-bearing: the 570 naming applied to 580 asks for names
    the repository does not have as packages."""
    real = {p.name for p in all_packages("ubuntu")[0]}
    old = names(row("Ubuntu", "570")["fabricmanager"], "580")
    assert [n for n in old if n not in real] == ["nvidia-fabricmanager-580", "libnvidia-nscq-580"]


def test_nvsdm_is_unsuffixed_from_580() -> None:
    assert [p.name for p in fabricmanager_packages("ubuntu", "580", "580.82.07")][2] == "libnvsdm"
    assert [p.name for p in fabricmanager_packages("ubuntu", "570", "570.86.15")][2] == \
        "libnvsdm-570"


@pytest.mark.parametrize("family", ["ubuntu", "rhel"])
def test_every_driver_release_has_its_own_fabric_manager(family: str) -> None:
    """Two releases of 570 and 580 in the lab: the fabric manager, NSCQ and NVSDM of each
    are there at that exact version, so a node held at the older one can match it (and
    one that asks for "the branch" gets the newest, which its driver refuses)."""
    pkgs, _ = all_packages(family)
    for branch in ("570", "580"):
        versions = DRIVERS[branch][0]
        assert len(versions) == 2 and newest(branch) == versions[-1]
        for version in versions:
            got = {p.name for p in pkgs if p.version == f"{version}-1"}
            want = {p.name for p in fabricmanager_packages(family, branch, version)}
            assert len(want) == 3 and want <= got, (branch, version, want - got)
    skewed, _ = all_packages(family, fabricmanager_skew=True)
    fm = {p.version for p in skewed if p.name in ("nvidia-fabricmanager-570",
                                                  "nvidia-fabric-manager")
          and p.version.startswith("570.")}
    assert fm == {"570.86.15-1"}


def test_nvlsm_has_nvidia_layout_and_no_service() -> None:
    """NVLSM is started by fabric manager's start script: no unit, no init script of
    its own; the binary where NVIDIA's archive puts it."""
    pkgs, _ = all_packages("ubuntu")
    nvlsm = next(p for p in pkgs if p.name == "nvlsm")
    assert set(nvlsm.files) == {"/opt/nvidia/nvlsm/sbin/nvlsm",
                                "/usr/share/nvidia/nvlsm/nvlsm.conf"}
    fm = next(p for p in pkgs if p.name == "nvidia-fabricmanager")
    unit = fm.files["/lib/systemd/system/nvidia-fabricmanager.service"][0]
    assert isinstance(unit, bytes) and b"ExecStart=/usr/bin/nvidia-fabricmanager-start.sh " \
        b"--mode start\n" in unit


def _node_state_module() -> Any:
    path = Path(shipped_dir() / "playbooks/library/gpuctl_node_state.py")
    spec = importlib.util.spec_from_file_location("gpuctl_node_state", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_versionlock_list_is_read_by_package_name(tmp_path: Path, monkeypatch: Any) -> None:
    mod = _node_state_module()
    lock = tmp_path / "versionlock.list"
    lock.write_text("# Added lock on Sat Nov 28\nnvidia-fabric-manager-0:570.124.06-1.*\n"
                    "libnvidia-nscq-570-0:570.124.06-1.*\n!excluded-pkg-0:1.0-1.*\n")
    monkeypatch.setattr(mod, "read", lambda path: lock.read_text())
    assert mod.versionlocked() == {"nvidia-fabric-manager", "libnvidia-nscq-570"}


def test_processes_are_found_by_program(tmp_path: Path) -> None:
    """verify's process check: a program run directly, or a script run by a shell,
    counts; a process that only names it in its arguments does not. The script is this
    test's own path: a lab node beside it (tests run two at once) runs the real nvlsm's
    stand-in."""
    mod = _node_state_module()
    import shutil
    import subprocess
    sleep = shutil.which("sleep")
    assert sleep
    script = str(tmp_path / "opt/nvidia/nvlsm/sbin/nvlsm")
    procs = [subprocess.Popen([sleep, "30"]),
             subprocess.Popen(["sh", "-c", "sleep 30", script]),  # sh runs -c, not it
             subprocess.Popen([sleep, "31", script])]
    try:
        got = mod.processes([os.path.realpath(sleep), script])
        assert any(c.endswith("30") for c in got[os.path.realpath(sleep)]), got
        assert got[script] == [], got
    finally:
        for p in procs:
            p.kill()
            p.wait()
