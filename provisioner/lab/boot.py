"""What a lab node looks like after it (re)boots, derived from what is installed on it.

Run by the node's PID 1 at every boot (``python -m provisioner.lab.boot NODE_DIR``):
nouveau is loaded unless blacklisted under /etc/modprobe.d; the nvidia module is loaded
when a driver package is installed and nouveau is not in its way.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

from provisioner.lab.packages import taint
from provisioner.lab.render import render_sysfs

DRIVER_JSON = "/usr/share/gpuctl-lab/driver.json"


def node_file(node_dir: Path, path: str) -> Path | None:
    """The file at ``path`` as the node sees it (overlay upper first, then lower)."""
    upper = node_dir / "upper" / path.lstrip("/")
    try:
        st = upper.lstat()
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            return None  # overlayfs whiteout: deleted on the node
        return upper
    except FileNotFoundError:
        lower = Path(path)
        return lower if lower.exists() else None


def nouveau_blacklisted(node_dir: Path) -> bool:
    dirs = [node_dir / "upper/etc/modprobe.d", Path("/etc/modprobe.d")]
    for d in dirs:
        if not d.is_dir():
            continue
        for conf in d.glob("*.conf"):
            path = node_file(node_dir, f"/etc/modprobe.d/{conf.name}")
            if path and path.is_file() and any(
                    line.split()[:2] == ["blacklist", "nouveau"]
                    for line in path.read_text(errors="replace").splitlines()):
                return True
    return False


def modules_to_load(node_dir: Path) -> list[str]:
    """Modules named in /etc/modules-load.d/*.conf (modules-load.d(5)) that the node's
    hardware has drivers for."""
    available = node_file(node_dir, "/etc/gpuctl-lab/modules-available")
    known = set(available.read_text().split()) if available else set()
    wanted: list[str] = []
    upper = node_dir / "upper/etc/modules-load.d"
    for conf in sorted(upper.glob("*.conf")) if upper.is_dir() else []:
        path = node_file(node_dir, f"/etc/modules-load.d/{conf.name}")
        for line in path.read_text(errors="replace").splitlines() if path else []:
            name = line.split("#")[0].strip()
            if name and name in known and name not in wanted:
                wanted.append(name)
    return wanted


def boot_modules(node_dir: Path, spec: dict[str, Any]) -> dict[str, str | None]:
    """Kernel modules loaded after a boot: {"nouveau": "loaded"|None, "nvidia": version,
    "nvidia_taint": the module's taint flags, "others": space-separated names}."""
    nouveau = bool(spec["gpus"]) and spec.get("nouveau", False) and \
        not nouveau_blacklisted(node_dir)
    driver = node_file(node_dir, DRIVER_JSON)
    nvidia = flags = None
    if driver is not None and spec["gpus"] and not nouveau:
        info = json.loads(driver.read_text())
        nvidia, flags = info["version"], taint(info.get("flavor") == "open")
    return {"nouveau": "loaded" if nouveau else None, "nvidia": nvidia, "nvidia_taint": flags,
            "others": " ".join(modules_to_load(node_dir))}


def device_nodes(dev: Path, gpus: int) -> None:
    """What nvidia-modprobe does when the driver loads: /dev/nvidia0..N-1 and
    /dev/nvidiactl (the kernel's devices.txt: char major 195, "Nvidia graphics devices",
    minor N for GPU N, 255 for nvidiactl). No driver: none."""
    for path in dev.glob("nvidia*"):
        path.unlink()
    if not gpus:
        return
    for minor, name in [(i, f"nvidia{i}") for i in range(gpus)] + [(255, "nvidiactl")]:
        os.mknod(dev / name, 0o666 | stat.S_IFCHR, os.makedev(195, minor))
        os.chmod(dev / name, 0o666)  # noqa: S103 (device nodes are 0666, as udev makes them)


def main(node_dir: str) -> None:
    ndir = Path(node_dir)
    spec = json.loads((ndir / "node.json").read_text())
    modules = boot_modules(ndir, spec)
    render_sysfs(ndir / "sys", spec, modules=modules)
    dev = ndir / "merged/dev"
    if os.path.ismount(dev):  # the node's private /dev (node_init), never this machine's
        device_nodes(dev, len(spec["gpus"]) if modules["nvidia"] else 0)


if __name__ == "__main__":
    main(sys.argv[1])
