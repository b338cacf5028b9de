"""The porcelain: one function per command, taking plain values, returning data.

The CLI parses arguments, gathers the password and the cache directory, and
renders what these functions return; nothing here prints or reads the
environment. Scripts may call these functions directly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pkvc import identity, keyslots, series as series_mod
from pkvc.backends import open_backend
from pkvc.blobref import BlobRef
from pkvc.errors import BlobNotFoundError, SchemaError, UsageError
from pkvc.progress import NO_PROGRESS, Progress, bytes_of
from pkvc.repo import Repository, SyncReport
from pkvc.schema.canonical import looks_like_schema, parse_schema

# Modules only some commands need are imported by those commands: every
# command pays for what is imported here (docs/performance.md).
if TYPE_CHECKING:
    from pkvc import (bundle as bundle_mod, gc as gc_mod, pull as pull_mod, restore, retention,
                      share as share_mod, snapshot as snapshot_mod)
    from pkvc.check import CheckReport


@dataclass(frozen=True)
class Session:
    """Where the repository is and how to open it."""

    url: str
    password: bytes
    cache_dir: Path


def init(session: Session, gpg_key: str | None = None, user_gnupghome: Path | None = None,
         passphrase: str | None = None) -> tuple[Repository, identity.Identity]:
    """Create a repository and its signing identity; the caller closes the repository."""
    repo = Repository.create(open_backend(session.url), session.password, session.cache_dir)
    try:
        ident = identity.create_identity(repo, gpg_key, user_gnupghome, passphrase)
    except BaseException:
        repo.close()
        raise
    return repo, ident


def open_repo(session: Session, progress: Progress = NO_PROGRESS, write: bool = True) -> Repository:
    """Open; `write=False` takes no writer lease, so a gc never waits for a reader
    and `has` answers what is stored even while a gc plan is pending."""
    return Repository.open(open_backend(session.url), session.password, session.cache_dir, progress,
                           lease=write)


# -- key slots ---------------------------------------------------------------

def key_list(repo: Repository) -> list[keyslots.KeySlot]:
    return keyslots.list_slots(repo.backend)


def key_add(repo: Repository, new_password: bytes) -> str:
    return keyslots.add_slot(repo.backend, repo.master_key, new_password, repo.config.id)


def key_remove(repo: Repository, slot_id: str) -> None:
    keyslots.remove_slot(repo.backend, slot_id)


def key_passwd(repo: Repository, new_password: bytes) -> str:
    """Replace the password that opened the repository: new slot first, then drop the old."""
    new_id = key_add(repo, new_password)
    keyslots.remove_slot(repo.backend, repo.slot_id)
    return new_id


# -- blobs ---------------------------------------------------------------------

def resolve_ref(repo: Repository, text: str) -> BlobRef:
    """A full blobref, or a unique prefix of one stored in the repository."""
    ref = BlobRef.parse_or_none(text)
    if ref is not None:
        return ref
    if not text or "-" not in text:
        raise UsageError(f"{text!r} is not a blobref (expected sha224-<hex> or a unique prefix)")
    matches = [r for r, _ in repo.enumerate() if str(r).startswith(text)]
    if not matches:
        raise BlobNotFoundError(f"no blob starts with {text}")
    if len(matches) > 1:
        raise UsageError(f"{text} is ambiguous: {len(matches)} blobs start with it")
    return matches[0]


def get_blob(repo: Repository, text: str) -> bytes:
    return repo.get(resolve_ref(repo, text))


@dataclass
class PutSummary:
    path: str
    ref: str
    files: int
    dirs: int
    bytes_read: int
    errors: list[tuple[str, str]]


def put_paths(repo: Repository, paths: list[Path], progress: Progress = NO_PROGRESS,
              ) -> list[PutSummary]:
    """Store each path (file or tree) and return its top ref; unreadable entries are listed."""
    from pkvc import tree
    summaries = []
    progress.start("put", None, "B")
    for path in paths:
        result = tree.put_path(path, repo, progress=bytes_of(progress, tree.BytesRead),
                               chunker=repo.config.chunker)
        summaries.append(PutSummary(str(path), str(result.ref), result.files, result.dirs,
                                    result.bytes_read, result.errors))
    repo.flush()
    progress.finish()
    return summaries


def restore_tree(repo: Repository, text: str, output: Path, force: bool = False,
                 progress: Progress = NO_PROGRESS) -> restore.RestoreResult:
    """Write the file or tree named by `text` into `output` (never outside it)."""
    from pkvc import restore
    ref = resolve_ref(repo, text)
    output = Path(output)
    if output.exists() and any(output.iterdir()) and not force:
        raise UsageError(f"{output} is not empty; use --force to restore into it anyway")
    output.parent.mkdir(parents=True, exist_ok=True)
    progress.start("restore", None, "B")
    result = restore.restore(ref, output, repo, bytes_of(progress, restore.BytesWritten),
                             overwrite=force)
    progress.finish()
    return result


def file_contents(repo: Repository, text: str):
    """The bytes of a `file` blob's content, streamed in blocks."""
    from pkvc import restore
    return restore.iter_file_bytes(resolve_ref(repo, text), repo)


