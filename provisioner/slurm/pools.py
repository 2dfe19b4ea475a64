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
assigned now. On 22.05 that is a cap, not a guarantee: the pool's nodes stay in the
other partitions that list them, where other jobs may hold their GPUs.

Before any limit is made, the configuration must be one that enforces it: accounting
through slurmdbd, ``AccountingStorageEnforce`` with ``limits`` (``safe`` and ``all``
imply it; slurm.conf(5); acct_policy.c checks ``ACCOUNTING_ENFORCE_LIMITS`` before
every limit) and ``gres/gpu`` in ``AccountingStorageTRES`` (resource_limits.html:
a GRES that is not tracked is not accounted for). gpuctl never changes these: they
bind every job of the cluster and need a restart of slurmctld.

Who may use a pool: ``AllowAccounts``/``AllowGroups`` on its partition (slurm.conf(5));
``limits`` implies ``associations``, so a user cannot name an account they are not in.

From 23.11 a pool for accounts or groups is also a guarantee: a reservation
``gpuctl-pool-<name>`` of its nodes with ``TRES=cpu=C,gres/gpu=N`` (scontrol(1) TRES:
"Current supported TRES types with reservations are: CPU, GRES, Node, License and BB";
the 22.05 page lists no GRES) for the pool's accounts and groups (a user must be in
both where both are set: reservation.c), from now. ``Duration=UNLIMITED`` is a year
in Slurm (reservation.c sets the end to start + YEAR_SECONDS); monitor makes it again
when it is gone. Slurm sets those N GPUs aside: only jobs that name the reservation
(``--reservation=``) run on them, so another team's job cannot take them even
through a general partition. C is the pool's share of the nodes' cores: a count of
cores makes the reservation core-based, placed beside running jobs (``create_resv``
refuses a node-list reservation without one while jobs overlap its nodes); Slurm may
hold more cores than asked (those bound to the GPUs' socket). N counts for the
reservation as a whole: Slurm places the N GPUs on the pool's nodes as it sees fit.

Slurm cannot change the nodes of a core- or GRES-based reservation ("Updating
core/node TRES not supported for core-based reservations", reservation.c
``update_resv``), so a changed pool's reservation is deleted and made again; if the new
one cannot be made (a node drained or busy) the old one is made again, and the error
is reported. A reservation that still runs jobs cannot be deleted
(``ESLURM_RESERVATION_BUSY``) and stays until they end. Monitor retries every pass. An
open pool (no accounts, no groups) stays a cap: there is no team to hold GPUs for.
"""

from __future__ import annotations

import re
from pathlib import Path

from provisioner.errors import InputError
from provisioner.fleet.pools import PoolView, list_pools
from provisioner.handle import Gpuctl
from provisioner.slurm.activate import apply_pool_partitions
from provisioner.slurm.apply import block_node_lines, load_settings
from provisioner.slurm.client import (
    SlurmError,
    fields_of,
    node_details,
    run_slurm,
    slurm_version,
)
from provisioner.slurm.conf import NAME, expand_hostlist, read_effective, setting_values

QOS_PREFIX = "gpuctl-"
PARTITION_PREFIX = "pool-"
RESERVATION_PREFIX = "gpuctl-pool-"
# "Make it so reservations can reserve GRES" (commit ce1f71e73c, first in slurm-23-11-0-1).
GRES_RESERVATIONS = (23, 11, 0)


def qos_name(pool: str) -> str:
    return QOS_PREFIX + pool


def enforcement_problem(slurm_conf: Path) -> str:
    """"" when the configuration enforces a pool's QOS limit, else what is missing
    and the fix (see the module docstring)."""
    lines = read_effective(slurm_conf)
    storage = (setting_values(lines, "AccountingStorageType") or [""])[0].lower()
    enforce = {v.strip().lower() for v in setting_values(lines, "AccountingStorageEnforce")}
    tres = {v.strip().lower() for v in setting_values(lines, "AccountingStorageTRES")}
    missing = []
    if storage != "accounting_storage/slurmdbd":
        missing.append("AccountingStorageType=accounting_storage/slurmdbd (now "
                       f"{storage or 'unset'})")
    if not enforce & {"limits", "safe", "all"}:
        missing.append("AccountingStorageEnforce with limits (now "
                       f"{','.join(sorted(enforce)) or 'unset'})")
    if "gres/gpu" not in tres:
        missing.append("gres/gpu in AccountingStorageTRES")
    if not missing:
        return ""
    return (f"{slurm_conf} does not enforce a pool's GPU limit: it needs "
            + "; ".join(missing) + " (slurm.conf(5), resource_limits.html). gpuctl does "
            "not change accounting settings, which bind every job: set them, restart "
            "slurmctld, then run `gpuctl pool sync`")


def check_enforcement(gc: Gpuctl) -> None:
    """Refuse a pool where Slurm would not enforce it (nothing happens with Slurm sync off).

    Raises:
        InputError: what is missing, and the fix.
    """
    settings = load_settings(gc)
    if settings is None:
        return
    try:
        problem = enforcement_problem(_conf(settings.conf_dir, settings.slurm_conf))
    except InputError as exc:
        raise InputError(f"cannot check Slurm's accounting settings: {exc}") from None
    if problem:
        raise InputError(problem)


def _conf(conf_dir: str, slurm_conf: str | None) -> Path:
    return Path(slurm_conf) if slurm_conf else Path(conf_dir) / "slurm.conf"


def partition_line(view: PoolView, nodes: list[str]) -> str:
    """The pool's partition (slurm.conf(5) PARTITION CONFIGURATION).

    Raises:
        SlurmError: a stored account or group is not a plain name (the database was
            edited by hand): nothing of it reaches slurm.conf.
    """
    for name in [*view.accounts, *view.groups]:
        if not NAME.fullmatch(name.replace(".", "_")):
            raise SlurmError(f"pool {view.name}: {name[:40]!r} is not an account or group "
                             "name; fix the pool (gpuctl pool delete/create)")
    access = (f" AllowAccounts={','.join(view.accounts)}" if view.accounts else "") + \
        (f" AllowGroups={','.join(view.groups)}" if view.groups else "")
    return (f"PartitionName={PARTITION_PREFIX}{view.name} Nodes={','.join(nodes)} "
            f"QOS={qos_name(view.name)}{access} Default=NO MaxTime=INFINITE State=UP")


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
    try:
        problem = enforcement_problem(_conf(settings.conf_dir, settings.slurm_conf))
    except InputError as exc:
        raise SlurmError(str(exc)) from None
    if problem:
        raise SlurmError(problem)
    accounts = {a for v in views for a in v.accounts}
    if accounts:
        have = set(run_slurm(["sacctmgr", "-n", "-P", "show", "account",
                              "format=account"]).split())
        unknown = sorted(accounts - have)
        if unknown:
            owner = next(v.name for v in views if unknown[0] in v.accounts)
            raise SlurmError(f"pool {owner}: account {unknown[0]} is not in Slurm's "
                             f"accounting (sacctmgr add account {unknown[0]}); nothing "
                             "was changed in Slurm")
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
    # Each pool's nodes that are in gpuctl's block (Slurm has them).
    in_slurm = {v.name: sorted({a["node"] for a in v.allocations} & known) for v in views}
    lines = [partition_line(v, in_slurm[v.name]) for v in views if in_slurm[v.name]]
    if apply_pool_partitions(conf_dir, lines, PARTITION_PREFIX, settings.restart_command):
        done.append("partitions " + (", ".join(re.findall(r"PartitionName=(\S+)",
                                                           "\n".join(lines))) or "removed"))
    for stale in sorted(set(existing) - {qos_name(v.name) for v in views}):
        run_slurm(["sacctmgr", "-i", "delete", "qos", stale])
        done.append(f"QOS {stale} deleted")
    if slurm_version() >= GRES_RESERVATIONS:
        shape = _node_shape(node_details(sorted({n for ns in in_slurm.values() for n in ns})))
        wanted = {reservation_name(v.name): spec for v in views
                  if (spec := reservation_spec(v, in_slurm[v.name], shape))}
        done += _sync_reservations(wanted)
    return done


def _node_shape(details: dict[str, dict[str, str]]) -> dict[str, tuple[int, int]]:
    """node -> (cores, GPUs) as slurmctld has them (scontrol show node: Sockets,
    CoresPerSocket, Gres=gpu[:type]:N)."""
    out = {}
    for name, fields in details.items():
        sockets, per = fields.get("Sockets", ""), fields.get("CoresPerSocket", "")
        gpus = re.search(r"(?:^|,)gpu(?::[^:,]+)?:(\d+)", fields.get("Gres", ""))
        if sockets.isdigit() and per.isdigit() and gpus:
            out[name] = (int(sockets) * int(per), int(gpus.group(1)))
    return out


def reservation_name(pool: str) -> str:
    return RESERVATION_PREFIX + pool


def reservation_spec(view: PoolView, nodes: list[str],
                     shape: dict[str, tuple[int, int]]) -> dict[str, str] | None:
    """The reservation that holds the pool's GPUs on ``nodes`` for its team (23.11+),
    or None for an open pool or one with no GPUs there.

    With the GPUs it holds the cores that go with them (each node's cores in the
    pool's share of its GPUs, at least one): a training job needs CPUs next to its
    GPUs, and a count of cores makes it a core-based reservation, which Slurm places
    on free cores beside running jobs (reservation.c ``create_resv``: a node-list
    reservation without a core count is refused while any job overlaps its nodes)."""
    held = {n: sum(a["gpus"] for a in view.allocations if a["node"] == n) for n in nodes}
    gpus = sum(held.values())
    if not nodes or not gpus or not (view.accounts or view.groups):
        return None
    cores = sum(max(1, shape[n][0] * held[n] // max(1, shape[n][1])) if n in shape else 1
                for n in nodes if held[n])
    spec = {"Nodes": ",".join(n for n in nodes if held[n]),
            "TRES": f"cpu={cores},gres/gpu={gpus}"}
    if view.accounts:
        spec["Accounts"] = ",".join(view.accounts)
    if view.groups:
        spec["Groups"] = ",".join(view.groups)
    return spec


def _reservations() -> dict[str, dict[str, str]]:
    """gpuctl's pool reservations in Slurm, ``scontrol show reservation -o``'s fields."""
    found = {}
    for line in run_slurm(["scontrol", "show", "reservation", "-o"]).splitlines():
        fields = fields_of(line)
        if fields.get("ReservationName", "").startswith(RESERVATION_PREFIX):
            found[fields["ReservationName"]] = fields
    return found


def _tres(text: str) -> dict[str, str]:
    return dict(p.split("=", 1) for p in text.split(",") if "=" in p)


def _same(have: dict[str, str], spec: dict[str, str]) -> bool:
    """Slurm's reservation is the one ``spec`` describes: its nodes (a hostlist), its
    GPUs, its accounts and groups. Not its cores: Slurm may hold more than asked (the
    GPUs' socket), and shows threads (``cpu=``) where it counted cores."""
    try:
        nodes = sorted(expand_hostlist(have.get("Nodes", "")))
    except InputError:
        return False
    gpus = _tres(have.get("TRES", "")).get("gres/gpu")

    def names(fields: dict[str, str], key: str) -> list[str]:
        value = fields.get(key, "")
        return sorted(value.split(",")) if value and value != "(null)" else []

    return (nodes == spec["Nodes"].split(",") and gpus == _tres(spec["TRES"])["gres/gpu"]
            and all(names(have, k) == names(spec, k) for k in ("Accounts", "Groups")))


def _create(name: str, spec: dict[str, str]) -> None:
    run_slurm(["scontrol", "create", "reservation", f"ReservationName={name}",
               *(f"{k}={v}" for k, v in spec.items()), "StartTime=now",
               "Duration=UNLIMITED"])


def _as_was(have: dict[str, str]) -> dict[str, str]:
    """A spec that makes ``have`` (a reservation as scontrol shows it) again."""
    spec = {"Nodes": have.get("Nodes", ""),
            "TRES": f"cpu={have.get('CoreCnt', '1')},gres/gpu="
                    f"{_tres(have.get('TRES', '')).get('gres/gpu', '0')}"}
    for key in ("Accounts", "Groups"):
        if have.get(key) and have[key] != "(null)":
            spec[key] = have[key]
    return spec


def _sync_reservations(wanted: dict[str, dict[str, str]]) -> list[str]:
    """Make gpuctl's pool reservations ``wanted``; each is done on its own (one that
    fails does not stop the others), and a changed one whose new form Slurm refuses is
    made again as it was.

    Raises:
        SlurmError: what could not be done, after all the rest was.
    """
    done: list[str] = []
    failed: list[str] = []
    have = _reservations()
    for name in sorted(set(have) | set(wanted)):
        spec = wanted.get(name)
        if name in have and spec is not None and _same(have[name], spec):
            continue
        if name in have:
            try:
                run_slurm(["scontrol", "delete", f"ReservationName={name}"])
            except SlurmError as exc:
                failed.append(f"reservation {name} stays as it is until its jobs end "
                              f"({exc})")
                continue
            done.append(f"reservation {name} deleted")
        if spec is None:
            continue
        try:
            _create(name, spec)
            done.append(f"reservation {name} {spec['TRES']} on {spec['Nodes']}")
        except SlurmError as exc:
            why = f"reservation {name}: Slurm refused {spec['TRES']} on {spec['Nodes']} ({exc})"
            if name in have:
                try:
                    _create(name, _as_was(have[name]))
                    why += "; the old one was made again"
                    done.pop()
                except SlurmError as again:
                    why += f"; the old one could not be made again either ({again})"
            failed.append(why)
    if failed:
        raise SlurmError("; ".join(failed) + "; monitor retries every pass")
    return done


def _block(conf_dir: Path) -> list[str]:
    from provisioner.slurm.apply import split_block  # noqa: PLC0415

    try:
        return split_block((conf_dir / "slurm.conf").read_text())[1]
    except OSError as exc:
        raise SlurmError(f"cannot read {conf_dir}/slurm.conf: {exc}") from None


def how_to_use(view: PoolView) -> dict[str, object]:
    """What a team member runs to get GPUs of the pool now: for each slice size the
    pool's nodes have (1, 2, 4, 8), an ``salloc`` line with the partition, the
    account (the pool's first, when it names accounts) and the time limit that applies
    (the partition's DefaultTime, else its MaxTime; none when both are unlimited), and
    how many GPUs of the pool running jobs hold (squeue(1) ``tres-alloc``).

    Raises:
        SlurmError: Slurm does not have the pool's partition (not synced yet).
    """
    partition = PARTITION_PREFIX + view.name
    fields = fields_of(run_slurm(["scontrol", "show", "partition", "-o", partition]))
    held = 0
    for row in run_slurm(["squeue", "-h", "-p", partition, "-t", "RUNNING", "-O",
                          "tres-alloc:400"]).splitlines():
        gpus = _tres(row.strip()).get("gres/gpu", "")
        held += int(gpus) if gpus.isdigit() else 0
    limit = next((t for t in (fields.get("DefaultTime", ""), fields.get("MaxTime", ""))
                  if t and t.upper() not in ("NONE", "UNLIMITED", "INFINITE")), "")
    account = f" --account={view.accounts[0]}" if view.accounts else ""
    reservation = reservation_name(view.name)
    held_for_team = reservation in _reservations()
    resv = f" --reservation={reservation}" if held_for_team else ""
    time_opt = f" --time={limit}" if limit else ""
    largest = max((a["gpus"] for a in view.allocations), default=0)
    free = max(0, view.usable - held)
    lines = {n: f"salloc -p {partition}{account}{resv} --nodes=1 --gres=gpu:{n}{time_opt}"
             for n in (1, 2, 4, 8) if n <= largest}
    return {"partition": partition, "qos": qos_name(view.name), "accounts": view.accounts,
            "groups": view.groups, "time_limit": limit or "none (partition MaxTime="
            f"{fields.get('MaxTime', '?')})", "gpus_held": held, "gpus_free": free,
            "reservation": reservation if held_for_team else None,
            "guarantee": "reserved for the team (Slurm reservation)" if held_for_team
            else "a cap: other partitions may hold the pool's GPUs",
            "salloc": lines,
            "starts_now": [n for n in lines if n <= free]}
