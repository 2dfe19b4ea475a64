"""The one entry point to a BMC: OpenStack's ``sushy`` Redfish client (the library
Ironic drives BMCs with), behind ``open_system``.

Every sushy or transport error becomes a one-line ``BmcError`` naming the node and what
went wrong (does not answer, TLS verification, credentials refused, no such system).
TLS is always verified, against ``ca`` or the system's trust store. The password is
read from its reference for each connection and is never put in a message.

sushy has no LogService resources, so the DMTF schemas' few fields ``bmc info`` shows
are declared here with sushy's own resource framework (``sushy.resources.base``):
LogServiceCollection -> LogService -> Entries (LogEntryCollection) -> LogEntry, as in
DMTF DSP0268 (Redfish Resource and Schema Guide), ``LogService.v1_x`` and
``LogEntry.v1_x``.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
import sushy
from sushy import exceptions as sushy_exc
from sushy.resources import base

from provisioner.bmc.credentials import read_password
from provisioner.errors import BmcError

if TYPE_CHECKING:
    from sushy.resources.system.system import System

    from provisioner.db.models import Node

# sushy logs transport errors itself (an SSL failure at ERROR); gpuctl says them once, as
# its own one-line error. A handler here keeps Python's last-resort stderr printer off.
logging.getLogger("sushy").addHandler(logging.NullHandler())

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0
# sushy retries a connection error this many times in all, DELAY seconds apart (and a
# GET answered 5xx): a BMC that is rebooting gets a second chance, a dead one costs ~1 s.
RETRIES = 2
RETRY_DELAY = 1


@dataclass(frozen=True)
class BmcTarget:
    """Where and how to reach one node's BMC (the password by reference)."""

    node: str
    url: str  # https://HOST[:PORT], optionally + /redfish/v1/Systems/ID
    user: str
    password_from: str  # env:VARIABLE or file:PATH
    ca: str | None = None

    @classmethod
    def of(cls, node: Node) -> BmcTarget:
        """The BMC of a registered node.

        Raises:
            BmcError: the node has no BMC registered.
        """
        if not node.bmc_url or not node.bmc_user or not node.bmc_password_from:
            raise BmcError(f"{node.name} has no BMC registered (gpuctl nodes add "
                           f"{node.name} --replace --bmc URL --bmc-user USER "
                           "--bmc-password-from env:VARIABLE)")
        return cls(node.name, node.bmc_url, node.bmc_user, node.bmc_password_from,
                   node.bmc_ca)

    @property
    def base_url(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def system_path(self) -> str | None:
        """The system named in the URL; None: the BMC's only one."""
        return urlsplit(self.url).path or None


class LogEntry(base.ResourceBase):
    """DMTF ``LogEntry``: one record of a log service."""

    identity = base.Field("Id", required=True)
    name = base.Field("Name")
    created = base.Field("Created")
    severity = base.Field("Severity")
    message = base.Field("Message")
    entry_type = base.Field("EntryType")


class LogEntryCollection(base.ResourceCollectionBase):
    @property
    def _resource_type(self) -> type[LogEntry]:
        return LogEntry


class LogService(base.ResourceBase):
    """DMTF ``LogService``: a log the BMC keeps (system event log, the BMC's own)."""

    identity = base.Field("Id", required=True)
    name = base.Field("Name")
    service_enabled = base.Field("ServiceEnabled")
    _entries_path = base.Field(["Entries", "@odata.id"])

    def newest_entries(self, count: int) -> list[LogEntry]:
        """The ``count`` newest entries, newest first. Most BMCs put the entries in
        the collection itself (expanded); otherwise the first and last ``count`` members
        are read one by one (BMCs list theirs oldest or newest first)."""
        if not self._entries_path or count <= 0:
            return []
        collection = LogEntryCollection(self._conn, self._entries_path,
                                        redfish_version=self.redfish_version,
                                        registries=self._registries)
        members = (collection.json or {}).get("Members") or []
        if members and all(isinstance(m, dict) and "Id" in m for m in members):
            entries = [LogEntry(self._conn, m.get("@odata.id", ""), json_doc=m)
                       for m in members]
        else:
            paths = list(collection.members_identities)
            wanted = list(dict.fromkeys(paths[:count] + paths[-count:]))
            entries = [collection.get_member(p) for p in wanted]
        entries.sort(key=lambda e: (str(e.created or ""), str(e.identity)), reverse=True)
        return entries[:count]


class LogServiceCollection(base.ResourceCollectionBase):
    @property
    def _resource_type(self) -> type[LogService]:
        return LogService


def log_services(resource: Any) -> list[LogService]:
    """The log services a System or Manager links to (``LogServices``), or []."""
    path = ((resource.json or {}).get("LogServices") or {}).get("@odata.id")
    if not path:
        return []
    collection = LogServiceCollection(resource._conn, path,
                                      redfish_version=resource.redfish_version,
                                      registries=resource._registries)
    return list(collection.get_members())


def _transport_error(target: BmcTarget, exc: BaseException) -> BmcError:
    """A one-line error for what lies under sushy's ConnectionError."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, requests.RequestException):
        cause = cause.__cause__ or cause.__context__
    where = f"{target.node}: BMC {target.base_url}"
    if isinstance(cause, requests.exceptions.SSLError):
        reason = next((a for a in _chain(cause) if isinstance(a, ssl.SSLError)), cause)
        detail = getattr(reason, "verify_message", None) or getattr(reason, "reason", None)
        ca = f"CA bundle {target.ca}" if target.ca else "the system's trust store"
        return BmcError(f"{where} failed TLS verification against {ca}"
                        f"{f' ({detail})' if detail else ''}; give its CA with --bmc-ca")
    if isinstance(cause, requests.exceptions.Timeout):
        return BmcError(f"{where} does not answer (timed out)")
    if isinstance(cause, requests.exceptions.ConnectionError):
        refused = any(isinstance(a, ConnectionRefusedError) for a in _chain(cause))
        return BmcError(f"{where} does not answer"
                        f"{' (connection refused)' if refused else ''}")
    return BmcError(f"{where} does not answer: {_one_line(exc)}")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it wraps (cause, context, and urllib3's ``reason``)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        item = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        todo.extend(e for e in (item.__cause__, item.__context__, getattr(item, "reason", None),
                                *getattr(item, "args", ())) if isinstance(e, BaseException))


def _one_line(error: object) -> str:
    return " ".join(str(error).split())[:300]


@contextmanager
def open_system(target: BmcTarget) -> Iterator[System]:
    """The node's ComputerSystem through its BMC; every error inside the block (sushy
    reads lazily) comes out as a one-line ``BmcError``.

    Raises:
        BmcError: see the module's docstring.
    """
    if target.ca is not None and not Path(target.ca).is_file():
        raise BmcError(f"{target.node}: the BMC's CA bundle {target.ca} does not exist")
    password = read_password(target.password_from, node=target.node)
    root = None
    try:
        root = sushy.Sushy(target.base_url, auth=sushy.auth.BasicAuth(target.user, password),
                           verify=target.ca or True, connect_timeout=CONNECT_TIMEOUT,
                           read_timeout=READ_TIMEOUT, server_side_retries=RETRIES,
                           server_side_retries_delay=RETRY_DELAY)
        yield root.get_system(target.system_path)
    except sushy_exc.ConnectionError as exc:
        raise _transport_error(target, exc) from None
    except sushy_exc.AccessError as exc:
        raise BmcError(f"{target.node}: BMC {target.base_url} refused the credentials of "
                       f"user {target.user} (HTTP {exc.status_code})") from None
    except sushy_exc.ResourceNotFoundError:
        raise BmcError(f"{target.node}: BMC {target.base_url} has no "
                       f"{target.system_path or 'Redfish service'} (HTTP 404)") from None
    except sushy_exc.UnknownDefaultError:
        raise BmcError(f"{target.node}: BMC {target.base_url} manages several systems (or "
                       "none); name one in the URL: --bmc "
                       f"{target.base_url}/redfish/v1/Systems/ID") from None
    except sushy_exc.HTTPError as exc:
        raise BmcError(f"{target.node}: BMC {target.base_url} answered HTTP "
                       f"{exc.status_code}: {_one_line(exc.message or exc)}") from None
    except sushy_exc.SushyError as exc:
        raise BmcError(f"{target.node}: BMC {target.base_url}: {_one_line(exc)}") from None
    except requests.RequestException as exc:
        # Not wrapped by sushy (a malformed answer, JSON that is not JSON).
        raise BmcError(f"{target.node}: BMC {target.base_url}: {_one_line(exc)}") from None
    except BmcError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        # A document of the wrong shape ("Systems": "oops") breaks sushy's parsing: the
        # BMC's answer is unusable, a finding like any other, not a crash of the scan.
        raise BmcError(f"{target.node}: BMC {target.base_url} answered a document gpuctl "
                       f"cannot read ({type(exc).__name__}: {_one_line(exc)})") from None
    finally:
        del password
        if root is not None:
            root._conn.close()  # sushy has no public close; its connector does
