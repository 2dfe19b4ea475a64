"""Engine and sessions. SQLite runs in WAL mode with a busy timeout so that several
gpuctl processes can write at once; PostgreSQL works by URL."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, DatabaseError, OperationalError, ProgrammingError
from sqlmodel import Session, create_engine

from provisioner.errors import GpuctlError

MIGRATIONS = Path(__file__).parent / "migrations"
_engines: dict[str, Engine] = {}


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _begin_immediate(conn: Any) -> None:
    # Take the write lock when the transaction starts, not at its first write, so two
    # processes never both read and then deadlock upgrading to a write lock.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg")
INIT_HINT = "run `gpuctl init` to create one"


def sqlite_file(url: str) -> Path | None:
    """The SQLite file ``url`` names (None for PostgreSQL).

    Raises:
        GpuctlError: a scheme gpuctl does not speak, or a malformed URL.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES or not rest:
        raise GpuctlError(f"unsupported database URL {redact_url(url)[:80]!r}: use an SQLite "
                          "file (sqlite:///PATH or a plain path) or "
                          "postgresql+psycopg://USER@HOST/DB")
    if scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise GpuctlError(f"database URL {url[:80]!r} names no file (sqlite:///PATH)")
        return Path(url.removeprefix("sqlite:///"))
    return None


def _damaged(path: Path, exc: DatabaseError) -> GpuctlError:
    return GpuctlError(f"database {path} is damaged or not a gpuctl database "
                       f"({_one_line(exc.orig)}); it was left as it is: restore a backup "
                       "(`gpuctl db backup` makes them), or move it aside and run "
                       "`gpuctl init`")


def get_engine(url: str, *, create: bool = False) -> Engine:
    """Return a migrated engine for ``url`` (one per URL per process).

    Only ``create`` (``gpuctl init``) makes a new database; every other command refuses
    a missing, empty or foreign one, so a typo in ``--db`` never creates a stray file.

    Raises:
        GpuctlError: the URL is unsupported, or the database is missing, empty, damaged
            or cannot be opened or migrated (one line, naming it).
    """
    if url in _engines:
        return _engines[url]
    path = sqlite_file(url)
    if path is not None:
        if path.is_dir():
            raise GpuctlError(f"database {path} is a directory, not a database file")
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        elif not path.is_file():
            raise GpuctlError(f"no database at {path}; {INIT_HINT}")
        elif path.stat().st_size == 0:
            raise GpuctlError(f"database {path} is empty (0 bytes), not a gpuctl database; "
                              f"restore a backup, or {INIT_HINT}")
        engine = create_engine(url, connect_args={"timeout": 30, "isolation_level": None})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _begin_immediate)
    else:
        engine = _postgresql_engine(url)
    try:
        version = _schema_version(engine)
        if not create and version is None:
            engine.dispose()
            raise GpuctlError(f"database {redact_url(url)} has no gpuctl schema; {INIT_HINT}")
        if version != head_revision():  # one query when current (every command opens it)
            migrate(engine)
    except OperationalError as exc:
        engine.dispose()
        if path is not None and _is_corruption(exc):
            raise _damaged(path, exc) from None
        raise GpuctlError(f"cannot open database {redact_url(url)}: {_one_line(exc.orig)}"
                          ) from None
    except DatabaseError as exc:
        engine.dispose()
        if path is not None:
            raise _damaged(path, exc) from None
        raise GpuctlError(f"database {redact_url(url)}: {_one_line(exc.orig)}") from None
    _engines[url] = engine
    return engine


POSTGRESQL_DRIVER_HINT = ("a PostgreSQL database needs the psycopg driver, which is not "
                          "installed: pip install 'gpuctl[postgresql]' (with pipx: pipx "
                          "inject gpuctl 'psycopg[binary]')")


def _postgresql_engine(url: str, **connect_args: Any) -> Engine:
    try:
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    except ModuleNotFoundError:
        raise GpuctlError(POSTGRESQL_DRIVER_HINT) from None
    except (ValueError, ArgumentError) as exc:  # a port that is not a number, say
        raise GpuctlError(f"malformed database URL {redact_url(url)[:80]!r}: "
                          f"{_one_line(exc)}") from None


