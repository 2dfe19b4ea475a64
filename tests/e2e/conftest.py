"""Lab fixtures: each test gets its own lab on its own 127.0.N.0/24 block."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest

from provisioner.lab.nodes import Lab
from provisioner.paths import Paths

_blocks = itertools.count(40)


class LabHandle:
    def __init__(self, gpuctl: Any, paths: Paths) -> None:
        self.gpuctl, self.paths = gpuctl, paths
        self.lab = Lab(paths)
        self.block = next(_blocks)

    def up(self, nodes: int, *args: str) -> list[dict[str, Any]]:
        result = self.gpuctl("lab", "up", "--nodes", str(nodes), "--first-address",
                             f"127.0.{self.block}.10", "--json", *args)
        assert result.code == 0, result
        return json.loads(result.out)  # type: ignore[no-any-return]

    def address(self, index: int) -> str:
        return f"127.0.{self.block}.{10 + index}"


@pytest.fixture
def lab(gpuctl: Any, paths: Paths) -> Iterator[LabHandle]:
    handle = LabHandle(gpuctl, paths)
    yield handle
    handle.lab.down()


def scan_json(gpuctl: Any, *args: str) -> tuple[int, dict[str, Any]]:
    result = gpuctl("scan", "--json", *args)
    assert result.out, result
    return result.code, json.loads(result.out)


def by_node(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in summary["results"]}
