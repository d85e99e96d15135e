"""The vSphere driver's settings, apart from the session that uses them.

``virtdrivers drivers`` imports every plugin's driver module to read its class
data, and the driver names this model as its ``settings_model``: so it lives
here, with nothing heavier than pydantic, while :mod:`virtdrivers_vmware.session`
(TLS, HTTP, pyVmomi) is imported only when a driver connects.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from virtdrivers.driver import DriverSettings

__all__ = ["VSphereSettings"]


class VSphereSettings(DriverSettings):
    """How to reach a vCenter (or vcsim) and which part of it this driver serves."""

    host: str = Field(min_length=1, max_length=255)
    port: int = Field(default=443, ge=1, le=65535)
    user: str = Field(min_length=1, max_length=255)
    password: SecretStr
    cluster: str | None = Field(default=None, max_length=80)
    """Serve only this cluster (one node); None serves every cluster of the vCenter."""
    datastore: str | None = Field(default=None, max_length=80)
    """Datastore for new VMs; None picks the cluster's datastore with the most free space."""
    ca_file: str | None = None
    """PEM file of the CA (or the self-signed certificate) to trust, hostname checked."""
    thumbprint: str | None = None
    """SHA-256 fingerprint of the server certificate to pin (hex, colons optional), hostname not checked."""
    insecure: bool = False
    """Skip certificate verification entirely. Explicit opt-in, logged as a warning on every connect."""
    task_timeout: float = Field(default=600.0, gt=0)
    """Seconds to wait for one vSphere task."""
    http_timeout: float = Field(default=120.0, gt=0)
    """Seconds any one request may wait on the socket (connect, send, each read): a server that
    stops answering ends the call as BackendUnavailable after this long, never later."""
    page_size: int = Field(default=1000, ge=1, le=100_000)
    """Objects per RetrievePropertiesEx page."""

    @field_validator("thumbprint")
    @classmethod
    def _normalize_thumbprint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        hexed = value.replace(":", "").strip().lower()
        if len(hexed) != 64 or any(c not in "0123456789abcdef" for c in hexed):
            raise ValueError("must be a SHA-256 fingerprint: 64 hex digits, colons optional")
        return hexed
