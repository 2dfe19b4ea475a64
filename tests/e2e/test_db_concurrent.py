"""Two gpuctl processes writing to one database (SQLite, or PostgreSQL when the suite
runs against it) at once lose nothing."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest
from sqlmodel import func, select

from provisioner.db.engine import session_scope
from provisioner.db.models import Event

pytestmark = pytest.mark.e2e

WRITER = """
import sys
from provisioner.inventory.registry import NodeSpec, add_nodes, label_nodes
from provisioner.handle import Gpuctl
url = Gpuctl.from_env()
who, count = sys.argv[1], int(sys.argv[2])
for i in range(count):
    name = f"{who}-{i:03d}"
    add_nodes(url, [NodeSpec(name=name, address="127.0.0.1", labels={"writer": who})])
    label_nodes(url, [name], {"step": "labelled"}, [])
print("done", who)
"""


def test_two_writers_at_once(gpuctl, paths) -> None:  # type: ignore[no-untyped-def]
    assert gpuctl("init").code == 0
    env = {**os.environ, "GPUCTL_HOME": str(paths.home)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, who, "150"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for who in ("alpha", "beta")]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    nodes = json.loads(gpuctl("nodes", "list", "--json").out)
    assert len(nodes) == 300
    assert all(n["labels"]["step"] == "labelled" for n in nodes)
    assert {n["labels"]["writer"] for n in nodes} == {"alpha", "beta"}
    with session_scope(paths.db_url) as session:
        assert session.exec(select(func.count()).select_from(Event)).one() == 600
    if paths.db_url.startswith("sqlite"):
        db = sqlite3.connect(paths.db_file)
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
