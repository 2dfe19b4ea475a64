"""``gpuctl db backup``: a consistent copy of the database while gpuctl may be running."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from provisioner.db.engine import get_engine, redact_url, sqlite_file
from provisioner.errors import GpuctlError, InputError


def backup_sqlite(url: str, backups: Path, output: Path | None = None) -> Path:
    """Copy the SQLite database at ``url`` with SQLite's online backup API (consistent
    even while other gpuctl processes write) to ``output``, default
    ``<backups>/gpuctl-<UTC time>.db``. Restore: stop gpuctl, copy the backup over the
    database file. ``Gpuctl.backup`` is the entry point.

    Raises:
        InputError: ``output`` exists (a backup never overwrites).
        GpuctlError: the database is PostgreSQL (use pg_dump: the message says how), or
            it cannot be read.
    """
    if not url.startswith("sqlite:///"):
        raise GpuctlError(f"{redact_url(url)} is PostgreSQL: back it up with the server's "
                          "own tool, e.g. `pg_dump --format=custom --file gpuctl.dump "
                          "'postgresql://USER@HOST/DB'` (restore with pg_restore)")
    get_engine(url)  # refuses a missing, empty or damaged database with its reason
    source = sqlite_file(url)
    assert source is not None  # an sqlite:/// URL, checked above
    if output is None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        output = backups / f"gpuctl-{stamp}.db"
    if output.is_symlink():
        raise InputError(f"{output} is a symbolic link; a backup is never written through "
                         "one")
    if output.exists():
        raise InputError(f"{output} exists; a backup never overwrites a file")
    output.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Into a new private file beside the output (O_EXCL|O_NOFOLLOW), linked into place
    # only when complete and checked: a link planted meanwhile is never followed, and
    # os.link refuses to replace anything that appeared at the output.
    try:
        fd, name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp",
                                    dir=output.parent)
    except OSError as exc:
        raise GpuctlError(f"cannot back up to {output}: {exc.strerror or exc}") from None
    os.close(fd)
    tmp = Path(name)
    try:
        try:
            with contextlib.closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True,
                                                    timeout=30)) as src, \
                    contextlib.closing(sqlite3.connect(tmp)) as dst:
                src.backup(dst)
                check = dst.execute("PRAGMA integrity_check").fetchone()[0]
        except sqlite3.Error as exc:
            raise GpuctlError(f"cannot back up {source}: {exc}") from None
        if check != "ok":
            raise GpuctlError(f"the copy of {source} fails SQLite's integrity check "
                              f"({check}); the database itself may be damaged")
        tmp.chmod(0o600)
        _place(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return output


def _place(tmp: Path, output: Path) -> None:
    """``tmp`` at ``output``, which must not exist: a hard link where the file system
    has them, else a copy into a file created there with ``O_EXCL|O_NOFOLLOW``.

    Raises:
        InputError: something appeared at ``output`` meanwhile.
        GpuctlError: it cannot be written.
    """
    try:
        try:
            os.link(tmp, output)
            return
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as dst, open(tmp, "rb") as src:
            shutil.copyfileobj(src, dst)
    except FileExistsError:
        raise InputError(f"{output} appeared during the backup; a backup never "
                         "overwrites a file") from None
    except OSError as exc:
        raise GpuctlError(f"cannot back up to {output}: {exc.strerror or exc}") from None
