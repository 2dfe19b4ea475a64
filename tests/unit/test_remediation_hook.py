"""The RMA site hook: a command (argv, no shell) or a webhook on loopback; a timeout or
a failure is reported, never raised."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from provisioner.remediate.hook import run_rma_hook
from provisioner.remediate.policy import RmaHook

RECORD = """
import json, os, sys
with open(sys.argv[1], "w") as out:
    json.dump({"argv": sys.argv[2:], "node": os.environ["GPUCTL_NODE"],
               "evidence": os.environ["GPUCTL_EVIDENCE"]}, out)
print("ticket GPU-123 opened")
"""


def test_command_hook_gets_node_and_evidence_as_arguments_and_env(tmp_path: Path) -> None:
    seen = tmp_path / "seen.json"
    # "$(reboot)" would run under a shell; here it is only an argument.
    hook = RmaHook(command=(sys.executable, "-c", RECORD, str(seen), "--queue=$(reboot)"),
                   timeout_s=20)
    result = run_rma_hook(hook, node="gpu1", evidence=tmp_path / "bundle.tgz")
    assert (result.ok, result.ran) == (True, True)
    assert result.detail == "ticket GPU-123 opened"
    assert json.loads(seen.read_text()) == {
        "argv": ["--queue=$(reboot)", "gpu1", str(tmp_path / "bundle.tgz")],
        "node": "gpu1", "evidence": str(tmp_path / "bundle.tgz")}


def test_command_hook_gets_no_variable_of_gpuctls(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """BMC passwords by `env:` reference live in gpuctl's environment: the site's
    script does not inherit them (review of issue 24)."""
    monkeypatch.setenv("BMC_PW", "S3cret-not-for-tickets")
    seen = tmp_path / "env.json"
    dump = "import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], 'w'))"
    hook = RmaHook(command=(sys.executable, "-c", dump, str(seen)), timeout_s=20)
    assert run_rma_hook(hook, node="gpu1", evidence=tmp_path / "b.json").ok
    env = json.loads(seen.read_text())
    assert "BMC_PW" not in env and env["GPUCTL_NODE"] == "gpu1"


def test_command_hook_failure_timeout_and_missing_command(tmp_path: Path) -> None:
    failing = RmaHook(command=(sys.executable, "-c",
                               "import sys; print('queue full'); sys.exit(3)"), timeout_s=20)
    result = run_rma_hook(failing, node="gpu1", evidence=tmp_path)
    assert (result.ok, result.ran) == (False, True)
    assert result.detail.endswith("exited 3: queue full")
    slow = RmaHook(command=(sys.executable, "-c", "import time; time.sleep(30)"),
                   timeout_s=0.5)
    started = time.monotonic()
    result = run_rma_hook(slow, node="gpu1", evidence=tmp_path)
    assert time.monotonic() - started < 10
    assert not result.ok and "no answer within 0.5 s" in result.detail
    missing = RmaHook(command=(str(tmp_path / "no-such-ticket-tool"),))
    result = run_rma_hook(missing, node="gpu1", evidence=tmp_path)
    assert not result.ok and "could not run" in result.detail


def test_no_hook_configured_opens_no_ticket(tmp_path: Path) -> None:
    result = run_rma_hook(RmaHook(), node="gpu1", evidence=tmp_path)
    assert (result.ok, result.ran) == (False, False)
    assert "no ticket opened" in result.detail


class _Tickets(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []
    status = 201
    delay = 0.0

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append({"path": self.path, "json": json.loads(body),
                                    "type": self.headers["Content-Type"]})
        time.sleep(type(self).delay)
        self.send_response(type(self).status)
        self.end_headers()
        self.wfile.write(b'{"ticket": "GPU-7"}')

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def tickets() -> Iterator[tuple[str, type[_Tickets]]]:
    handler = type("Tickets", (_Tickets,), {"received": [], "status": 201, "delay": 0.0})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/rma", handler
    finally:
        server.shutdown()
        server.server_close()


def test_webhook_posts_json_to_loopback(tickets: tuple[str, type[_Tickets]],
                                        tmp_path: Path) -> None:
    url, handler = tickets
    result = run_rma_hook(RmaHook(url=url, timeout_s=10), node="gpu1",
                          evidence=tmp_path / "bundle", payload={"fault": "xid-79"})
    assert result.ok and result.detail == 'HTTP 201: {"ticket": "GPU-7"}'
    assert handler.received == [{"path": "/rma", "type": "application/json", "json": {
        "node": "gpu1", "evidence": str(tmp_path / "bundle"), "event": "rma",
        "fault": "xid-79"}}]


def test_webhook_error_timeout_and_refused(tickets: tuple[str, type[_Tickets]],
                                           tmp_path: Path) -> None:
    url, handler = tickets
    handler.status = 503
    result = run_rma_hook(RmaHook(url=url, timeout_s=10), node="gpu1", evidence=tmp_path)
    assert not result.ok and "HTTP 503" in result.detail
    handler.status, handler.delay = 201, 1.0
    result = run_rma_hook(RmaHook(url=url, timeout_s=0.3), node="gpu1", evidence=tmp_path)
    assert not result.ok and result.ran and "timed out" in result.detail
    handler.delay = 0.0
    # A port nothing listens on (the fixture's server is still up; this one is closed).
    closed = HTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = closed.server_address[1]
    closed.server_close()
    result = run_rma_hook(RmaHook(url=f"http://127.0.0.1:{port}/", timeout_s=5),
                          node="gpu1", evidence=tmp_path)
    assert not result.ok and "refused" in result.detail.lower()


def test_webhook_other_schemes_are_not_called(tmp_path: Path) -> None:
    result = run_rma_hook(RmaHook(url="file:///etc/passwd"), node="gpu1", evidence=tmp_path)
    assert not result.ok and "only http(s)" in result.detail
