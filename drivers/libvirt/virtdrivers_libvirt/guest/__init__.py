"""A tiny real Linux guest built from Debian packages, for workload tests on real QEMU.

``ensure_tiny_guest()`` gives a cached qcow2 base image (build once, reuse); ``make_seed()``
writes a NoCloud seed; ``userdata_marker()`` is the console line the guest prints for the user
data it found. See :mod:`.build` for the recipe and :mod:`.seed` for the console conventions.
"""

from virtdrivers_libvirt.guest.build import (
    GuestBuildError,
    GuestImage,
    default_cache_dir,
    ensure_tiny_guest,
    file_sha256,
    prune,
)
from virtdrivers_libvirt.guest.seed import USERDATA_MARKER, VD_MARKER_PREFIX, SeedError, make_seed, userdata_marker

__all__ = [
    "USERDATA_MARKER",
    "VD_MARKER_PREFIX",
    "GuestBuildError",
    "GuestImage",
    "SeedError",
    "default_cache_dir",
    "ensure_tiny_guest",
    "file_sha256",
    "make_seed",
    "prune",
    "userdata_marker",
]
