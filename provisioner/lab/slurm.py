"""``gpuctl lab slurm up/down/env``: a real Slurm (Debian's slurmctld, slurmd and munge)
for the lab's nodes.

The controller and its munged run on this machine, with their own key, state, logs and
ports under ``<lab>/slurm``. Each node runs its own munged and a slurmd, started by a
boot script (so a node reboot brings them back) and kept restarting as systemd's
``Restart=`` would: a slurmd whose node is not in slurm.conf yet exits, and comes up on
its own once ``gpuctl handoff slurm --apply`` has added the node. The configuration
directory ``<lab>/slurm/etc`` is shared with the nodes (bind-mounted at the same path),
as many sites share /etc/slurm over NFS. All lab nodes share this machine's loopback,
so each slurmd gets its own port (the ``Port=`` of its NodeName line, set through the
node's ``gpuctl_slurmd_port`` host variable).

Two Slurm releases: Debian 12's 22.05 (this machine's packages) and Debian 13's 24.11,
from a Debian 13 root that ``scripts/lab-debian13.sh`` (run by ``scripts/test.sh``)
makes with debootstrap (Debian's own packages, as a site running trixie gets them). Each
24.11 program runs from that root (chroot) in a private mount namespace that sees this
machine's /proc, /sys, /dev, /run (munged's sockets), /tmp, the lab and the Python the
jobs use; the lab puts wrappers for them first on PATH (``gpuctl lab slurm env``) and on
each node's /usr/local/sbin, so gpuctl and the tests call ``scontrol`` and ``slurmd`` by
name as on a real cluster. munged and MariaDB stay this machine's (munge's wire format
and MySQL's protocol are the same across both releases).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from provisioner.errors import LabError
from provisioner.lab.ports import address_block, first_job_id, slurm_ports

if TYPE_CHECKING:
    from provisioner.lab.nodes import Lab

TOOLS = ("slurmctld", "slurmd", "munged", "scontrol", "sinfo", "sbatch", "sacctmgr",
         "slurmdbd", "mariadbd", "mariadb-install-db")
RC_SCRIPT = "/etc/rc2.d/S90gpuctl-lab-slurm"
RELEASES = ("22.05", "24.11")
# Where scripts/lab-debian13.sh puts the Debian 13 root with Slurm 24.11.
DEBIAN13_ROOT = Path(os.environ.get("GPUCTL_LAB_DEBIAN13_ROOT", "/var/lib/gpuctl-lab/debian13"))
CHROOT_TOOLS = ("slurmctld", "slurmd", "slurmdbd", "scontrol", "sinfo", "sbatch", "squeue",
                "srun", "salloc", "sbcast", "scancel", "sacctmgr", "sacct")
ENTER = """#!/bin/sh
# gpuctl lab: run one program of Debian 13's Slurm from its own root ({root}), in the
# private mount namespace its wrapper made: this machine's (or this node's) /proc,
# /sys, /dev, /run, /tmp, /etc/hosts, the lab and the jobs' Python are bound in, then
# chroot, in the caller's working directory.
set -e
root={root}
for d in {binds}; do
  if [ -d "$d" ]; then mkdir -p "$root$d"; mount --rbind "$d" "$root$d"; fi
done
# The names of this host and the other lab nodes (a job's rendezvous looks them up).
[ -e "$root/etc/hosts" ] || : > "$root/etc/hosts"
mount --bind /etc/hosts "$root/etc/hosts"
mkdir -p "$root/var/spool/slurmd"
dir=$PWD
exec chroot "$root" /bin/sh -c 'cd "$1" 2>/dev/null || cd /; shift; exec "$@"' sh "$dir" "$@"
"""
WRAPPER = """#!/bin/sh
# gpuctl lab: {tool} of Debian 13's Slurm 24.11 ({root})
if [ -f /.gpuctl-complete ]; then
  # Already inside that root (a job's own scontrol, sbcast, srun): the program itself.
  for d in /usr/sbin /usr/bin; do [ -x "$d/{tool}" ] && exec "$d/{tool}" "$@"; done
