"""NVIDIA's network repository as a node without a mirror reaches it, for the lab: the
layout of https://developer.download.nvidia.com/compute/cuda/repos/ (``<distro>/<arch>/``,
one flat apt repository per distribution), signed with a key of the lab's own that
stands in for NVIDIA's, with NVIDIA's ``cuda-keyring`` package beside the index. A
test serves it over HTTP on loopback and sets only the base URL, as a site would.

What is NVIDIA's here, and where it is from:

- The Release file: ``Origin: NVIDIA``, ``Label: NVIDIA CUDA``, ``Architecture``, the
  hash lists, ``Acquire-By-Hash: no``, no Suite or Codename; signed as ``InRelease``
  and ``Release.gpg`` (NVIDIA's cuda-repo-management ``repo-debian.sh``). The lab's
  local repositories use the same fields (``repos._apt_index``).
- ``cuda-keyring`` installs the archive keyring
  ``/usr/share/keyrings/cuda-archive-keyring.gpg``, a source list
  ``/etc/apt/sources.list.d/cuda-<distro>-<arch>.list`` and the pin file
  ``/etc/apt/preferences.d/cuda-repository-pin-600`` (``dpkg -L cuda-keyring`` of 1.0-1,
  quoted in autowarefoundation PR #265; NVIDIA's maintainer in
  ansible-role-nvidia-driver PR #59: "the cuda-keyring package is actually installing
  the repo files itself"; deepops' air-gap notes move 1.1-1's list aside). The pin's
  text is NVIDIA's own file: ``Package: *`` / ``Pin: release l=NVIDIA CUDA`` /
  ``Pin-Priority: 600``. The list's text is inferred (``deb [signed-by=<keyring>]
  <url> /``), and that 1.1-1 still ships the pin file is a guess: it is kept because a
  playbook must survive it (600 for every NVIDIA package, the branch's newest first).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from email.utils import formatdate
from pathlib import Path

from provisioner.errors import LabError
from provisioner.lab.packages import Package, compute_library, debian_contrib_packages
from provisioner.lab.repos import (
    _apt_index,
    _build_deb,
    _packages,
    _write_packages,
    build_cached,
    build_rpms,
)

KEYRING = "/usr/share/keyrings/cuda-archive-keyring.gpg"
PIN_600 = "Package: *\nPin: release l=NVIDIA CUDA\nPin-Priority: 600\n"
# gpuctl's lab OS -> NVIDIA's repository directory name.
DISTRO = {"ubuntu22.04": "ubuntu2204", "debian12": "debian12", "rocky9": "rhel9"}
# NVIDIA's RHEL repository key, by the name the playbooks' gpgkey uses (and NVIDIA's
# cuda-rhel9.repo: gpgkey=.../D42D0685.pub).
RPM_KEY = "D42D0685.pub"
# EPEL as a node without a mirror gets it: the epel-release rpm by URL
# (dl.fedoraproject.org/pub/epel/epel-release-latest-9.noarch.rpm, as
# ansible-role-nvidia-driver and the playbooks install it), whose repo file points at
# EPEL with EPEL's key. The real file names mirrors by metalink; the stand-in's baseurl
# is the lab's (an adaptation).
EPEL_REPO = """[epel]
name=Extra Packages for Enterprise Linux 9 - $basearch
baseurl={url}/pub/epel/9/Everything/x86_64/
enabled=1
gpgcheck=1
gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-EPEL-9
"""


def _gpg(home: Path, *args: str, what: str) -> bytes:
    res = subprocess.run(["gpg", "--homedir", str(home), "--batch", "--pinentry-mode",
                          "loopback", "--passphrase", "", *args], capture_output=True,
                         check=False)
    if res.returncode != 0:
        raise LabError(f"gpg ({what}) failed: {res.stderr.decode(errors='replace')[-300:]}")
    return res.stdout


def stop_agent(home: Path) -> None:
    """Stop the gpg-agent that signing started for ``home`` (it would outlive the lab)."""
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
                   capture_output=True, check=False)


def signing_key(home: Path, who: str = "NVIDIA") -> bytes:
    """The lab's stand-in for NVIDIA's archive key (made once in ``home``); returns the
    public key, binary, as cuda-archive-keyring.gpg holds it."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not _gpg(home, "--list-secret-keys", what="list keys").strip():
        _gpg(home, "--quick-gen-key", f"gpuctl lab {who} stand-in <lab@localhost>",
             "ed25519", "sign", "never", what="make a key")
    return _gpg(home, "--export", what="export the key")


