"""The lab's BMCs: sushy-tools' Redfish emulator with a systems driver for lab nodes.
Run as ``python -m provisioner.lab.bmc_emulator CONFIG`` (``LabBmcs.up`` starts it).

sushy-tools picks its systems driver from its configuration, among its own (fake,
libvirt, nova, ironic: ``Application.systems`` in sushy_tools/emulator/main.py); there
is no setting for a driver of one's own. So this launcher imports the emulator's Flask
application, serving the real sushy-tools Redfish resources, and gives it our driver
(``LabSystemsDriver``, derived from sushy-tools' ``AbstractSystemsDriver`` in
sushy_tools/emulator/resources/systems/base.py, as its fake driver is). Its basic
authentication is sushy-tools' own (``SUSHY_EMULATOR_AUTH_FILE``, an htpasswd file,
sushy_tools/emulator/auth_basic.py); its TLS is Python's ``ssl`` as sushy-tools' main()
sets it up (``SUSHY_EMULATOR_SSL_CERT``/``_KEY``), on one werkzeug server per node.

What sushy-tools does not emulate, added here for the lab:
- ``SerialNumber``, ``Manufacturer``, ``Model`` and a health rollup that reflects the
  node's faults, on the ComputerSystem resource (its template has none of them);
- a LogService with the power actions the BMC carried out, after DMTF DSP0268 (the
  Redfish Resource and Schema Guide): ``LogServiceCollection``, ``LogService.v1_1_0``,
  ``LogEntryCollection``, ``LogEntry.v1_4_0`` (``EntryType`` Event, ``Severity``,
  ``Created``, ``Message``), at ``/redfish/v1/Systems/{id}/LogServices/Log``.
"""

from __future__ import annotations

import datetime
import json
import signal
import ssl
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import flask
from sushy_tools import error
from sushy_tools.emulator import main as emulator
from sushy_tools.emulator.resources.systems.base import AbstractSystemsDriver
from werkzeug.serving import BaseWSGIServer, make_server

from provisioner.lab.faults import GPU_FAULTS, TRANSIENT_FAULTS
from provisioner.lab.nodes import Lab
from provisioner.lab.power import is_on, power_off, power_on
from provisioner.lab.profiles import get_profile
from provisioner.lab.render import BIOS_VERSION
from provisioner.paths import Paths

MAX_LOG_ENTRIES = 1000  # the log wraps when full (LogService OverWritePolicy)
# GPU faults that model a part (not cleared by a power cycle): the BMC's health rollup.
PART_FAULTS = GPU_FAULTS - TRANSIENT_FAULTS
ON = {"On", "ForceOn"}
OFF = {"ForceOff", "GracefulShutdown"}
CYCLE = {"ForceRestart", "GracefulRestart", "PowerCycle"}


