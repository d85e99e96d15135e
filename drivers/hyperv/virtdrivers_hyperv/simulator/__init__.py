"""A WS-Management/Hyper-V simulator that pywinrm talks to over real HTTP(S) on 127.0.0.1.

Run it standalone::

    python -m virtdrivers_hyperv.simulator --host 127.0.0.1 --port 0 --user admin --password secret \
        [--https] [--inventory inventory.json]

It prints one JSON line (host, port, https, ca_file) once it listens, and stops on
SIGTERM, SIGINT or when its stdin closes. See the package README for what it models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from virtdrivers_hyperv.simulator.app import Simulator

__all__ = ["Simulator"]


def __getattr__(name: str) -> Any:
    """``Simulator`` on first use: importing ``simulator.endpoint`` (as listing drivers does) stays light."""
    if name == "Simulator":
        from virtdrivers_hyperv.simulator.app import Simulator

        return Simulator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
