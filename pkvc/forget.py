"""Forgetting snapshots and series: signed `delete` claims, never silent removal.

A forgotten snapshot is a camliContent claim that a delete claim targets;
until a gc collects it, `log --all` still shows it and `unforget` brings it
back by deleting the delete claim (Perkeep's semantics). Retention policies
(`pkvc.retention`, restic's rules) decide which snapshots of a series go.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pkvc.blobref import BlobRef
from pkvc.claims import ClaimsIndex, add_delete_claim
from pkvc.errors import BlobNotFoundError, UsageError
from pkvc.repo import Repository
from pkvc.retention import Policy, apply_policy
from pkvc.schema.anyblob import parse_blob
from pkvc.schema.claims import AttributeClaim, Clock, MultiClaim
from pkvc.series import CONTENT_ATTR, Series, get_series, snapshots


@dataclass
class ForgetDecision:
    claim: str
    date: str
    root: str
    keep: bool
    reasons: list[str]


@dataclass
class ForgetResult:
    series: str
    policy: str
    dry_run: bool
    decisions: list[ForgetDecision]
    delete_claims: list[str]


def forget_by_policy(repo: Repository, signer, series_name: str, policy: Policy,
                     dry_run: bool = False, clock: Clock = time.time_ns) -> ForgetResult:
    """Apply `policy` to a series; one signed delete claim per forgotten snapshot."""
    if policy.is_empty():
        raise UsageError("no --keep-* rule given: refusing to forget every snapshot "
                         "(name one snapshot with `pkvc forget CLAIMREF` instead)")
    series = get_series(repo, series_name)
    snaps = {str(s.claim): s for s in snapshots(repo, series)}
    tags = series.tags
    decisions = apply_policy([(ref, s.date.ns, tags) for ref, s in snaps.items()], policy, clock)
    out = [ForgetDecision(d.id, str(snaps[d.id].date), str(snaps[d.id].root), d.keep,
                          list(d.reasons)) for d in decisions]
    deleted = []
    if not dry_run:
        for d in out:
            if not d.keep:
                deleted.append(str(add_delete_claim(repo, signer, BlobRef.parse(d.claim), clock)))
        repo.flush()
    return ForgetResult(series.name, str(policy), dry_run, out, deleted)


def forget_snapshot(repo: Repository, signer, claim: BlobRef,
                    clock: Clock = time.time_ns) -> BlobRef:
    """Forget the one snapshot whose camliContent claim is `claim`."""
    index = ClaimsIndex.open(repo)
    _snapshot_claim(repo, index, claim)
    if index.is_deleted(claim):
        raise UsageError(f"snapshot {claim} is already forgotten (unforget brings it back)")
    ref = add_delete_claim(repo, signer, claim, clock)
    repo.flush()
    return ref


def delete_series(repo: Repository, signer, name: str, clock: Clock = time.time_ns) -> BlobRef:
    """Forget a whole series: a delete claim on its permanode."""
    series: Series = get_series(repo, name)
    ref = add_delete_claim(repo, signer, series.permanode, clock)
    repo.flush()
    return ref


def unforget(repo: Repository, signer, claim: BlobRef, clock: Clock = time.time_ns) -> list[BlobRef]:
    """Undo forgetting: delete every live delete claim on the snapshot claim."""
    index = ClaimsIndex.open(repo)
    _snapshot_claim(repo, index, claim)
    live = [d.ref for d in index.deleters(claim) if not index.is_deleted(d.ref)]
    if not live:
        raise UsageError(f"snapshot {claim} is not forgotten")
    undone = [add_delete_claim(repo, signer, ref, clock) for ref in live]
    repo.flush()
    return undone


def forgotten_snapshots(repo: Repository, series: Series) -> list[tuple[BlobRef, object, BlobRef]]:
    """(claim, date, root) of the series' snapshots that are forgotten but not yet collected."""
    index = ClaimsIndex.open(repo)
    out = []
    for claim in index.claims_on(series.permanode, include_deleted=True):
        if not index.is_deleted(claim.ref):
            continue
        for change in claim.changes:
            root = BlobRef.parse_or_none(change.value) if change.attribute == CONTENT_ATTR else None
            if change.claim_type == "set-attribute" and root is not None:
                out.append((claim.ref, claim.date, root))
    return out


def _snapshot_claim(repo: Repository, index: ClaimsIndex, claim: BlobRef) -> BlobRef:
    """`claim` if it is a stored, verified camliContent claim; else a clear error."""
    if not repo.has(claim):
        raise BlobNotFoundError(f"snapshot claim {claim} is not in the repository: if it was "
                                "forgotten, a gc has collected it and it cannot come back")
    parsed = parse_blob(repo.get(claim))
    changes = [parsed.change] if isinstance(parsed, AttributeClaim) else (
        list(parsed.changes) if isinstance(parsed, MultiClaim) else [])
    if not any(c.attribute == CONTENT_ATTR for c in changes):
        raise UsageError(f"{claim} is not a snapshot claim")
    if index.invalid_record(claim) is not None:
        raise UsageError(f"{claim} does not verify, so it never counted as a snapshot")
    return claim