class LabSystemsDriver(AbstractSystemsDriver):
    """The systems of the lab's nodes; each BMC listener shows only its own node's
    (the request's server address and port say which BMC was asked)."""

    def __init__(self, lab: Lab, listeners: dict[tuple[str, str], str]) -> None:
        self.lab = lab
        self.listeners = listeners  # (address, port) -> node name
        self.uuids = {name: str(uuid.UUID(hex=lab.spec(name)["machine_id"]))
                      for name in listeners.values()}
        self.locks = {name: threading.Lock() for name in listeners.values()}
        self.log_lock = threading.Lock()

    @classmethod
    def initialize(cls, config: Any, logger: Any, *args: Any, **kwargs: Any) -> None:
        super().initialize(config, logger)

    @property
    def driver(self) -> str:
        return "<gpuctl-lab>"

    def _mine(self) -> list[str]:
        """The node(s) the asking BMC manages (all outside a request)."""
        if not flask.has_request_context():
            return list(self.uuids)
        env = flask.request.environ
        name = self.listeners.get((str(env.get("SERVER_NAME")), str(env.get("SERVER_PORT"))))
        return [name] if name else []

    def node_of(self, identity: str) -> str:
        """The node behind ``identity`` (its UUID or its name) at this BMC."""
        for name in self._mine():
            if identity in (self.uuids[name], name):
                return name
        raise error.NotFound(f"System {identity} was not found")

    @property
    def systems(self) -> list[str]:
        return [self.uuids[name] for name in self._mine()]

    def uuid(self, identity: str) -> str:
        return self.uuids[self.node_of(identity)]

    def name(self, identity: str) -> str:
        return self.node_of(identity)

    def get_power_state(self, identity: str) -> str:
        return "On" if is_on(self.lab, self.node_of(identity)) else "Off"

    def set_power_state(self, identity: str, state: str) -> None:
        name = self.node_of(identity)
        if state not in ON | OFF | CYCLE:
            raise error.NotSupportedError(f"Power state {state} is not supported")
        user = flask.request.environ.get("HTTP_X_USER_NAME", "?") \
            if flask.has_request_context() else "?"
        with self.locks[name]:
            if state in OFF | CYCLE and power_off(self.lab, name):
                self.log(name, f"System powered off ({state}, requested by {user})", "OK")
            if state in ON | CYCLE and not is_on(self.lab, name):
                cleared = power_on(self.lab, name)
                note = f"; cleared on boot: {', '.join(cleared)}" if cleared else ""
                self.log(name, f"System powered on ({state}, requested by {user}){note}", "OK")

    def get_boot_device(self, identity: str) -> str:
        self.node_of(identity)
        return "Hdd"

    def set_boot_device(self, identity: str, boot_source: str) -> None:
        raise error.NotSupportedError("the lab's nodes boot from their disk only")

    def get_versions(self, identity: str) -> dict[str, str]:
        self.node_of(identity)
        return {"BiosVersion": BIOS_VERSION}

    # -- what sushy-tools does not emulate -------------------------------------------
    def beyond_sushy_tools(self, identity: str) -> dict[str, Any]:
        """SerialNumber, Manufacturer, Model, Status and the LogServices link."""
        name = self.node_of(identity)
        spec = self.lab.spec(name)
        profile = get_profile(spec["profile"])
        faults = set(spec["faults"])
        rollup = "Critical" if faults & PART_FAULTS else \
            "Warning" if faults & GPU_FAULTS else "OK"
        return {"SerialNumber": spec["system_serial"], "Manufacturer": profile.system_vendor,
                "Model": profile.system_product,
                "Status": {"State": "Enabled", "Health": "OK", "HealthRollup": rollup},
                "LogServices": {"@odata.id": f"/redfish/v1/Systems/{identity}/LogServices"}}

    def _log_file(self, name: str) -> Path:
        return self.lab.dir / "bmc" / f"log-{name}.json"

    def log(self, name: str, message: str, severity: str) -> None:
        with self.log_lock:
            entries = self.entries(name)
            last = int(entries[-1]["Id"]) if entries else 0
            entries.append({"Id": str(last + 1), "EntryType": "Event", "Severity": severity,
                            "Created": datetime.datetime.now(datetime.UTC).isoformat(
                                timespec="seconds"), "Message": message})
            path = self._log_file(name)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(entries[-MAX_LOG_ENTRIES:]))
            tmp.replace(path)

    def entries(self, name: str) -> list[dict[str, Any]]:
        try:
            data: list[dict[str, Any]] = json.loads(self._log_file(name).read_text())
            return data
        except (OSError, ValueError):
            return []


def _driver() -> LabSystemsDriver:
    systems = emulator.app.systems
    assert isinstance(systems, LabSystemsDriver)
    return systems


class LabApplication(emulator.Application):
    """sushy-tools' application with the lab's systems driver in place of its own."""

    lab_systems: LabSystemsDriver

    @property
    def systems(self) -> LabSystemsDriver:
        return self.lab_systems


def _with_extra(view: Any) -> Any:
    """sushy-tools' ComputerSystem view, plus what ``LabSystemsDriver.beyond_sushy_tools`` adds."""
    def system_resource(identity: str) -> Any:
        response = view(identity=identity)
        if flask.request.method == "GET" and response.status_code == 200:
            body = json.loads(response.get_data())
            body.update(_driver().beyond_sushy_tools(identity))
            response.set_data(json.dumps(body, indent=4))
        return response
    return system_resource


def _odata(path: str, kind: str, **body: Any) -> flask.Response:
    return flask.Response(json.dumps({"@odata.id": path, "@odata.type": kind, **body},
                                     indent=4), content_type="application/json")


