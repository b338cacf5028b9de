"""Canonical schema JSON, byte-for-byte as Perkeep writes it.

A blob's name is the hash of its bytes, so pkvc must serialise exactly as
Perkeep's `mapJSON` does: `{"camliVersion": 1,` + newline, then Go's
`json.MarshalIndent(rest, "", "  ")` minus its leading `{\\n`. Go's map keys
come out sorted by byte order, its strings use Go's escaping (HTML-safe,
U+2028/U+2029 escaped, `\\b` and `\\f` short forms as since Go 1.22; Perkeep
builds with Go 1.25), and there is no trailing newline. Values wrapped in
`KeepOrder` keep insertion order, as Go structs do (a share's `search`).

Reading is lenient the way Perkeep is: any JSON object with a
`camliVersion` key, followed only by whitespace, at most 1 MiB. Blobs read
this way must never be re-serialised to compute their ref.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Mapping
from decimal import Decimal

from pkvc.blobref import BlobRef
from pkvc.errors import SchemaError

MAX_SCHEMA_BLOB_SIZE = 1 << 20
INDENT = "  "

_NEEDS_ESCAPE = re.compile('[\x00-\x1f"\\\\<>&\u2028\u2029\ud800-\udfff]')
_SHORT_ESCAPES = {
    '"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f",
    "\n": "\\n", "\r": "\\r", "\t": "\\t",
}
_SURROGATE = re.compile("[\ud800-\udfff]")


class KeepOrder(dict):
    """A map written in insertion order, like a Go struct (not sorted)."""


def canonical_json(obj: Mapping) -> bytes:
    """Serialise a schema map in Perkeep's canonical form."""
    if "camliVersion" not in obj:
        raise ValueError("schema map has no camliVersion")
    version = obj["camliVersion"]
    if isinstance(version, bool) or not isinstance(version, (int, str)):
        raise ValueError(f"bad camliVersion {version!r}")
    rest = {k: v for k, v in obj.items() if k != "camliVersion"}
    if not rest:
        raise ValueError("schema map needs more than camliVersion")
    body: list[str] = []
    _write_object(rest, body, 0)
    text = "".join(body)[2:]  # MarshalIndent's output without its "{\n"
    return f'{{"camliVersion": {version},\n{text}'.encode("utf-8")


def schema_json(fields: list[tuple[str, str]], version: int = 1) -> bytes:
    """The bytes `canonical_json` gives for a map of `version` and `fields`:
    (key, value as `json_value` writes it), keys unique and never
    camliVersion, in any order (sorted here). For the schema blobs a snapshot
    writes by the thousand, built without a map and a generic pass over it."""
    fields.sort()
    body = ",\n  ".join([_quoted_key(key) + ": " + value for key, value in fields])
    return f'{{"camliVersion": {version},\n  {body}\n}}'.encode("utf-8")


def json_value(value) -> str:
    """A value of a top-level key, as `canonical_json` writes it."""
    kind = type(value)
    if kind is str:
        return go_string(value)
    if kind is int:
        return str(value)
    out: list[str] = []
    _write_value(value, out, 1)
    return "".join(out)


def go_string(s: str) -> str:
    """Quote `s` as Go's encoding/json does (HTML-safe)."""
    if not _NEEDS_ESCAPE.search(s):
        return f'"{s}"'
    return '"' + _NEEDS_ESCAPE.sub(_escape_char, s) + '"'


def _escape_char(m: re.Match) -> str:
    ch = m.group()
    short = _SHORT_ESCAPES.get(ch)
    if short:
        return short
    if "\ud800" <= ch <= "\udfff":
        return "\\ufffd"  # Go writes invalid UTF-8 as this escape
    return f"\\u{ord(ch):04x}"


def _write_value(value, out: list[str], depth: int) -> None:
    kind = type(value)  # the common exact types first: millions of values per snapshot
    if kind is str:
        out.append(go_string(value))
    elif kind is int:
        out.append(str(value))
    elif kind is BlobRef:
        out.append(go_string(str(value)))
    elif kind is dict:
        _write_object(value, out, depth)
    elif kind is list or kind is tuple:
        _write_array(value, out, depth)
    elif isinstance(value, str):
        out.append(go_string(value))
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif value is None:
        out.append("null")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        out.append(_go_float(value))
    elif isinstance(value, BlobRef):
        out.append(go_string(str(value)))
    elif isinstance(value, Mapping):
        _write_object(value, out, depth)
    elif isinstance(value, (list, tuple)):
        _write_array(value, out, depth)
    else:
        raise TypeError(f"cannot write {type(value).__name__} in a schema blob")


