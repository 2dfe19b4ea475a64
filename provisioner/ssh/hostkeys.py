"""gpuctl's own known_hosts: unknown keys are refused unless accepted, changed keys
always refused. Safe for many threads of one process and for several processes."""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paramiko

from provisioner.errors import GpuctlError


class HostKeyError(GpuctlError):
    """A host key problem; the node is refused."""


class HostKeyUnknown(HostKeyError):
    pass


class HostKeyChanged(HostKeyError):
    pass


def fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def host_entry(address: str, port: int) -> str:
    return address if port == 22 else f"[{address}]:{port}"


class KnownHosts:
    """Host keys in an OpenSSH-format file that only gpuctl writes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._keys = paramiko.HostKeys()
        self._mtime: float | None = None

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _reload(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            self._keys, self._mtime = paramiko.HostKeys(), None
            return
        if mtime != self._mtime:
            keys = paramiko.HostKeys()
            keys.load(str(self.path))
            self._keys, self._mtime = keys, mtime

    def check(self, address: str, port: int, key: paramiko.PKey, *, accept_new: bool,
              node: str) -> bool:
        """Verify ``key`` for ``address:port``; returns True when it was newly added.

        Raises:
            HostKeyUnknown: no key is on file and ``accept_new`` is false.
            HostKeyChanged: the key on file differs from ``key``.
        """
        entry = host_entry(address, port)
        with self._lock:
            self._reload()
            known = self._keys.lookup(entry)
            if known is not None and key.get_name() in known:
                if known[key.get_name()].asbytes() == key.asbytes():
                    return False
                raise HostKeyChanged(
                    f"host key for {node} ({entry}) CHANGED: now {fingerprint(key)}, on file "
                    f"{fingerprint(known[key.get_name()])}; if the node was reinstalled, verify "
                    f"the new key on its console, then run `gpuctl nodes forget-hostkey {node}`"
                )
            if known is not None and len(known.keys()):
                raise HostKeyChanged(
                    f"host key for {node} ({entry}) CHANGED type: now {key.get_name()}, on file "
                    f"{', '.join(known.keys())}; verify it, then `gpuctl nodes forget-hostkey "
                    f"{node}`"
                )
            if not accept_new:
                raise HostKeyUnknown(
                    f"unknown host key for {node} ({entry}, {key.get_name()} {fingerprint(key)});"
                    " verify it and re-run with --accept-new"
                )
            with self._file_lock():
                self._mtime = None
                self._reload()
                self._keys.add(entry, key.get_name(), key)
                self._save()
                self._mtime = self.path.stat().st_mtime
            return True

    def forget(self, address: str, port: int) -> bool:
        """Remove every key of ``address:port``; True when there was one."""
        entry = host_entry(address, port)
        with self._lock, self._file_lock():
            self._mtime = None
            self._reload()
            if entry not in self._keys:
                return False
            del self._keys[entry]
            self._save()
            self._mtime = None
            return True

    def _save(self) -> None:
        """Into a new private file (``O_EXCL``, never a planted link) renamed over the
        known_hosts file."""
        fd, name = tempfile.mkstemp(prefix=".known_hosts.", suffix=".tmp",
                                    dir=self.path.parent)
        os.close(fd)
        try:
            self._keys.save(name)
            os.replace(name, self.path)
        except BaseException:
            os.unlink(name)
            raise
