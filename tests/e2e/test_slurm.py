"""Day 2 with a real Slurm (Debian's slurmctld, slurmd, slurmdbd, munge) on lab nodes:
the live hand-off and its smoke job, monitor draining a node that breaks, drain/resume
both ways, a drain by someone else as a disagreement, a pool Slurm enforces, and a
repaired node resumed after re-certification."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from provisioner.db.engine import session_scope
from provisioner.db.models import Node
from provisioner.lab.slurm import LabSlurm
from tests.e2e.conftest import command_json, wait_for

pytest.importorskip("torch")
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(
    shutil.which("slurmctld") is None, reason="Slurm is not installed (scripts/setup.sh)")]


def sinfo() -> dict[str, tuple[str, str, str]]:
    """node -> (state, gres, reason), from the real sinfo."""
    out = subprocess.run(["sinfo", "-N", "-h", "-o", "%N|%T|%G|%E"], capture_output=True,
                         text=True, check=True, env=os.environ).stdout
    return {p[0]: (p[1], p[2], p[3]) for p in (line.split("|", 3) for line in
                                                out.splitlines())}


def sbatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True,
                          check=False, cwd="/tmp")


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


def job(job_id: str) -> dict[str, str]:
    """``scontrol show job -o``'s fields (JobState, StartTime, Reason, ...)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True,
                         text=True, check=True).stdout
    return dict(f.split("=", 1) for f in out.split() if "=" in f)


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
    assert all(slurm in ("drained", "draining") and reason.startswith(f"gpuctl: {busy}: ")
               and job_state == "PENDING" for _, slurm, reason, job_state in during), during


def events(gpuctl: Any, node: str) -> list[dict[str, Any]]:
    return json.loads(gpuctl("nodes", "show", node, "--json").out)["events"]  # type: ignore[no-any-return]


