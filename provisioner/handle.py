"""``Gpuctl``: the one handle every core entry point takes.

Like sqlite-utils' ``Database``, one object owns where gpuctl keeps its state (``Paths``)
and the database behind it, and hands out transactions. The CLI builds one per command
and passes it to a core function; it never opens a session itself.
"""

from __future__ import annotations

import getpass
import os
import socket
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from provisioner.errors import GpuctlError
from provisioner.events import Change, Listener, SyncReport, take_changes
from provisioner.paths import Paths

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlmodel import Session

    from provisioner.catalogue import Sku


def current_actor() -> str:
    """Who is acting, as ``user@host``, for the event log."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@dataclass
class Gpuctl:
    """Paths, the database, who is acting, and who listens to gpuctl's changes.

    ``actor`` is recorded on every run and event; ``host`` names this control host on
    runs (crash recovery compares it, see ``provisioner.runs``). ``listeners`` hear of
    every committed state change (``provisioner.events``); what they did collects in
    ``reports`` until someone takes it (``take_reports``).
    """

    paths: Paths
    actor: str = field(default_factory=current_actor)
    host: str = field(default_factory=socket.gethostname)
    listeners: list[Listener] = field(default_factory=list)
    reports: list[SyncReport] = field(default_factory=list, repr=False)
    # Serving nodes this command could not verify (monitor: unreachable, host key
    # changed), by name -> why: the schedulers keep them drained while they are here.
    unverified: dict[str, str] = field(default_factory=dict, repr=False)
    _skus: dict[str, Sku] | None = field(default=None, init=False, repr=False)

    @classmethod
    def from_env(cls, db: str | None = None) -> Gpuctl:
        """The handle for ``GPUCTL_HOME``/``GPUCTL_DB`` (``db`` beats ``GPUCTL_DB``)."""
        return cls(Paths.from_env(db))

    @property
    def db_url(self) -> str:
        return self.paths.db_url

    @property
    def db_display(self) -> str:
        """The database URL as it may be printed (password hidden)."""
        from provisioner.db.engine import redact_url  # noqa: PLC0415

        return redact_url(self.db_url)

    def init(self) -> list[str]:
        """Create the data directory and the database, migrated to the newest schema
        (``gpuctl init``; safe to run again). Both are private (0700, 0600); returns a
        warning for each existing one that was not and has been fixed.

        Raises:
            GpuctlError: the database cannot be opened or migrated.
        """
        from provisioner.db.engine import get_engine, sqlite_file  # noqa: PLC0415

        fixed = self.paths.ensure()
        # A new database, and the -wal and -shm files SQLite gives the database's mode,
        # are private from their first byte.
        old_umask = os.umask(0o077)
        try:
            get_engine(self.db_url, create=True)
        finally:
            os.umask(old_umask)
        sqlite = sqlite_file(self.db_url)
        mode = stat.S_IMODE(sqlite.stat().st_mode) if sqlite is not None else 0
        if mode & 0o077:  # an existing database others could read
            assert sqlite is not None
            sqlite.chmod(0o600)
            fixed.append(f"{sqlite} had mode {mode:04o}; made 0600 (private)")
        return fixed

    @property
    def engine(self) -> Engine:
        """The migrated engine (one per database URL per process)."""
        from provisioner.db.engine import get_engine  # noqa: PLC0415  (alembic: lazily)

        return get_engine(self.db_url)

    def skus(self) -> dict[str, Sku]:
        """The SKU catalogue, site files included (see ``provisioner.catalogue``). Read
        once per handle: a scan asks for it for every node it stores."""
        if self._skus is None:
            from provisioner.catalogue import catalogue  # noqa: PLC0415  (yaml: lazily)

            self._skus = catalogue(self.paths)
        return self._skus

    def sku(self, name: str | None) -> Sku | None:
        """The SKU called ``name``; None when the node's SKU is unknown."""
        return self.skus().get(name or "")

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed on success, rolled back on any exception."""
        from provisioner.db.engine import session_scope  # noqa: PLC0415

        with session_scope(self.db_url) as session:
            yield session
        # Committed: now the listeners may act on it (a scheduler drains the node before
        # the run that just moved it starts work).
        changes = take_changes(session)
        if changes:
            self.announce(changes)

    def announce(self, changes: list[Change]) -> None:
        """Hand committed ``changes`` to every listener; their reports join ``reports``."""
        for listener in self.listeners:
            self._collect(listener.name, partial(listener.changed, self, changes))

    def wait_quiet(self, names: list[str], timeout: float) -> dict[str, str]:
        """Wait up to ``timeout`` seconds for the schedulers to have no work left on
        ``names`` (drained, not draining); returns the nodes that still have some, or
        whose scheduler could not be asked, with why. Never raises."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            left: dict[str, str] = {}
            for listener in self.listeners:
                try:
                    left.update(listener.jobs_left(self, names) or {})
                except GpuctlError as exc:
                    left.update({n: f"cannot ask {listener.name} whether jobs still run "
                                    f"there: {exc}" for n in names})
            remaining = deadline - time.monotonic()
            if not left or remaining <= 0:
                return left
            time.sleep(min(2.0, remaining))

    def kill_jobs(self, names: list[str]) -> dict[str, str]:
        """Have each scheduler cancel the jobs that still hold ``names``; node -> what
        was done, or why it could not be. A listener without ``kill_jobs`` kills none.
        Never raises."""
        return self._ask_each("kill_jobs", names, "could not cancel its jobs in {}")

    def admin_holds(self, names: list[str]) -> dict[str, str]:
        """Of ``names``, the nodes a person took out in a listener's system (drained or
        DOWN there by someone other than gpuctl), with why; a node whose system could
        not be asked is held too (gpuctl acts on no node it cannot clear). A listener
        without ``admin_holds`` holds none. Never raises."""
        return self._ask_each("admin_holds", names, "cannot ask {} who drained it")

    def _ask_each(self, method: str, names: list[str], failed: str) -> dict[str, str]:
        """Each listener that has ``method``: its answer per node; where one cannot be
        asked, ``failed`` (``{}``: the listener's name) and why, for the nodes no answer
        covers yet."""
        out: dict[str, str] = {}
        for listener in self.listeners:
            ask = getattr(listener, method, None)
            if ask is None:
                continue
            try:
                out.update(ask(self, names) or {})
            except GpuctlError as exc:
                out.update({n: f"{failed.format(listener.name)}: {exc}" for n in names
                            if n not in out})
        return out

    def reconcile(self) -> list[SyncReport]:
        """Every listener brings its system in line with gpuctl (``gpuctl monitor``
        calls this each pass: it retries what a listener could not do at the time)."""
        for listener in self.listeners:
            self._collect(listener.name, partial(listener.reconcile, self))
        return self.take_reports()

    def take_reports(self) -> list[SyncReport]:
        """The listeners' reports so far, removed from the handle."""
        out, self.reports = self.reports, []
        return out

    def _collect(self, name: str, call: Callable[[], SyncReport | None]) -> None:
        # Never raises: the change it mirrors is committed already, and a run's scaffold
        # must get to settle its nodes whatever a listener does. A listener's own errors
        # come back in its report; anything else is a bug, reported with its type.
        from provisioner.errors import GpuctlError  # noqa: PLC0415

        try:
            report = call()
        except GpuctlError as exc:
            report = SyncReport(name, error=str(exc))
        except Exception as exc:  # noqa: BLE001  (see above: a bug, said, not raised)
            report = SyncReport(name, error=f"{type(exc).__name__}: {exc}")
        if report is not None and not report.empty():
            self.reports.append(report)

    def backup(self, output: Path | None = None) -> Path:
        """A consistent copy of the SQLite database (``gpuctl db backup``), by default
        ``<data dir>/backups/gpuctl-<UTC time>.db``.

        Raises:
            InputError: ``output`` exists (a backup never overwrites).
            GpuctlError: the database is PostgreSQL (the message says how to use
                pg_dump), or it cannot be read.
        """
        from provisioner.db.backup import backup_sqlite  # noqa: PLC0415

        return backup_sqlite(self.db_url, self.paths.home / "backups", output)
