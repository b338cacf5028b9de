"""Leases and gc plans: how writers and a gc share a repository without a lock.

Terms (docs/gc.md tells the whole protocol and why):

- A *lease* (`sessions/<32 hex>`) says "a process that may rely on blobs it
  saw is running here". Writers take one before their first `has`/`put`,
  refresh it while they run and delete it when they finish; a gc holds one
  of kind "gc", which is also how two gcs keep out of each other's way. A
  lease has *ended* when its object is gone, when it was not refreshed for
  its `ttl`, or when it names a process on this machine that no longer runs.
- A *plan* (`plans/<32 hex>`) is what a gc publishes before it deletes
  anything: the blobs it *condemns* (will remove), the packs it will delete
  (after copying what stays out of them), its *tombstone* pack (copies of
  delete claims, deleted last) and the leases it *waits for* (those that
  may have seen the condemned blobs as present). Writers that start while a
  plan exists treat its condemned blobs as absent and store them again.

Both objects are sealed with keys derived from the master key, with the
object's name bound as associated data: the backend sees random names,
sizes and timing, never a blobref, a host name or a pid.

`RefSet` is the compact set both sides use: sorted binary ref keys in one
buffer per key length, about 29 bytes per sha224 ref, searched by bisection.
"""

from __future__ import annotations

import json
import operator
import os
import secrets
import socket
import struct
import sys
import time
from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from itertools import accumulate, islice
from dataclasses import dataclass, field, replace

from pkvc import crypto
from pkvc.backends import Backend
from pkvc.blobref import BlobRef
from pkvc.errors import BackendError, IntegrityError, PkvcError

SESSIONS = "sessions/"
PLANS = "plans/"
SESSION_PURPOSE = "pkvc-session"
PLAN_PURPOSE = "pkvc-gc-plan"
DEFAULT_TTL = 30 * 60.0  # seconds a lease stays valid without a refresh
KIND_WRITE = "write"
KIND_GC = "gc"
_NS = 1_000_000_000


class LeaseExpiredError(PkvcError):
    """A writer went longer than its lease allows without renewing it.

    A gc may since have removed blobs this writer had seen, so it stops
    before writing anything that could name them; run the command again.
    """


# -- a compact set of refs -----------------------------------------------------

class SortedKeys:
    """Fixed-width keys in ascending order in one buffer: a sequence for
    `bisect`, with a first-level index on two digest bytes once it is large
    (a lookup then bisects a few dozen keys, not millions)."""

    __slots__ = ("width", "data", "starts")

    def __init__(self, width: int, data: bytes):
        self.width = width
        self.data = bytes(data)  # (a bytearray's slices would not hash)
        self.starts = None
        n = len(data) // width
        if n > 4096 and width >= 3 and data[0] == data[(n - 1) * width]:
            pairs = bytearray(2 * n)  # the two digest bytes of every key, as big-endian u16
            pairs[0::2], pairs[1::2] = self.data[1::width], self.data[2::width]
            prefixes = array("H", pairs)
            if sys.byteorder == "little":
                prefixes.byteswap()
            counts = [0] * 65536
            for b, c in Counter(prefixes).items():  # one C pass, not 65,536 bisections
                counts[b] = c
            self.starts = array("I", accumulate(counts, initial=0))

    def __len__(self) -> int:
        return len(self.data) // self.width

    def __getitem__(self, i: int) -> bytes:
        w = self.width
        return self.data[i * w:(i + 1) * w]

    def index(self, key: bytes) -> int:
        """Position of `key` (of this width), or -1."""
        if self.starts is not None and key[:1] == self.data[:1]:
            b = key[1] << 8 | key[2]
            lo, hi = self.starts[b], self.starts[b + 1]
            if hi - lo <= 16:  # a few keys: one C search, not a bisection of Python calls
                w = self.width
                at, end = lo * w, hi * w
                while True:
                    at = self.data.find(key, at, end)
                    if at < 0 or at % w == 0:
                        return at // w if at >= 0 else -1
                    at += 1  # (found across two keys: not one of them)
        else:
            lo, hi = 0, len(self)
        i = bisect_left(self, key, lo, hi)
        return i if i < hi and self[i] == key else -1

    def nbytes(self) -> int:
        return len(self.data) + (4 * len(self.starts) if self.starts is not None else 0)


