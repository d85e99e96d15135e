"""Versioned value objects that can travel to older peers.

Every object class has a ``VERSION`` (``MAJOR.MINOR``). Adding a field with a
default bumps the minor; anything else bumps the major. An object renders
itself as a *primitive* (plain JSON-able dict) for any older minor of the same
major: fields introduced after the target version are dropped, and a class may
translate others in :meth:`VersionedObject.make_compatible`. A primitive from an
older peer is read back with the defaults filling the fields it predates.

This is the oslo.versionedobjects idea, kept small and built on pydantic: the
objects validate on construction, and validation errors surface as
:class:`~virtdrivers.errors.InvalidSpec` naming the field.
"""

from __future__ import annotations

import ast
import datetime
import enum
import hashlib
import inspect
import json
import textwrap
from typing import TYPE_CHECKING, Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from virtdrivers.errors import InvalidSpec
from virtdrivers.version import ContractVersion

if TYPE_CHECKING:
    from pydantic._internal._namespace_utils import MappingNamespace

__all__ = ["IncompatibleObjectVersion", "VersionedObject", "object_registry"]

_NAME = "vd_object.name"
_VERSION = "vd_object.version"
_DATA = "vd_object.data"

object_registry: dict[str, type[VersionedObject]] = {}


class IncompatibleObjectVersion(InvalidSpec):
    """A primitive's version cannot be served: different major, or newer than this code knows."""


def _first_error(exc: ValidationError) -> tuple[str, str]:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "<object>"
    inner = (err.get("ctx") or {}).get("error")
    if isinstance(inner, InvalidSpec) and inner.field:
        # a nested object refused its input: name the full path, not the nested class
        nested_field = inner.field.split(".", 1)[-1]
        return f"{field}.{nested_field}", str(inner).split(": ", 1)[-1]
    return field, err["msg"]


