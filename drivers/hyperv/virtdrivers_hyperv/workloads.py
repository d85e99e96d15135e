"""Arguments of the workload scripts: what the driver decides before a script runs.

Images are VHDX files in ``image_path``; an instance's root disk is a differencing child of
one (``image_mode`` cow, the default) or a copy (copy), made in the create's token folder so
a failed or interrupted create leaves nothing that reap cannot find. NICs go on virtual
switches, each with a static MAC chosen here when the caller names none: Hyper-V gives a
dynamic MAC only when a VM first starts (it reads all zeros before), and an instance should
say its NICs' MACs from the moment it exists. User data goes to cloud-init (or
cloudbase-init) as a NoCloud seed: a FAT volume labelled ``cidata`` in a small VHDX, built on
the host by the prepare script, with ``user-data``, ``meta-data`` and ``network-config``.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

from virtdrivers.errors import InvalidSpec
from virtdrivers.objects import ImageMode, InstanceSpec, NicSpec
from virtdrivers.objects.workloads import UserData
from virtdrivers_hyperv import mapping

__all__ = ["check_nic", "new_mac", "prepare_args", "seed_files"]


def new_mac() -> str:
    """A random unicast, locally administered MAC (``02:...`` style), never in Hyper-V's 00:15:5D pool."""
    first = (secrets.randbits(8) & 0b11111100) | 0b10
    return ":".join(f"{b:02x}" for b in [first, *secrets.token_bytes(5)])


def check_nic(nic: NicSpec, field: str) -> None:
    """Hyper-V's generation 2 VMs have one NIC model, the synthetic adapter; another is refused up front."""
    if nic.model is not None and nic.model.lower() not in (mapping.NIC_MODEL, "netvsc"):
        raise InvalidSpec(
            f"Hyper-V generation 2 VMs have only the {mapping.NIC_MODEL} network adapter, not {nic.model!r}",
            field=f"{field}.model",
        )


def _hostname(spec: InstanceSpec, user_data: UserData) -> str | None:
    if user_data.hostname:
        return user_data.hostname
    try:
        return UserData(hostname=spec.name).hostname
    except ValueError:
        return None  # the instance name is no host name label: the guest keeps its own


def seed_files(spec: InstanceSpec, instance_id: str) -> list[dict[str, str]]:
    """The NoCloud seed's files, base64 so their bytes reach the volume exactly (no code page, no BOM)."""
    user_data = spec.user_data
    if user_data is None:
        return []
    meta = f"instance-id: {instance_id}\n"
    hostname = _hostname(spec, user_data)
    if hostname:
        meta += f"local-hostname: {hostname}\n"
    files = {"meta-data": meta, "user-data": user_data.user_data or ""}
    if user_data.network_config is not None:
        files["network-config"] = user_data.network_config
    return [{"n": name, "b": base64.b64encode(text.encode("utf-8")).decode("ascii")} for name, text in files.items()]


def prepare_args(spec: InstanceSpec, library: str, directory: str, token: str) -> dict[str, Any] | None:
    """The prepare script's arguments, or None when the create needs no image, NIC or seed."""
    if spec.image is None and not spec.nics and spec.user_data is None:
        return None
    for i, nic in enumerate(spec.nics):
        check_nic(nic, f"nics.{i}")
    return {
        "lib": library,
        "image": spec.image,
        "copy": spec.image_mode == ImageMode.COPY,
        "nets": [n.network for n in spec.nics],
        "dir": directory,
        "seed": seed_files(spec, token),
    }
