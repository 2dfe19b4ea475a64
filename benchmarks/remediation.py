"""Time from a fault to back in service (IDLE in Slurm) through gpuctl's remediation
loop, per rung, on lab nodes with a real Slurm (Debian 12's 22.05) and a Redfish BMC each
(sushy-tools' emulator).

    sudo .venv/bin/python benchmarks/remediation.py [--trials 3] [--burnin-duration 0.2]

Scenarios, each ``--trials`` times on gpu-node-01 (gpu-node-02 stays in service beside
it, so the breaker lets one node be worked on):

- ``gpu-lost``: ``lab fault gpu-node-01 gpu-lost`` on the in-service node, then one
  ``gpuctl monitor --remediate`` pass: detect (XID 79), drain, reboot (a warm reboot does
  not bring the GPU back: the re-burn-in fails), power cycle through the BMC, re-scan,
  re-burn-in, back in service;
- ``reset``, ``reboot``, ``power-cycle``: ``gpuctl remediate gpu-node-01 --action RUNG``
  on the healthy in-service node: what each rung costs by itself, start to IDLE.

The clock starts at the fault (or the command) and stops when ``sinfo`` shows the node
IDLE. Each step's share comes from the times gpuctl stored on the remediation record's
events: detect (to the record's opening), drain (to drain-succeeded), rungs (each rung
to its end, the node's boot included), re-certify (re-scan and burn-in), resume (the node's
move to in-service, after which gpuctl's Slurm listener resumes it, to IDLE in ``sinfo``,
sampled every 0.1 s from the start). The site's policy raises the repeat
count so that repeated trials are not sent to RMA (the repeat rule has its own test).
Everything runs on 127.0.203.0/24 in a throw-away GPUCTL_HOME.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import yaml

# The scan benchmark's quiet CLI runner (this directory is on sys.path when a benchmark
# runs as a script).
from scan import gpuctl as quiet_gpuctl  # type: ignore[import-not-found]
from sqlmodel import col, select

from provisioner.db.models import Event, Remediation, RemediationEvent, as_utc
from provisioner.handle import Gpuctl
from provisioner.inventory.lifecycle import State, get_node, transition
from provisioner.lab.nodes import Lab
from provisioner.lab.slurm import RC_SCRIPT, LabSlurm
from provisioner.shipped import shipped_dir

N1, N2 = "gpu-node-01", "gpu-node-02"
STEPS = ("detect", "drain", "rungs", "re-certify", "resume")


def gpuctl(*argv: str) -> int:
    return quiet_gpuctl(list(argv))


def sinfo_state(node: str) -> str:
    out = subprocess.run(["sinfo", "-N", "-h", "-n", node, "-o", "%T"], capture_output=True,
                         text=True, check=False, timeout=30).stdout.split()
    return out[0] if out else ""


def wait_idle(node: str, deadline_s: float = 180) -> float:
    """Poll sinfo until ``node`` is IDLE; the time.time() it was first seen so."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if sinfo_state(node) == "idle":
            return time.time()
        time.sleep(0.1)
    raise SystemExit(f"{node} not IDLE in Slurm within {deadline_s:g} s")


@contextlib.contextmanager
def slurm_lab(first_address: str) -> Iterator[Path]:
    """Two in-service h100-sxm-8 lab nodes in Slurm, each with a BMC; everything goes
    after."""
    work = Path(tempfile.mkdtemp(prefix="gpuctl-bench-"))
    home = work / "home"
    home.mkdir(mode=0o700)
    os.environ["GPUCTL_HOME"] = str(home)
    try:
        print("lab up: 2 h100-sxm-8 nodes with the driver, Slurm 22.05, a BMC each",
              flush=True)
        if gpuctl("init") != 0 or gpuctl("lab", "up", "--nodes", "2", "--driver", "--slurm",
                                         "--slurm-release", "22.05", "--first-address",
                                         first_address, "--json") != 0:
            raise SystemExit("lab up failed")
        slurm = LabSlurm(Lab(Gpuctl.from_env().paths))
        os.environ.update({
            "SLURM_CONF": str(slurm.conf),
            "GPUCTL_SLURM_RESTART": f"{sys.executable} -m provisioner lab slurm restart",
            "GPUCTL_SLURMD_RESTART": f"sh {RC_SCRIPT} restart"})
        policy = yaml.safe_load((shipped_dir() / "inventory/remediation.yml").read_text())
        policy["repeat"] = {"count": 1000, "window": "7d"}
        (home / "remediation.yml").write_text(yaml.safe_dump(policy))
        if gpuctl("scan", "--all", "--accept-new") != 0:
            raise SystemExit("scan failed")
        gc = Gpuctl.from_env()
        with gc.session() as session:  # the lab's --driver nodes come provisioned
            for name in (N1, N2):
                node = get_node(session, name)
                for state in (State.PROVISIONING, State.PROVISIONED):
                    transition(session, node, state, actor="benchmark",
                               reason="lab --driver: provisioned by the lab")
        if gpuctl("burnin", "--all", "--duration", "0.2", "--parallel", "1") != 0:
            raise SystemExit("burn-in failed")
        if gpuctl("handoff", "slurm", "--apply", "--slurm-conf-dir", str(slurm.etc),
                  "--partition", "h100") != 0:
            raise SystemExit("hand-off to Slurm failed")
        for name in (N1, N2):
            wait_idle(name)
        yield work
    finally:
        gpuctl("lab", "down")
        shutil.rmtree(work, ignore_errors=True)


