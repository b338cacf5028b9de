"""The share server: Perkeep's share protocol over HTTP, for `pkvc serve`.

One route, `GET|HEAD /share/<blobref>[?via=<ref>,<ref>...][&assemble=1]`,
decided by `pkvc.access.ShareGate`; see docs/sharing.md for the rules and
an example chain. Starlette runs on uvicorn (h11); every repository read
runs in the thread pool, so slow disks never block the event loop and many
clients are served at once. Answers:

    200  the blob's bytes (application/octet-stream), or with assemble=1 the
         file's content, streamed
    400  not GET/HEAD, a path that is not a blobref, a via that is not a
         list of blobrefs
    401  everything else that fails; the reason is never told, and every
         refusal takes at least `pad` seconds (200 ms) so timing cannot tell
         a missing blob from a forbidden one
    500  the repository could not read a blob it should have

Every answer carries `Access-Control-Allow-Origin: *`. SIGINT and SIGTERM
stop the server gracefully (open responses get a few seconds to finish),
after which `serve` returns and the caller closes the repository.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from pkvc.access import Grant, Refused, ShareGate
from pkvc.blobref import BlobRef
from pkvc.errors import PkvcError, UsageError
from pkvc.repo import Repository

DEFAULT_LISTEN = "127.0.0.1:3179"
PAD_SECONDS = 0.2
MAX_REQUEST_HEAD = 1 << 20  # a deep tree's via chain is long: ~57 bytes per hop
_CORS = {"Access-Control-Allow-Origin": "*"}
_OCTETS = "application/octet-stream"


@dataclass(frozen=True)
class ServeResult:
    url: str
    stopped_by: str | None  # the signal's name, if one stopped it


# -- the application ---------------------------------------------------------------

def make_app(gate: ShareGate, pad: float = PAD_SECONDS) -> Starlette:
    """The ASGI application serving `/share/` from `gate`."""

    async def share(request: Request) -> Response:
        started = time.monotonic()
        chain = _chain(request)
        if chain is None:
            return await _fail(400, "invalid blobref or via\n", started, pad)
        assemble = request.query_params.get("assemble") == "1"
        try:
            grant, data = await run_in_threadpool(_decide, gate, chain, assemble, started)
        except Refused:
            return await _fail(401, "unauthorized\n", started, pad)
        except PkvcError:
            return await _fail(500, "the repository could not read this blob\n", started, pad)
        head = request.method == "HEAD"
        if grant.assemble:
            headers = {**_CORS, "Content-Length": str(grant.size)}
            if head:
                return Response(b"", headers=headers, media_type=_OCTETS)
            return StreamingResponse(gate.iter_file(grant), headers=headers, media_type=_OCTETS)
        headers = {**_CORS, "Content-Length": str(len(data))}
        return Response(b"" if head else data, headers=headers, media_type=_OCTETS)

    async def other_method(request: Request, exc) -> Response:
        return await _fail(400, "invalid method\n", time.monotonic(), pad)

    return Starlette(routes=[Route("/share/{ref:path}", share, methods=["GET", "HEAD"])],
                     exception_handlers={405: other_method})


def _chain(request: Request) -> list[BlobRef] | None:
    ref = BlobRef.parse_or_none(request.path_params["ref"])
    if ref is None:
        return None
    via = request.query_params.get("via") or ""
    chain = []
    for text in via.split(",") if via else []:
        hop = BlobRef.parse_or_none(text)
        if hop is None:
            return None
        chain.append(hop)
    return chain + [ref]


def _decide(gate: ShareGate, chain: list[BlobRef], assemble: bool,
            since: float) -> tuple[Grant, bytes | None]:
    grant = gate.authorize(chain, assemble, since)
    return grant, None if grant.assemble else gate.read(grant)


async def _fail(status: int, text: str, started: float, pad: float) -> Response:
    await asyncio.sleep(max(0.0, pad - (time.monotonic() - started)))
    headers = dict(_CORS)
    if status == 401:
        headers["WWW-Authenticate"] = 'Haveref realm="pkvc share"'
    return Response(text, status_code=status, headers=headers, media_type="text/plain")


# -- running it ------------------------------------------------------------------

class _Server(uvicorn.Server):
    """uvicorn, except that a signal ends `run` normally instead of being re-raised,
    so the caller can close the repository and exit cleanly."""

    stopped_by: str | None = None

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_signal(sig, frame):
            self.stopped_by = signal.Signals(sig).name
            self.handle_exit(sig, frame)

        originals = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[V6]:PORT` or `:PORT` (loopback); port 0 picks a free one."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--listen {text!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def serve(repo: Repository, listen: str = DEFAULT_LISTEN, tls_cert: Path | None = None,
          tls_key: Path | None = None, on_ready: Callable[[str], None] | None = None,
          pad: float = PAD_SECONDS) -> ServeResult:
    """Serve the repository's shares until SIGINT or SIGTERM; `on_ready(url)` once listening."""
    if (tls_cert is None) != (tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    host, port = parse_listen(listen)
    _check_tls(tls_cert, tls_key)
    gate = ShareGate(repo)
    gate.refresh()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = _listen(family, host, port)
    except OSError as e:
        raise UsageError(f"cannot listen on {listen}: {e.strerror}") from None
    config = uvicorn.Config(
        make_app(gate, pad), loop="asyncio", http="h11", lifespan="off", log_level="warning",
        access_log=False, h11_max_incomplete_event_size=MAX_REQUEST_HEAD,
        timeout_graceful_shutdown=5,
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None)
    server = _Server(config)
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    url = f"{'https' if tls_cert else 'http'}://{shown}:{sock.getsockname()[1]}"
    try:
        if on_ready is not None:
            on_ready(url)
        server.run(sockets=[sock])
    finally:
        sock.close()
    return ServeResult(url, server.stopped_by)


def _listen(family: int, host: str, port: int) -> socket.socket:
    """A listening TCP socket. Made with proto IPPROTO_TCP on purpose: asyncio sets
    TCP_NODELAY only on such sockets, and without it every small answer waits
    ~40 ms for the client's delayed ACK (Nagle)."""
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(512)
    except OSError:
        sock.close()
        raise
    return sock


def _check_tls(cert: Path | None, key: Path | None) -> None:
    if cert is None:
        return
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as e:
        raise UsageError(f"cannot use --tls-cert {cert} / --tls-key {key}: {e}") from None
