"""Where the shared Perkeep conformance vectors live (never copied here)."""

from pathlib import Path

import pytest

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "perkeep-vectors"


def vectors_dir() -> Path:
    """The vectors folder, or skip the test when it is absent."""
    if not VECTORS.is_dir():
        pytest.skip(f"perkeep vectors not found at {VECTORS}")
    return VECTORS


def vector_files(*globs: str) -> list[Path]:
    """Files matching globs under the vectors folder ([] when it is absent)."""
    if not VECTORS.is_dir():
        return []
    return sorted(p for g in globs for p in VECTORS.glob(g))
