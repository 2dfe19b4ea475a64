"""SQLModel tables. JSON is stored as text so SQLite and PostgreSQL behave the same."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """Stored times are UTC; SQLite hands them back without a zone, PostgreSQL with."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def certificate_expired(expires_at: datetime | None, now: datetime | None = None) -> bool:
    """The one certificate-validity rule: expired once its expiry is in the past (UTC;
    a certificate with no expiry never expires). SQL filters use the same comparison:
    ``Certificate.expires_at < now``."""
    return expires_at is not None and as_utc(expires_at) < as_utc(now or utcnow())


def iso_utc(value: datetime | None) -> str | None:
    """``2026-11-26T02:08:48+00:00`` (seconds), or None."""
    return None if value is None else as_utc(value).isoformat(timespec="seconds")


class Node(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=253)
    address: str = Field(max_length=253)
    port: int = 22
    user: str = Field(default="root", max_length=32)
    key_path: str | None = Field(default=None, max_length=4096)
    labels_json: str = "{}"
    # Extra Ansible host variables that are not secrets (e.g. ansible_python_interpreter).
    vars_json: str = "{}"
    sku: str | None = Field(default=None, index=True, max_length=64)
    state: str = Field(default="registered", index=True, max_length=32)
    hostkey_mismatch: bool = False
    created_at: datetime = Field(default_factory=utcnow)
    last_scan_at: datetime | None = None
    last_snapshot_id: int | None = None
    # The node's BMC (Redfish): where, as whom, and where its password is (a reference,
    # env:VARIABLE or file:PATH; the password itself is never stored), and the CA bundle
    # its certificate is checked against (None: the system's trust store).
    bmc_url: str | None = Field(default=None, max_length=2048)
    bmc_user: str | None = Field(default=None, max_length=64)
    bmc_password_from: str | None = Field(default=None, max_length=4101)
    bmc_ca: str | None = Field(default=None, max_length=4096)


