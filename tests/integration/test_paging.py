"""Paged CLI listings end to end: `runs list`, `artifacts find`, `lineage` with --limit and --cursor, metric sorts
and filters, and bad paging input as exit 2 with a message naming the option (real CLI, real SQLite)."""
from __future__ import annotations

import hashlib
import re

import pytest

from bitsmith.platform.store import (create_run, dispose_engines, log_metrics, open_database, register_artifact)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def filled(cli):
    """A store with 23 eval runs (ppl = i, one without it), each consuming one base model and producing a report."""
    url = f"sqlite:///{cli.home / 'bitsmith.db'}"
    db = open_database(url)
    base = register_artifact(db, digest=_digest("base"), kind="model", name="base", uri="file:///base", size_bytes=1,
                             metadata={"bits": 16})
    ids = []
    for i in range(23):
        run = create_run(db, kind="eval", name=f"eval-{i}", spec={}, spec_hash="h", cache_key=f"k{i}", seed=i,
                         code_version={}, inputs={"model": base.digest}, status="succeeded")
        if i != 7:
            log_metrics(db, run.id, [("test/token_ppl", 0, float(i)), ("test/token_ppl", 1, float(100 - i))])
        register_artifact(db, digest=_digest(f"report{i}"), kind="report", name=None, uri=f"file:///r{i}",
                          size_bytes=i, metadata={"bits": i % 4}, producer_run_id=run.id)
        ids.append(run.id)
    dispose_engines(url)
    return ids


def _next_cursor(err: str) -> str | None:
    found = re.findall(r"^next_cursor: (\S+)$", err, re.M)
    return found[-1] if found else None


def _pages(cli, *args: str) -> list[list[dict]]:
    pages, cursor = [], None
    while True:
        res = cli(*args, "--json", *(["--cursor", cursor] if cursor else []))
        pages.append(res.json())
        cursor = _next_cursor(res.err)
        if cursor is None:
            return pages


def test_runs_list_pages_sorted_and_filtered_by_a_final_metric(cli, filled):
    pages = _pages(cli, "runs", "list", "--sort", "metric:test/token_ppl", "--order", "asc", "--limit", "5",
                   "--metric", "test/token_ppl<95")
    listed = [r["id"] for page in pages for r in page]
    # final ppl of run i is 100 - i (the larger step); < 95 keeps i >= 6, run 7 logged nothing
    want = [filled[i] for i in sorted((i for i in range(23) if i != 7 and 100 - i < 95), key=lambda i: 100 - i)]
    assert listed == want and [len(p) for p in pages] == [5, 5, 5, 1]
    assert all(page[0]["metrics"]["test/token_ppl"] < 95 for page in pages)
    table = cli("runs", "list", "--sort", "metric:test/token_ppl", "--limit", "3")
    assert "test/token_ppl=100" in table.out and _next_cursor(table.err)
    default = cli("runs", "list", "--json")
    assert len(default.json()) == 23 and _next_cursor(default.err) is None  # default page: 50 rows


def test_artifacts_find_and_lineage_are_bounded(cli, filled):
    pages = _pages(cli, "artifacts", "find", "--kind", "report", "--where", "meta.bits<=1", "--limit", "4")
    digests = [a["digest"] for page in pages for a in page]
    assert len(digests) == len(set(digests)) == len([i for i in range(23) if i % 4 <= 1])
    assert max(len(p) for p in pages) == 4
    down = cli("lineage", "base", "--down", "--json", "--limit", "10").json()
    assert len([e for e in down["edges"] if e["direction"] == "input"]) == 10
    assert down["collapsed"][f"artifact:{_digest('base')}"] == 13 and down["next_cursor"]
    more = cli("lineage", "base", "--down", "--json", "--limit", "10", "--cursor", down["next_cursor"]).json()
    firsts = {e["run_id"] for e in down["edges"] if e["direction"] == "input"}
    seconds = {e["run_id"] for e in more["edges"] if e["direction"] == "input"}
    assert len(seconds) == 10 and not firsts & seconds
    tree = cli("lineage", "base", "--down", "--limit", "10")
    assert "13 more descendants" in tree.err and _next_cursor(tree.err)
    assert "base" in cli("lineage", f"run:{filled[0]}").out  # up from a run: its input
    shown = cli("artifacts", "show", "base", "--json").json()
    assert shown["consumers_total"] == len(shown["consumers"]) == 23


@pytest.mark.parametrize("args, named", [
    (("runs", "list", "--cursor", "not-a-cursor"), "--cursor"),
    (("runs", "list", "--limit", "0"), "--limit"),
    (("runs", "list", "--limit", "100000"), "--limit"),
    (("runs", "list", "--metric", "test/token_ppl<fifty"), "--metric"),
    (("runs", "list", "--metric", "ppl"), "--metric"),
    (("runs", "list", "--sort", "metric:"), "--sort"),
    (("artifacts", "find", "--cursor", "eyJxIjoicnVucyIsImsiOltdfQ"), "--cursor"),
    (("artifacts", "find", "--limit", "-1"), "--limit"),
    (("lineage", "base", "--limit", "0"), "--limit"),
    (("lineage", "base", "--cursor", "e30"), "--cursor"),
])
def test_bad_paging_input_exits_2_naming_the_option(cli, filled, args, named):
    res = cli(*args, check=False)
    assert res.code == 2 and named in res.err and "Traceback" not in res.err
    assert res.out == ""
