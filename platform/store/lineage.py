"""Lineage: walk the run/artifact graph up (ancestry) or down (descendants).

The graph is bipartite: artifact --input--> run --output--> artifact. "up" from a node follows edges
towards what it was made from (a run's inputs, an artifact's producing run); "down" follows them
towards what was made from it (an artifact's consumers, a run's outputs).

`lineage` returns the whole graph (one recursive CTE); `lineage_page` returns a bounded page of it, level
by level with a few indexed lookups per level (the edge tables are indexed by run and by digest): at most
`siblings` children listed per node and `level_limit` new nodes per level, the rest reported as counts.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Connection, Integer, String, and_, cast, func, literal_column, not_, or_, select, union_all

from ..errors import NotFoundError, UsageError
from .artifacts import artifact_from_row
from .engine import Database
from .paging import MAX_LIMIT, bad_cursor, decode_cursor, encode_cursor
from .records import ArtifactRecord, RunArtifactEdge, RunRecord
from .runs import resolve_run_id, run_from_row
from .schema import artifacts_t, run_inputs_t, run_outputs_t, runs_t

RUN, ARTIFACT = "run", "artifact"
CHECKPOINT_PREFIX = "checkpoint/"
MAX_LEVEL_LIMIT = 10_000


@dataclass(frozen=True)
class LineageGraph:
    root_kind: str                                  # "run" | "artifact"
    root_id: str                                    # run id or digest
    direction: str                                  # "up" | "down"
    runs: dict[str, RunRecord] = field(default_factory=dict)
    artifacts: dict[str, ArtifactRecord] = field(default_factory=dict)
    edges: list[RunArtifactEdge] = field(default_factory=list)


def _const(text: str):
    return cast(literal_column(f"'{text}'"), String)


def _edge_view(direction: str):
    """Every lineage edge as (from_kind, from_id, to_kind, to_id, run_id, digest, role, direction)."""
    i, o = run_inputs_t, run_outputs_t
    if direction == "up":   # run -> its inputs; artifact -> its producer
        inputs = select(_const(RUN).label("from_kind"), i.c.run_id.label("from_id"), _const(ARTIFACT).label("to_kind"),
                        i.c.digest.label("to_id"), i.c.run_id, i.c.digest, i.c.role, _const("input").label("direction"))
        outputs = select(_const(ARTIFACT), o.c.digest, _const(RUN), o.c.run_id, o.c.run_id, o.c.digest, o.c.role,
                         _const("output"))
    else:                   # artifact -> its consumers; run -> its outputs
        inputs = select(_const(ARTIFACT).label("from_kind"), i.c.digest.label("from_id"), _const(RUN).label("to_kind"),
                        i.c.run_id.label("to_id"), i.c.run_id, i.c.digest, i.c.role, _const("input").label("direction"))
        outputs = select(_const(RUN), o.c.run_id, _const(ARTIFACT), o.c.digest, o.c.run_id, o.c.digest, o.c.role,
                         _const("output"))
    return union_all(inputs, outputs).subquery("edge")


def _check_root(run_id: str | None, digest: str | None, direction: str) -> None:
    if (run_id is None) == (digest is None):
        raise UsageError("lineage: got both or neither of run_id and digest; expected exactly one")
    if direction not in ("up", "down"):
        raise UsageError(f"lineage: direction {direction!r}; expected 'up' or 'down'")


def _resolve_root(conn: Connection, run_id: str | None, digest: str | None) -> tuple[str, str]:
    if run_id is not None:
        return RUN, resolve_run_id(conn, run_id)
    root_id = digest.removeprefix("sha256:")
    if conn.execute(select(artifacts_t.c.digest).where(artifacts_t.c.digest == root_id)).first() is None:
        raise NotFoundError(f"artifact {digest!r}: no artifact with that digest; expected a full digest",
                            hint="bitsmith artifacts list")
    return ARTIFACT, root_id


def lineage(db: Database, *, run_id: str | None = None, digest: str | None = None,
            direction: Literal["up", "down"] = "up", max_depth: int = 50) -> LineageGraph:
    """The ancestry ("up") or descendants ("down") of one run or artifact, at most `max_depth` edges away.

    Unbounded: a hub's whole graph. Listings that must stay fast use `lineage_page`.
    """
    _check_root(run_id, digest, direction)
    with db.transaction() as conn:
        root_kind, root_id = _resolve_root(conn, run_id, digest)

        edge = _edge_view(direction)
        anchor = (select(edge.c.to_kind, edge.c.to_id, edge.c.run_id, edge.c.digest, edge.c.role, edge.c.direction,
                         literal_column("1", Integer).label("depth"))
                  .where(edge.c.from_kind == root_kind, edge.c.from_id == root_id))
        walk = anchor.cte("walk", recursive=True)
        edge2 = _edge_view(direction)
        step = (select(edge2.c.to_kind, edge2.c.to_id, edge2.c.run_id, edge2.c.digest, edge2.c.role, edge2.c.direction,
                       (walk.c.depth + 1).label("depth"))
                .join(walk, (edge2.c.from_kind == walk.c.to_kind) & (edge2.c.from_id == walk.c.to_id))
                .where(walk.c.depth < max_depth))
        walk = walk.union(step)
        found = conn.execute(select(walk.c.run_id, walk.c.digest, walk.c.role, walk.c.direction).distinct()).all()

        edges = sorted({RunArtifactEdge(run_id=r, digest=d, role=role, direction=dr) for r, d, role, dr in found},
                       key=lambda e: (e.run_id, e.direction, e.role))
        run_ids = {e.run_id for e in edges} | ({root_id} if root_kind == RUN else set())
        digests = {e.digest for e in edges} | ({root_id} if root_kind == ARTIFACT else set())
        runs = {r.id: run_from_row(r) for r in conn.execute(select(runs_t).where(runs_t.c.id.in_(run_ids)))}
        artifacts = {a.digest: artifact_from_row(a)
                     for a in conn.execute(select(artifacts_t).where(artifacts_t.c.digest.in_(digests)))}
    return LineageGraph(root_kind=root_kind, root_id=root_id, direction=direction, runs=runs, artifacts=artifacts,
                        edges=edges)


# ---------------------------------------------------------------------------------------- pages

@dataclass(frozen=True)
class LineagePage:
    """A bounded part of a lineage graph: what is listed, and per node how many of its children are not."""

    graph: LineageGraph
    collapsed: dict[str, int]          # "run:ID" / "artifact:DIGEST" -> children not listed
    next_cursor: str | None            # the next page of the root's children (None: all listed)


@dataclass(frozen=True)
class _Step:
    """How one kind of node reaches its children in one direction (table, columns, edge direction)."""

    table: Any
    parent: str                        # the column holding the parent's id
    child: str                         # the column holding the child's id
    child_kind: str
    edge: str                          # RunArtifactEdge.direction of these edges
    skip_checkpoints: bool = False     # a run's checkpoints are not its descendants
    producer_only: bool = False        # an artifact's maker is its producing run (not cache hits of it)


_STEPS = {
    ("down", ARTIFACT): _Step(run_inputs_t, "digest", "run_id", RUN, "input"),
    ("down", RUN): _Step(run_outputs_t, "run_id", "digest", ARTIFACT, "output", skip_checkpoints=True),
    ("up", RUN): _Step(run_inputs_t, "run_id", "digest", ARTIFACT, "input"),
    ("up", ARTIFACT): _Step(run_outputs_t, "digest", "run_id", RUN, "output", producer_only=True),
}


def _edges_from(step: _Step, *columns: Any) -> Any:
    t = step.table
    query = select(*columns)
    if step.producer_only:
        a = artifacts_t
        query = query.join(a, a.c.digest == t.c.digest).where(
            or_(a.c.producer_run_id.is_(None), a.c.producer_run_id == t.c.run_id))
    if step.skip_checkpoints:
        query = query.where(not_(t.c.role.startswith(CHECKPOINT_PREFIX, autoescape=True)))
    return query


def _chunks(items: Sequence[str], size: int = 500) -> list[Sequence[str]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _child_counts(conn: Connection, step: _Step, parents: Sequence[str]) -> dict[str, int]:
    t = step.table
    counts: dict[str, int] = {}
    for chunk in _chunks(parents):
        query = _edges_from(step, t.c[step.parent], func.count()).where(t.c[step.parent].in_(chunk))
        counts.update(conn.execute(query.group_by(t.c[step.parent])).all())
    return counts


def _children_of(conn: Connection, step: _Step, parents: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
    """Every (child, role) of each of `parents` (few each), in (child, role) order."""
    t = step.table
    found: dict[str, list[tuple[str, str]]] = {p: [] for p in parents}
    for chunk in _chunks(parents):
        query = (_edges_from(step, t.c[step.parent], t.c[step.child], t.c.role).where(t.c[step.parent].in_(chunk))
                 .order_by(t.c[step.parent], t.c[step.child], t.c.role))
        for parent, child, role in conn.execute(query):
            found[parent].append((child, role))
    return found


def _first_children(conn: Connection, step: _Step, parent: str, limit: int,
                    after: tuple[str, str] | None = None) -> list[tuple[str, str]]:
    """The first `limit` (child, role) of a hub `parent` in (child, role) order, after `after` if given."""
    t = step.table
    query = _edges_from(step, t.c[step.child], t.c.role).where(t.c[step.parent] == parent)
    if after is not None:
        child, role = t.c[step.child], t.c.role
        query = query.where(and_(child >= after[0], not_(and_(child == after[0], role <= after[1]))))
    return [tuple(r) for r in conn.execute(query.order_by(t.c[step.child], t.c.role).limit(limit))]


def _check_page_args(siblings: int, level_limit: int, max_depth: int) -> None:
    for name, value, top in (("--limit", siblings, MAX_LIMIT), ("level_limit", level_limit, MAX_LEVEL_LIMIT),
                             ("max_depth", max_depth, 1000)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
            raise UsageError(f"lineage: {name} {value!r}; expected a whole number from 1 to {top}")


def lineage_page(db: Database, *, run_id: str | None = None, digest: str | None = None,
                 direction: Literal["up", "down"] = "up", max_depth: int = 50, siblings: int = 50,
                 level_limit: int = 500, cursor: str | None = None) -> LineagePage:
    """A bounded page of the ancestry ("up") or descendants ("down") of one run or artifact.

    Walks level by level (at most `max_depth`). Each node lists at most `siblings` children (in id order);
    each level adds at most max(`level_limit`, `siblings`) new nodes; children past either bound are counted
    in `collapsed` (total children minus those listed). `next_cursor` pages the root's own children: pass it
    back as `cursor` for the next `siblings` of them (and the levels below those).
    """
    _check_root(run_id, digest, direction)
    _check_page_args(siblings, level_limit, max_depth)
    level_limit = max(level_limit, siblings)
    with db.transaction() as conn:
        root = _resolve_root(conn, run_id, digest)
        after = _root_after(cursor, root, direction)
        seen = {root}
        edges: set[RunArtifactEdge] = set()
        collapsed: dict[str, int] = {}
        next_cursor = None
        frontier = [root]
        for _depth in range(max_depth):
            if not frontier:
                break
            level: list[tuple[str, str]] = []
            for kind in (ARTIFACT, RUN):
                parents = sorted(ident for k, ident in frontier if k == kind)
                if not parents:
                    continue
                step = _STEPS[(direction, kind)]
                listed = _list_level(conn, step, parents, root, after, siblings, level_limit - len(level),
                                     seen, collapsed, edges, kind)
                if kind == root[0] and root[1] in parents and listed.get("more"):
                    last = listed["last"]
                    next_cursor = encode_cursor({"q": "lineage", "root": f"{root[0]}:{root[1]}", "dir": direction,
                                                 "k": list(last)})
                level.extend(listed["new"])
            frontier = level
        run_ids = sorted({e.run_id for e in edges} | ({root[1]} if root[0] == RUN else set()))
        digests = sorted({e.digest for e in edges} | ({root[1]} if root[0] == ARTIFACT else set()))
        runs = {r.id: run_from_row(r) for chunk in _chunks(run_ids)
                for r in conn.execute(select(runs_t).where(runs_t.c.id.in_(chunk)))}
        artifacts = {a.digest: artifact_from_row(a) for chunk in _chunks(digests)
                     for a in conn.execute(select(artifacts_t).where(artifacts_t.c.digest.in_(chunk)))}
    graph = LineageGraph(root_kind=root[0], root_id=root[1], direction=direction, runs=runs, artifacts=artifacts,
                         edges=sorted(edges, key=lambda e: (e.run_id, e.direction, e.role, e.digest)))
    return LineagePage(graph=graph, collapsed=collapsed, next_cursor=next_cursor)


def _root_after(cursor: str | None, root: tuple[str, str], direction: str) -> tuple[str, str] | None:
    if not cursor:
        return None
    position = decode_cursor(cursor, "lineage", root=f"{root[0]}:{root[1]}", dir=direction)
    if len(position) != 2 or not all(isinstance(p, str) for p in position):
        raise bad_cursor(cursor, "not a position among a node's children")
    return position[0], position[1]


def _list_level(conn: Connection, step: _Step, parents: list[str], root: tuple[str, str],
                after: tuple[str, str] | None, siblings: int, room: int, seen: set[tuple[str, str]],
                collapsed: dict[str, int], edges: set[RunArtifactEdge], kind: str) -> dict[str, Any]:
    """List the children of `parents` (all of one kind) into `edges`; count the rest into `collapsed`.

    At most `room` new nodes are added (the level's remaining allowance). Returns the new nodes, and for the
    root whether children remain after the last one listed (`more`, `last`).
    """
    counts = _child_counts(conn, step, parents)
    result: dict[str, Any] = {"new": [], "more": False, "last": None}
    small = [p for p in parents if 0 < counts.get(p, 0) <= siblings and (kind, p) != root]
    few = _children_of(conn, step, small) if small and room > 0 else {}
    for parent in parents:
        total = counts.get(parent, 0)
        if total == 0:
            continue
        is_root = (kind, parent) == root
        if room <= 0:
            collapsed[f"{kind}:{parent}"] = total
            continue
        if parent in few:
            kids = few[parent]
        else:
            kids = _first_children(conn, step, parent, siblings + 1 if is_root else siblings,
                                   after if is_root else None)
        if is_root and len(kids) > siblings:
            result["more"], kids = True, kids[:siblings]
        shown = 0
        for child, role in kids:
            node = (step.child_kind, child)
            if node not in seen:
                if room <= 0:
                    result["more"] = result["more"] or is_root
                    break
                seen.add(node)
                result["new"].append(node)
                room -= 1
            run, art = (child, parent) if step.child_kind == RUN else (parent, child)
            edges.add(RunArtifactEdge(run_id=run, digest=art, role=role, direction=step.edge))
            shown += 1
            if is_root:
                result["last"] = (child, role)
        if total > shown:
            collapsed[f"{kind}:{parent}"] = total - shown
    return result