@dataclass
class Description:
    ref: str
    size: int
    kind: str  # "schema", "signed" or "data"
    camli_type: str | None
    json: dict | None


def describe(repo: Repository, text: str) -> Description:
    ref = resolve_ref(repo, text)
    data = repo.get(ref)
    if looks_like_schema(data):
        try:
            blob = parse_schema(data)
        except SchemaError:
            pass  # JSON-ish content that is not schema: plain data
        else:
            kind = "signed" if "camliSig" in blob else "schema"
            return Description(str(ref), len(data), kind, blob.get("camliType"), blob)
    return Description(str(ref), len(data), "data", None, None)


def check(repo: Repository, read_data: bool = False, progress: Progress = NO_PROGRESS) -> CheckReport:
    from pkvc.check import check_repository
    return check_repository(repo, read_data, progress)


def reindex(repo: Repository, progress: Progress = NO_PROGRESS) -> SyncReport:
    return repo.reindex(progress)


# -- the Git-style layer -------------------------------------------------------

def snapshot(repo: Repository, path: Path, series: str | None = None, tags=(), excludes=(),
             progress: Progress = NO_PROGRESS) -> snapshot_mod.SnapshotSummary:
    from pkvc import snapshot as snapshot_mod
    with identity.open_identity(repo) as signer:
        return snapshot_mod.take_snapshot(repo, signer, path, series, tags, excludes, progress)


@dataclass
class LogEntry:
    series: str
    claim: str
    date: str
    root: str
    signer: str | None
    key_id: str
    verified: bool
    number: int | None
    added_bytes: int | None
    forgotten: bool = False


def log(repo: Repository, series: str | None = None,
        include_forgotten: bool = False) -> list[LogEntry]:
    """One series' snapshots newest first (with `include_forgotten`, also those
    forgotten and not yet collected), or every series with its latest."""
    from pkvc import forget as forget_mod
    if series is not None:
        chosen = series_mod.get_series(repo, series)
        snaps = series_mod.snapshots(repo, chosen, include_invalid=True)
        valid = [s for s in snaps if s.verified]
        older = {s.claim: valid[i + 1].root if i + 1 < len(valid) else None
                 for i, s in enumerate(valid)}
        entries = [(s.date.ns, _log_entry(repo, chosen.name, s, older.get(s.claim), s.verified))
                   for s in snaps]
        if include_forgotten:
            entries += [(date.ns, LogEntry(chosen.name, str(claim), str(date), str(root), None, "",
                                           True, None, None, True))
                        for claim, date, root in forget_mod.forgotten_snapshots(repo, chosen)]
        return [e for _, e in sorted(entries, key=lambda pair: pair[0], reverse=True)]
    entries = []
    for each in series_mod.list_series(repo):
        snaps = series_mod.snapshots(repo, each)
        if snaps:
            prev = snaps[1].root if len(snaps) > 1 else None
            entries.append(_log_entry(repo, each.name, snaps[0], prev, True))
    return entries


def _log_entry(repo: Repository, name: str, snap, previous_root, measure: bool) -> LogEntry:
    from pkvc import snapshot as snapshot_mod
    added = snapshot_mod.added_size(repo, previous_root, snap.root) if measure else None
    return LogEntry(name, str(snap.claim), str(snap.date), str(snap.root),
                    str(snap.signer) if snap.signer else None, snap.key_id, snap.verified,
                    snap.number, added)


def checkout(repo: Repository, spec: str, output: Path, force: bool = False,
             progress: Progress = NO_PROGRESS) -> restore.RestoreResult:
    """Restore the snapshot (or the entry at :PATH in it) named by `spec` into `output`."""
    resolved = series_mod.resolve(repo, spec)
    return restore_tree(repo, str(resolved.ref), output, force, progress)


def list_series(repo: Repository) -> list[series_mod.Series]:
    return series_mod.list_series(repo)


@dataclass
class ListedEntry:
    path: str
    type: str
    size: int | None
    mode: str | None
    mtime: str | None
    ref: str


