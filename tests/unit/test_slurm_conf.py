"""The admin's whole Slurm configuration: parsed as slurmctld reads it, and every change
gpuctl plans checked against it (refused with the conflicting line, nothing written)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from provisioner.errors import InputError
from provisioner.fleet.pools import PoolView
from provisioner.slurm import pools
from provisioner.slurm.apply import (
    JOIN_STATE,
    plan_config,
    restore_plan,
    set_pool_partitions,
    split_block,
    verified_plan,
    write_config,
    write_plan,
)
from provisioner.slurm.client import SlurmError, drain_reason
from provisioner.slurm.conf import expand_hostlist, layout, parse_text, read_effective
from provisioner.slurm.pools import (
    _node_shape,
    _same,
    enforcement_problem,
    partition_line,
    reservation_spec,
)

ADMIN = """ClusterName=Prod
SlurmctldHost=ctl1
Include site/%c-nodes.conf
PartitionName=cpu Nodes=cpu[01-04] Default=YES
"""
NODES = """GresTypes=mps,shard
NodeName=cpu[01-04] CPUs=64
"""


def _line(name: str, addr: str = "127.0.0.21") -> str:
    return f"NodeName={name} NodeAddr={addr} Gres=gpu:h100:8 State=UNKNOWN"


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    (tmp_path / "site").mkdir()
    (tmp_path / "site/prod-nodes.conf").write_text(NODES)
    (tmp_path / "slurm.conf").write_text(ADMIN)
    return tmp_path


def test_lines_are_read_as_slurm_reads_them() -> None:
    text = ("A=1 # comment\nB=2\\#3\nNodeName=x \\\n  CPUs=4\n"
            "# note\x0cDebugFlags=Gres\nReason=\"a b\"\r\n")
    assert parse_text(text, "f") == [(1, "A=1 "), (2, "B=2\\#3"), (3, "NodeName=x   CPUs=4"),
                                      (6, 'Reason="a b"\r')]
    # A form feed does not end a line: the DebugFlags after it stays in the comment.
    assert not any("DebugFlags" in line for _, line in parse_text(text, "f"))


def test_includes_are_followed(etc: Path) -> None:
    lines = read_effective(etc / "slurm.conf")
    found = layout(lines)
    assert sorted(found.nodes) == ["cpu01", "cpu02", "cpu03", "cpu04"]
    assert found.nodes["cpu01"].file.endswith("site/prod-nodes.conf")
    (etc / "slurm.conf").write_text(ADMIN + "include /nonexistent.conf\n")
    with pytest.raises(InputError, match="/nonexistent.conf not found"):
        read_effective(etc / "slurm.conf")
    (etc / "slurm.conf").write_text(ADMIN + "Include slurm.conf\n")
    with pytest.raises(InputError, match="Include loop"):
        read_effective(etc / "slurm.conf")


def test_hostlists() -> None:
    assert expand_hostlist("gpu[01-03,07],login1") == ["gpu01", "gpu02", "gpu03", "gpu07",
                                                      "login1"]
    assert expand_hostlist("r[1-2]n[8-9]") == ["r1n8", "r1n9", "r2n8", "r2n9"]
    for bad in ("gpu[a-b]", "gpu[1-9999999]"):
        with pytest.raises(InputError):
            expand_hostlist(bad)


def test_gres_types_are_merged_never_dropped(etc: Path) -> None:
    write_config(etc, [_line("gpu01")], [], keep=set())
    _, block, _ = split_block((etc / "slurm.conf").read_text())
    assert block[0] == "GresTypes=mps,shard,gpu"
    assert block[1] == _line("gpu01").replace("State=UNKNOWN", JOIN_STATE)


def _unchanged(etc: Path) -> None:
    assert (etc / "slurm.conf").read_text() == ADMIN
    assert not (etc / "gres.conf").exists()


@pytest.mark.parametrize(("conf", "partition", "match"), [
    # The admin has a partition of that name already.
    ("PartitionName=h100 Nodes=cpu01\n", "h100",
     r"partition h100 is defined twice: .*slurm.conf:5: PartitionName=h100 Nodes=cpu01"),
    # The admin's node claims the host gpuctl's node would use.
    ("NodeName=old01 NodeHostName=gpu01\n", None,
     r"two nodes on host gpu01: .*slurm.conf:5: NodeName=old01"),
    # The admin defines the same node.
    ("NodeName=gpu01 CPUs=8\n", None, r"node gpu01 is defined twice"),
])
def test_conflicts_with_the_admin_are_refused(etc: Path, conf: str, partition: str | None,
                                              match: str) -> None:
    (etc / "slurm.conf").write_text(ADMIN + conf)
    lines = [_line("gpu01")]
    if partition:
        lines.append(f"PartitionName={partition} Nodes=gpu01 Default=NO")
    with pytest.raises(InputError, match="refused, slurmctld would not start with it: "
                       + match):
        plan_config(etc, lines, [], keep=set())
    assert (etc / "slurm.conf").read_text() == ADMIN + conf


def test_a_retired_node_leaves_the_pool_partition(etc: Path) -> None:
    write_config(etc, [_line("gpu01"), _line("gpu03", "127.0.0.23")], [], keep=set())
    assert set_pool_partitions(etc, ["PartitionName=pool-team-a Nodes=gpu03 QOS=gpuctl-a"],
                               "pool-")
    # gpu03 is retired: its NodeName goes, and so does it from the pool's partition
    # (slurmctld: "fatal: Invalid node names in partition pool-team-a").
    plan = plan_config(etc, [_line("gpu01")], [], keep={"gpu01"})
    assert plan.removed == ["gpu03"] and plan.node_list_changed
    _, block, _ = split_block(plan.text("slurm.conf") or "")
    assert "PartitionName=pool-team-a QOS=gpuctl-a" in block
    assert not any("gpu03" in line for line in block)


def test_an_admins_partition_keeps_gpuctls_node(etc: Path) -> None:
    write_config(etc, [_line("gpu01"), _line("gpu03", "127.0.0.23")], [], keep=set())
    with open(etc / "slurm.conf", "a") as fh:
        fh.write("PartitionName=debug Nodes=gpu03\n")
    before = (etc / "slurm.conf").read_text()
    with pytest.raises(InputError, match="partition debug names undefined node gpu03"):
        plan_config(etc, [_line("gpu01")], [], keep={"gpu01"})
    assert (etc / "slurm.conf").read_text() == before


def test_gres_types_after_the_block_must_keep_gpu(etc: Path) -> None:
    write_config(etc, [_line("gpu01")], [], keep=set())
    with open(etc / "slurm.conf", "a") as fh:
        fh.write("GresTypes=mps\n")
    with pytest.raises(InputError, match=r"GresTypes=mps comes after gpuctl's block"):
        plan_config(etc, [_line("gpu01"), _line("gpu02", "127.0.0.22")], [], keep=set())


def test_names_slurm_does_not_take_are_refused(etc: Path) -> None:
    with pytest.raises(InputError, match="not a name Slurm takes"):
        plan_config(etc, [_line("gpu01"), "PartitionName=h100;x Nodes=gpu01"], [], set())
    _unchanged(etc)


def test_a_symlinked_config_stays_shared_with_owner_and_mode(etc: Path, tmp_path: Path) -> None:
    shared = tmp_path / "nfs" / "slurm.conf"
    shared.parent.mkdir()
    os.replace(etc / "slurm.conf", shared)
    (etc / "slurm.conf").symlink_to(shared)
    shared.chmod(0o640)
    if os.geteuid() == 0:
        os.chown(shared, 65534, 65534)
    plan = plan_config(etc, [_line("gpu01")], ["NodeName=gpu01 Name=gpu File=/dev/nvidia0"],
                       keep=set())
    write_plan(plan)
    assert (etc / "slurm.conf").is_symlink() and "NodeName=gpu01" in shared.read_text()
    info = shared.stat()
    assert oct(info.st_mode & 0o777) == "0o640"
    if os.geteuid() == 0:
        assert (info.st_uid, info.st_gid) == (65534, 65534)
    assert (shared.parent / "slurm.conf.gpuctl-bak").read_text() == ADMIN
    # The rollback puts the admin's bytes back, through the link again.
    restore_plan(plan)
    assert (etc / "slurm.conf").is_symlink() and shared.read_text() == ADMIN
    assert not (etc / "gres.conf").exists()


def test_reasons_carry_no_control_characters() -> None:
    reason = drain_reason("xid: \x1b[31mXID 79\x1b[0m fell off\r\nthe bus\x0c\"q\"\x07")
    assert reason == "gpuctl: xid: XID 79 fell off the bus q"


def test_a_node_that_passed_keeps_its_state_across_restarts(etc: Path) -> None:
    write_config(etc, [_line("gpu01"), _line("gpu02", "127.0.0.22")], [], keep=set())
    plan = verified_plan(etc, ["gpu02"])
    write_plan(plan)
    _, block, _ = split_block((etc / "slurm.conf").read_text())
    assert block[1] == _line("gpu01").replace("State=UNKNOWN", JOIN_STATE)
    assert block[2] == _line("gpu02", "127.0.0.22")
    # A later hand-off keeps each line's state words as they are.
    assert write_config(etc, [_line("gpu01"), _line("gpu02", "127.0.0.22")], [],
                        keep=set()) == ([], False)
    assert not verified_plan(etc, ["gpu02"]).files


def test_pools_are_refused_where_slurm_would_not_enforce_them(etc: Path) -> None:
    """A pool's QOS limit binds only with accounting through slurmdbd, limits enforced
    (safe and all imply it) and gres/gpu tracked; each missing piece is named, read
    from the whole configuration (Includes too), and the last value of a key wins."""
    conf = etc / "slurm.conf"
    problem = enforcement_problem(conf)
    for missing in ("AccountingStorageType=accounting_storage/slurmdbd (now unset)",
                    "AccountingStorageEnforce with limits (now unset)",
                    "gres/gpu in AccountingStorageTRES"):
        assert missing in problem, problem
    assert "gpuctl does not change accounting settings" in problem
    (etc / "site/prod-nodes.conf").write_text(
        NODES + "AccountingStorageType=accounting_storage/slurmdbd\n"
        "AccountingStorageEnforce=limits,qos\nAccountingStorageTRES=gres/gpu:h100\n")
    assert enforcement_problem(conf).endswith(
        "needs gres/gpu in AccountingStorageTRES (slurm.conf(5), resource_limits.html). "
        "gpuctl does not change accounting settings, which bind every job: set them, "
        "restart slurmctld, then run `gpuctl pool sync`")
    conf.write_text(ADMIN + "AccountingStorageTRES=gres/gpu,gres/gpu:h100\n"
                    "accountingstorageenforce=associations\n")
    assert "AccountingStorageEnforce with limits (now associations)" in \
        enforcement_problem(conf)
    for enforce in ("safe", "all", "associations,limits"):
        conf.write_text(ADMIN + "AccountingStorageTRES=gres/gpu\n"
                        f"AccountingStorageEnforce={enforce}\n")
        assert enforcement_problem(conf) == "", enforce


def test_a_pool_partition_admits_only_its_accounts_and_groups() -> None:
    view = PoolView("vision", "h100-sxm-8", 8, 4, 4, accounts=["vision", "ops"],
                    groups=["gpu-users"])
    assert partition_line(view, ["gpu-node-01"]) == (
        "PartitionName=pool-vision Nodes=gpu-node-01 QOS=gpuctl-vision "
        "AllowAccounts=vision,ops AllowGroups=gpu-users Default=NO MaxTime=INFINITE "
        "State=UP")
    assert "Allow" not in partition_line(PoolView("open", "h100-sxm-8", 8, 0, 0), ["n1"])


def test_a_team_pool_reserves_its_gpus_and_an_open_pool_does_not() -> None:
    allocations = [{"node": "gpu-node-01", "gpus": 4}, {"node": "gpu-node-02", "gpus": 2},
                   {"node": "gpu-node-09", "gpus": 8}]  # 09: not in Slurm
    team = PoolView("vision", "h100-sxm-8", 14, 14, 14, allocations=allocations,
                    accounts=["vision", "ops"], groups=["gpu-users"])
    # 112 cores and 8 GPUs on 01 (half its GPUs: 56 cores); 02 unknown to the shape.
    shape = _node_shape({"gpu-node-01": {"Sockets": "2", "CoresPerSocket": "56",
                                         "Gres": "gpu:h100:8(S:0-1)"},
                         "gpu-node-03": {"Sockets": "2", "Gres": "gpu:8"}})
    assert shape == {"gpu-node-01": (112, 8)}
    spec = reservation_spec(team, ["gpu-node-01", "gpu-node-02"], shape)
    # Both accounts and groups: Slurm then admits a user in both, as the partition.
    assert spec == {"Nodes": "gpu-node-01,gpu-node-02", "TRES": "cpu=57,gres/gpu=6",
                    "Accounts": "vision,ops", "Groups": "gpu-users"}
    by_group = PoolView("g", "h100-sxm-8", 4, 4, 4, allocations=allocations[:1],
                        groups=["gpu-users"])
    assert reservation_spec(by_group, ["gpu-node-01", "gpu-node-02"], shape) == {
        "Nodes": "gpu-node-01", "TRES": "cpu=56,gres/gpu=4", "Groups": "gpu-users"}
    open_pool = PoolView("open", "h100-sxm-8", 4, 4, 4, allocations=allocations[:1])
    assert reservation_spec(open_pool, ["gpu-node-01"], shape) is None
    assert reservation_spec(team, [], shape) is None
    # What scontrol shows (hostlist, TRES in its order, threads as cpu=, more cores
    # than asked) is the same reservation; any other node, GPU count, account or
    # group is not, nor a hostlist gpuctl cannot read.
    shown = {"Nodes": "gpu-node-[01-02]", "TRES": "gres/gpu=6,cpu=114",
             "Accounts": "ops,vision", "Groups": "gpu-users"}
    assert _same(shown, spec)
    assert not _same({**shown, "Nodes": "gpu-node-01"}, spec)
    assert not _same({**shown, "Nodes": "gpu-node-[01-"}, spec)
    assert not _same({**shown, "TRES": "cpu=57,gres/gpu=4"}, spec)
    assert not _same({**shown, "TRES": "cpu=57"}, spec)
    assert not _same({**shown, "Accounts": "vision"}, spec)
    assert not _same({**shown, "Groups": "(null)"}, spec)


def test_a_reservation_slurm_refuses_leaves_the_old_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """A changed pool's new reservation refused (a node drained): the old one is made
    again, the other pools are still done, and the error names what happened."""
    calls: list[list[str]] = []
    shown = ("ReservationName=gpuctl-pool-a Nodes=gpu-node-01 CoreCnt=8 TRES=cpu=16,"
             "gres/gpu=4 Users=(null) Groups=(null) Accounts=vision Extra=x "
             "ReservationName=gpuctl-pool-z\n"
             "ReservationName=admin-maint Nodes=gpu-node-09 TRES=cpu=2\n")

    def fake(argv: list[str], **_: object) -> str:
        calls.append(argv)
        if argv[:3] == ["scontrol", "show", "reservation"]:
            return shown
        if argv[:3] == ["scontrol", "create", "reservation"] and \
                "Nodes=gpu-node-01,gpu-node-02" in argv:
            raise SlurmError("scontrol create failed: Requested nodes are busy")
        return ""

    monkeypatch.setattr(pools, "run_slurm", fake)
    wanted = {"gpuctl-pool-a": {"Nodes": "gpu-node-01,gpu-node-02", "TRES": "cpu=32,gres/gpu=8",
                                "Accounts": "vision"},
              "gpuctl-pool-b": {"Nodes": "gpu-node-03", "TRES": "cpu=8,gres/gpu=2",
                                "Groups": "ml"}}
    with pytest.raises(SlurmError) as err:
        pools._sync_reservations(wanted)
    assert "reservation gpuctl-pool-a: Slurm refused cpu=32,gres/gpu=8 on " \
        "gpu-node-01,gpu-node-02" in str(err.value)
    assert "the old one was made again" in str(err.value)
    creates = [c for c in calls if c[:2] == ["scontrol", "create"]]
    assert [c[3] for c in creates] == ["ReservationName=gpuctl-pool-a"] * 2 + [
        "ReservationName=gpuctl-pool-b"]
    assert creates[1][4:7] == ["Nodes=gpu-node-01", "TRES=cpu=8,gres/gpu=4",
                               "Accounts=vision"]
    # The admin's reservation is never touched; the Extra= text did not rename gpuctl's.
    assert not any("admin-maint" in " ".join(c) or "gpuctl-pool-z" in " ".join(c)
                   for c in calls)
