"""gpuctl's known_hosts: unknown refused unless accepted, changed always refused."""

from __future__ import annotations

from pathlib import Path

import paramiko
import pytest

from provisioner.lab.keys import write_ed25519
from provisioner.ssh.hostkeys import HostKeyChanged, HostKeyUnknown, KnownHosts


def _key(tmp_path: Path, name: str) -> paramiko.PKey:
    write_ed25519(tmp_path / name, name)
    return paramiko.PKey.from_path(tmp_path / name)


def test_unknown_refused_then_accepted_then_changed_refused(tmp_path: Path) -> None:
    kh = KnownHosts(tmp_path / "known_hosts")
    key, other = _key(tmp_path, "a"), _key(tmp_path, "b")
    with pytest.raises(HostKeyUnknown, match="--accept-new"):
        kh.check("127.0.0.5", 22, key, accept_new=False, node="n1")
    assert not (tmp_path / "known_hosts").exists()
    assert kh.check("127.0.0.5", 22, key, accept_new=True, node="n1") is True
    assert kh.check("127.0.0.5", 22, key, accept_new=False, node="n1") is False
    # A fresh reader (another gpuctl process) sees the stored key.
    fresh = KnownHosts(tmp_path / "known_hosts")
    with pytest.raises(HostKeyChanged, match="CHANGED.*forget-hostkey n1"):
        fresh.check("127.0.0.5", 22, other, accept_new=True, node="n1")
    assert fresh.forget("127.0.0.5", 22) is True
    assert fresh.check("127.0.0.5", 22, other, accept_new=True, node="n1") is True


def test_port_is_part_of_the_entry(tmp_path: Path) -> None:
    kh = KnownHosts(tmp_path / "known_hosts")
    kh.check("127.0.0.5", 2222, _key(tmp_path, "a"), accept_new=True, node="n1")
    assert (tmp_path / "known_hosts").read_text().startswith("[127.0.0.5]:2222 ssh-ed25519 ")
    with pytest.raises(HostKeyUnknown):
        kh.check("127.0.0.5", 22, _key(tmp_path, "b"), accept_new=False, node="n1")
