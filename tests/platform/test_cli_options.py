"""Shared CLI options are declared once (platform/cli/common.py) and every command that runs jobs shows them."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNS_JOBS = [("submit",), ("demo",), ("runs", "recover"), ("reproduce",), ("sweep", "run"), ("sweep", "resume")]
SUBMITS_JOBS = [("submit",), ("demo",), ("sweep", "run")]


def declared_options(path: Path) -> list[str]:
    """The option names (`--x`) passed to `click.option(...)` calls in `path`."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "option"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "click"):
            names += [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    return names


@pytest.mark.parametrize("option", ["--executor", "--no-cache"])
def test_shared_options_are_declared_once(option: str) -> None:
    where = {p.name: declared_options(p).count(option) for p in (ROOT / "platform" / "cli").glob("*.py")}
    assert {name: n for name, n in where.items() if n} == {"common.py": 1}


def help_text(*command: str) -> str:
    env = {**os.environ, "COLUMNS": "200"}
    res = subprocess.run([sys.executable, "-m", "bitsmith.platform.cli.main", *command, "--help"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return " ".join(res.stdout.split())


@pytest.mark.parametrize("command", RUNS_JOBS, ids=" ".join)
def test_commands_that_run_jobs_show_the_executor_option(command: tuple[str, ...]) -> None:
    text = help_text(*command)
    assert "--executor [ray|local]" in text and "[default: ray]" in text
    assert "ray: a Ray task" in text and "for debugging" in text  # what each executor is
    assert ("--no-cache" in text) == (command in SUBMITS_JOBS)
    if command in SUBMITS_JOBS:
        after = text.split("--no-cache", 1)[1].split(" --", 1)[0].strip()
        assert after.startswith(("run", "rerun")), after  # each says what it does