class Run(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(index=True, max_length=16)  # scan | provision | burnin | handoff
    actor: str = Field(max_length=128)
    args_json: str = "{}"
    # running | ok | partial | failed | interrupted | abandoned (provisioner.runs)
    status: str = Field(default="running", max_length=16, index=True)
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    summary_json: str = "{}"
    # Where the run's process lives and its last sign of life, for crash recovery.
    host: str | None = Field(default=None, max_length=253)
    pid: int | None = None
    heartbeat_at: datetime | None = None


class HardwareSnapshot(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    node_id: int = Field(foreign_key="node.id", index=True, ondelete="CASCADE")
    run_id: int | None = Field(default=None, foreign_key="run.id")
    taken_at: datetime = Field(default_factory=utcnow)
    hostname: str | None = None
    os_name: str | None = None
    kernel: str | None = None
    system_vendor: str | None = None
    system_product: str | None = None
    system_serial: str | None = None
    cpu_model: str | None = None
    cpu_sockets: int | None = None
    cpu_cores: int | None = None
    memory_bytes: int | None = Field(default=None, sa_type=BigInteger)  # > 2^31
    gpu_count: int = 0
    pci_gpu_count: int = 0
    driver_version: str | None = None
    cuda_version: str | None = None
    nouveau_loaded: bool = False
    secure_boot: str | None = None
    facts_json: str = "{}"


class Gpu(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    snapshot_id: int = Field(foreign_key="hardwaresnapshot.id", index=True,
                             ondelete="CASCADE")
    node_id: int = Field(foreign_key="node.id", index=True, ondelete="CASCADE")
    index: int
    uuid: str | None = Field(default=None, index=True)
    serial: str | None = None
    model: str | None = None
    pci_bus_id: str = ""
    vbios: str | None = None
    memory_mib: int | None = None
    pcie_gen_current: int | None = None
    pcie_gen_max: int | None = None
    pcie_width_current: int | None = None
    pcie_width_max: int | None = None
    ecc_mode: str | None = None
    mig_mode: str | None = None
    retired_pages_sbe: int | None = None
    retired_pages_dbe: int | None = None
    retired_pages_pending: bool | None = None
    remapped_rows_correctable: int | None = None
    remapped_rows_uncorrectable: int | None = None
    remapped_rows_pending: bool | None = None
    remapped_rows_failure: bool | None = None
    ecc_uncorrectable_volatile: int | None = None
    ecc_uncorrectable_aggregate: int | None = None
    temperature_c: int | None = None
    power_limit_w: float | None = None
    driver_version: str | None = None
    thermal_slowdown: bool | None = None


class Nic(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    snapshot_id: int = Field(foreign_key="hardwaresnapshot.id", index=True,
                             ondelete="CASCADE")
    name: str
    kind: str = "ethernet"  # ethernet | infiniband
    mac: str | None = None
    speed_mbps: int | None = None
    state: str | None = None
    ib_device: str | None = None
    ib_port: int | None = None
    ib_rate_gbps: float | None = None
    ib_link_layer: str | None = None


class Disk(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    snapshot_id: int = Field(foreign_key="hardwaresnapshot.id", index=True,
                             ondelete="CASCADE")
    name: str
    model: str | None = None
    serial: str | None = None
    size_bytes: int | None = Field(default=None, sa_type=BigInteger)
    rotational: bool | None = None


class Event(SQLModel, table=True):
    """Append-only history: state transitions, drift, faults, host-key problems."""

    id: int | None = Field(default=None, primary_key=True)
    node_id: int = Field(foreign_key="node.id", index=True, ondelete="CASCADE")
    run_id: int | None = Field(default=None, foreign_key="run.id")
    at: datetime = Field(default_factory=utcnow)
    actor: str = Field(max_length=128)
    kind: str = Field(max_length=32)  # state | drift | fault | hostkey | note
    from_state: str | None = None
    to_state: str | None = None
    severity: str = "info"  # info | warning | critical
    reason: str = ""


class TaskResult(SQLModel, table=True):
    """One Ansible task's result on one node in one provision run."""

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True)
    node_id: int = Field(foreign_key="node.id", index=True, ondelete="CASCADE")
    task: str = Field(max_length=256)
    role: str | None = Field(default=None, max_length=64)
    action: str | None = Field(default=None, max_length=128)
    status: str = Field(max_length=16)  # ok | changed | failed | skipped | unreachable
    message: str = ""
    at: datetime = Field(default_factory=utcnow)
    seconds: float | None = None


class NodeLock(SQLModel, table=True):
    """A node held by a running provision/burn-in; the primary key makes it exclusive."""

    node_id: int = Field(foreign_key="node.id", primary_key=True, ondelete="CASCADE")
    run_id: int = Field(foreign_key="run.id")
    holder: str = Field(max_length=256)  # user@host pid N
    acquired_at: datetime = Field(default_factory=utcnow)


class BurninResult(SQLModel, table=True):
    """One measurement of one test on one node (and GPU) in one burn-in run."""

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True)
    node_id: int = Field(foreign_key="node.id", index=True, ondelete="CASCADE")
    gpu_index: int | None = None
    test: str = Field(max_length=64)
    value: float | None = None
    unit: str = Field(default="", max_length=16)
    threshold: float | None = None
    verdict: str = Field(max_length=8)  # pass | fail
    reason: str = ""
    detail_json: str = "{}"


class Certificate(SQLModel, table=True):
    """Proof that a node passed burn-in: what was tested, against what, on what software."""

    id: int | None = Field(default=None, primary_key=True)
    node_id: int = Field(foreign_key="node.id", index=True, ondelete="CASCADE")
    run_id: int = Field(foreign_key="run.id")
    profile: str = Field(max_length=64)
    level: str = Field(max_length=16)
    driver_version: str | None = None
    cuda_version: str | None = None
    results_digest: str = Field(max_length=64)  # sha256 of the stored results
    issued_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime | None = None


class BurninArtifact(SQLModel, table=True):
    """What a burn-in run brought back from a node beyond the verdicts, for reports:
    ``agent`` (telemetry samples, NVLink states, health snapshots, P2P matrix) or
    ``dcgm`` (``dcgmi diag --json`` as DCGM printed it)."""

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True)
    node_id: int = Field(foreign_key="node.id", index=True, ondelete="CASCADE")
    kind: str = Field(max_length=16)
    content_json: str = "{}"


class Pool(SQLModel, table=True):
    """A team's share of certified GPU capacity of one SKU."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=64)
    sku: str = Field(max_length=64)
    gpus: int  # the capacity the team was promised
    created_at: datetime = Field(default_factory=utcnow)
    actor: str = Field(default="", max_length=128)
    # Who may use it (comma-separated Slurm accounts, Unix groups); both "": everyone.
    accounts: str = Field(default="", max_length=512)
    groups: str = Field(default="", max_length=512)


class PoolAllocation(SQLModel, table=True):
    """``gpus`` GPUs of one node given to one pool (a slice: 8, 4, 2 or 1 GPUs)."""

    id: int | None = Field(default=None, primary_key=True)
    pool_id: int = Field(foreign_key="pool.id", index=True, ondelete="CASCADE")
    node_id: int = Field(foreign_key="node.id", index=True, ondelete="CASCADE")
    gpus: int
    first_gpu: int = 0  # GPU indices first_gpu .. first_gpu+gpus-1
    assigned_at: datetime = Field(default_factory=utcnow)


class Remediation(SQLModel, table=True):
    """One node's remediation of one fault, from quarantine to back in service or RMA
    (``provisioner.remediate.record``: the states and the moves between them)."""

    id: int | None = Field(default=None, primary_key=True)
    node_id: int = Field(foreign_key="node.id", index=True, ondelete="CASCADE")
    fault: str = Field(max_length=64)  # the fault key, e.g. xid-79, row-remap-pending
    rule: str = Field(default="", max_length=64)
    state: str = Field(max_length=32, index=True)
    rung: str | None = Field(default=None, max_length=16)  # the rung running or last run
    opened_at: datetime = Field(default_factory=utcnow)
    closed_at: datetime | None = None
    actor: str = Field(max_length=128)


class RemediationEvent(SQLModel, table=True):
    """Append-only: who moved a remediation to which state, when, why, with the evidence
    before and after (JSON); ``rung``/``outcome`` when a rung ran."""

    id: int | None = Field(default=None, primary_key=True)
    remediation_id: int = Field(foreign_key="remediation.id", index=True,
                                ondelete="CASCADE")
    at: datetime = Field(default_factory=utcnow)
    actor: str = Field(max_length=128)
    from_state: str | None = Field(default=None, max_length=32)
    to_state: str = Field(max_length=32)
    rung: str | None = Field(default=None, max_length=16)
    outcome: str | None = Field(default=None, max_length=16)  # succeeded | failed
    message: str = ""
    evidence_before_json: str = "{}"
    evidence_after_json: str = "{}"
