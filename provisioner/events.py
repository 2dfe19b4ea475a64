"""Changes gpuctl makes, as data, and the listeners that mirror them elsewhere.

Like ansible-runner's ``event_handler``: the lifecycle records each node's state change
(and each change of the pools) on the transaction that makes it; when that transaction
commits, the ``Gpuctl`` handle hands the changes to every registered ``Listener``. A
scheduler adapter is such a listener: it drains a node that stops serving (before the
run that moved it starts its work, since the run's first transaction is what moves it),
resumes one that serves again, and follows the pools. No command calls a scheduler by
hand, so no path can forget to.

A listener never blocks gpuctl's own change: it reports trouble (the scheduler is down)
in its ``SyncReport`` and ``gpuctl monitor``'s ``reconcile`` retries.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from sqlmodel import Session

    from provisioner.handle import Gpuctl

# A node deleted from the inventory (``nodes remove``): its last "state" for listeners.
REMOVED = "removed"
_PENDING = "gpuctl.changes"


@dataclass(frozen=True)
class StateChange:
    """A node moved from one lifecycle state to another (``to_state`` may be REMOVED).
    ``restate``: the node stays in its state with a new reason that the scheduler's
    reason must show (a quarantined node sent for RMA)."""

    node: str
    from_state: str
    to_state: str
    reason: str
    run_id: int | None = None
    restate: bool = False


@dataclass(frozen=True)
class PoolsChanged:
    """A pool was created, deleted, or gained or lost capacity."""

    pool: str


Change = StateChange | PoolsChanged


def note_change(session: Session, change: Change) -> None:
    """Record ``change`` on ``session``: listeners hear of it once the session commits
    (a rolled-back change is never announced)."""
    session.info.setdefault(_PENDING, []).append(change)


def take_changes(session: Session) -> list[Change]:
    """The changes recorded on ``session``, removed from it."""
    changes: list[Change] = session.info.pop(_PENDING, [])
    return changes


def last_state_changes(changes: list[Change]) -> dict[str, StateChange]:
    """Each node's last state change among ``changes`` (what it ended up as)."""
    return {c.node: c for c in changes if isinstance(c, StateChange)}


@dataclass
class SyncReport:
    """What one listener did with the changes, or why it could not."""

    target: str
    drained: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)  # drained there by someone else
    notes: list[str] = field(default_factory=list)
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def empty(self) -> bool:
        return not (self.drained or self.resumed or self.foreign or self.notes or self.error)

    def lines(self) -> list[str]:
        t = self.target
        out = [f"{t}: drained {', '.join(self.drained)}"] if self.drained else []
        if self.resumed:
            out.append(f"{t}: resumed {', '.join(self.resumed)}")
        if self.foreign:
            out.append(f"{t}: drained by someone else: {', '.join(self.foreign)}")
        out += [f"{t}: {note}" for note in self.notes]
        if self.error:
            out.append(f"{t}: not updated ({self.error}); `gpuctl monitor` retries")
        return out


def merge_reports(reports: list[SyncReport]) -> dict[str, SyncReport]:
    """One report per listener from several (changes mirrored, then a reconcile)."""
    out: dict[str, SyncReport] = {}
    for r in reports:
        m = out.setdefault(r.target, SyncReport(r.target))
        for name in ("drained", "resumed", "foreign", "notes"):
            merged = getattr(m, name)
            merged += [x for x in getattr(r, name) if x not in merged]
        m.error = r.error  # the latest word: a reconcile that worked clears it
    return out


class Listener(Protocol):
    """A system that mirrors gpuctl's changes (a scheduler). Both calls return None when
    the listener is not configured (no hand-off to it yet)."""

    name: str

    def changed(self, gc: Gpuctl, changes: list[Change]) -> SyncReport | None:
        """Mirror ``changes``, just committed."""

    def reconcile(self, gc: Gpuctl) -> SyncReport | None:
        """Bring the whole system in line with gpuctl (what ``changed`` could not do)."""

    def jobs_left(self, gc: Gpuctl, names: list[str]) -> dict[str, str] | None:
        """Of ``names``, the nodes where the system still runs work (node -> its state
        there), after they were drained for gpuctl's own run.

        Raises:
            GpuctlError: the system cannot be asked (a run must not start on a guess).
        """

    # Optional (``Gpuctl.kill_jobs`` and ``Gpuctl.admin_holds`` ask a listener that has
    # them):
    # def kill_jobs(self, gc: Gpuctl, names: list[str]) -> dict[str, str] | None:
    #     Cancel the jobs that still hold ``names`` (``--kill-jobs``): node -> which.
    # def admin_holds(self, gc: Gpuctl, names: list[str]) -> dict[str, str] | None:
    #     Of ``names``, the nodes drained or DOWN there by someone other than gpuctl
    #     (node -> by whom and why); remediation never acts on them.
