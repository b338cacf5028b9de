"""Offline bundles: a share and everything it opens, in one file sealed to one repository.

For places with no network between them. The sender writes the share
claim, the signer's public key blob and every blob of the target's graph
into one file that only the recipient's sharing key (`pkvc.sharekey`) can
open; the recipient imports it like a pull (`pkvc.pull.commit`): all or
nothing. The exact format is in docs/sharing.md; in short:

    magic        8 bytes   "PKVCBDL1"
    key length   u16 BE    length of the sealed file key (80)
    sealed key   crypto_box_seal(file key, recipient X25519 public key)
    stream head  24 bytes  crypto_secretstream_xchacha20poly1305 header
    frames       u32 BE length L, then L bytes: one secretstream message
                 (associated data: the magic), the last one tagged FINAL

Each frame's plaintext is one record: `M` + manifest JSON (first), `B` +
one byte ref length + ASCII blobref + the blob's bytes (one blob per frame,
so neither side ever holds more than one blob), `E` + end JSON (last,
FINAL). The secretstream binds the frames' order and detects truncation;
each blob is checked against its ref; the share's signature is checked
with the key blob carried inside. Any failure discards everything read.
"""

from __future__ import annotations

import json
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import nacl.bindings as sodium
import nacl.exceptions
from nacl.public import PrivateKey, PublicKey, SealedBox

from pkvc.blobref import BlobRef
from pkvc.errors import IntegrityError, PkvcError
from pkvc.progress import NO_PROGRESS, Progress
from pkvc.pull import Incoming, ShareRefusedError
from pkvc.repo import MAX_BLOB_SIZE, Repository
from pkvc.schema.timefmt import format_time
from pkvc.share import VerifiedShare, load_share, verify_share, walk_graph
from pkvc.sharekey import sharing_keys
from pkvc.staging import StagingArea

MAGIC = b"PKVCBDL1"
FORMAT = "pkvc-bundle"
VERSION = 1
_LEN = struct.Struct(">I")
_KEYLEN = struct.Struct(">H")
_HEADER_BYTES = sodium.crypto_secretstream_xchacha20poly1305_HEADERBYTES
_ABYTES = sodium.crypto_secretstream_xchacha20poly1305_ABYTES
_TAG_FINAL = sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL
MAX_FRAME = MAX_BLOB_SIZE + 512 + _ABYTES
REC_MANIFEST, REC_BLOB, REC_END = b"M", b"B", b"E"


class BundleError(IntegrityError):
    """The file is not a bundle, or it was damaged or tampered with."""


class NotForUsError(PkvcError):
    """The bundle is sealed to another repository's sharing key."""


@dataclass(frozen=True)
class BundleSummary:
    path: str
    share: str
    target: str
    blobs: int
    bytes: int  # blob bytes carried (before sealing)
    size: int  # the file's size


# -- writing -------------------------------------------------------------------

class _Sealer:
    def __init__(self, out, key: bytes):
        self.out = out
        self.state = sodium.crypto_secretstream_xchacha20poly1305_state()
        out.write(sodium.crypto_secretstream_xchacha20poly1305_init_push(self.state, key))

    def frame(self, record: bytes, final: bool = False) -> None:
        sealed = sodium.crypto_secretstream_xchacha20poly1305_push(
            self.state, record, MAGIC, _TAG_FINAL if final else 0)
        self.out.write(_LEN.pack(len(sealed)))
        self.out.write(sealed)


def _blob_record(ref: BlobRef, data: bytes) -> bytes:
    name = str(ref).encode()
    return REC_BLOB + bytes([len(name)]) + name + bytes(data)


