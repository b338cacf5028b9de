"""The command line: parse, gather secrets, call `api`, render, map errors.

This is the only module that prints, reads the environment, or knows typer
and tqdm. Every `PkvcError` ends as one line on stderr and its exit code.
"""

from __future__ import annotations

import ctypes
import gc as pygc
import getpass
import json
import os
import shlex
import subprocess
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import List, Optional

import typer

from pkvc import api
from pkvc.schema.timefmt import SchemaTime
from pkvc.errors import (EXIT_CODES, EXIT_INTERRUPTED, EXIT_USAGE, PartialError, PkvcError,
                         UsageError)

_EXIT_TABLE = "\b\n" + "\n".join(f"{code:>3}  {meaning}" for code, meaning in EXIT_CODES.items())

app = typer.Typer(
    name="pkvc", no_args_is_help=True, add_completion=True, rich_markup_mode=None,
    pretty_exceptions_enable=False,
    help="Git-style versioned backups on Perkeep's data model.",
    epilog=f"Exit codes:\n\n{_EXIT_TABLE}",
    context_settings={"help_option_names": ["-h", "--help"]},
)
key_app = typer.Typer(help="Manage the passwords (key slots) that open the repository.",
                      no_args_is_help=True)
app.add_typer(key_app, name="key")


class Options:
    """Global options, available on every command."""

    def __init__(self, repo: str | None, as_json: bool, quiet: bool):
        self.repo = repo
        self.as_json = as_json
        self.quiet = quiet


