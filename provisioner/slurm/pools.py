"""Team pools that Slurm enforces: a QOS with ``GrpTRES=gres/gpu=N`` on a partition of
the pool's nodes.

Why not a reservation: Slurm 22.05 reserves cores, nodes, licenses or burst buffers
(reservations.html), not GPUs ("Make it so reservations can reserve GRES" arrived in
23.11, CHANGELOG/slurm-23.11.md), so a 4-GPU slice of an 8-GPU node cannot be one there. A QOS's
``GrpTRES=gres/gpu=N`` caps the GPUs all jobs under it hold together
(resource_limits.html; it needs accounting through slurmdbd with
``AccountingStorageEnforce=limits,qos`` and ``AccountingStorageTRES=gres/gpu``), and
``Flags=DenyOnLimit`` makes Slurm refuse a job that could never fit instead of keeping
it pending (sacctmgr(1)). As the partition's QOS (``PartitionName=pool-<name> ...
QOS=gpuctl-<name>``, slurm.conf(5)) it binds every job in the partition: the team
submits with ``-p pool-<name>`` and holds at most N GPUs, N being what the pool has
assigned now.
"""

from __future__ import annotations

import re
from pathlib import Path

from provisioner.fleet.pools import list_pools
from provisioner.handle import Gpuctl
from provisioner.slurm.apply import block_node_lines, load_settings, set_pool_partitions
from provisioner.slurm.client import SlurmError, reconfigure, run_slurm

QOS_PREFIX = "gpuctl-"
PARTITION_PREFIX = "pool-"


def qos_name(pool: str) -> str:
    return QOS_PREFIX + pool


def sync_pools(gc: Gpuctl) -> list[str] | None:
    """Make Slurm's QOS and pool partitions match gpuctl's pools; returns what changed
    (None when Slurm sync is off).

    Raises:
        SlurmError: sacctmgr or scontrol failed (gpuctl's pools stay as they are).
    """
    settings = load_settings(gc)
    if settings is None:
        return None
    views = list_pools(gc)
    done = []
    # name|GrpTRES|Flags of gpuctl's QOS, e.g. "gpuctl-team|gres/gpu=4|DenyOnLimit".
    existing = {}
    for row in run_slurm(["sacctmgr", "-n", "-P", "show", "qos",
                          "format=name,grptres,flags"]).splitlines():
        name, _, rest = row.partition("|")
        if name.startswith(QOS_PREFIX):
            existing[name] = rest
    for v in views:
        limit = [f"GrpTRES=gres/gpu={v.assigned}", "Flags=DenyOnLimit"]
        if existing.get(qos_name(v.name)) == f"gres/gpu={v.assigned}|DenyOnLimit":
            continue  # already so: a reconcile changes nothing
        if qos_name(v.name) in existing:
            run_slurm(["sacctmgr", "-i", "modify", "qos", "where", f"name={qos_name(v.name)}",
                       "set", *limit])
        else:
            run_slurm(["sacctmgr", "-i", "add", "qos", qos_name(v.name), *limit])
        done.append(f"QOS {qos_name(v.name)} GrpTRES=gres/gpu={v.assigned}")
    conf_dir = Path(settings.conf_dir)
    known = set(block_node_lines(_block(conf_dir)))
    lines = []
    for v in views:
        nodes = sorted({a["node"] for a in v.allocations} & known)
        if nodes:
            lines.append(f"PartitionName={PARTITION_PREFIX}{v.name} Nodes={','.join(nodes)} "
                         f"QOS={qos_name(v.name)} Default=NO MaxTime=INFINITE State=UP")
    if set_pool_partitions(conf_dir, lines, PARTITION_PREFIX):
        reconfigure()
        done.append("partitions " + (", ".join(re.findall(r"PartitionName=(\S+)",
                                                           "\n".join(lines))) or "removed"))
    for stale in sorted(set(existing) - {qos_name(v.name) for v in views}):
        run_slurm(["sacctmgr", "-i", "delete", "qos", stale])
        done.append(f"QOS {stale} deleted")
    return done


def _block(conf_dir: Path) -> list[str]:
    from provisioner.slurm.apply import split_block  # noqa: PLC0415

    try:
        return split_block((conf_dir / "slurm.conf").read_text())[1]
    except OSError as exc:
        raise SlurmError(f"cannot read {conf_dir}/slurm.conf: {exc}") from None
