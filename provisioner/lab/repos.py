"""Build the lab's package repositories from the stand-ins in ``packages``: an apt
repository (dpkg-deb, a flat Packages/Release index) for the Debian family, rpm
repositories (rpmbuild, createrepo_c, modular metadata for dnf module streams) for
RHEL. They exist only in the lab."""

from __future__ import annotations

import gzip
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path

from provisioner.errors import LabError
from provisioner.lab.packages import (
    OS_REPO,
    ModuleStream,
    Package,
    all_packages,
    epel_packages,
    os_packages,
)


def _stage(pkg: Package, root: Path) -> None:
    for rel, (content, mode) in pkg.files.items():
        path = root / rel.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        path.chmod(mode)


def _run(argv: list[str], what: str) -> None:
    res = subprocess.run(argv, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise LabError(f"{what} failed: {(res.stderr or res.stdout).strip()[-300:]}")


def _build_deb(pkg: Package, out_dir: Path, work: Path) -> Path:
    root = work / f"{pkg.name}_{pkg.version}"
    (root / "DEBIAN").mkdir(parents=True)
    control = {"Package": pkg.name, "Version": pkg.version, "Architecture": "all",
               "Maintainer": "gpuctl lab <lab@localhost>", "Section": "misc",
               "Priority": "optional"}
    for key, values in (("Depends", pkg.depends), ("Provides", pkg.provides),
                        ("Conflicts", pkg.conflicts), ("Replaces", pkg.conflicts)):
        if values:
            control[key] = ", ".join(values)
    control["Description"] = pkg.description
    (root / "DEBIAN/control").write_text("".join(f"{k}: {v}\n" for k, v in control.items()))
    for script, body in (("postinst", pkg.postinst), ("postrm", pkg.postrm)):
        if body:
            path = root / "DEBIAN" / script
            path.write_text(f"#!/bin/sh\nset -e\n{body}\nexit 0\n")
            path.chmod(0o755)
    _stage(pkg, root)
    deb = out_dir / f"{pkg.name}_{pkg.version.replace(':', '%3a')}_all.deb"
    _run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(deb)],
         f"dpkg-deb for {pkg.name}")
    return deb


def _packages(debs: list[Path], root: Path, prefix: str = "./") -> bytes:
    """An apt ``Packages`` index of ``debs``, their file names relative to ``root``."""
    stanzas = []
    for deb in debs:
        data = deb.read_bytes()
        control = subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True,
                                 check=True).stdout.strip()
        stanzas.append(f"{control}\nFilename: {prefix}{deb.relative_to(root).as_posix()}\n"
                       f"Size: {len(data)}\n"
                       f"MD5sum: {hashlib.md5(data).hexdigest()}\n"  # noqa: S324 (apt index)
                       f"SHA256: {hashlib.sha256(data).hexdigest()}\n")
    return "\n".join(stanzas).encode()


def _write_packages(index: Path, packages: bytes, listed_as: str = "") -> list[str]:
    """Write ``Packages`` and ``Packages.gz`` into ``index``; their Release ``SHA256:``
    lines, named ``listed_as`` + file name (their path below the Release file)."""
    index.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, blob in (("Packages", packages),
                       ("Packages.gz", gzip.compress(packages, mtime=0))):
        (index / name).write_bytes(blob)
        lines.append(f" {hashlib.sha256(blob).hexdigest()} {len(blob)} {listed_as}{name}")
    return lines


def _apt_index(repo: Path, debs: list[Path], origin: str = "NVIDIA",
               label: str = "NVIDIA CUDA") -> None:
    sums = _write_packages(repo, _packages(debs, repo))
    # The fields of NVIDIA's own Release files (cuda-repo-management repo-debian.sh):
    # no Suite or Codename, so apt pins can select on o=, l= or the origin host only.
    lines = [f"Origin: {origin}", f"Label: {label}", "Architecture: x86_64",
             f"Date: {formatdate(usegmt=True)}", "SHA256:", *sums]
    lines.append("Acquire-By-Hash: no")
    (repo / "Release").write_text("\n".join(lines) + "\n")


SPEC = """Name: {name}
Version: {version}
Release: {release}
{epoch}Summary: {summary}
License: Proprietary
BuildArch: noarch
AutoReqProv: no
{tags}
%description
{summary}
%install
cp -a {stage}/. %{{buildroot}}/
{post}{postun}%files
{files}
"""


def _evr(pkg: Package) -> tuple[str, str, str]:
    """(epoch, version, release) of a Debian-style version string, for rpm."""
    epoch, _, rest = pkg.version.rpartition(":")
    version, _, release = rest.partition("-")
    return pkg.epoch or epoch, version, release or "1"


def _build_rpm(pkg: Package, out_dir: Path, work: Path) -> Path:
    epoch, version, release = _evr(pkg)
    stage = work / f"stage-{pkg.name}-{pkg.version}"
    stage.mkdir(parents=True)
    _stage(pkg, stage)
    tags = "".join(f"Requires: {d}\n" for d in pkg.depends) + \
        "".join(f"Provides: {p}\n" for p in pkg.provides) + \
        "".join(f"Conflicts: {c}\n" for c in pkg.conflicts)
    spec = work / f"{pkg.name}-{pkg.version}.spec"
    spec.write_text(SPEC.format(
        name=pkg.name, version=version, release=release, summary=pkg.description,
        epoch=f"Epoch: {epoch}\n" if epoch else "", tags=tags, stage=stage,
        post=f"%post\n{pkg.postinst}\n" if pkg.postinst else "",
        postun=f"%postun\n{pkg.postrm}\n" if pkg.postrm else "",
        files="\n".join(pkg.files)))
    _run(["rpmbuild", "--quiet", "-bb", str(spec), "--define", f"_topdir {work / 'top'}",
          "--define", f"_rpmdir {out_dir}", "--define", "_build_id_links none",
          "--define", "_rpmfilename %{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}.rpm"],
         f"rpmbuild for {pkg.name}")
    return out_dir / f"{pkg.name}-{version}-{release}.noarch.rpm"


