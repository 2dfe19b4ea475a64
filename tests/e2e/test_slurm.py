"""Day 2 with a real Slurm (Debian's slurmctld, slurmd, slurmdbd, munge) on lab nodes:
the live hand-off and its smoke job, monitor draining a node that breaks, drain/resume
both ways, a drain by someone else as a disagreement, a pool Slurm enforces, and a
repaired node resumed after re-certification."""

from __future__ import annotations

import difflib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from provisioner.db.engine import session_scope
from provisioner.db.models import Node
from provisioner.lab.slurm import DEBIAN13_ROOT, RC_SCRIPT, LabSlurm
from provisioner.slurm.activate import apply_plan
from provisioner.slurm.apply import pool_plan
from provisioner.slurm.client import SlurmError
from tests.e2e.conftest import command_json, provisioned_by_lab, wait_for

pytest.importorskip("torch")
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(
    shutil.which("slurmctld") is None, reason="Slurm is not installed (scripts/setup.sh)")]


# sinfo's %T states of a node that takes jobs (PLANNED: the backfill scheduler holds it
# for a waiting job).
TAKING_JOBS = ("idle", "planned", "allocated", "mixed", "completing")


# The sockets the lab's GPUs are local to, as Slurm shows a gres with Cores=
# (scontrol(1) Gres: "gpu:4(S:0-1)"): GPUs 0-3 on the host's first socket, 4-7 on its
# second where it has one (provisioner.lab.render).
LAB_SOCKETS = "0" if len(set(re.findall(r"^physical id\s*:\s*(\S+)", Path(
    "/proc/cpuinfo").read_text(), re.MULTILINE))) < 2 else "0-1"


def sinfo() -> dict[str, tuple[str, str, str]]:
    """node -> (state, gres, reason), from the real sinfo."""
    out = subprocess.run(["sinfo", "-N", "-h", "-o", "%N|%T|%G|%E"], capture_output=True,
                         text=True, check=True, env=os.environ).stdout
    return {p[0]: (p[1], p[2], p[3]) for p in (line.split("|", 3) for line in
                                                out.splitlines())}


def sbatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True,
                          check=False, cwd="/tmp", timeout=300)


def handoff(gpuctl: Any, *args: str) -> tuple[int, dict[str, Any]]:
    result = gpuctl("handoff", "slurm", "--json", "--apply", *args)
    assert result.out, result
    return result.code, json.loads(result.out)


def set_host_var(paths: Any, key: str, value: str) -> None:
    """As an admin's inventory would set it for every node (``nodes import``)."""
    with session_scope(paths.db_url) as session:
        for node in session.exec(select(Node)):
            host_vars = json.loads(node.vars_json or "{}")
            host_vars[key] = value
            node.vars_json = json.dumps(host_vars)
            session.add(node)


