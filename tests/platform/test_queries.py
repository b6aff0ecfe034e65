"""store.queries: keyset pages list every row once, metric sorts/filters equal a brute-force computation, the
metric summary equals the metric rows, lineage pages collapse siblings; on SQLite and PostgreSQL."""
from __future__ import annotations

import hashlib
import math
import random
import threading

import pytest

from bitsmith.platform.errors import UsageError
from bitsmith.platform.store import (add_run_outputs, create_run, create_sweep, final_metrics, log_metrics,
                                     register_artifact, transition)
from bitsmith.platform.store import queries
from bitsmith.platform.store.metrics import compute_final_metrics, insert_metrics

OPS = {"<": float.__lt__, "<=": float.__le__, ">": float.__gt__, ">=": float.__ge__, "==": float.__eq__,
       "!=": float.__ne__}


def _run(db, name=None, kind="eval", tags=(), inputs=None, status="queued"):
    return create_run(db, kind=kind, name=name, spec={}, spec_hash="h", cache_key=name or "k", seed=1,
                      code_version={}, tags=tags, inputs=inputs, status=status)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _artifact(db, text, kind="model", producer=None, meta=None):
    return register_artifact(db, digest=_digest(text), kind=kind, name=None, uri=f"file:///a/{text}", size_bytes=1,
                             metadata=meta or {}, producer_run_id=producer)


def _all_pages(fn, limit, **kw):
    rows, cursor, pages = [], None, 0
    while True:
        page = fn(limit=limit, cursor=cursor, **kw)
        assert len(page.rows) <= limit
        rows.extend(page.rows)
        pages += 1
        if page.next_cursor is None:
            return rows, pages
        cursor = page.next_cursor


def _brute_finals(logged: dict[str, list[tuple[int, str, int | None, float]]]) -> dict[str, dict[str, float]]:
    """The definition: per run, its latest attempt's rows; per key the largest step (null steps last), last wins."""
    out: dict[str, dict[str, float]] = {}
    for run_id, rows in logged.items():
        out[run_id] = {}
        if not rows:
            continue
        latest = max(a for a, *_ in rows)
        best: dict[str, tuple] = {}
        for order, (attempt, key, step, value) in enumerate(rows):
            if attempt != latest:
                continue
            rank = (step is not None, step if step is not None else 0, order)
            if key not in best or rank > best[key][0]:
                best[key] = (rank, value)
        out[run_id] = {k: v for k, (_, v) in best.items()}
    return out


def _same(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]]) -> bool:
    if a.keys() != b.keys():
        return False
    for run_id in a:
        if a[run_id].keys() != b[run_id].keys():
            return False
        for k, v in a[run_id].items():
            w = b[run_id][k]
            if not (v == w or (math.isnan(v) and math.isnan(w))):
                return False
    return True


def test_summary_equals_the_metric_rows_after_logging(db):
    rng = random.Random(7)
    runs = [_run(db, f"r{i}").id for i in range(12)]
    logged: dict[str, list] = {r: [] for r in runs}
    for _ in range(60):
        run_id = rng.choice(runs)
        attempt = rng.choice([1, 1, 1, 2, 2, 3]) if run_id != runs[0] else 1
        batch = [(rng.choice(["loss", "ppl", "acc"]), rng.choice([None, 0, 1, 2, 5, 5]),
                  rng.choice([rng.random(), rng.random(), float("nan")])) for _ in range(rng.randint(1, 6))]
        with db.transaction(write=True) as conn:
            insert_metrics(conn, run_id, attempt, batch)
        logged[run_id].extend((attempt, k, s, float(v)) for k, s, v in batch)
    with db.transaction() as conn:
        recomputed = compute_final_metrics(conn, runs)
    summary = final_metrics(db, runs)
    assert _same(summary, recomputed)
    assert _same(summary, _brute_finals(logged))
    assert any(math.isnan(v) for m in summary.values() for v in m.values())  # NaN finals are covered