def read_only_engine(url: str, *, timeout: float = 5.0) -> Engine:
    """An engine that never creates, migrates or writes the database: SQLite opened
    read-only (no write lock taken; SQLite may still create a WAL database's -wal and
    -shm index files beside it, as any reader does), PostgreSQL with a connect timeout.
    For readers that must change nothing (`gpuctl doctor`, shell completion); dispose it.

    Raises:
        GpuctlError: the URL is unsupported, or the SQLite file is missing.
    """
    path = sqlite_file(url)
    if path is None:
        return _postgresql_engine(url, connect_timeout=max(1, int(timeout)))
    if not path.is_file():
        raise GpuctlError(f"no database at {path}; {INIT_HINT}")
    # An SQLite URI with the path quoted (a '#' or '%' in a directory name is a path
    # character, not a URI's fragment or escape).
    uri = f"file:{quote(str(path))}?mode=ro"
    return create_engine("sqlite://", creator=lambda: sqlite3.connect(
        uri, uri=True, timeout=timeout, check_same_thread=False))


def schema_revision(url: str, *, timeout: float = 5.0) -> tuple[str | None, str]:
    """(the database's schema revision, the newest gpuctl knows), read without creating,
    migrating or writing anything (`gpuctl doctor`). The revision is None for a database
    with no gpuctl schema.

    Raises:
        GpuctlError: the URL is unsupported, or the database is missing or cannot be
            opened (one line, naming it).
    """
    engine = read_only_engine(url, timeout=timeout)
    try:
        return _schema_version(engine), head_revision()
    except (OperationalError, DatabaseError) as exc:
        raise GpuctlError(f"cannot open database {redact_url(url)}: {_one_line(exc.orig)}"
                          ) from None
    finally:
        engine.dispose()


def _is_corruption(exc: DatabaseError) -> bool:
    text = str(exc.orig).lower()
    return any(word in text for word in ("malformed", "not a database", "corrupt",
                                         "disk image", "file is encrypted"))


def _schema_version(engine: Engine) -> str | None:
    """The database's alembic revision; None for a database with no gpuctl schema."""
    try:
        with engine.connect() as conn:
            value = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except ProgrammingError:
        return None  # PostgreSQL: no such table
    except OperationalError as exc:
        if "no such table" in str(exc.orig):
            return None
        raise
    return str(value) if value else None


def head_revision() -> str:
    """The newest migration's revision (files are named ``NNNN_what.py``, revision NNNN)."""
    return max(p.name[:4] for p in (MIGRATIONS / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest alembic revision. A database already there is
    recognised with one query, without loading alembic (every command opens the
    database, and alembic's start-up costs more than most commands)."""
    try:
        with engine.connect() as conn:
            current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        if current == head_revision():
            return
    except (OperationalError, ProgrammingError):
        pass  # a new database: no alembic_version table yet
    from alembic import command  # noqa: PLC0415
    from alembic.config import Config  # noqa: PLC0415

    cfg = Config(str(MIGRATIONS / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS))
    sqlite = engine.dialect.name == "sqlite"
    if sqlite:
        # SQLite changes a table's constraints by rebuilding it; with foreign keys on,
        # dropping the old table would delete (or cascade to) the rows that refer to
        # it. Its documented procedure: foreign keys off, rebuild, check, on again.
        engine = create_engine(engine.url, connect_args={"timeout": 30,
                                                         "isolation_level": None})
        event.listen(engine, "begin", _begin_immediate)
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall() \
                if sqlite else []
            if broken:
                raise GpuctlError(f"migration left {len(broken)} rows with dangling "
                                  f"references (first: {broken[0]}); nothing was changed")
    finally:
        if sqlite:
            engine.dispose()


def _one_line(error: object) -> str:
    """Driver messages span lines (psycopg adds hints); errors here are one line."""
    return " ".join(str(error).split())[:400]


def redact_url(url: str) -> str:
    """Hide a password in a database URL before it is printed."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on any exception."""
    with Session(get_engine(url), expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except DatabaseError as exc:
            session.rollback()
            # Locked for longer than the busy timeout, server gone, disk full, a page
            # found corrupt mid-query: not a bug, and one line.
            if url.startswith("sqlite:///") and _is_corruption(exc):
                raise _damaged(sqlite_file(url) or Path(url), exc) from None
            raise GpuctlError(f"database {redact_url(url)}: {_one_line(exc.orig)}") from exc
        except BaseException:
            session.rollback()
            raise
