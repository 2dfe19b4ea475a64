"""Provisioning speed on 16 lab nodes, side by side in one run.

    sudo .venv/bin/python benchmarks/provision.py [--nodes 16] [--forks 16] \
        [--os ubuntu22.04 --os rocky9]

For each lab OS (default: Ubuntu 22.04 through apt, then Rocky 9 through dnf module
streams), prints wall times and ratios for:
  * plain ansible-playbook playbooks/provision.yml on a fresh lab (same inventory that
    gpuctl renders, same group_vars, same forks)
  * gpuctl provision --all on another fresh lab of the same size
  * gpuctl provision --all again on that lab (nothing left to change)
Targets: gpuctl / plain <= 1.15; second run / first run <= 0.35.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from provisioner.catalogue import catalogue
from provisioner.cli import main as _gpuctl
from provisioner.provision.inventory import group_name
from provisioner.provision.run import _control_machine_id
from provisioner.shipped import shipped_dir


def gpuctl(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = _gpuctl(argv)
    return code, out.getvalue()


def lab(home: Path, nodes: int, block: int, os_name: str) -> None:
    os.environ["GPUCTL_HOME"] = str(home)
    assert gpuctl(["init"])[0] == 0, "init failed"
    code, _ = gpuctl(["lab", "up", "--nodes", str(nodes), "--first-address",
                      f"127.0.{block}.10", "--os", os_name, "--json"])
    assert code == 0, "lab up failed"
    code, _ = gpuctl(["scan", "--all", "--accept-new", "--json"])
    assert code == 0, "scan failed"


def plain_ansible(home: Path, forks: int) -> float:
    inv_dir = home / "plain-inventory"
    shutil.copytree(shipped_dir() / "inventory/group_vars", inv_dir / "group_vars")
    for sku in catalogue().values():  # the SKU pins gpuctl renders (group sku_<name>)
        (inv_dir / "group_vars" / f"{group_name('sku_' + sku.name)}.yml").write_text(
            yaml.safe_dump(sku.provision))
    code, text = gpuctl(["inventory", "export", "--format", "yaml"])
    assert code == 0
    (inv_dir / "hosts.yml").write_text(text)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "ANSIBLE_LOCAL_TEMP": str(home / "tmp")}
    start = time.perf_counter()
    res = subprocess.run([str(bin_dir / "ansible-playbook"), "-i", str(inv_dir / "hosts.yml"),
                          "-f", str(forks), "-e", f"preflight_control_machine_id="
                          f"{_control_machine_id()}", "provision.yml"],
                         cwd=shipped_dir() / "playbooks", env=env, capture_output=True,
                         text=True, check=False)
    seconds = time.perf_counter() - start
    if res.returncode != 0:
        fatal = [line for line in res.stdout.splitlines() if line.startswith(("fatal", "fail"))]
        raise SystemExit("plain ansible-playbook failed:\n" + "\n".join(fatal[:10]))
    return seconds


def gpuctl_provision(forks: int) -> tuple[float, int]:
    start = time.perf_counter()
    code, out = gpuctl(["provision", "--all", "--forks", str(forks), "--json"])
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"gpuctl provision failed:\n{out[-3000:]}")
    return seconds, json.loads(out)["changed"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--forks", type=int, default=16)
    parser.add_argument("--os", dest="oses", action="append",
                        help="lab OS to run on; repeatable (default: ubuntu22.04 and rocky9)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gpuctl-bench-prov-"))
    homes: list[Path] = []
    try:
        for os_name in args.oses or ["ubuntu22.04", "rocky9"]:
            plain_home, gpuctl_home = work / f"plain-{os_name}", work / f"gpuctl-{os_name}"
            homes += [plain_home, gpuctl_home]
            print(f"{os_name}: {args.nodes} bare h100-sxm-8 lab nodes per run, "
                  f"forks {args.forks}", flush=True)
            lab(plain_home, args.nodes, 201, os_name)
            t_plain = plain_ansible(plain_home, args.forks)
            print(f"  plain ansible-playbook (first run)   {t_plain:7.1f} s", flush=True)
            gpuctl(["lab", "down"])
            lab(gpuctl_home, args.nodes, 202, os_name)
            t_first, changed_first = gpuctl_provision(args.forks)
            print(f"  gpuctl provision (first run)         {t_first:7.1f} s  "
                  f"({changed_first} changed)", flush=True)
            t_second, changed_second = gpuctl_provision(args.forks)
            print(f"  gpuctl provision (second run)        {t_second:7.1f} s  "
                  f"({changed_second} changed)", flush=True)
            gpuctl(["lab", "down"])
            print(f"ratios ({os_name}):")
            print(f"  gpuctl first / plain ansible-playbook = {t_first / t_plain:5.2f}  "
                  "(target <= 1.15)")
            print(f"  gpuctl second / gpuctl first           = {t_second / t_first:5.2f}  "
                  "(target <= 0.35)", flush=True)
        return 0
    finally:
        for home in homes:
            os.environ["GPUCTL_HOME"] = str(home)
            gpuctl(["lab", "down"])
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
