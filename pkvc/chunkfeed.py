"""Big files chunked and hashed on a thread of their own, while the walk goes on.

A big file costs a snapshot mostly C work that releases the GIL: reading,
SHA-224 and (on the packer's threads) zstd and sealing. Done in line, the
walker waits for it and nothing else is walked meanwhile; a tree's small
files, where the walker is the bottleneck, then never overlap with its big
ones, where the sealer is. So the walker hands a big file's open fd to a
`ChunkFeed`; one thread reads and chunks it (`chunk_fd`) and hashes each
chunk, and hands the pieces back, in order, through a small bounded queue
that the walker empties between entries (`take`). Everything that touches
the repository stays on the walker's thread.

Memory: at most `MAX_QUEUED` bytes of pieces wait (the thread waits beyond
that), plus the chunker's own window; at most `MAX_FILES` files are in
flight, each holding its fd.
"""

from __future__ import annotations

import os
import threading
from collections import deque

from pkvc.blobref import BlobRef
from pkvc.chunker import Piece, chunk_fd

MAX_QUEUED = 8 * 1024 * 1024  # bytes of pieces waiting for the walker
MAX_FILES = 4  # files submitted and not yet taken to the end

DONE = object()  # the last item of a file: every piece of it came before


class _Stopped(Exception):
    """The feed was closed while the thread was handing a piece over."""


class ChunkFeed:
    """One thread chunking the files `submit`ted, in order of submission.

    `take` returns `(token, item)` pairs, where item is a `Piece` (with its
    ref), then `DONE`, or the exception that ended the file (an OSError
    for a read error: the caller decides what it costs).
    """

    def __init__(self, params):
        self._params = params
        self._lock = threading.Condition()
        self._jobs: deque = deque()  # (fd, previous, token) not started
        self._out: deque = deque()  # (token, item) not taken
        self._queued = 0  # bytes of pieces in _out
        self._files = 0  # submitted, DONE not taken yet
        self._stopped = False
        self._thread: threading.Thread | None = None

    @property
    def busy(self) -> bool:
        """Whether a file is in flight (cheap: the walker asks between entries)."""
        return self._files > 0

    @property
    def full(self) -> bool:
        return self._files >= MAX_FILES

    def submit(self, fd: int, previous, token) -> None:
        """Chunk the open file `fd` (the feed closes it); `previous` as `chunk_fd`'s."""
        with self._lock:
            self._jobs.append((fd, previous, token))
            self._files += 1
            self._lock.notify_all()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pkvc-chunk", daemon=True)
            self._thread.start()

    def take(self, wait: bool) -> list:
        """The pieces handed back so far; with `wait`, at least one item
        unless no file is in flight."""
        with self._lock:
            while wait and not self._out and self._files:
                self._lock.wait()
            items = list(self._out)
            self._out.clear()
            self._queued = 0
            self._files -= sum(1 for _, item in items if not isinstance(item, Piece))
            self._lock.notify_all()
        return items

    def close(self) -> None:
        """Stop the thread; files not chunked yet are closed unread."""
        with self._lock:
            self._stopped = True
            jobs, self._jobs = list(self._jobs), deque()
            self._lock.notify_all()
        for fd, _, _ in jobs:
            os.close(fd)
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._jobs and not self._stopped:
                    self._lock.wait()
                if self._stopped:
                    return
                fd, previous, token = self._jobs.popleft()
            try:
                end = self._chunk(fd, previous, token)
            except _Stopped:
                return
            except BaseException as e:  # handed to the walker, raised or reported there
                end = e
            finally:
                os.close(fd)
            try:
                self._hand_over(token, end, 0)
            except _Stopped:
                return

    def _chunk(self, fd: int, previous, token):
        for piece in chunk_fd(fd, self._params, previous=previous):
            if piece.data is not None and piece.ref is None:
                piece = Piece(piece.offset, piece.size, piece.data, BlobRef.of(piece.data))
            self._hand_over(token, piece, piece.size if piece.data is not None else 0)
        return DONE

    def _hand_over(self, token, item, size: int) -> None:
        with self._lock:
            while self._queued and self._queued + size > MAX_QUEUED and not self._stopped:
                self._lock.wait()
            if self._stopped:
                raise _Stopped
            self._out.append((token, item))
            self._queued += size
            self._lock.notify_all()
