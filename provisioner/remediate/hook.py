"""The RMA site hook: the one place gpuctl tells a site's ticketing that a node needs
hands on it. Called once per RMA by whoever closes the remediation as ``rma``.

A command runs as an argv list (never through a shell) with the node and the evidence
bundle as its last two arguments and as ``GPUCTL_NODE``/``GPUCTL_EVIDENCE``; a URL gets
a JSON POST. Either way the hook has a deadline, and its failure comes back as a
``HookResult``: a ticket that could not be opened is reported, and the monitor's loop
goes on.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from provisioner.remediate.policy import RmaHook

_OUTPUT_CAP = 2000  # characters of the hook's own words kept for the report


@dataclass(frozen=True)
class HookResult:
    """``ok``: the hook accepted the ticket; ``ran``: a hook is configured and was
    tried; ``detail``: its exit status or HTTP status and its words, or why it failed."""

    ok: bool
    ran: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_rma_hook(hook: RmaHook, *, node: str, evidence: Path,
                 payload: dict[str, Any] | None = None) -> HookResult:
    """Tell the site's hook that ``node`` goes to RMA, with its evidence bundle.

    Args:
        hook: the policy's ``rma_hook``.
        node: the node's name.
        evidence: the evidence bundle (a file or directory) for the ticket.
        payload: more fields for the webhook's JSON (the decision, the findings).

    Never raises for the hook's own failure (a missing command, a timeout, an HTTP
    error, a refused connection): those come back as ``ok=False`` with the reason.
    """
    if hook.command:
        return _run_command(hook, node, evidence)
    if hook.url:
        body = {"node": node, "evidence": str(evidence), "event": "rma", **(payload or {})}
        return _post(hook, body)
    return HookResult(False, False, "no rma_hook configured: no ticket opened")


def _run_command(hook: RmaHook, node: str, evidence: Path) -> HookResult:
    argv = [*hook.command, node, str(evidence)]
    # A minimal environment: the site's script gets no variable of gpuctl's (BMC
    # passwords by `env:` reference live there).
    env = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "HOME", "TZ")
           if k in os.environ} | {"GPUCTL_NODE": node, "GPUCTL_EVIDENCE": str(evidence)}
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=hook.timeout_s,
                              env=env, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return HookResult(False, True, f"{argv[0]}: no answer within {hook.timeout_s:g} s")
    except OSError as exc:
        return HookResult(False, True, f"{argv[0]}: could not run ({exc.strerror or exc})")
    words = " ".join((proc.stdout + " " + proc.stderr).split())[:_OUTPUT_CAP]
    if proc.returncode != 0:
        return HookResult(False, True, f"{argv[0]} exited {proc.returncode}: {words}")
    return HookResult(True, True, words or f"{argv[0]} exited 0")


def _post(hook: RmaHook, body: dict[str, Any]) -> HookResult:
    # Checked again here: a policy built in code skips the loader's check.
    if urlparse(hook.url).scheme not in ("http", "https"):
        return HookResult(False, True, f"{hook.url}: only http(s) URLs are called")
    request = urllib.request.Request(  # noqa: S310 (scheme checked above: http(s) only)
        hook.url, data=json.dumps(body, default=str).encode(), method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "gpuctl-rma-hook"})
    try:
        # noqa reason: the scheme is checked above (http and https only, no file://).
        with urllib.request.urlopen(request, timeout=hook.timeout_s) as resp:  # noqa: S310
            words = resp.read(_OUTPUT_CAP).decode(errors="replace")
            return HookResult(True, True, f"HTTP {resp.status}: {' '.join(words.split())}")
    except urllib.error.HTTPError as exc:
        words = exc.read(_OUTPUT_CAP).decode(errors="replace")
        return HookResult(False, True, f"{hook.url}: HTTP {exc.code}: {' '.join(words.split())}")
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return HookResult(False, True, f"{hook.url}: {reason}")
