"""Writing files the way admins' tools expect: all or nothing."""

from __future__ import annotations

import os
from pathlib import Path

from provisioner.errors import InputError


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed over it, so a reader
    (node-exporter's textfile collector, slurmctld) never sees half a file and an
    interrupted write leaves the old one.

    Raises:
        InputError: the file cannot be written.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
