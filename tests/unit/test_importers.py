"""Importing Ansible INI/YAML and CSV inventories: all-or-nothing, every bad line named."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.errors import InputError
from provisioner.handle import Gpuctl
from provisioner.inventory.importers import expand_host_pattern, import_nodes, parse_inventory_file
from provisioner.inventory.registry import list_nodes
from tests.conftest import DATA

INV = DATA / "inventories"


def test_ini_groups_vars_ranges_and_children() -> None:
    specs = {s.name: s for s in parse_inventory_file(INV / "good.ini")}
    assert sorted(specs) == ["gpu-spare", "gpu01.r12.example.com", "gpu01.r13.example.com",
                             "gpu02.r12.example.com", "gpu03.r12.example.com"]
    g = specs["gpu02.r12.example.com"]
    assert (g.address, g.user, g.key_path) == ("gpu02.r12.example.com", "ubuntu", "/keys/fleet")
    assert g.labels == {"group": "rack12", "tier": "training"}  # h100:vars via children
    spare = specs["gpu-spare"]
    assert (spare.address, spare.port, spare.sku) == ("127.0.0.99", 2222, "h100-sxm-8")
    assert spare.ansible_vars == {"ansible_python_interpreter": "/usr/bin/python3"}
    assert specs["gpu01.r13.example.com"].labels == {"group": "rack13"}


def test_secrets_in_inventories_are_never_kept() -> None:
    for spec in parse_inventory_file(INV / "good.ini"):
        text = repr(spec)
        assert "s3cret" not in text and "hunter2" not in text


def test_yaml_inventory() -> None:
    specs = {s.name: s for s in parse_inventory_file(INV / "good.yml")}
    assert sorted(specs) == ["l40s-01", "node1.dc1.example.com", "node2.dc1.example.com",
                             "node9.dc1.example.com"]
    assert specs["node1.dc1.example.com"].address == "127.0.0.20"
    assert specs["node1.dc1.example.com"].sku == "h100-sxm-8"
    assert specs["node9.dc1.example.com"].labels == {"group": "hgx", "rack": "r9"}
    assert specs["l40s-01"].port == 2200 and specs["l40s-01"].user == "admin"


def test_csv_inventory() -> None:
    specs = {s.name: s for s in parse_inventory_file(INV / "good.csv")}
    assert specs["gpu101"].labels == {"rack": "r1", "row": "3"}
    assert (specs["gpu102"].address, specs["gpu102"].port, specs["gpu102"].user) == \
        ("gpu102", 2222, "ops")


@pytest.mark.parametrize("name, lines", [
    ("bad.ini", [3, 4, 5, 6, 7, 8]),
    ("bad.csv", [3, 4, 5]),
    ("bad.yml", [5, 9]),
])
def test_every_bad_line_is_listed_with_its_number(name: str, lines: list[int]) -> None:
    with pytest.raises(InputError) as err:
        parse_inventory_file(INV / name)
    message = str(err.value)
    assert "nothing imported" in message.splitlines()[0]
    listed = [int(line.split()[1].rstrip(":")) for line in message.splitlines()[1:]]
    assert listed == lines, message


def test_bad_file_imports_nothing_and_keeps_existing(gc: Gpuctl, tmp_path: Path) -> None:
    import_nodes(gc, INV / "good.csv")
    with pytest.raises(InputError):
        import_nodes(gc, INV / "bad.ini")
    assert [v.name for v in list_nodes(gc)] == ["gpu101", "gpu102"]


@pytest.mark.parametrize("content, words", [
    (b"\xff\xfe\x00\x01", "not UTF-8"),
    (b"# only a comment\n", "no hosts found"),
])
def test_unusable_files(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "inv.ini"
    path.write_bytes(content)
    with pytest.raises(InputError, match=words):
        parse_inventory_file(path)


def test_missing_and_huge_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        parse_inventory_file(tmp_path / "nope.ini")
    huge = tmp_path / "huge.ini"
    huge.write_bytes(b"#" * (11 * 1024 * 1024))
    with pytest.raises(InputError, match="too large"):
        parse_inventory_file(huge)


def test_host_ranges() -> None:
    assert expand_host_pattern("gpu[08:10]") == ["gpu08", "gpu09", "gpu10"]
    assert expand_host_pattern("r[a:b]n[1:2]") == ["ran1", "ran2", "rbn1", "rbn2"]
    with pytest.raises(InputError, match="expands past 10000 hosts"):
        expand_host_pattern("gpu[0:99999]")
    with pytest.raises(InputError, match="expands past 10000 hosts"):
        expand_host_pattern("gpu[0:9999][0:9999]")  # each range small, the product not
