"""Fill a gpuctl database with a fleet directly (no lab): nodes with hardware snapshots,
GPUs, burn-in results and certificates. Used by the fleet tests and the dashboard
benchmark."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert
from sqlmodel import Session

from provisioner.db.engine import get_engine
from provisioner.db.models import (
    BurninResult,
    Certificate,
    Event,
    Gpu,
    HardwareSnapshot,
    Node,
    Run,
)

STATES = ("in-service", "certified", "quarantined", "provisioned", "failed", "drained")


def fill_fleet(db_url: str, nodes: int, gpus_per_node: int = 8, *, sku: str = "h100-sxm-8",
               states: tuple[str, ...] = STATES, expired_every: int = 0,
               now: datetime | None = None, prefix: str = "gpu") -> None:
    """``nodes`` nodes, cycling through ``states``; certified/in-service ones have a
    certificate (every ``expired_every``-th expired) and burn-in results. Bulk inserts,
    so 10,000 nodes take seconds."""
    now = now or datetime.now(UTC)
    engine = get_engine(db_url, create=True)
    with Session(engine) as session:
        run = Run(kind="burnin", actor="fixture", args_json=json.dumps({"level": "quick"}),
                  status="ok", finished_at=now)
        session.add(run)
        session.flush()
        run_id = run.id
        session.commit()
    batch = 1000
    for start in range(0, nodes, batch):
        with engine.begin() as conn:
            rows = []
            for i in range(start, min(nodes, start + batch)):
                # Loopback addresses: never connected to, but tests keep to 127/8.
                rows.append({"name": f"{prefix}{i:05d}", "address": f"127.{1 + (i >> 16 & 15)}."
                             f"{i >> 8 & 255}.{i & 255}", "port": 22, "user": "root",
                             "labels_json": json.dumps({"rack": f"r{i // 32:03d}"}),
                             "vars_json": "{}", "sku": sku,
                             "state": states[i % len(states)], "hostkey_mismatch": False,
                             "created_at": now, "last_scan_at": now})
            conn.execute(insert(Node), rows)
            ids = dict(conn.exec_driver_sql(
                "SELECT name, id FROM node WHERE name >= ? AND name <= ?"
                if engine.dialect.name == "sqlite" else
                "SELECT name, id FROM node WHERE name >= %(a)s AND name <= %(b)s",
                (rows[0]["name"], rows[-1]["name"]) if engine.dialect.name == "sqlite"
                else {"a": rows[0]["name"], "b": rows[-1]["name"]}).all())
            snaps = [{"node_id": ids[r["name"]], "run_id": None, "taken_at": now,
                      "hostname": r["name"], "cpu_model": "AMD EPYC 9654", "cpu_sockets": 2,
                      "cpu_cores": 192, "memory_bytes": 2 << 40, "gpu_count": gpus_per_node,
                      "pci_gpu_count": gpus_per_node, "driver_version": "570.124.06",
                      "cuda_version": "12.8", "nouveau_loaded": False,
                      "facts_json": json.dumps({"cpu_threads": 384})} for r in rows]
            conn.execute(insert(HardwareSnapshot), snaps)
            snap_ids = dict(conn.execute(
                HardwareSnapshot.__table__.select()  # type: ignore[attr-defined]
                .with_only_columns(HardwareSnapshot.__table__.c.node_id,  # type: ignore[attr-defined]
                                   HardwareSnapshot.__table__.c.id)  # type: ignore[attr-defined]
                .where(HardwareSnapshot.__table__.c.node_id.in_(list(ids.values())))  # type: ignore[attr-defined]
            ).all())
            for node_id, snap_id in snap_ids.items():
                conn.execute(Node.__table__.update().where(  # type: ignore[attr-defined]
                    Node.__table__.c.id == node_id).values(last_snapshot_id=snap_id))  # type: ignore[attr-defined]
            conn.execute(insert(Gpu), [
                {"snapshot_id": snap_ids[ids[r["name"]]], "node_id": ids[r["name"]],
                 "index": g, "uuid": f"GPU-{ids[r['name']]:06d}-{g}", "serial": str(g),
                 "model": "NVIDIA H100 80GB HBM3", "pci_bus_id": f"00000000:{0x18 + g:02x}:00.0",
                 "memory_mib": 81559, "driver_version": "570.124.06"}
                for r in rows for g in range(gpus_per_node)])
            certs, results, events = [], [], []
            for k, r in enumerate(rows, start=start):
                node_id = ids[r["name"]]
                events.append({"node_id": node_id, "run_id": run_id, "at": now,
                               "actor": "fixture", "kind": "state", "from_state": "burning-in",
                               "to_state": r["state"], "severity": "info",
                               "reason": "burn-in failed: xid on GPU 3: XID 79"
                               if r["state"] == "quarantined" else "fixture"})
                if r["state"] not in ("certified", "in-service"):
                    continue
                expired = expired_every and k % expired_every == 0
                issued = now - timedelta(days=100 if expired else 1)
                certs.append({"node_id": node_id, "run_id": run_id, "profile": sku,
                              "level": "quick", "driver_version": "570.124.06",
                              "cuda_version": "12.8", "results_digest": "0" * 64,
                              "issued_at": issued, "expires_at": issued + timedelta(days=90)})
                results.append({"run_id": run_id, "node_id": node_id, "gpu_index": None,
                                "test": "all_reduce_busbw", "value": 478.5, "unit": "GB/s",
                                "threshold": 460.0, "verdict": "pass", "reason": "",
                                "detail_json": "{}"})
            if certs:
                conn.execute(insert(Certificate), certs)
                conn.execute(insert(BurninResult), results)
            conn.execute(insert(Event), events)
