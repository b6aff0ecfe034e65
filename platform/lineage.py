"""Render a lineage graph (from `store.lineage`) as a tree, JSON, Graphviz dot or Mermaid."""
from __future__ import annotations

from typing import Any

from .store.records import ArtifactRecord, RunRecord

CHECKPOINT_PREFIX = "checkpoint/"
# How a backslash and a double quote inside a label are written in each format.
DOT_ESCAPES, MERMAID_ESCAPES = {"\\": "\\\\", '"': '\\"'}, {'"': "#quot;"}


def _edge_index(graph: Any) -> dict[tuple[str, str], list[Any]]:
    """(node kind, id) -> the edges touching that node (runs' inputs/outputs, artifacts' producers/consumers)."""
    index: dict[tuple[str, str], list[Any]] = {}
    for e in graph.edges:
        index.setdefault(("run", e.run_id), []).append(e)
        index.setdefault(("artifact", e.digest), []).append(e)
    return index


def artifact_label(a: ArtifactRecord) -> str:
    bits = a.metadata.get("bits") if isinstance(a.metadata, dict) else None
    extra = f" bits={bits}" if bits is not None else ""
    return f"{a.kind} {a.digest[:12]}{' ' + a.name if a.name else ''}{extra}"


def run_label(r: RunRecord) -> str:
    hit = f" (cache hit of {r.cache_hit_of[:10]})" if r.cache_hit_of else ""
    return f"{r.kind} run {r.id[:12]}{' ' + r.name if r.name else ''} ({r.status}){hit}"


def children(graph: Any, node: tuple[str, str], down: bool,
             index: dict[tuple[str, str], list[Any]] | None = None) -> list[tuple[str, str, str]]:
    """(kind, id, role) of the nodes one step away from `node` in the chosen direction."""
    index = index if index is not None else _edge_index(graph)
    kind, ident = node
    out: list[tuple[str, str, str]] = []
    for e in index.get(node, []):
        if kind == "artifact":
            if down and e.direction == "input":
                out.append(("run", e.run_id, e.role))
            elif not down and e.direction == "output":
                art = graph.artifacts.get(ident)
                producer = art.producer_run_id if art else None
                if producer is None or e.run_id == producer:
                    out.append(("run", e.run_id, e.role))
        else:
            if down and e.direction == "output" and not e.role.startswith(CHECKPOINT_PREFIX):
                out.append(("artifact", e.digest, e.role))
            elif not down and e.direction == "input":
                out.append(("artifact", e.digest, e.role))
    return sorted(set(out))


def label(graph: Any, kind: str, ident: str) -> str:
    if kind == "run":
        return run_label(graph.runs[ident]) if ident in graph.runs else f"run {ident[:12]}"
    return artifact_label(graph.artifacts[ident]) if ident in graph.artifacts else f"artifact {ident[:12]}"


def render_tree(graph: Any, root: tuple[str, str], down: bool) -> Any:
    """A rich tree; names and roles are printed literally (escaped markup, visible control characters)."""
    from rich.tree import Tree

    from .cli.common import literal

    tree = Tree(f"[bold]{literal(label(graph, *root))}[/]")
    seen = {root}
    index = _edge_index(graph)

    def grow(node: tuple[str, str], branch: Any) -> None:
        for kind, ident, role in children(graph, node, down, index):
            text = literal(label(graph, kind, ident))
            text = f"[dim]{literal(role)}:[/] {text}" if kind == "artifact" else text
            sub = branch.add(text if (kind, ident) not in seen else text + " [dim](see above)[/]")
            if (kind, ident) not in seen:
                seen.add((kind, ident))
                grow((kind, ident), sub)

    grow(root, tree)
    return tree


def to_json(graph: Any, root: tuple[str, str], down: bool) -> dict[str, Any]:
    return {"root": {"kind": root[0], "id": root[1]}, "direction": "down" if down else "up",
            "runs": {k: {"kind": r.kind, "name": r.name, "status": r.status, "cache_hit_of": r.cache_hit_of}
                     for k, r in graph.runs.items()},
            "artifacts": {k: {"kind": a.kind, "name": a.name, "producer_run_id": a.producer_run_id}
                          for k, a in graph.artifacts.items()},
            "edges": [{"run_id": e.run_id, "digest": e.digest, "role": e.role, "direction": e.direction}
                      for e in graph.edges if not e.role.startswith(CHECKPOINT_PREFIX)]}


def _node_id(kind: str, ident: str) -> str:
    return f"{'r' if kind == 'run' else 'a'}_{ident[:16]}"


def _graph_edges(graph: Any) -> list[tuple[str, str, str]]:
    """(from, to, role) in data-flow order: input artifact -> run -> output artifact."""
    out = []
    for e in graph.edges:
        if e.role.startswith(CHECKPOINT_PREFIX):
            continue
        a, r = _node_id("artifact", e.digest), _node_id("run", e.run_id)
        out.append((a, r, e.role) if e.direction == "input" else (r, a, e.role))
    return sorted(set(out))


def _quoted(text: str, escapes: dict[str, str]) -> str:
    """A label for dot or mermaid: control characters visible, then `escapes` applied (backslash first)."""
    from .cli.common import printable

    text = printable(text)
    for char, escaped in escapes.items():
        text = text.replace(char, escaped)
    return text


def to_dot(graph: Any) -> str:
    lines = ["digraph lineage {", "  rankdir=LR;"]
    for k, r in graph.runs.items():
        lines.append(f'  {_node_id("run", k)} [shape=box, label="{_quoted(run_label(r), DOT_ESCAPES)}"];')
    for k, a in graph.artifacts.items():
        lines.append(f'  {_node_id("artifact", k)} [shape=ellipse, label="{_quoted(artifact_label(a), DOT_ESCAPES)}"];')
    for src, dst, role in _graph_edges(graph):
        lines.append(f'  {src} -> {dst} [label="{_quoted(role, DOT_ESCAPES)}"];')
    lines.append("}")
    return "\n".join(lines)


def to_mermaid(graph: Any) -> str:
    lines = ["flowchart LR"]
    for k, r in graph.runs.items():
        lines.append(f'  {_node_id("run", k)}["{_quoted(run_label(r), MERMAID_ESCAPES)}"]')
    for k, a in graph.artifacts.items():
        lines.append(f'  {_node_id("artifact", k)}(["{_quoted(artifact_label(a), MERMAID_ESCAPES)}"])')
    for src, dst, role in _graph_edges(graph):
        lines.append(f"  {src} -->|{_quoted(role, MERMAID_ESCAPES)}| {dst}")
    return "\n".join(lines)
