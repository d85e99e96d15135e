"""An oVirt engine simulator that the real ``ovirtsdk4`` talks to over HTTPS.

Use it in-process (``with Simulator(pets=3) as sim: sim.settings()``) or as a
program: ``python -m virtdrivers_ovirt.simulator --port 0 --pets 3``, which prints
one JSON line with the URL, credentials and CA file once it listens.
"""

from virtdrivers_ovirt.simulator.model import Engine, EngineFault
from virtdrivers_ovirt.simulator.server import Simulator

__all__ = ["Engine", "EngineFault", "Simulator"]