def _write_object(obj: Mapping, out: list[str], depth: int) -> None:
    if not obj:
        out.append("{}")
        return
    keys = list(obj) if isinstance(obj, KeepOrder) else sorted(obj)
    inner = INDENT * (depth + 1)
    out.append("{")
    sep = "\n" + inner
    for key in keys:
        value = obj[key]
        kind = type(value)  # scalars inline: most values of a file blob are
        if kind is str:
            out.append(sep + _quoted_key(key) + ": " + go_string(value))
        elif kind is int:
            out.append(sep + _quoted_key(key) + ": " + str(value))
        else:
            out.append(sep + _quoted_key(key) + ": ")
            _write_value(value, out, depth + 1)
        sep = ",\n" + inner
    out.append("\n" + INDENT * depth + "}")


_QUOTED_KEYS: dict[str, str] = {}  # schema keys repeat: "blobRef", "size", ...


def _quoted_key(key) -> str:
    quoted = _QUOTED_KEYS.get(key) if type(key) is str else None
    if quoted is None:
        if not isinstance(key, str):
            raise TypeError(f"schema map key {key!r} is not a string")
        quoted = go_string(key)
        if type(key) is str and len(_QUOTED_KEYS) < 1024:
            _QUOTED_KEYS[key] = quoted
    return quoted


def _write_array(items, out: list[str], depth: int) -> None:
    if not items:
        out.append("[]")
        return
    inner = INDENT * (depth + 1)
    out.append("[")
    for i, item in enumerate(items):
        out.append(("\n" if i == 0 else ",\n") + inner)
        _write_value(item, out, depth + 1)
    out.append("\n" + INDENT * depth + "]")


def _go_float(x: float) -> str:
    """Go's float64 JSON form: shortest digits, exponent only when extreme."""
    if not math.isfinite(x):
        raise ValueError(f"JSON cannot hold {x}")
    if x == 0:
        return "-0" if math.copysign(1.0, x) < 0 else "0"
    text = repr(x)
    if 1e-6 <= abs(x) < 1e21:
        if "e" in text:
            text = format(Decimal(text), "f")
        return text[:-2] if text.endswith(".0") else text
    mantissa, exp = text.split("e")
    sign, digits = exp[0], exp[1:]
    if sign == "-" and len(digits) == 2 and digits[0] == "0":
        digits = digits[1]  # Go cleans e-07 to e-7
    return f"{mantissa}e{sign}{digits}"


def parse_schema(data: bytes) -> dict:
    """Read a schema blob as Perkeep does; raise SchemaError if it is not one."""
    if len(data) > MAX_SCHEMA_BLOB_SIZE:
        raise SchemaError(f"schema blob too large ({len(data)} bytes > 1 MiB)")
    text = bytes(data).decode("utf-8", errors="replace")
    try:
        if text.startswith("\ufeff"):  # (as json.loads refuses it)
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        obj = _decoder().decode(text)
    except (ValueError, RecursionError) as e:
        raise SchemaError(f"not a schema blob: {e}") from None
    if not isinstance(obj, dict) or "camliVersion" not in obj:
        raise SchemaError("not a schema blob: no camliVersion")
    version = obj["camliVersion"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise SchemaError(f"bad camliVersion {version!r}")
    if "\\u" in text or "\\U" in text:
        obj = _replace_surrogates(obj)
    return obj


def looks_like_schema(data: bytes) -> bool:
    """Cheap sniff, as Perkeep's LikelySchemaBlob: worth trying to parse?"""
    return data[:1] == b"{" and b"camliVersion" in data[:MAX_SCHEMA_BLOB_SIZE]


_local = threading.local()


def _decoder() -> json.JSONDecoder:
    """One decoder per thread: json.loads with hooks builds a new one per call
    (a few percent of `check --read-data`, which parses every schema blob)."""
    decoder = getattr(_local, "decoder", None)
    if decoder is None:
        decoder = _local.decoder = json.JSONDecoder(parse_constant=_reject_constant,
                                                    parse_float=_finite_float)
    return decoder


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text}")
    return value


def _replace_surrogates(value):
    """Go decodes a lone \\uD800-style escape as U+FFFD; so do we."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_replace_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_replace_surrogates(k): _replace_surrogates(v) for k, v in value.items()}
    return value