fi
exec unshare --mount --propagation private -- /bin/sh {enter} {tool} "$@"
"""
# Settings the lab needs inside namespaces that share one kernel (issue 13's notes):
# no cgroup-based tracking or task plugin, no accounting gatherer.
CONF = """# gpuctl lab: the lab's Slurm controller (gpuctl lab slurm up). NodeName and
# PartitionName lines come from `gpuctl handoff slurm --apply` (its managed block below).
ClusterName=gpuctl-lab
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket}
StateSaveLocation={dir}/state
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile={dir}/log/slurmctld.log
SlurmdLogFile=/var/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SlurmdTimeout=60
# The lab's labs share one loopback, and the smoke job's rendezvous port comes from its
# job id: each lab's ids start at their own place (slurm.conf(5): FirstJobId, default 1).
FirstJobId={first_job}
GresTypes=gpu
# Accounting through slurmdbd (MariaDB behind it): QOS limits such as a pool's
# GrpTRES=gres/gpu=N exist and are enforced only with it (slurm.conf(5),
# AccountingStorageEnforce; resource_limits.html).
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={dbd_port}
# Which munged authenticates to slurmdbd: the lab's, not the default socket.
AccountingStoragePass={socket}
AccountingStorageTRES=gres/gpu
AccountingStorageEnforce=associations,limits,qos,safe
# slurmctld (22.05) will not start without a node: a placeholder for future use.
NodeName=lab-spare State=FUTURE
# The lab's default partition: every node Slurm knows.
PartitionName=lab Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
DBD_CONF = """# gpuctl lab: the accounting daemon (gpuctl lab slurm up)
AuthType=auth/munge
AuthInfo=socket={socket}
DbdHost={host}
DbdAddr=127.0.0.1
DbdPort={dbd_port}
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={db_port}
StorageUser=root
StorageLoc=slurm_acct_db
PidFile={dir}/slurmdbd.pid
LogFile={dir}/log/slurmdbd.log
"""
NODE_SCRIPT = """#!/bin/sh
# gpuctl lab stand-in: this node's munged and slurmd (gpuctl lab slurm up)
case "$1" in
start)
  mkdir -p {sockdir} /var/log/munge /var/lib/munge /var/spool/slurmd
  munged --force --socket={socket} --key-file={key} --pid-file={sockdir}/munged.pid \\
    --log-file=/var/log/munge/munged.log --seed-file=/var/lib/munge/munged.seed
  # systemd's Restart=: a slurmd whose node is not configured yet exits; retry.
  ( while :; do SLURM_CONF={conf} {slurmd} -D -f {conf} >>/var/log/slurmd.out 2>&1
      sleep 5; done ) </dev/null >/dev/null 2>&1 &
  echo $! > /run/gpuctl-lab-slurmd-loop.pid
  ;;
restart)
  # as systemctl restart slurmd: this slurmd stops, the loop above starts a new one
  kill "$(cat /run/slurmd.pid 2>/dev/null)" 2>/dev/null
  ;;
stop)
  kill "$(cat /run/gpuctl-lab-slurmd-loop.pid 2>/dev/null)" 2>/dev/null
  kill "$(cat /run/slurmd.pid 2>/dev/null)" "$(cat {sockdir}/munged.pid 2>/dev/null)" \\
    2>/dev/null
  ;;
esac
exit 0
"""


@dataclass
class LabSlurmInfo:
    conf: str
    conf_dir: str
    controller: str
    nodes: dict[str, int]
    release: str = "22.05"
    bin_dir: str = ""  # the 24.11 programs' wrappers ("" for 22.05)

    def exports(self) -> str:
        """Shell lines that point Slurm's commands, and gpuctl, at the lab's controller."""
        restart = f"{sys.executable} -m provisioner lab slurm restart"
        # On a node (over SSH): the boot script's restart, as systemctl restart slurmd.
        slurmd = f"sh {RC_SCRIPT} restart"
        path = f"export PATH={shlex.quote(self.bin_dir)}:\"$PATH\"\n" if self.bin_dir else ""
        return (path + f"export SLURM_CONF={shlex.quote(self.conf)}\n"
                f"export GPUCTL_SLURM_RESTART={shlex.quote(restart)}\n"
                f"export GPUCTL_SLURMD_RESTART={shlex.quote(slurmd)}\n")


