"""Validation of every value that may later reach SSH or a shell.

Hostnames, addresses and users end up in paramiko calls, Ansible inventories and
generated files; a value is accepted only if it has the exact shape of what it claims
to be, so nothing like ``-oProxyCommand=...`` or ``a;rm -rf /`` ever gets through.
"""

from __future__ import annotations

import ipaddress
import os
import re
from urllib.parse import urlsplit

from provisioner.errors import InputError

# Every pattern is applied with fullmatch: "$" alone also matches before a final
# newline, and "gpu01\n" would then pass as a hostname and split generated files.
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_LABEL_KEY = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_./-]{0,62})")
_LABEL_VALUE = re.compile(r"[A-Za-z0-9_.:/-]{0,63}")
_SKU = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
# A BMC account: no ':' (HTTP basic auth's separator), no space or control character.
_BMC_USER = re.compile(r"[A-Za-z0-9_.@+-]{1,64}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_SYSTEM_PATH = re.compile(r"/redfish/v1/Systems/[A-Za-z0-9._~-]{1,128}")


def _shown(value: str) -> str:
    """A value as it may safely appear in a one-line error message."""
    text = value if len(value) <= 40 else value[:37] + "..."
    return repr(text)


def check_hostname(name: str, what: str = "hostname") -> str:
    """Return ``name`` if it is an RFC 1123 hostname.

    Raises:
        InputError: it is empty, too long, or holds anything but letters, digits,
            dots and inner hyphens.
    """
    if not name:
        raise InputError(f"{what} is empty")
    if len(name) > 253:
        raise InputError(f"{what} {_shown(name)} is {len(name)} characters long (at most 253)")
    labels = name.rstrip(".").split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise InputError(
            f"{what} {_shown(name)} is not a valid hostname "
            "(letters, digits, '-' inside labels and '.' between them only)"
        )
    return name


def check_address(address: str) -> str:
    """Return ``address`` if it is an IPv4/IPv6 address or a valid hostname.

    Raises:
        InputError: anything else.
    """
    if address != address.strip():
        raise InputError(f"address {_shown(address)} has surrounding white space")
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return check_hostname(address, "address")


def check_stored_node(name: str, address: str) -> None:
    """Generated files are line-oriented: a name stored by an older gpuctl (or written
    into the database by hand) with a newline or a space would split a NodeName line or
    add a host to an inventory. Writers check what they read too, naming the node.

    Raises:
        InputError: the stored name or address is not a valid hostname/address.
    """
    try:
        check_hostname(name, "node name")
        check_address(address)
    except InputError as exc:
        raise InputError(f"stored node {_shown(name)}: {exc}; fix it with `gpuctl nodes "
                         "remove` and `nodes add`") from None


def check_port(port: int | str) -> int:
    try:
        value = int(port)
    except (TypeError, ValueError):
        raise InputError(f"port {_shown(str(port))} is not a number") from None
    if not 1 <= value <= 65535:
        raise InputError(f"port {value} is out of range 1-65535")
    return value


def check_user(user: str) -> str:
    if not _USER.fullmatch(user):
        raise InputError(f"user {_shown(user)} is not a valid login name")
    return user


def check_key_path(path: str) -> str:
    if not path or any(ord(c) < 32 for c in path) or len(path) > 4096:
        raise InputError(f"key path {_shown(path)} is not a usable file path")
    return path


def check_sku(sku: str) -> str:
    if not _SKU.fullmatch(sku):
        raise InputError(f"SKU {_shown(sku)} must be lower-case letters, digits, '.', '_', '-'")
    return sku


_VAR_NAME = re.compile(r"[a-z_][a-z0-9_]{0,63}")
# Host variables that hold secrets are never stored (use the environment or ansible-vault).
SECRET_VARS = frozenset({"ansible_password", "ansible_ssh_pass", "ansible_become_password",
                         "ansible_become_pass", "ansible_sudo_pass", "ansible_ssh_password"})


def check_ansible_var(name: str, value: str) -> None:
    """Raises InputError for a bad variable name, a secret, or a value with control
    characters or Jinja2 markup (which Ansible would evaluate)."""
    if not _VAR_NAME.fullmatch(name):
        raise InputError(f"host variable name {_shown(name)} is not valid")
    if name in SECRET_VARS:
        raise InputError(f"host variable {name} is a secret and is never stored")
    if any(ord(c) < 32 for c in value) or "{{" in value or "{%" in value or len(value) > 1024:
        raise InputError(f"host variable {name} has an unsafe value {_shown(value)}")


def parse_label(text: str) -> tuple[str, str]:
    """Parse ``key=value`` (Kubernetes-style key and value).

    Raises:
        InputError: no ``=``, or the key or value has characters labels may not hold.
    """
    if "=" not in text:
        raise InputError(f"label {_shown(text)} must be key=value")
    key, value = text.split("=", 1)
    if not _LABEL_KEY.fullmatch(key):
        raise InputError(f"label key {_shown(key)} is not valid")
    if not _LABEL_VALUE.fullmatch(value):
        raise InputError(f"label value {_shown(value)} is not valid")
    return key, value


def check_bmc_url(url: str) -> str:
    """Return a BMC's Redfish address, normalised: ``https://HOST[:PORT]``, optionally
    with the path of one system (``/redfish/v1/Systems/ID``) for a BMC that manages
    several; without it the BMC's only system is used.

    Raises:
        InputError: not https (the credentials would cross the network in clear), a
            user or password inside the URL (never echoed), a bad host or port, a query,
            or a path that is not one system's.
    """
    if not url or any(ord(c) <= 32 for c in url) or len(url) > 2048:
        raise InputError("BMC URL is empty or holds spaces or control characters")
    parts = urlsplit(url)
    if "@" in parts.netloc:
        # Not shown: what precedes the '@' may be a password.
        raise InputError("BMC URL must not hold a user or password (user@host); use "
                         "--bmc-user and --bmc-password-from")
    if parts.scheme == "http":
        raise InputError(f"BMC URL {_shown(url)} is plain http: the BMC's credentials would "
                         "cross the network in clear; use https:// (--bmc-ca FILE for a BMC "
                         "whose certificate your own CA signed)")
    if parts.scheme != "https" or not parts.hostname:
        raise InputError(f"BMC URL {_shown(url)} must be https://HOST[:PORT]")
    check_address(parts.hostname)
    try:
        parts.port  # noqa: B018  (raises for a port that is not a number or out of range)
    except ValueError:
        raise InputError(f"BMC URL {_shown(url)} has a bad port") from None
    if parts.query or parts.fragment:
        raise InputError(f"BMC URL {_shown(url)} must not have a query or fragment")
    path = parts.path.rstrip("/")
    if path not in ("", "/redfish/v1") and not _SYSTEM_PATH.fullmatch(path):
        raise InputError(f"BMC URL {_shown(url)}: the path may only name one system "
                         "(/redfish/v1/Systems/ID)")
    return f"https://{parts.netloc}{'' if path == '/redfish/v1' else path}"


def check_bmc_user(user: str) -> str:
    if not _BMC_USER.fullmatch(user):
        raise InputError(f"BMC user {_shown(user)} must be 1-64 letters, digits or . _ @ + -")
    return user


def check_secret_ref(ref: str) -> str:
    """Return a credential reference, normalised: ``env:VARIABLE`` or ``file:/abs/path``
    (a relative path is made absolute). The secret itself is never stored; a value
    that is neither is not echoed, in case it is the password itself.

    Raises:
        InputError: anything else.
    """
    kind, sep, rest = ref.partition(":")
    if sep and kind == "env" and _ENV_NAME.fullmatch(rest):
        return ref
    if sep and kind == "file" and rest and len(rest) <= 4096 and \
            not any(ord(c) < 32 for c in rest):
        return f"file:{os.path.abspath(os.path.expanduser(rest))}"
    raise InputError("the BMC password is given by reference: env:VARIABLE or "
                     "file:/path/to/a/0600/file (the value given is neither, and is not "
                     "shown or stored)")


def check_ca_path(path: str) -> str:
    """Return a CA bundle path, made absolute (gpuctl may later run elsewhere)."""
    if not path or any(ord(c) < 32 for c in path) or len(path) > 4096:
        raise InputError(f"CA bundle path {_shown(path)} is not a usable file path")
    return os.path.abspath(os.path.expanduser(path))
