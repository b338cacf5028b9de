"""Pulling a share into this repository, from a share server or a bundle.

A pull has two phases, so that nothing is stored unless everything checks
out. *Gather*: get the share claim and its signer's key blob, verify the
signature, then walk the target's graph (`share.walk_graph`), asking the
server for each blob this repository lacks along its via chain
(`/share/<ref>?via=<share>,<target>,...`), checking every blob against its
ref before it is kept in a sealed staging area (`pkvc.staging`). *Commit*:
once the graph is complete, put the staged blobs into the repository, flush,
and only then sign a snapshot claim on a local series whose camliContent is
the share's target and whose attributes say where it came from
(`pkvcPulledFrom`, `pkvcShare`, `pkvcSharedBy`). The sharer's share claim
and its key blob are kept too, as verifiable provenance; a repository
honours only shares its own identities signed (`share.own_signers`), so it
never serves or keeps alive the sharer's share.

A server that sends wrong bytes, refuses, or lacks a blob stops the pull
with nothing stored in the repository and the staging area removed. An
interruption (network failure, Ctrl-C) keeps the staging area: running the
same pull again fetches only what is neither in the repository nor staged.
The signer's key is fetched through the share itself (`GET
/share/<camliSigner>?via=<share>`, see docs/sharing.md).
"""

from __future__ import annotations

import http.client
import ssl
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from pkvc.blobref import BlobRef
from pkvc.claims import ClaimsIndex, add_claim
from pkvc.errors import IntegrityError, PkvcError, UsageError
from pkvc.pack import KIND_DATA, KIND_SIGNED
from pkvc.progress import NO_PROGRESS, Progress
from pkvc.repo import MAX_BLOB_SIZE, Repository
from pkvc.schema import jsonsign
from pkvc.schema.claims import Clock
from pkvc.series import Series, ensure_series, find_series, latest_snapshot, record_snapshot
from pkvc.share import RAW, VerifiedShare, parse_share, verify_share, walk_graph
from pkvc.staging import StagingArea

PULLED_FROM_ATTR = "pkvcPulledFrom"
SHARE_ATTR = "pkvcShare"
SHARED_BY_ATTR = "pkvcSharedBy"
USER_AGENT = "pkvc-pull/1"
RETRIES = 3


class ShareRefusedError(PkvcError):
    """The server answered 401: the share is unknown, revoked, expired, or does not reach that far."""


class PullError(PkvcError):
    """The pull could not finish; the message says whether running it again helps."""


@dataclass
class Incoming:
    """A verified share and its staged blobs, ready to commit."""

    share: VerifiedShare
    source: str
    stage: StagingArea
    share_blob: bytes  # the signed claim, kept as provenance
    key_blob: bytes  # its camliSigner, so the claim keeps verifying here
    fetched: int = 0
    fetched_bytes: int = 0
    present: int = 0


@dataclass
class PullResult:
    share: str
    target: str
    source: str
    series: str
    snapshot: str | None  # None: the series already had this target
    signer: str
    fingerprint: str
    transitive: bool
    expires: str | None
    blobs_fetched: int = 0
    bytes_fetched: int = 0
    blobs_present: int = 0
    blobs_stored: int = 0
    notes: list[str] = field(default_factory=list)


# -- talking to a share server ------------------------------------------------

