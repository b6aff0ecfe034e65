"""Lineage: walk the run/artifact graph up (ancestry) or down (descendants) with one recursive CTE.

The graph is bipartite: artifact --input--> run --output--> artifact. "up" from a node follows edges
towards what it was made from (a run's inputs, an artifact's producing run); "down" follows them
towards what was made from it (an artifact's consumers, a run's outputs).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy import Integer, String, cast, literal_column, select, union_all

from ..errors import NotFoundError, UsageError
from .artifacts import artifact_from_row
from .engine import Database
from .records import ArtifactRecord, RunArtifactEdge, RunRecord
from .runs import resolve_run_id, run_from_row
from .schema import artifacts_t, run_inputs_t, run_outputs_t, runs_t

RUN, ARTIFACT = "run", "artifact"


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


def lineage(db: Database, *, run_id: str | None = None, digest: str | None = None,
            direction: Literal["up", "down"] = "up", max_depth: int = 50) -> LineageGraph:
    """The ancestry ("up") or descendants ("down") of one run or artifact, at most `max_depth` edges away."""
    if (run_id is None) == (digest is None):
        raise UsageError("lineage: got both or neither of run_id and digest; expected exactly one")
    if direction not in ("up", "down"):
        raise UsageError(f"lineage: direction {direction!r}; expected 'up' or 'down'")
    with db.transaction() as conn:
        if run_id is not None:
            root_kind, root_id = RUN, resolve_run_id(conn, run_id)
        else:
            root_kind, root_id = ARTIFACT, digest.removeprefix("sha256:")
            if conn.execute(select(artifacts_t.c.digest).where(artifacts_t.c.digest == root_id)).first() is None:
                raise NotFoundError(f"artifact {digest!r}: no artifact with that digest; expected a full digest",
                                    hint="bitsmith artifacts list")

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
