"""Which run a `RUN_NAME/ROLE` reference names for the declared-role check, on SQLite and PostgreSQL."""
from __future__ import annotations

from pathlib import Path

import pytest

from bitsmith.platform import store
from bitsmith.platform.config import Settings
from bitsmith.platform.errors import SpecError
from bitsmith.platform.output_refs import check_store_references, split_run_ref
from bitsmith.platform.scheduler.execute import execute_run
from bitsmith.platform.scheduler.submit import record_submission
from bitsmith.platform.specs import parse_spec


def run_noop(db, settings: Settings, name: str, **fields) -> store.RunRecord:
    run = record_submission(db, parse_spec({"kind": "noop", "name": name, **fields}), code={}, executor="local").run
    execute_run(run.id, settings)
    return store.get_run(db, run.id)


@pytest.mark.parametrize("ref, parsed", [
    ("a/model", ("a", "model", False)), ("a/b/model", ("a/b", "model", False)),
    ("run:01ab/model", ("01ab", "model", True)),
    ("sha256:" + "a" * 64, None), ("corpus", None), ("run:01ab", None), ("/model", None), ("a/", None)])
def test_split_run_ref(ref: str, parsed) -> None:
    assert split_run_ref(ref) == parsed


def test_the_newest_succeeded_run_of_a_name_else_the_newest_of_any_status(db_url: str, tmp_path: Path) -> None:
    db = store.open_database(db_url)
    settings = Settings(db_url=db_url, artifact_root=str(tmp_path / "artifacts"), home=tmp_path / "home")
    done = run_noop(db, settings, "x")
    run_noop(db, settings, "x", fail=True, payload="later")
    broken = run_noop(db, settings, "y", fail=True)
    assert store.newest_run_named(db, "x").id == done.id
    assert store.newest_run_named(db, "y").id == broken.id
    assert store.newest_run_named(db, "z") is None
    check_store_references(db, [("f", "x/result"), ("f", "z/model"), ("f", "corpus"), ("f", "x/model")],
                           skip_names={"x"})  # skipped names, unknown runs and plain names are left to resolution
    with pytest.raises(SpecError, match=f"f: 'y/model' names output 'model' of run 'y' \\({broken.id}, failed\\), "
                                        "which noop jobs do not declare; expected one of result"):
        check_store_references(db, [("f", "x/result"), ("f", "y/model")])
