"""File names and symlink targets, which on Unix are bytes, not text.

Perkeep writes a name as `fileName` when it is valid UTF-8 and otherwise as
`fileNameBytes`: a "mixed array" of UTF-8 string runs and single byte
values (0-255), e.g. `["Am", 233, "lie.jpg"]`. Symlink targets do the same
with `symlinkTarget` / `symlinkTargetBytes`. Reading gives the raw bytes
back; `name_problem` says why a name must not be used as a path component.
"""

from __future__ import annotations

from pkvc.errors import SchemaError


def utf8_prefix_len(data: bytes) -> int:
    """Length of the longest valid UTF-8 prefix (Perkeep's utf8StrLen)."""
    try:
        bytes(data).decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start
    return len(data)


def mixed_array_from_bytes(data: bytes) -> list:
    """Split raw bytes into UTF-8 string runs and lone byte values."""
    parts: list = []
    rest = bytes(data)
    while rest:
        n = utf8_prefix_len(rest)
        if n:
            parts.append(rest[:n].decode("utf-8"))
            rest = rest[n:]
        else:
            parts.append(rest[0])
            rest = rest[1:]
    return parts


def bytes_from_mixed_array(parts) -> bytes:
    """Join a mixed array back into bytes; SchemaError on anything else."""
    if not isinstance(parts, list):
        raise SchemaError(f"mixed array expected, got {type(parts).__name__}")
    out = bytearray()
    for part in parts:
        if isinstance(part, str):
            out += part.encode("utf-8", errors="replace")
        elif _is_byte_value(part):
            out.append(int(part))
        else:
            raise SchemaError(f"bad element {part!r} in a byte-name array")
    return bytes(out)


def _is_byte_value(value) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return value == int(value) and 0 <= value <= 255


def encode_name(raw: bytes, key: str) -> dict:
    """`{key: text}` for UTF-8, else `{key + "Bytes": mixed array}`."""
    raw = bytes(raw)
    if utf8_prefix_len(raw) == len(raw):
        return {key: raw.decode("utf-8")}
    return {key + "Bytes": mixed_array_from_bytes(raw)}


def decode_name(fields: dict, key: str) -> bytes | None:
    """Raw bytes of `key` / `key + "Bytes"`, or None if neither is present."""
    text, mixed = fields.get(key), fields.get(key + "Bytes")
    if text is not None and mixed is not None:
        raise SchemaError(f"both {key} and {key}Bytes are set")
    if text is not None:
        if not isinstance(text, str):
            raise SchemaError(f"{key} must be a string")
        return text.encode("utf-8", errors="replace")
    if mixed is not None:
        return bytes_from_mixed_array(mixed)
    return None


def name_problem(name: bytes | None) -> str | None:
    """Why `name` cannot be one path component (None if it can)."""
    if name is None or name == b"":
        return "empty name"
    if name in (b".", b".."):
        return f"name {name.decode()!r} is not allowed"
    if b"/" in name:
        return "name contains '/'"
    if b"\0" in name:
        return "name contains a NUL byte"
    return None
