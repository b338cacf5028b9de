"""Access through shares: the decision a share server makes for each request.

A request names a *chain*: the `via` refs in order, then the blob asked
for. `ShareGate.authorize` applies Perkeep's share-handler rules (see
docs/sharing.md and the vectors' share-handler-tests.md) with pkvc's
stricter ones: the share's signature must verify, links are typed (see
`pkvc.share.links_of`), and a blob reached as raw bytes is never a hop.

    chain[0]      a share claim: not revoked, stored and indexed as a signed
                  blob, signed by one of this repository's own identities
                  (`pkvc.share.own_signers`), <= 1 MiB, a haveref share of a
                  target, signature verifies, not expired
    chain[1]      its target (or, pkvc's one extension, the share's own
                  camliSigner key blob, so a puller can verify the share)
    chain[2:]     only for transitive shares; each element linked from the
                  one before through a typed schema link
    assemble      only for transitive shares, and the last element is a file

Every refusal is the same `Refused` (the server answers 401 after a fixed
delay); the reason is kept for logs and tests, never sent.

Freshness: claims are re-read so that a revocation written by another
process counts for every request that arrives after it was written:
`refresh(since)` re-lists the packs unless a refresh that started after
`since` already did. Concurrency: the repository's index is not safe to
change while it is read, so refreshes take a write lock and blob reads a
shared one (many readers at once, threads of the server's pool).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pkvc.blobref import BlobRef
from pkvc.claims import ClaimsIndex
from pkvc.errors import BackendError, BlobNotFoundError, PkvcError, SchemaError, SignatureError
from pkvc.repo import Repository
from pkvc.restore import iter_file_bytes
from pkvc.schema.anyblob import parse_blob
from pkvc.schema.canonical import MAX_SCHEMA_BLOB_SIZE
from pkvc.schema.fsnodes import FileBlob
from pkvc.schema.parts import BytesBlob
from pkvc.share import RAW, TARGET, ShareError, VerifiedShare, links_of, own_signers, verify_share

MAX_CHAIN = 4096
_LINK_CACHE_SIZE = 4096


class Refused(PkvcError):
    """The chain does not authorize the request; `reason` is Perkeep's name for why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Grant:
    """What a valid chain lets the client have."""

    ref: BlobRef
    share: VerifiedShare
    assemble: bool
    size: int | None = None  # the assembled file's size


