"""Every SSH wait has a deadline: a real paramiko server on a socket pair (in process)
that stalls at each step a hostile or hung node can stall at; ``run_on_node`` returns
within its timeout (plus the watchdog's half second) with the node named."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko
import pytest

from provisioner.ssh import exec as ssh_exec
from provisioner.ssh.exec import CommandTimeout, Target, Unreachable, run_on_node
from provisioner.ssh.hostkeys import KnownHosts

HOST_KEY = paramiko.RSAKey.generate(2048)
CLIENT_KEY = paramiko.RSAKey.generate(2048)


class Node(paramiko.ServerInterface):
    def __init__(self, stall: str) -> None:
        self.stall = stall

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        if self.stall == "auth":
            time.sleep(30)
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        if self.stall == "exec":
            time.sleep(30)  # never answers the exec request

        def run() -> None:
            time.sleep(0.2)  # as sshd: the exec request is answered before the command runs
            if self.stall == "no-status":  # output ends, the command never does
                channel.shutdown_write()
            elif self.stall == "stderr-flood":
                while True:
                    channel.send_stderr(b"e" * 32768)
            elif self.stall == "ok":
                channel.sendall(b"hello\n")
                channel.send_exit_status(0)
                channel.close()

        threading.Thread(target=run, daemon=True).start()
        return True


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., object]]:
    key_path = tmp_path / "id"
    CLIENT_KEY.write_private_key_file(str(key_path))

    def run(stall: str, connect_timeout: float = 2, command_timeout: float = 2) -> object:
        ours, theirs = socket.socketpair()
        server = paramiko.Transport(theirs)
        server.add_server_key(HOST_KEY)
        threading.Thread(target=server.start_server, kwargs={"server": Node(stall)},
                         daemon=True).start()
        monkeypatch.setattr(ssh_exec.socket, "create_connection", lambda *a, **k: ours)
        start = time.monotonic()
        try:
            return run_on_node(Target("hostile", "127.0.0.1", 22, "root", str(key_path)),
                               "probe", known_hosts=KnownHosts(tmp_path / "known_hosts"),
                               accept_new=True, connect_timeout=connect_timeout,
                               command_timeout=command_timeout)
        except (CommandTimeout, Unreachable) as exc:
            return exc, time.monotonic() - start
        finally:
            server.close()

    yield run


def test_a_healthy_node_answers(node) -> None:  # type: ignore[no-untyped-def]
    result = node("ok")
    assert not isinstance(result, tuple), result
    assert result.exit_code == 0 and result.stdout == b"hello\n"


@pytest.mark.parametrize("stall", ["exec", "no-status", "stderr-flood"])
def test_a_command_that_never_ends_is_timed_out(node, stall: str) -> None:  # type: ignore[no-untyped-def]
    exc, seconds = node(stall, command_timeout=1)
    assert isinstance(exc, CommandTimeout) and str(exc) == "hostile: timed out after 1 s"
    assert seconds < 1 + 1, seconds


def test_a_node_stalling_authentication_is_unreachable(node) -> None:  # type: ignore[no-untyped-def]
    exc, seconds = node("auth", connect_timeout=1)
    assert isinstance(exc, Unreachable) and "timed out after 1 s" in str(exc), exc
    assert seconds < 1 + 1, seconds
