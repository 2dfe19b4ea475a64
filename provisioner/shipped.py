"""Where gpuctl's shipped files are: the playbooks, the SKU catalogue and threshold
profiles, group_vars, the templates and the contrib units.

An installed gpuctl (a wheel, ``pipx install gpuctl``) carries them as package data in
``provisioner/share/``, read through importlib.resources; a source checkout (an editable
install) has them at its top level. ``GPUCTL_PROJECT_DIR`` names another checkout, for
development only. Site changes never go here: they live in the data dir
(``<data dir>/skus/``, ``group_vars/``, ``thresholds/``).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from provisioner.errors import GpuctlError

MARKER = "playbooks/provision.yml"


def _candidates() -> list[tuple[Path, str]]:
    env = os.environ.get("GPUCTL_PROJECT_DIR")
    if env:
        return [(Path(env), "GPUCTL_PROJECT_DIR")]
    found: list[tuple[Path, str]] = []
    share = resources.files("provisioner").joinpath("share")
    # A package installed from a wheel is a directory on disk; Ansible needs real paths.
    if isinstance(share, Path):
        found.append((share, "the installed package"))
    found.append((Path(__file__).resolve().parent.parent, "the source checkout"))
    return found


def shipped_dir() -> Path:
    """The directory holding ``playbooks/``, ``inventory/`` and ``templates/``.

    Raises:
        GpuctlError: they are in none of the places gpuctl looks (the message names them).
    """
    candidates = _candidates()
    for root, _ in candidates:
        if (root / MARKER).is_file():
            return root
    where = "; ".join(f"{root} ({what})" for root, what in candidates)
    raise GpuctlError(f"gpuctl's playbooks and catalogue are missing ({MARKER} is not in "
                      f"{where}): reinstall gpuctl (pipx reinstall gpuctl), or point "
                      "GPUCTL_PROJECT_DIR at a gpuctl checkout")


def shipped_origin() -> str:
    """Which of the places gpuctl looks holds the shipped files (for `gpuctl doctor`)."""
    root = shipped_dir()
    return next(what for path, what in _candidates() if path == root)