class _ReadWriteLock:
    """Many readers or one writer; a waiting writer holds new readers back."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0

    @contextmanager
    def read(self):
        with self._cond:
            while self._writer or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self):
        with self._cond:
            self._waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class ShareGate:
    """Decides requests against one open repository; safe to call from many threads."""

    def __init__(self, repo: Repository, clock=time.time_ns):
        self.repo = repo
        self.clock = clock
        self._lock = _ReadWriteLock()
        self._refresh_mutex = threading.Lock()
        self._refreshed_at = float("-inf")
        self._packs: frozenset[str] | None = None
        self._revoked: frozenset[BlobRef] = frozenset()
        self._known: frozenset[BlobRef] = frozenset()
        self._shares: dict[BlobRef, VerifiedShare] = {}
        self._links: dict[tuple[BlobRef, str], dict | None] = {}

    # -- freshness -----------------------------------------------------

    def refresh(self, since: float | None = None) -> None:
        """See packs (and revocations) written since `since` (a time.monotonic())."""
        since = time.monotonic() if since is None else since
        with self._refresh_mutex:
            if self._refreshed_at >= since:
                return
            started = time.monotonic()
            with self._lock.write():
                self.repo.sync_index()
                packs = frozenset(self.repo.index.packs())
                if packs != self._packs:
                    index = ClaimsIndex.open(self.repo)
                    own = own_signers(self.repo)
                    shares = [c for c in index.of_type("share", include_deleted=True)
                              if c.signer in own]
                    self._known = frozenset(c.ref for c in shares)
                    self._revoked = frozenset(c.ref for c in shares if index.is_deleted(c.ref))
                    self._packs = packs
            self._refreshed_at = started

    # -- deciding ------------------------------------------------------

    def authorize(self, chain: list[BlobRef], assemble: bool = False,
                  since: float | None = None) -> Grant:
        """The grant for `chain`, or Refused; re-reads claims first (see `refresh`)."""
        if not chain or len(chain) > MAX_CHAIN:
            raise Refused("invalidChain")
        self.refresh(since)
        share = self._share(chain[0])
        if share.expired(self.clock()):
            raise Refused("shareExpired")
        if len(chain) == 1:
            if assemble:
                raise Refused("assembleNotFile")
            return Grant(chain[0], share, False)
        if chain[1] != share.target:
            if len(chain) == 2 and chain[1] == share.signer and not assemble:
                return Grant(chain[1], share, False)  # the key that verifies the share
            raise Refused("shareTargetInvalid")
        if len(chain) > 2 and not share.transitive:
            raise Refused("shareNotTransitive")
        if assemble and not share.transitive:
            raise Refused("assembleNonTransitive")
        kind = TARGET
        for here, nxt in zip(chain[1:-1], chain[2:]):
            links = self._links_of(here, kind)
            if links is None or nxt not in links:
                raise Refused("viaChainInvalidLink")
            kind = links[nxt]
        if assemble:
            return Grant(chain[-1], share, True, self._file_size(chain[-1], kind))
        return Grant(chain[-1], share, False)

    def _share(self, ref: BlobRef) -> VerifiedShare:
        if ref in self._revoked:
            raise Refused("shareDeleted")
        if ref not in self._known:  # not here, not a verified share, or not signed by us
            raise Refused("shareUnknown")
        cached = self._shares.get(ref)
        if cached is not None:
            return cached
        data = self._read(ref, "shareFetchFailed")
        if len(data) > MAX_SCHEMA_BLOB_SIZE:
            raise Refused("shareBlobTooLarge")
        try:
            share = verify_share(ref, data, self._key)
        except ShareError:
            raise Refused("shareBlobInvalid") from None
        except (SchemaError, SignatureError):  # MissingSignerKeyError is one too
            raise Refused("shareSignatureInvalid") from None
        if len(self._shares) > _LINK_CACHE_SIZE:
            self._shares.clear()
        self._shares[ref] = share  # content-addressed: verified once is verified for good
        return share

    def _key(self, ref: BlobRef) -> bytes | None:
        try:
            return self._read(ref, "signerKeyMissing")
        except Refused:
            return None

    def _links_of(self, ref: BlobRef, kind: str) -> dict | None:
        key = (ref, kind)
        if key in self._links:
            return self._links[key]
        if kind == RAW:
            return None
        data = self._read(ref, "viaChainFetchFailed")
        if len(data) > MAX_SCHEMA_BLOB_SIZE:
            raise Refused("viaChainReadFailed")
        links = links_of(data, kind)
        if len(self._links) > _LINK_CACHE_SIZE:
            self._links.clear()
        self._links[key] = links
        return links

    def _file_size(self, ref: BlobRef, kind: str) -> int:
        if kind == RAW:
            raise Refused("assembleNotFile")
        data = self._read(ref, "assembleFetchFailed")
        try:
            blob = parse_blob(data)
        except (SchemaError, ValueError):
            raise Refused("assembleNotFile") from None
        if not isinstance(blob, (FileBlob, BytesBlob)):
            raise Refused("assembleNotFile")
        return blob.size

    # -- reading -------------------------------------------------------

    def _read(self, ref: BlobRef, reason: str) -> bytes:
        with self._lock.read():
            try:
                if not self.repo.has(ref):
                    raise Refused(reason)
                return self.repo.get(ref)
            except (BlobNotFoundError, BackendError):
                raise Refused(reason) from None

    def read(self, grant: Grant) -> bytes:
        """The granted blob's bytes; Refused if it is not here (no probing)."""
        return self._read(grant.ref, "blobFetchFailed")

    def get(self, ref: BlobRef) -> bytes:
        """BlobSource for assembling a granted file (its parts are in its graph)."""
        try:
            return self._read(ref, "assembleFetchFailed")
        except Refused:
            raise BlobNotFoundError(f"part {ref} of a shared file is missing") from None

    def iter_file(self, grant: Grant) -> Iterator[bytes]:
        """A granted file's content, in blocks, read as it is sent."""
        return iter_file_bytes(grant.ref, self)