def test_metric_sort_and_filters_equal_brute_force(db):
    rng = random.Random(3)
    finals: dict[str, dict[str, float]] = {}
    for i in range(40):
        run = _run(db, f"run-{i % 7}", kind=rng.choice(["eval", "quantize"]), status="succeeded")
        metrics = {}
        if rng.random() < 0.85:
            metrics["test/token_ppl"] = rng.choice([float(rng.randint(10, 80)), float("nan")])
        if rng.random() < 0.7:
            metrics["bits"] = float(rng.choice([2, 3, 4]))
        log_metrics(db, run.id, [(k, 0, v) for k, v in metrics.items()] + [("test/token_ppl", None, 1e9)])
        metrics.setdefault("test/token_ppl", 1e9)  # a null-step value is final only where no step was logged
        finals[run.id] = metrics
    cases = [("test/token_ppl", True, []), ("test/token_ppl", False, [("test/token_ppl", "<", 50.0)]),
             ("bits", True, [("test/token_ppl", ">=", 30.0), ("bits", "!=", 3.0)]),
             ("test/token_ppl", False, [("bits", "==", 4.0)])]
    for key, descending, filters in cases:
        def keep(run_id: str) -> bool:
            m = finals[run_id]
            return all(k in m and not math.isnan(m[k]) and OPS[op](m[k], v) for k, op, v in filters)
        want = sorted((r for r in finals if key in finals[r] and not math.isnan(finals[r][key]) and keep(r)),
                      key=lambda r: (finals[r][key], r), reverse=descending)
        got, pages = _all_pages(lambda **kw: queries.list_runs(db, **kw), 4, sort=f"metric:{key}",
                                descending=descending, metric_filters=filters)
        assert [r.id for r in got] == want and pages == max(1, math.ceil(len(want) / 4))
    # a column sort with metric filters (and one given as text)
    want = sorted((r for r in finals if "bits" in finals[r] and finals[r]["bits"] <= 3), reverse=True)
    got, _ = _all_pages(lambda **kw: queries.list_runs(db, **kw), 5, sort="created_at",
                        metric_filters=["bits<=3"])
    assert sorted(r.id for r in got) == sorted(want)


@pytest.mark.parametrize("sort", ["created_at", "name", "started_at", "status"])
def test_keyset_pages_list_every_row_once_under_concurrent_inserts(db, sort):
    names = [None, "b", "a", "B", "c"]
    before = set()
    for i in range(45):
        run = _run(db, names[i % 5], tags=("t",) if i % 2 else ())
        if i % 3 == 0:
            run = transition(db, run.id, "running")
        before.add(run.id)
    stop = threading.Event()
    inserted: list[str] = []

    def insert_more() -> None:
        while not stop.is_set() and len(inserted) < 60:
            inserted.append(_run(db, random.choice(names)).id)

    writer = threading.Thread(target=insert_more)
    writer.start()
    try:
        for descending in (True, False):
            seen, _ = _all_pages(lambda **kw: queries.list_runs(db, **kw), 6, sort=sort, descending=descending)
            ids = [r.id for r in seen]
            assert len(ids) == len(set(ids))  # no row twice
            assert before <= set(ids)  # every row that existed throughout, exactly once
            tagged, _ = _all_pages(lambda **kw: queries.list_runs(db, **kw), 4, sort=sort, descending=descending,
                                   tag="t")
            assert len({r.id for r in tagged}) == len(tagged) and all("t" in r.tags for r in tagged)
    finally:
        stop.set()
        writer.join()
    assert inserted  # the writer did insert while pages were read


