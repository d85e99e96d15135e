"""The one place pyVmomi is imported, lazily and untyped.

pyVmomi's partial type stubs make ``mypy --strict`` reject most SOAP data-object
constructors, and importing it costs time; callers get the modules as ``Any``
when (and only when) they talk to a server.
"""

from __future__ import annotations

import importlib
from typing import Any


def sdk() -> tuple[Any, Any]:
    """``(vim, vmodl)`` from pyVmomi."""
    module: Any = importlib.import_module("pyVmomi")
    return module.vim, module.vmodl


def smart_connect(*, host: str, port: int, sslContext: Any, httpConnectionTimeout: float, **kwargs: Any) -> Any:
    """pyVim's SmartConnect, with its API version discovery bounded by ``httpConnectionTimeout``.

    SmartConnect first GETs ``/sdk/vimServiceVersions.xml`` over a connection without any
    timeout (pyVmomi 9.1): a server that accepts connections and never answers (hung,
    stopped) holds a login, and so every call that logs in again, forever. The discovery is
    done here with the timeout, then pyVim's ``Connect`` logs in with the version found.
    """
    import http.client
    from xml.etree.ElementTree import ElementTree, ParseError

    module: Any = importlib.import_module("pyVim.connect")
    conn = http.client.HTTPSConnection(host, port=port, context=sslContext, timeout=httpConnectionTimeout)
    try:
        conn.request("GET", "/sdk/vimServiceVersions.xml")
        response = conn.getresponse()
        if response.status != 200:
            raise OSError(f"{host}:{port} is not a vSphere API endpoint (HTTP {response.status})")
        tree = ElementTree()
        try:
            tree.parse(response)
        except ParseError as exc:
            raise OSError(f"{host}:{port} is not a vSphere API endpoint (unreadable version list)") from exc
    finally:
        conn.close()
    supported = getattr(module, "__VersionIsSupported")  # a module-level helper: no name mangling
    version = next((v for v in module.GetServiceVersions("vim25") if supported(v, tree)), None)
    if version is None:
        raise OSError(f"{host}:{port} supports no vSphere API version this pyVmomi speaks")
    return module.Connect(
        host=host,
        port=port,
        version=version,
        sslContext=sslContext,
        httpConnectionTimeout=httpConnectionTimeout,
        **kwargs,
    )
