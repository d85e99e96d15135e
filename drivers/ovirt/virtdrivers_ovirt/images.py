"""Templates as images: the engine's own image store, with its two ways of making a VM's disks.

A template with at least one disk is an image; ``Blank`` (no disk, no operating system) is not.
``clone=false`` (the engine's default) makes each VM disk a thin copy-on-write child of the
template's disk, so the template is never written and cannot be removed while such a VM
exists; ``clone=true`` makes independent copies. The VM keeps its ``template`` link either
way, which is the lineage :class:`InstanceInfo` reports as ``image``.

Pure functions over SDK objects (attribute access); builders take ``ovirtsdk4.types`` as an
argument, so this module imports no SDK.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from virtdrivers.errors import InvalidSpec
from virtdrivers.objects import Image, ImageMode
from virtdrivers_ovirt import mapping

#: The engine's empty template: every VM made without one names it.
BLANK_TEMPLATE_ID = "00000000-0000-0000-0000-000000000000"
#: How a template list is read: its disks inline, one round trip for the whole store.
FOLLOW = "disk_attachments.disk"


def template_disks(tpl: Any) -> list[Any]:
    """A template's disks (read with :data:`FOLLOW`), the bootable one first, as a VM gets them."""
    atts = [a for a in getattr(tpl, "disk_attachments", None) or () if getattr(a, "disk", None) is not None]
    return [a.disk for a in sorted(atts, key=lambda a: not a.bootable)]


def is_image(tpl: Any) -> bool:
    return tpl.id != BLANK_TEMPLATE_ID and bool(template_disks(tpl))


def _os(tpl: Any) -> tuple[str | None, str | None]:
    """(os_type, os_distro) from the template's ``os.type`` (``debian_12``, ``windows_2019x64``, ``other``)."""
    os_ = getattr(tpl, "os", None)
    name = str(getattr(os_, "type", None) or "")
    if not name or name == "other":
        return None, None
    return ("windows" if name.startswith("windows") else "linux"), name


def image(tpl: Any) -> Image:
    """Our view of a template that :func:`is_image`."""
    root = template_disks(tpl)[0]
    size = int(root.provisioned_size or 0)
    os_type, os_distro = _os(tpl)
    version = getattr(tpl, "version", None)
    metadata = {"description": tpl.description or ""}
    if version is not None and version.version_number is not None:
        metadata["template_version"] = str(version.version_number)
    return Image(
        id=tpl.id,
        name=tpl.name,
        disk_format=mapping.disk_format(root.format),
        virtual_size_bytes=size,
        min_disk_gib=math.ceil(size / mapping.GIB),
        os_type=os_type,
        os_distro=os_distro,
        metadata=metadata,
    )


def images(templates: Sequence[Any]) -> list[Image]:
    return [image(t) for t in templates if is_image(t)]


def resolve(templates: Sequence[Any], ref: str) -> Any:
    """The template ``ref`` (an id or a name) names; InvalidSpec on ``image`` before anything is made.

    Names are unique per template version on the engine; a name that several templates (or
    versions) share is refused rather than guessed, the id is the unambiguous way to ask.
    """
    usable = [t for t in templates if is_image(t)]
    by_id = [t for t in usable if t.id == ref]
    if by_id:
        return by_id[0]
    named = [t for t in usable if t.name == ref]
    if len(named) > 1:
        raise InvalidSpec(f"{len(named)} templates are named {ref!r}: give the template's id", field="image")
    if not named:
        raise InvalidSpec(f"no image (template with a disk) {ref!r}", field="image")
    return named[0]


def clone_for(mode: ImageMode | None) -> bool:
    """``clone`` for the VM add: copy-on-write children unless a full copy is asked for."""
    return mode == ImageMode.COPY


def template_disk_attachments(types: Any, tpl: Any, description: str | None) -> list[Any]:
    """Per-disk choices for the VM add: each template disk's copy carries ``description`` (the
    create token), so the disk the engine makes in that very request is never without it."""
    return [types.DiskAttachment(disk=types.Disk(id=disk.id, description=description)) for disk in template_disks(tpl)]


def instance_image(vm: Any) -> str | None:
    """The template a VM was made from, or None for ``Blank``."""
    tpl = getattr(vm, "template", None)
    tpl_id = getattr(tpl, "id", None)
    return None if tpl_id in (None, BLANK_TEMPLATE_ID) else str(tpl_id)
