"""A node's BMC as a user registers it: URL, user, password reference and CA bundle
checked at the door; the password read only from its reference, never stored; a BMC
that cannot be reached is one line."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from provisioner.bmc import BmcError, BmcTarget, power_state
from provisioner.bmc import redfish as redfish_mod
from provisioner.bmc.credentials import read_password
from provisioner.errors import InputError
from provisioner.inventory.importers import parse_csv, parse_ini, parse_yaml
from provisioner.inventory.registry import NodeSpec
from provisioner.inventory.validate import check_bmc_url, check_secret_ref
from provisioner.probe.facts import HardwareFacts
from provisioner.scan.findings import bmc_findings

SECRET = "s3cr3t-Pa55w0rd"


def _facts(serial: str) -> HardwareFacts:
    facts = HardwareFacts.__new__(HardwareFacts)
    facts.dmi = {"product_serial": serial}
    return facts


@pytest.mark.parametrize(("url", "normal"), [
    ("https://127.0.3.17", "https://127.0.3.17"),
    ("https://bmc-gpu017.example.com:8443/", "https://bmc-gpu017.example.com:8443"),
    ("https://127.0.3.17/redfish/v1", "https://127.0.3.17"),
    ("https://127.0.3.17/redfish/v1/Systems/System.Embedded.1/",
     "https://127.0.3.17/redfish/v1/Systems/System.Embedded.1"),
    ("https://[fd00::17]", "https://[fd00::17]"),
])
def test_bmc_urls_are_normalised(url: str, normal: str) -> None:
    assert check_bmc_url(url) == normal


@pytest.mark.parametrize(("url", "says"), [
    ("http://127.0.3.17", "plain http"),
    ("ftp://127.0.3.17", "must be https"),
    ("https://", "must be https"),
    ("https://127.0.3.17:99999", "bad port"),
    ("https://127.0.3.17/cgi-bin/login", "one system"),
    ("https://127.0.3.17/?x=1", "query"),
    ("https://bad_host!", "not a valid hostname"),
    ("https://127.0.3.17 ; reboot", "spaces"),
])
def test_bad_bmc_urls_are_refused_in_one_line(url: str, says: str) -> None:
    with pytest.raises(InputError, match=says) as exc:
        check_bmc_url(url)
    assert "\n" not in str(exc.value)


def test_a_password_in_the_url_is_refused_and_never_echoed() -> None:
    for url in (f"https://admin:{SECRET}@127.0.3.17", f"https://{SECRET}@127.0.3.17"):
        with pytest.raises(InputError, match="must not hold a user or password") as exc:
            check_bmc_url(url)
        assert SECRET not in str(exc.value)


def test_a_password_given_as_the_reference_is_refused_and_never_echoed() -> None:
    for ref in (SECRET, f"pass:{SECRET}", "env:1BAD", "env:", "file:"):
        with pytest.raises(InputError, match="by reference") as exc:
            check_secret_ref(ref)
        assert SECRET not in str(exc.value)
    assert check_secret_ref("env:BMC_PASSWORD") == "env:BMC_PASSWORD"
    assert check_secret_ref("file:/etc/gpuctl/bmc") == "file:/etc/gpuctl/bmc"
    assert check_secret_ref("file:rel/pw") == f"file:{os.path.abspath('rel/pw')}"


def test_a_bmc_needs_its_user_and_password_reference() -> None:
    with pytest.raises(InputError, match="needs a password reference"):
        NodeSpec(name="gpu017", bmc_url="https://127.0.3.17", bmc_user="admin")
    with pytest.raises(InputError, match="needs a user"):
        NodeSpec(name="gpu017", bmc_url="https://127.0.3.17", bmc_password_from="env:X")
    with pytest.raises(InputError, match="without a BMC URL"):
        NodeSpec(name="gpu017", bmc_user="admin")
    with pytest.raises(InputError, match="BMC user"):
        NodeSpec(name="gpu017", bmc_url="https://127.0.3.17", bmc_user="ad:min",
                 bmc_password_from="env:X")
    spec = NodeSpec(name="gpu017", bmc_url="https://127.0.3.17/", bmc_user="admin",
                    bmc_password_from="env:BMC_PW", bmc_ca="ca.pem")
    assert (spec.bmc_url, spec.bmc_ca) == ("https://127.0.3.17", os.path.abspath("ca.pem"))


def test_the_import_formats_carry_the_bmc() -> None:
    csv_specs = parse_csv("name,address,bmc,bmc_user,bmc_password_from,bmc_ca\n"
                          "gpu01,127.0.0.101,https://127.0.1.1,admin,env:BMC_PW,/etc/ca.pem\n"
                          "gpu02,127.0.0.102,,,,\n")
    assert (csv_specs[0].bmc_url, csv_specs[0].bmc_user, csv_specs[0].bmc_password_from,
            csv_specs[0].bmc_ca) == ("https://127.0.1.1", "admin", "env:BMC_PW", "/etc/ca.pem")
    assert csv_specs[1].bmc_url is None
    ini = parse_ini("[gpu]\ngpu01 ansible_host=127.0.0.101 gpuctl_bmc=https://127.0.1.1\n"
                    "[gpu:vars]\ngpuctl_bmc_user=admin\n"
                    "gpuctl_bmc_password_from=file:/etc/gpuctl/bmc-pw\n")
    assert (ini[0].bmc_url, ini[0].bmc_user, ini[0].bmc_password_from) == (
        "https://127.0.1.1", "admin", "file:/etc/gpuctl/bmc-pw")
    assert "gpuctl_bmc" not in ini[0].labels
    yml = parse_yaml("all:\n  hosts:\n    gpu01:\n      gpuctl_bmc: https://127.0.1.1\n"
                     "      gpuctl_bmc_user: admin\n      gpuctl_bmc_password_from: env:PW\n")
    assert yml[0].bmc_url == "https://127.0.1.1"


def test_a_bmc_password_in_an_inventory_is_refused_and_never_echoed() -> None:
    with pytest.raises(InputError, match="never stored") as exc:
        parse_ini(f"gpu01 gpuctl_bmc=https://127.0.1.1 gpuctl_bmc_password={SECRET}\n")
    assert SECRET not in str(exc.value)
    with pytest.raises(InputError, match="http"):
        parse_csv("name,bmc,bmc_user,bmc_password_from\ngpu01,http://127.0.1.1,a,env:X\n")


def test_the_password_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BMC_PW", SECRET)
    assert read_password("env:BMC_PW", node="gpu01") == SECRET
    monkeypatch.delenv("BMC_PW")
    with pytest.raises(BmcError, match="gpu01: the BMC password variable BMC_PW is not set"):
        read_password("env:BMC_PW", node="gpu01")


def test_a_password_file_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "bmc-pw"
    path.write_text(SECRET + "\n")
    path.chmod(0o644)
    with pytest.raises(BmcError) as exc:
        read_password(f"file:{path}", node="gpu01")
    assert str(exc.value) == (f"gpu01: the BMC password file {path} has mode 0644; it must "
                              f"be readable by its owner only (chmod 600 {path})")
    path.chmod(0o600)
    assert read_password(f"file:{path}", node="gpu01") == SECRET  # the line break dropped
    path.write_text("")
    with pytest.raises(BmcError, match="is empty"):
        read_password(f"file:{path}", node="gpu01")
    with pytest.raises(BmcError, match="cannot read the BMC password file"):
        read_password(f"file:{tmp_path / 'absent'}", node="gpu01")
    with pytest.raises(BmcError, match="not a regular file"):
        read_password(f"file:{tmp_path}", node="gpu01")


def test_a_bmc_that_does_not_answer_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redfish_mod, "RETRIES", 1)
    monkeypatch.setenv("BMC_PW", SECRET)
    target = BmcTarget("gpu01", "https://127.0.0.1:9", "admin", "env:BMC_PW")
    with pytest.raises(BmcError) as exc:
        redfish_mod.open_system(target).__enter__()
    assert str(exc.value) == "gpu01: BMC https://127.0.0.1:9 does not answer (connection refused)"


def test_a_missing_ca_bundle_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BMC_PW", SECRET)
    target = BmcTarget("gpu01", "https://127.0.0.1:9", "admin", "env:BMC_PW", "/no/ca.pem")
    with pytest.raises(BmcError, match="gpu01: the BMC's CA bundle /no/ca.pem does not exist"):
        redfish_mod.open_system(target).__enter__()


def test_the_scan_compares_the_bmc_serial_with_the_os() -> None:
    assert bmc_findings(_facts("S1"), "https://b", "S1", None) == []
    assert bmc_findings(_facts("S1"), "https://b", None, None) == []  # BMC says nothing
    (wrong,) = bmc_findings(_facts("S1"), "https://b", "S2", None)
    assert (wrong.kind, wrong.severity) == ("bmc-serial-mismatch", "warning")
    assert "reports system serial S2, the OS S1" in wrong.message
    (down,) = bmc_findings(_facts("S1"), "https://b", None, "BMC https://b does not answer")
    assert (down.kind, down.message) == ("bmc", "BMC https://b does not answer")


def test_cli_registers_a_bmc_by_reference_only(gpuctl, gpuctl_home: Path,  # type: ignore[no-untyped-def]
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BMC_PW", SECRET)
    res = gpuctl("nodes", "add", "gpu017", "--address", "127.0.0.17", "--bmc",
                 "http://127.0.0.1:9", "--bmc-user", "admin", "--bmc-password-from",
                 "env:BMC_PW")
    assert res.code == 1 and "plain http" in res.err and len(res.err.strip().splitlines()) == 1
    res = gpuctl("nodes", "add", "gpu017", "--address", "127.0.0.17", "--bmc",
                 "https://127.0.0.1:9", "--bmc-user", "admin")
    assert res.code == 1 and "needs a password reference" in res.err
    assert gpuctl("nodes", "add", "gpu017", "--address", "127.0.0.17", "--bmc",
                  "https://127.0.0.1:9", "--bmc-user", "admin", "--bmc-password-from",
                  "env:BMC_PW").code == 0
    shown = json.loads(gpuctl("nodes", "show", "gpu017", "--json").out)
    assert shown["node"]["bmc"] == "https://127.0.0.1:9"
    monkeypatch.setattr(redfish_mod, "RETRIES", 1)
    res = gpuctl("bmc", "power", "gpu017", "cycle")
    assert res.code == 1
    assert res.err.strip() == ("Error: gpu017: BMC https://127.0.0.1:9 does not answer "
                               "(connection refused)")
    res = gpuctl("bmc", "info", "gpu017")
    assert res.code == 1 and "Traceback" not in res.err
    gpuctl("nodes", "add", "gpu018", "--address", "127.0.0.18")
    res = gpuctl("bmc", "power", "gpu018")
    assert res.code == 1 and "gpu018 has no BMC registered" in res.err
    # The failed cycle is in the node's history; the password is nowhere in the data dir.
    events = json.loads(gpuctl("nodes", "show", "gpu017", "--json").out)["events"]
    assert events[-1]["kind"] == "bmc" and "power cycle through the BMC failed" in \
        events[-1]["reason"]
    for path in gpuctl_home.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    db = sqlite3.connect(gpuctl_home / "gpuctl.db")
    row = db.execute("SELECT bmc_url, bmc_user, bmc_password_from FROM node "
                     "WHERE name = 'gpu017'").fetchone()
    assert row == ("https://127.0.0.1:9", "admin", "env:BMC_PW")


def test_power_state_needs_a_registered_node(gc) -> None:  # type: ignore[no-untyped-def]
    from provisioner.errors import NotFoundError

    with pytest.raises(NotFoundError):
        power_state(gc, "nope")


class _FakeSystem:
    """A ComputerSystem as sushy shows it, for the power logic alone."""

    def __init__(self, state: str, allowed: set[str], fail_on: str | None = None) -> None:
        from sushy.resources import constants as c

        self.c = c
        self.power_state = c.PowerState(state)
        self.allowed = {c.ResetType(v) for v in allowed}
        self.fail_on, self.serial_number, self.sent = fail_on, "S1", []

    def get_allowed_reset_system_values(self):  # type: ignore[no-untyped-def]
        return self.allowed

    def reset_system(self, value) -> None:  # type: ignore[no-untyped-def]
        if value.value == self.fail_on:
            raise BmcError(f"gpu01: BMC https://b answered HTTP 500 for {value.value}")
        self.sent.append(value.value)
        self.power_state = self.c.PowerState.OFF if value.value == "ForceOff" \
            else self.c.PowerState.ON

    def refresh(self) -> None:
        pass


def _fake_bmc(monkeypatch: pytest.MonkeyPatch, system: _FakeSystem) -> BmcTarget:
    import contextlib

    from provisioner.bmc import power as power_mod

    monkeypatch.setattr(power_mod, "open_system",
                        lambda target: contextlib.nullcontext(system))
    return BmcTarget("gpu01", "https://b", "admin", "env:X")


def test_a_cycle_uses_power_cycle_when_the_bmc_offers_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from provisioner.bmc import apply_power

    system = _FakeSystem("On", {"On", "ForceOff", "PowerCycle"})
    result = apply_power(_fake_bmc(monkeypatch, system), "cycle")
    assert (result.before, result.after, result.resets) == ("on", "on", ["PowerCycle"])
    system = _FakeSystem("On", {"On", "ForceOff"})
    assert apply_power(_fake_bmc(monkeypatch, system), "cycle").resets == ["ForceOff", "On"]
    system = _FakeSystem("Off", {"On", "ForceOff", "PowerCycle"})  # off: just power on
    assert apply_power(_fake_bmc(monkeypatch, system), "cycle").resets == ["On"]
    assert apply_power(_fake_bmc(monkeypatch, system), "on").resets == []  # already on


def test_a_cycle_that_fails_half_way_says_what_was_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    from provisioner.bmc import apply_power

    system = _FakeSystem("On", {"On", "ForceOff"}, fail_on="On")
    with pytest.raises(BmcError) as exc:
        apply_power(_fake_bmc(monkeypatch, system), "cycle")
    assert str(exc.value) == ("gpu01: BMC https://b answered HTTP 500 for On (after sending "
                              "ForceOff)")
    with pytest.raises(BmcError, match="belongs to another machine"):
        apply_power(_fake_bmc(monkeypatch, _FakeSystem("On", {"On"})), "off", os_serial="S2")


def test_power_off_or_cycle_of_a_serving_node_is_refused(gpuctl, gpuctl_home: Path,  # type: ignore[no-untyped-def]
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """Its jobs would die and it would come back unverified (review of issue 24): refused
    before the BMC is asked, unless --serving."""
    monkeypatch.setenv("BMC_PW", SECRET)
    assert gpuctl("nodes", "add", "gpu017", "--address", "127.0.0.17", "--bmc",
                  "https://127.0.0.1:9", "--bmc-user", "admin", "--bmc-password-from",
                  "env:BMC_PW").code == 0
    from provisioner.handle import Gpuctl
    from provisioner.inventory.lifecycle import get_node
    from provisioner.paths import Paths

    gc = Gpuctl(Paths.from_env())
    with gc.session() as session:
        node = get_node(session, "gpu017")
        node.state = "in-service"
        session.add(node)
    res = gpuctl("bmc", "power", "gpu017", "cycle")
    assert res.code == 1 and "is in-service: power cycle would kill its jobs" in res.err
    res = gpuctl("bmc", "power", "gpu017", "cycle", "--serving", "--wait", "1")
    assert "does not answer" in res.err  # it went on to the (absent) BMC