def block_ports(block: int, count: int) -> list[int]:
    """``count`` ports for the Slurm of the lab on 127.0.BLOCK.0/24: its planned ports
    (``ports.slurm_ports``) not bound now; past them, or where one is bound, a free port
    instead."""
    ports = [port for port in slurm_ports(block) if _bindable(port)][:count]
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _bindable(port: int) -> bool:
    """Whether ``port`` on 127.0.0.1 is free to bind now."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A free port below the kernel's ephemeral range (ip_local_port_range, 32768 up by
    default): a port from bind(0) is one an outgoing connection may take before the
    daemon binds it ("Address already in use", seen while the machine downloaded)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = secrets.SystemRandom()
    for _ in range(200):
        port = rng.randrange(30500, max(30501, low))  # above the labs' planned ports
        if _bindable(port):
            return port
    raise LabError("no free port below the ephemeral range on 127.0.0.1")


class LabSlurm:
    """The lab's Slurm: ``<lab>/slurm``."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.dir = lab.dir / "slurm"
        self.etc = self.dir / "etc"
        self.conf = self.etc / "slurm.conf"
        # munged's socket lives under /run: this machine's for the controller, each
        # node's own (private) /run for the node, one path for both in slurm.conf.
        tag = hashlib.sha256(str(self.dir).encode()).hexdigest()[:10]
        self.sockdir = f"/run/gpuctl-lab-munge-{tag}"
        self.socket = f"{self.sockdir}/munge.socket.2"
        self.bin = self.dir / "bin"

    @property
    def release(self) -> str:
        try:
            return str(json.loads((self.dir / "slurm.json").read_text()).get("release",
                                                                           "22.05"))
        except (OSError, ValueError):
            return "22.05"

    def info(self) -> LabSlurmInfo:
        path = self.dir / "slurm.json"
        if not path.exists():
            raise LabError("the lab has no Slurm (run `gpuctl lab slurm up`)")
        doc = json.loads(path.read_text())
        release = doc.get("release", "22.05")
        return LabSlurmInfo(str(self.conf), str(self.etc), doc["controller"], doc["nodes"],
                            release, str(self.bin) if release != "22.05" else "")

    def env(self) -> dict[str, str]:
        env = {**os.environ, "SLURM_CONF": str(self.conf)}
        if self.release != "22.05":
            env["PATH"] = f"{self.bin}:{env.get('PATH', '')}"
        return env

    def _write_wrappers(self) -> None:
        """The 24.11 programs' wrappers (see the module docstring)."""
        binds = ["/proc", "/sys", "/dev", "/run", "/tmp", str(self.lab.dir),  # noqa: S108
                 str(Path(__file__).resolve().parents[2]), sys.prefix,
                 str(Path(os.path.realpath(sys.executable)).parents[1])]
        binds = sorted({b for b in binds if b != "/"}, key=len)
        self.bin.mkdir(parents=True, exist_ok=True)
        enter = self.bin / "enter.sh"
        enter.write_text(ENTER.format(root=shlex.quote(str(DEBIAN13_ROOT)),
                                      binds=" ".join(shlex.quote(b) for b in binds)))
        for tool in CHROOT_TOOLS:
            path = self.bin / tool
            path.write_text(WRAPPER.format(tool=tool, root=DEBIAN13_ROOT,
                                           enter=shlex.quote(str(enter))))
            path.chmod(0o755)

    def up(self, release: str = "22.05") -> LabSlurmInfo:
        """Start the controller and every running node's munged and slurmd.

        Raises:
            LabError: no lab, Slurm missing on this machine, or a daemon that did not
                start (its log's last line).
        """
        if release not in RELEASES:
            raise LabError(f"Slurm {release[:20]!r}: the lab runs {' or '.join(RELEASES)}")
        local = TOOLS if release == "22.05" else ("munged", "mariadbd", "mariadb-install-db")
        missing = [t for t in local if not shutil.which(t)]
        if missing:
            raise LabError(f"{', '.join(missing)} not found: install Debian's slurmctld, "
                           "slurmd, slurm-client and munge (scripts/setup.sh does)")
        if release != "22.05" and not (DEBIAN13_ROOT / "usr/sbin/slurmctld").exists():
            raise LabError(f"no Debian 13 root with Slurm 24.11 at {DEBIAN13_ROOT} "
                           "(scripts/lab-debian13.sh makes it with debootstrap)")
        names = self.lab.names()
        if not names:
            raise LabError("no lab is up (run `gpuctl lab up` first)")
        if (self.dir / "slurm.json").exists():
            return self.info()
        for sub in ("etc", "state", "log"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        if release != "22.05":
            self._write_wrappers()
        key = self.etc / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        # Ports and job ids from the lab's block (provisioner/lab/ports.py): two labs'
        # Slurms side by side take neither's.
        block = address_block(self.lab.spec(names[0])["address"])
        ports = iter(block_ports(block, 3 + len(names)))
        ctld_port, dbd_port, db_port = next(ports), next(ports), next(ports)
        nodes = {name: next(ports) for name in names}
        host = socket.gethostname()
        self.conf.write_text(CONF.format(host=host, ctld_port=ctld_port, socket=self.socket,
                                         dir=self.dir, dbd_port=dbd_port,
                                         first_job=first_job_id(block)))
        dbd_conf = self.etc / "slurmdbd.conf"
        dbd_conf.write_text(DBD_CONF.format(host=host, dbd_port=dbd_port, db_port=db_port,
                                            socket=self.socket, dir=self.dir))
        dbd_conf.chmod(0o600)
        (self.etc / "gres.conf").write_text("# gpuctl lab: GPU lines come from gpuctl "
                                            "handoff slurm --apply\n")
        (self.dir / "slurm.json").write_text(json.dumps(
            {"controller": f"127.0.0.1:{ctld_port}", "nodes": nodes, "db_port": db_port,
             "release": release}, indent=1))
        try:
            self._start_controller(key)
            hosts = "".join(f"{self.lab.spec(n)['address']}\t{n}\n" for n in names)
            for name in names:
                self._start_node(name, key, hosts)
        except BaseException:
            self.down()
            raise
        return self.info()

    def restart_controller(self) -> None:
        """What ``systemctl restart slurmctld`` does on a real controller: Slurm 22.05
        reads a changed node list only at start (``scontrol reconfigure`` makes it exit:
        "node count has changed ... You have to restart slurmctld")."""
        self.info()
        _kill(self.dir / "slurmctld.pid")
        self._start_slurmctld()

    def _start_controller(self, key: Path) -> None:
        Path(self.sockdir).mkdir(parents=True, exist_ok=True, mode=0o755)
        _run(["munged", "--force", f"--socket={self.socket}", f"--key-file={key}",
              f"--pid-file={self.sockdir}/munged.pid",
              f"--log-file={self.dir}/log/munged.log",
              f"--seed-file={self.dir}/state/munged.seed"], "munged")
        self._start_accounting()
        self._start_slurmctld()

    def _start_accounting(self) -> None:
        """MariaDB (its own data dir and port, no grant tables: only slurmdbd, on
        loopback, uses it), slurmdbd, then the cluster, an account and root in it."""
        db = self.dir / "mariadb"
        port = json.loads((self.dir / "slurm.json").read_text())["db_port"]
        _run(["mariadb-install-db", f"--datadir={db}", "--user=root", "--skip-test-db",
              "--auth-root-authentication-method=normal"], "mariadb-install-db")
        with open(self.dir / "log/mariadb.log", "ab") as log:
            subprocess.Popen(
                ["mariadbd", f"--datadir={db}", "--user=root", "--skip-grant-tables",
                 "--bind-address=127.0.0.1", f"--port={port}", f"--socket={db}/mysqld.sock",
                 f"--pid-file={self.dir}/mariadb.pid", "--skip-log-bin",
                 "--innodb-buffer-pool-size=16M"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        _wait_port(port, 30, "mariadbd", self.dir / "log/mariadb.log")
        _run(["slurmdbd"], "slurmdbd", env=self.env())
        deadline = time.monotonic() + 20
        while True:
            res = subprocess.run(["sacctmgr", "-i", "add", "cluster", "gpuctl-lab"],
                                 env=self.env(), capture_output=True, text=True, check=False)
            if res.returncode == 0 or "already exists" in res.stdout + res.stderr:
                break
            if time.monotonic() > deadline:
                raise LabError("the lab's slurmdbd did not answer within 20 s: "
                               f"{(res.stderr or res.stdout).strip()[-200:]}; "
                               + _tail(self.dir / "log/slurmdbd.log"))
            time.sleep(0.3)
        for argv in (["sacctmgr", "-i", "add", "account", "lab", "Cluster=gpuctl-lab"],
                     ["sacctmgr", "-i", "add", "user", "root", "Account=lab",
                      "Cluster=gpuctl-lab"]):
            _run(argv, "sacctmgr", env=self.env())

    def _start_slurmctld(self) -> None:
        _run(["slurmctld", "-f", str(self.conf)], "slurmctld", env=self.env())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            res = subprocess.run(["scontrol", "ping"], env=self.env(), capture_output=True,
                                 text=True, check=False)
            if "UP" in res.stdout:
                return
            time.sleep(0.2)
        raise LabError("the lab's slurmctld did not answer within 30 s: "
                       + _tail(self.dir / "log/slurmctld.log"))

    def _start_node(self, name: str, key: Path, hosts: str) -> None:
        pid = self.lab.holder_pid(name)
        if pid is None:
            raise LabError(f"lab node {name} is not running")
        root = self.lab.node_dir(name) / "merged"
        res = subprocess.run(["nsenter", "-t", str(pid), "-m", "--", "mount", "--bind",
                              str(self.etc), f"{root}{self.etc}"], capture_output=True,
                             text=True, check=False)
        if res.returncode != 0:
            raise LabError(f"cannot share the Slurm config with {name}: {res.stderr[:200]}")
        slurmd = "slurmd"
        if self.release != "22.05":
            # The 24.11 wrappers, at the same path, and first on the node's PATH (an SSH
            # session's `slurmd -C` is 24.11's, as on a trixie node).
            self.lab.node_exec(name, ["mkdir", "-p", str(self.bin)])
            subprocess.run(["nsenter", "-t", str(pid), "-m", "--", "mount", "--bind",
                            str(self.bin), f"{root}{self.bin}"], check=False)
            for tool in CHROOT_TOOLS:
                self.lab.put_file(name, f"/usr/local/sbin/{tool}",
                                  f"#!/bin/sh\nexec {self.bin}/{tool} \"$@\"\n".encode(),
                                  0o755)
            slurmd = f"{self.bin}/slurmd"
        current = self.lab.node_exec(name, ["cat", "/etc/hosts"]).stdout.decode()
        self.lab.put_file(name, "/etc/hosts", (current.rstrip("\n") + "\n# gpuctl lab "
                                               "nodes\n" + hosts).encode())
        script = NODE_SCRIPT.format(sockdir=self.sockdir, socket=self.socket, key=key,
                                    conf=self.conf, slurmd=slurmd)
        self.lab.put_file(name, RC_SCRIPT, script.encode(), 0o755)
        started = self.lab.node_exec(name, ["sh", RC_SCRIPT, "start"])
        if started.returncode != 0:
            raise LabError(f"munged/slurmd did not start on {name}: "
                           f"{started.stderr.decode()[-200:]}")

    def down(self) -> None:
        """Stop the controller and the nodes' daemons (the nodes' own die with them)."""
        for name in self.lab.names():
            if self.lab.holder_pid(name) is not None:
                with contextlib.suppress(LabError, subprocess.TimeoutExpired):
                    self.lab.node_exec(name, ["sh", "-c", f"[ -x {RC_SCRIPT} ] && "
                                       f"{RC_SCRIPT} stop; rm -f {RC_SCRIPT}"], timeout=10)
        for pid_file in (self.dir / "slurmctld.pid", self.dir / "slurmdbd.pid",
                         self.dir / "mariadb.pid", Path(self.sockdir) / "munged.pid"):
            _kill(pid_file, grace=0)  # the lab's state goes with it: no need to save it
        shutil.rmtree(self.sockdir, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def _run(argv: list[str], what: str, env: dict[str, str] | None = None) -> None:
    res = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        raise LabError(f"the lab's {what} did not start: "
                       f"{(res.stderr or res.stdout).strip()[-300:]}")


def _wait_port(port: int, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.2)
    raise LabError(f"the lab's {what} did not listen within {timeout:g} s: {_tail(log)}")


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return lines[-1][:300] if lines else "(empty log)"


def _kill(pid_file: Path, grace: float = 5) -> None:
    """Stop the daemon named by ``pid_file`` (TERM, then KILL after ``grace`` s)."""
    try:
        pid = int(pid_file.read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return
    if comm not in ("slurmctld", "slurmdbd", "mariadbd", "munged"):
        return  # a stale pid file: that number is someone else's now
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
