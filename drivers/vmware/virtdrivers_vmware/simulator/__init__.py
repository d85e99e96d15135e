"""govmomi's vcsim, started and stopped by us. See :mod:`virtdrivers_vmware.simulator.vcsim`."""

from virtdrivers_vmware.simulator.vcsim import Vcsim, launcher_path, vcsim_endpoint

__all__ = ["Vcsim", "launcher_path", "vcsim_endpoint"]
