"""The Slurm side's parsers and judges, on real output shapes (sinfo 22.05, slurmd -C,
the smoke job's interleaved srun output) and on the config files gpuctl rewrites."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from provisioner.errors import InputError
from provisioner.slurm.apply import (
    BEGIN,
    END,
    JOIN_STATE,
    set_pool_partitions,
    split_block,
    write_config,
)
from provisioner.slurm.client import parse_sinfo
from provisioner.slurm.gates import compare_hardware
from provisioner.slurm.smoke import verdict
from provisioner.slurm.sync import disagreement

# `sinfo -N -h -o '%N|%T|%G|%u|%E'` on the lab's 22.05.8: one line per node and partition.
SINFO = """gpu-node-01|idle|gpu:h100:8|Unknown|none
gpu-node-01|idle|gpu:h100:8|Unknown|none
gpu-node-02|drained|gpu:h100:8|root|fan noise, ticket 4411
gpu-node-03|draining|gpu:h100:8|root|gpuctl: quarantined: xid: XID 79 on 0000:18:00
gpu-node-04|idle*|gpu:h100:8|Unknown|none
gpu-node-05|down*|gpu:h100:8|slurm|Not responding
"""


def test_sinfo_states_reasons_and_who() -> None:
    nodes = parse_sinfo(SINFO)
    assert sorted(nodes) == [f"gpu-node-0{i}" for i in range(1, 6)]
    assert nodes["gpu-node-01"].state == "idle" and not nodes["gpu-node-01"].drained
    assert nodes["gpu-node-02"].drained and not nodes["gpu-node-02"].by_gpuctl
    assert nodes["gpu-node-02"].reason_user == "root"
    assert nodes["gpu-node-03"].drained and nodes["gpu-node-03"].by_gpuctl
    assert nodes["gpu-node-04"].not_responding and nodes["gpu-node-04"].label() == "IDLE*"
    assert nodes["gpu-node-05"].state == "down"


@pytest.mark.parametrize(("state", "line", "why"), [
    ("in-service", 1, ""),
    ("in-service", 2, "DRAINED in Slurm by root: fan noise, ticket 4411"),
    ("quarantined", 3, ""),
    ("quarantined", 1, "quarantined in gpuctl, IDLE in Slurm (takes jobs)"),
    ("in-service", 5, "DOWN* in Slurm by slurm: Not responding"),
    ("in-service", 4, "IDLE* in Slurm"),
    ("in-service", 3, "in-service in gpuctl, DRAINING in Slurm (gpuctl: quarantined: xid: "
     "XID 79 on 0000:18:00)"),
    # Certified is not serving for Slurm: a hand-off's gates come first.
    ("certified", 3, ""),
    ("certified", 1, "certified in gpuctl, IDLE in Slurm (takes jobs)"),
    # Someone else's drain or DOWN is always named, serving or not: gpuctl leaves it.
    ("quarantined", 2, "DRAINED in Slurm by root: fan noise, ticket 4411"),
    ("retired", 2, ""),
])
def test_disagreements_between_gpuctl_and_slurm(state: str, line: int, why: str) -> None:
    assert disagreement(state, parse_sinfo(SINFO)[f"gpu-node-0{line}"]) == why


def test_node_in_service_but_unknown_to_slurm_is_named() -> None:
    assert disagreement("in-service", None) == "not in Slurm"
    assert disagreement("discovered", None) == ""


def test_slurmd_C_against_the_snapshot() -> None:
    out = ("NodeName=gpu-node-01 CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 "
           "ThreadsPerCore=1 RealMemory=24105\nUpTime=0-11:15:08\n")
    assert compare_hardware(out, cpus=2, memory_mib=23381) == []
    assert compare_hardware(out, cpus=224, memory_mib=2_000_000) == [
        "slurmd -C reports CPUs=2, gpuctl's snapshot 224",
        "slurmd -C reports RealMemory=24105 MiB, below the 2000000 MiB configured"]
    assert compare_hardware("", cpus=2, memory_mib=1) == ["slurmd -C printed nothing usable"]


def _rank(rank: int, host: str, checksum: str = "ab", first: float = 4.1,
          last: float = 0.01) -> str:
    return "GPUCTL_SMOKE " + json.dumps({"rank": rank, "host": host, "loss_first": first,
                                         "loss_last": last, "checksum": checksum})


def test_smoke_verdicts() -> None:
    good = "\n".join(_rank(r, f"n{r // 2}") for r in range(4))
    assert verdict(good, 4)[0]
    # srun interleaves the ranks' output: a report after another process's text counts.
    interleaved = "W1129 torch warning " + _rank(0, "n0") + "\n" + _rank(1, "n0")
    assert verdict(interleaved, 2)[:2] == (True, "2 ranks, loss 4.10 -> 0.010, weights "
                                                 "identical")
    assert verdict(good, 6)[1] == "4 of 6 ranks reported"
    odd = good.replace(_rank(3, "n1"), _rank(3, "n1", checksum="cd"))
    assert verdict(odd, 4)[1] == ("weights differ across ranks: 2 checksums; rank 3 on n1 "
                                  "differs from rank 0")
    flat = good.replace(_rank(2, "n1"), _rank(2, "n1", last=4.0))
    assert verdict(flat, 4)[1] == "loss did not decrease on rank 2 (n1): 4.100 -> 4.000"
    assert verdict("GPUCTL_SMOKE {not json\n" + good, 4)[0]


ADMIN = """ClusterName=prod
SlurmctldHost=ctl1
GresTypes=gpu
NodeName=cpu[01-04] CPUs=64
PartitionName=cpu Nodes=cpu[01-04] Default=YES
"""


def _line(name: str) -> str:
    return f"NodeName={name} NodeAddr=127.0.0.21 Gres=gpu:h100:8 State=UNKNOWN"


def _joined(name: str) -> str:
    """A node new to the block joins drained, with gpuctl's reason."""
    return _line(name).replace("State=UNKNOWN", JOIN_STATE)


