#!/usr/bin/python3
"""Ansible module: which of Debian's archive sources on a node lack the contrib component,
and the sources entries that add it beside the admin's own.

NVIDIA's Debian packages depend on packages Debian keeps in contrib: the DKMS module
package pre-depends on nvidia-installer-cleanup, its kernel support package depends on
nvidia-kernel-common, and nvidia-alternative on glx-alternative-nvidia (Debian's
packaging, mirrored as NVIDIA/debian-packaging-nvidia-driver debian/control.in at
5573996; packages.debian.org: nvidia-installer-cleanup and nvidia-kernel-common, source
nvidia-support, and glx-alternative-nvidia, source glx-alternatives, are [contrib]). That
is why NVIDIA's Debian steps run ``add-apt-repository contrib``.

gpuctl never edits the admin's sources. While apt has no candidate for those packages,
for each of Debian's archives (``Origin: Debian`` in its Release file, as apt read it)
that a node takes ``main`` from but not ``contrib``, and whose Release offers contrib,
the admin's own entry is copied into a file of gpuctl's with ``contrib`` as
its only component, every other option kept: apt refuses two entries for one archive
whose ``Signed-By`` (or ``Trusted``, ...) differ ("Conflicting values set for option
Signed-By regarding source ...", apt 2.6), and then reads no source at all.

Read-only. Where apt's entries come from is apt's own answer (``apt-get indextargets``:
``Sourcesentry`` names the file and its line, or for deb822 its stanza).
"""

import os
import re
import subprocess

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: gpuctl_debian_contrib
short_description: Find Debian archive sources without contrib; the entries that add it
description:
  - Reads which of C(packages) apt has no candidate for (C(missing)), and the Debian
    archives (Origin Debian) the node takes main from but not contrib whose Release
    offers contrib; renders gpuctl's own sources files adding contrib for those, each a
    copy of the admin's entry (its options, Signed-By included) with contrib as its only
    component. Nothing is rendered while no package is missing and gpuctl's files do not
    exist (a site's own repository may carry the packages).
  - Run after C(apt-get update): it reads what apt downloaded.
options:
  list_path: {type: str, required: true}
  sources_path: {type: str, required: true}
  packages: {type: list, elements: str, required: true}
  origin: {type: str, default: Debian}
  component: {type: str, default: contrib}
  update:
    description: While a package is missing, run C(apt-get update) first (not in check
      mode), so that what apt read is what the sources say now (an admin may have
      changed them since).
    type: bool
    default: false
"""

FIELDS = "$(REPO_URI)\t$(RELEASE)\t$(COMPONENT)\t$(TARGET_OF)\t$(SOURCESENTRY)\t$(FILENAME)"
HEADER = ("# Managed by gpuctl: Debian's {component} component, which NVIDIA's Debian "
          "packages need,\n# for the archives below, copied from the admin's entries "
          "(their options kept).\n")
# deb822 booleans apt reads as false (apt-pkg/contrib/strutl.cc StringToBool).
FALSE = {"no", "false", "without", "off", "disable", "0"}


def run(argv):
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:2])} failed: "
                           + (proc.stderr or proc.stdout).strip()[-500:])
    return proc.stdout


def targets():
    """Every index target of type Packages apt's sources configure: (repo URI, suite,
    component, file, entry, index file)."""
    out = []
    for line in run(["apt-get", "indextargets", "--no-release-info", "--format", FIELDS,
                     "Identifier: Packages"]).splitlines():
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


def candidates(names):
    """The packages of ``names`` apt has an install candidate for."""
    found, name = set(), None
    for line in run(["apt-cache", "policy", *names]).splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            name = line[:-1]
        elif line.strip().startswith("Candidate:") and name in names:
            if line.split(":", 1)[1].strip() != "(none)":
                found.add(name)
    return found


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


def main():
    module = AnsibleModule(argument_spec={
        "list_path": {"type": "str", "required": True},
        "sources_path": {"type": "str", "required": True},
        "packages": {"type": "list", "elements": "str", "required": True},
        "origin": {"type": "str", "default": "Debian"},
        "component": {"type": "str", "default": "contrib"},
        "update": {"type": "bool", "default": False},
    }, supports_check_mode=True)
    p = module.params
    paths = (p["list_path"], p["sources_path"])
    ours = {os.path.realpath(path) for path in paths}
    try:
        missing = sorted(set(p["packages"]) - candidates(p["packages"]))
        if missing and p["update"] and not module.check_mode:
            # Its failure (another source's) is not this module's: what apt read is used.
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False,
                           timeout=600)
            missing = sorted(set(p["packages"]) - candidates(p["packages"]))
        configured = targets()
    except (OSError, subprocess.TimeoutExpired, RuntimeError) as exc:
        module.fail_json(msg=str(exc))
    archives = {}
    for uri, suite, component, path, number, index in configured:
        if component != "main" or os.path.realpath(path) in ours or uri.startswith("cdrom:"):
            continue
        fields = release(index, component)
        if fields and fields.get("Origin") == p["origin"]:
            archives.setdefault((norm(uri), suite), (uri, path, number, fields))
    admins = {(norm(u), s) for u, s, c, path, _, _ in configured
              if c == p["component"] and os.path.realpath(path) not in ours}
    managing = missing or any(read(path) is not None for path in paths)
    lists, sources, unreadable, adding, no_contrib, modes, secret = [], [], [], [], [], [], False
    for key, (uri, path, number, fields) in sorted(archives.items()):
        if key in admins or not managing:
            continue
        if p["component"] not in fields.get("Components", p["component"]).split():
            no_contrib.append(f"{key[0]} {key[1]}")
            continue
        try:
            if path.endswith(".sources"):
                entry = sources_entry(path, number, uri, key[1], p["component"])
                (sources if entry else unreadable).append(entry or f"{path}:{number}")
            else:
                entry = list_entry(path, number, uri, key[1], p["component"])
                (lists if entry else unreadable).append(entry or f"{path}:{number}")
            if entry:
                adding.append(f"{key[0]} {key[1]}")
                modes.append(os.stat(path).st_mode & 0o777)
                secret = secret or "@" in uri.split("://", 1)[-1].split("/", 1)[0]
        except OSError as exc:
            unreadable.append(f"{path}: {exc.strerror}")
    header = HEADER.format(component=p["component"])
    wanted = {p["list_path"]: header + "".join(lists) if lists else "",
              p["sources_path"]: header + "\n".join(sources) if sources else ""}
    mode = 0o644
    for m in modes:  # no more readable than the admin's own files
        mode &= m
    before = [{"path": path, "exists": read(path) is not None, "content": read(path) or ""}
              for path in wanted]
    module.exit_json(
        changed=False, missing=missing, adding=adding, no_contrib=no_contrib,
        unreadable=unreadable, archives=[f"{u} {s}" for (u, s) in sorted(archives)],
        files=[{"path": path, "content": content} for path, content in wanted.items()],
        # What to write (content or mode differs) and what to remove, so that a node
        # already as wanted costs no further task.
        write=[{"path": path, "content": content} for path, content in wanted.items()
               if content and (read(path) != content or mode_of(path) != mode)],
        remove=[path for path, content in wanted.items() if not content and
                read(path) is not None],
        before=before, mode=f"0{mode:o}", secret=secret)


if __name__ == "__main__":
    main()
