#!/usr/bin/python3
"""Ansible module: add Debian's contrib component beside the admin's sources where
NVIDIA's Debian driver packages need it.

NVIDIA's Debian packages depend on packages Debian keeps in contrib: the DKMS module
package pre-depends on nvidia-installer-cleanup, its kernel support package depends on
nvidia-kernel-common, and nvidia-alternative on glx-alternative-nvidia (Debian's
packaging, mirrored as NVIDIA/debian-packaging-nvidia-driver debian/control.in at
5573996; packages.debian.org: nvidia-installer-cleanup and nvidia-kernel-common, source
nvidia-support, and glx-alternative-nvidia, source glx-alternatives, are [contrib]). That
is why NVIDIA's Debian steps run ``add-apt-repository contrib``.

gpuctl never edits the admin's sources. While apt has no candidate for those packages,
for each of Debian's archives (``Origin: Debian`` in the Release file apt downloaded) that
a node takes ``main`` from but not ``contrib``, and whose Release offers contrib, the
admin's own entry is copied into a file of gpuctl's with ``contrib`` as its only
component, every other option kept: apt refuses two entries for one archive whose
``Signed-By`` (or ``Trusted``, ...) differ ("Conflicting values set for option Signed-By
regarding source ...", apt 2.6), and then reads no source at all.

The change is made here, not in the play, so that no file content (a mirror URL may hold
a password) leaves the node, and so that it is applied the safe way round:
- apt is read without gpuctl's own files (a stale one of them never hides the admin's);
- each new file is written outside apt's sources first, apt fetches its indexes alone
  (``apt-get update`` of that file only: apt's words are about it), and only then is it
  moved into place; an interrupted run leaves nothing half-done among the sources;
- the packages must then have candidates; if not, gpuctl's files are put back as they
  were, and the failure carries apt's own words.
apt runs with ``LC_ALL=C``: its words are parsed. Check mode changes nothing.
Where apt's entries come from is apt's own answer (``apt-get indextargets``:
``Sourcesentry`` names the file and its line, or for deb822 its stanza).
"""

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: gpuctl_debian_contrib
short_description: Add Debian's contrib beside the admin's sources where packages need it
options:
  list_path: {type: str, required: true}
  sources_path: {type: str, required: true}
  packages: {type: list, elements: str, required: true}
  staging_dir: {type: str, default: /var/lib/gpuctl/apt-staging}
  retries: {type: int, default: 5}
  origin: {type: str, default: Debian}
  component: {type: str, default: contrib}
"""

FIELDS = "$(REPO_URI)\t$(RELEASE)\t$(COMPONENT)\t$(TARGET_OF)\t$(SOURCESENTRY)\t$(FILENAME)"
HEADER = ("# Managed by gpuctl: Debian's {component} component, which NVIDIA's Debian "
          "packages need,\n# for the archives below, copied from the admin's entries "
          "(their options kept).\n")
# deb822 booleans apt reads as false (apt-pkg/contrib/strutl.cc StringToBool).
FALSE = {"no", "false", "without", "off", "disable", "0"}
ENV = {**os.environ, "LC_ALL": "C"}


class AptError(Exception):
    pass


class Apt:
    """apt's commands, reading either every source or every source but gpuctl's."""

    def __init__(self, ours):
        self.ours = ours
        self.parts = self.shell("Dir::Etc::sourceparts/d") or "/etc/apt/sources.list.d"
        self.admins_only = None

    @staticmethod
    def shell(key):
        proc = subprocess.run(["apt-config", "shell", "V", key], capture_output=True,
                              text=True, env=ENV, check=False, timeout=60)
        m = re.match(r"V='(.*)'", proc.stdout.strip())
        return m.group(1) if m else ""

    def options(self, admins):
        """``-o`` options for apt to read the admin's sources only: a directory of links
        to every file of the sources directory but gpuctl's."""
        if not admins:
            return []
        if self.admins_only is None:
            self.admins_only = tempfile.mkdtemp(prefix="gpuctl-apt-")
            with contextlib.suppress(OSError):
                for name in os.listdir(self.parts):
                    path = os.path.join(self.parts, name)
                    if os.path.realpath(path) not in self.ours:
                        os.symlink(path, os.path.join(self.admins_only, name))
        return ["-o", f"Dir::Etc::sourceparts={self.admins_only}"]

    def run(self, argv, admins=False):
        argv = [argv[0], *self.options(admins), *argv[1:]]
        proc = subprocess.run(argv, capture_output=True, text=True, env=ENV, check=False,
                              timeout=600)
        if proc.returncode != 0:
            raise AptError(first_words(proc) or f"{argv[0]} exited {proc.returncode}")
        return proc.stdout

    def close(self):
        if self.admins_only:
            shutil.rmtree(self.admins_only, ignore_errors=True)