def _nevra(pkg: Package) -> str:
    epoch, version, release = _evr(pkg)
    return f"{pkg.name}-{epoch or 0}:{version}-{release}.noarch"


def _modules_yaml(streams: list[ModuleStream]) -> str:
    docs = []
    for s in streams:
        docs.append(
            "---\ndocument: modulemd\nversion: 2\ndata:\n"
            f"  name: {s.module}\n  stream: \"{s.stream}\"\n  version: 1\n"
            "  context: \"00000000\"\n  arch: x86_64\n  summary: NVIDIA driver (lab stand-in)\n"
            "  description: NVIDIA driver (lab stand-in)\n  license:\n    module: [MIT]\n"
            "  profiles:\n    default:\n      rpms: ["
            + ", ".join(sorted({p.name for p in s.packages})) + "]\n"
            "  artifacts:\n    rpms:\n"
            + "".join(f"      - {_nevra(p)}\n" for p in s.packages + s.extra) + "...\n")
    for module in sorted({s.module for s in streams}):
        docs.append("---\ndocument: modulemd-defaults\nversion: 1\ndata:\n"
                    f"  module: {module}\n  profiles:\n"
                    + "".join(f"    \"{s.stream}\": [default]\n"
                              for s in streams if s.module == module) + "...\n")
    return "".join(docs)


def build_rpms(pkgs: list[Package], out_dir: Path) -> list[Path]:
    """Build ``pkgs`` as rpm files into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpuctl-lab-rpm-") as tmp:
        return [_build_rpm(pkg, out_dir, Path(tmp)) for pkg in pkgs]


def _rpm_repo(repo: Path, pkgs: list[Package], streams: list[ModuleStream],
              work: Path) -> None:
    build_rpms(pkgs, repo)
    _run(["createrepo_c", "--quiet", str(repo)], "createrepo_c")
    if streams:
        modules = work / "modules.yaml"
        modules.write_text(_modules_yaml(streams))
        _run(["modifyrepo_c", "--mdtype=modules", str(modules),
              str(repo / "repodata")], "modifyrepo_c")


def build_repo(repo: Path, os_name: str = "ubuntu22.04", **variant: bool) -> Path:
    """Build the repository of lab OS ``os_name`` (one variant) into ``repo``; returns it.

    On RHEL ``repo`` holds NVIDIA's repository at its top and the OS's stand-in
    repositories beside it: ``baseos`` (kernel headers, infiniband-diags), ``crb``
    (empty; enabling it is what counts) and ``epel`` (dkms)."""
    family = OS_REPO[os_name]
    tool = "rpmbuild" if family == "rhel" else "dpkg-deb"
    if not shutil.which(tool):
        raise LabError(f"{tool} not found: the lab's {os_name} package repository needs it "
                       "(scripts/setup.sh installs it)")
    if repo.exists():
        shutil.rmtree(repo)
    repo.mkdir(parents=True)
    pkgs, streams = all_packages(family, **variant)
    with tempfile.TemporaryDirectory(prefix="gpuctl-lab-pkg-") as tmp:
        work = Path(tmp)
        if family == "rhel":
            names = {p.name for p in os_packages(family)}
            base = [p for p in pkgs if p.name in names]
            _rpm_repo(repo / "nvidia", [p for p in pkgs if p not in base], streams, work)
            _rpm_repo(repo / "baseos", base, [], work)
            _rpm_repo(repo / "crb", [], [], work)
            _rpm_repo(repo / "epel", epel_packages(), [], work)
        else:
            _apt_index(repo, [_build_deb(p, repo, work) for p in pkgs])
    os.chmod(repo, 0o755)  # noqa: S103  (nodes read it as a package repository)
    return repo


def build_cached(name: str, sources: tuple[str, ...], key: str,
                 build: Callable[[Path], object]) -> Path:
    """A build's output from the build cache, ``build(dir)`` making it first when missing.
    The cache key hashes ``sources`` (the files of this package the build reads) and
    ``key``, so a changed stand-in is never served stale. The cache is
    ``$XDG_CACHE_HOME/gpuctl/lab-repos`` (``~/.cache``); builds take seconds, and every
    lab up in the test suite needs one."""
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for source in sources:
        digest.update((here / source).read_bytes())
    digest.update(key.encode())
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpuctl/lab-repos"
    done = root / f"{name}{digest.hexdigest()[:24]}"
    if not done.exists():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
        try:
            build(tmp / "out")
            os.replace(tmp / "out", done)  # atomic: a concurrent build loses the race
        except OSError:
            if not done.exists():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return done


def cached_repo(variant: str, os_name: str, flags: dict[str, bool]) -> Path:
    """A built repository (one variant, one OS) from the build cache. The key covers the
    stand-ins' sources, the OS, the variant and the running kernel's release (the
    headers package)."""
    return build_cached("", ("packages.py", "repos.py", "os_images.py", "standin_smi.py",
                             "standin_dcgmi.py"),
                        f"{os_name}|{variant}|{sorted(flags.items())}|{platform.release()}",
                        lambda out: build_repo(out, os_name, **flags))
