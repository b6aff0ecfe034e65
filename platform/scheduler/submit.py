"""Turn validated specs into run rows: resolve inputs, compute the cache key, record cache hits."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import store
from ..errors import SpecError, UsageError
from ..integrity import damaged_outputs
from ..jobs import check_runnable
from ..provenance import cache_key, kind_fingerprint
from ..specs import JobSpecBase, canonical_json, semantic_json, spec_hash
from ..specs.kinds import accepted_kinds
from ..store import queue as store_queue
from ..store.records import QUEUED, RunRecord


@dataclass(frozen=True)
class Submission:
    run: RunRecord
    cache_hit: bool


def resolve_inputs(db: Any, spec: JobSpecBase, pinned: Mapping[str, str] | None = None) -> dict[str, str]:
    """Input role -> artifact digest; a reference that matches nothing is a spec error naming the field.

    With `pinned` (ref -> digest, a sweep's refs resolved at its creation) every ref must be in it and
    means that digest, whatever its name points at now.
    """
    digests: dict[str, str] = {}
    for role, ref in spec.input_refs().items():
        field = spec.input_field(role)
        if pinned is not None and ref not in pinned:
            raise SpecError(f"{field}: {ref!r} was not resolved when the sweep was created; expected one of the "
                            "refs the sweep pinned then", hint="bitsmith sweep run SWEEP_FILE (a new sweep)")
        try:
            record = store.resolve_artifact_ref(db, ref if pinned is None else "sha256:" + pinned[ref])
        except UsageError as exc:  # no match, or an ambiguous prefix
            raise SpecError(f"{field}: {exc.message}", hint="bitsmith artifacts list") from None
        check_input_kind(spec, role, field, record)
        digests[role] = record.digest
    return digests


def check_input_kind(spec: JobSpecBase, role: str, field: str, record: Any) -> None:
    """Refuse an artifact whose kind input `role` of `spec` does not accept (the spec's INPUT_KINDS)."""
    accepted = accepted_kinds(spec.INPUT_KINDS, role)
    if accepted is not None and record.kind not in accepted:
        raise SpecError(f"{field}: artifact {record.digest[:12]} is a {record.kind!r} artifact; expected "
                        f"{' or '.join(repr(k) for k in accepted)} for a {spec.kind} job's {field}",
                        hint=f"bitsmith artifacts list --kind {accepted[0]}")


def record_submission(db: Any, spec: JobSpecBase, *, code: dict[str, Any], executor: str, no_cache: bool = False,
                      sweep_id: str | None = None, pinned: Mapping[str, str] | None = None, priority: int = 0,
                      to_queue: bool = False) -> Submission:
    """Write the run row (queued), or a succeeded cache-hit row pointing at the original run.

    With `to_queue` the run waits in the store's queue (by `priority`, then age) for the store's dispatcher
    (`scheduler.dispatcher`) instead of being dispatched by this process.

    `code` is the provenance of the submitting tree (`provenance.code_version()`); the kind's code
    fingerprint is added to it and, alone of it, goes into the cache key.
    """
    check_runnable(spec.kind)
    digests = resolve_inputs(db, spec, pinned)
    resolved = spec.with_resolved_inputs(digests)
    fingerprint = kind_fingerprint(spec.kind)
    code = {**code, **fingerprint.record()}
    key = cache_key(spec.kind, semantic_json(resolved), digests, fingerprint.digest)
    common = dict(kind=spec.kind, name=spec.name, spec=_json(resolved), spec_hash=spec_hash(resolved),
                  cache_key=key, seed=spec.seed, code_version=code, tags=list(spec.tags), executor=executor,
                  max_retries=spec.retries, inputs=digests, sweep_id=sweep_id)
    if not no_cache:
        original = store.find_cached_run(db, key)
        if original is not None and damaged_outputs(db, original.id) is not None:
            original = None  # its outputs are gone or corrupted: run the job again (the rerun heals them)
        if original is not None:  # one transaction: the run with the original's outputs and final metrics
            return Submission(run=store.record_cache_hit(db, original.id, **common), cache_hit=True)
    # An identical run in flight is joined (its executor waits and becomes its cache hit) unless --no-cache.
    run = store.create_run(db, status=QUEUED, join_inflight=not no_cache, priority=priority, to_queue=to_queue,
                           **common)
    return Submission(run=run, cache_hit=False)


def queue_submissions(db: Any, specs: list[JobSpecBase], *, code: dict[str, Any], priority: int = 0,
                      no_cache: bool = False, sweep_id: str | None = None) -> list[Submission]:
    """Queue many runs for the store's dispatcher at once: the rows `record_submission(to_queue=True)` writes,
    inserted in a few transactions (a spec with a succeeded identical run still becomes its cache hit)."""
    fingerprints: dict[str, Any] = {}
    prepared = []
    for spec in specs:
        check_runnable(spec.kind)
        digests = resolve_inputs(db, spec)
        resolved = spec.with_resolved_inputs(digests)
        fingerprint = fingerprints.setdefault(spec.kind, kind_fingerprint(spec.kind))
        key = cache_key(spec.kind, semantic_json(resolved), digests, fingerprint.digest)
        prepared.append((spec, dict(kind=spec.kind, name=spec.name, spec=_json(resolved), spec_hash=spec_hash(resolved),
                                    cache_key=key, seed=spec.seed, code_version={**code, **fingerprint.record()},
                                    tags=list(spec.tags), executor="ray", max_retries=spec.retries, inputs=digests,
                                    sweep_id=sweep_id)))
    cached = set() if no_cache else store_queue.succeeded_keys(db, {row["cache_key"] for _, row in prepared})
    subs = [record_submission(db, spec, code=code, executor="ray", sweep_id=sweep_id, priority=priority,
                              to_queue=True) for spec, row in prepared if row["cache_key"] in cached]
    queued = store_queue.enqueue_runs(db, [row for _, row in prepared if row["cache_key"] not in cached],
                                      priority=priority, join_inflight=not no_cache)
    return subs + [Submission(run=run, cache_hit=False) for run in queued]


def _json(spec: JobSpecBase) -> dict[str, Any]:
    import json

    return json.loads(canonical_json(spec))
