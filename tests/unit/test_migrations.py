"""The alembic migrations produce exactly the schema the models describe."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from provisioner.db.engine import get_engine, head_revision
from provisioner.paths import Paths


def _compare_type(context, inspected, metadata, inspected_type, metadata_type):  # type: ignore[no-untyped-def]
    """SQLite stores INTEGER and BIGINT alike (64 bits): migration 0006 skips SQLite."""
    if context.dialect.name == "sqlite" and {type(inspected_type).__name__,
                                             type(metadata_type).__name__} <= {
            "INTEGER", "Integer", "BIGINT", "BigInteger"}:
        return False
    return None  # alembic's own comparison


def test_migrated_schema_matches_models(paths: Paths) -> None:
    engine = get_engine(paths.db_url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": _compare_type})
        diff = compare_metadata(ctx, SQLModel.metadata)
    assert diff == []


def test_upgrade_keeps_existing_rows(paths: Paths) -> None:
    """A database made by an older gpuctl, with rows in it, upgrades to the newest schema
    and keeps them (0006/0007 once failed on SQLite's foreign keys here)."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine, text

    from provisioner.db.engine import MIGRATIONS, migrate

    # Start from nothing (every test gets a database gpuctl init made).
    engine = create_engine(paths.db_url)
    if paths.db_url.startswith("sqlite"):
        paths.db_file.unlink()
    else:
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    cfg = Config(str(MIGRATIONS / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0005")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO node (id, name, address, port, user, labels_json, "
                          "vars_json, state, hostkey_mismatch, created_at) VALUES (1, 'n1', "
                          "'127.0.0.1', 22, 'root', '{}', '{}', 'certified', false, "
                          "'2026-01-01 00:00:00')".replace(" user,", ' "user",')))
        conn.execute(text("INSERT INTO hardwaresnapshot (id, node_id, taken_at, gpu_count, "
                          "pci_gpu_count, nouveau_loaded, facts_json, memory_bytes) VALUES "
                          "(1, 1, '2026-01-01 00:00:00', 8, 8, false, '{}', 2000000000)"))
        conn.execute(text("INSERT INTO gpu (snapshot_id, node_id, \"index\", pci_bus_id) "
                          "VALUES (1, 1, 0, '0000:18:00.0')"))
        conn.execute(text("UPDATE node SET last_snapshot_id = 1"))
    if paths.db_url.startswith("sqlite"):
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA foreign_keys=ON")
    migrate(get_engine(paths.db_url))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM node")).scalar() == 1
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == \
            head_revision()
        assert conn.execute(text("SELECT count(*) FROM gpu")).scalar() == 1
        assert conn.execute(text("SELECT memory_bytes FROM hardwaresnapshot")).scalar() == \
            2000000000


def test_sqlite_database_uses_wal(paths: Paths) -> None:
    if not paths.db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL run: WAL is SQLite's")
    engine = get_engine(paths.db_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_removing_a_node_cascades_in_the_schema(paths: Paths) -> None:
    """Migration 0008: what belongs to a node goes with it, by the database's own
    foreign keys (the registry no longer lists the tables by hand)."""
    from sqlmodel import select

    from provisioner.db.models import (
        BurninResult,
        Certificate,
        Event,
        Gpu,
        HardwareSnapshot,
        Node,
        Pool,
        PoolAllocation,
        Run,
    )
    from provisioner.fleet.ops import remove_nodes
    from provisioner.handle import Gpuctl
    from provisioner.inventory.registry import NodeSpec, add_nodes

    gc = Gpuctl(paths)
    add_nodes(gc, [NodeSpec(name="n1", address="127.0.0.21"),
                   NodeSpec(name="n2", address="127.0.0.22")])
    with gc.session() as session:
        run = Run(kind="burnin", actor="t", status="ok")
        pool = Pool(name="p", sku="h100-sxm-8", gpus=8)
        session.add_all([run, pool])
        session.flush()
        for node in session.exec(select(Node)):
            snap = HardwareSnapshot(node_id=node.id)  # type: ignore[arg-type]
            session.add(snap)
            session.flush()
            node.last_snapshot_id = snap.id
            session.add_all([
                node, Gpu(snapshot_id=snap.id, node_id=node.id, index=0),  # type: ignore[arg-type]
                BurninResult(run_id=run.id, node_id=node.id, test="t", verdict="pass"),  # type: ignore[arg-type]
                Certificate(node_id=node.id, run_id=run.id, profile="x", level="quick",  # type: ignore[arg-type]
                            results_digest="0" * 64),
                PoolAllocation(pool_id=pool.id, node_id=node.id, gpus=8)])  # type: ignore[arg-type]
    remove_nodes(gc, ["n1"])
    with gc.session() as session:
        left = {model.__name__: {r.node_id for r in session.exec(select(model))}
                for model in (HardwareSnapshot, Gpu, BurninResult, Certificate,
                              PoolAllocation, Event)}
        assert [n.name for n in session.exec(select(Node))] == ["n2"]
        assert session.exec(select(Run)).one().status == "ok"  # runs stay
    assert all(ids == {2} for ids in left.values()), left
    with gc.session() as session:
        session.delete(session.exec(select(Pool)).one())
    with gc.session() as session:
        assert session.exec(select(PoolAllocation)).all() == []
