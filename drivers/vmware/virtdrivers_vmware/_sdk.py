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


def smart_connect(**kwargs: Any) -> Any:
    module: Any = importlib.import_module("pyVim.connect")
    return module.SmartConnect(**kwargs)
