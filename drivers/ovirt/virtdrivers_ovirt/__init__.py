"""virtdrivers backend for oVirt / RHV, with an oVirt REST API simulator (:mod:`virtdrivers_ovirt.simulator`)."""

__version__ = "0.1.0"