def first_words(proc):
    """apt's first error line (else its first warning or notice)."""
    lines = (proc.stdout + "\n" + proc.stderr).splitlines()
    for prefix in ("E:", "W:", "N:"):
        for line in lines:
            if line.startswith(prefix):
                return line.strip()
    return ""


def targets(apt):
    """Every index target of type Packages the admin's sources configure: (repo URI,
    suite, component, file, entry, index file)."""
    out = []
    for line in apt.run(["apt-get", "indextargets", "--no-release-info", "--format", FIELDS,
                         "Identifier: Packages"], admins=True).splitlines():
        parts = line.split("\t")
        if len(parts) != 6 or parts[3] != "deb":
            continue
        uri, suite, component, _, entry, index = parts
        path, _, number = entry.rpartition(":")
        out.append((uri, suite, component, path, int(number) if number.isdigit() else 0,
                    index))
    return out


def release(index, component):
    """The fields of the Release file apt downloaded for ``index`` (a target of
    ``component``), or None. Read from the Release itself: apt downloads no index whose
    Release lists it empty (bookworm-updates' main after a point release), so the
    target alone may not show the archive's origin."""
    stem = index.split(f"_{component}_binary-", 1)[0]
    for name in (stem + "_InRelease", stem + "_Release"):
        text = read(name)
        if text is not None:
            fields = {}
            for line in text.splitlines():
                key, sep, val = line.partition(":")
                if sep and key and not key[0].isspace() and key not in fields:
                    fields[key] = val.strip()
                if key in ("MD5Sum", "SHA256", "SHA1"):  # the hash lists: no fields after
                    break
            return fields
    return None


def offers(fields, component):
    """Whether a Release lists ``component`` (Debian's security archive names its
    components ``updates/contrib``)."""
    listed = fields.get("Components")
    return listed is None or component in {c.rsplit("/", 1)[-1] for c in listed.split()}


def redact(text):
    """``text`` without the passwords its URIs may carry (apt's REPO_URI keeps
    ``user:pw@``)."""
    return re.sub(r"([a-z+]+://)[^/@\s]*@", r"\1***@", text)