class ShareClient:
    """GETs blobs from a Perkeep-style share server over one kept-alive connection."""

    def __init__(self, url: str, cafile: Path | None = None, timeout: float = 60.0):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"{url!r} is not a share URL (http[s]://HOST[:PORT]/share/<ref>)")
        prefix, sep, tail = parts.path.rpartition("/share/")
        share = BlobRef.parse_or_none(tail)
        if not sep or share is None or not share.is_known:
            raise UsageError(f"{url!r} does not end in /share/<share blobref>")
        self.url = url
        self.share = share
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._prefix = prefix + "/share/"
        self._timeout = timeout
        self._context = ssl.create_default_context(cafile=str(cafile) if cafile else None) \
            if self._https else None
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                self._conn = http.client.HTTPSConnection(self._host, self._port,
                                                         timeout=self._timeout,
                                                         context=self._context)
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port,
                                                        timeout=self._timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def fetch(self, ref: BlobRef, via: tuple[BlobRef, ...] = ()) -> bytes:
        """The blob's bytes as the server sends them (the caller checks them)."""
        path = self._prefix + str(ref)
        if via:
            path += "?via=" + ",".join(str(r) for r in via)
        for attempt in range(RETRIES):
            try:
                return self._get(path, ref)
            except (OSError, http.client.HTTPException) as e:
                self.close()
                if isinstance(e, ssl.SSLCertVerificationError) or attempt == RETRIES - 1:
                    raise PullError(f"cannot fetch {ref} from {self._host}: {e}; run the pull "
                                    "again to resume") from None
                time.sleep(0.2 * 2 ** attempt)
        raise AssertionError("unreachable")

    def _get(self, path: str, ref: BlobRef) -> bytes:
        conn = self._connection()
        conn.request("GET", path, headers={"User-Agent": USER_AGENT})
        resp = conn.getresponse()
        data = resp.read(MAX_BLOB_SIZE + 1)
        if resp.status == 401:
            raise ShareRefusedError(f"the server refused {ref}: the share is unknown, revoked "
                                    "or expired, or does not reach that blob")
        if resp.status >= 500:
            raise http.client.HTTPException(f"server error {resp.status}")
        if resp.status != 200:
            raise PullError(f"the server answered {resp.status} {resp.reason} for {ref}")
        if len(data) > MAX_BLOB_SIZE:
            self.close()
            raise PullError(f"the server sent more than {MAX_BLOB_SIZE} bytes for {ref}")
        return data


# -- gathering -----------------------------------------------------------------

def staging_name(share: BlobRef) -> str:
    return f"pull-{share.hash_name}-{share.hexdigest}"


def gather(repo: Repository, url: str, cache_dir: Path, cafile: Path | None = None,
           progress: Progress = NO_PROGRESS, now_ns: int | None = None) -> Incoming:
    """Fetch, verify and stage everything the share at `url` opens that is missing here."""
    client = ShareClient(url, cafile)
    try:
        share, share_blob, key_blob = _fetch_share(client, now_ns)
        stage = StagingArea(repo, cache_dir, staging_name(share.ref))
        incoming = Incoming(share, url, stage, share_blob, key_blob)
        try:
            _fetch_graph(repo, client, incoming, progress)
        except (IntegrityError, ShareRefusedError):
            stage.discard()  # a lying or refusing server: keep nothing it sent
            raise
        return incoming
    finally:
        client.close()


def _fetch_share(client: ShareClient, now_ns: int | None) -> tuple[VerifiedShare, bytes, bytes]:
    data = _checked(client.share, client.fetch(client.share))
    signer = parse_share(data).signer
    if signer is None:
        raise PullError("the share claim names no camliSigner")
    try:
        key = _checked(signer, client.fetch(signer, (client.share,)))
    except ShareRefusedError:
        raise PullError(f"the server does not hand out the share's signer key {signer} "
                        "(GET /share/<signer>?via=<share>; Perkeep's server does not), so the "
                        "share cannot be verified; nothing was stored") from None
    share = verify_share(client.share, data, lambda ref: key if ref == signer else None)
    if share.expired(now_ns):
        raise ShareRefusedError(f"share {share.ref} expired at {share.expires}")
    return share, data, key


def _checked(ref: BlobRef, data: bytes) -> bytes:
    if not ref.matches(data):
        raise IntegrityError(f"the server sent bytes for {ref} that do not match it: pull "
                             "stopped, nothing was stored")
    return data


def _fetch_graph(repo: Repository, client: ShareClient, incoming: Incoming,
                 progress: Progress) -> None:
    share, stage = incoming.share, incoming.stage
    progress.start("pull", None, "B")

    def obtain(ref: BlobRef, via: tuple, kind: str) -> bytes | None:
        if repo.has(ref):
            incoming.present += 1
            return None if kind == RAW else repo.get(ref)
        if stage.has(ref):
            incoming.present += 1
            return None if kind == RAW else stage.get(ref)
        data = _checked(ref, client.fetch(ref, (share.ref,) + via))
        stage.put(ref, data)
        incoming.fetched += 1
        incoming.fetched_bytes += len(data)
        progress.advance(len(data))
        return None if kind == RAW else data

    for _ in walk_graph(share.target, obtain, share.transitive):
        pass
    progress.finish()