def test_sweep_pages_list_every_sweep_once_with_its_children_under_concurrent_inserts(db):
    children = {}
    for i in range(23):
        sweep = create_sweep(db, name=f"s{i}" if i % 4 else None, spec={})
        children[sweep.id] = i % 3
        for _ in range(i % 3):
            create_run(db, kind="noop", name=None, spec={}, spec_hash="h", cache_key=f"{sweep.id}", seed=1,
                       code_version={}, sweep_id=sweep.id)
    newest_first = sorted(children, key=lambda sid: (_created(db, sid), sid), reverse=True)
    stop = threading.Event()
    inserted: list[str] = []

    def insert_more() -> None:
        while not stop.is_set() and len(inserted) < 40:
            inserted.append(create_sweep(db, name="late", spec={}).id)

    writer = threading.Thread(target=insert_more)
    writer.start()
    try:
        seen, pages = _all_pages(lambda **kw: queries.list_sweeps(db, **kw), 4)
    finally:
        stop.set()
        writer.join()
    ids = [s.id for s in seen]
    assert len(ids) == len(set(ids)) and pages >= 6  # no sweep twice, in pages of at most 4
    assert [sid for sid in ids if sid in children] == newest_first  # every sweep of before, once, in order
    assert all(s.children == children[s.id] for s in seen if s.id in children)
    assert all(s.children == 0 for s in seen if s.id not in children)
    assert inserted  # the writer did insert while pages were read
    stamps = [(s.created_at, s.id) for s in seen]
    assert stamps == sorted(stamps, reverse=True)
    page = queries.list_sweeps(db, limit=2)
    with pytest.raises(UsageError, match="--cursor .*not a cursor of sweeps"):
        queries.list_sweeps(db, cursor=queries.list_runs(db, limit=1).next_cursor)
    with pytest.raises(UsageError, match="--cursor .*not a cursor of runs"):
        queries.list_runs(db, cursor=page.next_cursor)
    with pytest.raises(UsageError, match="--limit"):
        queries.list_sweeps(db, limit=0)


def _created(db, sweep_id):
    from bitsmith.platform.store import get_sweep

    return get_sweep(db, sweep_id).created_at


def test_run_filters_and_ordering_of_nulls(db):
    a = _run(db, "Alpha-one", kind="train")
    b = _run(db, "beta", kind="eval")
    c = _run(db, None, kind="eval")
    transition(db, b.id, "running")
    assert [r.id for r in queries.list_runs(db, name_contains="ALPHA").rows] == [a.id]
    assert {r.id for r in queries.list_runs(db, kind="eval").rows} == {b.id, c.id}
    assert [r.id for r in queries.list_runs(db, status="running").rows] == [b.id]
    for descending in (True, False):  # runs without a name (or start) come last either way
        assert queries.list_runs(db, sort="name", descending=descending).rows[-1].id == c.id
        started = queries.list_runs(db, sort="started_at", descending=descending).rows
        assert started[0].id == b.id
    assert queries.list_runs(db, name_contains="%").rows == []  # LIKE wildcards are literal


@pytest.mark.parametrize("bad", [
    dict(limit=0), dict(limit=501), dict(sort="metric:"), dict(sort="spec"), dict(metric_filters=["ppl"]),
    dict(metric_filters=["ppl<x"]), dict(metric_filters=["ppl<nan"]), dict(metric_filters=[("ppl", "~", 1)]),
    dict(status="done"), dict(cursor="%%%"), dict(cursor="bm90IGpzb24"), dict(cursor="eyJxIjoicnVucyJ9"),
])
def test_bad_arguments_are_usage_errors(db, bad):
    with pytest.raises(UsageError) as info:
        queries.list_runs(db, **bad)
    named = {"limit": "--limit", "sort": "--sort", "metric_filters": "--metric", "status": "--status",
             "cursor": "--cursor"}[next(iter(bad))]
    assert named in str(info.value)


