"""Burn-in levels, defined once: how long each test runs, how long the control host
waits for a node, and which DCGM run level ``--with-dcgm`` asks for.

Modelled on DCGM's diagnostic levels. NVIDIA's dcgmi diag reference: ``-r 1`` quick
deployment checks (seconds), ``-r 2`` medium (about two minutes), ``-r 3`` long hardware
diagnostics (about 15 minutes), ``-r 4`` extended, longer-running diagnostics (memtest,
added to level 4 in DCGM 2.4, per the DCGM user guide's Memtest page). The agent on the
node is told its scale (``--scale``), so it carries no copy of this table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Level:
    name: str
    scale: float  # x the agent's base duration per test (5 s on a GPU, 0.5 s on the CPU)
    timeout_s: float  # how long the control host waits for one node's agent
    dcgm: int  # dcgmi diag -r <dcgm>


LEVELS: dict[str, Level] = {lv.name: lv for lv in (
    Level("quick", 1.0, 900.0, 1),  # about a minute on 8 GPUs
    Level("standard", 15.0, 3600.0, 2),
    Level("extended", 120.0, 6 * 3600.0, 4),
)}
