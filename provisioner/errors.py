"""The one error family users see. ``main()`` prints ``Error: <msg>`` and exits."""

from __future__ import annotations

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NODES_FAILED = 3


class GpuctlError(Exception):
    """A problem the user can act on; its message is one line."""

    exit_code = EXIT_ERROR


class InputError(GpuctlError):
    """Bad input from the user: a hostname, a file, an option value."""


class NotFoundError(GpuctlError):
    """A named node, run or lab does not exist."""


class TransitionError(GpuctlError):
    """An illegal lifecycle transition was asked for."""


class LabError(GpuctlError):
    """The simulated lab cannot do what was asked on this machine."""


class BmcError(GpuctlError):
    """A node's BMC could not do what was asked: it does not answer, refuses the
    credentials, fails TLS verification, or its credential reference cannot be read."""


class NodesFailedError(GpuctlError):
    """The command ran, but at least one node could not be handled."""

    exit_code = EXIT_NODES_FAILED
