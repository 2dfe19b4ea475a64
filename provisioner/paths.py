"""One object for every location gpuctl reads or writes, overridable by GPUCTL_HOME."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from provisioner.errors import GpuctlError


@dataclass(frozen=True)
class Paths:
    """Where gpuctl keeps its state.

    ``home`` defaults to ``$XDG_DATA_HOME/gpuctl`` (``~/.local/share/gpuctl``) and
    is overridden by ``GPUCTL_HOME``; the database URL by ``GPUCTL_DB``.
    """

    home: Path
    db: str | None = None

    @classmethod
    def from_env(cls, db: str | None = None) -> Paths:
        """Paths from the environment; ``db`` (the --db option) beats ``GPUCTL_DB``."""
        env_home = os.environ.get("GPUCTL_HOME")
        if env_home:
            return cls(Path(env_home), db)
        xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return cls(Path(xdg) / "gpuctl", db)

    @property
    def db_file(self) -> Path:
        return self.home / "gpuctl.db"

    @property
    def db_url(self) -> str:
        url = self.db or os.environ.get("GPUCTL_DB") or f"sqlite:///{self.db_file}"
        # A bare file path is an SQLite database.
        return url if "://" in url else f"sqlite:///{Path(url).resolve()}"

    @property
    def known_hosts(self) -> Path:
        return self.home / "known_hosts"

    @property
    def lab_dir(self) -> Path:
        return self.home / "lab"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    def ensure(self) -> list[str]:
        """Create the data directory, private (0700: it holds known_hosts, the SQLite
        database and the run records). An existing one others can reach is made private;
        returns what was fixed."""
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        info = self.home.stat()
        mode = stat.S_IMODE(info.st_mode)
        if not mode & 0o077:
            return []
        if info.st_uid != os.geteuid():
            raise GpuctlError(f"{self.home} (mode {mode:04o}) belongs to uid {info.st_uid}: "
                              "run gpuctl as its owner, or point GPUCTL_HOME elsewhere")
        private = (mode & 0o7000) | 0o700  # keep setgid and the like, drop others' access
        self.home.chmod(private)
        return [f"{self.home} had mode {mode:04o}; made {private:04o} (private)"]
