"""PID 1 of one lab node (stdlib only), run as
``unshare --mount --uts --pid --fork --propagation private python3 node_init.py DIR``.

It mounts the node's overlay root, its own /proc, /run and simulated /sys, sets
the node's hostname, runs the boot hook (which decides the loaded kernel modules),
starts the enabled stand-in services and the node's sshd, then reaps children.
SIGUSR1 (sent by the node's stand-in ``shutdown -r``) reboots the node: every process
but PID 1 is killed, /run starts empty, the boot hook runs again, the enabled services
start and sshd comes back with a new boot id.
Killing PID 1 ends every process of the node, and with them the node's mounts.
"""

import contextlib
import ctypes
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid


class RebootRequested(Exception):
    pass


def sh(*argv):
    subprocess.run(argv, check=True)


def set_comm(name):
    # Tools that look at /proc/1/comm (Ansible's service manager detection) see "init".
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(15, name.encode(), 0, 0, 0)  # PR_SET_NAME


def fresh_tmpfs(root):
    # /run is the node's own and empty at every boot. /tmp stays on the overlay: writes
    # there are private to the node anyway, and a checkout (and the Python environment
    # lab nodes run the burn-in agent with) may live under the host's /tmp.
    target = root + "/run"
    subprocess.run(["umount", "-l", target], stderr=subprocess.DEVNULL, check=False)
    sh("mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", target)
    os.makedirs(root + "/run/sshd", mode=0o755, exist_ok=True)
    os.makedirs(root + "/run/gpuctl-lab", mode=0o755, exist_ok=True)
    with open(root + "/run/gpuctl-lab/boot_id", "w") as fh:
        fh.write(str(uuid.uuid4()) + "\n")


# The usual character devices (devices.txt: mem major 1, tty major 5).
DEV_NODES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8),
             "urandom": (1, 9), "tty": (5, 0)}


def private_dev(target):
    """The node's own /dev: a tmpfs with the usual devices, this machine's /dev/pts, its
    own /dev/shm. Device nodes the node creates (/dev/nvidia* when its driver loads)
    stay in the node; this machine's /dev is untouched."""
    sh("mount", "-t", "tmpfs", "-o", "mode=755,size=65536k", "tmpfs", target)
    for name, (major, minor) in DEV_NODES.items():
        os.mknod(target + "/" + name, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(target + "/" + name, 0o666)  # noqa: S103 (as devtmpfs has them)
    for sub in ("pts", "shm"):
        os.makedirs(target + "/" + sub, exist_ok=True)
    sh("mount", "--bind", "/dev/pts", target + "/pts")
    sh("mount", "-t", "tmpfs", "-o", "mode=1777", "tmpfs", target + "/shm")
    for link, to in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                     ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
                     ("ptmx", "pts/ptmx")):
        os.symlink(to, target + "/" + link)


def start_sshd(root):
    # Right after a reboot the old sshd may still hold its port for a moment.
    for attempt in range(50):
        res = subprocess.run(["chroot", root, "/usr/sbin/sshd", "-f",
                              "/etc/gpuctl-lab/sshd_config"], check=False)
        if res.returncode == 0:
            return
        time.sleep(0.1 * (attempt + 1))
    raise subprocess.CalledProcessError(res.returncode, ["sshd"])


def start_enabled_services(root):
    """What sysvinit does at boot: start each service enabled in runlevel 2, in order.
    Only the lab's stand-in packages' services: the node's root is a copy of this
    machine's, whose own services (a PostgreSQL, say) must not start once per node. A
    service that fails to start (a fabric manager that does not match the driver) stays
    down, as on a real machine."""
    rc = root + "/etc/rc2.d"
    for name in sorted(os.listdir(rc)) if os.path.isdir(rc) else []:
        path = os.path.join(rc, name)
        try:
            with open(path, "rb") as fh:
                standin = b"gpuctl lab stand-in" in fh.read(4096)
        except OSError:
            continue
        if name.startswith("S") and standin:
            subprocess.run(["chroot", root, "/etc/rc2.d/" + name, "start"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def boot(node_dir, spec, root):
    fresh_tmpfs(root)
    sh(spec["python"], "-m", "provisioner.lab.boot", node_dir)
    start_enabled_services(root)
    if spec.get("sshd", True):
        start_sshd(root)


def kill_everything_else():
    """The reboot: every process of the node but PID 1 dies, and is reaped."""
    os.kill(-1, signal.SIGKILL)
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def on_usr1(*_):
    # Raised out of the blocking wait below (PEP 475 would otherwise resume it).
    raise RebootRequested()


def main(node_dir):
    with open(os.path.join(node_dir, "node.json")) as fh:
        spec = json.load(fh)
    root = os.path.join(node_dir, "merged")
    set_comm("init")
    sh("mount", "-t", "overlay", "overlay", "-o",
       "lowerdir=/,upperdir=%s/upper,workdir=%s/work" % (node_dir, node_dir), root)
    sh("mount", "-t", "proc", "proc", root + "/proc")
    sh("mount", "--bind", node_dir + "/sys", root + "/sys")
    private_dev(root + "/dev")
    # slurmd (22.05) needs a cgroup filesystem even with its cgroup plugins off; the
    # node's /sys is simulated, so this machine's cgroup tree is bound into it.
    os.makedirs(node_dir + "/sys/fs/cgroup", exist_ok=True)
    if os.path.isdir("/sys/fs/cgroup"):
        sh("mount", "--rbind", "/sys/fs/cgroup", root + "/sys/fs/cgroup")
    socket.sethostname(spec["hostname"])
    boot(node_dir, spec, root)
    with open(os.path.join(node_dir, "ready"), "w") as fh:
        fh.write("ok\n")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGUSR1, on_usr1)
    while True:
        try:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                time.sleep(0.5)
        except RebootRequested:
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)
            time.sleep(1.0)  # let the `shutdown -r` that asked for this return
            kill_everything_else()
            with open(os.path.join(node_dir, "node.json")) as fh:
                spec = json.load(fh)
            try:
                boot(node_dir, spec, root)
            except subprocess.CalledProcessError as exc:
                # A node that fails to boot stays down (like a real one), PID 1 lives on.
                with open(os.path.join(node_dir, "boot-failed"), "w") as fh:
                    fh.write("%s exited %s\n" % (" ".join(exc.cmd), exc.returncode))
            signal.signal(signal.SIGUSR1, on_usr1)


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    except subprocess.CalledProcessError as exc:
        with open(os.path.join(sys.argv[1], "failed"), "w") as fh:
            fh.write("%s exited %s\n" % (" ".join(exc.cmd), exc.returncode))
        sys.exit(1)
