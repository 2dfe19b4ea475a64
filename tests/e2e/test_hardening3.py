"""Hardening round 3, each row of the issue as a user meets it: one hostile node never
stalls or crashes a fleet pass, no symbolic link is followed on a write, no secret is
stored, and the data dir is private."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from provisioner.paths import Paths
from provisioner.ssh.exec import Target, run_on_node
from provisioner.ssh.hostkeys import KnownHosts
from tests.e2e.conftest import by_node, scan_json
from tests.fleet_fixtures import fill_fleet

pytestmark = pytest.mark.e2e


def _on_node(paths: Paths, name: str, address: str, command: str) -> None:
    result = run_on_node(Target(name, address, 22, "root", str(paths.lab_dir / "id_ed25519")),
                         command, known_hosts=KnownHosts(paths.known_hosts))
    assert result.exit_code == 0, result


HOSTILE = {
    # The real probe's output with one number no node could measure.
    "huge-int": "/usr/bin/python3 -I - | sed 's/\"memory_bytes\": [0-9]*/\"memory_bytes\": "
                + "9" * 5000 + "/'",
    "huge-temp": "/usr/bin/python3 -I - | sed 's/<gpu_temp>[0-9]* C/<gpu_temp>"
                 + "9" * 400 + " C/'",
    # Closes its output and keeps the session open; prints garbage.
    "hang": "exec >&- 2>&-; sleep 150",
    "garbage": "head -c 100000 /dev/urandom",
}


def make_hostile(paths: Paths, name: str, address: str, kind: str) -> None:
    """The node's own ``python3`` (first on the probe's PATH) replaced: a broken or
    hostile node, as gpuctl meets it over SSH."""
    _on_node(paths, name, address, "cat > /usr/local/bin/python3 <<'EOF'\n#!/bin/sh\n"
             f"{HOSTILE[kind]}\nEOF\nchmod 755 /usr/local/bin/python3")


def test_hostile_nodes_never_stall_or_crash_a_scan(lab, gpuctl, paths) -> None:  # type: ignore[no-untyped-def]
    lab.up(6, "--driver")  # nvidia-smi answers, so its XML can be tampered with too
    names = [f"gpu-node-{i:02d}" for i in range(1, 7)]
    start = time.monotonic()
    code, summary = scan_json(gpuctl, "--all", "--accept-new")
    normal = time.monotonic() - start
    assert code == 0 and all(r["outcome"] == "ok" for r in summary["results"]), summary
    for index, kind in enumerate(HOSTILE, start=2):
        make_hostile(paths, names[index], lab.address(index), kind)
    timeout = 5
    start = time.monotonic()
    code, summary = scan_json(gpuctl, "--all", "--timeout", str(timeout))
    hostile = time.monotonic() - start
    results = by_node(summary)
    assert code == 3  # some nodes failed, each named; the others were judged
    assert [results[n]["outcome"] for n in names[:2]] == ["ok", "ok"], summary
    # Named per node, with the field; stored without the number.
    assert results[names[2]]["outcome"] == "fault", results[names[2]]
    assert "unusable value: memory_bytes: 99999" in results[names[2]]["message"]
    assert results[names[3]]["outcome"] == "fault", results[names[3]]
    assert "<temperature/gpu_temp>" in results[names[3]]["message"]
    assert results[names[4]]["outcome"] == "unreachable"
    assert results[names[4]]["message"] == f"timed out after {timeout} s"
    assert results[names[5]]["outcome"] == "error"
    assert "not UTF-8" in results[names[5]]["message"] or "not JSON" in \
        results[names[5]]["message"]
    # The hung node waits alongside the others: the timeout plus a normal scan.
    assert hostile < timeout + normal + 3, (hostile, normal)


def test_report_and_backup_never_follow_a_symlink(gc, gpuctl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fill_fleet(gc.db_url, 4)  # a burn-in run and certified nodes to report and hand off
    victim = tmp_path / "victim.txt"
    victim.write_text("someone else's file\n")
    report = tmp_path / "r.json"
    report.write_text("an old report\n")
    (tmp_path / "r.json.bak").symlink_to(victim)
    result = gpuctl("report", "--format", "json", "-o", str(report), "--force")
    assert result.code == 0, result
    assert victim.read_text() == "someone else's file\n"  # the link was not followed
    bak = tmp_path / "r.json.bak"
    assert not bak.is_symlink() and bak.read_text() == "an old report\n"
    assert json.loads(report.read_text())["run"]["id"] == 1
    # A link at the output itself: refused without --force, replaced (kept as .bak) with.
    link = tmp_path / "hosts.ini"
    link.symlink_to(victim)
    refused = gpuctl("handoff", "ansible", "-o", str(link))
    assert refused.code == 1 and "symbolic link" in refused.err, refused
    assert victim.read_text() == "someone else's file\n" and link.is_symlink()
    forced = gpuctl("handoff", "ansible", "-o", str(link), "--force")
    assert forced.code == 0, forced
    assert not link.is_symlink() and (tmp_path / "hosts.ini.bak").is_symlink()
    assert victim.read_text() == "someone else's file\n"
    if os.environ.get("GPUCTL_TEST_DB") == "postgresql":
        return  # db backup is SQLite's

    dangling = tmp_path / "b.db"
    dangling.symlink_to(tmp_path / "where-the-link-points.db")
    result = gpuctl("db", "backup", "-o", str(dangling))
    assert result.code == 1 and "symbolic link" in result.err, result
    assert not (tmp_path / "where-the-link-points.db").exists()
    unwritable = gpuctl("db", "backup", "-o", "/proc/gpuctl-backup.db")
    assert unwritable.code == 1 and unwritable.err.startswith("Error: cannot back up to"), \
        unwritable
    good = tmp_path / "good.db"
    assert gpuctl("db", "backup", "-o", str(good)).code == 0
    assert stat.S_IMODE(good.stat().st_mode) == 0o600
    assert not list(tmp_path.glob(".good.db.*.tmp"))


def test_init_makes_the_data_dir_and_database_private(gpuctl, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                      monkeypatch) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    monkeypatch.setenv("GPUCTL_HOME", str(home))
    monkeypatch.delenv("GPUCTL_DB", raising=False)
    result = gpuctl("init")
    assert result.code == 0, result
    assert f"{home} had mode 0755; made 0700" in result.err
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "gpuctl.db").stat().st_mode) == 0o600
    (home / "gpuctl.db").chmod(0o644)
    result = gpuctl("init")
    assert "gpuctl.db had mode 0644; made 0600" in result.err
    assert stat.S_IMODE((home / "gpuctl.db").stat().st_mode) == 0o600
    assert gpuctl("init").err == ""  # private already: nothing to say
    home.chmod(0o2770)  # a group's directory: setgid kept, the group's access dropped
    assert "made 2700" in gpuctl("init").err
    assert stat.S_IMODE(home.stat().st_mode) == 0o2700
