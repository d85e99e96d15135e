"""Versioned objects: validation, schema fingerprints, rendering for older peers."""

from __future__ import annotations

import importlib
import json
import pkgutil
import string
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

import virtdrivers
from virtdrivers import DiskFormat, InstanceInfo, InstanceSpec, InvalidSpec, PowerState
from virtdrivers.objects import DiskSpec, IncompatibleObjectVersion, VersionedObject, object_registry
from virtdrivers.objects.compute import MAX_MEMORY_MB, MAX_NAME_LENGTH, MAX_VCPUS, MIN_MEMORY_MB
from virtdrivers.version import ContractVersion

FINGERPRINTS = Path(__file__).with_name("object_fingerprints.json")


def test_every_object_schema_matches_its_recorded_fingerprint() -> None:
    """A schema change without a version bump fails here, naming the object to bump."""
    for module in pkgutil.walk_packages(virtdrivers.__path__, "virtdrivers."):
        importlib.import_module(module.name)  # every object class registers itself on import
    recorded: dict[str, str] = json.loads(FINGERPRINTS.read_text())
    current = {
        name: cls.fingerprint() for name, cls in object_registry.items() if cls.__module__.startswith("virtdrivers.")
    }
    problems = []
    for name, fingerprint in sorted(current.items()):
        old = recorded.get(name)
        if old is None:
            problems.append(f"{name} is new: record {fingerprint!r} in {FINGERPRINTS.name}")
        elif old != fingerprint:
            old_version, new_version = old.split("-")[0], fingerprint.split("-")[0]
            if old_version == new_version:
                problems.append(
                    f"{name}'s schema changed but {name}.VERSION is still {new_version}: bump {name}.VERSION "
                    f"(minor for an added defaulted field, major otherwise) and record the new fingerprint"
                )
            else:
                problems.append(f"{name} is now {new_version}: record {fingerprint!r} in {FINGERPRINTS.name}")
    for name in sorted(set(recorded) - set(current)):
        problems.append(f"{name} was removed: that is a major change for its peers")
    assert not problems, "\n".join(problems)


def test_fingerprint_ignores_prose_but_not_structure() -> None:
    class Probe(VersionedObject):
        VERSION = "1.0"
        a: int

    class ProbeReworded(VersionedObject):
        """Different words."""

        VERSION = "1.0"
        a: int
        """The a."""

    class ProbeGrown(VersionedObject):
        VERSION = "1.0"
        a: int
        b: int = 0

    fp = Probe.fingerprint().split("-")[1]
    assert ProbeReworded.fingerprint().split("-")[1] == fp
    assert ProbeGrown.fingerprint().split("-")[1] != fp
    for cls in (Probe, ProbeReworded, ProbeGrown):
        object_registry.pop(cls.__name__)


def _spec(**kw: Any) -> InstanceSpec:
    fields: dict[str, Any] = {"name": "web-1", "vcpus": 2, "memory_mb": 1024}
    fields.update(kw)
    return InstanceSpec(**fields)


def test_backport_drops_newer_fields_and_reads_back_with_defaults() -> None:
    spec = _spec(node="node-7", disks=[{"size_gib": 4, "format": "qcow2"}])
    old = spec.to_primitive("1.0")
    assert old["vd_object.version"] == "1.0"
    assert "node" not in old["vd_object.data"]
    assert old["vd_object.data"]["disks"][0]["vd_object.name"] == "DiskSpec"
    back = InstanceSpec.from_primitive(old)
    assert back.node is None
    assert back.disks == spec.disks
    assert InstanceSpec.from_primitive(spec.to_primitive()) == spec


def test_backport_refuses_newer_or_other_major_targets() -> None:
    with pytest.raises(IncompatibleObjectVersion):
        _spec().to_primitive("1.9")
    with pytest.raises(IncompatibleObjectVersion):
        _spec().to_primitive("2.0")
    newer = _spec().to_primitive()
    newer["vd_object.version"] = "1.7"
    with pytest.raises(IncompatibleObjectVersion, match="clamp"):
        InstanceSpec.from_primitive(newer)


def test_make_compatible_hook_translates_fields() -> None:
    class Thing(VersionedObject):
        VERSION = "1.1"
        FIELD_SINCE: ClassVar[dict[str, str]] = {"memory_mb": "1.1"}
        memory_gb: int = 0
        memory_mb: int = 0

        def make_compatible(self, data: dict[str, Any], target: ContractVersion) -> None:
            if target < ContractVersion(1, 1):
                data["memory_gb"] = self.memory_mb // 1024

    try:
        prim = Thing(memory_mb=4096).to_primitive("1.0")
        assert prim["vd_object.data"] == {"memory_gb": 4}
    finally:
        object_registry.pop("Thing")


