"""Sharing end to end: `share`, a real `pkvc serve` on loopback, `pull`, bundles.

Every server here is the real command in a subprocess on 127.0.0.1, port 0
(it prints the URL it got), stopped at the end with SIGTERM (or SIGINT),
which must be a clean exit. One sharer repository and one server are shared
by the module's tests, as a real server would be; blobs are looked up over
HTTP where that saves a command.
"""

from __future__ import annotations

import datetime
import hashlib
import http.server
import ipaddress
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import PASSWORD, Pkvc

from fstree import make_rich_tree, tree_state
from pkvc.blobref import BlobRef
from pkvc.share import walk_graph

PAD = 0.2
MiB = 1 << 20


# -- helpers ---------------------------------------------------------------------

def new_pkvc(home: Path, init: bool = True) -> Pkvc:
    home.mkdir(parents=True)
    pkvc = Pkvc(home)
    if init:
        pkvc.ok("init")
    return pkvc


class Server:
    """`pkvc serve` in a subprocess; `url` is the /share/ prefix it printed."""

    def __init__(self, pkvc: Pkvc, *extra):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pkvc", "serve", "--listen", "127.0.0.1:0", *map(str, extra)],
            env=pkvc.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(60):
            self.proc.kill()
            raise AssertionError("pkvc serve did not start in time")
        line = self.proc.stdout.readline().decode().strip()
        assert line.startswith("serving shares at "), (line, self.proc.stderr.read())
        self.url = line.split()[3]  # http://127.0.0.1:PORT/share/

    def stop(self, sig=signal.SIGTERM) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err.decode()


