"""The hand-off targets: every module in this package that defines ``TARGET`` (a
``provisioner.fleet.handoff.Target``) is one. Adding a target (a second scheduler, a
file format) is one new module here plus its tests: the CLI makes its ``gpuctl handoff
<name>`` command from it, ``connect`` subscribes its listener, and ``views`` puts its
view into ``gpuctl status``.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from typing import Any

from provisioner.fleet.handoff import Target
from provisioner.handle import Gpuctl


@cache
def targets() -> dict[str, Target]:
    """Every target, by name, in name order."""
    found: dict[str, Target] = {}
    for info in pkgutil.iter_modules(__path__):
        target = getattr(importlib.import_module(f"{__name__}.{info.name}"), "TARGET", None)
        if isinstance(target, Target):
            # Two modules claiming one name would silently replace each other.
            assert target.name not in found, f"two hand-off targets named {target.name}"
            found[target.name] = target
    return dict(sorted(found.items()))


def connect(gc: Gpuctl) -> Gpuctl:
    """Subscribe every target's listener to ``gc`` (once): from then on each committed
    state change reaches the systems gpuctl handed nodes to. Returns ``gc``."""
    have = {listener.name for listener in gc.listeners}
    for target in targets().values():
        if target.listener is not None and target.name not in have:
            gc.listeners.append(target.listener())
    return gc


def views(gc: Gpuctl) -> dict[str, Any]:
    """Each target's view of the nodes for ``gpuctl status``, by target name (None for
    a target not handed off to yet)."""
    return {t.name: t.view(gc) for t in targets().values() if t.view is not None}
