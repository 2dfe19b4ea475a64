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


def _hostile_python(paths: Paths, name: str, address: str, body: str) -> None:
    """The node's own ``python3`` (first on the probe's PATH) replaced by ``body``: a
    broken or hostile node, as gpuctl meets it over SSH."""
    _on_node(paths, name, address, "cat > /usr/local/bin/python3 <<'EOF'\n#!/bin/sh\n"
             f"{body}\nEOF\nchmod 755 /usr/local/bin/python3")


def test_one_hostile_node_never_stalls_or_crashes_a_20_node_scan(lab, gpuctl, paths) -> None:  # type: ignore[no-untyped-def]
    lab.up(20)
    names = [f"gpu-node-{i:02d}" for i in range(1, 21)]
    start = time.monotonic()
    code, summary = scan_json(gpuctl, "--all", "--accept-new")
    normal = time.monotonic() - start
    assert code == 0 and all(r["outcome"] == "ok" for r in summary["results"]), summary
    real = "/usr/bin/python3 -I -"
    # The real probe's output with one number no node could measure.
    _hostile_python(paths, names[16], lab.address(16),
                    f"{real} | sed 's/\"memory_bytes\": [0-9]*/\"memory_bytes\": "
                    f"{'9' * 5000}/'")
    _hostile_python(paths, names[17], lab.address(17),
                    f"{real} | sed 's/<gpu_temp>[0-9]* C/<gpu_temp>{'9' * 400} C/'")
    # Closes its output and keeps the session open; prints garbage.
    _hostile_python(paths, names[18], lab.address(18), "exec >&-; sleep 150")
    _hostile_python(paths, names[19], lab.address(19), "head -c 100000 /dev/urandom")
    timeout = 10
    start = time.monotonic()
    code, summary = scan_json(gpuctl, "--all", "--timeout", str(timeout))
    hostile = time.monotonic() - start
    results = by_node(summary)
    assert [n for n in names[:16] if results[n]["outcome"] == "ok"] == names[:16], summary
    # Named per node, with the field; stored without the number.
    assert results[names[16]]["outcome"] == "fault", results[names[16]]
    assert "unusable value: memory_bytes: 99999" in results[names[16]]["message"]
    assert results[names[17]]["outcome"] == "fault", results[names[17]]
    assert "<temperature/gpu_temp>" in results[names[17]]["message"]
    assert results[names[18]]["outcome"] == "unreachable"
    assert results[names[18]]["message"] == f"timed out after {timeout} s"
    assert results[names[19]]["outcome"] == "error"
    assert "not UTF-8" in results[names[19]]["message"] or "not JSON" in \
        results[names[19]]["message"]
    assert code == 3  # some nodes failed, named above; the others were judged
    # Within the timeout plus a normal scan (the hung node waits alongside the others).
    print(f"20-node scan: normal {normal:.1f} s, with 2 hostile nodes {hostile:.1f} s "
          f"(timeout {timeout} s)")
    assert hostile < timeout + normal + 5, (hostile, normal)


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
