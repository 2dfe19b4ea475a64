"""The GPU reset rung's commands: persistence mode off for the reset and back on after
(NVIDIA/NVSentinel#1690), processes and unreadable answers refuse it. The node is a
shell on this machine that runs the rung's command with an ``nvidia-smi`` of the test's
on PATH (the lab's e2e runs the same rung on a lab node's stand-in)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from provisioner.heal.actions import gpu_reset

ROWS = ("0, 00000000:18:00.0, GPU-aaaa, Enabled\n"
        "1, 00000000:2A:00.0, GPU-bbbb, Enabled\n"
        "2, 00000000:3A:00.0, GPU-cccc, Disabled\n")


class Shell:
    """``NodeAccess.run`` as a local ``sh -c`` with a scripted nvidia-smi that logs its
    arguments; ``fail`` names argument prefixes that exit 1."""

    def __init__(self, tmp: Path, *, apps: str = "", rows: str = ROWS,
                 fail: tuple[str, ...] = (), term: str = "") -> None:
        self.log = tmp / "calls.log"
        bin_dir = tmp / "bin"
        bin_dir.mkdir(parents=True)
        cases = "\n".join(f'  "{f}"*) exit 1;;' for f in fail)
        if term:  # this call: the session's shell gets SIGTERM (as on a kill or a stop)
            cases += f'\n  "{term}"*) kill -TERM $PPID; sleep 1;;'

        smi = bin_dir / "nvidia-smi"
        smi.write_text(f"""#!/bin/sh
echo "$*" >> {self.log}
case "$*" in
{cases}
  --query-compute-apps*) printf '%s' '{apps}';;
  --query-gpu=index,pci.bus_id,uuid,persistence_mode*) printf '%s' '{rows}';;
