"""Typed, checked access to the fields of a parsed schema map.

Schema blobs come from storage that other people may write to (shares,
sync), so every parser reads fields through these helpers: a wrong type or
a bad blobref becomes a SchemaError that names the field, never a
KeyError or a half-built object.
"""

from __future__ import annotations

from collections.abc import Mapping

from pkvc.blobref import BlobRef
from pkvc.errors import SchemaError
from pkvc.schema.canonical import parse_schema
from pkvc.schema.timefmt import SchemaTime, parse_time

_MISSING = object()


def as_map(data: "bytes | Mapping") -> Mapping:
    """A parsed schema map, from raw blob bytes or an already-parsed map."""
    if isinstance(data, Mapping):
        return data
    return parse_schema(data)


def expect_type(m: Mapping, *types: str) -> str:
    """The camliType, which must be one of `types`."""
    ctype = m.get("camliType")
    if ctype not in types:
        raise SchemaError(f"camliType {ctype!r} is not {' or '.join(types)}")
    return ctype


def get_str(m: Mapping, key: str, required: bool = False) -> str | None:
    value = _get(m, key, required)
    if value is None:
        return None
    if not isinstance(value, str):
        raise SchemaError(f"{key} must be a string")
    return value


def get_int(m: Mapping, key: str, required: bool = False) -> int | None:
    """A non-negative integer (Go's uint64 fields); floats like 3.0 accepted."""
    value = _get(m, key, required)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SchemaError(f"{key} must be a non-negative integer, not {value!r}")
    return value


def get_bool(m: Mapping, key: str) -> bool | None:
    value = m.get(key)
    if value is not None and not isinstance(value, bool):
        raise SchemaError(f"{key} must be true or false")
    return value


def get_ref(m: Mapping, key: str, required: bool = False) -> BlobRef | None:
    value = _get(m, key, required)
    if value is None:
        return None
    ref = BlobRef.parse_or_none(value)
    if ref is None:
        raise SchemaError(f"{key} is not a blobref: {value!r}")
    return ref


def get_ref_list(m: Mapping, key: str) -> tuple[BlobRef, ...] | None:
    value = m.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise SchemaError(f"{key} must be a list of blobrefs")
    refs = tuple(BlobRef.parse_or_none(v) for v in value)
    if None in refs:
        raise SchemaError(f"{key} holds something that is not a blobref")
    return refs


def get_time(m: Mapping, key: str, required: bool = False) -> SchemaTime | None:
    text = get_str(m, key, required)
    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError as e:
        raise SchemaError(f"{key}: {e}") from None


def _get(m: Mapping, key: str, required: bool):
    value = m.get(key, _MISSING)
    if value is _MISSING or value is None:
        if required:
            raise SchemaError(f"missing field {key!r}")
        return None
    return value
