"""One error hierarchy for every backend.

Drivers translate vendor exceptions at their boundary and chain the original
(``raise InstanceNotFound(...) from exc``) so the vendor detail is kept for
debugging while callers only ever catch these types. Messages must never carry
credentials: drivers pass text through :func:`redact` when it may contain them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = [
    "AuthenticationFailed",
    "BackendUnavailable",
    "Conflict",
    "ContractMismatch",
    "DriverError",
    "DriverNotFound",
    "InstanceNotFound",
    "InvalidSpec",
    "InvalidState",
    "NotFound",
    "NotSupported",
    "PluginLoadError",
    "Timeout",
    "redact",
]


class DriverError(Exception):
    """Base of every error virtdrivers raises."""

    #: Short, stable machine name of the error kind (used in CLI output and the matrix).
    code = "driver_error"


class NotSupported(DriverError):
    """The driver does not declare the capability an operation needs."""

    code = "not_supported"

    def __init__(self, message: str, *, capability: str | None = None) -> None:
        super().__init__(message)
        self.capability = capability


class InvalidSpec(DriverError, ValueError):
    """Input failed validation before anything reached a hypervisor."""

    code = "invalid_spec"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class NotFound(DriverError, LookupError):
    """A named thing does not exist on the backend."""

    code = "not_found"


class InstanceNotFound(NotFound):
    code = "instance_not_found"

    def __init__(self, ref: str, message: str | None = None) -> None:
        super().__init__(message or f"instance {ref!r} not found")
        self.ref = ref


class InvalidState(DriverError):
    """The instance is in a state that does not allow the operation."""

    code = "invalid_state"


class Conflict(DriverError):
    """The operation collides with existing state (a duplicate name, a busy resource)."""

    code = "conflict"


class BackendUnavailable(DriverError, ConnectionError):
    """The backend cannot be reached, or the connection broke during a call."""

    code = "backend_unavailable"


class AuthenticationFailed(DriverError):
    """The backend refused the credentials."""

    code = "authentication_failed"


class Timeout(DriverError, TimeoutError):
    """A long-running operation did not finish in time."""

    code = "timeout"


class DriverNotFound(DriverError, LookupError):
    """No installed plugin has this entry-point name."""

    code = "driver_not_found"


class PluginLoadError(DriverError):
    """A plugin is installed but could not be imported or is malformed."""

    code = "plugin_load_error"


class ContractMismatch(PluginLoadError):
    """A plugin was written for a contract major version this core cannot serve."""

    code = "contract_mismatch"


_SECRET_PATTERNS = (
    # key=value / key: value forms, in URLs, query strings, JSON and form bodies
    re.compile(
        r"(?i)(\"?(?:password|passwd|pwd|secret|token|access_token|api_key|apikey)\"?\s*[=:]\s*\"?)([^\"&\s,;}]+)"
    ),
    # userinfo in URLs: scheme://user:pass@host
    re.compile(r"(?i)([a-z][a-z0-9+.-]*://[^/\s:@]+:)([^@/\s]+)(@)"),
    # HTTP Authorization headers
    re.compile(r"(?i)(authorization\"?\s*[=:]\s*\"?(?:basic|bearer|negotiate|ntlm)\s+)([A-Za-z0-9+/=._-]+)"),
)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Remove credentials from ``text``: the given literal secrets and common secret shapes."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + "***" + (m.group(3) if m.lastindex == 3 else ""), text)
    return text