def test_block_keeps_the_admins_lines_and_a_backup(tmp_path: Path) -> None:
    (tmp_path / "slurm.conf").write_text(ADMIN)
    changed, node_list_changed = write_config(
        tmp_path, ["GresTypes=gpu", _line("gpu01"), _line("gpu02"),
                   "PartitionName=h100 Nodes=gpu01,gpu02 Default=NO"],
        ["NodeName=gpu01 Name=gpu Type=h100 File=/dev/nvidia[0-7]"], keep=set())
    assert node_list_changed and len(changed) == 2
    text = (tmp_path / "slurm.conf").read_text()
    before, block, after = split_block(text)
    assert before == ADMIN and after == ""
    # GresTypes is the admin's already: not repeated inside the block.
    assert block == [_joined("gpu01"), _joined("gpu02"),
                     "PartitionName=h100 Nodes=gpu01,gpu02 Default=NO"]
    assert (tmp_path / "slurm.conf.gpuctl-bak").read_text() == ADMIN
    assert not (tmp_path / "gres.conf.gpuctl-bak").exists()  # there was none
    # The same again changes nothing; a later hand-off of gpu03 keeps gpu01/02 (still
    # known to gpuctl), drops a retired gpu02, and keeps the partition covering them.
    assert write_config(tmp_path, [_line("gpu01"), _line("gpu02"),
                                   "PartitionName=h100 Nodes=gpu01,gpu02 Default=NO"],
                        ["NodeName=gpu01 Name=gpu Type=h100 File=/dev/nvidia[0-7]"],
                        keep={"gpu01", "gpu02"}) == ([], False)
    changed, node_list_changed = write_config(
        tmp_path, [_line("gpu03"), "PartitionName=h100 Nodes=gpu03 Default=NO"],
        ["NodeName=gpu03 Name=gpu Type=h100 File=/dev/nvidia[0-7]"], keep={"gpu01"})
    _, block, _ = split_block((tmp_path / "slurm.conf").read_text())
    assert block == [_joined("gpu01"), _joined("gpu03"),
                     "PartitionName=h100 Nodes=gpu01,gpu03 Default=NO"]
    _, gres, _ = split_block((tmp_path / "gres.conf").read_text())
    assert gres == ["NodeName=gpu01 Name=gpu Type=h100 File=/dev/nvidia[0-7]",
                    "NodeName=gpu03 Name=gpu Type=h100 File=/dev/nvidia[0-7]"]
    # gpu03 handed off again (as after a repair): each node stays where it is, so the
    # files do not change and nothing is activated.
    assert write_config(tmp_path, [_line("gpu03")],
                        ["NodeName=gpu03 Name=gpu Type=h100 File=/dev/nvidia[0-7]"],
                        keep={"gpu01", "gpu03"}) == ([], False)
    # Pool partitions live in the block too, and survive the next hand-off.
    assert set_pool_partitions(tmp_path, ["PartitionName=pool-a Nodes=gpu01 QOS=gpuctl-a"],
                               "pool-")
    write_config(tmp_path, [_line("gpu03")], [], keep={"gpu01"})
    _, block, _ = split_block((tmp_path / "slurm.conf").read_text())
    assert "PartitionName=pool-a Nodes=gpu01 QOS=gpuctl-a" in block
    assert "PartitionName=h100 Nodes=gpu01,gpu03 Default=NO" in block


