"""libvirt backend for virtdrivers."""
