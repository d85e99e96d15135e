"""Who the simulator is and what it imitates: plain constants, so naming it costs no import.

``virtdrivers drivers`` lists every plugin's embedded endpoints, and an endpoint names
its backend; reading these must not load the HTTPS server, the engine model or
``cryptography``.
"""

from __future__ import annotations

ENGINE_VERSION = (4, 5, 6, 0)
#: What the simulator claims over the API (``product_info``), as an engine of that version would.
ENGINE_NAME = "oVirt Engine"
ENGINE_FULL_VERSION = f"{ENGINE_VERSION[0]}.{ENGINE_VERSION[1]}.{ENGINE_VERSION[2]}-1.el8"
#: The simulator's own name and version: what a parity column earned against it names as its backend.
SIMULATOR_NAME = "virtdrivers oVirt REST simulator"
SIMULATOR_VERSION = "0.3"
