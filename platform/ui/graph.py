"""The lineage page's graph: up and down from a run or artifact, siblings past a threshold collapsed, laid out
in columns by distance, and exported as SVG, Graphviz dot or Mermaid."""
from __future__ import annotations

from dataclasses import replace
from html import escape
from typing import Any

from .. import store
from ..errors import UsageError
from ..lineage import artifact_label, children, run_label, to_dot, to_mermaid
from ..store.lineage import lineage_page

COL_W, ROW_H, NODE_W, NODE_H = 300, 56, 250, 38
MAX_DEPTH = 12
LEVEL_LIMIT = 500  # new nodes per level of the walk (the store counts the rest as collapsed)


def _root(db: Any, run: str | None, artifact: str | None) -> tuple[str, str]:
    if (run is None) == (artifact is None):
        raise UsageError("lineage: give exactly one of run=RUN_ID or artifact=REF")
    if run is not None:
        return "run", store.get_run(db, run).id
    return "artifact", store.resolve_artifact_ref(db, artifact).digest


def lineage_graph(db: Any, *, run: str | None = None, artifact: str | None = None, direction: str = "both",
                  depth: int = 6, collapse: int = 8) -> dict[str, Any]:
    """Nodes (with x, y), edges, and collapsed groups of the lineage around one run or artifact."""
    if direction not in ("up", "down", "both"):
        raise UsageError(f"lineage: direction {direction!r}; expected up, down or both")
    if not 1 <= depth <= MAX_DEPTH or not 1 <= collapse <= 1000:
        raise UsageError(f"lineage: depth {depth}, collapse {collapse}; expected depth 1-{MAX_DEPTH}, collapse 1-1000")
    root = _root(db, run, artifact)
    kw = {"run_id": root[1]} if root[0] == "run" else {"digest": root[1]}
    nodes: dict[tuple[str, str], dict[str, Any]] = {root: {"level": 0}}
    edges: set[tuple[tuple[str, str], tuple[str, str], str]] = set()
    groups: list[dict[str, Any]] = []
    graphs = []
    for down in ([False, True] if direction == "both" else [direction == "down"]):
        # bounded in the store: at most `collapse` children per node, the rest only counted
        page = lineage_page(db, direction="down" if down else "up", max_depth=depth, siblings=collapse,
                            level_limit=LEVEL_LIMIT, **kw)
        graph = page.graph
        graphs.append(graph)
        frontier, sign = [root], (1 if down else -1)
        for level in range(1, depth + 1):
            nxt = []
            for node in frontier:
                kids = [(k, i, role) for k, i, role in children(graph, node, down)]
                shown = kids[:collapse]
                hidden = len(kids) - len(shown) + page.collapsed.get(_nid(node), 0)
                for kind, ident, role in shown:
                    child = (kind, ident)
                    edges.add((child, node, role) if not down else (node, child, role))
                    if child not in nodes:
                        nodes[child] = {"level": sign * level}
                        nxt.append(child)
                if hidden:
                    gid = ("more", f"{node[1][:16]}-{'d' if down else 'u'}")
                    nodes[gid] = {"level": sign * level, "count": hidden}
                    edges.add((gid, node, "") if not down else (node, gid, ""))
                    groups.append({"id": _nid(gid), "parent": _nid(node), "count": hidden,
                                   "direction": "down" if down else "up"})
            frontier = nxt
    runs = {k: v for g in graphs for k, v in g.runs.items()}
    arts = {k: v for g in graphs for k, v in g.artifacts.items()}
    out_nodes = []
    columns: dict[int, int] = {}
    for key, info in sorted(nodes.items(), key=lambda kv: (kv[1]["level"], kv[0])):
        row = columns.get(info["level"], 0)
        columns[info["level"]] = row + 1
        out_nodes.append({"id": _nid(key), "kind": key[0], "ref": key[1], "level": info["level"],
                          "label": _label(key, runs, arts, info), "root": key == root,
                          "status": runs[key[1]].status if key[0] == "run" and key[1] in runs else None,
                          "count": info.get("count"), "row": row})
    top = min(out_nodes, key=lambda n: n["level"])["level"]
    for n in out_nodes:
        n["x"], n["y"] = 20 + (n["level"] - top) * COL_W, 20 + n["row"] * ROW_H
    return {"root": {"kind": root[0], "id": root[1]}, "direction": direction, "depth": depth, "collapse": collapse,
            "nodes": out_nodes, "groups": groups,
            "edges": [{"from": _nid(a), "to": _nid(b), "role": role} for a, b, role in sorted(edges)],
            "width": 40 + (max(columns) - min(columns)) * COL_W + NODE_W,
            "height": 40 + max(columns.values()) * ROW_H}