@app.callback()
def _global_options(
    ctx: typer.Context,
    repo: Optional[str] = typer.Option(None, "--repo", "-r", envvar="PKVC_REPOSITORY",
                                       help="Repository URL or local path."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress and no chatter."),
):
    ctx.obj = Options(repo, as_json, quiet)


# -- secrets, paths and output ----------------------------------------------

def _strip_newline(data: bytes) -> bytes:
    return data[:-2] if data.endswith(b"\r\n") else data[:-1] if data.endswith(b"\n") else data


def _password_from_environment() -> bytes | None:
    if path := os.environ.get("PKVC_PASSWORD_FILE"):
        try:
            return _strip_newline(Path(path).expanduser().read_bytes())
        except OSError as e:
            raise UsageError(f"cannot read PKVC_PASSWORD_FILE {path}: {e.strerror}") from None
    if command := os.environ.get("PKVC_PASSWORD_COMMAND"):
        try:
            done = subprocess.run(shlex.split(command), capture_output=True, check=False)
        except OSError as e:
            raise UsageError(f"PKVC_PASSWORD_COMMAND failed to start: {e.strerror}") from None
        if done.returncode != 0:
            raise UsageError(f"PKVC_PASSWORD_COMMAND exited with status {done.returncode}")
        return _strip_newline(done.stdout)
    if "PKVC_PASSWORD" in os.environ:
        return os.environ["PKVC_PASSWORD"].encode()
    return None


def _prompt_password(prompt: str, confirm: bool) -> bytes:
    if not sys.stdin.isatty():
        raise UsageError("no password given: set PKVC_PASSWORD_FILE, PKVC_PASSWORD_COMMAND "
                         "or PKVC_PASSWORD, or run in a terminal")
    try:
        first = getpass.getpass(f"{prompt}: ")
        if confirm and getpass.getpass(f"{prompt} again: ") != first:
            raise UsageError("the passwords do not match")
    except (EOFError, OSError):
        raise UsageError("no password given: set PKVC_PASSWORD_FILE, PKVC_PASSWORD_COMMAND "
                         "or PKVC_PASSWORD, or run in a terminal") from None
    if not first:
        raise UsageError("an empty password is not allowed")
    return first.encode()


def _repository_password(confirm: bool = False) -> bytes:
    password = _password_from_environment()
    if password is None:
        password = _prompt_password("enter repository password", confirm)
    if not password:
        raise UsageError("an empty password is not allowed")
    return password


def _new_password(password_file: Optional[Path]) -> bytes:
    if password_file is not None:
        try:
            password = _strip_newline(password_file.read_bytes())
        except OSError as e:
            raise UsageError(f"cannot read {password_file}: {e.strerror}") from None
        if not password:
            raise UsageError(f"{password_file} holds an empty password")
        return password
    return _prompt_password("enter new password", confirm=True)


def _cache_dir() -> Path:
    if path := os.environ.get("PKVC_CACHE_DIR"):
        return Path(path).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pkvc"


def _session(ctx: typer.Context, confirm: bool = False) -> api.Session:
    opts: Options = ctx.obj
    if not opts.repo:
        raise UsageError("no repository given: use -r/--repo or set PKVC_REPOSITORY")
    return api.Session(opts.repo, _repository_password(confirm), _cache_dir())


class TqdmProgress:
    """Drives one tqdm bar per task on stderr, only for a human at a terminal."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._bar = None

    def start(self, task: str, total: int | None = None, unit: str = "it") -> None:
        self.finish()
        if self.enabled:
            from tqdm import tqdm  # only for a human at a terminal
            self._bar = tqdm(total=total, desc=task, unit=unit, unit_scale=unit == "B",
                             file=sys.stderr, leave=False, dynamic_ncols=True)

    def advance(self, amount: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(amount)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _progress(ctx: typer.Context) -> TqdmProgress:
    opts: Options = ctx.obj
    return TqdmProgress(not opts.quiet and not opts.as_json and sys.stderr.isatty())


def _jsonable(value):
    if isinstance(value, SchemaTime):
        return str(value)
    if is_dataclass(value):
        return {f.name: _jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (Path, bytes)):
        return os.fsdecode(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _emit(ctx: typer.Context, data, text: str | None = None) -> None:
    """JSON on stdout under --json; otherwise `text` unless --quiet."""
    opts: Options = ctx.obj
    if opts.as_json:
        typer.echo(json.dumps(_jsonable(data), indent=2, sort_keys=True))
    elif text is not None and not opts.quiet:
        typer.echo(text)


def _open(ctx: typer.Context, write: bool = True):
    return api.open_repo(_session(ctx), _progress(ctx), write)


# -- repository and keys -----------------------------------------------------

@app.command()
def init(ctx: typer.Context,
         gpg_key: Optional[str] = typer.Option(
             None, "--gpg-key", help="Sign with this existing GnuPG key (from $GNUPGHOME or "
             "~/.gnupg) instead of generating one.")):
    """Create a new, empty repository and its signing key."""
    session = _session(ctx, confirm=True)
    home = passphrase = None
    if gpg_key is not None:
        home = Path(os.environ.get("GNUPGHOME") or Path.home() / ".gnupg")
        passphrase = os.environ.get("PKVC_GPG_PASSPHRASE")
    repo, ident = api.init(session, gpg_key, home, passphrase)
    with repo:
        _emit(ctx, {"id": repo.config.id, "location": repo.backend.location, "key": repo.slot_id,
                    "signer": str(ident.public_key_ref), "fingerprint": ident.fingerprint},
              f"created repository {repo.config.id} at {repo.backend.location}\n"
              f"signing key {ident.fingerprint}")


_NEW_PASSWORD_FILE = typer.Option(
    None, help="Read the new password from this file instead of prompting.")


@key_app.command("list")
def key_list(ctx: typer.Context):
    """List key slots; * marks the one that opened the repository."""
    with _open(ctx, write=False) as repo:
        slots = api.key_list(repo)
        rows = [f"{'*' if s.id == repo.slot_id else ' '} {s.id}  {s.created}  {s.host}" for s in slots]
        _emit(ctx, [dict(_jsonable(s), current=s.id == repo.slot_id) for s in slots], "\n".join(rows))


@key_app.command("add")
def key_add(ctx: typer.Context,
            new_password_file: Optional[Path] = _NEW_PASSWORD_FILE):
    """Add another password that opens the repository."""
    with _open(ctx) as repo:
        slot_id = api.key_add(repo, _new_password(new_password_file))
        _emit(ctx, {"id": slot_id}, f"added key slot {slot_id}")


@key_app.command("remove")
def key_remove(ctx: typer.Context, slot_id: str = typer.Argument(..., help="Slot id or unique prefix.")):
    """Remove a key slot (never the last one)."""
    with _open(ctx) as repo:
        api.key_remove(repo, slot_id)
        _emit(ctx, {"removed": slot_id}, f"removed key slot {slot_id}")


@key_app.command("passwd")
def key_passwd(ctx: typer.Context,
               new_password_file: Optional[Path] = _NEW_PASSWORD_FILE):
    """Change the password that opened the repository."""
    with _open(ctx) as repo:
        slot_id = api.key_passwd(repo, _new_password(new_password_file))
        _emit(ctx, {"id": slot_id, "removed": repo.slot_id},
              f"password changed: key slot {slot_id} replaces {repo.slot_id}")


# -- plumbing ------------------------------------------------------------------

@app.command()
def put(ctx: typer.Context,
        paths: List[Path] = typer.Argument(..., help="Files or directories to store.")):
    """Store files or trees; print each one's top blobref (like pk-put)."""
    with _open(ctx) as repo:
        summaries = api.put_paths(repo, paths, _progress(ctx))
        stats = repo.stats
    _emit(ctx, {"results": summaries, "added": stats}, "\n".join(s.ref for s in summaries))
    _report_skipped([e for s in summaries for e in s.errors])


def _report_skipped(errors: list[tuple[str, str]]) -> None:
    """Name each unreadable entry on stderr; exit 3 if there were any."""
    _report_partial(errors, "skipped", "could not be read and were skipped")


def _report_not_restored(errors: list[tuple[str, str]]) -> None:
    """Name each entry a restore could not write, or read from the repository
    (a missing or damaged blob); exit 3 if there were any."""
    _report_partial(errors, "not restored", "could not be restored; everything else was")


def _report_partial(errors: list[tuple[str, str]], what: str, summary: str) -> None:
    if not errors:
        return
    for path, message in errors:
        typer.echo(f"pkvc: {what} {path}: {message}", err=True)
    raise PartialError(f"{len(errors)} entries {summary}")


@app.command()
def get(ctx: typer.Context,
        ref: str = typer.Argument(..., help="Blobref (or unique prefix) to fetch."),
        output: Optional[Path] = typer.Option(
            None, "--output", "-o", help="Restore the file or tree into this directory."),
        contents: bool = typer.Option(False, "--contents",
                                      help="Write a file blob's content to stdout."),
        force: bool = typer.Option(False, "--force", help="Restore into a non-empty directory.")):
    """Fetch a blob: raw to stdout, a file's content, or a tree into --output."""
    with _open(ctx, write=False) as repo:
        if output is not None:
            result = api.restore_tree(repo, ref, output, force, _progress(ctx))
            _emit(ctx, result, None)
            _report_not_restored(result.errors)
        elif contents:
            for block in api.file_contents(repo, ref):
                sys.stdout.buffer.write(block)
        else:
            sys.stdout.buffer.write(api.get_blob(repo, ref))
        sys.stdout.flush()


@app.command()
def describe(ctx: typer.Context, ref: str = typer.Argument(..., help="Blobref or unique prefix."),
             at: Optional[str] = typer.Option(None, "--at", help="A permanode's state at this date.")):
    """Pretty-print a schema blob; for a permanode, its attributes and claim history."""
    with _open(ctx, write=False) as repo:
        info = api.describe(repo, ref)
        permanode = api.describe_permanode(repo, ref, at) if info.camli_type == "permanode" else None
    if permanode is not None:
        _emit(ctx, {"blob": info, "permanode": permanode}, _permanode_text(permanode))
        return
    if at is not None:
        raise UsageError("--at applies to permanodes only")
    if info.json is not None:
        text = json.dumps(info.json, indent=2, ensure_ascii=False)
    else:
        text = f"{info.ref}: data blob, {info.size} bytes"
    _emit(ctx, info, text)


def _permanode_text(d) -> str:
    lines = [f"permanode {d.permanode}"]
    if d.info is not None:
        lines.append(f"  signed by {d.info.key_id}")
    for name, values in sorted(d.state.attributes.items()):
        lines.append(f"  {name} = {', '.join(values)}")
    lines.append("claims:")
    for h in d.history:
        c = h.claim
        edits = "; ".join(f"{ch.claim_type} {ch.attribute}"
                          + (f" {ch.value}" if ch.value is not None else "") for ch in c.changes)
        lines.append(f"  {c.date}  {edits}{'  (deleted)' if h.deleted else ''}  {str(c.ref)[:19]}")
    for h in d.deleted_by:
        lines.append(f"  deleted by {h.claim.ref} at {h.claim.date}"
                     f"{' (undone)' if h.deleted else ''}")
    for bad in d.invalid:
        lines.append(f"  ignored {bad.ref}: {bad.reason}")
    return "\n".join(lines)


@app.command()
def check(ctx: typer.Context,
          read_data: bool = typer.Option(False, "--read-data",
                                         help="Also decrypt and hash every blob.")):
    """Verify packs, index and references; never modifies anything."""
    with _open(ctx, write=False) as repo:
        report = api.check(repo, read_data, _progress(ctx))
    _emit(ctx, dict(_jsonable(report), ok=report.ok),
          f"{report.packs} packs, {report.blobs} blobs checked"
          + (f", {report.bytes_read} bytes read" if read_data else "")
          + (": no errors" if report.ok else f": {len(report.problems)} problems"))
    if not report.ok:
        if not ctx.obj.as_json:
            for problem in report.problems:
                typer.echo(f"damaged: {problem}", err=True)
        raise PkvcError(f"check found {len(report.problems)} problems")


@app.command()
def reindex(ctx: typer.Context):
    """Rebuild the local index from the pack headers."""
    with _open(ctx) as repo:
        report = api.reindex(repo, _progress(ctx))
    _emit(ctx, report, f"indexed {report.blobs_added} blobs from {report.packs_added} packs"
          + (f"; {len(report.damaged)} damaged packs skipped (run check)" if report.damaged else ""))


# -- the Git-style porcelain ---------------------------------------------------

@app.command()
def snapshot(ctx: typer.Context,
             path: Path = typer.Argument(..., help="The directory to snapshot."),
             series: Optional[str] = typer.Option(
                 None, "--series", "-s", help="Series name (default: the absolute path)."),
             tags: List[str] = typer.Option([], "--tag", "-t", help="Tag the series (repeatable)."),
             excludes: List[str] = typer.Option(
                 [], "--exclude", "-e", help="gitignore-style pattern to leave out (repeatable).")):
    """Snapshot a directory into its series; print the snapshot's claim ref."""
    fewer_malloc_arenas()  # before any thread of the pipeline allocates
    with _open(ctx) as repo:
        summary = api.snapshot(repo, path, series, tags, excludes, _progress(ctx))
    _emit(ctx, summary, summary.claim)
    _report_skipped(summary.errors)


@app.command()
def log(ctx: typer.Context,
        series: Optional[str] = typer.Argument(None, help="Series name (default: every series)."),
        all_: bool = typer.Option(False, "--all", help="Also forgotten snapshots not yet collected.")):
    """A series' snapshots newest first, or every series with its latest snapshot."""
    if all_ and series is None:
        raise UsageError("--all needs a SERIES")
    with _open(ctx, write=False) as repo:
        entries = api.log(repo, series, include_forgotten=all_)
    lines = []
    for e in entries:
        where = "forgotten" if e.forgotten else f"@{e.number}" if e.number is not None else "  "
        mark = "" if e.verified else "  [signature does not verify: ignored]"
        added = f"+{_size(e.added_bytes)}" if e.added_bytes is not None else ""
        head = e.series if series is None else where
        lines.append(f"{e.claim[:19]}  {e.date}  {head}  root {e.root[:19]}  "
                     f"key {e.key_id}  {added}{mark}")
    _emit(ctx, entries, "\n".join(lines) if lines else "no snapshots yet")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@app.command()
def checkout(ctx: typer.Context,
             spec: str = typer.Argument(..., help="SERIES[@REV][:PATH] or a blobref prefix."),
             output: Path = typer.Option(..., "--output", "-o", help="Directory to restore into."),
             force: bool = typer.Option(False, "--force", help="Restore into a non-empty directory.")):
    """Restore a snapshot, or the file or subtree at PATH in it, into --output."""
    with _open(ctx, write=False) as repo:
        result = api.checkout(repo, spec, output, force, _progress(ctx))
    _emit(ctx, result, f"restored {result.files} files, {result.dirs} directories "
          f"({_size(result.bytes_written)}) into {output}")
    _report_not_restored(result.errors)


series_app = typer.Typer(help="List series, or manage one.", invoke_without_command=True)
app.add_typer(series_app, name="series")


@series_app.callback()
def series_list(ctx: typer.Context):
    """List every series with its tags."""
    if ctx.invoked_subcommand is not None:
        return
    with _open(ctx, write=False) as repo:
        found = api.list_series(repo)
    _emit(ctx, [{"name": s.name, "permanode": str(s.permanode), "tags": list(s.tags),
                 "created": str(s.created) if s.created else None} for s in found],
          "\n".join(f"{s.name}  {str(s.permanode)[:19]}  {' '.join(s.tags)}" for s in found)
          or "no series yet")


@app.command()
def ls(ctx: typer.Context,
       spec: str = typer.Argument(..., help="SERIES[@REV][:PATH] or a blobref prefix.")):
    """List the files in a snapshot (or below PATH in it)."""
    with _open(ctx, write=False) as repo:
        entries = api.ls(repo, spec)
    _emit(ctx, entries, "\n".join(
        f"{e.mode or '    '}  {'' if e.size is None else e.size:>12}  {e.mtime or '':<30}  "
        f"{e.path}{'/' if e.type == 'directory' else ''}" for e in entries))


@app.command()
def diff(ctx: typer.Context, a: str = typer.Argument(..., help="SERIES@REV (older)."),
         b: str = typer.Argument(..., help="SERIES@REV (newer).")):
    """Paths added (+), removed (-) and changed (M) between two snapshots."""
    with _open(ctx, write=False) as repo:
        result = api.diff(repo, a, b)
    as_text = {"added": [os.fsdecode(p) for p in result.added],
               "removed": [os.fsdecode(p) for p in result.removed],
               "changed": [os.fsdecode(p) for p in result.changed]}
    lines = sorted([(p, "+") for p in as_text["added"]] + [(p, "-") for p in as_text["removed"]]
                   + [(p, "M") for p in as_text["changed"]])
    _emit(ctx, as_text, "\n".join(f"{mark} {p}" for p, mark in lines))


@app.command()
def attr(ctx: typer.Context,
         permanode: str = typer.Argument(..., help="Permanode blobref or unique prefix."),
         name: str = typer.Argument(...), value: Optional[str] = typer.Argument(None),
         add: bool = typer.Option(False, "--add", help="Add a value (set replaces)."),
         delete: bool = typer.Option(False, "--del", help="Delete the value (or all values).")):
    """Set, add or delete an attribute on a permanode with a signed claim (pk-put attr)."""
    if add and delete:
        raise UsageError("--add and --del exclude each other")
    mode = "add" if add else "del" if delete else "set"
    with _open(ctx) as repo:
        claim = api.attr(repo, permanode, name, value, mode)
    _emit(ctx, {"claim": str(claim)}, str(claim))


# -- forgetting and garbage collection ---------------------------------------

@app.command()
def forget(ctx: typer.Context,
           target: str = typer.Argument(..., help="A series (with --keep-* rules) or one "
                                        "snapshot's claim ref."),
           keep_last: int = typer.Option(0, "--keep-last", help="Keep the N latest snapshots."),
           keep_hourly: int = typer.Option(0, "--keep-hourly", help="Keep N hourly snapshots."),
           keep_daily: int = typer.Option(0, "--keep-daily", help="Keep N daily snapshots."),
           keep_weekly: int = typer.Option(0, "--keep-weekly", help="Keep N weekly snapshots."),
           keep_monthly: int = typer.Option(0, "--keep-monthly", help="Keep N monthly snapshots."),
           keep_yearly: int = typer.Option(0, "--keep-yearly", help="Keep N yearly snapshots."),
           keep_within: Optional[str] = typer.Option(
               None, "--keep-within", help="Keep everything within this of the newest (2y5m7d3h)."),
           keep_tags: List[str] = typer.Option([], "--keep-tag", help="Keep snapshots with this tag."),
           dry_run: bool = typer.Option(False, "--dry-run", help="Say what would go; change nothing.")):
    """Forget snapshots with signed delete claims (restic's retention rules); gc frees the space."""
    counts = (keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly)
    policy = None
    if any(counts) or keep_within or keep_tags:
        from pkvc import retention
        policy = retention.Policy(*counts, within=retention.Duration.parse(keep_within)
                                  if keep_within else None,
                                  tags=tuple(tuple(t.split(",")) for t in keep_tags))
    with _open(ctx) as repo:
        result = api.forget(repo, target, policy, dry_run)
    if policy is None:
        _emit(ctx, result, f"{'would forget' if dry_run else 'forgot'} {target}")
        return
    lines = [f"{result.series}: {result.policy}"]
    for d in result.decisions:
        verb = "keep  " if d.keep else ("would forget" if dry_run else "forget")
        lines.append(f"  {verb}  {d.claim[:19]}  {d.date}  {'; '.join(d.reasons)}")
    lines.append(f"{sum(not d.keep for d in result.decisions)} snapshots "
                 f"{'would be ' if dry_run else ''}forgotten; run `pkvc gc` to free their space")
    _emit(ctx, result, "\n".join(lines))


@app.command()
def unforget(ctx: typer.Context,
             claim: str = typer.Argument(..., help="The forgotten snapshot's claim ref.")):
    """Bring back a forgotten snapshot (only until a gc has collected it)."""
    with _open(ctx) as repo:
        undone = api.unforget(repo, claim)
    _emit(ctx, {"undone": undone}, f"{claim} is back")


@series_app.command("delete")
def series_delete(ctx: typer.Context, name: str = typer.Argument(..., help="Series name.")):
    """Forget a whole series (a signed delete claim on its permanode)."""
    with _open(ctx) as repo:
        claim = api.delete_series(repo, name)
    _emit(ctx, {"series": name, "delete_claim": claim},
          f"series {name} deleted; run `pkvc gc` to free its space")


@app.command()
def gc(ctx: typer.Context,
       max_unused: float = typer.Option(5.0, "--max-unused", min=0, max=100,
                                        help="Rewrite packs with more unreachable bytes than this "
                                        "percentage (0: every pack holding any)."),
       dry_run: bool = typer.Option(False, "--dry-run", help="Compute everything; delete nothing.")):
    """Free the space of forgotten snapshots and deleted series (mark and sweep)."""
    with _open(ctx) as repo:
        summary = api.gc(repo, max_unused, dry_run, _progress(ctx))
    if summary.skipped:
        text = f"gc skipped: {summary.skipped}"
    else:
        text = (f"{'would free' if dry_run else 'freed'} {_size(summary.bytes_freed)}: "
                f"{summary.packs_deleted} packs deleted, {summary.packs_rewritten} rewritten; "
                f"{summary.live_blobs} live blobs ({_size(summary.live_bytes)}), "
                f"{_size(summary.bytes_unreachable)} unreachable left"
                + (f"; removed {summary.stale_uploads} unfinished pack writes of killed "
                   f"commands ({_size(summary.stale_upload_bytes)})" if summary.stale_uploads else "")
                + ("; a plan is left for the next gc (writers still running)"
                   if summary.deferred else ""))
    _emit(ctx, summary, text)


# -- sharing -------------------------------------------------------------------

_URL_BASE_HELP = ("Where `pkvc serve` is reached from outside, e.g. https://home.example:3179; "
                  "share then prints the full URL (default: $PKVC_SHARE_URL).")


@app.command()
def share(ctx: typer.Context,
          spec: str = typer.Argument(..., help="SERIES[@REV][:PATH], or the blobref (or unique "
                                     "prefix) of a file or directory blob."),
          expires: Optional[str] = typer.Option(
              None, "--expires", help="Stop working after a duration (30d, 12h, 1w2d, 90m) or "
              "at a date (2026-12-31, 2026-12-31T18:00:00Z)."),
          no_transitive: bool = typer.Option(
              False, "--no-transitive", help="Share only the target blob itself, not what it "
              "links to (a directory's contents, a file's bytes)."),
          url_base: Optional[str] = typer.Option(None, "--url-base", envvar="PKVC_SHARE_URL",
                                                 help=_URL_BASE_HELP),
          bundle: Optional[Path] = typer.Option(
              None, "--bundle", help="Also write the share and everything it opens to this "
              "file, sealed to --to (for carrying on a disk)."),
          to: Optional[str] = typer.Option(
              None, "--to", help="The recipient repository's sharing key, as its "
              "`pkvc identity` prints it (x25519-...).")):
    """Share a snapshot, directory or file with a signed share claim; print its ref (and URL)."""
    with _open(ctx) as repo:
        made = api.share(repo, spec, expires, not no_transitive, url_base, bundle, to,
                         _progress(ctx))
    lines = [made.share] + ([made.url] if made.url else [])
    if made.bundle is not None:
        lines.append(f"bundle {made.bundle.path}: {made.bundle.blobs} blobs, "
                     f"{_size(made.bundle.size)}")
    _emit(ctx, made, "\n".join(lines))


@app.command()
def shares(ctx: typer.Context,
           url_base: Optional[str] = typer.Option(None, "--url-base", envvar="PKVC_SHARE_URL",
                                                  help=_URL_BASE_HELP)):
    """List shares: target, where it is in the snapshots, expiry, revoked or not."""
    with _open(ctx, write=False) as repo:
        found = api.shares(repo, url_base)
    lines = []
    for s in found:
        state = "revoked" if s.revoked else "expired" if s.expired else "live"
        where = (f"{s.series}@{{{s.date}}}:{s.path or '/'}" if s.series is not None
                 else f"target {s.target[:19]}")
        lines.append(f"{s.share[:19]}  {state:<7}  expires {s.expires or 'never':<24}  "
                     f"{'' if s.transitive else '(target only)  '}{where}")
    _emit(ctx, found, "\n".join(lines) if lines else "no shares")


@app.command()
def unshare(ctx: typer.Context,
            share_ref: str = typer.Argument(..., metavar="SHAREREF",
                                            help="The share's blobref or a unique prefix.")):
    """Revoke a share with a signed delete claim; servers refuse it from then on."""
    with _open(ctx) as repo:
        claim = api.unshare(repo, share_ref)
    _emit(ctx, {"claim": str(claim)}, str(claim))


@app.command()
def identity(ctx: typer.Context):
    """Print this repository's public sharing key, to receive bundles (share --to)."""
    with _open(ctx) as repo:
        key = api.sharing_identity(repo)
    _emit(ctx, {"sharing_key": key}, key)


@app.command()
def serve(ctx: typer.Context,
          listen: str = typer.Option("127.0.0.1:3179", "--listen",
                                     help="HOST:PORT to listen on (port 0: any free port)."),
          tls_cert: Optional[Path] = typer.Option(None, "--tls-cert", help="PEM certificate "
                                                  "(chain) for HTTPS."),
          tls_key: Optional[Path] = typer.Option(None, "--tls-key", help="PEM private key for "
                                                 "HTTPS.")):
    """Serve this repository's shares (Perkeep's /share/ protocol) until Ctrl-C or SIGTERM."""
    opts: Options = ctx.obj

    def ready(url: str) -> None:
        if opts.as_json:
            typer.echo(json.dumps({"url": url, "share_prefix": f"{url}/share/"}))
        elif not opts.quiet:
            typer.echo(f"serving shares at {url}/share/ (Ctrl-C to stop)")

    with api.open_for_serving(_session(ctx), _progress(ctx)) as repo:
        result = api.serve(repo, listen, tls_cert, tls_key, ready)
    if not opts.quiet and not opts.as_json:
        typer.echo(f"pkvc: stopped{f' by {result.stopped_by}' if result.stopped_by else ''}",
                   err=True)


@app.command()
def pull(ctx: typer.Context,
         source: str = typer.Argument(..., help="A share URL (http[s]://HOST:PORT/share/<ref>) "
                                      "or a bundle file."),
         series: Optional[str] = typer.Option(
             None, "--series", "-s", help="Local series to record it in (default: "
             "shared-<first 12 hex digits of the share>)."),
         tls_ca: Optional[Path] = typer.Option(
             None, "--tls-ca", help="Trust this PEM certificate (or CA bundle) for https.")):
    """Fetch a share (or import a bundle), verify every blob, record it as a snapshot."""
    session = _session(ctx)
    with api.open_repo(session, _progress(ctx)) as repo:
        result = api.pull(repo, source, session.cache_dir, series, tls_ca, _progress(ctx))
    snapshot_line = (f"snapshot {result.snapshot}" if result.snapshot
                     else "already up to date: no new snapshot")
    _emit(ctx, result,
          f"pulled share {result.share} into series {result.series!r}\n"
          f"{result.blobs_fetched} blobs ({_size(result.bytes_fetched)}) received, "
          f"{result.blobs_present} already here; {snapshot_line}\n"
          f"signed by key {result.fingerprint}")


# -- entry point ---------------------------------------------------------------

_GLOBAL_FLAGS = {"--json", "--quiet", "-q"}
_GLOBAL_VALUED = {"--repo", "-r"}


def hoist_global_options(argv: list[str]) -> list[str]:
    """Let global options appear anywhere before `--`, as restic allows."""
    front, rest, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        if arg in _GLOBAL_FLAGS or arg.startswith("--repo="):
            front.append(arg)
        elif arg in _GLOBAL_VALUED and i + 1 < len(argv):
            front.extend(argv[i:i + 2])
            i += 1
        else:
            rest.append(arg)
        i += 1
    return front + rest


_M_ARENA_MAX = -8  # glibc's malloc.h
MALLOC_ARENAS = 2


def fewer_malloc_arenas() -> bool:
    """Cap glibc's malloc arenas (one per thread that allocates, up to 8 per
    core, each keeping what it freed) at two, for a snapshot: its pipeline's
    threads pass big buffers along, and a first snapshot of the 2 GiB bench
    tree peaked at 156-166 MiB RSS with an arena each, 141-145 MiB with two,
    no slower (one: 137 MiB, 10% slower). Not for other commands: threads
    that decode blobs side by side (check's, before it used processes) ran
    10-20% slower sharing two (or three) arenas. Whether it was set: False
    where the C library has no such setting (not glibc)."""
    try:
        return ctypes.CDLL(None).mallopt(_M_ARENA_MAX, MALLOC_ARENAS) == 1
    except (OSError, AttributeError):
        return False


def main(argv: list[str] | None = None) -> int:
    args = hoist_global_options(list(sys.argv[1:] if argv is None else argv))
    command = typer.main.get_command(app)
    # What is loaded by now lives as long as the process: out of the cyclic
    # collector's way, its full passes over a snapshot's many small objects
    # stop rescanning it (gc_collect_main: 5% of the walker's samples).
    pygc.freeze()
    try:
        code = command.main(args, prog_name="pkvc", standalone_mode=False)
        # Outside standalone mode typer turns Ctrl-C (and any Exit) into a
        # returned exit code instead of raising it.
        if code == EXIT_INTERRUPTED:
            raise KeyboardInterrupt
        if isinstance(code, int) and code:
            return _exit(code, argv)
    except PkvcError as e:
        typer.echo(f"pkvc: {e}", err=True)
        return _exit(e.exit_code, argv)
    except typer.Exit as e:
        return _exit(e.exit_code, argv)
    except typer.TyperException as e:  # click's usage errors, vendored by typer
        e.show()
        return _exit(getattr(e, "exit_code", EXIT_USAGE), argv)
    except (KeyboardInterrupt, typer.Abort):
        typer.echo("pkvc: interrupted", err=True)
        return _exit(EXIT_INTERRUPTED, argv)
    except BrokenPipeError:
        return _exit(0, argv)
    return _exit(0, argv)


def _exit(code: int, argv) -> int:
    if argv is None:
        sys.exit(code)
    return code
