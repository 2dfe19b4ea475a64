"""The training smoke job: the last gate before a node is in service.

gpuctl submits the job through Slurm itself: ``sbcast`` puts the training program
(``smoke_train.py``) on every node, then ``srun`` starts one ``torchrun`` per node with
one process per GPU asked for (NCCL on GPUs, gloo on CPUs). A job passes when it exits
0, every rank reported, every rank's loss fell and all ranks end with the same weights
checksum.

Each node first runs the job alone (all at once), so a bad node is named and the others
go on; the nodes that passed then run it together (the collective across nodes). The
job takes whole nodes as a training job would (``--exclusive --mem=0``: sbatch(1), "a
memory size specification of zero ... grants the job access to all of the memory on
each node"), and passes its CPUs per task to ``srun`` explicitly (Slurm 22.05
RELEASE_NOTES: "srun will no longer read in SLURM_CPUS_PER_TASK ... you will implicitly
have to specify --cpus-per-task on your srun calls"). The rendezvous is the head
node's address as gpuctl wrote it (``NodeAddr=``), not its name.

No fixed file names: gpuctl makes one directory with a random name on every node
(``mkdir -m 700``, which fails rather than follow anything already there; owned by the
submitting user) for the program and the job's output, reads the output back from the
batch node over its SSH (no shared filesystem assumed) and removes the directory. The
job may be submitted as a non-root user (``--smoke-user``, for sites with
``DisableRootJobs``) and inside a reservation (``--reservation``).
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import shlex
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from provisioner.errors import GpuctlError, InputError
from provisioner.slurm.client import SlurmError, fields_of, run_slurm
from provisioner.ssh.exec import Target, run_on_each, run_on_node
from provisioner.ssh.hostkeys import KnownHosts

TRAIN = Path(__file__).with_name("smoke_train.py")
# The loss must end below this fraction of where it started.
LOSS_DROP = 0.9
# A POSIX user name as useradd(8) takes it by default (NAME_REGEX).
USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


@dataclass
class SmokeResult:
    job_id: str
    passed: bool
    reason: str
    ranks: list[dict[str, Any]] = field(default_factory=list)
    log: str = ""
    seconds: float = 0.0
    # Each node's verdict: "" when it passed, else why.
    nodes: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def batch_script(nodes: list[Target], procs: int, python: str, env: str, steps: int,
                 partition: str | None, gres: str, minutes: int, *, work: str,
                 cpus_per_task: int, reservation: str | None = None) -> str:
    """The sbatch script (sbatch(1), srun(1), sbcast(1) options)."""
    heredoc = TRAIN.read_text()
    lines = ["#!/bin/bash", "#SBATCH --job-name=gpuctl-smoke",
             f"#SBATCH --nodes={len(nodes)}",
             f"#SBATCH --nodelist={','.join(n.name for n in nodes)}",
             "#SBATCH --ntasks-per-node=1", f"#SBATCH --cpus-per-task={cpus_per_task}",
             "#SBATCH --exclusive", "#SBATCH --mem=0", f"#SBATCH --gres={gres}",
             f"#SBATCH --output={work}/%j.out", f"#SBATCH --time={minutes}"]
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    if reservation:
        lines.append(f"#SBATCH --reservation={reservation}")
    cases = " ".join(f"{shlex.quote(n.name)}) addr={shlex.quote(n.address)} ;;"
                     for n in nodes)
    lines += [
        "set -euo pipefail",
        f'prog="{work}/smoke-$SLURM_JOB_ID.py"',
        "cat > \"$prog\" <<'GPUCTL_SMOKE_EOF'", heredoc.rstrip("\n"), "GPUCTL_SMOKE_EOF",
        '# every node gets the program through Slurm (no shared filesystem needed)',
        'sbcast --force "$prog" "$prog"',
        'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        # The rendezvous at the address gpuctl wrote as the head's NodeAddr.
        f'case "$head" in {cases} *) echo "no address for $head" >&2; exit 1 ;; esac',
        'port=$((29500 + SLURM_JOB_ID % 1000))',
        f"srun --kill-on-bad-exit=1 --cpus-per-task={cpus_per_task} env {env} "
        f"{shlex.quote(python)} -m torch.distributed.run "
        f'--nnodes="$SLURM_NNODES" --nproc-per-node={procs} --rdzv-backend=c10d '
        '--rdzv-endpoint="$addr:$port" --rdzv-id="$SLURM_JOB_ID" '
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
              steps: int = 200, procs: int | None = None, timeout: float = 600,
              reservation: str | None = None, user: str | None = None,
              cpus_per_task: int = 1) -> SmokeResult:
    """Run the smoke job on each node alone, then on the nodes that passed together
    (see the module docstring); ``nodes`` of the result has each node's verdict.

    Raises:
        InputError: ``user`` is not a user name.
    """
    if user is not None and not USER.fullmatch(user):
        raise InputError(f"--smoke-user {user[:40]!r} is not a user name")
    procs = procs or gpus_per_node
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    # On the nodes, made with mkdir -m 700, which fails on anything already there.
    work = f"/tmp/gpuctl-smoke-{secrets.token_hex(8)}"  # noqa: S108
    job = _Job(known_hosts, log_dir, work, user, dict(
        procs=procs, python=python, env=env, steps=steps, partition=partition,
        gres=f"gpu:{gpus_per_node}", minutes=max(1, int(timeout // 60)),
        cpus_per_task=max(1, cpus_per_task), reservation=reservation), timeout)
    verdicts = job.prepare(nodes)
    ready = [n for n in nodes if not verdicts[n.name]]
    final = None
    # Not a with-block: an interruption must stop the waiting workers (job.cancel)
    # before the pool waits for them.
    pool = ThreadPoolExecutor(max_workers=min(32, max(1, len(ready))))
    try:
        alone = dict(zip([n.name for n in ready],
                         pool.map(lambda n: job.run([n], n.name), ready), strict=True))
        for name, result in alone.items():
            verdicts[name] = "" if result.passed else f"alone: {result.reason}"
        together = [n for n in nodes if not verdicts[n.name]]
        if len(together) > 1:
            final = job.run(together, "all")
            if not final.passed:
                verdicts.update({n.name: f"across nodes: {final.reason}" for n in together})
    except BaseException:
        job.cancel()  # interrupted: no job of gpuctl's runs on
        raise
    finally:
        pool.shutdown(wait=True)
        job.clean(nodes)
    shown = final or next(iter(alone.values()), None)
    failed = {n: why for n, why in verdicts.items() if why}
    reason = (f"{len(failed)} of {len(nodes)} nodes failed; {next(iter(failed))}: "
              f"{next(iter(failed.values()))}" if failed else
              (shown.reason if shown else "no node"))
    ranks = final.ranks if final else [r for res in alone.values() for r in res.ranks]
    return SmokeResult(shown.job_id if shown else "", not failed, reason, ranks,
                       shown.log if shown else "", round(time.monotonic() - started, 1),
                       verdicts)


class _Job:
    """One smoke job at a time, with the run's private directory on the nodes."""

    def __init__(self, known: KnownHosts, log_dir: Path, work: str, user: str | None,
                 script: dict[str, Any], timeout: float) -> None:
        self.known, self.log_dir, self.work, self.user = known, log_dir, work, user
        self.script, self.timeout = script, timeout
        self.stop = threading.Event()
        self.submitted: list[str] = []

    def cancel(self) -> None:
        """Stop waiting, and cancel every job submitted (they may still run)."""
        self.stop.set()
        if self.submitted:
            with contextlib.suppress(SlurmError):
                run_slurm(["scancel", *self.submitted], timeout=30)

    def _on_each(self, nodes: list[Target], command: str) -> dict[str, str]:
        """``command`` on each node: node -> "" when it succeeded, else why."""
        out = {}
        for name, res in run_on_each(nodes, command, known_hosts=self.known,
                                     command_timeout=30).items():
            if isinstance(res, GpuctlError):
                out[name] = str(res)
            else:
                out[name] = "" if res.exit_code == 0 else \
                    res.stderr.decode("utf-8", "replace").strip()[-160:]
        return out

    def prepare(self, nodes: list[Target]) -> dict[str, str]:
        """The private directory on every node: node -> "" or why it could not be."""
        command = f"mkdir -m 700 {self.work}" + (
            f" && chown {self.user}: {self.work}" if self.user else "")
        return {name: f"cannot make the job's directory: {why}" if why else ""
                for name, why in self._on_each(nodes, command).items()}

    def clean(self, nodes: list[Target]) -> None:
        self._on_each(nodes, f"rm -rf {self.work}")

    def run(self, nodes: list[Target], tag: str) -> SmokeResult:
        """Submit the job on ``nodes``, wait for it, judge its output."""
        script = batch_script(nodes, work=self.work, **self.script)
        (self.log_dir / f"smoke-{tag}.sbatch").write_text(script)
        started = time.monotonic()
        argv = ["sbatch", "--parsable"]
        if self.user:
            argv = ["runuser", "-u", self.user, "--", *argv]
        try:
            # The script on standard input: the user need not read gpuctl's files.
            job_id = run_slurm(argv, input_text=script).strip().split(";")[0]
        except SlurmError as exc:
            return SmokeResult("", False, str(exc), log=str(self.log_dir))
        if not job_id.isdigit():  # a site's cli_filter may print on sbatch's stdout
            return SmokeResult("", False, f"sbatch printed no job id: {job_id[:80]!r}",
                               log=str(self.log_dir))
        self.submitted.append(job_id)
        state, host, code = _wait_job(job_id, self.timeout, self.stop)
        by_name = {n.name: n for n in nodes}
        output = ""
        if host in by_name:
            try:
                res = run_on_node(by_name[host], f"cat {self.work}/{job_id}.out",
                                  known_hosts=self.known, max_output=4 * 1024 * 1024)
                output = res.stdout.decode("utf-8", "replace")
            except GpuctlError as exc:
                output = f"(cannot read the job's output from {host}: {exc})"
        log = self.log_dir / f"smoke-{tag}.out"
        log.write_text(output)
        seconds = round(time.monotonic() - started, 1)
        if state != "COMPLETED":
            tail = [line for line in output.splitlines() if line.strip()][-1:] or [""]
            return SmokeResult(job_id, False, f"job {job_id} {state} (exit {code}); last "
                               f"line: {tail[0][:160]}", [], str(log), seconds)
        passed, why, ranks = verdict(output, self.script["procs"] * len(nodes))
        return SmokeResult(job_id, passed, why, ranks, str(log), seconds)


def _wait_job(job_id: str, timeout: float, stop: threading.Event) -> tuple[str, str, str]:
    """(final state, batch host, exit code) of a job; cancels it after ``timeout`` or
    once ``stop`` is set."""
    deadline = time.monotonic() + timeout
    fields: dict[str, str] = {}
    while True:
        text = run_slurm(["scontrol", "show", "job", "-o", job_id])
        fields = fields_of(text)
        state = fields.get("JobState", "UNKNOWN")
        if state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED"):
            return state, fields.get("BatchHost", ""), fields.get("ExitCode", "")
        if time.monotonic() > deadline or stop.is_set():
            with contextlib.suppress(SlurmError):
                run_slurm(["scancel", job_id])
            return "TIMEOUT" if not stop.is_set() else "CANCELLED", \
                fields.get("BatchHost", ""), ""
        stop.wait(0.5)
