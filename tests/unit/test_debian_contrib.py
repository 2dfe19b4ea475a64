"""playbooks/library/gpuctl_debian_contrib.py against this machine's real apt: apt reads
the sources (APT_CONFIG points it at a private directory), says where each entry is
(``apt-get indextargets``), and must accept what the module writes beside them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from provisioner.shipped import shipped_dir

pytestmark = pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt")

MODULE = shipped_dir() / "playbooks/library/gpuctl_debian_contrib.py"
DEBIAN = "http://deb.debian.org/debian"
NEEDED = ("glx-alternative-nvidia", "nvidia-installer-cleanup", "nvidia-kernel-common")
CONTRIB_INDEX = "".join(f"Package: {n}\nVersion: 1.0\nArchitecture: all\nFilename: pool/{n}.deb\n"
                        "Size: 1\n\n" for n in NEEDED)
# An inline key in Signed-By: a field with continuation lines (sources.list(5)).
INLINE_KEY = ("Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n mDMEZ0lab0key\n"
              " -----END PGP PUBLIC KEY BLOCK-----\n")


class Apt:
    def __init__(self, root: Path) -> None:
        self.parts, self.lists = root / "parts", root / "lists"
        (self.lists / "partial").mkdir(parents=True)
        self.parts.mkdir()
        self.conf = root / "apt.conf"
        self.conf.write_text(f'Dir::Etc::sourcelist "/dev/null";\nDir::Etc::sourceparts '
                             f'"{self.parts}";\nDir::State::Lists "{self.lists}";\n')
        self.ours = {"list_path": str(self.parts / "gpuctl-debian-contrib.list"),
                     "sources_path": str(self.parts / "gpuctl-debian-contrib.sources"),
                     "packages": list(NEEDED)}

    def downloaded(self, uri: str, suite: str, origin: str, *components: str,
                   offered: str = "main contrib", packages: str = "") -> None:
        """The index files ``apt-get update`` would have left for ``uri`` ``suite``: its
        Release (offering ``offered``) and the Packages of ``components`` (``packages``
        in contrib's)."""
        # apt's list file names (URItoFileName): no scheme, "//" or password, "/" as "_".
        stem = re.sub(r"^[a-z+]+:(//[^/@]*@|//)?", "", uri).rstrip("/").replace("/", "_") + \
            f"_dists_{suite}"
        (self.lists / f"{stem}_Release").write_text(
            f"Origin: {origin}\nLabel: {origin}\nCodename: bookworm\nComponents: {offered}"
            "\nArchitectures: amd64\n")
        for component in components:
            (self.lists / f"{stem}_{component}_binary-amd64_Packages").write_text(
                packages if component == "contrib" else "")

    def env(self) -> dict[str, str]:
        return {**os.environ, "APT_CONFIG": str(self.conf)}

    def module(self) -> dict:  # type: ignore[type-arg]
        args = self.conf.with_name("args.json")
        # Check mode: the module writes nothing and runs no apt-get update (this machine's
        # apt would fetch); with --diff it shows what it would write.
        args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {
            **self.ours, "_ansible_check_mode": True, "_ansible_diff": True}}))
        res = subprocess.run([sys.executable, str(MODULE), str(args)], capture_output=True,
                             text=True, env=self.env(), check=False, timeout=60)
        out: dict = json.loads(res.stdout)  # type: ignore[type-arg]
        return out

    def write(self, doc: dict) -> None:  # type: ignore[type-arg]
        """Do what the module would (its apply path runs in the lab's e2e test)."""
        for d in doc.get("diff", []):
            Path(d["after_header"]).write_text(d["after"])
        for path in doc["remove"]:
            Path(path).unlink()

    def configured(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["apt-get", "indextargets", "--no-release-info", "--format",
                               "$(REPO_URI) $(RELEASE) $(COMPONENT)", "Identifier: Packages"],
                              capture_output=True, text=True, env=self.env(), check=False)


@pytest.fixture
def apt(tmp_path: Path) -> Apt:
    return Apt(tmp_path)


def contents(doc: dict) -> dict[str, str]:  # type: ignore[type-arg]
    """What the module would write, by file type ("" for a file it leaves alone)."""
    out = {".list": "", ".sources": ""}
    for d in doc.get("diff", []):
        out[Path(d["after_header"]).suffix] = d["after"]
    return out


