"""The shell commands that run the burn-in agent on a node, over SSH."""

from __future__ import annotations

import re
import shlex
from importlib import resources
from typing import Any

from provisioner.burnin.levels import LEVELS
from provisioner.errors import InputError

DEFAULT_PYTHON = "/opt/gpuctl/burnin/bin/python3"


def agent_script() -> bytes:
    return resources.files("provisioner.burnin").joinpath("agent.py").read_bytes()


_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,63}$")


def burnin_env(host_vars: dict[str, Any]) -> dict[str, str]:
    """Host variable ``gpuctl_burnin_env``: ``NAME=value`` pairs separated by spaces
    (for example ``NCCL_IB_HCA=mlx5 NCCL_SOCKET_IFNAME=bond0``) set for the agent.

    Raises:
        InputError: a pair that is not NAME=value with an upper-case shell name.
    """
    out = {}
    for pair in str(host_vars.get("gpuctl_burnin_env") or "").split():
        key, sep, value = pair.partition("=")
        if not sep or not _ENV_NAME.fullmatch(key):
            raise InputError(f"gpuctl_burnin_env: {pair[:60]!r} is not NAME=value")
        out[key] = value
    return out


def _with_agent_file(env: dict[str, str] | None, command: str, size: int) -> str:
    """A shell command that saves the agent (the first ``size`` bytes sent on stdin) to a
    private temp dir on the node, runs ``command`` there with ``env`` set ("$d/agent.py"
    is the agent: its collectives start worker processes that re-import it from its
    file; TMPDIR is the dir too, so multiprocessing's socket dir, which the agent's
    os._exit leaves, goes with it), then removes the dir and exits with the command's
    status. The rest of stdin stays open for the whole run: the agent's watchdog ends the
    run when it closes."""
    exports = "".join(f"{k}={shlex.quote(v)} " for k, v in sorted((env or {}).items()))
    return ('d=$(mktemp -d /tmp/gpuctl-burnin.XXXXXX) && trap \'rm -rf "$d"\' EXIT && '
            "trap 'exit 143' TERM HUP INT && "
            f'head -c {size} > "$d/agent.py" && cd "$d" && TMPDIR="$d" {exports}{command}')


def _agent_command(python: str, level: str, seconds: float | None,
                   env: dict[str, str] | None = None, size: int = 0, seed: int = 0) -> str:
    lv = LEVELS[level]
    args = f"--level {level} --scale {lv.scale:g} --watch-stdin --deadline {lv.timeout_s:g}" \
        + f" --seed {seed}" + (f" --seconds {seconds:g}" if seconds else "")
    return _with_agent_file(env, f'{shlex.quote(python)} "$d/agent.py" {args}', size)



def _torchrun_command(python: str, nodes: int, procs: int, endpoint: str, is_host: bool,
                      local_addr: str, rdzv_id: str, env: dict[str, str], size: int,
                      deadline_s: float) -> str:
    # torchrun's workers may not inherit the SSH channel as stdin, so they stop on the
    # level's deadline only (and gpuctl's Ctrl-C handler pkills them).
    return _with_agent_file(env, (
        f"{shlex.quote(python)} -m torch.distributed.run "
        f"--nnodes={nodes} --nproc-per-node={procs} --rdzv-backend=c10d "
        f"--rdzv-endpoint={shlex.quote(endpoint)} --rdzv-id={shlex.quote(rdzv_id)} "
        f"--rdzv-conf=is_host={int(is_host)},join_timeout=120 "
        f"--local-addr={shlex.quote(local_addr)} --max-restarts=0 "
        f'"$d/agent.py" --multinode --deadline {deadline_s:g}'), size)
