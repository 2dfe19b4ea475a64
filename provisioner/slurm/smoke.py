"""The training smoke job: the last gate before a node is in service.

gpuctl submits one ``sbatch`` job over the nodes, through Slurm itself: ``sbcast`` puts
the training program (``smoke_train.py``) on every node, then ``srun`` starts one
``torchrun`` per node with one process per GPU asked for (NCCL on GPUs, gloo on CPUs).
It passes when the job exits 0, every rank reported, every rank's loss fell and all
ranks end with the same weights checksum. The job's output is read back from the node
that ran the batch script (over gpuctl's SSH: no shared filesystem is assumed) and
kept under the run's directory either way.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from provisioner.errors import GpuctlError
from provisioner.slurm.client import SlurmError, run_slurm
from provisioner.ssh.exec import Target, run_on_node
from provisioner.ssh.hostkeys import KnownHosts

TRAIN = Path(__file__).with_name("smoke_train.py")
# The loss must end below this fraction of where it started.
LOSS_DROP = 0.9


@dataclass
class SmokeResult:
    job_id: str
    passed: bool
    reason: str
    ranks: list[dict[str, Any]] = field(default_factory=list)
    log: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def batch_script(nodes: list[str], procs: int, python: str, env: str, steps: int,
                 partition: str | None, gres: str, minutes: int) -> str:
    """The sbatch script (sbatch(1), srun(1), sbcast(1) options)."""
    heredoc = TRAIN.read_text()
    lines = ["#!/bin/bash", "#SBATCH --job-name=gpuctl-smoke",
             f"#SBATCH --nodes={len(nodes)}", f"#SBATCH --nodelist={','.join(nodes)}",
             "#SBATCH --ntasks-per-node=1", f"#SBATCH --gres={gres}",
             "#SBATCH --output=/tmp/gpuctl-smoke-%j.out", f"#SBATCH --time={minutes}"]
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    lines += [
        "set -euo pipefail",
        'prog="/tmp/gpuctl-smoke-$SLURM_JOB_ID.py"',
        "cat > \"$prog\" <<'GPUCTL_SMOKE_EOF'", heredoc.rstrip("\n"), "GPUCTL_SMOKE_EOF",
        '# every node gets the program through Slurm (no shared filesystem needed)',
        'sbcast --force "$prog" "$prog"',
        'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        'port=$((29500 + SLURM_JOB_ID % 1000))',
        f"srun --kill-on-bad-exit=1 env {env} {shlex.quote(python)} -m torch.distributed.run "
        f'--nnodes="$SLURM_NNODES" --nproc-per-node={procs} --rdzv-backend=c10d '
        '--rdzv-endpoint="$head:$port" --rdzv-id="$SLURM_JOB_ID" '
        f'"$prog" {steps}',
    ]
    return "\n".join(lines) + "\n"


def verdict(output: str, world: int) -> tuple[bool, str, list[dict[str, Any]]]:
    """Judge the job's output: (passed, why, the ranks' reports)."""
    ranks = []
    decoder = json.JSONDecoder()
    # Anywhere in the output: srun interleaves the ranks' output in chunks, so a report
    # may follow another process's text on the same line.
    for match in re.finditer(r"GPUCTL_SMOKE ", output):
        try:
            doc, _ = decoder.raw_decode(output, match.end())
        except ValueError:
            continue
        if isinstance(doc, dict) and {"rank", "loss_first", "loss_last", "checksum",
                                      "host"} <= set(doc):
            ranks.append(doc)
    ranks.sort(key=lambda r: r.get("rank", 0))
    if len(ranks) != world:
        return False, f"{len(ranks)} of {world} ranks reported", ranks
    flat = [r for r in ranks if not r["loss_last"] < r["loss_first"] * LOSS_DROP]
    if flat:
        r = flat[0]
        return False, (f"loss did not decrease on rank {r['rank']} ({r['host']}): "
                       f"{r['loss_first']:.3f} -> {r['loss_last']:.3f}"), ranks
    sums = {r["checksum"] for r in ranks}
    if len(sums) != 1:
        odd = [r for r in ranks if r["checksum"] != ranks[0]["checksum"]]
        return False, (f"weights differ across ranks: {len(sums)} checksums; rank "
                       f"{odd[0]['rank']} on {odd[0]['host']} differs from rank 0"), ranks
    return True, (f"{world} ranks, loss {ranks[0]['loss_first']:.2f} -> "
                  f"{ranks[0]['loss_last']:.3f}, weights identical"), ranks


def run_smoke(nodes: list[Target], *, gpus_per_node: int, python: str, env: str,
              known_hosts: KnownHosts, log_dir: Path, partition: str | None = None,
              steps: int = 200, procs: int | None = None, timeout: float = 600) -> SmokeResult:
    """Submit the smoke job on ``nodes`` and wait for it.

    Raises:
        SlurmError: Slurm refused the job.
    """
    procs = procs or gpus_per_node
    world = procs * len(nodes)
    script = batch_script([n.name for n in nodes], procs, python, env, steps, partition,
                          f"gpu:{gpus_per_node}", max(1, int(timeout // 60)))
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "smoke.sbatch").write_text(script)
    started = time.monotonic()
    job_id = run_slurm(["sbatch", "--parsable", str(log_dir / "smoke.sbatch")]).strip()
    job_id = job_id.split(";")[0]
    state, host, code = _wait_job(job_id, timeout)
    by_name = {n.name: n for n in nodes}
    output = ""
    if host in by_name:
        try:
            res = run_on_node(by_name[host], f"cat /tmp/gpuctl-smoke-{job_id}.out",
                              known_hosts=known_hosts, max_output=4 * 1024 * 1024)
            output = res.stdout.decode("utf-8", "replace")
        except GpuctlError as exc:
            output = f"(cannot read the job's output from {host}: {exc})"
    log = log_dir / "smoke.out"
    log.write_text(output)
    seconds = round(time.monotonic() - started, 1)
    if state != "COMPLETED":
        tail = [line for line in output.splitlines() if line.strip()][-1:] or [""]
        return SmokeResult(job_id, False, f"job {job_id} {state} (exit {code}); last line: "
                           f"{tail[0][:160]}", [], str(log), seconds)
    passed, why, ranks = verdict(output, world)
    return SmokeResult(job_id, passed, why, ranks, str(log), seconds)


def _wait_job(job_id: str, timeout: float) -> tuple[str, str, str]:
    """(final state, batch host, exit code) of a job; cancels it after ``timeout``."""
    deadline = time.monotonic() + timeout
    fields: dict[str, str] = {}
    while True:
        text = run_slurm(["scontrol", "show", "job", "-o", job_id])
        fields = dict(re.findall(r"(\w+)=(\S*)", text))
        state = fields.get("JobState", "UNKNOWN")
        if state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED"):
            return state, fields.get("BatchHost", ""), fields.get("ExitCode", "")
        if time.monotonic() > deadline:
            with contextlib.suppress(SlurmError):
                run_slurm(["scancel", job_id])
            return "TIMEOUT", fields.get("BatchHost", ""), ""
        time.sleep(0.5)
