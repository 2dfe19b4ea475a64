"""gpuctl as an admin installs it: a wheel built from the source distribution, installed
into a fresh virtualenv outside the checkout, with no GPUCTL_PROJECT_DIR, driving a lab
node through init, the catalogue, scan, provision and burn-in."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
import yaml

import provisioner

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parents[2]
SHIPPED = ("playbooks", "inventory", "templates", "contrib")


def _files(top: Path) -> set[str]:
    return {p.relative_to(top).as_posix() for p in top.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def _build(source: Path, out: Path, kind: str) -> Path:
    """Build with setuptools' PEP 517 backend, as pip and `python -m build` do."""
    code = (f"import setuptools.build_meta as b; print(b.build_{kind}({str(out)!r}))")
    res = subprocess.run([sys.executable, "-c", code], cwd=source, capture_output=True,
                         text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    return out / res.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sdist from the checkout, then the wheel from the unpacked sdist (what `python -m
    build` does), so a file MANIFEST.in forgets is missing from the wheel too."""
    out = tmp_path_factory.mktemp("dist")
    sdist = _build(ROOT, out, "sdist")
    with tarfile.open(sdist) as tar:
        tar.extractall(out / "src", filter="data")
    (unpacked,) = (out / "src").iterdir()
    return _build(unpacked, out, "wheel")


def test_the_wheel_carries_every_file_the_code_opens(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for top in SHIPPED:
        shipped = {f"provisioner/share/{top}/{rel}" for rel in _files(ROOT / top)}
        assert shipped, top
        assert shipped <= names, sorted(shipped - names)[:5]
    package = {f"provisioner/{rel}" for rel in _files(ROOT / "provisioner")
               if not rel.startswith("share/")}
    assert package <= names, sorted(package - names)[:5]
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)
    assert wheel.name == f"gpuctl-{provisioner.__version__}-py3-none-any.whl"


def test_the_control_host_needs_no_torch_and_the_burnin_extra_is_the_nodes_env(
        wheel: Path) -> None:
    meta_name = next(n for n in zipfile.ZipFile(wheel).namelist()
                     if n.endswith(".dist-info/METADATA"))
    meta = Parser().parsestr(zipfile.ZipFile(wheel).read(meta_name).decode())
    assert meta["Version"] == provisioner.__version__
    requires = meta.get_all("Requires-Dist") or []

    def names(extra: str | None) -> set[str]:
        out = set()
        for req in requires:
            spec, _, marker = req.partition(";")
            if (extra is None) == ("extra ==" not in marker) and (
                    extra is None or f'extra == "{extra}"' in marker):
                out.add(spec.split("[")[0].split(">")[0].split("=")[0].strip().lower())
        return out

    base = names(None)
    assert {"ansible-core", "ansible-runner", "paramiko", "sqlmodel"} <= base
    assert not base & {"torch", "numpy", "nvidia-ml-py", "psycopg"}
    # The burnin_env role installs on each node what the burnin extra names.
    role = yaml.safe_load((ROOT / "playbooks/roles/burnin_env/defaults/main.yml").read_text())
    assert names("burnin") == {"torch", *role["burnin_env_packages"]}
    assert names("postgresql") == {"psycopg"}


def test_the_build_hook_ships_only_current_files_and_no_link(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "CHANGELOG.md"):
        shutil.copy(ROOT / name, source / name)
    for top in ("provisioner", *SHIPPED):
        shutil.copytree(ROOT / top, source / top,
                        ignore=shutil.ignore_patterns("__pycache__", "share"))
    code = "import setuptools.build_meta as b; print(b.build_wheel('out'))"

    def build() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", code], cwd=source, capture_output=True,
                              text=True, timeout=300, check=False)

    # Built in place twice: a file removed in between does not linger from build/.
    first = build()
    assert first.returncode == 0, first.stderr[-1500:]
    (source / "inventory/thresholds/generic.yml").unlink()
    second = build()
    assert second.returncode == 0, second.stderr[-1500:]
    wheel = source / "out" / second.stdout.strip().splitlines()[-1]
    assert "provisioner/share/inventory/thresholds/cpu-lab.yml" in \
        zipfile.ZipFile(wheel).namelist()
    assert "provisioner/share/inventory/thresholds/generic.yml" not in \
        zipfile.ZipFile(wheel).namelist()
    (source / "playbooks/vars/passwd.yml").symlink_to("/etc/passwd")
    res = build()
    assert res.returncode != 0
    assert "playbooks/vars/passwd.yml is a symbolic link" in res.stdout + res.stderr


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel and its dependencies: the bin directory."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    res = subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q",
                          "--disable-pip-version-check", str(wheel)],
                         capture_output=True, text=True, timeout=900, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    return venv / "bin"


def _admin_env(home: Path, bin_dir: Path) -> dict[str, str]:
    """An admin's shell: no GPUCTL_PROJECT_DIR, no PYTHONPATH, none of the checkout's
    virtualenv on PATH (only the installed gpuctl's, as pipx would link it)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("GPUCTL_PROJECT_DIR", "PYTHONPATH", "VIRTUAL_ENV", "GPUCTL_DB")}
    dev_bin = str(Path(sys.executable).parent)
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != dev_bin]
    env["PATH"] = os.pathsep.join([str(bin_dir), *path])
    env["GPUCTL_HOME"] = str(home)
    return env


def test_installed_gpuctl_provisions_and_burns_in_a_lab_node(  # type: ignore[no-untyped-def]
        installed: Path, lab, paths, tmp_path: Path) -> None:
    env = _admin_env(paths.home, installed)
    (paths.home / "gpuctl.db").unlink()  # init makes it, with the wheel's migrations

    def gpuctl(*args: str, ok: tuple[int, ...] = (0,)) -> str:
        res = subprocess.run([str(installed / "gpuctl"), *args], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600, check=False)
        assert res.returncode in ok, (args, res.returncode, res.stdout[-1500:],
                                      res.stderr[-1500:])
        return res.stdout

    where = subprocess.run([str(installed / "python"), "-c",
                            "import provisioner.shipped as s; print(s.shipped_dir())"],
                           cwd=tmp_path, env=env, capture_output=True, text=True,
                           check=True).stdout.strip()
    assert where == str(installed.parent / "lib" / f"python{sys.version_info[0]}."
                        f"{sys.version_info[1]}" / "site-packages/provisioner/share")
    assert gpuctl("--version").split()[-1] == provisioner.__version__
    assert "database" in gpuctl("init")
    assert "h100-sxm-8" in json.loads(gpuctl("skus", "list", "--json"))
    # The control host's gpuctl has no torch: the lab says so in one line, and the nodes
    # run the agent with their own Python (here the checkout's, which has torch).
    no_torch = subprocess.run([str(installed / "gpuctl"), "lab", "up", "--nodes", "1",
                               "--first-address", lab.address(0)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120, check=False)
    assert no_torch.returncode == 1
    assert no_torch.stderr.strip().count("\n") == 0
    assert "--burnin-python" in no_torch.stderr
    # No BMC: the wheel is installed without the lab extra (sushy-tools' emulator).
    gpuctl("lab", "up", "--nodes", "1", "--first-address", lab.address(0),
           "--burnin-python", sys.executable, "--no-bmc")
    scan = json.loads(gpuctl("scan", "--all", "--accept-new", "--json"))
    assert [r["outcome"] for r in scan["results"]] == ["ok"], scan
    # Exit 0: every node provisioned (the playbooks, roles and group_vars from the
    # wheel), then burned in and certified (the agent, the SKU's thresholds). Canary
    # secrets are set as an admin's shell would have them: none may be stored.
    canaries = {"GPUCTL_BECOME_PASSWORD": "canary-become-51c2", "PGPASSWORD": "canary-pg-2b44"}
    env.update(canaries, GPUCTL_DB=f"sqlite:///{paths.home / 'gpuctl.db'}")
    vault = tmp_path / "vault-pass"
    vault.write_text("canary-vault-7e90\n")
    gpuctl("provision", "--all", "--vault-password-file", str(vault))
    gpuctl("burnin", "--all", "--duration", "0.2")
    stored = [p for p in paths.home.rglob("*") if p.is_file() and not p.is_symlink()
              and any(c.encode() in p.read_bytes()
                      for c in [*canaries.values(), "canary-vault-7e90"])]
    assert stored == [], stored
    (record,) = paths.runs_dir.rglob("artifacts/*/command")  # Ansible's environment
    assert not [k for k in json.loads(record.read_text())["env"]
                if k.startswith(("GPUCTL_", "PG"))]
    report = tmp_path / "report.html"
    gpuctl("report", "--format", "html", "-o", str(report))
    assert "gpu-node-01" in report.read_text()
    nodes = json.loads(gpuctl("nodes", "list", "--json"))
    assert [n["state"] for n in nodes] == ["certified"], nodes

    doctor = json.loads(gpuctl("doctor", "--json"))
    assert doctor["ok"], doctor
    assert any(c["name"] == "shipped files" and "installed package" in c["detail"]
               for c in doctor["checks"])
    # Take ansible-core away: doctor names it, and exits 1.
    subprocess.run([str(installed / "python"), "-m", "pip", "uninstall", "-q", "-y",
                    "ansible-core"], env=env, check=True, timeout=300)
    out = gpuctl("doctor", ok=(1,))
    failing = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert len(failing) == 1 and "ansible-core is not installed" in failing[0], out
