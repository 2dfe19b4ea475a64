"""The one way gpuctl runs a command on a node: one connection, one exec.

paramiko's Transport is used directly so that nothing but the node's own known_hosts
entry, the node's key file and our timeouts are in play: no agent, no ~/.ssh/config,
no system known_hosts, no ProxyCommand.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import paramiko

from provisioner.errors import GpuctlError
from provisioner.ssh.hostkeys import KnownHosts

if TYPE_CHECKING:
    from provisioner.db.models import Node

# paramiko logs a traceback for every peer that is not an SSH server; the one-line
# Unreachable error below already says what happened.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False


class SshError(GpuctlError):
    """The node could not be reached or the command could not be run."""


class Unreachable(SshError):
    pass


class AuthFailed(SshError):
    pass


class OutputTooLarge(SshError):
    pass


class CommandTimeout(SshError):
    pass


@dataclass(frozen=True)
class Target:
    """Where and how to reach one node."""

    name: str
    address: str
    port: int = 22
    user: str = "root"
    key_path: str | None = None

    @classmethod
    def of(cls, node: Node) -> Target:
        """Where and how to reach a registered node."""
        return cls(node.name, node.address, node.port, node.user, node.key_path)


@dataclass
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    hostkey_added: bool = False


_keys_lock = threading.Lock()
_key_cache: dict[str, paramiko.PKey] = {}


def load_key(path: str) -> paramiko.PKey:
    """Load (once per process) a private key file.

    Raises:
        AuthFailed: the file is missing, unreadable or not a supported key.
    """
    with _keys_lock:
        if path in _key_cache:
            return _key_cache[path]
        try:
            key = paramiko.PKey.from_path(Path(path).expanduser())
        except FileNotFoundError:
            raise AuthFailed(f"SSH key {path} does not exist") from None
        except (OSError, paramiko.SSHException, ValueError) as exc:
            raise AuthFailed(f"cannot load SSH key {path}: {exc}") from None
        _key_cache[path] = key
        return key


def _timed_out(name: str, seconds: float) -> CommandTimeout:
    return CommandTimeout(f"{name}: timed out after {seconds:g} s")


def _read_capped(chan: paramiko.Channel, max_output: int, deadline: float,
                 name: str, seconds: float) -> tuple[bytes, bytes]:
    out, err = bytearray(), bytearray()
    chan.settimeout(0.05)
    while True:
        if time.monotonic() > deadline:
            raise _timed_out(name, seconds)
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(65536)[: max(0, 65536 - len(err))]
        try:
            data = chan.recv(65536)
        except TimeoutError:
            continue
        if not data:
            break
        out += data
        if len(out) > max_output:
            raise OutputTooLarge(f"{name}: output exceeded {max_output // (1024 * 1024)} MiB; "
                                 "discarded")
    while chan.recv_stderr_ready():
        err += chan.recv_stderr(65536)[: max(0, 65536 - len(err))]
    return bytes(out), bytes(err)


def run_on_node(
    target: Target,
    command: str,
    *,
    known_hosts: KnownHosts,
    stdin_data: bytes = b"",
    keep_stdin_open: bool = False,
    accept_new: bool = False,
    connect_timeout: float = 10.0,
    command_timeout: float = 120.0,
    max_output: int = 16 * 1024 * 1024,
) -> ExecResult:
    """Connect, verify the host key, authenticate with the node's key, run ``command``.

    With ``keep_stdin_open`` the command's stdin stays open after ``stdin_data`` until
    the command ends or this process dies: the remote side reads end-of-file exactly
    when gpuctl is gone (the burn-in agent's watchdog).

    Raises:
        Unreachable: TCP connect or SSH handshake failed or timed out.
        HostKeyUnknown / HostKeyChanged: the host key policy refused the node.
        AuthFailed: the key was refused or could not be loaded.
        CommandTimeout / OutputTooLarge: the command overran its limits.
    """
    name = target.name
    if not target.key_path:
        raise AuthFailed(f"{name}: no SSH key set (gpuctl nodes add ... --key FILE)")
    pkey = load_key(target.key_path)
    try:
        sock = socket.create_connection((target.address, target.port), timeout=connect_timeout)
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise Unreachable(f"{name}: cannot connect to {target.address}:{target.port}: "
                          f"{reason}") from None
    transport = paramiko.Transport(sock)
    # Some paramiko waits have no timeout of their own (exec_command waits for the
    # server's answer for ever): a watchdog closes the transport when a phase's deadline
    # passes, which ends any wait with an error, told apart by ``guard.fired``.
    guard = _Watchdog(transport)
    try:
        transport.banner_timeout = connect_timeout
        transport.handshake_timeout = connect_timeout
        transport.auth_timeout = connect_timeout  # paramiko's default is 30 s
        guard.arm(connect_timeout)  # handshake and authentication together
        try:
            transport.start_client(timeout=connect_timeout)
            server_key = transport.get_remote_server_key()
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if guard.fired.is_set():
                raise Unreachable(f"{name}: SSH handshake timed out after "
                                  f"{connect_timeout:g} s") from None
            raise Unreachable(f"{name}: SSH handshake with {target.address}:{target.port} "
                              f"failed: {exc or type(exc).__name__}") from None
        added = known_hosts.check(target.address, target.port, server_key,
                                  accept_new=accept_new, node=name)
        try:
            transport.auth_publickey(target.user, pkey)
        except paramiko.AuthenticationException as exc:
            if guard.fired.is_set() or "timeout" in str(exc).lower():  # no answer, no refusal
                raise Unreachable(f"{name}: SSH authentication timed out after "
                                  f"{connect_timeout:g} s") from None
            raise AuthFailed(f"{name}: {target.user}@{target.address} refused key "
                             f"{target.key_path}") from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if guard.fired.is_set():
                raise Unreachable(f"{name}: SSH authentication timed out after "
                                  f"{connect_timeout:g} s") from None
            raise Unreachable(f"{name}: SSH authentication broke off: {exc}") from None
        deadline = time.monotonic() + command_timeout
        guard.arm(command_timeout + 0.5)  # the loops below see the deadline first
        try:
            chan = transport.open_session(timeout=connect_timeout)
            chan.exec_command(command)
            try:
                if stdin_data:
                    # A node that never reads its stdin must not hold gpuctl past the
                    # deadline.
                    chan.settimeout(max(0.01, deadline - time.monotonic()))
                    chan.sendall(stdin_data)
                if not keep_stdin_open:
                    chan.shutdown_write()
            except TimeoutError:
                raise _timed_out(name, command_timeout) from None
            except (paramiko.SSHException, OSError):
                # A command that ended before reading all its input: its output and exit
                # status are still there to read.
                if not (chan.closed or chan.exit_status_ready()) or guard.fired.is_set():
                    raise
            stdout, stderr = _read_capped(chan, max_output, deadline, name, command_timeout)
            # The output can end (stdout closed) long before the command does: the exit
            # status is waited for within the same deadline.
            if not chan.status_event.wait(max(0.0, deadline - time.monotonic())):
                raise _timed_out(name, command_timeout)
            code = chan.recv_exit_status()
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if guard.fired.is_set():
                raise _timed_out(name, command_timeout) from None
            raise Unreachable(f"{name}: SSH session broke off: {exc or type(exc).__name__}") \
                from None
        return ExecResult(code, stdout, stderr, hostkey_added=added)
    finally:
        guard.cancel()
        transport.close()


class _Watchdog:
    """Closes ``transport`` if the armed deadline passes first."""

    def __init__(self, transport: paramiko.Transport) -> None:
        self.transport = transport
        self.fired = threading.Event()
        self._timer: threading.Timer | None = None

    def _expire(self) -> None:
        self.fired.set()
        self.transport.close()

    def arm(self, seconds: float) -> None:
        self.cancel()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def run_on_each(targets: list[Target], command: str, *, known_hosts: KnownHosts,
                command_timeout: float, max_output: int = 65536
                ) -> dict[str, ExecResult | GpuctlError]:
    """``command`` on each node at once (at most 32 at a time): node name -> its result,
    or the error that kept it from running (each bounded as ``run_on_node`` is)."""

    def one(target: Target) -> ExecResult | GpuctlError:
        try:
            return run_on_node(target, command, known_hosts=known_hosts,
                               max_output=max_output, command_timeout=command_timeout)
        except GpuctlError as exc:
            return exc

    if not targets:
        return {}
    with ThreadPoolExecutor(max_workers=min(32, len(targets))) as pool:
        return dict(zip([t.name for t in targets], pool.map(one, targets), strict=True))
