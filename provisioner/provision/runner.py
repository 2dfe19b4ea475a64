"""The one way gpuctl runs Ansible: ansible-runner, with events handed to a queue.

``RunnerJob`` prepares the private data dir and starts ansible-runner in its own thread;
every per-host task event becomes a :class:`TaskEvent` on ``events``. The caller drains
the queue (to the database and the progress display) and may cancel the job.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ansible_runner
import ansible_runner.interface

from provisioner.errors import GpuctlError

HOST_EVENTS = {
    "runner_on_ok": "ok", "runner_on_failed": "failed", "runner_on_skipped": "skipped",
    "runner_on_unreachable": "unreachable",
}
MAX_MESSAGE = 2000


@dataclass
class TaskEvent:
    host: str
    task: str
    role: str | None
    action: str | None
    status: str  # ok | changed | failed | skipped | unreachable | started
    message: str
    seconds: float | None


def _message(res: dict[str, Any]) -> str:
    parts = []
    for key in ("msg", "stderr", "module_stderr", "reason"):
        value = res.get(key)
        if isinstance(value, str) and value.strip() and value.strip() not in parts:
            parts.append(value.strip())
    if not parts and isinstance(res.get("stdout"), str):
        parts.append(res["stdout"].strip()[-500:])
    text = " | ".join(parts)
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def to_task_event(event: dict[str, Any]) -> TaskEvent | None:
    """Turn one ansible-runner event into a TaskEvent (None for other events)."""
    kind = event.get("event")
    data = event.get("event_data") or {}
    if kind == "runner_on_start":
        return TaskEvent(data.get("host", "?"), data.get("task", "?"), data.get("role"),
                         data.get("task_action"), "started", "", None)
    if kind not in HOST_EVENTS:
        return None
    res = data.get("res") or {}
    status = HOST_EVENTS[kind]
    if status == "ok" and res.get("changed"):
        status = "changed"
    if status == "failed" and data.get("ignore_errors"):
        status = "ok"
    return TaskEvent(data.get("host", "?"), data.get("task", "?"), data.get("role"),
                     data.get("task_action"), status, _message(res) if status in
                     ("failed", "unreachable") else "", data.get("duration"))


# gpuctl's own settings (GPUCTL_DB may carry a PostgreSQL password), libpq's, and
# anything named like a secret never reach Ansible's environment (nor, through
# ansible-runner, the run's artifacts on disk). A *_FILE variable names a file, not a
# secret (ANSIBLE_VAULT_PASSWORD_FILE): it stays.
_OURS = re.compile(r"^(GPUCTL_|PG)", re.IGNORECASE)
_SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL", re.IGNORECASE)


def scrub_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` without the variables gpuctl must not hand to Ansible (see above)."""
    return {k: v for k, v in env.items() if not _OURS.search(k) and not (
        _SECRET_NAME.search(k) and not k.upper().endswith("_FILE"))}


