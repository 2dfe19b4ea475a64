"""``gpuctl bmc`` against the lab's BMCs (sushy-tools' Redfish emulator, HTTPS with the
lab's CA, basic auth): power state, off (the node's sshd is gone), on, a cycle that
clears a transient fault and keeps a part's, info with the BMC's own log, a BMC mapped to
the wrong machine, a BMC that does not answer, a wrong CA, wrong credentials; and after
every command, the whole data dir (database included) never holds the password.

One lab of two nodes serves the whole file (its tests run in order and leave it as
they found it), so the file costs one `lab up`."""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provisioner.cli import main
from provisioner.lab.bmc import LabBmcs
from provisioner.lab.nodes import Lab
from provisioner.paths import Paths
from tests.e2e.conftest import _blocks, wait_for

pytestmark = pytest.mark.e2e

N1, N2 = "gpu-node-01", "gpu-node-02"


class BmcLab:
    def __init__(self, home: Path, block: int) -> None:
        self.home, self.block = home, block
        self.lab = Lab(Paths(home))
        self.bmcs = LabBmcs(self.lab)

    def address(self, index: int) -> str:
        return f"127.0.{self.block}.{10 + index}"

    @property
    def password(self) -> bytes:
        return self.bmcs.password_file.read_bytes().strip()

    def spec(self, name: str) -> dict[str, Any]:
        return self.lab.spec(name)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, template_db: str) -> Iterator[BmcLab]:
    home = tmp_path_factory.mktemp("bmc") / "gpuctl-home"
    home.mkdir(mode=0o700)
    if os.environ.get("GPUCTL_TEST_DB") == "postgresql":
        pytest.skip("reads and writes no more than on SQLite")
    (home / "gpuctl.db").write_bytes(Path(template_db).read_bytes())
    handle = BmcLab(home, next(_blocks))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPUCTL_HOME", str(home))
        mp.delenv("GPUCTL_DB", raising=False)
        out = io.StringIO()
        start = time.monotonic()
        with contextlib.redirect_stdout(out):
            code = main(["lab", "up", "--nodes", "2", "--driver", "--first-address",
                         handle.address(0), "--fault", f"{N1}:gpu-lost",
                         "--fault", f"{N1}:ecc-uncorrectable", "--json"])
        assert code == 0, out.getvalue()
        print(f"lab up with BMCs: {time.monotonic() - start:.1f} s")
    try:
        yield handle
    finally:
        handle.lab.down()