def test_day2_with_real_slurm(lab, gpuctl, paths, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    lab.up(3, "--driver", "--slurm")
    slurm = LabSlurm(lab.lab)
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    monkeypatch.setenv("GPUCTL_SLURM_RESTART", f"{sys.executable} -m provisioner lab "
                       "slurm restart")
    conf_dir = str(slurm.etc)
    assert gpuctl("scan", "--all", "--accept-new").code == 0
    assert gpuctl("provision", "--all").code == 0
    assert gpuctl("burnin", "--all", "--duration", "0.2", "--parallel", "1").code == 0

    # A smoke job that cannot train (the nodes' Python has no torch): Slurm took the
    # nodes, but none goes in service, and the job's log is kept.
    set_host_var(paths, "gpuctl_burnin_python", "/usr/bin/python3")
    code, doc = handoff(gpuctl, "--slurm-conf-dir", conf_dir, "--partition", "h100",
                        "--smoke", "--smoke-steps", "100")
    assert code == 3 and doc["moved"] == 0 and not doc["smoke"]["passed"], doc
    assert doc["smoke"]["reason"].startswith(f"job {doc['smoke']['job_id']} FAILED"), doc
    assert "No module named" in Path(doc["smoke"]["log"]).read_text()
    assert set(doc["problems"]) == {"gpu-node-01", "gpu-node-02", "gpu-node-03"}
    states = {n["name"]: n["state"] for n in json.loads(gpuctl("nodes", "list", "--json").out)}
    assert set(states.values()) == {"certified"}, states
    assert any(e["kind"] == "smoke" and e["reason"].startswith("failed: job")
               for e in events(gpuctl, "gpu-node-02"))
    set_host_var(paths, "gpuctl_burnin_python", sys.executable)

    # Slurm knows the nodes now, and they are certified: IDLE there. A burn-in and a
    # provision of such a node drain it in Slurm as their run begins (before they reach
    # the node), a user's job waiting for the node does not start while they work, and
    # the node takes jobs again only once it is certified again.
    for busy, args in (("burning-in", ("burnin", "gpu-node-01", "--duration", "0.2")),
                       ("provisioning", ("provision", "gpu-node-02"))):
        node = args[1]
        seen = step_keeps_user_jobs_off(paths, node, *args)
        assert seen["code"] == 0, seen["err"][-2000:]
        check_no_job_while_busy(seen, busy)
        assert gpuctl_state(paths, node) == "certified"
        job_id = seen["job"]
        wait_for(lambda j=job_id: job(j)["JobState"] == "COMPLETED", timeout=90)
        serving_again = max(e["at"] for e in events(gpuctl, node)
                            if e["kind"] == "state" and e["to"] == "certified")
        started = job(job_id)["StartTime"]  # the controller's local time
        assert time.mktime(time.strptime(started, "%Y-%m-%dT%H:%M:%S")) >= \
            datetime.fromisoformat(serving_again).timestamp() - 1, (started, serving_again)

    # The live hand-off: into slurm.conf/gres.conf, every node IDLE with its 8 GPUs (the
    # first --apply restarted slurmctld for the new nodes), then the smoke job through
    # sbatch/srun torchrun.
    code, doc = handoff(gpuctl, "--slurm-conf-dir", conf_dir, "--partition", "h100",
                        "--smoke", "--smoke-steps", "100")
    assert code == 0, doc
    assert doc["action"] == "none" and doc["moved"] == 3 and not doc["problems"], doc
    assert doc["smoke"]["passed"], doc["smoke"]
    ranks = doc["smoke"]["ranks"]
    assert len(ranks) == 6 and {r["host"] for r in ranks} == {
        "gpu-node-01", "gpu-node-02", "gpu-node-03"}
    assert len({r["checksum"] for r in ranks}) == 1
    assert all(r["loss_last"] < r["loss_first"] * 0.9 for r in ranks)
    view = sinfo()
    assert {n: v[:2] for n, v in view.items() if n.startswith("gpu-node")} == {
        f"gpu-node-0{i}": ("idle", "gpu:h100:8") for i in (1, 2, 3)}, view
    assert (slurm.etc / "slurm.conf.gpuctl-bak").exists()
    states = {n["name"]: n["state"] for n in json.loads(gpuctl("nodes", "list", "--json").out)}
    assert set(states.values()) == {"in-service"}

    # A GPU on node 3 starts reporting uncorrectable ECC errors: one monitor pass
    # quarantines it in gpuctl and drains it in Slurm with gpuctl's reason.
    assert gpuctl("lab", "fault", "gpu-node-03", "ecc-uncorrectable").code == 0
    code, mon = command_json(gpuctl, "monitor")
    assert code == 3 and mon["quarantined"] == ["gpu-node-03"], mon
    assert mon["schedulers"]["slurm"]["drained"] == ["gpu-node-03"], mon
    state, _, reason = sinfo()["gpu-node-03"]
    assert state == "drained" and reason.startswith("gpuctl: quarantined: ecc-uncorrectable")

    # Someone drains node 2 in Slurm by hand: gpuctl status names the disagreement and
    # the next monitor pass records it in the node's history (and leaves the drain).
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
    subprocess.run(["scontrol", "update", "NodeName=gpu-node-02", "State=RESUME"], check=True)

    # gpuctl drain/undrain reach Slurm both ways.
    assert gpuctl("drain", "gpu-node-01", "--reason", "PSU swap").code == 0
    assert sinfo()["gpu-node-01"][2] == "gpuctl: drained: drain: PSU swap"
    assert gpuctl("undrain", "gpu-node-01").code == 0
    wait_for(lambda: sinfo()["gpu-node-01"][0] == "idle", timeout=30)

    # A team pool of 4 GPUs: Slurm refuses a job asking for 8 and runs one asking for 4.
    assert gpuctl("pool", "create", "vision-team", "--sku", "h100-sxm-8", "--gpus", "4").code == 0
    assert gpuctl("pool", "assign", "vision-team", "gpu-node-01", "--gpus", "4").code == 0
    too_big = sbatch("-p", "pool-vision-team", "--gres=gpu:8", "--wrap", "true")
    assert too_big.returncode != 0 and "QOSGrpGRES" in too_big.stderr, too_big
    fits = sbatch("-p", "pool-vision-team", "--gres=gpu:4", "--wait", "--wrap", "true")
    assert fits.returncode == 0, fits

    # The GPU is replaced: release, provision, burn in again; the new certificate resumes
    # the node in Slurm and a hand-off puts it back in service.
    assert gpuctl("lab", "repair", "gpu-node-03").code == 0
    assert gpuctl("release", "gpu-node-03", "--reason", "GPU 1 replaced").code == 0
    # Not serving yet: still drained, now with the current reason.
    assert sinfo()["gpu-node-03"][0::2] == ("drained", "gpuctl: discovered: release: GPU 1 "
                                            "replaced")
    assert gpuctl("scan", "gpu-node-03").code == 0
    result = gpuctl("provision", "gpu-node-03", "--json")
    assert result.code == 0, result.out[-3000:]
    assert gpuctl("burnin", "gpu-node-03", "--duration", "0.2").code == 0
    wait_for(lambda: sinfo()["gpu-node-03"][0] == "idle", timeout=30)
    code, doc = handoff(gpuctl, "--slurm-conf-dir", conf_dir, "gpu-node-03")
    assert code == 0 and doc["action"] in ("none", "reconfigure") and doc["moved"] == 1, doc
    _, status = command_json(gpuctl, "status")
    assert status["slurm"]["disagreements"] == [], status["slurm"]

    # An NVLink link of an in-service node goes down: monitor reads `nvidia-smi nvlink
    # --status` and drains it too.
    assert gpuctl("lab", "fault", "gpu-node-01", "nvlink-down").code == 0
    code, mon = command_json(gpuctl, "monitor")
    assert code == 3 and mon["quarantined"] == ["gpu-node-01"], mon
    assert sinfo()["gpu-node-01"][2] == "gpuctl: quarantined: nvlink: GPU 4: NVLink link 3 " \
        "inactive", sinfo()

    # Persistence mode off on node 2 (its daemon stopped) is a warning, not a drain; its
    # GPUs' fabric registration failing is critical: quarantined and drained.
    stopped = lab.lab.node_exec("gpu-node-02", ["/etc/init.d/nvidia-persistenced", "stop"])
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
