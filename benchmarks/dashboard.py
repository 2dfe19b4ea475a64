"""Fleet views at scale, side by side in one run.

    .venv/bin/python benchmarks/dashboard.py [--nodes 10000] [--gpus 8] [--db URL]

Fills a fresh database (SQLite in a temp dir unless --db) with --nodes nodes of --gpus
GPUs each (hardware snapshots, GPUs, certificates, burn-in results, events), then times,
three times each, best of three:
  * ``gpuctl status`` and ``gpuctl nodes list --json`` as a user runs them (a new
    process: interpreter start, imports, schema check, queries, rendering);
  * the same two in-process (queries and rendering only);
  * the baseline: a new Python process running a bare ``SELECT count(*) FROM node`` (and
    in-process, the query alone) on the same database.
Target: each gpuctl command under 1 s with 10,000 nodes x 8 GPUs.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from sqlalchemy import text  # noqa: E402

from provisioner.db.engine import get_engine  # noqa: E402
from provisioner.fleet.status import fleet_status  # noqa: E402
from provisioner.handle import Gpuctl  # noqa: E402
from provisioner.inventory.registry import list_nodes  # noqa: E402
from provisioner.paths import Paths  # noqa: E402
from provisioner.ui.fleet import status_view  # noqa: E402
from tests.fleet_fixtures import fill_fleet  # noqa: E402

GPUCTL = Path(sys.executable).with_name("gpuctl")
BASELINE = ("import sys, sqlalchemy as sa; e = sa.create_engine(sys.argv[1]); "
            "c = e.connect(); print(c.execute(sa.text('SELECT count(*) FROM node')).scalar())")


def best(fn, runs: int = 3) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--db", help="database URL (default: SQLite in a temp dir)")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="gpuctl-dash-")
    url = args.db or f"sqlite:///{tmp}/gpuctl.db"
    env = {**os.environ, "GPUCTL_HOME": tmp, "GPUCTL_DB": url, "COLUMNS": "160"}
    start = time.perf_counter()
    fill_fleet(url, args.nodes, args.gpus, expired_every=97)
    print(f"filled {args.nodes} nodes x {args.gpus} GPUs in {time.perf_counter() - start:.1f} s"
          f" ({url.split('://')[0]})")
    engine = get_engine(url)
    gc = Gpuctl(Paths(Path(tmp), url))

    def count() -> None:
        with engine.connect() as conn:
            conn.execute(text("SELECT count(*) FROM node")).scalar()

    def status_inproc() -> None:
        doc = fleet_status(gc)
        Console(file=io.StringIO(), width=160).print(status_view(doc))

    def list_inproc() -> None:
        import json  # noqa: PLC0415

        json.dumps([v.to_dict() for v in list_nodes(gc)])

    def cli(*argv: str) -> None:
        subprocess.run([str(GPUCTL), *argv], env=env, check=True, stdout=subprocess.DEVNULL)

    def baseline_cli() -> None:
        subprocess.run([sys.executable, "-c", BASELINE, url], check=True,
                       stdout=subprocess.DEVNULL)

    rows = [
        ("SELECT count(*) (in-process)", best(count)),
        ("gpuctl status (in-process)", best(status_inproc)),
        ("gpuctl nodes list --json (in-process)", best(list_inproc)),
        ("SELECT count(*) (new python process)", best(baseline_cli)),
        ("gpuctl status (command)", best(lambda: cli("status"))),
        ("gpuctl nodes list --json (command)", best(lambda: cli("nodes", "list", "--json"))),
    ]
    base_in, base_cli = rows[0][1], rows[3][1]
    for name, seconds in rows:
        base = base_in if "in-process" in name else base_cli
        print(f"{name:40s} {seconds * 1000:8.1f} ms   {seconds / base:6.1f}x baseline")
    worst = max(rows[4][1], rows[5][1])
    print(f"slowest command: {worst:.2f} s (target < 1 s): {'OK' if worst < 1 else 'MISSED'}")
    return 0 if worst < 1 else 1


if __name__ == "__main__":
    sys.exit(main())
