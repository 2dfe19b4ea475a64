"""``gpuctl monitor --remediate`` on the lab, nodes with BMCs, no Slurm: ``--plan``
changes nothing; an XID 79 on a node in service is rebooted (the shipped ladder's first
rung), its burn-in sees the fault again, it climbs to a power cycle through the BMC
(which clears it), is re-scanned, re-certified and back in service; then the same fault
again within the window goes straight to RMA, as does uncorrectable ECC (a part), each
with one call of the site's ticket hook.

One two-node lab serves the file (its tests run in order, each building on the last).
Getting the nodes in service skips Ansible (test_provision.py runs it): the lab's
``--driver`` nodes have the driver already, and the test moves them to provisioned in
the database; burn-in and the hand-off are the real commands."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner.cli import main
from provisioner.handle import Gpuctl
from provisioner.inventory.lifecycle import State, get_node, transition
from provisioner.lab.nodes import Lab
from provisioner.paths import Paths
from provisioner.shipped import shipped_dir
from tests.e2e.conftest import _blocks

pytest.importorskip("torch")
pytestmark = pytest.mark.e2e

N1, N2 = "gpu-node-01", "gpu-node-02"
BURN = ("--burnin-duration", "0.2", "--boot-timeout", "60s", "--drain-timeout", "0")


def _cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    return code, out.getvalue()


class RemediationLab:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.lab = Lab(Paths(home))
        self.tickets = home.parent / "tickets.log"

    def state(self, name: str) -> str:
        code, out = _cli("nodes", "show", name, "--json")
        assert code == 0, out
        return str(json.loads(out)["node"]["state"])

    def events(self, name: str) -> list[dict[str, Any]]:
        return json.loads(_cli("nodes", "show", name, "--json")[1])["events"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, template_db: str
        ) -> Iterator[RemediationLab]:
    if os.environ.get("GPUCTL_TEST_DB") == "postgresql":
        pytest.skip("the loop's database use is the same as on SQLite")
    home = tmp_path_factory.mktemp("remediation") / "gpuctl-home"
    home.mkdir(mode=0o700)
    (home / "gpuctl.db").write_bytes(Path(template_db).read_bytes())
    handle = RemediationLab(home)
    # The site's policy: the shipped one with a ticket hook that appends to a file.
    policy = yaml.safe_load((shipped_dir() / "inventory" / "remediation.yml").read_text())
    policy["rma_hook"] = {"command": [
        sys.executable, "-c", "import sys; open(sys.argv[1], 'a').write(' '.join("
        "sys.argv[2:]) + '\\n')", str(handle.tickets)], "timeout": "20s"}
    (home / "remediation.yml").write_text(yaml.safe_dump(policy))
    block = next(_blocks)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPUCTL_HOME", str(home))
        mp.delenv("GPUCTL_DB", raising=False)
        mp.delenv("SLURM_CONF", raising=False)
        start = time.monotonic()
        code, out = _cli("lab", "up", "--nodes", "2", "--driver", "--first-address",
                         f"127.0.{block}.10", "--json")
        assert code == 0, out
        assert _cli("scan", "--all", "--accept-new")[0] == 0
        gc = Gpuctl(Paths(home))
        with gc.session() as session:
            for name in (N1, N2):
                node = get_node(session, name)
                transition(session, node, State.PROVISIONING, actor="test", reason="lab")
                transition(session, node, State.PROVISIONED, actor="test",
                           reason="lab --driver: provisioned by the lab")
        code, out = _cli("burnin", "--all", "--duration", "0.2", "--parallel", "1")
        assert code == 0, out
        code, out = _cli("handoff", "hosts", "-o", str(home.parent / "hosts"))
        assert code == 0, out
        print(f"lab in service: {time.monotonic() - start:.1f} s")
    try:
        yield handle
    finally:
        handle.lab.down()


@pytest.fixture(autouse=True)
def gpuctl_home(lab: RemediationLab, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GPUCTL_HOME", str(lab.home))
    monkeypatch.delenv("GPUCTL_DB", raising=False)
    monkeypatch.delenv("SLURM_CONF", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    return lab.home


def _everything(lab: RemediationLab) -> tuple[list[str], dict[str, Any]]:
    """The whole database and every lab node's spec and process."""
    db = sqlite3.connect(lab.home / "gpuctl.db")
    try:
        rows = list(db.iterdump())
    finally:
        db.close()
    nodes = {n: (lab.lab.spec(n), lab.lab.holder_pid(n)) for n in (N1, N2)}
    return rows, nodes


