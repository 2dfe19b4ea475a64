"""PID 1 of one lab node (stdlib only), run as
``unshare --mount --uts --pid --fork --propagation private python3 node_init.py DIR``.

It mounts the node's overlay root, its own /proc, /run, /tmp and simulated /sys, sets
the node's hostname, starts the node's sshd, then reaps children until it is killed.
Killing it ends every process of the node, and with them the node's mounts.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time


def sh(*argv):
    subprocess.run(argv, check=True)


def main(node_dir):
    with open(os.path.join(node_dir, "node.json")) as fh:
        spec = json.load(fh)
    root = os.path.join(node_dir, "merged")
    sh("mount", "-t", "overlay", "overlay", "-o",
       "lowerdir=/,upperdir=%s/upper,workdir=%s/work" % (node_dir, node_dir), root)
    sh("mount", "-t", "proc", "proc", root + "/proc")
    sh("mount", "--bind", node_dir + "/sys", root + "/sys")
    sh("mount", "--rbind", "/dev", root + "/dev")
    for tmp in ("/run", "/tmp"):  # noqa: S108  (the node's own /tmp, a fresh tmpfs)
        sh("mount", "-t", "tmpfs", "-o", "mode=1777" if tmp == "/tmp" else "mode=755",  # noqa: S108
           "tmpfs", root + tmp)
    os.makedirs(root + "/run/sshd", mode=0o755, exist_ok=True)
    socket.sethostname(spec["hostname"])
    if spec.get("sshd", True):
        sh("chroot", root, "/usr/sbin/sshd", "-f", "/etc/gpuctl-lab/sshd_config")
    with open(os.path.join(node_dir, "ready"), "w") as fh:
        fh.write("ok\n")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        try:
            os.wait()
        except ChildProcessError:
            time.sleep(3600)


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    except subprocess.CalledProcessError as exc:
        with open(os.path.join(sys.argv[1], "failed"), "w") as fh:
            fh.write("%s exited %s\n" % (" ".join(exc.cmd), exc.returncode))
        sys.exit(1)