class RefSet:
    """An immutable set of blobrefs in sorted buffers (no object per ref)."""

    def __init__(self, groups: dict[int, bytes] | None = None):
        self._groups = {w: SortedKeys(w, d) for w, d in (groups or {}).items() if d}

    @classmethod
    def build(cls, keys: Iterable[bytes]) -> "RefSet":
        """From ref keys (`BlobRef.to_key()`) in any order; duplicates dropped."""
        by_width: dict[int, set[bytes]] = {}
        for key in keys:
            by_width.setdefault(len(key), set()).add(bytes(key))
        return cls({w: b"".join(sorted(s)) for w, s in by_width.items()})

    @classmethod
    def from_sorted(cls, keys: Iterable[bytes]) -> "RefSet":
        """From ref keys already in ascending byte order (an index scan):
        appended as they come, no per-ref object kept; checked and appended a
        few thousand at a time, in C when they are of one width."""
        bufs: dict[int, bytearray] = {}
        last: dict[int, bytes] = {}
        keys = iter(keys)
        while chunk := list(islice(keys, 4096)):
            widths = set(map(len, chunk))
            w = len(chunk[0])
            prev = last.get(w)
            if len(widths) == 1 and (prev is None or prev < chunk[0]) and all(
                    map(operator.lt, chunk, islice(chunk, 1, None))):
                bufs.setdefault(w, bytearray()).extend(b"".join(chunk))
                last[w] = bytes(chunk[-1])
                continue
            for key in chunk:
                w = len(key)
                prev = last.get(w)
                if prev is not None and key <= prev:
                    if key == prev:
                        continue
                    raise ValueError("RefSet.from_sorted needs ascending keys")
                bufs.setdefault(w, bytearray()).extend(key)
                last[w] = bytes(key)
        return cls(dict(bufs))

    def __contains__(self, ref) -> bool:
        key = ref.to_key() if isinstance(ref, BlobRef) else ref
        group = self._groups.get(len(key))
        return group is not None and group.index(key) >= 0

    def __len__(self) -> int:
        return sum(len(g) for g in self._groups.values())

    def __bool__(self) -> bool:
        return bool(self._groups)

    def keys(self) -> Iterator[bytes]:
        for w in sorted(self._groups):
            g = self._groups[w]
            for i in range(len(g)):
                yield g[i]

    def __iter__(self) -> Iterator[BlobRef]:
        return (BlobRef.from_key(k) for k in self.keys())

    def nbytes(self) -> int:
        return sum(g.nbytes() for g in self._groups.values())

    def to_bytes(self) -> bytes:
        out = bytearray()
        for w in sorted(self._groups):
            data = self._groups[w].data
            out += struct.pack("<BI", w, len(data) // w) + data
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> "RefSet":
        groups, pos = {}, 0
        while pos < len(data):
            w, n = struct.unpack_from("<BI", data, pos)
            pos += 5
            groups[w] = data[pos:pos + w * n]
            pos += w * n
        return cls(groups)

    @staticmethod
    def union(sets: Iterable["RefSet"]) -> "RefSet":
        sets = [s for s in sets if s]
        if len(sets) == 1:
            return sets[0]
        return RefSet.build(k for s in sets for k in s.keys())


EMPTY = RefSet()


# -- leases -------------------------------------------------------------------------

def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str:
    """The kernel's start time of a process ('' if unknown): tells pid reuse apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2:].split()[19].decode()
    except (OSError, ValueError, IndexError):
        return ""


def _process_alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not start or _start_time(pid) in ("", start)


@dataclass(frozen=True)
class Lease:
    id: str
    kind: str
    host: str
    boot: str
    pid: int
    pid_start: str
    started: int  # ns since the epoch, the holder's clock
    refreshed: int
    ttl: float  # seconds

    def expired(self, now: int) -> bool:
        return now - self.refreshed > self.ttl * _NS

    def is_local(self) -> bool:
        return self.host == socket.gethostname() and self.boot == _boot_id() != ""

    def ended(self, now: int) -> bool:
        """Expired, or held by a process of this machine that is gone."""
        if self.expired(now):
            return True
        return self.is_local() and not _process_alive(self.pid, self.pid_start)

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True).encode()


class SessionStore:
    """Leases on the backend, sealed under a subkey of the master key."""

    def __init__(self, backend: Backend, key: bytes, repo_id: str,
                 clock: Callable[[], int] = time.time_ns):
        self.backend = backend
        self._key = key
        self._repo_id = repo_id
        self.clock = clock

    def _ad(self, lease_id: str) -> bytes:
        return f"pkvc session {self._repo_id} {lease_id}".encode()

    def begin(self, kind: str, ttl: float = DEFAULT_TTL) -> Lease:
        now = self.clock()
        pid = os.getpid()
        lease = Lease(secrets.token_hex(16), kind, socket.gethostname(), _boot_id(), pid,
                      _start_time(pid), now, now, float(ttl))
        self._store(lease)
        return lease

    def refresh(self, lease: Lease) -> Lease:
        lease = replace(lease, refreshed=self.clock())
        self._store(lease)
        return lease

    def end(self, lease: Lease) -> None:
        self.backend.delete(SESSIONS + lease.id)

    def _store(self, lease: Lease) -> None:
        self.backend.store(SESSIONS + lease.id,
                           crypto.seal(self._key, lease.to_json(), self._ad(lease.id)))

    def ids(self) -> list[str]:
        return [info.name[len(SESSIONS):] for info in self.backend.list(SESSIONS)]

    def load(self, lease_id: str) -> Lease | None:
        """The lease, None if it is gone; unreadable ones raise IntegrityError."""
        try:
            sealed = self.backend.load(SESSIONS + lease_id)
        except BackendError:
            if not self.backend.exists(SESSIONS + lease_id):
                return None
            raise
        raw = crypto.unseal(self._key, sealed, self._ad(lease_id), f"session {lease_id}")
        try:
            return Lease(**json.loads(raw))
        except (ValueError, TypeError) as e:
            raise IntegrityError(f"session {lease_id} is malformed: {e}") from None

    def active(self, ids: Iterable[str] | None = None) -> list[Lease | str]:
        """Leases that have not ended (of `ids`, default all); an id stands for
        a lease that cannot be read, which counts as active (never guess)."""
        now = self.clock()
        out: list[Lease | str] = []
        for lease_id in (self.ids() if ids is None else ids):
            try:
                lease = self.load(lease_id)
            except (IntegrityError, BackendError):
                out.append(lease_id)
                continue
            if lease is not None and not lease.ended(now):
                out.append(lease)
        return out

    def sweep_ended(self, keep: Iterable[str] = ()) -> int:
        """Delete the objects of leases that ended (crashed holders); returns how many."""
        keep = set(keep)
        now, removed = self.clock(), 0
        for lease_id in self.ids():
            if lease_id in keep:
                continue
            try:
                lease = self.load(lease_id)
            except (IntegrityError, BackendError):
                continue
            if lease is not None and lease.ended(now):
                self.backend.delete(SESSIONS + lease_id)
                removed += 1
        return removed


# -- plans --------------------------------------------------------------------------

@dataclass
class Plan:
    """What a gc will remove; published before anything is removed."""

    id: str
    gc_session: str
    created: int
    packs: frozenset[str]
    waiting: tuple[str, ...] | None = None  # None: not recorded yet (wait for every lease)
    tombstones: tuple[str, ...] = ()  # named before they are stored; the last holds them all
    condemned: RefSet = field(default_factory=RefSet)

    @property
    def touched(self) -> frozenset[str]:
        """Every pack the plan will delete, its tombstones included."""
        return self.packs | frozenset(self.tombstones)

    def _header(self) -> bytes:
        return json.dumps({"id": self.id, "gc_session": self.gc_session, "created": self.created,
                           "packs": sorted(self.packs),
                           "waiting": None if self.waiting is None else list(self.waiting),
                           "tombstones": list(self.tombstones)}, sort_keys=True).encode()

    def to_bytes(self) -> bytes:
        header = self._header()
        return struct.pack("<I", len(header)) + header + self.condemned.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Plan":
        (n,) = struct.unpack_from("<I", data, 0)
        h = json.loads(data[4:4 + n])
        waiting = None if h.get("waiting") is None else tuple(h["waiting"])
        return cls(h["id"], h["gc_session"], h["created"], frozenset(h["packs"]), waiting,
                   tuple(h.get("tombstones", ())), RefSet.from_bytes(data[4 + n:]))


class PlanStore:
    def __init__(self, backend: Backend, key: bytes, repo_id: str):
        self.backend = backend
        self._key = key
        self._repo_id = repo_id

    def _ad(self, plan_id: str) -> bytes:
        return f"pkvc gc plan {self._repo_id} {plan_id}".encode()

    def publish(self, plan: Plan) -> None:
        self.backend.store(PLANS + plan.id, crypto.seal(self._key, plan.to_bytes(), self._ad(plan.id)))

    def remove(self, plan_id: str) -> None:
        self.backend.delete(PLANS + plan_id)

    def load_all(self, strict: bool = True) -> list[Plan]:
        """Every pending plan. One that cannot be read is an IntegrityError when
        `strict` (writers and gc must not miss a condemned blob), else left out."""
        plans = []
        for info in self.backend.list(PLANS):
            plan_id = info.name[len(PLANS):]
            try:
                sealed = self.backend.load(info.name)
            except BackendError:
                if not self.backend.exists(info.name):
                    continue  # removed since the listing: its gc finished
                if strict:
                    raise
                continue
            try:
                raw = crypto.unseal(self._key, sealed, self._ad(plan_id), f"gc plan {plan_id}")
                plans.append(Plan.from_bytes(raw))
            except (IntegrityError, ValueError, KeyError, struct.error) as e:
                if strict:
                    raise IntegrityError(f"gc plan {plan_id} cannot be read: {e}") from None
        return sorted(plans, key=lambda p: (p.created, p.id))


@dataclass(frozen=True)
class PlanView:
    """What pending plans mean to a reader or writer of the repository."""

    condemned: RefSet = EMPTY
    touched: frozenset[str] = frozenset()
    plans: tuple[Plan, ...] = ()

    @classmethod
    def of(cls, plans: Iterable[Plan]) -> "PlanView":
        plans = tuple(plans)
        if not plans:
            return cls()
        return cls(RefSet.union(p.condemned for p in plans),
                   frozenset().union(*(p.touched for p in plans)), plans)

    def __bool__(self) -> bool:
        return bool(self.plans)