def test_plan_changes_nothing(lab: RemediationLab) -> None:
    assert {lab.state(N1), lab.state(N2)} == {"in-service"}
    assert _cli("lab", "fault", N1, "xid")[0] == 0
    code, out = _cli("monitor", "--json")
    assert code == 3 and json.loads(out)["quarantined"] == [N1], out
    before = _everything(lab)
    code, out = _cli("monitor", "--remediate", "--plan", "--json")
    assert code == 0, out
    (plan,) = json.loads(out)["nodes"]
    assert (plan["name"], plan["outcome"], plan["decision"]["rung"],
            plan["decision"]["rule"]) == (N1, "planned", "reboot", "xid-restart-bare-metal")
    assert _everything(lab) == before


def test_a_lost_gpu_climbs_to_a_power_cycle_and_goes_back_in_service(
        lab: RemediationLab) -> None:
    code, out = _cli("monitor", "--remediate", *BURN, "--json")
    assert code == 0, out
    (node,) = json.loads(out)["remediation"]["nodes"]
    # The reboot kept the fault (the lab's XID comes back under load: its burn-in
    # failed); the power cycle through the BMC cleared it.
    assert (node["name"], node["outcome"], node["rungs"]) == (
        N1, "in-service", ["reboot", "power-cycle"]), node
    assert lab.state(N1) == "in-service" and lab.lab.spec(N1)["faults"] == []
    log = json.loads(_cli("bmc", "info", N1, "--json")[1])["log_entries"]
    assert "cleared on boot: xid" in log[0]["message"]
    events = lab.events(N1)
    assert any(e["kind"] == "bmc" and e["reason"].startswith("power cycle through the BMC")
               for e in events)
    moves = [(e["from"], e["to"]) for e in events if e["kind"] == "state"]
    assert moves[-4:] == [("quarantined", "provisioned"), ("provisioned", "burning-in"),
                          ("burning-in", "certified"), ("certified", "in-service")], moves
    status = json.loads(_cli("status", "--json")[1])
    assert status["remediation"]["open"] == []


def test_a_repeat_and_a_bad_part_go_to_rma_with_one_ticket_each(
        lab: RemediationLab) -> None:
    assert _cli("lab", "fault", N1, "xid")[0] == 0  # the same fault again, within 7 days
    assert _cli("lab", "fault", N2, "ecc-uncorrectable")[0] == 0
    code, out = _cli("monitor", "--remediate", *BURN, "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert sorted(doc["quarantined"]) == [N1, N2]
    nodes = {n["name"]: n for n in doc["remediation"]["nodes"]}
    assert nodes[N1]["outcome"] == nodes[N2]["outcome"] == "rma", nodes
    assert "seen 2 times" in nodes[N1]["message"]
    assert nodes[N2]["decision"]["rule"] == "ecc-uncorrectable"
    tickets = sorted(lab.tickets.read_text().splitlines())
    assert [t.split()[0] for t in tickets] == [N1, N2]
    bundle = json.loads(Path(tickets[1].split()[1]).read_text())
    assert bundle["fault"] == "ecc-uncorrectable" and bundle["findings"]
    assert lab.state(N1) == lab.state(N2) == "quarantined"
    # The next pass asks for no second ticket.
    code, out = _cli("monitor", "--remediate", "--json")
    assert {n["outcome"] for n in json.loads(out)["remediation"]["nodes"]} == {"none"}
    assert len(lab.tickets.read_text().splitlines()) == 2