def _nid(key: tuple[str, str]) -> str:
    return f"{key[0]}:{key[1]}"


def _label(key: tuple[str, str], runs: dict, arts: dict, info: dict) -> str:
    kind, ident = key
    if kind == "more":
        return f"+{info['count']} more"
    if kind == "run":
        return run_label(runs[ident]) if ident in runs else f"run {ident[:12]}"
    return artifact_label(arts[ident]) if ident in arts else f"artifact {ident[:12]}"


def to_svg(view: dict[str, Any]) -> str:
    """A standalone SVG of the laid-out graph (every label escaped)."""
    pos = {n["id"]: n for n in view["nodes"]}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{view["width"]}" height="{view["height"]}" '
           f'font-family="sans-serif" font-size="11">']
    for e in view["edges"]:
        a, b = pos[e["from"]], pos[e["to"]]
        x1, y1, x2, y2 = a["x"] + NODE_W, a["y"] + NODE_H / 2, b["x"], b["y"] + NODE_H / 2
        out.append(f'<path d="M{x1},{y1} C{x1 + 40},{y1} {x2 - 40},{y2} {x2},{y2}" fill="none" stroke="#888"/>')
        if e["role"]:
            out.append(f'<text x="{(x1 + x2) / 2}" y="{(y1 + y2) / 2 - 3}" fill="#555">{escape(e["role"])}</text>')
    for n in view["nodes"]:
        fill = {"run": "#e8f0fe", "artifact": "#fef7e0", "more": "#eee"}[n["kind"]]
        rx = 4 if n["kind"] == "run" else 18
        out.append(f'<rect x="{n["x"]}" y="{n["y"]}" width="{NODE_W}" height="{NODE_H}" rx="{rx}" fill="{fill}" '
                   f'stroke="{"#d33" if n["root"] else "#777"}"/>')
        text = n["label"] if len(n["label"]) <= 42 else n["label"][:41] + "…"
        out.append(f'<text x="{n["x"] + 8}" y="{n["y"] + 23}"><title>{escape(n["label"])}</title>{escape(text)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def export(db: Any, fmt: str, **kw: Any) -> tuple[str, str]:
    """(text, media type) of the graph as svg, dot or mermaid (dot/mermaid list the shown, uncollapsed nodes)."""
    if fmt not in ("svg", "dot", "mermaid"):
        raise UsageError(f"lineage export: format {fmt!r}; expected svg, dot or mermaid")
    view = lineage_graph(db, **kw)
    if fmt == "svg":
        return to_svg(view), "image/svg+xml"
    shown = {(n["kind"], n["ref"]) for n in view["nodes"]}
    root = view["root"]
    rkw = {"run_id": root["id"]} if root["kind"] == "run" else {"digest": root["id"]}
    graphs = [lineage_page(db, direction=d, max_depth=view["depth"], siblings=view["collapse"],
                           level_limit=LEVEL_LIMIT, **rkw).graph
              for d in (["up", "down"] if view["direction"] == "both" else [view["direction"]])]
    merged = replace(graphs[0], runs={k: v for g in graphs for k, v in g.runs.items() if ("run", k) in shown},
                     artifacts={k: v for g in graphs for k, v in g.artifacts.items() if ("artifact", k) in shown},
                     edges=sorted({e for g in graphs for e in g.edges
                                   if ("run", e.run_id) in shown and ("artifact", e.digest) in shown},
                                  key=lambda e: (e.run_id, e.direction, e.role)))
    return (to_dot(merged), "text/vnd.graphviz") if fmt == "dot" else (to_mermaid(merged), "text/plain")