def _entry(base: str, entry: dict[str, Any]) -> dict[str, Any]:
    return {"@odata.id": f"{base}/{entry['Id']}", "@odata.type": "#LogEntry.v1_4_0.LogEntry",
            "Name": f"Log Entry {entry['Id']}", **entry}


def add_log_service(app: flask.Flask) -> None:
    """The LogService routes (DMTF DSP0268; LogService, LogEntry schemas)."""
    root = "/redfish/v1/Systems/<identity>/LogServices"

    @app.route(root)
    def log_services(identity: str) -> flask.Response:
        _driver().node_of(identity)
        path = f"/redfish/v1/Systems/{identity}/LogServices"
        return _odata(path, "#LogServiceCollection.LogServiceCollection",
                      Name="Log Service Collection", **{"Members@odata.count": 1},
                      Members=[{"@odata.id": f"{path}/Log"}])

    @app.route(root + "/Log")
    def log_service(identity: str) -> flask.Response:
        _driver().node_of(identity)
        path = f"/redfish/v1/Systems/{identity}/LogServices/Log"
        return _odata(path, "#LogService.v1_1_0.LogService", Id="Log",
                      Name="System Event Log", MaxNumberOfRecords=MAX_LOG_ENTRIES,
                      OverWritePolicy="WrapsWhenFull", ServiceEnabled=True,
                      Status={"State": "Enabled", "Health": "OK"},
                      Entries={"@odata.id": f"{path}/Entries"})

    @app.route(root + "/Log/Entries")
    def log_entries(identity: str) -> flask.Response:
        driver = _driver()
        name = driver.node_of(identity)
        path = f"/redfish/v1/Systems/{identity}/LogServices/Log/Entries"
        members = [_entry(path, e) for e in driver.entries(name)]
        return _odata(path, "#LogEntryCollection.LogEntryCollection",
                      Name="System Event Log Entries",
                      **{"Members@odata.count": len(members)}, Members=members)

    @app.route(root + "/Log/Entries/<entry_id>")
    def log_entry(identity: str, entry_id: str) -> flask.Response:
        driver = _driver()
        path = f"/redfish/v1/Systems/{identity}/LogServices/Log/Entries"
        for entry in driver.entries(driver.node_of(identity)):
            if entry["Id"] == entry_id:
                return flask.Response(json.dumps(_entry(path, entry), indent=4),
                                      content_type="application/json")
        raise error.NotFound(f"Log entry {entry_id} was not found")


def serve(config: dict[str, Any]) -> list[BaseWSGIServer]:
    """Bind every node's BMC listener; returns the servers (not yet serving)."""
    lab = Lab(Paths(Path(config["home"])))
    listeners = {(str(b["address"]), str(b["port"])): str(b["node"])
                 for b in config["listeners"]}
    app = emulator.app
    app.__class__ = LabApplication
    assert isinstance(app, LabApplication)
    app.lab_systems = LabSystemsDriver(lab, listeners)
    LabSystemsDriver.initialize(app.config, app.logger)
    app.configure(extra_config={"SUSHY_EMULATOR_AUTH_FILE": config["htpasswd"],
                                "SUSHY_EMULATOR_SSL_CERT": config["cert"],
                                "SUSHY_EMULATOR_SSL_KEY": config["key"],
                                "SUSHY_EMULATOR_FEATURE_SET": "full",
                                # Its indicator LEDs' state (memoize.PersistentDict).
                                "SUSHY_EMULATOR_STATE_DIR": str(lab.dir / "bmc" / "state")})
    app.view_functions["system_resource"] = _with_extra(app.view_functions["system_resource"])
    add_log_service(app)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config["cert"], config["key"])
    return [make_server(address, int(port), app, threaded=True, ssl_context=context)
            for address, port in listeners]


def main(config_path: str) -> int:
    here = Path(config_path).parent
    try:
        servers = serve(json.loads(Path(config_path).read_text()))
    except (OSError, ValueError, KeyError) as exc:
        (here / "failed").write_text(f"{type(exc).__name__}: {exc}\n")
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    (here / "ready").write_text("ok\n")
    while not stop.wait(0.2):
        pass
    return 0  # the servers' threads are daemons: they end with the process


if __name__ == "__main__":
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    sys.exit(main(sys.argv[1]))
