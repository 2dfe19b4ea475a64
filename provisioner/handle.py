"""``Gpuctl``: the one handle every core entry point takes.

Like sqlite-utils' ``Database``, one object owns where gpuctl keeps its state (``Paths``)
and the database behind it, and hands out transactions. The CLI builds one per command
and passes it to a core function; it never opens a session itself.
"""

from __future__ import annotations

import getpass
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

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
    """Paths, the database and who is acting.

    ``actor`` is recorded on every run and event; ``host`` names this control host on
    runs (crash recovery compares it, see ``provisioner.runs``).
    """

    paths: Paths
    actor: str = field(default_factory=current_actor)
    host: str = field(default_factory=socket.gethostname)
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

    def init(self) -> None:
        """Create the data directory and the database, migrated to the newest schema
        (``gpuctl init``; safe to run again).

        Raises:
            GpuctlError: the database cannot be opened or migrated.
        """
        from provisioner.db.engine import get_engine  # noqa: PLC0415

        self.paths.ensure()
        get_engine(self.db_url, create=True)

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