def write_bundle(repo: Repository, share_ref: BlobRef, recipient: bytes, path: Path,
                 progress: Progress = NO_PROGRESS, clock=time.time_ns) -> BundleSummary:
    """Write the share and its whole graph to `path`, sealed to `recipient` (32 bytes)."""
    share = load_share(repo, share_ref)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    file_key = os.urandom(sodium.crypto_secretstream_xchacha20poly1305_KEYBYTES)
    sealed_key = SealedBox(PublicKey(bytes(recipient))).encrypt(file_key)
    blobs = carried = 0
    progress.start("bundle", None, "B")
    try:
        with open(tmp, "wb") as out:
            out.write(MAGIC + _KEYLEN.pack(len(sealed_key)) + sealed_key)
            sealer = _Sealer(out, file_key)
            manifest = {"format": FORMAT, "version": VERSION, "share": str(share.ref),
                        "target": str(share.target), "signer": str(share.signer),
                        "created": format_time(clock())}
            sealer.frame(REC_MANIFEST + json.dumps(manifest, sort_keys=True).encode())
            for ref in (share.ref, share.signer):
                data = repo.get(ref)
                sealer.frame(_blob_record(ref, data))
                blobs, carried = blobs + 1, carried + len(data)

            def obtain(ref: BlobRef, via: tuple, kind: str) -> bytes:
                nonlocal blobs, carried
                data = repo.get(ref)
                sealer.frame(_blob_record(ref, data))
                blobs, carried = blobs + 1, carried + len(data)
                progress.advance(len(data))
                return data

            for _ in walk_graph(share.target, obtain, transitive=True):
                pass
            sealer.frame(REC_END + json.dumps({"blobs": blobs, "bytes": carried}).encode(),
                         final=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise PkvcError(f"cannot write the bundle {path}: {e.strerror or e}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        progress.finish()
    return BundleSummary(str(path), str(share.ref), str(share.target), blobs, carried,
                         path.stat().st_size)


# -- reading -------------------------------------------------------------------

def is_bundle(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def _file_key(repo: Repository, sealed_key: bytes) -> bytes:
    for key in sharing_keys(repo):
        try:
            return SealedBox(PrivateKey(key.secret)).decrypt(sealed_key)
        except nacl.exceptions.CryptoError:
            continue
    raise NotForUsError("this bundle is sealed to another repository's sharing key "
                        "(`pkvc identity` prints this repository's); nothing was imported")


class _Opener:
    def __init__(self, f, key: bytes):
        self.f = f
        self.state = sodium.crypto_secretstream_xchacha20poly1305_state()
        header = _read_exact(f, _HEADER_BYTES)
        try:
            sodium.crypto_secretstream_xchacha20poly1305_init_pull(self.state, header, key)
        except (nacl.exceptions.CryptoError, ValueError, RuntimeError):
            raise _damaged("its stream header") from None
        self.final = False

    def frame(self) -> bytes:
        if self.final:
            raise _damaged("data after the final frame")
        (length,) = _LEN.unpack(_read_exact(self.f, _LEN.size))
        if length < _ABYTES or length > MAX_FRAME:
            raise _damaged(f"a frame length of {length}")
        sealed = _read_exact(self.f, length)
        try:
            record, tag = sodium.crypto_secretstream_xchacha20poly1305_pull(self.state, sealed,
                                                                            MAGIC)
        except (nacl.exceptions.CryptoError, ValueError, RuntimeError):
            raise _damaged("a frame that fails authentication") from None
        self.final = tag == _TAG_FINAL
        return record


def _read_exact(f, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise _damaged("the file is truncated")
    return data


def _damaged(what: str) -> BundleError:
    return BundleError(f"the bundle is damaged or was tampered with ({what}); nothing was "
                       "imported")


def read_bundle(repo: Repository, path: Path, cache_dir: Path,
                progress: Progress = NO_PROGRESS, now_ns: int | None = None) -> Incoming:
    """Open, verify and stage a bundle addressed to this repository; commit it with
    `pull.commit`. Nothing reaches the repository from here."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise PkvcError(f"cannot read {path}: {e.strerror or e}") from None
    with f:
        if f.read(len(MAGIC)) != MAGIC:
            raise BundleError(f"{path} is not a pkvc bundle")
        (key_len,) = _KEYLEN.unpack(_read_exact(f, _KEYLEN.size))
        opener = _Opener(f, _file_key(repo, _read_exact(f, key_len)))
        manifest = _manifest(opener.frame())
        share_ref = BlobRef.parse(manifest["share"])
        stage = StagingArea(repo, cache_dir, f"bundle-{share_ref.hash_name}-{share_ref.hexdigest}")
        stage.discard()
        try:
            share, kept, count, carried = _read_blobs(opener, manifest, stage, progress)
            if f.read(1):
                raise _damaged("data after the final frame")
            if share.expired(now_ns):
                raise ShareRefusedError(f"share {share.ref} in this bundle expired at "
                                        f"{share.expires}; nothing was imported")
        except BaseException:
            stage.discard()
            raise
    incoming = Incoming(share, f"bundle:{path.resolve()}", stage, kept[share.ref],
                        kept[share.signer])
    incoming.fetched, incoming.fetched_bytes = count, carried
    return incoming


def _manifest(record: bytes) -> dict:
    if record[:1] != REC_MANIFEST:
        raise _damaged("no manifest first")
    try:
        manifest = json.loads(record[1:])
        if manifest["format"] != FORMAT or manifest["version"] != VERSION:
            raise BundleError(f"unsupported bundle format {manifest['format']} "
                              f"{manifest['version']}")
        for key in ("share", "target", "signer"):
            BlobRef.parse(manifest[key])
    except (ValueError, KeyError, TypeError):
        raise _damaged("its manifest") from None
    return manifest


def _read_blobs(opener: _Opener, manifest: dict, stage: StagingArea,
                progress: Progress) -> tuple[VerifiedShare, dict[BlobRef, bytes], int, int]:
    share_ref, signer = BlobRef.parse(manifest["share"]), BlobRef.parse(manifest["signer"])
    kept: dict[BlobRef, bytes] = {}
    count = carried = 0
    progress.start("import", None, "B")
    while not opener.final:
        record = opener.frame()
        if record[:1] == REC_END:
            break
        ref, data = _blob(record)
        count, carried = count + 1, carried + len(data)
        if ref in (share_ref, signer):
            kept[ref] = data
        if ref != share_ref:
            stage.put(ref, data)  # the key blob may also be a file of the tree
        progress.advance(len(data))
    progress.finish()
    if not opener.final or record[:1] != REC_END:
        raise _damaged("no end record")
    try:
        end = json.loads(record[1:])
    except ValueError:
        raise _damaged("its end record") from None
    if end.get("blobs") != count or end.get("bytes") != carried:
        raise _damaged("a blob count that does not match")
    if share_ref not in kept or signer not in kept:
        raise _damaged("no share claim or signer key")
    try:
        share = verify_share(share_ref, kept[share_ref],
                             lambda ref: kept.get(ref) if ref == signer else None)
    except PkvcError as e:
        raise BundleError(f"the bundle's share claim does not verify ({e}); nothing was "
                          "imported") from None
    if str(share.target) != manifest["target"] or share.signer != signer:
        raise _damaged("a manifest that does not match its share claim")
    return share, kept, count, carried


def _blob(record: bytes) -> tuple[BlobRef, bytes]:
    if record[:1] != REC_BLOB or len(record) < 2:
        raise _damaged("an unknown record")
    n = record[1]
    ref = BlobRef.parse_or_none(record[2:2 + n].decode("ascii", errors="replace"))
    data = record[2 + n:]
    if ref is None or not ref.matches(data):
        raise _damaged(f"a blob that does not match its ref {ref}")
    return ref, data
