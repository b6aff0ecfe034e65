"""Strict reading of user files and values: what the store can hold, refused early with the file or field named.

JSON and YAML are read without NaN/Infinity constants, duplicate keys or YAML alias bombs, and every value
bound for the store (specs, artifact metadata) passes `check_storable`: finite numbers and integers that
fit in 64 bits (SQLite's JSON functions fail on NaN, PostgreSQL's JSON type refuses it, BIGINT columns
stop at 2**63 - 1).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

INT64_MAX = 2**63 - 1
MAX_YAML_NODES = 100_000  # nodes of a YAML document once its aliases are expanded


class StrictInputError(ValueError):
    """A file or value the store cannot hold; `where` names the file (and line) or the field."""

    def __init__(self, where: str, what: str):
        super().__init__(f"{where}: {what}")
        self.where, self.what = where, what


def check_storable(value: Any, where: str) -> None:
    """Refuse NaN/Infinity, integers beyond 64 bits and NUL characters anywhere in `value` (dicts, lists, scalars)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise StrictInputError(where, "a string with a NUL character; expected text without NUL (PostgreSQL "
                                          "cannot store it)")
        return
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise StrictInputError(where, f"{value}; expected a finite number (NaN and Infinity cannot be stored)")
    if isinstance(value, int) and not -INT64_MAX - 1 <= value <= INT64_MAX:
        raise StrictInputError(where, f"an integer of {value.bit_length()} bits; expected one that fits in "
                                      "64 bits (at most 2**63 - 1)")
    if isinstance(value, dict):
        for key, item in value.items():
            check_storable(key, f"{where} key")
            check_storable(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_storable(item, f"{where}[{i}]")


# -- JSON ------------------------------------------------------------------------------------------------------
def loads_json(text: str, source: str) -> Any:
    """`json.loads` refusing NaN/Infinity constants and duplicate keys; errors name `source` and the line."""
    def refuse_constant(name: str) -> Any:
        raise StrictInputError(source, f"{name} is not JSON; expected a finite number")

    def refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise StrictInputError(source, f"duplicate key {key!r}; expected each key once in a mapping")
            out[key] = value
        return out

    try:
        return json.loads(text, parse_constant=refuse_constant, object_pairs_hook=refuse_duplicates)
    except json.JSONDecodeError as exc:
        raise StrictInputError(source, f"not valid JSON: line {exc.lineno}: {exc.msg}") from None
    except RecursionError:
        raise StrictInputError(source, "nested too deeply; expected plain JSON") from None


def load_json_file(path: str | Path, expect: type = dict) -> Any:
    """A JSON file read strictly (UTF-8, `loads_json`), whose top level must be an `expect`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StrictInputError(str(path), f"cannot read ({exc}); expected a UTF-8 JSON file") from None
    data = loads_json(text, str(path))
    if not isinstance(data, expect):
        raise StrictInputError(str(path), f"top level is a {type(data).__name__}; expected a JSON "
                                          f"{'object' if expect is dict else expect.__name__}")
    return data


# -- YAML ------------------------------------------------------------------------------------------------------
class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses duplicate keys and documents that expand past MAX_YAML_NODES."""

    def compose_document(self) -> Any:
        node = super().compose_document()
        _check_expanded_size(node)
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base constructor reports it
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first at line {first}); expected each key once",
                        key_node.start_mark)
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _check_expanded_size(root: Any) -> None:
    """Refuse a composed document whose aliases expand it past MAX_YAML_NODES ("billion laughs") or that
    contains itself."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)] if root is not None else []
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        kids = _children(node)
        if not children_done:
            if id(node) in open_nodes:
                raise yaml.composer.ComposerError(None, None, "an alias refers to a node that contains it; "
                                                  "expected a document without recursive aliases", node.start_mark)
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((kid, False) for kid in kids if id(kid) not in sizes)
            continue
        open_nodes.discard(id(node))
        sizes[id(node)] = 1 + sum(sizes[id(kid)] for kid in kids)
        if sizes[id(node)] > MAX_YAML_NODES:
            raise yaml.composer.ComposerError(
                None, None, f"aliases expand this node to more than {MAX_YAML_NODES} values; expected a document "
                            "without alias bombs", node.start_mark)


def _children(node: Any) -> list[Any]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def loads_yaml(text: str, source: str) -> Any:
    """YAML read with the strict safe loader; an error is one line naming `source` and the line."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f"line {mark.line + 1}: " if mark else ""
        raise StrictInputError(source, f"not valid YAML: {line}{exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise StrictInputError(source, f"not valid YAML: {exc}") from None
    except RecursionError:
        raise StrictInputError(source, "nested too deeply; expected plain YAML") from None
