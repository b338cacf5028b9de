"""The repository: blobs by ref, stored in encrypted packs on a backend.

It is the only user of the pack format, the index and the backend, and the
one place that checks that bytes match their blobref (on put and on get).
Above it, code speaks only of blobs: `put / get / has / enumerate / remove`.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from pkvc import crypto, keyslots
from pkvc.backends import Backend
from pkvc.blobref import BlobRef
from pkvc.chunker import ChunkerParams
from pkvc.errors import (BackendError, BlobNotFoundError, IntegrityError, NoRepositoryError,
                         PkvcError, RepositoryExistsError, UsageError)
from pkvc.index import Index, Location
from pkvc.pack import (KIND_DATA, KIND_SCHEMA, KIND_SIGNED, TARGET_PACK_SIZE, PackEntry,
                       PackWriter, open_blob, pack_id_from_name, pack_name, read_header)
from pkvc.progress import NO_PROGRESS, Progress

FORMAT_VERSION = 1
MAX_BLOB_SIZE = 16 * 1024 * 1024
PACKS = "packs/"
_SIGNATURE_MARK = b',"camliSig":"'


@dataclass(frozen=True)
class Config:
    """The plaintext `config` object: parameters, never secrets."""

    id: str
    version: int = FORMAT_VERSION
    chunker: ChunkerParams = field(default_factory=ChunkerParams)
    pack_size: int = TARGET_PACK_SIZE

    def to_bytes(self) -> bytes:
        return json.dumps({
            "format": "pkvc",
            "version": self.version,
            "id": self.id,
            "blobref_hash": "sha224",
            "chunker": {"algorithm": "fastcdc", "min_size": self.chunker.min_size,
                        "avg_size": self.chunker.avg_size, "max_size": self.chunker.max_size},
            "pack": {"target_size": self.pack_size, "compression": "zstd",
                     "aead": "xchacha20poly1305", "subkeys": "blake2b"},
            "kdf": "argon2id",
        }, indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes, location: str) -> "Config":
        try:
            raw = json.loads(data)
            if raw.get("format") != "pkvc":
                raise ValueError
            c = raw["chunker"]
            config = cls(raw["id"], raw["version"],
                         ChunkerParams(c["min_size"], c["avg_size"], c["max_size"]),
                         raw["pack"]["target_size"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise NoRepositoryError(f"{location} has a config that is not pkvc's") from None
        if config.version != FORMAT_VERSION:
            raise PkvcError(f"repository format {config.version} is not supported by this pkvc "
                            f"(it reads format {FORMAT_VERSION})")
        return config


def sniff_kind(data) -> int:
    """Schema blobs are JSON objects with camliVersion; signed ones carry camliSig."""
    head = bytes(data[:128])
    if not head.lstrip().startswith(b"{") or b'"camliVersion"' not in head:
        return KIND_DATA
    return KIND_SIGNED if _SIGNATURE_MARK in data else KIND_SCHEMA


@dataclass
class WriteStats:
    """What this open repository added: for summaries like `snapshot --json`."""

    blobs: int = 0
    raw_bytes: int = 0
    stored_bytes: int = 0
    packs: int = 0


@dataclass
class SyncReport:
    packs_added: int = 0
    packs_dropped: int = 0
    blobs_added: int = 0
    damaged: dict[str, str] = field(default_factory=dict)  # pack id -> why unreadable


class Repository:
    """An open repository. Use `create` or `open`; close (or use `with`) to flush."""

    def __init__(self, backend: Backend, config: Config, master: bytes, slot_id: str,
                 cache_dir: Path, progress: Progress = NO_PROGRESS):
        self.backend = backend
        self.config = config
        self.slot_id = slot_id
        self._master = master
        self._data_key = crypto.derive_subkey(master, "pkvc-data")
        self._writer = PackWriter(self._data_key)
        self._unflushed: dict[BlobRef, PackEntry] = {}
        self.stats = WriteStats()
        self._index_dir = Path(cache_dir) / config.id / "index"
        self.index = self._open_index()
        self.sync_index(progress)

    # -- lifecycle -----------------------------------------------------

    @classmethod
    def create(cls, backend: Backend, password: bytes, cache_dir: Path,
               chunker: ChunkerParams = ChunkerParams(), pack_size: int = TARGET_PACK_SIZE,
               ) -> "Repository":
        if backend.is_initialized():
            raise RepositoryExistsError(f"a repository already exists at {backend.location}")
        backend.create(folders=("keys", "packs"))
        config = Config(uuid.uuid4().hex, chunker=chunker, pack_size=pack_size)
        master = crypto.random_key()
        slot_id = keyslots.add_slot(backend, master, password, config.id)
        backend.store("config", config.to_bytes())
        return cls(backend, config, master, slot_id, cache_dir)

    @classmethod
    def open(cls, backend: Backend, password: bytes, cache_dir: Path,
             progress: Progress = NO_PROGRESS) -> "Repository":
        config = read_config(backend)
        master, slot_id = keyslots.unlock(backend, password, config.id)
        return cls(backend, config, master, slot_id, cache_dir, progress)

    def close(self) -> None:
        self.flush()
        self.index.close()
        self.backend.close()

    def __enter__(self) -> "Repository":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def master_key(self) -> bytes:
        """For wrapping in a new key slot only; everything else uses subkeys."""
        return self._master

    def subkey(self, purpose: str) -> bytes:
        """A key derived from the master key for one purpose other than packs."""
        return crypto.derive_subkey(self._master, purpose)

    # -- the blob API --------------------------------------------------

    def put(self, data, ref: BlobRef | None = None, kind: int | None = None) -> BlobRef:
        """Store `data` unless present; returns its ref. A given `ref` must match."""
        if len(data) > MAX_BLOB_SIZE:
            raise UsageError(f"blob of {len(data)} bytes exceeds the {MAX_BLOB_SIZE}-byte limit")
        if ref is None:
            ref = BlobRef.of(data)
        elif not ref.matches(data):
            raise IntegrityError(f"data does not match {ref}; not stored")
        if self.has(ref):
            return ref
        entry = self._writer.add(ref, data, sniff_kind(data) if kind is None else kind)
        self._unflushed[ref] = entry
        self.stats.blobs += 1
        self.stats.raw_bytes += entry.raw_length
        self.stats.stored_bytes += entry.length
        if self._writer.size >= self.config.pack_size:
            self.flush()
        return ref

    def put_data(self, data) -> BlobRef:
        """Store file content as data even if it looks like a schema blob."""
        return self.put(data, kind=KIND_DATA)

    def has(self, ref: BlobRef) -> bool:
        return ref in self._unflushed or self.index.lookup(ref) is not None

    def get(self, ref: BlobRef) -> bytes:
        """The blob's bytes, verified against `ref`; IntegrityError if they differ."""
        if ref in self._unflushed:
            self.flush()
        loc = self.index.lookup(ref)
        if loc is None:
            self.sync_index()  # another process may have written it since we opened
            loc = self.index.lookup(ref)
        if loc is None:
            raise BlobNotFoundError(f"blob {ref} is not in the repository")
        try:
            data = self._load(ref, loc)
        except BackendError:
            self.sync_index()  # a gc may have moved it to another pack
            loc = self.index.lookup(ref)
            if loc is None:
                raise BlobNotFoundError(f"blob {ref} is not in the repository") from None
            data = self._load(ref, loc)
        if not ref.matches(data):
            raise IntegrityError(f"blob {ref} in pack {loc.pack_id} does not match its ref")
        return data

    def _load(self, ref: BlobRef, loc: Location) -> bytes:
        sealed = self.backend.load(pack_name(loc.pack_id), loc.offset, loc.length)
        if len(sealed) != loc.length:
            raise IntegrityError(f"pack {loc.pack_id} is truncated (blob {ref})")
        return open_blob(self._data_key, loc.entry(ref), sealed)

    def locate(self, ref: BlobRef) -> Location | None:
        return self.index.lookup(ref)

    def enumerate(self) -> Iterator[tuple[BlobRef, Location]]:
        """Every stored blob with its location (kind, sizes), in ref-key order."""
        self.flush()
        return self.index.blobs()

    def remove(self, refs: set[BlobRef], progress: Progress = NO_PROGRESS) -> int:
        """Delete blobs by rewriting the packs that hold them; returns bytes freed.

        Survivors are stored in new packs and indexed before any old pack is
        deleted, so an interruption at any point loses nothing still wanted.
        """
        self.flush()
        by_pack: dict[str, list[tuple[BlobRef, Location]]] = {}
        for ref, loc in self.index.blobs():
            by_pack.setdefault(loc.pack_id, []).append((ref, loc))
        doomed = sorted(pid for pid, blobs in by_pack.items() if any(r in refs for r, _ in blobs))
        sizes = self.index.packs()
        written: list[str] = []
        kept: set[BlobRef] = set()
        progress.start("rewrite", len(doomed), "packs")
        for pid in doomed:
            for ref, loc in by_pack[pid]:
                if ref not in refs and ref not in kept:
                    self._unflushed[ref] = self._writer.add(ref, self._load(ref, loc), loc.kind)
                    kept.add(ref)
                    if self._writer.size >= self.config.pack_size:
                        written.append(self.flush())
            progress.advance()
        written.append(self.flush())
        for pid in doomed:
            self.backend.delete(pack_name(pid))
        self.index.forget_packs(set(doomed))
        progress.finish()
        new_sizes = self.index.packs()
        return sum(sizes[p] for p in doomed) - sum(new_sizes.get(p, 0) for p in written if p)

    def flush(self) -> str | None:
        """Write the pending pack, then index it; returns its id (None if empty).

        A crash between the two loses only the cache entry: the next open
        finds the unindexed pack and reads its header.
        """
        if not len(self._writer):
            return None
        pack = self._writer.finish()
        self.backend.store(pack_name(pack.pack_id), pack.data)
        self.index.add_pack(pack.pack_id, len(pack.data), pack.entries)
        self.index.flush()
        self._unflushed.clear()
        self.stats.packs += 1
        return pack.pack_id

    # -- the index as a cache -----------------------------------------

    def cache_table(self, name: str) -> "CacheTable":
        """A key-value table in the local index for data derived from blobs.

        Like the index it is a cache: `reindex` empties it, and its owner
        must be able to rebuild it from the blobs.
        """
        return CacheTable(self.index, name.encode())

    def _open_index(self) -> Index:
        try:
            return Index(self._index_dir)
        except Exception:  # a damaged cache is rebuilt, never trusted or fatal
            shutil.rmtree(self._index_dir, ignore_errors=True)
            return Index(self._index_dir)

    def list_packs(self) -> dict[str, int]:
        """Pack id -> size, as the backend has them now."""
        return {pack_id_from_name(i.name): i.size for i in self.backend.list(PACKS)}

    def read_pack_header(self, pack_id: str, size: int) -> list[PackEntry]:
        name = pack_name(pack_id)
        return read_header(self._data_key, lambda off, n: self.backend.load(name, off, n),
                           size, f"pack {pack_id}")

    def load_pack(self, pack_id: str) -> bytes:
        return self.backend.load(pack_name(pack_id))

    def open_pack_blob(self, entry: PackEntry, sealed) -> bytes:
        return open_blob(self._data_key, entry, sealed)

    def sync_index(self, progress: Progress = NO_PROGRESS) -> SyncReport:
        """Bring the index in line with the packs the backend holds."""
        self.index.refresh()
        present = self.list_packs()
        known = self.index.packs()
        new = sorted(set(present) - set(known))
        report = SyncReport(packs_dropped=len(set(known) - set(present)))
        if report.packs_dropped:
            self.index.forget_packs(set(known) - set(present))
        if new:
            progress.start("index", len(new), "packs")
            for pack_id in new:
                try:
                    entries = self.read_pack_header(pack_id, present[pack_id])
                except (IntegrityError, BackendError) as e:
                    report.damaged[pack_id] = str(e)  # left for `check` to report
                else:
                    self.index.add_pack(pack_id, present[pack_id], entries)
                    report.blobs_added += len(entries)
                    report.packs_added += 1
                progress.advance()
            self.index.flush()
            progress.finish()
        return report

    def reindex(self, progress: Progress = NO_PROGRESS) -> SyncReport:
        """Throw the index away and rebuild it from every pack header."""
        self.flush()
        self.index.close()
        shutil.rmtree(self._index_dir, ignore_errors=True)
        self.index = Index(self._index_dir)
        return self.sync_index(progress)


class CacheTable:
    """One named table of the index cache (see Repository.cache_table)."""

    def __init__(self, index: Index, name: bytes):
        self._index = index
        self._name = name

    def get(self, key: bytes) -> bytes | None:
        return self._index.table_get(self._name, key)

    def put(self, key: bytes, value: bytes) -> None:
        self._index.table_put(self._name, key, value)

    def delete(self, key: bytes) -> None:
        self._index.table_put(self._name, key, None)

    def scan(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        return self._index.table_scan(self._name, prefix)

    def flush(self) -> None:
        self._index.flush()


def read_config(backend: Backend) -> Config:
    if not backend.is_initialized():
        raise NoRepositoryError(f"no pkvc repository at {backend.location} (run `pkvc init` first)")
    return Config.from_bytes(backend.load("config"), backend.location)