def test_instance_info_backport_drops_managed_and_host() -> None:
    info = InstanceInfo(
        id="i", name="n", power_state=PowerState.RUNNING, vcpus=1, memory_mb=64, host="h", managed=False
    )
    data = info.to_primitive("1.0")["vd_object.data"]
    assert "managed" not in data
    assert "host" not in data
    assert InstanceInfo.from_primitive(info.to_primitive("1.0")).managed is True


def test_primitive_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(InvalidSpec):
        InstanceSpec.from_primitive(DiskSpec(size_gib=1).to_primitive())
    with pytest.raises(InvalidSpec):
        InstanceSpec.from_primitive({"name": "x"})


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"vcpus": 0}, "vcpus"),
        ({"vcpus": -1}, "vcpus"),
        ({"vcpus": MAX_VCPUS + 1}, "vcpus"),
        ({"memory_mb": 0}, "memory_mb"),
        ({"memory_mb": MAX_MEMORY_MB + 1}, "memory_mb"),
        ({"name": ""}, "name"),
        ({"name": "a" * (MAX_NAME_LENGTH + 1)}, "name"),
        ({"name": "a\nb"}, "name"),
        ({"name": " padded"}, "name"),
        ({"name": "a/b"}, "name"),
        ({"disks": [{"size_gib": 1, "format": "vdi"}]}, "disks.0.format"),
        ({"disks": [{"size_gib": -1}]}, "disks.0.size_gib"),
        ({"metadata": {"k\x07": "v"}}, "metadata"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_invalid_specs_name_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        _spec(**fields)
    assert err.value.field is not None
    assert err.value.field.startswith(f"InstanceSpec.{field}")


_name_chars = st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="/\\\x85")
valid_names = st.text(_name_chars, min_size=1, max_size=MAX_NAME_LENGTH).filter(lambda s: s == s.strip())
valid_disks = st.lists(
    st.builds(
        DiskSpec,
        size_gib=st.integers(1, 65536),
        format=st.none() | st.sampled_from(DiskFormat),
        thin=st.booleans(),
    ),
    max_size=4,
)
valid_specs = st.builds(
    InstanceSpec,
    name=valid_names,
    vcpus=st.integers(1, MAX_VCPUS),
    memory_mb=st.integers(MIN_MEMORY_MB, MAX_MEMORY_MB),
    disks=valid_disks.map(tuple),
    metadata=st.dictionaries(st.text(string.ascii_letters, min_size=1, max_size=8), st.text(max_size=20), max_size=3),
    node=st.none() | valid_names,
)


@given(valid_specs)
def test_any_valid_spec_survives_a_round_trip_and_a_backport(spec: InstanceSpec) -> None:
    assert InstanceSpec.from_primitive(json.loads(json.dumps(spec.to_primitive()))) == spec
    old = InstanceSpec.from_primitive(json.loads(json.dumps(spec.to_primitive("1.0"))))
    assert old == spec.model_copy(update={"node": None})


@given(st.integers(), st.integers())
def test_out_of_range_sizes_are_always_refused(vcpus: int, memory_mb: int) -> None:
    valid = 1 <= vcpus <= MAX_VCPUS and MIN_MEMORY_MB <= memory_mb <= MAX_MEMORY_MB
    try:
        _spec(vcpus=vcpus, memory_mb=memory_mb)
    except InvalidSpec as exc:
        assert not valid
        assert exc.field in ("InstanceSpec.vcpus", "InstanceSpec.memory_mb")
    else:
        assert valid


@given(st.text(max_size=80))
def test_names_with_control_characters_are_refused(name: str) -> None:
    bad = (
        not name
        or len(name) > MAX_NAME_LENGTH
        or name != name.strip()
        or any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in name)
        or "/" in name
        or "\\" in name
    )
    try:
        _spec(name=name)
    except InvalidSpec as exc:
        assert bad, name
        assert exc.field == "InstanceSpec.name"
    else:
        assert not bad, name


def test_models_are_built_on_first_use_and_then_validate_in_a_fresh_process() -> None:
    """Importing the contract and listing drivers builds no object model; the first use builds and validates."""
    code = textwrap.dedent(
        """
        import virtdrivers
        from virtdrivers.objects import object_registry
        from virtdrivers.loader import list_drivers

        assert [e.name for e in list_drivers() if e.name == "fake"] == ["fake"]
        built = [n for n, c in object_registry.items() if c.__pydantic_complete__]
        assert built == [], f"listing built {built}"
        try:
            virtdrivers.InstanceSpec(name="web", vcpus=0, memory_mb=512)
        except virtdrivers.InvalidSpec as exc:
            print(exc.field, "|", exc)
        spec = virtdrivers.InstanceSpec(name="web", vcpus=2, memory_mb=512, disks=[{"size_gib": 1}])
        print(spec.disks[0].thin, virtdrivers.InstanceSpec.model_json_schema()["properties"]["start"]["description"])
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    first, second = out.splitlines()
    assert first.startswith("InstanceSpec.vcpus | "), first
    assert "greater than or equal to 1" in first
    assert second == "True Power the instance on once it is created, as a compute agent's spawn does."