class Poller(threading.Thread):
    """Samples ``sinfo`` for ``node`` every 0.1 s from the trial's start: when it was
    first seen IDLE after a given time (the CLI's own exit comes later)."""

    def __init__(self, node: str) -> None:
        super().__init__(daemon=True)
        self.node, self.samples = node, list[tuple[float, str]]()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.time(), sinfo_state(self.node)))
            self.stop.wait(0.1)

    def idle_after(self, since: float, deadline_s: float = 180) -> float:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            seen = [t for t, state in list(self.samples) if t >= since and state == "idle"]
            if seen:
                return seen[0]
            time.sleep(0.1)
        raise SystemExit(f"{self.node} not IDLE in Slurm within {deadline_s:g} s")


def shares(gc: Gpuctl, started: float) -> tuple[dict[str, float], float]:
    """Seconds per step of N1's remediation record opened in this trial, from the times
    gpuctl stored on its events (resume left at 0), and when N1 moved to in-service (the
    lifecycle event, after which the Slurm listener resumes it)."""
    with gc.session() as session:
        node = get_node(session, N1)
        record = session.exec(select(Remediation).where(Remediation.node_id == node.id)
                              .order_by(col(Remediation.id).desc())).first()
        assert record is not None
        opened = as_utc(record.opened_at).timestamp()
        if opened < started - 1:
            raise SystemExit(f"no remediation record of {N1} opened in this trial")
        events = list(session.exec(select(RemediationEvent)
                                   .where(RemediationEvent.remediation_id == record.id)
                                   .order_by(col(RemediationEvent.id))))
        back = session.exec(select(Event).where(
            Event.node_id == node.id, Event.kind == "state",
            Event.to_state == State.IN_SERVICE.value).order_by(col(Event.id).desc())
        ).first()
        assert back is not None
        in_service = as_utc(back.at).timestamp()
    out = dict.fromkeys(STEPS, 0.0)
    out["detect"] = opened - started
    prev, last = "", opened
    for e in events:
        at = min(as_utc(e.at).timestamp(), in_service)
        # Each stretch goes to the step that it ended: re-certifying ends in service or
        # in the next rung; draining ends drained; the rest is the rungs and their boots.
        step = "re-certify" if prev == "re-certifying" else \
            "drain" if e.to_state in ("draining", "drain-succeeded") else "rungs"
        out[step] += max(0.0, at - last)
        prev, last = e.to_state, at
    return out, in_service


def trial(gc: Gpuctl, scenario: str, burn: list[str]) -> tuple[float, dict[str, float]]:
    poller = Poller(N1)
    poller.start()
    started = time.time()
    try:
        if scenario == "gpu-lost":
            if gpuctl("lab", "fault", N1, "gpu-lost") != 0:
                raise SystemExit("lab fault failed")
            code = gpuctl("monitor", "--remediate", *burn)
        else:
            code = gpuctl("remediate", N1, "--action", scenario, *burn)
        if code != 0:
            raise SystemExit(f"{scenario}: gpuctl exited {code}")
        with gc.session() as session:
            if get_node(session, N1).state != State.IN_SERVICE.value:
                raise SystemExit(f"{scenario}: {N1} did not end in service")
        parts, in_service = shares(gc, started)
        idle = poller.idle_after(in_service)
    finally:
        poller.stop.set()
        poller.join()
    parts["resume"] = idle - in_service
    return idle - started, parts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--burnin-duration", default="0.2")
    args = parser.parse_args()
    burn = ["--burnin-duration", args.burnin_duration, "--boot-timeout", "120s",
            "--drain-timeout", "120s"]
    scenarios = ("gpu-lost", "reset", "reboot", "power-cycle")
    results: dict[str, list[tuple[float, dict[str, float]]]] = {s: [] for s in scenarios}
    with slurm_lab("127.0.203.10"):
        gc = Gpuctl.from_env()
        print(f"trials ({args.trials} each, in turn; re-burn-in {args.burnin_duration} s "
              "per test):")
        for t in range(args.trials):
            for scenario in scenarios:
                total, parts = trial(gc, scenario, burn)
                results[scenario].append((total, parts))
                print(f"  trial {t + 1} {scenario:<12} {total:6.1f} s  " + "  ".join(
                    f"{k} {v:.1f}" for k, v in parts.items()), flush=True)
    med: Callable[[list[float]], float] = statistics.median
    print("\n| scenario | rungs | trials | to IDLE, median (min-max) | "
          + " | ".join(STEPS) + " |")
    print("|---|---|---|---|" + "---|" * len(STEPS))
    ladder = {"gpu-lost": "reboot, power-cycle (monitor --remediate)"}
    for scenario, rows in results.items():
        totals = [r[0] for r in rows]
        cells = [f"{100 * med([r[1][s] / r[0] for r in rows]):.0f}%" for s in STEPS]
        print(f"| {scenario} | {ladder.get(scenario, scenario + ' (by hand)')} | "
              f"{len(rows)} | {med(totals):.1f} s ({min(totals):.1f}-{max(totals):.1f}) | "
              + " | ".join(cells) + " |")
    print(f"\nmeasured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; each step's share is the "
          "median over trials of its part of that trial's time to IDLE; detect is, by hand, "
          "the command's own planning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