def ls(repo: Repository, spec: str) -> list[ListedEntry]:
    """Everything below the snapshot or path that `spec` names, depth first."""
    resolved = series_mod.resolve(repo, spec)
    out = []
    for entry in series_mod.walk(repo, resolved.ref):
        blob = entry.blob
        meta = getattr(blob, "meta", None)
        out.append(ListedEntry(
            os.fsdecode(entry.path), blob.camli_type, getattr(blob, "size", None),
            meta.to_map().get("unixPermission") if meta is not None else None,
            str(meta.mtime) if meta is not None and meta.mtime is not None else None,
            str(entry.ref)))
    return out


def diff(repo: Repository, a: str, b: str) -> series_mod.TreeDiff:
    return series_mod.diff_trees(repo, series_mod.resolve(repo, a).ref,
                                 series_mod.resolve(repo, b).ref)


def attr(repo: Repository, permanode: str, name: str, value: str | None, mode: str) -> BlobRef:
    pn = resolve_ref(repo, permanode)
    with identity.open_identity(repo) as signer:
        return series_mod.set_attribute(repo, signer, pn, name, value, mode)


def describe_permanode(repo: Repository, text: str, at: str | None = None):
    """The permanode's attributes (as of `at`) and claim history, or None if not one."""
    ref = resolve_ref(repo, text)
    when = series_mod.parse_date(at) if at else None
    try:
        return series_mod.describe_permanode(repo, ref, when)
    except (UsageError, BlobNotFoundError):
        return None


# -- forgetting and garbage collection ---------------------------------------

def forget(repo: Repository, target: str, policy: retention.Policy | None = None,
           dry_run: bool = False):
    """Forget by policy (target = a series) or one snapshot (target = its claim ref)."""
    from pkvc import forget as forget_mod
    with identity.open_identity(repo) as signer:
        if policy is not None:
            return forget_mod.forget_by_policy(repo, signer, target, policy, dry_run)
        claim = resolve_ref(repo, target)
        if dry_run:
            return {"would_forget": str(claim)}
        return {"forgotten": str(claim),
                "delete_claim": str(forget_mod.forget_snapshot(repo, signer, claim))}


def unforget(repo: Repository, claim: str) -> list[str]:
    from pkvc import forget as forget_mod
    ref = resolve_ref(repo, claim) if BlobRef.parse_or_none(claim) is None else BlobRef.parse(claim)
    with identity.open_identity(repo) as signer:
        return [str(r) for r in forget_mod.unforget(repo, signer, ref)]


def delete_series(repo: Repository, name: str) -> str:
    from pkvc import forget as forget_mod
    with identity.open_identity(repo) as signer:
        return str(forget_mod.delete_series(repo, signer, name))


def gc(repo: Repository, max_unused: float | None = None, dry_run: bool = False,
       progress: Progress = NO_PROGRESS) -> gc_mod.GcSummary:
    """`max_unused` None: gc's default."""
    from pkvc import gc as gc_mod
    if max_unused is None:
        max_unused = gc_mod.DEFAULT_MAX_UNUSED
    return gc_mod.gc(repo, max_unused=max_unused, dry_run=dry_run, progress=progress)


# -- sharing -------------------------------------------------------------------


@dataclass
class ShareCreated:
    share: str
    target: str
    transitive: bool
    expires: str | None
    url: str | None
    place: share_mod.TargetPlace | None
    bundle: bundle_mod.BundleSummary | None = None


@dataclass
class ShareListing:
    share: str
    target: str
    transitive: bool
    expires: str | None
    expired: bool
    revoked: bool
    live: bool
    created: str
    key_id: str
    series: str | None
    snapshot: str | None
    date: str | None
    path: str | None
    url: str | None


def share_url(url_base: str | None, ref) -> str | None:
    return f"{url_base.rstrip('/')}/share/{ref}" if url_base else None


def share_target(repo: Repository, spec: str) -> tuple[BlobRef, share_mod.TargetPlace | None]:
    """What `share SPEC` shares: SERIES[@REV][:PATH], a blobref, or a unique prefix."""
    from pkvc import share as share_mod
    ref = BlobRef.parse_or_none(spec)
    if ref is not None:
        return ref, None
    try:
        found = series_mod.resolve(repo, spec)
    except (UsageError, BlobNotFoundError):
        if "-" in spec and spec.split("-", 1)[0].isalnum():
            return resolve_ref(repo, spec), None
        raise
    place = share_mod.TargetPlace(found.series.name if found.series else "", str(found.snapshot.claim),
                                  str(found.snapshot.date), os.fsdecode(found.path or b""))
    return found.ref, place