def test_config_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="slurm.conf not found: --slurm-conf-dir"):
        write_config(tmp_path, [_line("gpu01")], [], keep=set())
    (tmp_path / "slurm.conf").write_text(ADMIN + BEGIN + "\n" + _line("gpu01") + "\n")
    with pytest.raises(InputError, match="no END line"):
        write_config(tmp_path, [_line("gpu01")], [], keep=set())
    (tmp_path / "slurm.conf").write_text(ADMIN)
    with pytest.raises(InputError, match="has no gpuctl block"):
        set_pool_partitions(tmp_path, ["PartitionName=pool-a Nodes=x"], "pool-")
    assert END not in (tmp_path / "slurm.conf").read_text()


def test_monitor_interval() -> None:
    from provisioner.cli.monitor import parse_interval  # noqa: PLC0415

    assert [parse_interval(t) for t in ("30s", "5m", "1h", "90")] == [30, 300, 3600, 90]
    for bad in ("5x", "", "1s", "m"):
        with pytest.raises(InputError):
            parse_interval(bad)


def test_monitor_reads_nvlink_status() -> None:
    from provisioner.catalogue import catalogue  # noqa: PLC0415
    from provisioner.probe.facts import parse_probe_output  # noqa: PLC0415
    from provisioner.scan.monitor import service_findings  # noqa: PLC0415

    lines = ["GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)", "Link 0: 26.562 GB/s",
             "Link 1: 26.562 GB/s", "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-2)",
             "Link 0: <inactive>", "Link 1: 26.562 GB/s", 17, "garbage"]
    facts = parse_probe_output(json.dumps({"probe": "python", "nvlink_lines": lines}).encode())
    assert facts.nvlink == [{"gpu": 0, "links": 2, "inactive": []},
                            {"gpu": 1, "links": 2, "inactive": [0]}]
    sku = catalogue()["h100-sxm-8"]
    found = [(f.kind, f.severity, f.message) for f in service_findings(facts, sku)]
    assert ("nvlink", "critical", "GPU 1: NVLink link 0 inactive") in found
    assert ("nvlink", "critical", f"GPU 0: 2 NVLink links, SKU has "
            f"{sku.fabric['nvlink_links']}") in found