@pytest.fixture(autouse=True)
def gpuctl_home(lab: BmcLab, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test of this file works in the shared lab's data dir."""
    monkeypatch.setenv("GPUCTL_HOME", str(lab.home))
    monkeypatch.delenv("GPUCTL_DB", raising=False)
    monkeypatch.delenv("SLURM_CONF", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    return lab.home


@pytest.fixture
def bmc(gpuctl, lab: BmcLab):  # type: ignore[no-untyped-def]
    """Run a gpuctl command, then grep the whole data dir (database, its WAL, run
    records, the lab's files) for the BMC password: it must never be there."""
    password = lab.password
    assert len(password) >= 16

    def run(*args: str):  # type: ignore[no-untyped-def]
        result = gpuctl(*args)
        assert password.decode() not in result.out + result.err
        for path in lab.home.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert password not in path.read_bytes(), f"password found in {path}"
        return result

    return run


def _ssh_open(address: str) -> bool:
    try:
        with socket.create_connection((address, 22), timeout=1):
            return True
    except OSError:
        return False


def _events(gpuctl, node: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    return json.loads(gpuctl("nodes", "show", node, "--json").out)["events"]


def _register(bmc, lab: BmcLab, node: int, **change: str):  # type: ignore[no-untyped-def]
    """Re-register a lab node with its BMC settings changed (url=, ca=, password_from=)."""
    access = lab.bmcs.access
    url = change.get("url", lab.spec(f"gpu-node-0{node + 1}")["bmc"])
    res = bmc("nodes", "add", f"gpu-node-0{node + 1}", "--replace", "--address",
              lab.address(node), "--key", str(lab.lab.client_key), "--bmc", url,
              "--bmc-user", "lab-admin",
              "--bmc-password-from", change.get("password_from", access.password_from),
              "--bmc-ca", change.get("ca", access.ca))
    assert res.code == 0, res


def test_power_state_and_info(bmc, lab: BmcLab) -> None:  # type: ignore[no-untyped-def]
    status = {n["name"]: n for n in json.loads(bmc("lab", "status", "--json").out)}
    assert status[N1]["bmc"] == f"https://{lab.address(0)}" and status[N1]["bmc_up"]
    assert status[N2]["bmc"] == f"https://{lab.address(1)}"
    assert "https://" + lab.address(0) in bmc("lab", "status").out
    scan = bmc("scan", "--all", "--accept-new", "--json")  # the OS's serials, for later
    assert scan.code in (0, 3), scan
    res = bmc("bmc", "power", N1)
    assert (res.code, res.out.strip()) == (0, f"{N1}: power on")
    info = json.loads(bmc("bmc", "info", N1, "--json").out)
    assert info["serial"] == info["os_serial"] == lab.spec(N1)["system_serial"]
    assert info["serial_matches"] is True
    assert (info["bios_version"], info["bmc_firmware"], info["power_state"]) == (
        "2.1.0", "1.00", "on")
    assert info["health_rollup"] == "Critical"  # GPU 1's uncorrectable ECC: a part
    assert info["log_service"] == "System Event Log"
    text = bmc("bmc", "info", N2).out
    assert "rollup OK" in text and lab.spec(N2)["system_serial"] in text


def test_power_off_stops_the_node_and_on_boots_it(bmc, lab: BmcLab) -> None:  # type: ignore[no-untyped-def]
    address = lab.address(1)
    assert _ssh_open(address)
    res = bmc("bmc", "power", N2, "off", "--json")
    assert res.code == 0, res
    assert json.loads(res.out) | {"seconds": 0} == {
        "node": N2, "action": "off", "before": "on", "after": "off", "resets": ["ForceOff"],
        "seconds": 0}
    assert not _ssh_open(address)  # the node's sshd went with its power
    assert bmc("bmc", "power", N2).out.strip() == f"{N2}: power off"
    assert not json.loads(bmc("lab", "status", "--json").out)[1]["running"]
    res = bmc("bmc", "power", N2, "off")  # already off: nothing sent, nothing recorded
    assert res.code == 0 and "nothing to do" in res.out
    res = bmc("bmc", "power", N2, "on")
    assert res.code == 0 and "off -> on (sent On" in res.out, res
    wait_for(lambda: _ssh_open(address), timeout=30)
    reasons = [e["reason"] for e in _events(bmc, N2) if e["kind"] == "bmc"]
    assert [r.split(" (")[0] for r in reasons] == [
        f"power off through the BMC https://{address}",
        f"power on through the BMC https://{address}"]


def test_cycle_clears_a_lost_gpu_but_not_bad_memory(bmc, lab: BmcLab) -> None:  # type: ignore[no-untyped-def]
    assert lab.spec(N1)["faults"] == ["gpu-lost", "ecc-uncorrectable"]
    before = lab.lab.holder_pid(N1)
    res = bmc("bmc", "power", N1, "cycle", "--json")
    assert res.code == 0, res
    result = json.loads(res.out)
    # sushy-tools offers no PowerCycle: gpuctl powers off, waits for Off, powers on.
    assert (result["before"], result["after"], result["resets"]) == (
        "on", "on", ["ForceOff", "On"])
    assert lab.lab.holder_pid(N1) not in (None, before)  # a new boot
    assert lab.spec(N1)["faults"] == ["ecc-uncorrectable"]
    wait_for(lambda: _ssh_open(lab.address(0)), timeout=30)
    scan = json.loads(bmc("scan", N1, "--json").out)
    kinds = {f["kind"] for f in scan["results"][0]["findings"]}
    assert "ecc-uncorrectable" in kinds  # the part is still bad
    # The BMC's own log and the node's history both show the cycle.
    log = json.loads(bmc("bmc", "info", N1, "--json").out)["log_entries"]
    assert [e["message"].split(" (")[0] for e in log[:2]] == [
        "System powered on", "System powered off"]
    assert "cleared on boot: gpu-lost" in log[0]["message"]
    assert "requested by lab-admin" in log[1]["message"]
    assert datetime.datetime.fromisoformat(log[0]["created"]).tzinfo is not None
    (cycle,) = [e for e in _events(bmc, N1) if e["kind"] == "bmc"]
    assert cycle["reason"] == (f"power cycle through the BMC https://{lab.address(0)} "
                               "(Redfish ForceOff, On): on -> on")
    assert cycle["actor"] and "@" in cycle["actor"]


def test_a_bmc_of_another_machine_is_found_and_refused(bmc, lab: BmcLab) -> None:  # type: ignore[no-untyped-def]
    _register(bmc, lab, 0, url=lab.spec(N2)["bmc"])  # node 1 given node 2's BMC
    log2 = len(json.loads(bmc("bmc", "info", N2, "--json").out)["log_entries"])
    scan = json.loads(bmc("scan", N1, "--json").out)
    (finding,) = [f for f in scan["results"][0]["findings"]
                  if f["kind"] == "bmc-serial-mismatch"]
    assert lab.spec(N2)["system_serial"] in finding["message"]
    res = bmc("bmc", "power", N1, "cycle")
    assert res.code == 1 and "belongs to another machine" in res.err
    assert len(res.err.strip().splitlines()) == 1
    # Nothing reached node 2's BMC.
    assert len(json.loads(bmc("bmc", "info", N2, "--json").out)["log_entries"]) == log2
    info = bmc("bmc", "info", N1)
    assert "wrong BMC?" in info.out
    _register(bmc, lab, 0)
    assert json.loads(bmc("bmc", "info", N1, "--json").out)["serial_matches"] is True


def test_a_bmc_that_does_not_answer_is_one_line(bmc, lab: BmcLab) -> None:  # type: ignore[no-untyped-def]
    _register(bmc, lab, 1, url=f"https://{lab.address(1)}:9")
    start = time.monotonic()
    res = bmc("bmc", "power", N2, "cycle")
    assert res.code == 1
    assert res.err.strip() == (f"Error: {N2}: BMC https://{lab.address(1)}:9 does not answer "
                               "(connection refused)")
    assert time.monotonic() - start < 10
    assert "does not answer" in _events(bmc, N2)[-1]["reason"]
    _register(bmc, lab, 1)


def _other_ca(directory: Path) -> Path:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not the lab's CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path = directory / "other-ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_a_wrong_ca_and_wrong_credentials_are_refused(bmc, lab: BmcLab,  # type: ignore[no-untyped-def]
                                                      tmp_path: Path) -> None:
    _register(bmc, lab, 1, ca=str(_other_ca(tmp_path)))
    res = bmc("bmc", "power", N2)
    assert res.code == 1 and len(res.err.strip().splitlines()) == 1
    assert f"{N2}: BMC https://{lab.address(1)} failed TLS verification against CA bundle" \
        in res.err
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    _register(bmc, lab, 1, password_from=f"file:{wrong}")
    res = bmc("bmc", "info", N2)
    assert res.code == 1
    assert res.err.strip() == (f"Error: {N2}: BMC https://{lab.address(1)} refused the "
                               "credentials of user lab-admin (HTTP 401)")
    wrong.chmod(0o644)
    res = bmc("bmc", "power", N2)
    assert res.code == 1 and "has mode 0644" in res.err
    _register(bmc, lab, 1)
    assert bmc("bmc", "power", N2).code == 0