def test_the_admins_entries_are_copied_with_contrib_and_apt_accepts_them(apt: Apt) -> None:
    """A deb822 stanza with an inline Signed-By key (two suites) and a one-line entry
    with options: each copied with contrib as its only component, every option kept, and
    apt reads the result without a conflict. NVIDIA's archive is left alone."""
    (apt.parts / "debian.sources").write_text(
        f"# the installer's\nTypes: deb deb-src\nURIs: {DEBIAN}\nSuites: bookworm "
        f"bookworm-updates\nComponents: main non-free-firmware\n{INLINE_KEY}")
    (apt.parts / "security.list").write_text(
        "deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        "http://security.debian.org/debian-security bookworm-security main # security\n")
    (apt.parts / "cuda.list").write_text(
        "deb [signed-by=/usr/share/keyrings/cuda-archive-keyring.gpg] "
        "https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/ /\n")
    for suite in ("bookworm", "bookworm-updates"):
        apt.downloaded(DEBIAN, suite, "Debian", "main")
    apt.downloaded("http://security.debian.org/debian-security", "bookworm-security",
                   "Debian", "main")
    doc = apt.module()
    files = contents(doc)
    assert files[".list"].endswith(
        "deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        "http://security.debian.org/debian-security bookworm-security contrib\n"), files
    stanzas = files[".sources"].split("\n\n")
    assert [s.splitlines()[-9:] for s in stanzas][1] == [
        "Types: deb", f"URIs: {DEBIAN}", "Suites: bookworm-updates", "Components: contrib",
        *INLINE_KEY.splitlines()], files
    assert "bookworm\nComponents: contrib" in stanzas[0]
    assert doc["unreadable"] == [] and len(doc["missing"]) == 3
    apt.write(doc)
    seen = apt.configured()
    assert seen.returncode == 0, seen.stderr
    got = set(seen.stdout.split("\n"))
    assert {f"{DEBIAN}/ {s} contrib" for s in ("bookworm", "bookworm-updates")} <= got
    assert "http://security.debian.org/debian-security/ bookworm-security contrib" in got
    # Run again: the same files (nothing to change), our own entries not taken for the
    # admin's.
    again = apt.module()
    assert len(doc["write"]) == 2 and again["write"] == again["remove"] == [], again


def test_an_entry_without_the_admins_options_is_what_apt_refuses(apt: Apt) -> None:
    """Why the options are copied: a contrib entry for the same archive without the
    admin's Signed-By makes apt refuse every source (apt's own words)."""
    (apt.parts / "debian.sources").write_text(
        f"Types: deb\nURIs: {DEBIAN}\nSuites: bookworm\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    (apt.parts / "naive.list").write_text(f"deb {DEBIAN} bookworm contrib\n")
    seen = apt.configured()
    assert seen.returncode != 0 and "Conflicting values set for option Signed-By" in \
        seen.stderr, seen


def test_nothing_is_added_where_contrib_is_there_and_ours_goes(apt: Apt) -> None:
    """An archive whose contrib the admin enabled needs nothing; gpuctl's earlier entry
    for it is removed. An archive of another origin never gets contrib."""
    (apt.parts / "debian.sources").write_text(
        f"Types: deb\nURIs: {DEBIAN}\nSuites: bookworm\nComponents: main\n")
    apt.downloaded(DEBIAN, "bookworm", "Debian", "main")
    (apt.parts / "site.list").write_text("deb http://mirror.site/debian bookworm main\n")
    apt.downloaded("http://mirror.site/debian", "bookworm", "Site", "main")
    first = apt.module()
    assert contents(first)[".list"] == "" and contents(first)[".sources"]
    apt.write(first)
    (apt.parts / "debian.sources").write_text(
        f"Types: deb\nURIs: {DEBIAN}\nSuites: bookworm\nComponents: main contrib\n")
    apt.downloaded(DEBIAN, "bookworm", "Debian", "main", "contrib", packages=CONTRIB_INDEX)
    later = apt.module()
    assert contents(later) == {".list": "", ".sources": ""}, later
    assert later["remove"] == [apt.ours["sources_path"]] and later["write"] == []
    assert later["missing"] == [] and later["adding"] == []


def test_missing_clears_once_apt_has_the_packages(apt: Apt) -> None:
    """The confirmation after ``apt-get update``: the packages stay missing until an
    index apt downloaded has them."""
    (apt.parts / "debian.list").write_text(f"deb {DEBIAN} bookworm main\n")
    apt.downloaded(DEBIAN, "bookworm", "Debian", "main")
    doc = apt.module()
    assert doc["missing"] == list(NEEDED) and doc["adding"] == [f"{DEBIAN} bookworm"]
    apt.write(doc)
    assert apt.module()["missing"] == list(NEEDED)
    apt.downloaded(DEBIAN, "bookworm", "Debian", "main", "contrib", packages=CONTRIB_INDEX)
    assert apt.module()["missing"] == []


def test_an_archive_without_contrib_is_named_not_added(apt: Apt) -> None:
    """A mirror whose Release offers no contrib gets no entry (apt would only skip it
    with a notice on every update): it is named."""
    (apt.parts / "debian.list").write_text(f"deb {DEBIAN} bookworm main\n")
    apt.downloaded(DEBIAN, "bookworm", "Debian", "main", offered="main")
    doc = apt.module()
    assert doc["no_contrib"] == [f"{DEBIAN} bookworm"] and doc["adding"] == []
    assert contents(doc) == {".list": "", ".sources": ""}


def test_file_uris_are_matched_as_apt_writes_them(apt: Apt) -> None:
    """``file:///`` and ``mirror+file:///`` (Debian's cloud images) are ``file:/`` to apt;
    the admin's spelling is what gets copied."""
    (apt.parts / "debian.sources").write_text(
        "Types: deb\nURIs: mirror+file:///etc/apt/mirrors/debian.list\nSuites: bookworm\n"
        "Components: main\n")
    (apt.parts / "local.list").write_text("deb file:///srv/mirror/debian bookworm main\n")
    apt.downloaded("mirror+file:/etc/apt/mirrors/debian.list", "bookworm", "Debian", "main")
    apt.downloaded("file:/srv/mirror/debian", "bookworm", "Debian", "main")
    doc = apt.module()
    assert doc["unreadable"] == [], doc
    files = contents(doc)
    assert "URIs: mirror+file:///etc/apt/mirrors/debian.list\nSuites: bookworm\n" \
        "Components: contrib\n" in files[".sources"], files
    assert files[".list"].endswith("deb file:///srv/mirror/debian bookworm contrib\n"), files


def test_nothing_is_added_where_another_repository_has_the_packages(apt: Apt) -> None:
    """A site's own repository carries the packages: Debian's sources are left alone."""
    (apt.parts / "debian.list").write_text(f"deb {DEBIAN} bookworm main\n")
    apt.downloaded(DEBIAN, "bookworm", "Debian", "main")
    (apt.parts / "site.list").write_text("deb http://repo.site/debian bookworm contrib\n")
    apt.downloaded("http://repo.site/debian", "bookworm", "Site", "contrib",
                   packages=CONTRIB_INDEX)
    doc = apt.module()
    assert doc["missing"] == [] and contents(doc) == {".list": "", ".sources": ""}, doc


def test_an_archive_whose_main_index_apt_did_not_download_is_still_found(apt: Apt) -> None:
    """apt downloads no index its Release lists empty (bookworm-updates' main after a
    point release): the archive's origin comes from its Release file all the same."""
    (apt.parts / "debian.list").write_text(f"deb {DEBIAN} bookworm-updates main\n")
    apt.downloaded(DEBIAN, "bookworm-updates", "Debian")  # the Release only
    doc = apt.module()
    assert doc["adding"] == [f"{DEBIAN} bookworm-updates"], doc


def test_check_mode_writes_nothing_and_passwords_stay_out_of_the_results(apt: Apt) -> None:
    """Debian's security archive names its components ``updates/contrib``; a mirror URL
    with a password is copied as written into the file, never into what the module
    reports (ansible-runner keeps its results on disk)."""
    secret = "http://user:s3cret@mirror.site/debian-security"
    (apt.parts / "security.list").write_text(f"deb {secret} bookworm-security main\n")
    apt.downloaded(secret, "bookworm-security", "Debian", "main",
                   offered="updates/main updates/contrib")
    doc = apt.module()
    assert doc["adding"] == ["http://***@mirror.site/debian-security bookworm-security"], doc
    assert "s3cret" not in json.dumps(doc)
    assert not Path(apt.ours["list_path"]).exists()  # check mode


def test_a_stale_file_of_gpuctls_that_apt_refuses_is_replaced(apt: Apt) -> None:
    """The admin moved Debian's key after gpuctl copied the entry: apt refuses every
    source while the two disagree. gpuctl reads the admin's sources without its own
    file, and rewrites that file from the admin's entry as it is now."""
    (apt.parts / "debian.sources").write_text(
        f"Types: deb\nURIs: {DEBIAN}\nSuites: bookworm\nComponents: main\n"
        "Signed-By: /etc/apt/keyrings/debian-new.gpg\n")
    Path(apt.ours["sources_path"]).write_text(
        f"Types: deb\nURIs: {DEBIAN}\nSuites: bookworm\nComponents: contrib\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    assert apt.configured().returncode != 0  # apt refuses them all
    apt.downloaded(DEBIAN, "bookworm", "Debian", "main")
    doc = apt.module()
    assert "Signed-By: /etc/apt/keyrings/debian-new.gpg" in contents(doc)[".sources"], doc
    apt.write(doc)
    assert apt.configured().returncode == 0
