"""Validate what the probe printed and turn it into :class:`HardwareFacts`.

The probe's output is untrusted: it must be UTF-8 JSON of the expected shape, every
string is length-capped, every list is count-capped, every number is bounded (digits
and range per field), and a field of the wrong type is treated as "not available"
rather than trusted. A value out of range is dropped with a warning naming the field.
Whatever the bytes, the result is facts or a ``ProbeOutputError``: one node's output
never stops a scan of the others.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

from provisioner.errors import GpuctlError
from provisioner.probe.node_json import MAX_DIGITS  # longer: nothing a node measured
from provisioner.probe.smi_xml import (
    SmiGpu,
    SmiParseError,
    parse_nvlink_lines,
    parse_smi_xml,
    parse_xid_lines,
)

UNUSABLE = "unusable value: "  # starts each warning about a dropped number
MAX_LIST = 1024
MAX_STR = 512
MAX_COUNT = 2**53  # counts and byte sizes (8 PiB): exact in a double, fits BIGINT
# Per-field ranges where a wider value is a lie, not a measurement.
RANGES: dict[str, tuple[int, int]] = {
    "cpu.sockets": (1, 64), "cpu.cores": (1, 1 << 16), "cpu.threads": (1, 1 << 17),
    "pci_gpus.link_gen_current": (0, 16), "pci_gpus.link_gen_max": (0, 16),
    "pci_gpus.link_width_current": (0, 64), "pci_gpus.link_width_max": (0, 64),
    "pci_gpus.numa_node": (-1, 1024), "pci_gpus.socket": (0, 63),
    "ib_ports.port": (0, 255), "nics.speed_mbps": (0, 10_000_000),
}


class _Oversized(str):
    """A JSON integer with more than MAX_DIGITS digits, kept as text (never converted:
    Python refuses to convert over 4300 digits, and SQL columns hold 64 bits)."""


def _json_int(text: str) -> int | _Oversized:
    return _Oversized(text[:24]) if len(text.lstrip("-")) > MAX_DIGITS else int(text)


class ProbeOutputError(GpuctlError):
    """The probe's output could not be used at all."""


def probe_command() -> str:
    """The shell command sent to the node: python3 probe on stdin, sh fallback inline."""
    fallback = resources.files("provisioner.probe").joinpath("shell_probe.sh").read_text()
    return ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; export PATH; "
            "LC_ALL=C; export LC_ALL; "
            "if command -v python3 >/dev/null 2>&1; then exec python3 -I -; fi\n" + fallback)


def probe_script() -> bytes:
    return resources.files("provisioner.probe").joinpath("node_probe.py").read_bytes()


def _s(value: Any) -> str | None:
    if isinstance(value, str):
        return value[:MAX_STR]
    return None


class _Numbers:
    """Reads numbers field by field, keeping a warning for each one out of range."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def i(self, value: Any, name: str) -> int | None:
        if isinstance(value, _Oversized):
            self.warnings.append(f"{UNUSABLE}{name}: {value}... has too many digits")
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        low, high = RANGES.get(name, (0, MAX_COUNT))
        if not low <= value <= high:
            self.warnings.append(f"{UNUSABLE}{name}: {str(value)[:24]} is outside "
                                 f"{low}..{high}")
            return None
        return value

    def f(self, value: Any, name: str) -> float | None:
        if isinstance(value, int) and not isinstance(value, bool | _Oversized):
            value = float(value)
        if not isinstance(value, float) or isinstance(value, bool):
            if isinstance(value, _Oversized):
                self.warnings.append(f"{UNUSABLE}{name}: {value}... has too many digits")
            return None
        if not (math.isfinite(value) and 0 <= value <= MAX_COUNT):
            self.warnings.append(f"{UNUSABLE}{name}: {value!r} is not a finite number in "
                                 "range")
            return None
        return value


def _d(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        return []
    return [v for v in value[:MAX_LIST] if isinstance(v, dict)]


@dataclass
class HardwareFacts:
    """Everything a scan learned about one node."""

    probe: str
    hostname: str | None
    kernel: str | None
    os_name: str | None
    dmi: dict[str, str | None]
    cpu_model: str | None
    cpu_sockets: int | None
    cpu_cores: int | None
    memory_bytes: int | None
    disks: list[dict[str, Any]]
    nics: list[dict[str, Any]]
    ib_ports: list[dict[str, Any]]
    pci_gpus: list[dict[str, Any]]
    nouveau_loaded: bool
    nvidia_module_loaded: bool
    secure_boot: str | None
    driver_version: str | None
    cuda_version: str | None
    smi_status: str  # ok | absent | failed | unusable
    gpus: list[SmiGpu] = field(default_factory=list)
    xids: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    cpu_threads: int | None = None  # logical CPUs (Slurm's CPUs=)
    # Per GPU with NVLink: {"gpu", "links", "inactive": [link numbers]} (nvlink --status).
    nvlink: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_probe_output(raw: bytes) -> HardwareFacts:
    """Parse the probe's stdout.

    Raises:
        ProbeOutputError: not UTF-8, not JSON, or not a JSON object from our probe.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProbeOutputError(f"probe output is not UTF-8 (byte {exc.start})") from None
    try:
        doc = json.loads(text, parse_int=_json_int)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        snippet = text[:40].replace("\n", " ")
        raise ProbeOutputError(f"probe output is not JSON ({exc.__class__.__name__}: "
                               f"starts {snippet!r})") from None
    if not isinstance(doc, dict) or doc.get("probe") not in ("python", "sh"):
        raise ProbeOutputError("probe output is JSON but not a gpuctl probe document")
    try:
        return _facts(doc)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError,
            RecursionError) as exc:
        # Still this node's output, never the scan's: say which kind of value broke.
        raise ProbeOutputError(f"probe output is unusable ({type(exc).__name__}: "
                               f"{str(exc)[:160]})") from None


