"""A real Redfish BMC for every lab node: sushy-tools' emulator (the one OpenStack's CI
drives Ironic with), started by ``provisioner.lab.bmc_emulator`` with a systems driver
that powers the lab's nodes.

One emulator process serves the whole lab, one HTTPS listener per node on the node's
address (port 443 unless told otherwise), each showing only its own node's system. TLS
is real (a CA made for this lab; its certificate is what gpuctl is told to trust) and
so is HTTP basic authentication (sushy-tools' htpasswd file, bcrypt). The password is
kept outside gpuctl's data directory, in a 0600 file under /run, as an admin's
credential store would be: the nodes are registered with a reference to it, and a grep
of the data directory must never find it.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from provisioner.errors import LabError

if TYPE_CHECKING:
    from provisioner.lab.nodes import Lab, LabNode

BMC_USER = "lab-admin"
READY_TIMEOUT = 30.0


def sushy_tools_missing() -> str | None:
    """Why the lab cannot start its BMCs here (None: it can)."""
    import importlib.util  # noqa: PLC0415

    if importlib.util.find_spec("sushy_tools") is None or \
            importlib.util.find_spec("bcrypt") is None:
        return ("sushy-tools, the lab's Redfish BMC emulator, is not installed (pip install "
                "'gpuctl[lab]'), or pass --no-bmc")
    return None


@dataclass(frozen=True)
class LabBmcAccess:
    """How gpuctl reaches the lab's BMCs: what a node is registered with."""

    user: str
    password_from: str  # file:PATH, outside the data dir
    ca: str


class LabBmcs:
    """The lab's BMC emulator: its files under ``<lab>/bmc``, its secret under /run."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.dir = lab.dir / "bmc"
        digest = hashlib.sha256(str(lab.dir.resolve()).encode()).hexdigest()[:16]
        run = Path("/run") if os.access("/run", os.W_OK) else Path(tempfile.gettempdir())
        self.secret_dir = run / "gpuctl-lab" / digest
        self.password_file = self.secret_dir / "bmc-password"
        self.pid_file = self.dir / "emulator.pid"

    @property
    def access(self) -> LabBmcAccess:
        return LabBmcAccess(BMC_USER, f"file:{self.password_file}", str(self.dir / "ca.pem"))

    # -- start ------------------------------------------------------------------
    def up(self, nodes: list[LabNode], port: int = 443) -> dict[str, str]:
        """Start one BMC per node; returns each node's BMC URL (also kept in its spec).

        Raises:
            LabError: sushy-tools is missing, or the emulator did not come up.
        """
        why = sushy_tools_missing()
        if why:
            raise LabError(why)
        if self.lab.wildcard_listener(port):
            raise LabError(f"port {port} is taken on all addresses: the lab's BMCs need it "
                           "on each node's address; use --bmc-port PORT or --no-bmc")
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        listeners = [{"node": n.name, "address": n.address, "port": port} for n in nodes]
        self._make_tls([n.address for n in nodes])
        self._make_credentials()
        config = {"home": str(self.lab.paths.home), "htpasswd": str(self.dir / "htpasswd"),
                  "cert": str(self.dir / "server.pem"), "key": str(self.dir / "server.key"),
                  "listeners": listeners}
        (self.dir / "emulator.json").write_text(json.dumps(config, indent=1))
        for marker in ("ready", "failed"):
            (self.dir / marker).unlink(missing_ok=True)
        with open(self.dir / "emulator.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "provisioner.lab.bmc_emulator",
                 str(self.dir / "emulator.json")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                cwd=str(self.dir), env={**os.environ, "PYTHONPATH": _package_root()})
        self.pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + READY_TIMEOUT
        while not (self.dir / "ready").exists():
            if (self.dir / "failed").exists() or proc.poll() is not None:
                detail = (self.dir / "failed").read_text().strip() \
                    if (self.dir / "failed").exists() else \
                    (self.dir / "emulator.log").read_text()[-300:].strip()
                self.down()
                raise LabError(f"the lab's BMC emulator did not start: {detail}")
            if time.monotonic() > deadline:
                self.down()
                raise LabError(f"the lab's BMC emulator did not start within "
                               f"{READY_TIMEOUT:.0f} s (see {self.dir / 'emulator.log'})")
            time.sleep(0.05)
        urls = {}
        for n in nodes:
            host = f"[{n.address}]" if ":" in n.address else n.address
            urls[n.name] = f"https://{host}" + ("" if port == 443 else f":{port}")
            spec = self.lab.spec(n.name)
            spec["bmc"] = urls[n.name]
            self.lab._save_spec(spec)  # noqa: SLF001
        return urls

    def _make_tls(self, addresses: list[str]) -> None:
        """A CA for this lab and one server certificate for every BMC address."""
        from cryptography import x509  # noqa: PLC0415
        from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
        from cryptography.x509.oid import NameOID  # noqa: PLC0415

        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gpuctl lab BMC CA")])
        ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5))
              .not_valid_after(now + datetime.timedelta(days=30))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                           False, False), critical=True)
              .sign(ca_key, hashes.SHA256()))
        key = ec.generate_private_key(ec.SECP256R1())
        sans = [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                            "gpuctl lab BMC")]))
                .issuer_name(ca_name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                               critical=True)
                .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        pem = serialization.Encoding.PEM
        (self.dir / "ca.pem").write_bytes(ca.public_bytes(pem))
        (self.dir / "server.pem").write_bytes(cert.public_bytes(pem))
        _write_private(self.dir / "server.key", key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

    def _make_credentials(self) -> None:
        """A random password in a 0600 file under /run; its bcrypt hash in the
        emulator's htpasswd file (sushy-tools reads only bcrypt; cost 4 keeps each
        request's check at a millisecond: the password is random, not guessable)."""
        import bcrypt  # noqa: PLC0415

        self.secret_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.secret_dir, 0o700)
        password = secrets.token_urlsafe(24)
        _write_private(self.password_file, password.encode() + b"\n")
        digest = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        _write_private(self.dir / "htpasswd", f"{BMC_USER}:{digest}\n".encode())

    # -- state and stop ------------------------------------------------------------
    def pid(self) -> int | None:
        """The emulator's pid while it runs."""
        try:
            pid = int(self.pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if b"provisioner.lab.bmc_emulator" in cmdline else None

    def down(self) -> None:
        """Stop the emulator and forget its secret (its files go with the lab dir)."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        shutil.rmtree(self.secret_dir, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs; reaped here when this process started it (``lab up``
    run in-process, as the tests do), else a zombie counts as gone."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def _package_root() -> str:
    """The directory gpuctl's package is in, for the emulator's ``-m`` (a checkout run
    without installing, as the tests do, is not on the default path)."""
    root = str(Path(__file__).resolve().parents[2])
    rest = os.environ.get("PYTHONPATH")
    return f"{root}{os.pathsep}{rest}" if rest else root
