"""Team GPU pools: certified capacity of one SKU divided between teams, in slices of a
node (8, 4, 2 or 1 GPUs, aligned, as NVSwitch/NUMA layouts want)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlmodel import Session, col, delete, func, select

from provisioner.db.models import HardwareSnapshot, Node, Pool, PoolAllocation
from provisioner.errors import InputError, NotFoundError
from provisioner.events import PoolsChanged, note_change
from provisioner.handle import Gpuctl
from provisioner.inventory.lifecycle import State, get_node

USABLE = (State.CERTIFIED.value, State.IN_SERVICE.value)
_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?")
# A Slurm account (sacctmgr keeps them lower-case) and a Unix group (useradd(8)'s
# default NAME_REGEX); either ends up in a slurm.conf line, so nothing else passes.
_ACCOUNT = re.compile(r"[a-z0-9_][a-z0-9_.-]{0,63}")
_GROUP = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
SLICES = (1, 2, 4, 8)


@dataclass
class PoolView:
    name: str
    sku: str
    gpus: int
    assigned: int
    usable: int  # assigned GPUs on nodes that are certified or in service now
    allocations: list[dict[str, Any]] = field(default_factory=list)
    accounts: list[str] = field(default_factory=list)  # both empty: open to everyone
    groups: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pool(session: Session, name: str) -> Pool:
    pool = session.exec(select(Pool).where(Pool.name == name)).first()
    if pool is None:
        raise NotFoundError(f"no pool {name[:64]!r}")
    return pool


def _names(values: list[str], pattern: re.Pattern[str], what: str) -> str:
    out = []
    for value in values:
        for name in value.split(","):
            if not pattern.fullmatch(name):
                raise InputError(f"{what} {name[:40]!r} is not a Slurm {what} name")
            out.append(name)
    return ",".join(dict.fromkeys(out))


def create_pool(gc: Gpuctl, name: str, sku: str, gpus: int, *,
                accounts: list[str] | None = None, groups: list[str] | None = None,
                open_to_all: bool = False) -> None:
    """A pool of ``gpus`` GPUs of ``sku`` that only ``accounts`` (Slurm) and ``groups``
    (Unix) may use; ``open_to_all`` says, by name, that everyone may.

    Raises:
        InputError: a bad name, unknown SKU, non-positive size, a duplicate, or no
            say on who may use it.
    """
    account_list = _names(accounts or [], _ACCOUNT, "account")
    group_list = _names(groups or [], _GROUP, "group")
    if open_to_all and (account_list or group_list):
        raise InputError("--open is a pool for everyone; leave out --accounts/--groups")
    if not (open_to_all or account_list or group_list):
        raise InputError("say who may use the pool: --accounts A[,B], --groups G[,H], "
                         "or --open for every user")
    if not _NAME.fullmatch(name):
        raise InputError(f"pool name {name[:70]!r} must be lower-case letters, digits and "
                         "dashes (at most 64)")
    if gc.sku(sku) is None:
        raise InputError(f"unknown SKU {sku[:40]!r}; known: {', '.join(sorted(gc.skus()))}")
    if gpus < 1:
        raise InputError("--gpus must be at least 1")
    with gc.session() as session:
        if session.exec(select(Pool).where(Pool.name == name)).first():
            raise InputError(f"pool {name} exists")
        session.add(Pool(name=name, sku=sku, gpus=gpus, actor=gc.actor,
                         accounts=account_list, groups=group_list))
        note_change(session, PoolsChanged(name))


def _node_gpus(gc: Gpuctl, session: Session, node: Node) -> int:
    snap = session.get(HardwareSnapshot, node.last_snapshot_id) if node.last_snapshot_id \
        else None
    sku = gc.sku(node.sku)
    return (snap.gpu_count if snap and snap.gpu_count else 0) or (sku.gpu_count if sku else 0)


def _free_slots(gc: Gpuctl, session: Session, node: Node, size: int) -> int | None:
    """The first GPU index of a free, aligned slice of ``size`` GPUs on ``node``."""
    total = _node_gpus(gc, session, node)
    taken: set[int] = set()
    for a in session.exec(select(PoolAllocation).where(PoolAllocation.node_id == node.id)):
        taken.update(range(a.first_gpu, a.first_gpu + a.gpus))
    for first in range(0, total - size + 1, size):
        if not taken & set(range(first, first + size)):
            return first
    return None


def assign(gc: Gpuctl, pool_name: str, nodes: list[str], gpus: int | None) -> list[str]:
    """Give the pool slices of ``gpus`` GPUs (default: whole nodes) on the named nodes,
    or, with no nodes named, on certified nodes of its SKU until the pool is full.
    Returns what was assigned, as ``node[first-last]``.

    Raises:
        InputError: a bad slice size, a node of another SKU or not certified, no room.
    """
    with gc.session() as session:
        pool = _pool(session, pool_name)
        sku = gc.sku(pool.sku)
        size = gpus or (sku.gpu_count if sku else 8)
        if size not in SLICES:
            raise InputError(f"--gpus must be one of {', '.join(map(str, SLICES))}")
        have = session.exec(select(func.coalesce(func.sum(PoolAllocation.gpus), 0)).where(
            PoolAllocation.pool_id == pool.id)).one()
        if nodes:
            candidates = [get_node(session, n) for n in dict.fromkeys(nodes)]
            for node in candidates:
                if node.sku != pool.sku:
                    raise InputError(f"{node.name} is {node.sku or 'of unknown SKU'}; pool "
                                     f"{pool.name} is {pool.sku}")
                if node.state not in USABLE:
                    raise InputError(f"{node.name} is {node.state}; only certified or "
                                     "in-service nodes join pools")
        else:
            candidates = list(session.exec(select(Node).where(
                Node.sku == pool.sku, col(Node.state).in_(USABLE)).order_by(Node.name)))
        done = []
        for node in candidates:
            if have + size > pool.gpus:
                if nodes:
                    raise InputError(f"pool {pool.name} has {pool.gpus - have} of {pool.gpus} "
                                     f"GPUs left; a {size}-GPU slice does not fit")
                break
            first = _free_slots(gc, session, node, size)
            if first is None:
                if nodes:
                    raise InputError(f"{node.name} has no free {size}-GPU slice")
                continue
            assert pool.id is not None and node.id is not None
            session.add(PoolAllocation(pool_id=pool.id, node_id=node.id, gpus=size,
                                       first_gpu=first))
            session.flush()
            have += size
            done.append(f"{node.name}[{first}-{first + size - 1}]")
        if not done:
            raise InputError(f"no certified {pool.sku} node has a free {size}-GPU slice for "
                             f"pool {pool.name}" if not nodes else "nothing assigned")
        note_change(session, PoolsChanged(pool.name))
    return done


def release(gc: Gpuctl, pool_name: str, nodes: list[str]) -> int:
    """Take the named nodes' slices (all, with no nodes named) back from the pool.
    Returns how many GPUs were released."""
    with gc.session() as session:
        pool = _pool(session, pool_name)
        query = select(PoolAllocation).where(PoolAllocation.pool_id == pool.id)
        if nodes:
            ids = [get_node(session, n).id for n in nodes]
            query = query.where(col(PoolAllocation.node_id).in_(ids))
        rows = list(session.exec(query))
        freed = sum(a.gpus for a in rows)
        session.exec(delete(PoolAllocation).where(
            col(PoolAllocation.id).in_([a.id for a in rows])))
        if rows:
            note_change(session, PoolsChanged(pool.name))
    return freed


def delete_pool(gc: Gpuctl, name: str) -> None:
    with gc.session() as session:
        session.delete(_pool(session, name))  # its allocations go with it (cascade)
        note_change(session, PoolsChanged(name))


def get_pool(gc: Gpuctl, name: str) -> PoolView:
    """Raises: NotFoundError."""
    for view in list_pools(gc):
        if view.name == name:
            return view
    raise NotFoundError(f"no pool {name[:64]!r}")


def list_pools(gc: Gpuctl) -> list[PoolView]:
    """Every pool with what it holds and on which nodes."""
    with gc.session() as session:
        return pool_views(session)


def pool_views(session: Session, detail: bool = True) -> list[PoolView]:
    """Every pool with what it holds; GPUs on nodes that left service count as not usable."""
    pools = list(session.exec(select(Pool).order_by(Pool.name)))
    rows = session.exec(select(PoolAllocation, Node.name, Node.state).join(
        Node, col(Node.id) == PoolAllocation.node_id).order_by(Node.name)).all()
    out = []
    for p in pools:
        mine = [(a, name, state) for a, name, state in rows if a.pool_id == p.id]
        out.append(PoolView(
            p.name, p.sku, p.gpus, sum(a.gpus for a, _, _ in mine),
            sum(a.gpus for a, _, state in mine if state in USABLE),
            [{"node": name, "state": state, "gpus": a.gpus,
              "gpu_indices": f"{a.first_gpu}-{a.first_gpu + a.gpus - 1}"}
             for a, name, state in mine] if detail else [],
            [a for a in p.accounts.split(",") if a], [g for g in p.groups.split(",") if g]))
    return out
