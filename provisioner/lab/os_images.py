"""The operating systems a lab node can run: what makes its root look like that OS to
Ansible and to the package manager (os-release, the package manager's own config) on
top of this machine's Debian root.

- ubuntu22.04 (the default): Ubuntu's /etc/os-release and /etc/lsb-release; apt.
- debian12: this machine's own Debian 12 root as it is; apt.
- rocky9: Rocky Linux 9's release files, dnf (Debian's dnf 4 and its plugins; RHEL 9
  ships dnf 4 too) with an rpm database at /var/lib/rpm that records the base packages
  a Rocky install has (bash, which provides /bin/sh for package scriptlets, and
  rocky-release, which tells dnf the release version), and Rocky's repository file with
  BaseOS enabled and CRB disabled, both pointing at the lab's stand-in repositories.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from provisioner.errors import LabError
from provisioner.lab.packages import REPO_IN_NODE, Package

LAB_OSES = ("ubuntu22.04", "debian12", "rocky9")
DBPATH = "/var/lib/rpm"

UBUNTU_OS_RELEASE = """PRETTY_NAME="Ubuntu 22.04.5 LTS"
NAME="Ubuntu"
VERSION_ID="22.04"
VERSION="22.04.5 LTS (Jammy Jellyfish)"
VERSION_CODENAME=jammy
ID=ubuntu
ID_LIKE=debian
HOME_URL="https://www.ubuntu.com/"
UBUNTU_CODENAME=jammy
"""
UBUNTU_LSB = """DISTRIB_ID=Ubuntu
DISTRIB_RELEASE=22.04
DISTRIB_CODENAME=jammy
DISTRIB_DESCRIPTION="Ubuntu 22.04.5 LTS"
"""
ROCKY_OS_RELEASE = """NAME="Rocky Linux"
VERSION="9.4 (Blue Onyx)"
ID="rocky"
ID_LIKE="rhel centos fedora"
VERSION_ID="9.4"
PLATFORM_ID="platform:el9"
PRETTY_NAME="Rocky Linux 9.4 (Blue Onyx)"
ANSI_COLOR="0;32"
CPE_NAME="cpe:/o:rocky:rocky:9::baseos"
HOME_URL="https://rockylinux.org/"
"""
ROCKY_RELEASE = "Rocky Linux release 9.4 (Blue Onyx)\n"
# Rocky's own file names its repositories baseos, appstream, crb (disabled), ...; the
# lab's copy points them at the lab's stand-ins.
ROCKY_REPO = f"""[baseos]
name=Rocky Linux 9 - BaseOS (gpuctl lab stand-in)
baseurl=file://{REPO_IN_NODE}/baseos
gpgcheck=0
enabled=1

[crb]
name=Rocky Linux 9 - CRB (gpuctl lab stand-in)
baseurl=file://{REPO_IN_NODE}/crb
gpgcheck=0
enabled=0
"""


DRACUT = """#!/bin/sh
# gpuctl lab stand-in dracut: the lab boots no initramfs; record that it was rebuilt.
mkdir -p /var/lib/gpuctl-lab && date +%s > /var/lib/gpuctl-lab/initramfs-updated
echo "dracut: *** Creating initramfs image file '/boot/initramfs-$(uname -r).img' done ***"
"""


def os_files(os_name: str) -> dict[str, tuple[bytes, int]]:
    """Files that make a node's root that OS."""
    if os_name == "ubuntu22.04":
        return {"/etc/os-release": (UBUNTU_OS_RELEASE.encode(), 0o644),
                "/etc/lsb-release": (UBUNTU_LSB.encode(), 0o644)}
    if os_name == "rocky9":
        return {"/etc/os-release": (ROCKY_OS_RELEASE.encode(), 0o644),
                "/etc/redhat-release": (ROCKY_RELEASE.encode(), 0o644),
                "/etc/rocky-release": (ROCKY_RELEASE.encode(), 0o644),
                "/etc/system-release": (ROCKY_RELEASE.encode(), 0o644),
                "/etc/rpm/macros.dbpath": (f"%_dbpath {DBPATH}\n".encode(), 0o644),
                "/etc/yum.repos.d/rocky.repo": (ROCKY_REPO.encode(), 0o644),
                "/usr/bin/dracut": (DRACUT.encode(), 0o755)}
    return {}


def base_packages() -> list[Package]:
    return [Package("bash", "5.1.8-9.el9", "The GNU Bourne Again shell (lab record)",
                    provides=["/bin/sh", "/bin/bash"]),
            Package("rocky-release", "9.4-1.7.el9", "Rocky Linux release files (lab record)",
                    provides=["system-release", "system-release(releasever) = 9",
                              "redhat-release = 9.4"])]


def install_base_rpms(os_name: str, upper: Path) -> None:
    """Record the OS's base packages in the node's rpm database (in its overlay's upper
    layer, before the node starts): ``rpm --justdb``, as an installed system has them."""
    if os_name != "rocky9":
        return
    from provisioner.lab.repos import build_rpms  # noqa: PLC0415 (repos imports this module)
    with tempfile.TemporaryDirectory(prefix="gpuctl-lab-base-") as tmp:
        rpms = build_rpms(base_packages(), Path(tmp))
        res = subprocess.run(["rpm", "--root", str(upper), "--dbpath", DBPATH, "-i",
                              "--justdb", "--nodeps", *map(str, rpms)],
                             capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise LabError(f"cannot record the base packages in the node's rpm database: "
                       f"{res.stderr.strip()[-200:]}")