class RunnerJob:
    """One ansible-playbook run through ansible-runner."""

    def __init__(self, *, run_dir: Path, project: Path, playbook: str, inventory: Path,
                 limit: list[str], tags: str | None, forks: int, check: bool, diff: bool,
                 become_password: str | None, vault_password_file: str | None) -> None:
        self.events: queue.Queue[TaskEvent] = queue.Queue()
        self.cancelled = threading.Event()
        cmdline = []
        if check:
            cmdline.append("--check")
        if diff:
            cmdline.append("--diff")
        self._secret_dir: Path | None = None
        if become_password is not None:
            cmdline += ["--become-password-file", str(self._feed_secret(become_password))]
        if vault_password_file:
            cmdline += ["--vault-password-file", vault_password_file]
        shutil.rmtree(run_dir / "artifacts", ignore_errors=True)
        # Use the ansible-core installed beside gpuctl, even without an activated venv.
        bin_dir = Path(sys.executable).parent
        self._kwargs: dict[str, Any] = dict(
            private_data_dir=str(run_dir), project_dir=str(project), playbook=playbook,
            inventory=str(inventory), limit=",".join(limit), tags=tags, forks=forks,
            cmdline=" ".join(cmdline) or None, quiet=True,
            envvars={"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                     # ansible-runner sets this to False unless it is given: Ansible then
                     # passes -o StrictHostKeyChecking=no ahead of gpuctl's =yes, and
                     # OpenSSH takes the first, so a changed host key went through.
                     "ANSIBLE_HOST_KEY_CHECKING": "True",
                     "ANSIBLE_LOCAL_TEMP": str(run_dir / "tmp"), "ANSIBLE_RETRY_FILES_ENABLED":
                     "False", "ANSIBLE_FORCE_COLOR": "False", "ANSIBLE_NOCOLOR": "True"},
            settings={"suppress_ansible_output": True, "job_timeout": 0},
            event_handler=self._on_event, cancel_callback=self.cancelled.is_set,
        )
        self.thread: threading.Thread | None = None
        self.runner: Any = None

    def _feed_secret(self, secret: str) -> Path:
        """Hand ``secret`` to ansible-playbook through a named pipe: it is read once and
        never written to a file (ansible-runner would keep its ``passwords`` on disk)."""
        self._secret_dir = Path(tempfile.mkdtemp(prefix="gpuctl-secret-"))
        fifo = self._secret_dir / "become"
        os.mkfifo(fifo, 0o600)

        def feed() -> None:
            with contextlib.suppress(OSError), open(fifo, "w") as fh:
                fh.write(secret + "\n")

        threading.Thread(target=feed, daemon=True, name="gpuctl-become-feed").start()
        return fifo

    def cleanup(self) -> None:
        """Remove the secret pipe; unblock its writer if Ansible never read it."""
        if self._secret_dir is None:
            return
        fifo = self._secret_dir / "become"
        with contextlib.suppress(OSError):
            fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
            os.close(fd)
        shutil.rmtree(self._secret_dir, ignore_errors=True)
        self._secret_dir = None

    def _on_event(self, event: dict[str, Any]) -> bool:
        task_event = to_task_event(event)
        if task_event is not None:
            self.events.put(task_event)
        # Results go to the database; keeping ansible-runner's per-event JSON files on
        # disk too would only duplicate them (and any output a task printed).
        return False

    def start(self) -> None:
        try:
            # ansible_runner.run_async, with the environment cleaned between preparing
            # and running: ansible-runner seeds it from ours and writes it, whole, into
            # the run's artifacts/<id>/command.
            runner = ansible_runner.interface.init_runner(**self._kwargs)
            runner.config.env = scrub_env(runner.config.env)
            self.runner = runner
            self.thread = threading.Thread(target=runner.run, name="gpuctl-ansible-runner")
            self.thread.start()
        except (ansible_runner.exceptions.ConfigurationError, OSError) as exc:
            raise GpuctlError(f"cannot start ansible-runner: {exc}") from exc

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    @property
    def status(self) -> str:
        return str(self.runner.status) if self.runner is not None else "unstarted"

    @property
    def rc(self) -> int | None:
        return self.runner.rc if self.runner is not None else None

    def kill_leftovers(self) -> int:
        """Kill processes of this run still alive after a cancel: Ansible's workers run
        in sessions of their own, so stopping ansible-playbook does not stop them."""
        marker = str(self._kwargs["inventory"]).encode()
        killed = 0
        for pid_dir in Path("/proc").iterdir():
            if not pid_dir.name.isdigit() or int(pid_dir.name) == os.getpid():
                continue
            try:
                if marker in (pid_dir / "cmdline").read_bytes():
                    os.kill(int(pid_dir.name), signal.SIGKILL)
                    killed += 1
            except (OSError, ValueError):
                continue
        return killed

    def stdout_tail(self, chars: int = 600) -> str:
        try:
            return str(self.runner.stdout.read())[-chars:] if self.runner else ""
        except (OSError, AttributeError):
            return ""