class VersionedObject(BaseModel):
    """Base of every contract object."""

    # defer_build: a model's validator and schema are built on its first use, not at import.
    # Every plugin imports these classes and listing drivers uses none of them, so building
    # all of them up front was most of the cost of ``virtdrivers drivers``. Attribute
    # docstrings become field descriptions at that first build too (see _describe_fields),
    # not through pydantic's use_attribute_docstrings, which reads each class's source at import.
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True, defer_build=True)

    #: The object's own version, ``MAJOR.MINOR``.
    VERSION: ClassVar[str] = "1.0"
    #: Field name -> the object version that introduced it (fields absent here date from x.0).
    FIELD_SINCE: ClassVar[dict[str, str]] = {}
    #: Field name holding nested objects -> [(own version, child version)], ascending. The
    #: child is rendered at the newest child version paired with a parent version <= target.
    CHILD_VERSIONS: ClassVar[dict[str, list[tuple[str, str]]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        ContractVersion.parse(cls.VERSION)
        object_registry[cls.__name__] = cls

    @classmethod
    def model_rebuild(
        cls,
        *,
        force: bool = False,
        raise_errors: bool = True,
        _parent_namespace_depth: int = 2,
        _types_namespace: MappingNamespace | None = None,
    ) -> bool | None:
        """Build the deferred schema, with attribute docstrings as descriptions; pydantic calls this on first use."""
        _describe_fields()
        return super().model_rebuild(
            force=force,
            raise_errors=raise_errors,
            # one frame deeper than pydantic expects: this override sits between it and its caller
            _parent_namespace_depth=_parent_namespace_depth + 1 if _parent_namespace_depth > 0 else 0,
            _types_namespace=_types_namespace,
        )

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            field, msg = _first_error(exc)
            raise InvalidSpec(msg, field=f"{type(self).__name__}.{field}") from None

    @classmethod
    def validate_input(cls, value: Self | dict[str, Any]) -> Self:
        """Accept an instance or a plain mapping; anything else is an InvalidSpec."""
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            return cls(**value)
        raise InvalidSpec(f"expected {cls.__name__} or a mapping, got {type(value).__name__}", field=cls.__name__)

    # -- primitives -------------------------------------------------------------------------

    def to_primitive(self, target_version: str | None = None) -> dict[str, Any]:
        """Render as a JSON-able dict, optionally for an older peer speaking ``target_version``."""
        own = ContractVersion.parse(self.VERSION)
        target = own if target_version is None else ContractVersion.parse(target_version)
        if target.major != own.major or target > own:
            raise IncompatibleObjectVersion(
                f"cannot render {type(self).__name__} {own} as {target}", field=type(self).__name__
            )
        data: dict[str, Any] = {}
        for name in type(self).model_fields:
            since = ContractVersion.parse(self.FIELD_SINCE.get(name, f"{own.major}.0"))
            if since > target:
                continue
            data[name] = self._field_primitive(name, getattr(self, name), target)
        self.make_compatible(data, target)
        return {_NAME: type(self).__name__, _VERSION: str(target), _DATA: data}

    def _field_primitive(self, name: str, value: Any, target: ContractVersion) -> Any:
        child_version: str | None = None
        if name in self.CHILD_VERSIONS:
            for parent_v, child_v in self.CHILD_VERSIONS[name]:
                if ContractVersion.parse(parent_v) <= target:
                    child_version = child_v
        return _to_json(value, child_version)

    def make_compatible(self, data: dict[str, Any], target: ContractVersion) -> None:
        """Translate ``data`` (already stripped of newer fields) for ``target``. Override to translate."""

    @classmethod
    def from_primitive(cls, primitive: dict[str, Any]) -> Self:
        """Read a primitive from a peer of this or an older minor version."""
        try:
            name, version, data = primitive[_NAME], primitive[_VERSION], primitive[_DATA]
        except (KeyError, TypeError):
            raise InvalidSpec("not a virtdrivers object primitive", field=cls.__name__) from None
        target_cls = object_registry.get(name)
        if target_cls is None or not issubclass(target_cls, cls):
            raise InvalidSpec(f"primitive holds {name!r}, expected {cls.__name__}", field=cls.__name__)
        theirs = ContractVersion.parse(version)
        ours = ContractVersion.parse(target_cls.VERSION)
        if theirs.major != ours.major or theirs > ours:
            raise IncompatibleObjectVersion(
                f"{name} {theirs} is not readable by this version ({ours}); ask the sender to clamp to {ours}",
                field=name,
            )
        return target_cls(**{k: _from_json(v) for k, v in data.items()})

    # -- schema fingerprint ---------------------------------------------------------------

    @classmethod
    def fingerprint(cls) -> str:
        """``VERSION-hash`` of the JSON schema: a schema change without a version bump shows here."""
        schema = json.dumps(_structure(cls.model_json_schema()), sort_keys=True, separators=(",", ":"))
        extra = json.dumps([cls.FIELD_SINCE, cls.CHILD_VERSIONS], sort_keys=True)
        digest = hashlib.sha256((schema + extra).encode()).hexdigest()[:16]
        return f"{cls.VERSION}-{digest}"


_described: set[type[VersionedObject]] = set()


def _describe_fields() -> None:
    """Give every registered object's fields their attribute docstrings as descriptions, once.

    Runs before any object's schema is built, for all of them at once, because building one
    object builds the schemas of the objects nested in it without rebuilding those. A field
    with an explicit ``Field(description=...)`` keeps it; inherited fields take the docstring
    nearest in the MRO, as pydantic's own ``use_attribute_docstrings`` does.
    """
    for cls in list(object_registry.values()):
        if cls in _described:
            continue
        _described.add(cls)
        docs: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            if isinstance(klass, type) and issubclass(klass, VersionedObject):
                docs.update(_attribute_docstrings(klass))
        for name, info in cls.__pydantic_fields__.items():
            if info.description is None and name in docs:
                info.description = docs[name]


def _attribute_docstrings(cls: type) -> dict[str, str]:
    """``name: type`` followed by a string literal, in the class body itself: name -> that string."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source shipped (zipapp, .pyc only): no descriptions
        return {}
    body = ast.parse(source).body[0]
    if not isinstance(body, ast.ClassDef):
        return {}
    docs: dict[str, str] = {}
    for node, after in zip(body.body, body.body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _structure(schema: Any) -> Any:
    """The schema without prose (descriptions, titles): rewording a docstring is not a schema change."""
    if isinstance(schema, dict):
        return {k: _structure(v) for k, v in schema.items() if k not in ("description", "title")}
    if isinstance(schema, list):
        return [_structure(v) for v in schema]
    return schema


def _to_json(value: Any, child_version: str | None) -> Any:
    if isinstance(value, VersionedObject):
        return value.to_primitive(child_version)
    if isinstance(value, (list, tuple)):
        return [_to_json(v, child_version) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v, child_version) for k, v in value.items()}
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict) and _NAME in value:
        cls = object_registry.get(value[_NAME], VersionedObject)
        return cls.from_primitive(value)
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _from_json(v) for k, v in value.items()}
    return value
