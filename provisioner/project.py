"""Where gpuctl's playbooks, inventory defaults and templates are (a source checkout's
top level, or GPUCTL_PROJECT_DIR)."""

from __future__ import annotations

import os
from pathlib import Path

from provisioner.errors import GpuctlError


def project_dir() -> Path:
    """The directory holding ``playbooks/``, ``inventory/`` and ``templates/``.

    Raises:
        GpuctlError: they cannot be found.
    """
    env = os.environ.get("GPUCTL_PROJECT_DIR")
    root = Path(env) if env else Path(__file__).resolve().parent.parent
    if not (root / "playbooks/provision.yml").is_file():
        raise GpuctlError(f"gpuctl's playbooks are not in {root}; set GPUCTL_PROJECT_DIR to "
                          "the gpuctl checkout")
    return root