def test_a_cursor_only_continues_its_own_query(db):
    for i in range(5):
        log_metrics(db, _run(db, f"n{i}").id, [("ppl", 0, float(i))])
    page = queries.list_runs(db, sort="metric:ppl", limit=2)
    assert page.next_cursor
    for other in (dict(sort="name"), dict(sort="metric:ppl", descending=False)):
        with pytest.raises(UsageError, match="--cursor .*made for"):
            queries.list_runs(db, limit=2, cursor=page.next_cursor, **other)
    with pytest.raises(UsageError, match="--cursor .*not a cursor of artifacts"):
        queries.find_artifacts(db, cursor=page.next_cursor)
    forged = queries.encode_cursor({"q": "runs", "s": "metric:ppl", "d": True, "k": ["x", "y"]})
    with pytest.raises(UsageError, match="--cursor .*not a metric:ppl value"):
        queries.list_runs(db, sort="metric:ppl", cursor=forged)


def test_artifact_pages_follow_the_where_language(db):
    made = [_artifact(db, f"m{i}", meta={"bits": i % 5}) for i in range(23)]
    want = sorted((a for a in made if a.metadata["bits"] <= 2), key=lambda a: (-a.created_at.timestamp(), a.digest))
    got, pages = _all_pages(lambda **kw: queries.find_artifacts(db, **kw), 4, kind="model", where=["meta.bits<=2"])
    assert [a.digest for a in got] == [a.digest for a in want] and pages == math.ceil(len(want) / 4)
    with pytest.raises(UsageError, match="--where"):
        queries.find_artifacts(db, where=["bits<"])


def _hub(db, consumers: int):
    """A base model consumed by `consumers` quantize runs, each producing a model that one eval consumes."""
    base = _artifact(db, "base")
    for i in range(consumers):
        q = _run(db, f"q{i}", kind="quantize", inputs={"model": base.digest})
        out = _artifact(db, f"q{i}-out", kind="quantized-model", producer=q.id)
        add_run_outputs(db, q.id, {"model": out.digest, "checkpoint/1": _artifact(db, f"ck{i}", "checkpoint").digest})
        _run(db, f"e{i}", inputs={"model": out.digest})
    return base


def test_lineage_page_collapses_siblings_and_pages_the_root(db):
    base = _hub(db, 13)
    page = queries.lineage_page(db, digest=base.digest, direction="down", siblings=5)
    quantize_runs = {r for r, run in page.graph.runs.items() if run.kind == "quantize"}
    assert len(quantize_runs) == 5 and page.collapsed[f"artifact:{base.digest}"] == 8
    assert all(run.kind != "checkpoint" for run in page.graph.artifacts.values())  # checkpoints are not descendants
    assert len([r for r in page.graph.runs.values() if r.kind == "eval"]) == 5  # the levels below the listed five
    seen, cursor = [], None
    while True:
        page = queries.lineage_page(db, digest=base.digest, direction="down", siblings=5, cursor=cursor)
        seen += sorted(e.run_id for e in page.graph.edges if e.digest == base.digest)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 13
    # a level limit counts what it leaves out; going up from an eval reaches the base model
    narrow = queries.lineage_page(db, digest=base.digest, direction="down", siblings=5, level_limit=5, max_depth=4)
    assert sum(narrow.collapsed.values()) >= 8
    eval_run = next(r for r in page.graph.runs.values() if r.kind == "eval")
    up = queries.lineage_page(db, run_id=eval_run.id, direction="up")
    assert base.digest in up.graph.artifacts and not up.collapsed and up.next_cursor is None
    with pytest.raises(UsageError, match="--cursor .*made for root"):
        queries.lineage_page(db, run_id=eval_run.id, direction="up",
                             cursor=queries.lineage_page(db, digest=base.digest, direction="down",
                                                         siblings=5).next_cursor)
    with pytest.raises(UsageError, match="--limit"):
        queries.lineage_page(db, digest=base.digest, siblings=0)


def test_artifact_consumers_are_bounded_and_counted(db):
    from bitsmith.platform.store import artifact_consumers
    from bitsmith.platform.store.artifacts import count_consumers

    base = _hub(db, 7)
    first = artifact_consumers(db, base.digest, limit=3)
    assert len(first) == 3 and [e.run_id for e in first] == [e.run_id for e in artifact_consumers(db, base.digest)][:3]
    assert count_consumers(db, base.digest) == 7