def scontrol(*args: str) -> str:
    """Run scontrol; on failure, the error with the nodes' and the controller's view."""
    res = subprocess.run(["scontrol", *args], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        nodes = subprocess.run(["scontrol", "show", "node"], capture_output=True,
                               text=True, check=False).stdout
        log = Path(os.environ["SLURM_CONF"]).parent.parent / "log/slurmctld.log"
        tail = log.read_text(errors="replace").splitlines()[-40:] if log.exists() else []
        raise AssertionError(f"scontrol {' '.join(args)}: {res.stderr}\n{nodes}\n"
                             + "\n".join(tail))
    return res.stdout


def job(job_id: str) -> dict[str, str]:
    """``scontrol show job -o``'s fields (JobState, StartTime, Reason, ...)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True,
                         text=True, check=True).stdout
    return dict(f.split("=", 1) for f in out.split() if "=" in f)


class UserJobLoop:
    """A user who keeps submitting ``sbatch -w NODE --wrap true`` for each node while
    gpuctl works (sbatch refuses a node Slurm does not know yet; those tries are
    dropped). ``jobs``: node -> the ids of the jobs it submitted."""

    def __init__(self, nodes: list[str]) -> None:
        self.nodes = nodes
        self.jobs: dict[str, list[str]] = {n: [] for n in nodes}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> UserJobLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        # One job a node every 2 s, 10 at most: the first waits from the start, so more
        # would catch nothing more, and each costs the controller a scheduling pass later.
        while not self._stop.wait(2.0):
            for node in self.nodes:
                if len(self.jobs[node]) >= 10:
                    continue
                res = sbatch("-w", node, "--wrap", "true")
                if res.returncode == 0:
                    self.jobs[node].append(res.stdout.strip().split(";")[0])


def check_no_job_before_in_service(gpuctl: Any, loop: UserJobLoop, *,
                                   wait: float = 120) -> None:
    """No job of ``loop`` started on a node before gpuctl put the node in service; a
    node that is not in service ran none of them. Waits for the jobs of in-service
    nodes to run, so a job that started early cannot hide."""
    for node, ids in loop.jobs.items():
        assert ids, f"the user never got a job in for {node}"
        moved = [e["at"] for e in events(gpuctl, node)
                 if e["kind"] == "state" and e["to"] == "in-service"]
        if not moved:
            assert {job(j)["JobState"] for j in ids} == {"PENDING"}, node
            continue
        in_service = datetime.fromisoformat(max(moved)).timestamp()
        for job_id in ids:
            wait_for(lambda j=job_id: job(j)["JobState"] == "COMPLETED", timeout=wait)
            started = job(job_id)["StartTime"]  # the controller's local time
            assert time.mktime(time.strptime(started, "%Y-%m-%dT%H:%M:%S")) >= \
                in_service - 1, (node, job_id, started, max(moved))


def slurmd_logs(paths: Any, nodes: list[str]) -> dict[str, list[str]]:
    """The last lines each node's slurmd printed (the lab's boot script keeps them in
    the node's /var/log/slurmd.out), for a failure's message."""
    out = {}
    for node in nodes:
        log = paths.home / "lab/nodes" / node / "upper/var/log/slurmd.out"
        out[node] = log.read_text(errors="replace").splitlines()[-15:] \
            if log.exists() else ["(no slurmd.out)"]
    return out


def gpuctl_state(paths: Any, node: str) -> str | None:
    with session_scope(paths.db_url) as session:
        found = session.exec(select(Node.state).where(Node.name == node)).first()
    return found


def step_keeps_user_jobs_off(paths: Any, node: str, *args: str) -> dict[str, Any]:
    """Run ``gpuctl ARGS`` (a step that works on ``node``) with a user's job for the node
    waiting in Slurm (``sbatch -w NODE``, held until the step has begun, so it could start
    the moment the node is free). Samples gpuctl's state, Slurm's and the job's while the
    step runs. Returns what was seen, the job id and the step's exit code."""
    submitted = sbatch("--hold", "-w", node, "--wrap", "true")
    assert submitted.returncode == 0, submitted
    job_id = submitted.stdout.strip().split(";")[0]
    step = subprocess.Popen([sys.executable, "-m", "provisioner", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples: list[tuple[str | None, str, str, str]] = []  # gpuctl, slurm, reason, job
    released = False
    while step.poll() is None:
        state, (slurm, _, reason) = gpuctl_state(paths, node), sinfo()[node]
        if not released and slurm in ("drained", "draining"):
            # The node is drained: now let the job go. It must still not start.
            subprocess.run(["scontrol", "release", job_id], check=True)
            released = True
        samples.append((state, slurm, reason, job(job_id)["JobState"]))
        time.sleep(0.2)
    _, err = step.communicate()
    return {"samples": samples, "job": job_id, "code": step.returncode, "err": err,
            "released": released}


def check_no_job_while_busy(seen: dict[str, Any], busy: str) -> None:
    """While gpuctl had the node in ``busy``: Slurm had it drained with gpuctl's reason,
    and the user's job did not start."""
    during = [s for s in seen["samples"] if s[0] == busy]
    assert during and seen["released"], seen
    # gpuctl records its state, then Slurm's reason follows: the node is drained with
    # gpuctl's reason throughout, and the busy one shows.
    assert all(slurm in ("drained", "draining") and reason.startswith("gpuctl: ")
               and job_state == "PENDING" for _, slurm, reason, job_state in during), during
    assert any(reason.startswith(f"gpuctl: {busy}: ") for _, _, reason, _ in during), during


def events(gpuctl: Any, node: str) -> list[dict[str, Any]]:
    return json.loads(gpuctl("nodes", "show", node, "--json").out)["events"]  # type: ignore[no-any-return]


def wait_idle(slurm: LabSlurm, node: str) -> None:
    """The node is IDLE in Slurm (and responding), else what Slurm and the daemons say."""
    try:
        wait_for(lambda: sinfo()[node][0] == "idle", timeout=30)
    except AssertionError:
        logs = [slurm.lab.node_exec(node, ["sh", "-c", "tail -n 15 /var/log/slurmd.log "
                                           f"{DEBIAN13_ROOT}/var/log/slurmd.log; ps ax | "
                                           "grep -e slurm[d] -e munge[d]"]).stdout.decode()]
        log = slurm.dir / "log/slurmctld.log"
        ctld = log.read_text(errors="replace").splitlines()[-25:] if log.exists() else []
        raise AssertionError((scontrol("show", "node", node), logs, ctld)) from None


def no_reservation() -> bool:
    """The hand-off's maintenance reservation is gone (scontrol(1) show reservation)."""
    return "gpuctl-verify-" not in scontrol("show", "reservation")


def ping_up() -> bool:
    res = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, check=False)
    return "is UP" in res.stdout


def check_refusals(gpuctl: Any, conf_dir: str, conf: Path) -> None:
    """Changes slurmctld would refuse (each tried by hand on 22.05.8 first: a second
    line injected by the partition name, an admin's partition of the same name --
    "duplicate entry for partition" --, an admin's node on the same host --
    "Duplicated NodeHostName"): refused before anything is written, with the line
    named, slurm.conf byte for byte, the controller UP."""
    original = conf.read_bytes()
    for extra, args, why in (
            (b"", ("--partition", "h100\nMaxJobCount=4242"),
             "--partition 'h100\\nMaxJobCount=4242'"),
            (b"PartitionName=h100 Nodes=lab-spare\n", ("--partition", "h100"),
             "partition h100 is defined twice: "),
            (b"NodeName=old01 NodeHostName=gpu-node-02 State=FUTURE\n", (),
             "two nodes on host gpu-node-02: "),
            # Debian builds Slurm without NVML: slurmd would find no GPU.
            (b"", ("--gres-autodetect", "nvml"), "has no gpu_nvml.so in /")):
        conf.write_bytes(original + extra)
        result = gpuctl("handoff", "slurm", "--apply", "--slurm-conf-dir", conf_dir, *args)
        assert result.code == 1 and why in result.err, (why, result)
        assert len(result.err.strip().splitlines()) == 1, result
        assert conf.read_bytes() == original + extra and ping_up()
    conf.write_bytes(original)
    assert not conf.with_name("slurm.conf.gpuctl-bak").exists()


def check_rollback(conf: Path, restarted: bool) -> None:
    """A change that passes every check but slurmctld rejects as it reads it (a pool
    partition whose QOS the accounting database does not have: slurmctld/read_config.c
    "fatal: Partition %s has an invalid qos"; on 22.05 the reconfigure ends slurmctld):
    the old files are back, slurmctld restarted on them, and the error is its own."""
    before = conf.read_bytes()
    plan = pool_plan(conf.parent, ["PartitionName=pool-ghost Nodes=gpu-node-01 "
                                   "QOS=gpuctl-ghost"], "pool-ghost")
    with pytest.raises(SlurmError) as err:
        apply_plan(plan, os.environ["GPUCTL_SLURM_RESTART"], timeout=60)
    message = str(err.value)
    assert "fatal: Partition pool-ghost has an invalid qos" in message, message
    # Up to 23.02 the reconfigure ended slurmctld: restarted on the old files; from
    # 23.11 a failed reconfigure keeps the running one.
    assert message.endswith("restarted slurmctld: slurmctld is UP" if restarted else
                            "slurmctld kept the old configuration: slurmctld is UP"), message
    assert conf.read_bytes() == before and ping_up()


@pytest.mark.parametrize("release", [
    "22.05", pytest.param("24.11", marks=pytest.mark.skipif(
        not (DEBIAN13_ROOT / ".gpuctl-complete").exists(),
        reason="no Debian 13 root with Slurm 24.11 (scripts/lab-debian13.sh)"))])
def test_day2_with_real_slurm(lab, gpuctl, paths, monkeypatch,  # type: ignore[no-untyped-def]
                              release: str) -> None:
    """Every defect of issue 20 on the lab's real Slurm, the same steps on Debian 12's
    22.05 and Debian 13's 24.11; where the releases differ (activation, rollback,
    pools, the reason of a refused job) each gets its own assertion."""
    old = release == "22.05"  # up to 24.05: restarts; before 23.11: no GRES reservation
    lab.up(3, "--driver", "--slurm", "--slurm-release", release)
    slurm = LabSlurm(lab.lab)
    if not old:
        monkeypatch.setenv("PATH", f"{slurm.bin}:{os.environ['PATH']}")
    assert subprocess.run(["scontrol", "--version"], capture_output=True, text=True,
                          env={**os.environ, "SLURM_CONF": str(slurm.conf)},
                          check=True).stdout.startswith(f"slurm-wlm {release}.")
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    monkeypatch.setenv("GPUCTL_SLURM_RESTART", f"{sys.executable} -m provisioner lab "
                       "slurm restart")
    monkeypatch.setenv("GPUCTL_SLURMD_RESTART", f"sh {RC_SCRIPT} restart")
    conf_dir = str(slurm.etc)
    assert gpuctl("scan", "--all", "--accept-new").code == 0
    provisioned_by_lab(paths)  # Ansible runs below, where it matters to Slurm
    # Persistence mode on, as a provision leaves it (the lab's --driver image has no
    # persistence daemon; the monitor's warning below is for it going off).
    for i in (1, 2, 3):
        assert lab.lab.node_exec(f"gpu-node-0{i}", ["nvidia-smi", "-pm", "1"]).returncode == 0
    pm = lab.lab.node_exec("gpu-node-02", ["nvidia-smi", "--query-gpu=persistence_mode",
                                           "--format=csv,noheader"])
    assert set(pm.stdout.decode().split()) == {"Enabled"}, pm
    assert gpuctl("burnin", "--all", "--duration", "0.2", "--parallel", "1").code == 0

    conf = slurm.etc / "slurm.conf"
    check_refusals(gpuctl, conf_dir, conf)

    # A smoke job that cannot train (the nodes' Python has no torch): the nodes joined
    # Slurm drained (restart of slurmctld on 22.05: new nodes) and passed registration
    # and slurmd -C; each failed its own smoke run, so each ends DRAINED with the
    # reason, none goes in service, and the job's log is kept. A user submitting
    # `sbatch -w NODE` for every node all along got no job started.
    # (The interpreter behind this virtualenv, which has no torch: on both releases.)
    set_host_var(paths, "gpuctl_burnin_python", os.path.realpath(sys.executable))
    nodes = ["gpu-node-01", "gpu-node-02", "gpu-node-03"]
    with UserJobLoop(nodes) as users:
        # (--wait: CI's 2 cores once saw a 24.11 slurmd that had not registered after
        # the default 120 s; its log comes with a failure.)
        code, doc = handoff(gpuctl, "--slurm-conf-dir", conf_dir, "--partition", "h100",
                            "--smoke", "--smoke-steps", "100", "--wait", "300")
    assert code == 3 and doc["moved"] == 0 and not doc["smoke"]["passed"], (
        doc, slurmd_logs(paths, nodes))
    # 22.05 restarts slurmctld for new nodes; 24.11 reconfigures (FAQ, add_nodes).
    assert doc["action"] == ("restart" if old else "reconfigure"), doc
    assert "No module named" in Path(doc["smoke"]["log"]).read_text()
    assert set(doc["problems"]) == set(nodes)
    for node, (state, _, reason) in sinfo().items():
        if node.startswith("gpu-node"):
            assert state == "drained" and reason.startswith(
                "gpuctl: certified: hand-off gate failed: smoke job failed"), (
                    node, reason, slurmd_logs(paths, [node]))
    check_no_job_before_in_service(gpuctl, users)
    assert no_reservation()
    waiting_id = users.jobs["gpu-node-01"][0]
    subprocess.run(["scancel", *[j for n in nodes[1:] for j in users.jobs[n]],
                    *users.jobs["gpu-node-01"][1:]], check=True)
    assert job(waiting_id)["JobState"] == "PENDING"
    states = {n["name"]: n["state"] for n in json.loads(gpuctl("nodes", "list", "--json").out)}
    assert set(states.values()) == {"certified"}, states
    assert any(e["kind"] == "smoke" and e["reason"].startswith("failed: alone: job")
               for e in events(gpuctl, "gpu-node-02"))
    set_host_var(paths, "gpuctl_burnin_python", sys.executable)
    assert subprocess.run(["scontrol", "ping"], capture_output=True, text=True,
                          check=False).stdout.count("is UP") == 1

    # A burn-in and a provision of such a node drain it in Slurm for their own run as
    # it begins (before they reach the node), and a user's job waiting for the node
    # does not start while they work, nor after: certified is not in service, only a
    # hand-off whose gates pass lets jobs in.
    # (Node 2's provision changes nothing in the driver, CUDA or fabric manager, so its
    # certificate stands: certified again, still not in service. The provision runs
    # here take `--tags burnin_env`: what Slurm sees of a provision is the same, and
    # Ansible's full runs have their own tests, test_provision*.py.)
    # (On 22.05 only, for CI's time: gpuctl drains through the same scontrol call on
    # both releases, and the monitor's drains below run on each. 24.11 has a tour of its
    # own of a user's job waiting out gpuctl's work: the re-provision below.)
    held = [waiting_id]
    for busy, after, args in () if not old else (
            ("burning-in", "certified", ("burnin", "gpu-node-01", "--duration", "0.2")),
            ("provisioning", "certified", ("provision", "gpu-node-02", "--tags",
                                           "burnin_env"))):
        node = args[1]
        seen = step_keeps_user_jobs_off(paths, node, *args)
        assert seen["code"] == 0, seen["err"][-2000:]
        check_no_job_while_busy(seen, busy)
        assert gpuctl_state(paths, node) == after
        state, _, reason = sinfo()[node]
        assert state == "drained" and reason.startswith(f"gpuctl: {after}: "), reason
        held.append(seen["job"])
    assert {job(j)["JobState"] for j in held} == {"PENDING"}

    # The live hand-off: the nodes are in slurm.conf already (nothing to activate);
    # registration, slurmd -C, then the smoke job through sbatch/srun torchrun inside a
    # maintenance reservation. The users' jobs start only once their node is in service.
    with UserJobLoop(nodes) as users:
        code, doc = handoff(gpuctl, "--slurm-conf-dir", conf_dir, "--partition", "h100",
                            "--smoke", "--smoke-steps", "100")
    assert code == 0, doc
    assert doc["action"] == "none" and doc["moved"] == 3 and not doc["problems"], doc
    assert doc["smoke"]["passed"], doc["smoke"]
    ranks = doc["smoke"]["ranks"]
    assert {r["host"] for r in ranks} == {"gpu-node-01", "gpu-node-02", "gpu-node-03"}
    assert len({r["checksum"] for r in ranks}) == 1
    assert all(r["loss_last"] < r["loss_first"] * 0.9 for r in ranks)
    # In service: taking jobs (the users' waiting jobs may hold or plan them already).
    view = sinfo()
    assert {n: (v[0] in TAKING_JOBS, v[1]) for n, v in view.items()
            if n.startswith("gpu-node")} == {
        f"gpu-node-0{i}": (True, f"gpu:h100:8(S:{LAB_SOCKETS})") for i in (1, 2, 3)}, view
    assert (slurm.etc / "slurm.conf.gpuctl-bak").exists()
    states = {n["name"]: n["state"] for n in json.loads(gpuctl("nodes", "list", "--json").out)}
    assert set(states.values()) == {"in-service"}
    check_no_job_before_in_service(gpuctl, users)
    assert no_reservation()
    for job_id in held:
        wait_for(lambda j=job_id: job(j)["JobState"] == "COMPLETED", timeout=90)
        node = job(job_id)["NodeList"]
        in_service = max(e["at"] for e in events(gpuctl, node)
                         if e["kind"] == "state" and e["to"] == "in-service")
        started = job(job_id)["StartTime"]  # the controller's local time
        assert time.mktime(time.strptime(started, "%Y-%m-%dT%H:%M:%S")) >= \
            datetime.fromisoformat(in_service).timestamp() - 1, (started, in_service)

    check_rollback(conf, old)
    # slurmctld restarted: the nodes are UNKNOWN (no job starts there) until their slurmd
    # registers again, at the controller's next ping.
    wait_for(lambda: all(v[0] in TAKING_JOBS for n, v in sinfo().items()
                         if n.startswith("gpu-node")), timeout=120)

    # A user's job runs on node 1 when the admin takes it out to re-provision it: Slurm
    # drains it (DRAINING: the job runs on). provision refuses to touch it while the
    # job runs, says why, and leaves the job alone; with --wait it waits for the job
    # to end, then provisions. Burn-in and hand-off put it back in service. (On 24.11
    # only, for CI's time: there a node stays DRAINING for a while after its last job
    # ends, which gpuctl's wait reads through squeue; 22.05 has the busy-step tour above.)
    if not old:
        running = sbatch("-w", "gpu-node-01", "--wrap", "sleep 600")
        assert running.returncode == 0, running
        running_id = running.stdout.strip().split(";")[0]
        wait_for(lambda: job(running_id)["JobState"] == "RUNNING", timeout=60)
        for step in ("quarantine", "release"):
            assert gpuctl(step, "gpu-node-01", "--reason", "re-provision").code == 0
        refused = gpuctl("provision", "gpu-node-01")
        assert refused.code == 1 and "gpu-node-01: DRAINING in Slurm: jobs still run there; " \
            "waited 0 s; nothing was done on the nodes" in refused.err, \
            refused
        assert job(running_id)["JobState"] == "RUNNING"
        assert sinfo()["gpu-node-01"][0] == "draining"
        done = threading.Timer(5, subprocess.run, [["scancel", running_id]])
        done.start()
        started = time.monotonic()
        waited = gpuctl("provision", "gpu-node-01", "--wait", "120", "--tags", "burnin_env")
        done.join()
        assert waited.code == 0 and time.monotonic() - started >= 5, waited
        assert gpuctl("burnin", "gpu-node-01", "--duration", "0.2").code == 0
        code, doc = handoff(gpuctl, "--slurm-conf-dir", conf_dir, "gpu-node-01")
        assert code == 0 and doc["moved"] == 1, doc

    # A GPU on node 3 starts reporting uncorrectable ECC errors: one monitor pass
    # quarantines it in gpuctl and drains it in Slurm with gpuctl's reason.
    assert gpuctl("lab", "fault", "gpu-node-03", "ecc-uncorrectable").code == 0
    code, mon = command_json(gpuctl, "monitor")
    assert code == 3 and mon["quarantined"] == ["gpu-node-03"], mon
    assert mon["schedulers"]["slurm"]["drained"] == ["gpu-node-03"], mon
    state, _, reason = sinfo()["gpu-node-03"]
    # DRAINING while a job that was already there finishes (a busy machine runs it longer).
    assert state in ("draining", "drained") and reason.startswith(
        "gpuctl: quarantined: ecc-uncorrectable"), (state, reason)
    wait_for(lambda: sinfo()["gpu-node-03"][0] == "drained", timeout=180)

    # Someone drains node 2 in Slurm by hand: gpuctl status names the disagreement and
    # the next monitor pass records it in the node's history (and leaves the drain).
    # (Node 1's slurmd restarted in its re-provision: a controller ping that found it
    # down marks it not responding, IDLE*, until it registers again; CI saw that once.
    # status is right to name that too, so the check waits it out first.)
    wait_for(lambda: all(sinfo()[n][0] in TAKING_JOBS for n in ("gpu-node-01", "gpu-node-02")),
             timeout=120)
    subprocess.run(["scontrol", "update", "NodeName=gpu-node-02", "State=DRAIN",
                    "Reason=fan noise, ticket 4411"], check=True)
    _, status = command_json(gpuctl, "status")
    why = {d["node"]: d["why"] for d in status["slurm"]["disagreements"]}
    assert why == {"gpu-node-02": "DRAINED in Slurm by root: fan noise, ticket 4411"}, status
    code, mon = command_json(gpuctl, "monitor")
    synced = mon["schedulers"]["slurm"]
    assert code == 0 and synced["foreign"] == ["gpu-node-02"], mon
    assert synced["drained"] == synced["resumed"] == [], mon  # in step already
    assert any(e["kind"] == "slurm" and "fan noise" in e["reason"]
               for e in events(gpuctl, "gpu-node-02"))
    assert sinfo()["gpu-node-02"][0] == "drained"
    scontrol("update", "NodeName=gpu-node-02", "State=RESUME")

    # gpuctl drain/undrain reach Slurm both ways.
    assert gpuctl("drain", "gpu-node-01", "--reason", "PSU swap").code == 0
    assert sinfo()["gpu-node-01"][2] == "gpuctl: drained: drain: PSU swap"
    assert gpuctl("undrain", "gpu-node-01").code == 0
    wait_for(lambda: sinfo()["gpu-node-01"][0] == "idle", timeout=30)

    # A team pool of 4 GPUs for the Slurm account "vision" (root is a member; its
    # default account is root). A pool whose account Slurm does not have is refused
    # before anything changes in Slurm.
    for args in (("account", "vision", "cluster=gpuctl-lab"),
                 ("user", "root", "account=vision", "cluster=gpuctl-lab")):
        subprocess.run(["sacctmgr", "-i", "add", *args], check=True, capture_output=True)
    assert gpuctl("pool", "create", "ghosts", "--sku", "h100-sxm-8", "--gpus", "1",
                  "--accounts", "ghost").code == 0
    refused = gpuctl("pool", "sync")
    assert refused.code == 1 and "pool ghosts: account ghost is not in Slurm's " \
        "accounting" in refused.err, refused
    assert gpuctl("pool", "delete", "ghosts").code == 0
    assert gpuctl("pool", "create", "vision-team", "--sku", "h100-sxm-8", "--gpus", "4",
                  "--accounts", "vision").code == 0
    assert gpuctl("pool", "assign", "vision-team", "gpu-node-01", "--gpus", "4").code == 0
    # The team's own line from `pool show`, run as it is printed: it gets 4 GPUs.
    shown = json.loads(gpuctl("pool", "show", "vision-team", "--json").out)["slurm"]
    # 22.05 has no GRES reservations: the pool is a cap. From 23.11 its 4 GPUs are
    # the team's: a reservation that only the account's jobs may use.
    resv = "" if old else " --reservation=gpuctl-pool-vision-team"
    assert shown["salloc"] == {str(n): "salloc -p pool-vision-team --account=vision"
                               f"{resv} --nodes=1 --gres=gpu:{n}" for n in (1, 2, 4)}, shown
    if not old:
        held = dict(re.findall(r"(\w+)=(\S*)", scontrol(
            "show", "reservation", "-o", "gpuctl-pool-vision-team")))
        assert held["Nodes"] == "gpu-node-01" and "gres/gpu=4" in held["TRES"] \
            and held["Accounts"] == "vision", held
        # Another account's job, even in the general partition, does not get what the
        # reservation holds: the GPUs and the cores that go with them (Slurm picks them;
        # on the lab's 2-core node both, so the rest of the node is not shown free).
        greedy = sbatch("-p", "h100", "--account=root", "-w", "gpu-node-01",
                        "--gres=gpu:8", "--wrap", "true")
        greedy_id = greedy.stdout.strip().split(";")[0]
        wait_for(lambda: job(greedy_id)["Reason"] != "None", timeout=30)
        time.sleep(3)  # an idle 8-GPU node would have started it by now
        assert job(greedy_id)["JobState"] == "PENDING", job(greedy_id)
        subprocess.run(["scancel", greedy_id], check=True)
    assert shown["time_limit"] == "none (partition MaxTime=UNLIMITED)", shown
    got = subprocess.run([*shlex.split(shown["salloc"]["4"]), "sh", "-c",
                          "echo $SLURM_JOB_GPUS/$SLURM_JOB_PARTITION"], capture_output=True,
                         text=True, check=False, timeout=120, cwd="/tmp")
    assert got.returncode == 0 and got.stdout.strip().endswith("/pool-vision-team"), got
    # Slurm refuses 8 GPUs (the QOS cap) and runs 4; a job from another account never
    # runs in the pool's partition (AllowAccounts; without EnforcePartLimits Slurm
    # keeps it pending, "Job's account not permitted", rather than refusing it).
    too_big = sbatch("-p", "pool-vision-team", "--account=vision", "--gres=gpu:8",
                     "--wrap", "true")
    assert too_big.returncode != 0 and "QOSGrpGRES" in too_big.stderr, too_big
    outsider = sbatch("-p", "pool-vision-team", "--account=root", "--gres=gpu:1",
                      "--wrap", "true")
    fits = sbatch("-p", "pool-vision-team", "--account=vision", *shlex.split(resv),
                  "--gres=gpu:4", "--wait", "--wrap", "true")
    assert fits.returncode == 0, fits
    assert outsider.returncode == 0, outsider  # the lab has no EnforcePartLimits
    outsider_id = outsider.stdout.strip().split(";")[0]
    assert job(outsider_id)["JobState"] == "PENDING", job(outsider_id)
    # 22.05: scontrol shows slurmctld's state_desc (partition_mgr.c
    # part_policy_valid_acct) as the Reason; 24.11: job_mgr.c's job_limits_check sets
    # WAIT_PART_CONFIG when _part_access_check refuses the account.
    assert job(outsider_id)["Reason"].startswith(
        "Job's_account_not_permitted_to_use_this_partition" if old else
        "PartitionConfig"), job(outsider_id)
    subprocess.run(["scancel", outsider_id], check=True)

    # The GPU is replaced: release, provision, burn in again; the new certificate does
    # not let jobs in yet: the hand-off's gates pass and put it back in service.
    assert gpuctl("lab", "repair", "gpu-node-03").code == 0
    assert gpuctl("release", "gpu-node-03", "--reason", "GPU 1 replaced").code == 0
    # Not serving yet: still drained, now with the current reason.
    assert sinfo()["gpu-node-03"][0::2] == ("drained", "gpuctl: discovered: release: GPU 1 "
                                            "replaced")
    assert gpuctl("scan", "gpu-node-03").code == 0
    result = gpuctl("provision", "gpu-node-03", "--tags", "burnin_env", "--json")
    assert result.code == 0, result.out[-3000:]
    assert gpuctl("burnin", "gpu-node-03", "--duration", "0.2").code == 0
    state, _, reason = sinfo()["gpu-node-03"]
    assert state == "drained" and reason.startswith("gpuctl: certified: "), reason
    before = (slurm.etc / "slurm.conf").read_text()
    code, doc = handoff(gpuctl, "--slurm-conf-dir", conf_dir, "gpu-node-03")
    changed = "\n".join(difflib.unified_diff(
        before.splitlines(), (slurm.etc / "slurm.conf").read_text().splitlines()))
    assert code == 0 and doc["action"] == "none" and doc["moved"] == 1, (doc, changed)
    wait_idle(slurm, "gpu-node-03")
    _, status = command_json(gpuctl, "status")
    assert status["slurm"]["disagreements"] == [], status["slurm"]

    # An NVLink link of an in-service node goes down: monitor reads `nvidia-smi nvlink
    # --status` and drains it too.
    assert gpuctl("lab", "fault", "gpu-node-01", "nvlink-down").code == 0
    code, mon = command_json(gpuctl, "monitor")
    assert code == 3 and mon["quarantined"] == ["gpu-node-01"], mon
    assert sinfo()["gpu-node-01"][2] == "gpuctl: quarantined: nvlink: GPU 4: NVLink link 3 " \
        "inactive", sinfo()

    # Persistence mode off on node 2 (an admin's `nvidia-smi -pm 0`) is a warning, not a
    # drain; its GPUs' fabric registration failing is critical: quarantined and drained.
    stopped = lab.lab.node_exec("gpu-node-02", ["nvidia-smi", "-pm", "0"])
    assert stopped.returncode == 0, stopped
    code, mon = command_json(gpuctl, "monitor")
    node2 = {n["name"]: n for n in mon["nodes"]}["gpu-node-02"]
    assert code == 0 and node2["outcome"] == "warning", mon
    assert node2["message"] == "persistence: persistence mode is off on 8 of 8 GPUs"
    assert sinfo()["gpu-node-02"][0] == "idle"
    assert gpuctl("lab", "fault", "gpu-node-02", "fabric-unregistered").code == 0
    code, mon = command_json(gpuctl, "monitor")
    assert code == 3 and mon["quarantined"] == ["gpu-node-02"], mon
    state, _, reason = sinfo()["gpu-node-02"]
    assert state == "drained" and reason.startswith(
        "gpuctl: quarantined: fabric: NVSwitch fabric not up: state "), reason

    # An admin marks node 2 DOWN ("PSU dead"); gpuctl then takes it out: gpuctl wants it
    # drained, but a DOWN it did not set is never touched (reason kept, NHC's rule), and
    # status names it.
    subprocess.run(["scontrol", "update", "NodeName=gpu-node-02", "State=DOWN",
                    "Reason=admin: PSU dead"], check=True)
    assert gpuctl("release", "gpu-node-02", "--reason", "PSU swap").code == 0
    # (A DOWN node that was drained already shows as drained: scontrol has both.)
    shown = dict(re.findall(r"(\w+)=(\S*)", scontrol("show", "node", "-o", "gpu-node-02")))
    assert shown["State"].startswith("DOWN") and sinfo()["gpu-node-02"][2] == \
        "admin: PSU dead", shown
    _, status = command_json(gpuctl, "status")
    why = {d["node"]: d["why"] for d in status["slurm"]["disagreements"]}
    # (DRAINED where the admin's DOWN came on a node gpuctl had drained already.)
    assert why["gpu-node-02"] in {f"{s} in Slurm by root: admin: PSU dead"
                                  for s in ("DOWN", "DRAINED")}, status
    command_json(gpuctl, "monitor")
    assert sinfo()["gpu-node-02"][2] == "admin: PSU dead"

    # Node 3's host key changes: monitor cannot verify it, so it is drained and
    # reported on every pass (not only the first), exit 3; once the admin accepted the
    # new key, the next pass resumes it.
    assert gpuctl("lab", "fault", "gpu-node-03", "hostkey-changed").code == 0
    for _ in range(2):
        code, mon = command_json(gpuctl, "monitor")
        node3 = {n["name"]: n for n in mon["nodes"]}["gpu-node-03"]
        assert code == 3 and node3["outcome"] == "refused", mon
        state, _, reason = sinfo()["gpu-node-03"]
        assert state == "drained" and reason.startswith(
            "gpuctl: in-service: unverified: "), reason
    assert gpuctl("nodes", "forget-hostkey", "gpu-node-03").code == 0
    assert gpuctl("scan", "gpu-node-03", "--accept-new").code == 0
    assert gpuctl_state(paths, "gpu-node-03") == "in-service"
    code, mon = command_json(gpuctl, "monitor")
    assert mon["schedulers"]["slurm"]["resumed"] == ["gpu-node-03"], mon
    wait_idle(slurm, "gpu-node-03")

    # An in-service node removed from gpuctl: drained in Slurm (nothing vouches for it
    # any more), and a job waiting for it stays pending.
    assert gpuctl_state(paths, "gpu-node-03") == "in-service"
    seen = step_keeps_user_jobs_off(paths, "gpu-node-03", "nodes", "remove", "gpu-node-03", "--yes")
    assert seen["code"] == 0 and gpuctl_state(paths, "gpu-node-03") is None, seen
    wait_for(lambda: sinfo()["gpu-node-03"][0] == "drained", timeout=10)
    assert sinfo()["gpu-node-03"][2].startswith("gpuctl: removed: removed from gpuctl by ")
    subprocess.run(["scontrol", "release", seen["job"]], check=False)
    time.sleep(2)
    assert job(seen["job"])["JobState"] == "PENDING"
