"""plan_remediation: the rung for a node's findings, climbing and repeats, and the
refusals (admin drain, control host) and safety skips (processes, NVSwitch, no BMC)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from provisioner.catalogue import catalogue
from provisioner.paths import Paths
from provisioner.remediate.plan import Attempt, NodeFacts, bus_key, plan_remediation
from provisioner.remediate.policy import Policy, load_policy
from provisioner.scan.findings import Finding, health_findings
from tests.unit.test_findings import facts as probe_facts

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
GPU = "00000000:18:00.0"
IDLE = NodeFacts("gpu1", gpus_in_use=frozenset(), has_bmc=True)


@pytest.fixture
def policy(paths: Paths) -> Policy:
    return load_policy(paths.home)


def xid(code: int, pci: str = "0000:18:00") -> Finding:
    return Finding("xid", "critical", f"XID {code} on {pci}: test", xid=code, gpu=pci)


def finding(kind: str, severity: str = "critical", gpu: str | None = GPU) -> Finding:
    return Finding(kind, severity, f"GPU 0 ({gpu}) {kind}", gpu=gpu)


def ago(days: float, fault: str, rung: str, outcome: str) -> Attempt:
    return Attempt(NOW - timedelta(days=days), fault, rung, outcome)


def test_xid_79_reboots_citing_restart_bm(policy: Policy) -> None:
    d = plan_remediation([xid(79)], [], policy, IDLE, NOW)
    assert (d.rung, d.fault, d.rule) == ("reboot", "xid-79", "xid-restart-bare-metal")
    assert "RESTART_BM" in d.source and d.acts and not d.refused
    assert d.to_dict()["acts"] is True


def test_ecc_uncorrectable_goes_to_rma(policy: Policy) -> None:
    d = plan_remediation([finding("ecc-uncorrectable")], [], policy, IDLE, NOW)
    assert (d.rung, d.rule) == ("rma", "ecc-uncorrectable")
    # Rows remapped for uncorrectable errors (the drift finding) only need the reset
    # that activates them; RMA is the failure flag's to say.
    d = plan_remediation([finding("row-remap")], [], policy, IDLE, NOW)
    assert (d.rung, d.rule) == ("reset", "row-remap-uncorrectable")


def test_row_remap_pending_resets_that_gpu(policy: Policy) -> None:
    d = plan_remediation([finding("row-remap-pending", "warning")], [], policy, IDLE, NOW)
    assert (d.rung, d.gpus) == ("reset", (GPU,))
    assert "next GPU reset" in d.source


def test_repeat_within_the_window_goes_straight_to_rma(policy: Policy) -> None:
    history = [ago(3, "xid-79", "reboot", "succeeded")]
    d = plan_remediation([xid(79)], history, policy, IDLE, NOW)
    assert d.rung == "rma"
    assert "seen 2 times within 7 days" in d.reason
    # Outside the window it is a first occurrence again; another fault's history and a
    # different XID code do not count.
    old = [ago(8, "xid-79", "reboot", "succeeded"), ago(1, "xid-46", "reset", "succeeded")]
    assert plan_remediation([xid(79)], old, policy, IDLE, NOW).rung == "reboot"


def test_a_failed_rung_climbs_one_rung(policy: Policy) -> None:
    history = [ago(0.2, "xid-46", "reset", "failed")]
    d = plan_remediation([xid(46)], history, policy, IDLE, NOW)
    assert d.rung == "reboot" and "reset failed, climbing to reboot" in d.reason
    history.append(ago(0.1, "xid-46", "reboot", "failed"))
    assert plan_remediation([xid(46)], history, policy, IDLE, NOW).rung == "power-cycle"
    history.append(ago(0.05, "xid-46", "power-cycle", "failed"))
    assert plan_remediation([xid(46)], history, policy, IDLE, NOW).rung == "rma"


def test_past_the_ceiling_a_person_decides(policy: Policy) -> None:
    capped = replace(policy, rules=tuple(replace(r, ceiling="reboot") if r.name ==
                                         "xid-reset-gpu" else r for r in policy.rules))
    history = [ago(0.2, "xid-46", "reset", "failed"), ago(0.1, "xid-46", "reboot", "failed")]
    d = plan_remediation([xid(46)], history, capped, IDLE, NOW)
    assert d.rung == "none" and not d.refused
    assert "reboot failed and the ceiling is reboot: a person decides" in d.reason


def test_reset_refused_with_processes_on_the_gpu_takes_the_next_rung(policy: Policy) -> None:
    busy = replace(IDLE, gpus_in_use=frozenset({"00000000:18:00.0"}))
    d = plan_remediation([xid(46, "0000:18:00")], [], policy, busy, NOW)
    assert d.rung == "reboot" and d.gpus == ()
    assert d.skipped == ("reset: processes on GPU 0000:18:00 (nvidia-smi -r needs none)",)
    # Processes on another GPU do not stop a reset of this one.
    other = replace(IDLE, gpus_in_use=frozenset({"00000000:2A:00.0"}))
    assert plan_remediation([xid(46)], [], policy, other, NOW).rung == "reset"
    # Not knowing is not idle.
    unknown = replace(IDLE, gpus_in_use=None)
    d = plan_remediation([xid(46)], [], policy, unknown, NOW)
    assert d.rung == "reboot" and "could not tell" in d.skipped[0]


def test_nvswitch_reset_needs_fabric_manager(policy: Policy) -> None:
    no_fm = replace(IDLE, nvswitch=True, fabric_manager_running=False)
    d = plan_remediation([xid(46)], [], policy, no_fm, NOW)
    assert d.rung == "reboot" and "every NVLink peer" in d.skipped[0]
    with_fm = replace(no_fm, fabric_manager_running=True)
    assert plan_remediation([xid(46)], [], policy, with_fm, NOW).rung == "reset"
    never = replace(policy, nvswitch_reset="reboot")
    d = plan_remediation([xid(46)], [], never, with_fm, NOW)
    assert d.rung == "reboot" and "nvswitch_reset" in d.skipped[0]
    # A PCIe system (no NVSwitch) resets without Fabric Manager.
    assert plan_remediation([xid(46)], [], policy, IDLE, NOW).rung == "reset"


def test_no_bmc_skips_the_power_cycle(policy: Policy) -> None:
    history = [ago(0.1, "xid-79", "reboot", "failed")]
    assert plan_remediation([xid(79)], history, policy, IDLE, NOW).rung == "power-cycle"
    d = plan_remediation([xid(79)], history, policy, replace(IDLE, has_bmc=False), NOW)
    assert d.rung == "rma" and d.skipped == ("power-cycle: no BMC known for the node",)


def test_admin_drained_and_control_host_are_refused(policy: Policy) -> None:
    drained = replace(IDLE, admin_drained=True, admin_reason="Slurm: maint by root")
    d = plan_remediation([xid(79)], [], policy, drained, NOW)
    assert (d.rung, d.refused, d.acts) == ("none", True, False)
    assert "drained or DOWN by an admin (Slurm: maint by root)" in d.reason
    d = plan_remediation([xid(79)], [], policy, replace(IDLE, control_host=True), NOW)
    assert d.refused and "control host" in d.reason


def test_unknown_critical_finding_is_left_to_a_person(policy: Policy) -> None:
    d = plan_remediation([finding("memory-lost", gpu=None)], [], policy, IDLE, NOW)
    assert (d.rung, d.rule, d.fault) == ("none", "default", "memory-lost")
    assert not d.acts and not d.refused
    # A warning no rule names needs nothing; nor does no finding at all.
    d = plan_remediation([finding("persistence", "warning")], [], policy, IDLE, NOW)
    assert (d.rung, d.reason) == ("none", "no finding needs remediation")
    assert plan_remediation([], [], policy, IDLE, NOW).reason == "no finding needs remediation"


def test_the_highest_rung_governs_and_lists_every_finding(policy: Policy) -> None:
    d = plan_remediation([finding("row-remap-pending", "warning"), xid(79),
                          finding("row-remap-failure")], [], policy, IDLE, NOW)
    assert (d.rung, d.fault) == ("rma", "row-remap-failure")
    assert len(d.findings) == 3


def test_an_rma_is_requested_once(policy: Policy) -> None:
    history = [ago(1, "row-remap-failure", "rma", "requested")]
    d = plan_remediation([finding("row-remap-failure")], history, policy, IDLE, NOW)
    assert d.rung == "none" and "rma already requested" in d.reason


def test_application_xids_take_no_node_action(policy: Policy) -> None:
    d = plan_remediation([xid(13)], [], policy, IDLE, NOW)
    assert (d.rung, d.rule) == ("none", "xid-application")


def test_findings_from_a_real_probe_carry_xid_and_gpu(policy: Policy) -> None:
    line = "[1.0] NVRM: Xid (PCI:0000:2a:00): 79, pid=1, GPU has fallen off the bus."
    found = health_findings(probe_facts(xid_lines=[line]), catalogue()["h100-sxm-8"])
    x79 = next(f for f in found if f.kind == "xid")
    assert (x79.xid, x79.gpu) == (79, "0000:2a:00")
    remap = next(f for f in found if f.kind == "row-remap-failure")
    assert remap.gpu and bus_key(remap.gpu) in {"18:00", "2a:00", "3a:00", "5d:00", "9a:00",
                                                 "ab:00", "ba:00", "db:00"}
    d = plan_remediation(found, [], policy, IDLE, NOW)
    assert (d.rung, d.fault) == ("rma", "row-remap-failure")


def test_bus_keys_match_across_the_kernel_log_and_nvidia_smi() -> None:
    assert bus_key("00000000:DB:00.0") == bus_key("0000:db:00") == "db:00"
