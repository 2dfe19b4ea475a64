"""Hostile values never get past validation."""

from __future__ import annotations

import pytest

from provisioner.errors import InputError
from provisioner.inventory.registry import NodeSpec
from provisioner.inventory.validate import check_address, check_hostname, parse_label

HOSTILE = [
    "-oProxyCommand=touch /tmp/pwned",
    "node1;rm -rf /",
    "node1 && reboot",
    "$(reboot)",
    "`id`",
    "node\nname",
    "node\rname",
    "a" * 300,
    "a" * 64 + ".example.com",
    "node_1",
    "-node",
    "node-",
    "nöde",
    "",
    "..",
    "node|cat",
    "node'x",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_hostnames_are_refused(value: str) -> None:
    with pytest.raises(InputError) as err:
        check_hostname(value)
    assert "\n" not in str(err.value)
    assert len(str(err.value)) < 200


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_addresses_are_refused(value: str) -> None:
    with pytest.raises(InputError):
        check_address(value)


@pytest.mark.parametrize("value", ["gpu017", "gpu-017.rack12.dc1.example.com", "a", "A1-b2"])
def test_good_hostnames_pass(value: str) -> None:
    assert check_hostname(value) == value


@pytest.mark.parametrize("value", ["127.0.0.10", "::1", "fe80::1"])
def test_ip_addresses_pass(value: str) -> None:
    assert check_address(value) == value


@pytest.mark.parametrize("field, value", [
    ("user", "root;id"), ("user", "-oX"), ("port", 0), ("port", 70000), ("port", "22;id"),
    ("key_path", "/tmp/key\nProxyCommand x"), ("sku", "H100 SXM"),
])
def test_other_fields_are_validated(field: str, value: object) -> None:
    with pytest.raises(InputError):
        NodeSpec(name="gpu1", **{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["rack", "=x", "k=v;id", "k=$(x)", "k=" + "v" * 64])
def test_bad_labels_are_refused(text: str) -> None:
    with pytest.raises(InputError):
        parse_label(text)


def test_labels_parse() -> None:
    assert parse_label("rack=r12") == ("rack", "r12")
    assert parse_label("gpuctl.io/pool=team-a") == ("gpuctl.io/pool", "team-a")