def fetch(url: str, context=None, method: str = "GET") -> tuple[int, bytes, dict, float]:
    """(status, body, headers, seconds) for one request."""
    t = time.monotonic()
    request = urllib.request.Request(url, method=method, data=b"x" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as resp:
            body, status, headers = resp.read(), resp.status, dict(resp.headers)
    except urllib.error.HTTPError as e:
        body, status, headers = e.read(), e.code, dict(e.headers)
    return status, body, {k.lower(): v for k, v in headers.items()}, time.monotonic() - t


def ok(url: str) -> bytes:
    status, body, headers, _ = fetch(url)
    assert status == 200 and headers["access-control-allow-origin"] == "*", (url, status)
    return body


def refused(url: str) -> bool:
    status, _, headers, seconds = fetch(url)
    assert headers.get("access-control-allow-origin") == "*"
    if status == 401:
        assert seconds >= PAD, f"refusal after {seconds:.3f} s: not padded"
    return status == 401


def share(pkvc: Pkvc, *args) -> str:
    return pkvc.ok("share", *args).out.split()[0]


def schema(body: bytes) -> dict:
    return json.loads(body)


def pack_files(pkvc: Pkvc) -> set[str]:
    return {str(p.relative_to(pkvc.repo)) for p in (pkvc.repo / "packs").rglob("*") if p.is_file()}


def staged(pkvc: Pkvc) -> list[Path]:
    return list(pkvc.cache.glob("*/staging/*"))


def graph_size(url: str, share_ref: str) -> int:
    """How many blobs the share opens, walked over HTTP with pkvc's own link rules."""
    share_blob = ok(url + share_ref)
    target = BlobRef.parse(schema(share_blob)["target"])
    via_of = lambda via: ",".join([share_ref] + [str(r) for r in via])  # noqa: E731
    return sum(1 for _ in walk_graph(
        target, lambda ref, via, kind: ok(f"{url}{ref}?via={via_of(via)}")))


@dataclass
class World:
    sharer: Pkvc
    src: Path
    server: Server
    puller: Pkvc
    tmp: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sharing")
    sharer = new_pkvc(tmp / "sharer")
    src = make_rich_tree(tmp / "src")
    sharer.ok("snapshot", src, "--series", "home")
    server = Server(sharer)
    puller = new_pkvc(tmp / "puller")
    yield World(sharer, src, server, puller, tmp)
    code, err = server.stop()
    assert code == 0 and "stopped by SIGTERM" in err and "Traceback" not in err, err


# -- the whole way -----------------------------------------------------------------

def test_pull_then_checkout_is_byte_identical(world):
    w = world
    ref = share(w.sharer, "home", "--expires", "7d")
    result = w.puller.ok("pull", w.server.url + ref, "--series", "from-home", "--json").json()
    assert result["share"] == ref and result["snapshot"]
    assert result["blobs_fetched"] == graph_size(w.server.url, ref) > 10

    w.puller.ok("checkout", "from-home", "--output", w.tmp / "out")
    assert tree_state(w.tmp / "out") == tree_state(w.src)
    log = w.puller.ok("log", "from-home", "--json").json()
    assert len(log) == 1 and log[0]["root"] == result["target"] and log[0]["verified"]
    paths = {e["path"] for e in w.puller.ok("ls", "from-home", "--json").json()}
    assert {"a.txt", "sub/deep/h1", "pipe"} <= paths

    series = w.puller.ok("series", "--json").json()
    described = w.puller.ok("describe", series[0]["permanode"], "--json").json()
    attrs = described["permanode"]["state"]["attributes"]
    assert attrs["pkvcPulledFrom"] == [w.server.url + ref] and attrs["pkvcShare"] == [ref]

    again = w.puller.ok("pull", w.server.url + ref, "--series", "from-home", "--json").json()
    assert again["blobs_fetched"] == 0 and again["snapshot"] is None
    w.puller.ok("check", "--read-data")  # the sharer's claim and key are kept: all resolves
    assert w.puller.ok("shares", "--json").json() == []  # the sharer's share is not ours


def test_refusals_are_401_and_padded(world):
    u, sharer = world.server.url, world.sharer
    whole = share(sharer, "home")
    sub_share = share(sharer, "home:sub")
    plain = share(sharer, "home:sub", "--no-transitive")
    root = schema(ok(u + whole))["target"]
    root_entries = schema(ok(f"{u}{root}?via={whole}"))["entries"]
    members = schema(ok(f"{u}{root_entries}?via={whole},{root}"))["members"]
    names = {schema(ok(f"{u}{m}?via={whole},{root},{root_entries}")).get("fileName"): m
             for m in members}
    sub, outside = names["sub"], names["a.txt"]
    assert schema(ok(u + sub_share))["target"] == sub
    # what works
    assert ok(f"{u}{sub}?via={sub_share}")
    assert ok(f"{u}{sub}?via={plain}")
    sub_entries = schema(ok(f"{u}{sub}?via={sub_share}"))["entries"]
    assert ok(f"{u}{sub_entries}?via={sub_share},{sub}")
    # an unknown share; a non-share as the first element
    assert refused(f"{u}sha224-{'ab' * 28}")
    assert refused(f"{u}{sub}?via=sha224-{'cd' * 28}")
    assert refused(f"{u}{sub}")
    # blobs outside the target's graph, or skipping a hop
    assert refused(f"{u}{outside}?via={sub_share}")
    assert refused(f"{u}{outside}?via={sub_share},{sub}")
    assert refused(f"{u}{outside}?via={whole},{root}")
    # a via chain on a non-transitive share
    assert refused(f"{u}{sub_entries}?via={plain},{sub}")
    # malformed requests are 400, still with CORS
    for url, method in ((f"{u}not-a-ref", "GET"), (f"{u}{sub}?via={sub_share},nonsense", "GET"),
                        (f"{u}{sub_share}", "POST")):
        status, _, headers, _ = fetch(url, method=method)
        assert status == 400 and headers["access-control-allow-origin"] == "*"


def test_expired_revoked_and_forged_shares_are_refused_without_restart(world):
    u, sharer = world.server.url, world.sharer
    revoked = share(sharer, "home")
    root = schema(ok(u + revoked))["target"]
    soon = share(sharer, "home", "--expires", "3s")
    claim = ok(u + soon)
    assert ok(f"{u}{root}?via={soon}") and ok(f"{u}{root}?via={revoked}")

    sharer.ok("unshare", revoked[:20])
    assert refused(f"{u}{root}?via={revoked}") and refused(f"{u}{revoked}")
    assert sharer("unshare", revoked).code == 2  # already revoked

    # a share claim whose signature does not verify: stored as a signed blob, and as a file
    forged = claim.replace(b'"transitive": true', b'"transitive": false')
    assert forged != claim
    _put_signed_blob(sharer, forged)
    forged_ref = "sha224-" + hashlib.sha224(forged).hexdigest()
    assert refused(f"{u}{forged_ref}") and refused(f"{u}{root}?via={forged_ref}")
    in_a_file = claim.replace(b'"transitive": true', b'"transitive":  true')
    (world.tmp / "forged").write_bytes(in_a_file)
    sharer.ok("put", world.tmp / "forged")
    in_a_file_ref = "sha224-" + hashlib.sha224(in_a_file).hexdigest()
    assert refused(f"{u}{root}?via={in_a_file_ref}")

    listed = {s["share"]: s for s in sharer.ok("shares", "--json").json()}
    assert listed[revoked]["revoked"] and not listed[soon]["revoked"]
    assert (listed[soon]["series"], listed[soon]["path"]) == ("home", "")
    assert forged_ref not in listed and in_a_file_ref not in listed
    expires = datetime.datetime.fromisoformat(listed[soon]["expires"].replace("Z", "+00:00"))
    time.sleep(max(0.0, (expires - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
                   + 0.3))
    assert refused(f"{u}{root}?via={soon}")
    assert {s["share"]: s for s in sharer.ok("shares", "--json").json()}[soon]["expired"]


def _put_signed_blob(pkvc: Pkvc, data: bytes) -> None:
    """Store bytes as the repository stores claims (no command writes a forged one)."""
    from pkvc.backends.local import LocalBackend
    from pkvc.pack import KIND_SIGNED
    from pkvc.repo import Repository

    with Repository.open(LocalBackend(pkvc.repo), PASSWORD.encode(), pkvc.cache) as repo:
        repo.put(data, kind=KIND_SIGNED)


# -- lying servers, interruptions -------------------------------------------------------

class Proxy:
    """Forwards GETs to a share server; `tamper(n, status, body)` may change answers."""

    def __init__(self, upstream: str, tamper):
        self.count = 0
        proxy, origin = self, upstream.split("/share/")[0]

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                proxy.count += 1
                status, body, _, _ = fetch(origin + self.path)
                status, body = tamper(proxy.count, status, body)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/share/"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def proxy():
    made = []

    def make(upstream, tamper):
        made.append(Proxy(upstream, tamper))
        return made[-1]
    yield make
    for p in made:
        p.close()


def test_wrong_bytes_make_pull_fail_with_nothing_stored(world, proxy):
    ref = share(world.sharer, "home")

    def flip_fifth(n, status, body):
        return status, (bytes([body[0] ^ 1]) + body[1:]) if n == 5 and body else body

    lying = proxy(world.server.url, flip_fifth)
    puller = new_pkvc(world.tmp / "trusting")
    before = pack_files(puller)
    result = puller("pull", lying.url + ref)
    assert result.code == 1 and "do not match" in result.err, result.err
    assert lying.count == 5  # stopped at the first wrong blob
    assert pack_files(puller) == before and staged(puller) == []
    assert puller.ok("series", "--json").json() == []


def test_an_interrupted_pull_resumes(world, proxy):
    ref = share(world.sharer, "home")
    dying = proxy(world.server.url, lambda n, status, body: (503, b"gone") if n > 8
                  else (status, body))
    puller = new_pkvc(world.tmp / "patient")
    before = pack_files(puller)
    result = puller("pull", dying.url + ref)
    assert result.code == 1 and "again to resume" in result.err, result.err
    assert pack_files(puller) == before and len(staged(puller)) == 1
    done = puller.ok("pull", world.server.url + ref, "--json").json()
    assert done["blobs_present"] == 6  # requests 3-8 were staged: not fetched again
    assert done["blobs_fetched"] + done["blobs_present"] == graph_size(world.server.url, ref)
    assert staged(puller) == []


# -- hostile trees -------------------------------------------------------------------

def _hostile_tree(repo_dir: Path, cache: Path) -> str:
    """A directory a malicious sharer could make: one hostile subdirectory per trick."""
    from pkvc.backends.local import LocalBackend
    from pkvc.pack import KIND_DATA
    from pkvc.repo import Repository
    from pkvc.schema.fsnodes import DirectoryBlob, FileBlob, SymlinkBlob, UnixMeta
    from pkvc.schema.parts import Part
    from pkvc.schema.staticset import StaticSetBlob

    with Repository.open(LocalBackend(repo_dir), PASSWORD.encode(), cache) as repo:
        payload = repo.put(b"pwned\n", kind=KIND_DATA)

        def file(name: bytes):
            return repo.put(FileBlob(name, (Part(6, payload),), UnixMeta(0o644)).to_json())

        def directory(name: bytes, *members):
            entries = repo.put(StaticSetBlob(tuple(members)).to_json())
            return repo.put(DirectoryBlob(name, entries, UnixMeta(0o755)).to_json())

        def link(name: bytes, target: bytes):
            return repo.put(SymlinkBlob(name, target).to_json())

        top = directory(
            b"top",
            directory(b"dotdot", file(b"ok"), file(b"..")),
            directory(b"absolute", file(b"/tmp/pkvc-pwned-abs")),
            directory(b"slashes", file(b"../../pwned")),
            directory(b"link-then-dir", link(b"esc", b"../../victim"),
                      directory(b"esc", file(b"pwned"))),
            directory(b"link-then-file", link(b"f", b"../../victim/pwned"), file(b"f")),
            directory(b"links-out", link(b"abs", b"/etc"), link(b"up", b"../../victim"),
                      file(b"fine")))
        repo.flush()
    return str(top)


def test_hostile_names_never_write_outside_the_checkout(world):
    w = world
    ref = share(w.sharer, _hostile_tree(w.sharer.repo, w.sharer.cache))
    w.puller.ok("pull", w.server.url + ref, "--series", "evil")
    victim = w.tmp / "victim"
    victim.mkdir()
    (victim / "keep").write_text("mine")
    work = w.tmp / "work" / "deeper"
    work.mkdir(parents=True)
    for name in ("dotdot", "absolute", "link-then-dir", "link-then-file"):
        result = w.puller("checkout", f"evil:{name}", "--output", work / name)
        assert result.code == 1, (name, result.err)
        assert "refused name" in result.err or "two entries" in result.err, (name, result.err)
    w.puller.ok("checkout", "evil:links-out", "--output", work / "links-out")
    assert os.readlink(work / "links-out" / "up") == "../../victim"
    assert sorted(p.name for p in victim.iterdir()) == ["keep"]
    assert not Path("/tmp/pkvc-pwned-abs").exists()
    assert not any(p.name == "pwned" for p in w.tmp.rglob("*") if work not in p.parents)


# -- bundles ---------------------------------------------------------------------------

def test_bundle_round_trip_wrong_recipient_and_tampering(world):
    w = world
    friend = new_pkvc(w.tmp / "friend")
    key = friend.ok("identity").out.strip()
    assert key.startswith("x25519-") and len(key) == 71
    bundle = w.tmp / "home.pkb"
    made = w.sharer.ok("share", "home", "--bundle", bundle, "--to", key, "--json").json()
    assert made["bundle"]["blobs"] > 10

    stranger = w.puller  # another repository, with a sharing key of its own
    before = pack_files(stranger)
    result = stranger("pull", bundle)
    assert result.code == 1 and "another repository" in result.err, result.err
    assert pack_files(stranger) == before

    data = bytearray(bundle.read_bytes())
    data[len(data) // 3] ^= 0x20
    (w.tmp / "tampered.pkb").write_bytes(bytes(data))
    before = pack_files(friend)
    result = friend("pull", w.tmp / "tampered.pkb")
    assert result.code == 1 and "tampered" in result.err, result.err
    assert pack_files(friend) == before and staged(friend) == []

    done = friend.ok("pull", bundle, "--series", "carried", "--json").json()
    assert done["share"] == made["share"]
    friend.ok("checkout", "carried", "--output", w.tmp / "carried")
    assert tree_state(w.tmp / "carried") == tree_state(w.src)


# -- https, a second server beside the first ------------------------------------------------

def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_https_and_a_clean_sigint(world):
    w = world
    cert, key = _self_signed(w.tmp)
    server = Server(w.sharer, "--tls-cert", cert, "--tls-key", key)
    try:
        assert server.url.startswith("https://127.0.0.1:")
        ref = share(w.sharer, "home:sub")
        untrusted = w.puller("pull", server.url + ref)
        assert untrusted.code == 1 and "certificate" in untrusted.err.lower(), untrusted.err
        done = w.puller.ok("pull", server.url + ref, "--tls-ca", cert, "--json").json()
        assert done["snapshot"] and done["share"] == ref
    finally:
        code, err = server.stop(signal.SIGINT)
    assert code == 0 and "stopped by SIGINT" in err, err


# -- many clients ------------------------------------------------------------------------------

@pytest.mark.slow
def test_eight_clients_pull_the_same_100_mib_share_at_once(world):
    w = world
    src = w.tmp / "big"
    src.mkdir()
    digest = hashlib.sha256()
    with open(src / "data.bin", "wb") as f:
        for _ in range(100):
            block = os.urandom(MiB)
            digest.update(block)
            f.write(block)
    w.sharer.ok("snapshot", src, "--series", "big")
    ref = share(w.sharer, "big")
    template = new_pkvc(w.tmp / "many" / "0")
    pullers = [template]
    for i in range(1, 8):  # copies of one initialized repository: one key generation
        home = w.tmp / "many" / str(i)
        shutil.copytree(template.repo, home / "repo")
        pullers.append(Pkvc(home))
    procs = [subprocess.Popen([sys.executable, "-m", "pkvc", "pull", w.server.url + ref, "--json"],
                              env=p.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL) for p in pullers]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()
        results.append(json.loads(out))
    assert {r["target"] for r in results} == {results[0]["target"]}
    assert all(r["bytes_fetched"] >= 100 * MiB for r in results)
    last = pullers[-1]
    last.ok("checkout", results[-1]["series"], "--output", w.tmp / "many-out")
    with open(w.tmp / "many-out" / "data.bin", "rb") as f:
        assert hashlib.file_digest(f, "sha256").digest() == digest.digest()
    assert all(r["snapshot"] for r in results)
    assert last.ok("log", results[-1]["series"], "--json").json()[0]["root"] == results[-1]["target"]
