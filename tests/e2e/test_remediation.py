"""``gpuctl monitor --remediate`` on the lab with a real Slurm (Debian 12's 22.05: its
slurmctld, slurmd, slurmdbd, munge) and a Redfish BMC per node (sushy-tools' emulator):

- ``--plan`` changes nothing: not gpuctl's database, not the lab, not Slurm;
- a GPU falls off the bus (``lab fault NODE gpu-lost``: XID 79) on an in-service node
  and one ``monitor --remediate`` pass with the circuit breaker at 1 quarantines it;
  with the node already broken that makes two: the first is drained, rebooted (a warm
  reboot does not bring the GPU back: its re-burn-in fails on it), power-cycled
  through its BMC (in the BMC's log and the node's history), re-scanned, re-certified
  and IDLE in Slurm again; the second waits, drained, and ``status`` says why;
  ``gpuctl remediate NODE --action power-cycle`` then brings it back by hand;
- by hand, a GPU reset of a serving node that runs a user's job: the job is waited
  for (bounded) and left alone, then cancelled with ``--kill-jobs``; persistence mode
  (the lab's nvidia-persistenced) off for the reset, on again after; back to IDLE;
- the same fault again within the window goes straight to RMA, as does uncorrectable
  ECC (a part): each drained in Slurm with a reason that says RMA, the site's ticket
  hook called once each.

One two-node lab serves the file (its tests run in order, each building on the last).
Getting the nodes in service skips Ansible (test_provision*.py run it): the lab's
``--driver`` nodes have the driver already; the burn-in and the Slurm hand-off are the
real commands."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner.cli import main
from provisioner.lab.nodes import Lab
from provisioner.lab.slurm import RC_SCRIPT, LabSlurm
from provisioner.paths import Paths
from provisioner.shipped import shipped_dir
from tests.e2e.conftest import _blocks, provisioned_by_lab, wait_for

pytest.importorskip("torch")
pytestmark = pytest.mark.e2e

N1, N2 = "gpu-node-01", "gpu-node-02"
BURN = ("--burnin-duration", "0.2", "--boot-timeout", "60s", "--drain-timeout", "60s")


def _cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    return code, out.getvalue()


def sinfo() -> dict[str, tuple[str, str]]:
    """node -> (state, reason), from the real sinfo."""
    out = subprocess.run(["sinfo", "-N", "-h", "-o", "%N|%T|%E"], capture_output=True,
                         text=True, check=True).stdout
    return {p[0]: (p[1], p[2]) for p in (line.split("|", 2) for line in out.splitlines())}


class RemediationLab:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.lab = Lab(Paths(home))
        self.slurm = LabSlurm(self.lab)
        self.tickets = home.parent / "tickets.log"

    def env(self) -> dict[str, str]:
        return {"GPUCTL_HOME": str(self.home), "SLURM_CONF": str(self.slurm.conf),
                "GPUCTL_SLURM_RESTART": f"{sys.executable} -m provisioner lab slurm restart",
                "GPUCTL_SLURMD_RESTART": f"sh {RC_SCRIPT} restart", "COLUMNS": "200"}

    def state(self, name: str) -> str:
        code, out = _cli("nodes", "show", name, "--json")
        assert code == 0, out
        return str(json.loads(out)["node"]["state"])

    def events(self, name: str) -> list[dict[str, Any]]:
        return json.loads(_cli("nodes", "show", name, "--json")[1])["events"]  # type: ignore[no-any-return]

    def policy(self, **changes: Any) -> None:
        """The site's policy: the shipped one with a ticket hook that appends a line
        (node, evidence file) to a file, and ``changes``."""
        policy = yaml.safe_load((shipped_dir() / "inventory/remediation.yml").read_text())
        policy["rma_hook"] = {"command": [
            sys.executable, "-c", "import sys; open(sys.argv[1], 'a').write(' '.join("
            "sys.argv[2:]) + '\\n')", str(self.tickets)], "timeout": "20s"}
        policy.update(changes)
        (self.home / "remediation.yml").write_text(yaml.safe_dump(policy))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, template_db: str
        ) -> Iterator[RemediationLab]:
    if os.environ.get("GPUCTL_TEST_DB") == "postgresql":
        pytest.skip("the loop's database use is the same as on SQLite")
    if shutil.which("slurmctld") is None:
        pytest.skip("Slurm is not installed (scripts/setup.sh)")
    home = tmp_path_factory.mktemp("remediation") / "gpuctl-home"
    home.mkdir(mode=0o700)
    (home / "gpuctl.db").write_bytes(Path(template_db).read_bytes())
    handle = RemediationLab(home)
    handle.policy()
    block = next(_blocks)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in handle.env().items():
            mp.setenv(key, value)
        mp.delenv("GPUCTL_DB", raising=False)
        start = time.monotonic()
        code, out = _cli("lab", "up", "--nodes", "2", "--driver", "--slurm",
                         "--slurm-release", "22.05", "--first-address",
                         f"127.0.{block}.10", "--json")
        assert code == 0, out
        try:
            assert _cli("scan", "--all", "--accept-new")[0] == 0
            provisioned_by_lab(Paths(home))
            code, out = _cli("burnin", "--all", "--duration", "0.2", "--parallel", "1")
            assert code == 0, out
            code, out = _cli("handoff", "slurm", "--apply", "--json", "--slurm-conf-dir",
                             str(handle.slurm.etc), "--partition", "h100")
            assert code == 0, out
            wait_for(lambda: {sinfo()[n][0] for n in (N1, N2)} == {"idle"}, timeout=60)
            print(f"lab in service: {time.monotonic() - start:.1f} s")
            yield handle
        finally:
            handle.lab.down()


@pytest.fixture(autouse=True)
def gpuctl_home(lab: RemediationLab, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key, value in lab.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("GPUCTL_DB", raising=False)
    return lab.home


def _everything(lab: RemediationLab) -> tuple[list[str], dict[str, Any], Any]:
    """The whole database, every lab node's spec and process, and Slurm's view."""
    db = sqlite3.connect(lab.home / "gpuctl.db")
    try:
        rows = list(db.iterdump())
    finally:
        db.close()
    nodes = {n: (lab.lab.spec(n), lab.lab.holder_pid(n)) for n in (N1, N2)}
    return rows, nodes, sinfo()


def test_plan_changes_nothing(lab: RemediationLab) -> None:
    assert {lab.state(N1), lab.state(N2)} == {"in-service"}
    assert _cli("lab", "fault", N2, "xid")[0] == 0
    code, out = _cli("monitor", "--json")
    assert code == 3 and json.loads(out)["quarantined"] == [N2], out
    state, reason = sinfo()[N2]
    assert state == "drained" and reason.startswith("gpuctl: quarantined: "), (state, reason)
    before = _everything(lab)
    code, out = _cli("monitor", "--remediate", "--plan", "--json")
    assert code == 0, out
    (plan,) = json.loads(out)["nodes"]
    assert (plan["name"], plan["outcome"], plan["decision"]["rung"],
            plan["decision"]["rule"]) == (N2, "planned", "reboot", "xid-restart-bare-metal")
    assert _everything(lab) == before


def test_a_lost_gpu_is_power_cycled_back_to_idle_while_the_breaker_holds_the_other(
        lab: RemediationLab) -> None:
    lab.policy(breaker={"max_nodes": 1, "max_percent": 100})
    assert _cli("lab", "fault", N1, "gpu-lost")[0] == 0
    code, out = _cli("monitor", "--remediate", *BURN, "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["quarantined"] == [N1], doc
    nodes = {n["name"]: n for n in doc["remediation"]["nodes"]}
    # The warm reboot did not bring the GPU back (its re-burn-in failed on it); the power
    # cycle through the BMC did.
    assert (nodes[N1]["outcome"], nodes[N1]["rungs"]) == ("in-service",
                                                          ["reboot", "power-cycle"]), nodes
    assert nodes[N2]["outcome"] == "waiting-breaker" and nodes[N2]["message"].startswith(
        "circuit breaker: 1 node already draining or remediating, at most 1"), nodes
    assert lab.state(N1) == "in-service" and lab.lab.spec(N1)["faults"] == []
    wait_for(lambda: sinfo()[N1][0] == "idle", timeout=60)
    state, reason = sinfo()[N2]
    assert state == "drained" and reason.startswith("gpuctl: quarantined: "), (state, reason)
    log = json.loads(_cli("bmc", "info", N1, "--json")[1])["log_entries"]
    assert "cleared on boot: gpu-lost" in log[0]["message"], log
    events = lab.events(N1)
    assert any(e["kind"] == "bmc" and e["reason"].startswith("power cycle through the BMC")
               for e in events)
    moves = [(e["from"], e["to"]) for e in events if e["kind"] == "state"]
    assert moves[-4:] == [("quarantined", "provisioned"), ("provisioned", "burning-in"),
                          ("burning-in", "certified"), ("certified", "in-service")], moves
    status = json.loads(_cli("status", "--json")[1])
    (waiting,) = status["remediation"]["open"]
    assert (waiting["node"], waiting["state"]) == (N2, "waiting-breaker"), waiting
    assert waiting["why"].startswith("circuit breaker: "), waiting


def test_by_hand_the_waiting_node_is_power_cycled_back_to_idle(lab: RemediationLab) -> None:
    """The node the breaker held: one step by hand, through the same loop."""
    code, out = _cli("remediate", N2, "--action", "power-cycle", *BURN, "--json")
    assert code == 0, out
    (node,) = json.loads(out)["nodes"]
    assert (node["outcome"], node["rungs"]) == ("in-service", ["power-cycle"]), node
    wait_for(lambda: sinfo()[N2][0] == "idle", timeout=60)
    assert json.loads(_cli("status", "--json")[1])["remediation"]["open"] == []


def _persistence(lab: RemediationLab, node: str) -> set[str]:
    out = lab.lab.node_exec(node, ["nvidia-smi", "--query-gpu=persistence_mode",
                                   "--format=csv,noheader"])
    assert out.returncode == 0, out
    return set(out.stdout.decode().split())


def _job_state(job_id: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True,
                         text=True, check=True).stdout
    return dict(f.split("=", 1) for f in out.split() if "=" in f)["JobState"]


def test_by_hand_a_gpu_reset_waits_for_jobs_kills_them_only_when_told(
        lab: RemediationLab) -> None:
    """A user's job runs on the node: the remediation drains it and waits, bounded, and
    leaves the job alone; with ``--kill-jobs`` it cancels the job, then resets the GPUs.
    The lab's nvidia-persistenced holds every GPU in persistence mode, and its
    nvidia-smi refuses a reset then, as the real one does (NVIDIA/NVSentinel#1690):
    the reset turns it off and on again. (The lab's --driver image runs the daemon as
    packaged, --no-persistence-mode, so the admin turns it on here.)"""
    assert lab.lab.node_exec(N1, ["nvidia-smi", "-pm", "1"]).returncode == 0
    assert _persistence(lab, N1) == {"Enabled"}
    refused = lab.lab.node_exec(N1, ["nvidia-smi", "-r", "-i", "0"])
    assert refused.returncode == 255 and b"In use by another client" in refused.stdout
    sub = subprocess.run(["sbatch", "--parsable", "-w", N1, "--wrap", "sleep 600"],
                         capture_output=True, text=True, check=True, cwd="/tmp")
    job_id = sub.stdout.strip().split(";")[0]
    wait_for(lambda: _job_state(job_id) == "RUNNING", timeout=60)
    reset = ("remediate", N1, "--action", "reset", "--burnin-duration", "0.2",
             "--boot-timeout", "60s", "--drain-timeout", "2s", "--json")
    code, out = _cli(*reset)
    (node,) = json.loads(out)["nodes"]
    assert node["outcome"] == "draining" and "no job killed" in node["message"], node
    assert _job_state(job_id) == "RUNNING" and sinfo()[N1][0] == "draining"
    code, out = _cli(*reset, "--kill-jobs")
    assert code == 0, out
    (node,) = json.loads(out)["nodes"]
    assert (node["outcome"], node["rungs"]) == ("in-service", ["reset"]), node
    assert _job_state(job_id) == "CANCELLED"
    assert any(e["kind"] == "jobs-killed" and e["reason"].endswith(f"cancelled job {job_id}")
               for e in lab.events(N1))
    assert _persistence(lab, N1) == {"Enabled"}
    wait_for(lambda: sinfo()[N1][0] == "idle", timeout=60)


def test_a_repeat_and_a_bad_part_go_to_rma_drained_as_such_with_one_ticket_each(
        lab: RemediationLab) -> None:
    lab.policy()
    assert _cli("lab", "fault", N1, "gpu-lost")[0] == 0  # the same fault within 7 days
    assert _cli("lab", "fault", N2, "ecc-uncorrectable")[0] == 0
    code, out = _cli("monitor", "--remediate", *BURN, "--json")
    assert code == 0, out
    doc = json.loads(out)
    nodes = {n["name"]: n for n in doc["remediation"]["nodes"]}
    assert nodes[N1]["outcome"] == nodes[N2]["outcome"] == "rma", nodes
    assert "seen 2 times" in nodes[N1]["message"]
    assert nodes[N2]["decision"]["rule"] == "ecc-uncorrectable"
    tickets = sorted(lab.tickets.read_text().splitlines())
    assert [t.split()[0] for t in tickets] == [N1, N2]
    bundle = json.loads(Path(tickets[1].split()[1]).read_text())
    assert bundle["fault"] == "ecc-uncorrectable" and bundle["findings"]
    assert lab.state(N1) == lab.state(N2) == "quarantined"
    view = sinfo()
    for node in (N1, N2):
        state, reason = view[node]
        assert state == "drained" and reason.startswith("gpuctl: quarantined: rma: "), \
            (node, state, reason)
    # The next pass asks for no second ticket.
    code, out = _cli("monitor", "--remediate", "--json")
    assert {n["outcome"] for n in json.loads(out)["remediation"]["nodes"]} == {"none"}
    assert len(lab.tickets.read_text().splitlines()) == 2
