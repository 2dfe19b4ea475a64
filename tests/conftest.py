"""Shared fixtures: every test gets its own GPUCTL_HOME (and so its own database)."""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.cli import main
from provisioner.handle import Gpuctl
from provisioner.paths import Paths
from tests.pgserver import PgServer

DATA = Path(__file__).parent / "data"


# GPUCTL_TEST_DB=postgresql runs the tests against a real PostgreSQL server that the
# suite starts (scripts/test.sh runs the e2e tests that way once); default SQLite.
ON_POSTGRES = os.environ.get("GPUCTL_TEST_DB") == "postgresql"
_databases = itertools.count(1)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer | None]:
    if not ON_POSTGRES:
        yield None
        return
    server = PgServer(tmp_path_factory.mktemp("pg"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory,
                pg_server: PgServer | None) -> str:
    """A database made once by ``gpuctl init`` (migrated to the newest schema) that every
    test starts from, as an admin's would after `gpuctl init`: an SQLite file to copy, or
    a PostgreSQL template database."""
    from provisioner.db.engine import get_engine

    if pg_server is not None:
        url = pg_server.create_database("gpuctl_template")
        get_engine(url, create=True).dispose()
        return "gpuctl_template"
    home = tmp_path_factory.mktemp("template-db")
    Gpuctl(Paths(home)).init()
    get_engine(f"sqlite:///{home / 'gpuctl.db'}").dispose()
    return str(home / "gpuctl.db")


@pytest.fixture(autouse=True)
def gpuctl_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                pg_server: PgServer | None, template_db: str) -> Iterator[Path]:
    home = tmp_path / "gpuctl-home"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("GPUCTL_HOME", str(home))
    monkeypatch.delenv("GPUCTL_DB", raising=False)
    # Slurm's commands follow SLURM_CONF; a test's lab Slurm never outlives the test.
    monkeypatch.delenv("SLURM_CONF", raising=False)
    monkeypatch.delenv("GPUCTL_SLURM_RESTART", raising=False)
    monkeypatch.delenv("GPUCTL_SLURMD_RESTART", raising=False)
    if pg_server is not None:
        monkeypatch.setenv("GPUCTL_DB", pg_server.create_database(
            f"t{next(_databases)}", template=template_db))
    else:
        shutil.copyfile(template_db, home / "gpuctl.db")
    monkeypatch.setenv("COLUMNS", "200")
    yield home


@pytest.fixture
def paths(gpuctl_home: Path) -> Paths:
    return Paths.from_env()


@pytest.fixture
def gc(paths: Paths) -> Gpuctl:
    """The core handle for this test's data dir and database."""
    return Gpuctl(paths)


class CliResult:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"CliResult(code={self.code}, out={self.out[-800:]!r}, err={self.err[-800:]!r})"


@pytest.fixture
def gpuctl(capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    """Run the real CLI entry point in-process: gpuctl("nodes", "list")."""

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


# The longest test files first (CI's durations, scripts/test.sh): the suite runs in two
# workers, a file whole on one (--dist loadfile --no-loadscope-reorder), and a long file
# started last would leave the other worker idle at the end.
LONGEST_FIRST = ("tests/e2e/test_provision_real.py", "tests/e2e/test_slurm.py",
                 "tests/e2e/test_burnin.py", "tests/e2e/test_burnin_trust.py",
                 "tests/e2e/test_provision.py", "tests/e2e/test_remediation.py",
                 "tests/e2e/test_wheel.py", "tests/e2e/test_hardening.py",
                 "tests/e2e/test_recovery.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="the lab needs root")
    for item in items:
        if "e2e" in item.keywords and "lab" in item.fixturenames:
            item.add_marker(skip)