def _facts(doc: dict[str, Any]) -> HardwareFacts:
    num = _Numbers()
    _i, _f = num.i, num.f
    errors = doc.get("errors")
    warnings = [w[:300] for w in (errors if isinstance(errors, list) else [])
                if isinstance(w, str)][:50]
    smi = _d(doc.get("smi"))
    gpus: list[SmiGpu] = []
    driver, cuda = None, None
    if not smi.get("available"):
        smi_status = "absent"
    elif not isinstance(smi.get("xml"), str):
        smi_status = "unusable"
        warnings.append("nvidia-smi -q -x output was discarded by the probe")
    elif smi.get("exit_code") not in (0, None):
        smi_status = "failed"
        first = smi["xml"].strip().splitlines()[:1]
        warnings.append(f"nvidia-smi failed (exit {smi.get('exit_code')}): "
                        f"{first[0][:160] if first else 'no output'}")
    else:
        try:
            report = parse_smi_xml(smi["xml"])
            gpus, driver, cuda, smi_status = (report.gpus, report.driver_version,
                                              report.cuda_version, "ok")
        except SmiParseError as exc:
            smi_status = "unusable"
            warnings.append(str(exc)[:300])
    cpu, os_info, dmi = _d(doc.get("cpu")), _d(doc.get("os")), _d(doc.get("dmi"))
    xid_lines, nvlink_lines = doc.get("xid_lines"), doc.get("nvlink_lines")
    facts = HardwareFacts(
        probe=doc["probe"],
        hostname=_s(doc.get("hostname")),
        kernel=_s(doc.get("kernel")),
        os_name=_s(os_info.get("pretty_name")) or " ".join(
            x for x in (_s(os_info.get("id")), _s(os_info.get("version_id"))) if x) or None,
        dmi={k: _s(v) for k, v in list(dmi.items())[:20] if isinstance(k, str)},
        cpu_model=_s(cpu.get("model")),
        cpu_sockets=_i(cpu.get("sockets"), "cpu.sockets"),
        cpu_cores=_i(cpu.get("cores"), "cpu.cores"),
        cpu_threads=_i(cpu.get("threads"), "cpu.threads"),
        memory_bytes=_i(doc.get("memory_bytes"), "memory_bytes"),
        disks=[{"name": _s(d.get("name")) or "?", "model": _s(d.get("model")),
                "serial": _s(d.get("serial")),
                "size_bytes": _i(d.get("size_bytes"), "disks.size_bytes"),
                "rotational": d.get("rotational") is True} for d in _list(doc.get("disks"))],
        nics=[{"name": _s(n.get("name")) or "?", "kind": _s(n.get("kind")) or "ethernet",
               "mac": _s(n.get("mac")), "speed_mbps": _i(n.get("speed_mbps"), "nics.speed_mbps"),
               "state": _s(n.get("state"))} for n in _list(doc.get("nics"))],
        ib_ports=[{"device": _s(p.get("device")) or "?",
                   "port": _i(p.get("port"), "ib_ports.port") or 1,
                   "state": _s(p.get("state")), "phys_state": _s(p.get("phys_state")),
                   "rate_gbps": _f(p.get("rate_gbps"), "ib_ports.rate_gbps"),
                   "link_layer": _s(p.get("link_layer"))}
                  for p in _list(doc.get("ib_ports"))],
        pci_gpus=[{"bus_id": (_s(g.get("bus_id")) or "").lower(),
                   "device_id": _s(g.get("device_id")), "driver": _s(g.get("driver")),
                   "link_gen_current": _i(g.get("link_gen_current"),
                                            "pci_gpus.link_gen_current"),
                   "link_gen_max": _i(g.get("link_gen_max"), "pci_gpus.link_gen_max"),
                   "link_width_current": _i(g.get("link_width_current"),
                                              "pci_gpus.link_width_current"),
                   "link_width_max": _i(g.get("link_width_max"),
                                          "pci_gpus.link_width_max"),
                   "numa_node": _i(g.get("numa_node"), "pci_gpus.numa_node"),
                   "socket": _i(g.get("socket"), "pci_gpus.socket")}
                  for g in _list(doc.get("pci_gpus"))],
        nouveau_loaded=doc.get("nouveau_loaded") is True,
        nvidia_module_loaded=doc.get("nvidia_module_loaded") is True,
        secure_boot=_s(doc.get("secure_boot")),
        driver_version=driver or _s(doc.get("nvidia_module_version")),
        cuda_version=cuda,
        smi_status=smi_status,
        gpus=gpus,
        xids=parse_xid_lines(xid_lines if isinstance(xid_lines, list) else []),
        warnings=warnings,
        nvlink=parse_nvlink_lines(nvlink_lines if isinstance(nvlink_lines, list) else []),
    )
    facts.warnings += num.warnings[:50]
    return facts
