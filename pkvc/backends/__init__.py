"""Backends by URL: each backend module parses its own scheme.

`open_backend` asks each registered module's `from_url` in turn; the first
that recognises the URL wins. A plain path is a local directory.
"""

from __future__ import annotations

from pkvc.backends import local
from pkvc.backends.base import Backend, ObjectInfo, validate_name
from pkvc.errors import UsageError

_MODULES = [local]


def open_backend(url: str) -> Backend:
    """The backend for `url`, or a UsageError naming the schemes pkvc knows."""
    for module in _MODULES:
        backend = module.from_url(url)
        if backend is not None:
            return backend
    raise UsageError(f"unknown repository URL {url!r}: use a local path or file:///path")


__all__ = ["Backend", "ObjectInfo", "open_backend", "validate_name"]