def build_network_repo(dest: Path, os_name: str, local_repo: Path, base_url: str,
                       gnupg: Path) -> Path:
    """Lay out ``<dest>/<distro>/x86_64/`` from the lab's built repository for
    ``os_name`` (``local_repo``) and sign it with the key in ``gnupg``: apt's index
    (with ``cuda-keyring_1.1-1_all.deb`` pointing at ``base_url``), or on RHEL every rpm
    and the key as ``D42D0685.pub``. Returns the distribution's directory."""
    if os_name not in DISTRO:
        raise LabError(f"no NVIDIA network repository stand-in for {os_name}")
    distro = DISTRO[os_name]
    repo = dest / distro / "x86_64"
    if repo.exists():
        shutil.rmtree(repo)
    if distro.startswith("rhel"):
        shutil.copytree(local_repo / "nvidia", repo)
        sign_rpms(repo, gnupg)
        (repo / RPM_KEY).write_bytes(_gpg(gnupg, "--armor", "--export", what="export the key"))
        return repo
    shutil.copytree(local_repo, repo)
    key = signing_key(gnupg)
    keyring = Package(
        "cuda-keyring", "1.1-1", "NVIDIA CUDA archive keyring, lab stand-in",
        {KEYRING: (key, 0o644),
         f"/etc/apt/sources.list.d/cuda-{distro}-x86_64.list": (
             f"deb [signed-by={KEYRING}] {base_url.rstrip('/')}/{distro}/x86_64/ /\n", 0o644),
         "/etc/apt/preferences.d/cuda-repository-pin-600": (PIN_600, 0o644)})
    with tempfile.TemporaryDirectory(prefix="gpuctl-lab-keyring-") as tmp:
        _build_deb(keyring, repo, Path(tmp))
    # The keyring is fetched by URL, not through the index: the index is unchanged.
    sign_release(repo, gnupg)
    return repo


def build_epel(www: Path, local_repo: Path, url: str, gnupg: Path) -> str:
    """EPEL under ``www/pub/epel`` (the lab's EPEL packages, signed with an EPEL stand-in
    key) and ``epel-release-latest-9.noarch.rpm`` beside it; returns that rpm's URL."""
    epel = www / "pub/epel"
    repo = epel / "9/Everything/x86_64"
    if repo.exists():
        shutil.rmtree(repo)
    shutil.copytree(local_repo / "epel", repo)
    signing_key(gnupg, "EPEL")
    sign_rpms(repo, gnupg)
    key = _gpg(gnupg, "--armor", "--export", what="export the EPEL key")
    release = Package("epel-release", "9-7.el9", "EPEL repository configuration, lab stand-in",
                      {"/etc/yum.repos.d/epel.repo": (EPEL_REPO.format(url=url), 0o644),
                       "/etc/pki/rpm-gpg/RPM-GPG-KEY-EPEL-9": (key, 0o644)})
    built = build_rpms([release], epel)[0]
    built.rename(epel / "epel-release-latest-9.noarch.rpm")
    sign_rpms(epel, gnupg, index=False)  # the rpm by URL is signed too, as Fedora's is
    (epel / "RPM-GPG-KEY-EPEL-9").write_bytes(key)
    return f"{url}/pub/epel/epel-release-latest-9.noarch.rpm"


def sign_rpms(repo: Path, gnupg: Path, *, index: bool = True) -> None:
    """Sign the rpms directly in ``repo`` (rpmsign, the key in ``gnupg``) and, with
    ``index``, index it again keeping its module metadata."""
    signing_key(gnupg)
    rpms = sorted(str(p) for p in repo.glob("*.rpm"))
    if rpms:
        name = _gpg(gnupg, "--list-secret-keys", "--with-colons", what="list keys")
        uid = next(line.split(":")[9] for line in name.decode().splitlines()
                   if line.startswith("uid:"))
        res = subprocess.run(["rpmsign", "--addsign", "--define", f"__gpg {shutil.which('gpg')}",
                              "--define", f"_gpg_path {gnupg}",
                              "--define", f"_gpg_name {uid}", *rpms],
                             capture_output=True, check=False)
        if res.returncode != 0:
            raise LabError("rpmsign failed: "
                           f"{(res.stderr or res.stdout).decode(errors='replace')[-300:]}")
    if not index:
        return
    res = subprocess.run(["createrepo_c", "--quiet", "--update", "--keep-all-metadata",
                          str(repo)], capture_output=True, check=False)
    if res.returncode != 0:
        raise LabError(f"createrepo_c failed: {res.stderr.decode(errors='replace')[-300:]}")


