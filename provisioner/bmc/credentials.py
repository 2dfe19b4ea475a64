"""The BMC's password, read where its reference points, at the moment it is needed.

A node stores ``env:VARIABLE`` or ``file:PATH``, never the secret (``inventory.validate.
check_secret_ref``). The file must be readable by its owner only, as ssh insists for a
private key: a password others can read is refused, with a one-line error.
"""

from __future__ import annotations

import os
import stat

from provisioner.errors import BmcError

MAX_SECRET_BYTES = 4096


def read_password(ref: str, *, node: str) -> str:
    """The secret ``ref`` (``env:VARIABLE`` or ``file:PATH``) names. A file's last line
    break is dropped (``echo secret > file``).

    Raises:
        BmcError: the variable is unset or empty; the file is missing, not a regular
            file, readable by others than its owner (mode not 0600/0400), owned by
            another user, empty, too long or not UTF-8. The secret is never in the
            message.
    """
    kind, _, rest = ref.partition(":")
    if kind == "env":
        value = os.environ.get(rest, "")
        if not value:
            raise BmcError(f"{node}: the BMC password variable {rest} is not set (or empty) "
                           "in gpuctl's environment")
        return value
    if kind != "file":
        raise BmcError(f"{node}: the BMC password reference is neither env:VARIABLE nor "
                       "file:PATH")
    try:
        fd = os.open(rest, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        raise BmcError(f"{node}: cannot read the BMC password file {rest}: "
                       f"{exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        mode = stat.S_IMODE(info.st_mode)
        if not stat.S_ISREG(info.st_mode):
            raise BmcError(f"{node}: the BMC password file {rest} is not a regular file")
        if mode & 0o077:
            raise BmcError(f"{node}: the BMC password file {rest} has mode {mode:04o}; it "
                           f"must be readable by its owner only (chmod 600 {rest})")
        if info.st_uid not in (os.geteuid(), 0):
            raise BmcError(f"{node}: the BMC password file {rest} belongs to uid "
                           f"{info.st_uid}, not to the user gpuctl runs as")
        data = os.read(fd, MAX_SECRET_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET_BYTES:
        raise BmcError(f"{node}: the BMC password file {rest} is longer than "
                       f"{MAX_SECRET_BYTES} bytes: not a password file?")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BmcError(f"{node}: the BMC password file {rest} is not UTF-8 text") from None
    text = text[:-1] if text.endswith("\n") else text
    text = text[:-1] if text.endswith("\r") else text
    if not text:
        raise BmcError(f"{node}: the BMC password file {rest} is empty")
    return text