def norm(uri):
    """A URI as apt writes it in REPO_URI: ``scheme:///path`` is ``scheme:/path``, with
    a trailing slash (here: without one)."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*):///", r"\1:/", uri.strip()).rstrip("/")


def list_entry(path, number, uri, suite, component):
    """The one-line entry at line ``number`` of ``path``, with ``component`` only."""
    with open(path) as fh:
        lines = fh.read().splitlines()
    if not 0 < number <= len(lines):
        return None
    line = lines[number - 1].split("#", 1)[0].strip()
    m = re.match(r"^deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s+\S", line)
    if not m or norm(m.group(2)) != norm(uri) or m.group(3) != suite:
        return None
    options = (m.group(1) or "").strip()
    return " ".join(p for p in ("deb", options, m.group(2), suite, component) if p) + "\n"


def stanzas(text):
    """deb822 stanzas, as apt reads them: each a list of (field name, its lines);
    comments dropped, an empty line ends a stanza, a line of blanks continues a field."""
    out, cur = [], []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line:
            if cur:
                out.append(cur)
            cur = []
        elif line[0] in " \t":
            if cur and line.strip():
                cur[-1][1].append(line)
        elif ":" in line:
            cur.append([line.split(":", 1)[0].strip().lower(), [line]])
    if cur:
        out.append(cur)
    return out


def value(stanza, name):
    for field, lines in stanza:
        if field == name:
            return " ".join([lines[0].split(":", 1)[1]] + lines[1:]).split()
    return []


def sources_entry(path, number, uri, suite, component):
    """A copy of the deb822 stanza that names ``uri`` and ``suite`` (apt's stanza
    ``number`` when it does), for that archive and ``component`` only."""
    with open(path) as fh:
        found = stanzas(fh.read())

    def fits(stanza):
        return ("deb" in value(stanza, "types")
                and any(norm(u) == norm(uri) for u in value(stanza, "uris"))
                and suite in value(stanza, "suites")
                and not set(v.lower() for v in value(stanza, "enabled")) & FALSE)
    order = ([found[number - 1]] if 0 < number <= len(found) else []) + found
    stanza = next((s for s in order if fits(s)), None)
    if stanza is None:
        return None
    written = next(u for u in value(stanza, "uris") if norm(u) == norm(uri))
    mine = {"types": "Types: deb", "uris": f"URIs: {written}", "suites": f"Suites: {suite}",
            "components": f"Components: {component}"}
    lines = [mine[f] for f in ("types", "uris", "suites", "components")]
    for field, text in stanza:
        if field not in mine and field != "enabled":
            lines += text
    return "\n".join(lines) + "\n"


def mode_of(path):
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return None


def read(path):
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return None


def candidates(apt, names, admins=False):
    """The packages of ``names`` apt has an install candidate for."""
    found, name = set(), None
    for line in apt.run(["apt-cache", "policy", *names], admins=admins).splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            name = line[:-1]
        elif line.strip().startswith("Candidate:") and name in names:
            if line.split(":", 1)[1].strip() != "(none)":
                found.add(name)
    return found


def plan(apt, p, ours):
    """(what apt is missing, the archives and files to write, what to report)."""
    try:
        missing = sorted(set(p["packages"]) - candidates(apt, p["packages"]))
        stale = False
    except AptError:  # gpuctl's own file may be what apt refuses: read without it
        missing = sorted(set(p["packages"]) - candidates(apt, p["packages"], admins=True))
        stale = True
    configured = targets(apt)
    archives = {}
    for uri, suite, component, path, number, index in configured:
        if component != "main" or uri.startswith("cdrom:"):
            continue
        fields = release(index, component)
        if fields and fields.get("Origin") == p["origin"]:
            archives.setdefault((norm(uri), suite), (uri, path, number, fields))
    admins = {(norm(u), s) for u, s, c, _, _, _ in configured if c == p["component"]}
    managing = missing or stale or any(read(path) is not None for path in ours)
    lists, sources = [], []
    report = {"adding": [], "no_contrib": [], "unreadable": [],
              "debian_archives": [f"{redact(u)} {s}" for (u, s) in sorted(archives)]}
    modes = []
    for key, (uri, path, number, fields) in sorted(archives.items()):
        if key in admins or not managing:
            continue
        if not offers(fields, p["component"]):
            report["no_contrib"].append(f"{redact(key[0])} {key[1]}")
            continue
        try:
            if path.endswith(".sources"):
                entry = sources_entry(path, number, uri, key[1], p["component"])
                (sources if entry else report["unreadable"]).append(
                    entry or f"{path}:{number}")
            else:
                entry = list_entry(path, number, uri, key[1], p["component"])
                (lists if entry else report["unreadable"]).append(entry or f"{path}:{number}")
            if entry:
                report["adding"].append(f"{redact(key[0])} {key[1]}")
                modes.append(os.stat(path).st_mode & 0o777)
        except OSError as exc:
            report["unreadable"].append(f"{path}: {exc.strerror}")
    header = HEADER.format(component=p["component"])
    mode = 0o644
    for m in modes:  # no more readable than the admin's own files
        mode &= m
    wanted = {p["list_path"]: header + "".join(lists) if lists else "",
              p["sources_path"]: header + "\n".join(sources) if sources else ""}
    return missing, wanted, mode, report


def update_alone(apt, path, retries):
    """``apt-get update`` of the sources in ``path`` alone (keeping the other lists),
    retried while apt's lock is held or a fetch fails; apt's words when it fails."""
    argv = ["apt-get", "update", "-o", f"Dir::Etc::sourcelist={path}",
            "-o", "Dir::Etc::sourceparts=-", "-o", "APT::Get::List-Cleanup=0"]
    why = ""
    for attempt in range(max(1, retries)):
        if attempt:
            time.sleep(5)
        proc = subprocess.run(argv, capture_output=True, text=True, env=ENV, check=False,
                              timeout=600)
        if proc.returncode == 0:
            return ""
        why = first_words(proc) or f"apt-get update exited {proc.returncode}"
    return why


def put(path, content, mode):
    """Write ``path`` whole (a temp file in its directory, renamed over it)."""
    tmp = f"{path}.dpkg-tmp"  # apt ignores *.dpkg-* silently (Dir::Ignore-Files-Silently)
    with open(tmp, "w") as fh:
        fh.write(content)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def main():
    module = AnsibleModule(argument_spec={
        "list_path": {"type": "str", "required": True},
        "sources_path": {"type": "str", "required": True},
        "packages": {"type": "list", "elements": "str", "required": True},
        "staging_dir": {"type": "str", "default": "/var/lib/gpuctl/apt-staging"},
        "retries": {"type": "int", "default": 5},
        "origin": {"type": "str", "default": "Debian"},
        "component": {"type": "str", "default": "contrib"},
    }, supports_check_mode=True)
    p = module.params
    paths = (p["list_path"], p["sources_path"])
    ours = {os.path.realpath(path) for path in paths}
    apt = Apt(ours)
    try:
        missing, wanted, mode, report = plan(apt, p, ours)
        if missing and not module.check_mode:
            # What apt read must be what the sources say now (an admin may have changed
            # them since its last update); another source's trouble is not ours.
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                subprocess.run(["apt-get", *apt.options(True), "-o",
                                "APT::Get::List-Cleanup=0", "update", "-qq"],
                               capture_output=True, env=ENV, check=False, timeout=600)
            missing, wanted, mode, report = plan(apt, p, ours)
        before = {path: (read(path), mode_of(path)) for path in paths}
        write = [path for path, content in wanted.items()
                 if content and (before[path][0] != content or before[path][1] != mode)]
        # gpuctl's file goes only when apt shows Debian's archives and each has contrib
        # from the admin (lists apt has not fetched since an edit show none).
        remove = [path for path, content in wanted.items()
                  if not content and before[path][0] is not None and not missing
                  and report["debian_archives"] and not report["no_contrib"]]
        # gpuctl's files already as wanted while apt still lacks the packages (their
        # indexes never fetched): fetched again.
        fetch = write + [path for path, content in wanted.items()
                         if content and path not in write and missing]
        result = {"missing": missing, "mode": f"0{mode:o}", "write": write, "remove": remove,
                  **report}
        if module._diff:
            result["diff"] = [{"after_header": path, "after": redact(wanted[path]),
                               "before_header": path,
                               "before": redact(before[path][0] or "")}
                              for path in write]
        if module.check_mode or not (write or remove or missing):
            module.exit_json(changed=bool(write or remove), **result)
        why = ""
        os.makedirs(p["staging_dir"], mode=0o700, exist_ok=True)
        for path in fetch:  # outside apt's sources until apt has read it
            staged = os.path.join(p["staging_dir"], os.path.basename(path))
            put(staged, wanted[path], mode)
            why = update_alone(apt, staged, p["retries"])
            os.unlink(staged)
            if why:
                break
            put(path, wanted[path], mode)
        for path in remove:
            os.unlink(path)
        still = missing
        if not why and fetch:
            try:
                still = sorted(set(p["packages"]) - candidates(apt, p["packages"]))
            except AptError as exc:
                why = str(exc)
        if not (why or (fetch and still)):
            if still:  # nothing gpuctl could add: the install says what it lacks
                module.warn(f"apt has no candidate for {', '.join(still)} (in Debian's "
                            "contrib), and no Debian archive's contrib could be added"
                            + (f": {', '.join(report['no_contrib'])} offers none"
                               if report["no_contrib"] else ""))
            module.exit_json(changed=bool(write or remove), **result)
        for path, (content, old_mode) in before.items():  # as they were
            if content is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            else:
                put(path, content, old_mode or 0o644)
        parts = [f"Debian's contrib is needed for {', '.join(still or missing)} "
                 "(NVIDIA's Debian driver packages depend on them)"]
        if report["no_contrib"]:
            parts.append(f"{', '.join(report['no_contrib'])} offers no contrib in its "
                         "Release file")
        if report["adding"]:
            parts.append(f"gpuctl's contrib entries for {', '.join(report['adding'])} "
                         "did not take and were put back as they were: "
                         + (why or "apt still has no candidate for them"))
        if report["unreadable"]:
            parts.append("entries gpuctl could not read back: "
                         + ", ".join(report["unreadable"]))
        module.fail_json(msg="; ".join(parts) + ". Enable contrib on the Debian mirror, "
                         "or serve these packages from a repository of the site",
                         **result)
    except (AptError, OSError, subprocess.SubprocessError) as exc:
        module.fail_json(msg=f"cannot add Debian's contrib: {exc}")
    finally:
        apt.close()


if __name__ == "__main__":
    main()
