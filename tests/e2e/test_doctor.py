"""``gpuctl doctor`` on this control host: all checks pass, then each prerequisite is
taken away in turn and only its line fails (exit 1). Doctor changes nothing."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import sys
from pathlib import Path

import pytest

from provisioner.doctor import check_python
from provisioner.handle import Gpuctl
from provisioner.slurm.apply import SlurmSettings, save_settings

pytestmark = pytest.mark.e2e


def doctor(gpuctl, *args: str) -> tuple[int, dict[str, dict[str, object]]]:  # type: ignore[no-untyped-def]
    result = gpuctl(*args, "doctor", "--json")
    doc = json.loads(result.out)
    assert doc["ok"] == (result.code == 0), result
    return result.code, {c["name"]: c for c in doc["checks"]}


def failing(checks: dict[str, dict[str, object]]) -> list[str]:
    return [name for name, c in checks.items() if not c["ok"]]


def path_without(tmp_path: Path, *tools: str) -> str:
    """A PATH holding every program of this one except ``tools``."""
    bin_dir = tmp_path / "bin-without-" / "-".join(tools)
    bin_dir.mkdir(parents=True)
    for entry in os.environ["PATH"].split(os.pathsep):
        if not entry or not Path(entry).is_dir():
            continue
        for program in Path(entry).iterdir():
            target = bin_dir / program.name
            if program.name not in tools and not target.exists() and program.is_file():
                target.symlink_to(program)
    return str(bin_dir)


def test_a_healthy_control_host_passes(gpuctl, gpuctl_home: Path) -> None:  # type: ignore[no-untyped-def]
    db = gpuctl_home / "gpuctl.db"
    on_sqlite = db.exists()  # else the suite's PostgreSQL server (GPUCTL_DB)
    before = (db.stat().st_mtime_ns, db.read_bytes()) if on_sqlite else None
    result = gpuctl("doctor")
    assert result.code == 0, result
    lines = result.out.splitlines()
    assert all(line.startswith("ok") for line in lines[:-1]) and len(lines) >= 9, lines
    assert lines[-1] == "all checks passed"
    assert "(current)" in next(line for line in lines if "database" in line)
    if on_sqlite:
        # Read-only: the database file is untouched (SQLite may still open a WAL-mode
        # database's -wal/-shm files beside it to read it).
        assert (db.stat().st_mtime_ns, db.read_bytes()) == before


@pytest.mark.parametrize("tool", ["ssh", "ssh-keygen"])
def test_a_missing_ssh_tool_is_named(gpuctl, monkeypatch, tmp_path: Path,  # type: ignore[no-untyped-def]
                                     tool: str) -> None:
    monkeypatch.setenv("PATH", path_without(tmp_path, tool))
    code, checks = doctor(gpuctl)
    assert code == 1 and failing(checks) == [tool]
    assert "not found on PATH" in str(checks[tool]["detail"])
    assert "openssh-client" in str(checks[tool]["fix"])


def test_an_old_python_fails() -> None:
    assert not check_python((3, 10, 12)).ok
    assert "3.11" in check_python((3, 10, 12)).fix
    assert check_python(tuple(sys.version_info[:3])).ok


def test_the_data_dir_must_be_private(gpuctl, gpuctl_home: Path) -> None:  # type: ignore[no-untyped-def]
    gpuctl_home.chmod(0o755)
    code, checks = doctor(gpuctl)
    assert code == 1 and failing(checks) == ["data dir"]
    assert "mode 0755" in str(checks["data dir"]["detail"])
    assert checks["data dir"]["fix"] == f"chmod 700 {gpuctl_home}"
    gpuctl_home.chmod(0o700)
    assert doctor(gpuctl)[0] == 0


def test_the_database_must_exist_and_be_current(gpuctl, gpuctl_home: Path) -> None:  # type: ignore[no-untyped-def]
    if os.environ.get("GPUCTL_TEST_DB") == "postgresql":
        pytest.skip("SQLite file states")
    db = gpuctl_home / "gpuctl.db"
    with sqlite3.connect(db) as conn:
        head = conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
        conn.execute("UPDATE alembic_version SET version_num = '0001'")
    code, checks = doctor(gpuctl)
    assert code == 1 and failing(checks) == ["database"]
    assert f"at schema 0001; this gpuctl needs {head}" in str(checks["database"]["detail"])
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    code, checks = doctor(gpuctl)
    assert "newer than this gpuctl" in str(checks["database"]["detail"])
    db.unlink()
    code, checks = doctor(gpuctl)
    assert code == 1 and failing(checks) == ["database"]
    assert "gpuctl init" in str(checks["database"]["detail"])
    assert not db.exists()  # doctor never creates it


def test_an_unreachable_or_driverless_postgresql_is_one_line(gpuctl, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    down = "postgresql+psycopg://gpuctl:secret@127.0.0.1:9/gpuctl"
    code, checks = doctor(gpuctl, "--db", down)
    assert code == 1 and failing(checks) == ["database"]
    detail = str(checks["database"]["detail"])
    assert "cannot open database" in detail and "secret" not in detail
    assert "\n" not in detail
    # gpuctl installed without the postgresql extra: the driver cannot be imported.
    monkeypatch.setitem(sys.modules, "psycopg", None)
    code, checks = doctor(gpuctl, "--db", down.replace(":9/", ":10/"))
    assert "pip install 'gpuctl[postgresql]'" in str(checks["database"]["detail"])
    result = gpuctl("--db", down.replace(":9/", ":10/"), "nodes", "list")
    assert result.code == 1 and "gpuctl[postgresql]" in result.err
    assert "Traceback" not in result.err


def test_the_nvidia_repository_url_is_checked(gpuctl, gpuctl_home: Path) -> None:  # type: ignore[no-untyped-def]
    site = gpuctl_home / "group_vars"
    site.mkdir()
    (site / "all.yml").write_text("nvidia_repo_mirror_url: ftp://mirror.example/cuda\n")
    code, checks = doctor(gpuctl)
    assert code == 1 and failing(checks) == ["NVIDIA repository"]
    assert "ftp://mirror.example/cuda" in str(checks["NVIDIA repository"]["detail"])
    (site / "all.yml").write_text("nvidia_repo_mirror_url: file:/srv/mirror/cuda\n")
    code, checks = doctor(gpuctl)
    assert code == 0 and "mirror on each node's disk" in str(
        checks["NVIDIA repository"]["detail"])
    (site / "all.yml").write_text("nvidia_repo_mirror_url: [unclosed\n")
    code, checks = doctor(gpuctl)
    assert code == 1 and failing(checks) == ["NVIDIA repository"]


def test_missing_shipped_files_are_named(gpuctl, monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("GPUCTL_PROJECT_DIR", str(tmp_path / "no-checkout"))
    code, checks = doctor(gpuctl)
    assert code == 1 and "shipped files" in failing(checks)
    assert "playbooks/provision.yml is not in" in str(checks["shipped files"]["detail"])


def test_slurm_is_checked_once_a_handoff_is_applied(gpuctl, gc: Gpuctl, monkeypatch,  # type: ignore[no-untyped-def]
                                                    tmp_path: Path) -> None:
    code, checks = doctor(gpuctl)
    assert "slurm" not in checks  # no Slurm hand-off: nothing to check
    # Debian's real scontrol, reading a configuration as on a controller.
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=doctor\nSlurmctldHost=localhost\nNodeName=n1 CPUs=1\n"
                    "PartitionName=p Nodes=n1\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    save_settings(gc, SlurmSettings(str(tmp_path), str(conf), "true"))
    code, checks = doctor(gpuctl)
    assert code == 0, checks
    assert re.match(r"Slurm \d\d\.\d\d\.\d+ ", str(checks["slurm"]["detail"]))
    monkeypatch.setenv("PATH", path_without(tmp_path, "sacctmgr", "sbatch"))
    code, checks = doctor(gpuctl)
    assert code == 1 and failing(checks) == ["slurm"]
    assert str(checks["slurm"]["detail"]).startswith("sacctmgr, sbatch not found")
    (gc.paths.home / "slurm.json").write_text("{not json")
    code, checks = doctor(gpuctl)
    assert code == 1 and failing(checks) == ["slurm"]
    assert "unreadable" in str(checks["slurm"]["detail"])


def test_slurm_without_a_readable_configuration_fails(gpuctl, gc: Gpuctl, monkeypatch,  # type: ignore[no-untyped-def]
                                                      tmp_path: Path) -> None:
    conf = tmp_path / "slurm.conf"
    conf.write_text("# no ClusterName\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    save_settings(gc, SlurmSettings(str(tmp_path), str(conf), "true"))
    code, checks = doctor(gpuctl)
    assert code == 1 and failing(checks) == ["slurm"]
    assert "scontrol --version failed" in str(checks["slurm"]["detail"])


def test_ansible_is_found_beside_gpuctl_not_on_path() -> None:
    # pipx links only gpuctl onto PATH: ansible-playbook is found beside the interpreter.
    from provisioner.doctor import ansible_playbook

    assert ansible_playbook() == str(Path(sys.executable).parent / "ansible-playbook")


def test_odd_group_vars_are_one_line_each(gpuctl, gpuctl_home: Path) -> None:  # type: ignore[no-untyped-def]
    site = gpuctl_home / "group_vars"
    site.mkdir()
    for content, ok, said in (
            (b"# site overrides go here\n", True, "NVIDIA"),  # Ansible reads it as {}
            (b"\xff\xfe", False, "all.yml"),
            (b'nvidia_repo_mirror_url: "http://[::1"\n', False, "not a valid URL"),
            (b'nvidia_repo_mirror_url: "http://mirror/x\\nnext"\n', False, "whitespace"),
            (b'nvidia_repo_mirror_url: "{{ site_mirror }}"\n', True, "Jinja2")):
        (site / "all.yml").write_bytes(content)
        result = gpuctl("doctor")
        assert result.code == (0 if ok else 1), (content, result)
        line = next(ln for ln in result.out.splitlines() if "NVIDIA repository" in ln)
        assert said in line, (content, line)
        assert "Traceback" not in result.err
    # Ansible also reads group_vars/all/: a mirror set there is the one nodes use.
    (site / "all.yml").unlink()
    (site / "all").mkdir()
    (site / "all" / "mirror.yml").write_text("nvidia_repo_mirror_url: https://mirror.site/cuda\n")
    code, checks = doctor(gpuctl)
    assert code == 0 and "https://mirror.site/cuda (mirror" in str(
        checks["NVIDIA repository"]["detail"])


def test_odd_settings_and_urls_are_one_line_each(gpuctl, gc: Gpuctl, monkeypatch,  # type: ignore[no-untyped-def]
                                                 tmp_path: Path) -> None:
    (gc.paths.home / "slurm.json").write_text('{"conf_dir": "/x", "slurm_conf": ["x"]}')
    code, checks = doctor(gpuctl)
    assert code == 1 and failing(checks) == ["slurm"]
    assert "unreadable" in str(checks["slurm"]["detail"])
    (gc.paths.home / "slurm.json").unlink()
    code, checks = doctor(gpuctl, "--db", "postgresql+psycopg://u:pw@127.0.0.1:abc/x")
    assert code == 1 and failing(checks) == ["database"]
    assert "malformed database URL" in str(checks["database"]["detail"])


def test_a_linked_data_dir_or_one_with_a_hash_in_its_path_works(gpuctl, gpuctl_home: Path,  # type: ignore[no-untyped-def]
                                                                monkeypatch,
                                                                tmp_path: Path) -> None:
    if os.environ.get("GPUCTL_TEST_DB") == "postgresql":
        pytest.skip("SQLite file paths")
    odd = tmp_path / "data #1"
    odd.mkdir(mode=0o700)
    monkeypatch.setenv("GPUCTL_HOME", str(odd))
    assert gpuctl("init").code == 0
    code, checks = doctor(gpuctl)
    assert code == 0, checks
    link = tmp_path / "linked-home"
    link.symlink_to(odd)
    monkeypatch.setenv("GPUCTL_HOME", str(link))
    code, checks = doctor(gpuctl)
    assert code == 0, checks