def test_node_details_reads_unknown_names_and_the_first_of_each_field(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """scontrol prints "Node X not found" for each unknown name and exits 1 (the error
    shows only its last line); a node's own text (Extra=) cannot stand in for a field."""
    from provisioner.slurm import client  # noqa: PLC0415

    known = {"n1": "NodeName=n1 Gres=gpu:h100:8 State=IDLE Extra=x Gres=gpu:h100:99"}

    def fake(argv: list[str], **_: object) -> str:
        names = argv[-1].split(",")
        if any(n not in known for n in names):
            raise client.SlurmError(f"scontrol show failed: Node {names[-1]} not found"
                                    if names[-1] not in known else known[names[-1]])
        return "\n".join(known[n] for n in names)

    monkeypatch.setattr(client, "run_slurm", fake)
    assert client.node_details(["new1", "n1"]) == {"n1": {
        "NodeName": "n1", "Gres": "gpu:h100:8", "State": "IDLE", "Extra": "x"}}
    assert client.node_details(["n1", "new1"])["n1"]["Gres"] == "gpu:h100:8"
    assert client.node_details(["new1"]) == {}


def test_jobs_on_a_node_leave_out_pending_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """A drained node is quiet once squeue lists no job that holds it (running,
    completing, ...); a job pending for it holds nothing."""
    from provisioner.slurm import client  # noqa: PLC0415

    out = {"n1": "112|CG\n113|PD\n", "n2": "114|PD\n", "n3": ""}
    monkeypatch.setattr(client, "run_slurm", lambda argv, **_: out[argv[argv.index("-w") + 1]])
    assert client.jobs_on("n1") == ["112"]
    assert client.jobs_on("n2") == client.jobs_on("n3") == []


def test_slurm_commands_do_not_inherit_output_filters(monkeypatch: pytest.MonkeyPatch) -> None:
    """An admin's SQUEUE_USERS (or SINFO_PARTITION, SLURM_CLUSTERS) would hide jobs and
    nodes from gpuctl's checks: Slurm's commands run without them."""
    from provisioner.slurm import client  # noqa: PLC0415

    for key in ("SQUEUE_USERS", "SQUEUE_STATES", "SINFO_PARTITION", "SLURM_CLUSTERS"):
        monkeypatch.setenv(key, "x")
    monkeypatch.setenv("SLURM_CONF", "/etc/slurm/slurm.conf")
    env = client.slurm_env()
    assert not {"SQUEUE_USERS", "SQUEUE_STATES", "SINFO_PARTITION", "SLURM_CLUSTERS"} & set(env)
    assert env["SLURM_CONF"] == "/etc/slurm/slurm.conf"


def test_kill_jobs_cancels_by_job_id_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from provisioner.slurm import client  # noqa: PLC0415
    from provisioner.slurm.client import SlurmError, cancel_jobs  # noqa: PLC0415

    seen: list[list[str]] = []
    monkeypatch.setattr(client, "run_slurm", lambda argv, **kw: seen.append(argv) or "")
    cancel_jobs(["41", "42_3", "43+0"])
    assert seen == [["scancel", "41", "42_3", "43+0"]]
    cancel_jobs([])  # nothing to cancel: no scancel run at all
    assert len(seen) == 1
    for bad in ("--user=root", "41;reboot", "", "-w gpu-node-01"):
        with pytest.raises(SlurmError, match="not a Slurm job id"):
            cancel_jobs(["41", bad])
    assert len(seen) == 1


def test_kill_jobs_only_on_nodes_gpuctl_drained(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not on a node Slurm has not drained (new jobs would start as the old ones go),
    nor on one an admin drained: their jobs are the admin's call."""
    from provisioner.slurm import sync  # noqa: PLC0415

    view = parse_sinfo("n1|draining|gpu:8|root|gpuctl: quarantined: xid-79\n"
                       "n2|mixed|gpu:8|Unknown|none\n"
                       "n3|draining|gpu:8|alice|fan noise\n")
    cancelled: list[list[str]] = []
    monkeypatch.setattr(sync, "load_settings", lambda gc: object())
    monkeypatch.setattr(sync, "slurm_nodes", lambda names=None: view)
    monkeypatch.setattr(sync, "jobs_on", lambda n: {"n1": ["41"], "n2": ["42"],
                                                    "n3": ["43"]}[n])
    monkeypatch.setattr(sync, "cancel_jobs", cancelled.append)
    done = sync.SlurmListener().kill_jobs(None, ["n1", "n2", "n3", "n4"])  # type: ignore[arg-type]
    assert cancelled == [["41"]]
    assert done == {"n1": "cancelled job 41",
                    "n2": "MIXED in Slurm, not drained by gpuctl: no job cancelled",
                    "n3": "DRAINING in Slurm, not drained by gpuctl: no job cancelled",
                    "n4": "not in Slurm, not drained by gpuctl: no job cancelled"}


def test_kill_jobs_a_failed_cancel_is_that_nodes_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from provisioner.slurm import sync  # noqa: PLC0415
    from provisioner.slurm.client import SlurmError  # noqa: PLC0415

    view = parse_sinfo("".join(f"{n}|draining|gpu:8|root|gpuctl: quarantined: x\n"
                               for n in ("n1", "n2")))
    monkeypatch.setattr(sync, "load_settings", lambda gc: object())
    monkeypatch.setattr(sync, "slurm_nodes", lambda names=None: view)
    monkeypatch.setattr(sync, "jobs_on", lambda n: {"n1": ["41"], "n2": ["42"]}[n])

    def cancel(ids: list[str]) -> None:
        if ids == ["41"]:
            raise SlurmError("scancel failed: Invalid job id specified")

    monkeypatch.setattr(sync, "cancel_jobs", cancel)
    done = sync.SlurmListener().kill_jobs(None, ["n1", "n2"])  # type: ignore[arg-type]
    assert done == {"n1": "could not cancel its jobs: scancel failed: Invalid job id "
                          "specified", "n2": "cancelled job 42"}