# -- committing ----------------------------------------------------------------

def default_series_name(share: BlobRef) -> str:
    return f"shared-{share.hexdigest[:12]}"


def commit(repo: Repository, signer: jsonsign.Signer, incoming: Incoming,
           series_name: str | None = None, clock: Clock = time.time_ns) -> PullResult:
    """Store the staged graph and record it as a snapshot; nothing if it is incomplete."""
    share = incoming.share
    name = series_name or default_series_name(share.ref)
    _check_series(repo, name)
    missing = _missing(repo, incoming)
    if missing:
        incoming.stage.discard()  # running it again cannot help
        what = ("the share is not transitive, so only its target can be fetched"
                if not share.transitive else "the sender did not provide them")
        raise PullError(f"{len(missing)} blobs of the shared tree are missing (e.g. "
                        f"{missing[0]}): {what}; nothing was stored")
    stored = _store(repo, incoming)
    repo.put(incoming.key_blob, share.signer, kind=KIND_DATA)
    repo.put(incoming.share_blob, share.ref, kind=KIND_SIGNED)  # provenance; never served here
    repo.flush()  # every blob is in a pack before a claim names the target
    series, _ = ensure_series(repo, signer, name, clock=clock)
    wanted = {PULLED_FROM_ATTR: incoming.source, SHARE_ATTR: str(share.ref),
              SHARED_BY_ATTR: share.fingerprint}
    current = _attributes(repo, series)
    for attr, value in wanted.items():
        if current.get(attr) != (value,):
            add_claim(repo, signer, "set-attribute", series.permanode, attr, value, clock)
    latest = latest_snapshot(repo, series)
    snapshot = None
    if latest is None or latest.root != share.target:
        snapshot = str(record_snapshot(repo, signer, series, share.target, clock))
    repo.flush()
    incoming.stage.discard()
    return PullResult(
        share=str(share.ref), target=str(share.target), source=incoming.source, series=name,
        snapshot=snapshot, signer=str(share.signer), fingerprint=share.fingerprint,
        transitive=share.transitive, expires=str(share.expires) if share.expires else None,
        blobs_fetched=incoming.fetched, bytes_fetched=incoming.fetched_bytes,
        blobs_present=incoming.present, blobs_stored=stored)


def _check_series(repo: Repository, name: str) -> None:
    existing = find_series(repo, name)
    if existing is not None and PULLED_FROM_ATTR not in _attributes(repo, existing):
        raise UsageError(f"series {name!r} exists and holds your own snapshots; pull into "
                         "another one with --series NAME")


def _attributes(repo: Repository, series: Series) -> dict[str, tuple[str, ...]]:
    return ClaimsIndex.open(repo).state(series.permanode).attributes


def _missing(repo: Repository, incoming: Incoming) -> list[BlobRef]:
    """Blobs of the graph neither in the repository nor staged (reads schema blobs only)."""
    missing: list[BlobRef] = []
    stage = incoming.stage

    def obtain(ref: BlobRef, via: tuple, kind: str) -> bytes | None:
        if repo.has(ref):
            return None if kind == RAW else repo.get(ref)
        if stage.has(ref):
            return None if kind == RAW else stage.get(ref)
        missing.append(ref)
        return None

    for _ in walk_graph(incoming.share.target, obtain, incoming.share.transitive):
        pass
    return missing


def _store(repo: Repository, incoming: Incoming) -> int:
    stored = 0
    stage = incoming.stage

    def obtain(ref: BlobRef, via: tuple, kind: str) -> bytes | None:
        nonlocal stored
        if repo.has(ref):
            return None if kind == RAW else repo.get(ref)
        data = stage.get(ref)
        if kind == RAW:
            repo.put_data(data)  # file content stays data, even if it looks like JSON
        else:
            repo.put(data, ref)
        stored += 1
        return data

    for _ in walk_graph(incoming.share.target, obtain, incoming.share.transitive):
        pass
    return stored