def share(repo: Repository, spec: str, expires: str | None = None, transitive: bool = True,
          url_base: str | None = None, bundle: Path | None = None, to: str | None = None,
          progress: Progress = NO_PROGRESS) -> ShareCreated:
    """Sign a share of what `spec` names; with `bundle`, also write it sealed to `to`."""
    from pkvc import bundle as bundle_mod
    from pkvc import share as share_mod
    from pkvc import sharekey
    if (bundle is None) != (to is None):
        raise UsageError("--bundle FILE and --to PUBLIC_KEY go together")
    if bundle is not None and not transitive:
        raise UsageError("a bundle carries the whole tree: --no-transitive does not apply")
    recipient = sharekey.parse_public_key(to) if to is not None else None
    if bundle is not None and (not Path(bundle).parent.is_dir() or Path(bundle).is_dir()):
        raise UsageError(f"cannot write a bundle to {bundle}: no such directory, or it is one")
    target, place = share_target(repo, spec)
    when = share_mod.parse_expiry(expires) if expires else None
    with identity.open_identity(repo) as signer:
        ref = share_mod.create_share(repo, signer, target, transitive=transitive, expires=when)
    if place is not None:
        share_mod.remember_place(repo, ref, place)
    written = None
    if bundle is not None:
        written = bundle_mod.write_bundle(repo, ref, recipient, bundle, progress)
    return ShareCreated(str(ref), str(target), transitive, str(when) if when else None,
                        share_url(url_base, ref), place, written)


def shares(repo: Repository, url_base: str | None = None) -> list[ShareListing]:
    """Every share, revoked and expired ones too, with where its target sits."""
    from pkvc import share as share_mod
    from pkvc.claims import ClaimsIndex
    out = []
    for s in share_mod.list_shares(repo, index=ClaimsIndex.open(repo)):
        place = share_mod.place_of(repo, s.ref, s.target)
        out.append(ShareListing(
            str(s.ref), str(s.target), s.transitive, str(s.expires) if s.expires else None,
            s.expired, s.revoked, s.live, str(s.created), s.key_id,
            place.series if place else None, place.snapshot if place else None,
            place.date if place else None, place.path if place else None,
            share_url(url_base, s.ref)))
    return out


def unshare(repo: Repository, text: str) -> BlobRef:
    """Revoke a share with a signed delete claim; the claim's ref."""
    from pkvc import share as share_mod
    from pkvc.claims import ClaimsIndex
    ref = resolve_ref(repo, text)
    if ClaimsIndex.open(repo).is_deleted(ref):
        raise UsageError(f"share {ref} is already revoked")
    with identity.open_identity(repo) as signer:
        return share_mod.revoke_share(repo, signer, ref)


def sharing_identity(repo: Repository) -> str:
    """The public sharing key (`x25519-<hex>`) that bundles for this repository are sealed to."""
    from pkvc import sharekey
    return sharekey.sharing_key(repo).text


def open_for_serving(session: Session, progress: Progress = NO_PROGRESS) -> Repository:
    """Open read-only: a server that runs for days must hold no write lease, or a gc
    would wait for it (and the lease would lapse while idle)."""
    backend = open_backend(session.url)
    try:
        return Repository.open(backend, session.password, session.cache_dir, progress,
                               lease=False)
    except TypeError:  # a Repository without leases (before gc): every open is plain
        return Repository.open(backend, session.password, session.cache_dir, progress)


def serve(repo: Repository, listen: str | None = None, tls_cert: Path | None = None,
          tls_key: Path | None = None, on_ready=None):
    """Serve the repository's shares until SIGINT/SIGTERM (open it with open_for_serving);
    returns a `server.ServeResult`. The HTTP stack is imported only by this command."""
    from pkvc import server as server_mod
    return server_mod.serve(repo, listen or server_mod.DEFAULT_LISTEN, tls_cert, tls_key,
                            on_ready)


def pull(repo: Repository, source: str, cache_dir: Path, series: str | None = None,
         cafile: Path | None = None, progress: Progress = NO_PROGRESS) -> pull_mod.PullResult:
    """Fetch a share from a server URL, or import a bundle file; all or nothing."""
    from pkvc import bundle as bundle_mod
    from pkvc import pull as pull_mod
    if source.startswith(("http://", "https://")):
        incoming = pull_mod.gather(repo, source, cache_dir, cafile, progress)
    elif Path(source).is_file():
        incoming = bundle_mod.read_bundle(repo, Path(source), cache_dir, progress)
    else:
        raise UsageError(f"{source!r} is neither an http(s) share URL nor a bundle file")
    with identity.open_identity(repo) as signer:
        return pull_mod.commit(repo, signer, incoming, series)