def sign_release(repo: Path, gnupg: Path) -> bytes:
    """Sign ``repo``'s Release as apt reads it (InRelease, Release.gpg) with the key in
    ``gnupg`` (made there when missing); returns the public key, armored."""
    signing_key(gnupg)
    for name in ("InRelease", "Release.gpg"):
        (repo / name).unlink(missing_ok=True)
    _gpg(gnupg, "--clearsign", "-o", str(repo / "InRelease"), str(repo / "Release"),
         what="sign InRelease")
    _gpg(gnupg, "--armor", "--detach-sign", "-o", str(repo / "Release.gpg"),
         str(repo / "Release"), what="sign Release.gpg")
    return _gpg(gnupg, "--armor", "--export", what="export the key")


def build_ubuntu_archive(dest: Path) -> Path:
    """A stand-in of Ubuntu's own archive (Origin and Label "Ubuntu", as Canonical's
    Release files say) carrying Canonical's build of the 570 driver at a release newer
    than the lab's NVIDIA repository has, in Canonical's version scheme (packages.ubuntu.com
    lists nvidia-fabricmanager-570 570.172.08-0ubuntu1), with its library at the same
    version. A node that has both must still get NVIDIA's, the library included."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    version = "570.172.08-0ubuntu1"
    pkgs = [Package("nvidia-driver-570-open", version,
                    "NVIDIA driver metapackage (Ubuntu's archive), lab stand-in",
                    {"/usr/share/gpuctl-lab/ubuntu-archive-driver": ("570.172.08", 0o644)},
                    depends=[f"libnvidia-compute-570 (= {version})"]),
            compute_library("570", version)]
    with tempfile.TemporaryDirectory(prefix="gpuctl-lab-ubuntu-") as tmp:
        debs = [_build_deb(pkg, dest, Path(tmp)) for pkg in pkgs]
    _apt_index(dest, debs, origin="Ubuntu", label="Ubuntu")
    return dest


# Debian's own archive as a Debian 12 node reaches it (deb.debian.org's layout: dists/
# <suite>/<component>/binary-<arch>/Packages, pool/<component>/...), with Debian's
# Release fields (Origin and Label "Debian", Suite, Codename, Components; an installed
# bookworm's apt-get indextargets shows them), signed with a lab key standing in for
# Debian's archive key. main is empty (the lab node's own root is this machine's Debian;
# apt downloads no index its Release lists empty, as with bookworm-updates' at times);
# contrib has what NVIDIA's Debian packages need from it (packages.debian_contrib_packages).
# Debian's non-free components are left out.
DEBIAN_SUITE = "bookworm"
DEBIAN_COMPONENTS = ("main", "contrib")
DEBIAN_ARCHIVE_IN_NODE = "/srv/gpuctl-lab/debian"
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def build_debian_archive(dest: Path, gnupg: Path) -> bytes:
    """Debian's archive stand-in in ``dest`` (main and contrib), signed with the key in
    ``gnupg`` (made there when missing); returns that key, binary, as Debian's keyring
    file holds it."""
    if dest.exists():
        shutil.rmtree(dest)
    dist = dest / "dists" / DEBIAN_SUITE
    sums = []
    with tempfile.TemporaryDirectory(prefix="gpuctl-lab-debian-") as tmp:
        for component in DEBIAN_COMPONENTS:
            pool = dest / "pool" / component
            pool.mkdir(parents=True)
            debs = [_build_deb(p, pool, Path(tmp))
                    for p in (debian_contrib_packages() if component == "contrib" else [])]
            sums += _write_packages(dist / component / "binary-amd64",
                                    _packages(debs, dest, prefix=""),
                                    f"{component}/binary-amd64/")
    (dist / "Release").write_text("\n".join([
        "Origin: Debian", "Label: Debian", "Suite: oldstable", "Version: 12.11",
        f"Codename: {DEBIAN_SUITE}", f"Date: {formatdate(usegmt=True)}",
        "Architectures: amd64", f"Components: {' '.join(DEBIAN_COMPONENTS)}",
        "Description: Debian 12.11 Released (gpuctl lab stand-in)", "SHA256:", *sums]) + "\n")
    key = signing_key(gnupg, "Debian")
    sign_release(dist, gnupg)
    stop_agent(gnupg)
    os.chmod(dest, 0o755)  # noqa: S103  (nodes read it as a package archive)
    return key


def cached_debian_archive() -> Path:
    """The lab's Debian archive (main and contrib) from the build cache, built first when
    missing: a directory with ``archive/``, the ``gnupg`` home whose key signed it and
    that key as ``keyring.gpg``."""
    def build(out: Path) -> None:
        out.mkdir()
        (out / "keyring.gpg").write_bytes(build_debian_archive(out / "archive", out / "gnupg"))
    return build_cached("debian-", ("packages.py", "repos.py", "netrepo.py"), "", build)
