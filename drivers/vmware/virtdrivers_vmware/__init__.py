"""VMware vSphere backend for virtdrivers: vCenter clusters as nodes, on pyVmomi.

Importing this package (or its driver module) does not import pyVmomi; a
session does, when the driver connects.
"""

from virtdrivers_vmware.driver import VSphereDriver
from virtdrivers_vmware.settings import VSphereSettings

__all__ = ["VSphereDriver", "VSphereSettings"]
