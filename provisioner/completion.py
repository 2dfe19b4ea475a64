"""Names for shell completion (Click's own mechanism: ``_GPUCTL_COMPLETE``): node, pool
and SKU names, read from the database and the catalogue without creating, migrating or
writing anything. Completion must never print a traceback into a shell: any trouble
(no database yet, a server down) completes nothing."""

from __future__ import annotations

import contextlib
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from provisioner.catalogue import catalogue
from provisioner.db.engine import read_only_engine
from provisioner.db.models import Node, Pool
from provisioner.errors import GpuctlError
from provisioner.paths import Paths

LIMIT = 500  # a shell shows no more than this usefully


def _like(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def _names(paths: Paths, column: Any, prefix: str) -> list[str]:
    try:
        engine = read_only_engine(paths.db_url, timeout=2)
    except GpuctlError:
        return []
    try:
        with Session(engine) as session:
            field = col(column)
            rows = session.exec(select(field).where(field.like(_like(prefix), escape="\\"))
                                .order_by(field).limit(LIMIT)).all()
        return [str(r) for r in rows]
    except SQLAlchemyError:
        return []
    finally:
        engine.dispose()


def node_names(paths: Paths, prefix: str = "") -> list[str]:
    """Registered node names starting with ``prefix``."""
    return _names(paths, Node.name, prefix)


def pool_names(paths: Paths, prefix: str = "") -> list[str]:
    """Pool names starting with ``prefix``."""
    return _names(paths, Pool.name, prefix)


def sku_names(paths: Paths, prefix: str = "") -> list[str]:
    """SKU names (shipped and site) starting with ``prefix``."""
    with contextlib.suppress(GpuctlError, OSError, ValueError):
        return sorted(n for n in catalogue(paths) if n.startswith(prefix))
    return []
