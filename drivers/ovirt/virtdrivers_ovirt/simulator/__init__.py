"""An oVirt engine simulator that the real ``ovirtsdk4`` talks to over HTTPS.

Use it in-process (``with Simulator(pets=3) as sim: sim.settings()``) or as a
program: ``python -m virtdrivers_ovirt.simulator --port 0 --pets 3``, which prints
one JSON line with the URL, credentials and CA file once it listens.

The names below load on first use: importing :mod:`virtdrivers_ovirt.simulator.identity`
(what listing endpoints needs) must not start loading the HTTPS server and the model.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from virtdrivers_ovirt.simulator.model import Engine, EngineFault
    from virtdrivers_ovirt.simulator.server import Simulator

__all__ = ["Engine", "EngineFault", "Simulator"]

_HOMES = {"Engine": "model", "EngineFault": "model", "Simulator": "server"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