esac
exit 0
""")
        smi.chmod(0o755)
        self.env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}

    def run(self, command: str, timeout: float = 60.0) -> tuple[int, str, str]:
        res = subprocess.run(["sh", "-c", command], capture_output=True, text=True,
                             env=self.env, timeout=timeout, check=False)
        return res.returncode, res.stdout, res.stderr

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


def test_persistence_mode_is_off_for_the_reset_and_on_again_after(tmp_path: Path) -> None:
    node = Shell(tmp_path)
    result = gpu_reset(node, ("1",))  # type: ignore[arg-type]
    assert result.ok, result
    assert result.evidence["persistence_mode_off_for"] == ["00000000:2A:00.0"]
    # Each GPU by the bus id nvidia-smi printed for it.
    assert node.calls()[2:] == ["-pm 0 -i 00000000:2A:00.0", "-r -i 00000000:2A:00.0",
                                "-pm 1 -i 00000000:2A:00.0"]


def test_the_kernel_logs_bus_id_form_is_resolved_to_nvidia_smis(tmp_path: Path) -> None:
    node = Shell(tmp_path)
    assert gpu_reset(node, ("0000:3a:00",)).ok  # type: ignore[arg-type]
    assert node.calls()[2:] == ["-r -i 00000000:3A:00.0"]  # persistence was off


def test_every_gpu_when_none_is_named_and_only_those_that_had_it(tmp_path: Path) -> None:
    node = Shell(tmp_path)
    assert gpu_reset(node, ()).ok  # type: ignore[arg-type]
    assert node.calls()[2:] == ["-pm 0 -i 00000000:18:00.0", "-pm 0 -i 00000000:2A:00.0",
                                "-r", "-pm 1 -i 00000000:18:00.0",
                                "-pm 1 -i 00000000:2A:00.0"]


def test_a_failed_reset_still_restores_persistence_and_fails(tmp_path: Path) -> None:
    node = Shell(tmp_path, fail=("-r",))
    result = gpu_reset(node, ("GPU-aaaa",))  # type: ignore[arg-type]
    assert not result.ok and "exit 1" in result.message, result
    assert node.calls()[-1] == "-pm 1 -i 00000000:18:00.0"


def test_a_restore_that_fails_fails_the_rung(tmp_path: Path) -> None:
    node = Shell(tmp_path, fail=("-pm 1",))
    result = gpu_reset(node, ("0",))  # type: ignore[arg-type]
    assert not result.ok
    assert "persistence mode not restored on GPU 00000000:18:00.0" in result.message


def test_persistence_off_failing_on_one_gpu_runs_no_reset_and_restores(
        tmp_path: Path) -> None:
    node = Shell(tmp_path, fail=("-pm 0 -i 00000000:2A:00.0",))
    result = gpu_reset(node, ())  # type: ignore[arg-type]
    assert not result.ok
    assert result.message.startswith("persistence mode could not be turned off: no reset")
    calls = node.calls()[2:]
    assert not [c for c in calls if c.startswith("-r")]
    assert calls[-2:] == ["-pm 1 -i 00000000:18:00.0", "-pm 1 -i 00000000:2A:00.0"]


def test_a_gpu_in_its_own_pci_domain_is_told_apart(tmp_path: Path) -> None:
    """GB200/GH200: each GPU in its own PCI domain, all at bus 01."""
    rows = "".join(f"{i}, 0000000{8 + i}:01:00.0, GPU-{i}, Enabled\n" for i in range(2))
    node = Shell(tmp_path, rows=rows)
    assert gpu_reset(node, ("0009:01:00",)).ok  # type: ignore[arg-type]
    assert node.calls()[2:] == ["-pm 0 -i 00000009:01:00.0", "-r -i 00000009:01:00.0",
                                "-pm 1 -i 00000009:01:00.0"]
    # Without its domain the address names both: no guess.
    other = Shell(tmp_path / "b", rows=rows)
    result = gpu_reset(other, ("01:00.0",))  # type: ignore[arg-type]
    assert not result.ok and result.message == \
        "GPU 01:00.0 names 2 of nvidia-smi's GPUs; no reset"


@pytest.mark.parametrize("kwargs", [{"fail": ("--query-gpu",)}, {"rows": "garbage\n"},
                                    {"rows": ""}])
def test_a_gpu_nvidia_smi_cannot_read_is_still_reset_by_the_id_given(
        tmp_path: Path, kwargs: dict[str, object]) -> None:
    """A GPU that needs the reset may be one nvidia-smi's query fails on: the reset is
    tried with the id the finding gave, persistence mode left alone."""
    node = Shell(tmp_path, **kwargs)  # type: ignore[arg-type]
    assert gpu_reset(node, ("0000:99:00",)).ok  # type: ignore[arg-type]
    assert node.calls()[2:] == ["-r -i 0000:99:00"]


@pytest.mark.parametrize(("kwargs", "why"), [
    ({"apps": "00000000:18:00.0\n"}, "processes on GPU 00000000:18:00.0; no reset"),
    ({"fail": ("--query-compute-apps",)}, "could not tell whether processes use the GPUs"),
])
def test_what_refuses_a_reset_before_any_change(tmp_path: Path, kwargs: dict[str, object],
                                                why: str) -> None:
    node = Shell(tmp_path, **kwargs)  # type: ignore[arg-type]
    result = gpu_reset(node, ())  # type: ignore[arg-type]
    assert not result.ok and result.message.startswith(why), result
    assert not [c for c in node.calls() if c.startswith(("-r", "-pm"))]


def test_the_same_gpu_named_twice_is_reset_once(tmp_path: Path) -> None:
    node = Shell(tmp_path)
    assert gpu_reset(node, ("0", "00000000:18:00.0", "GPU-aaaa")).ok  # type: ignore[arg-type]
    assert node.calls()[2:] == ["-pm 0 -i 00000000:18:00.0", "-r -i 00000000:18:00.0",
                                "-pm 1 -i 00000000:18:00.0"]


def test_a_signal_mid_way_restores_and_runs_no_reset(tmp_path: Path) -> None:
    node = Shell(tmp_path, term="-pm 0 -i 00000000:2A:00.0")
    result = gpu_reset(node, ())  # type: ignore[arg-type]
    assert not result.ok and result.evidence["exit"] == 143, result
    calls = node.calls()[2:]
    assert not [c for c in calls if c.startswith("-r")], calls
    assert calls[-2:] == ["-pm 1 -i 00000000:18:00.0", "-pm 1 -i 00000000:2A:00.0"]
