"""Through the real CLI: a sweep's or a pipeline's `RUN_NAME/ROLE` reference to a run already in the store must
name an output that run's job kind declares; otherwise exit 2 naming the field, the run, the role and the
declared roles, before anything is written or run."""
from __future__ import annotations

import sqlite3


def seed_runs(cli) -> dict[str, str]:
    """A succeeded noop run named `done` and a failed one named `broken`; name -> run id."""
    ids = {}
    for name, extra in (("done", ""), ("broken", "fail: true\n")):
        spec = cli.write_spec(f"{name}.yaml", f"kind: noop\nname: {name}\n{extra}")
        ids[name] = cli("submit", spec, "--executor", "local", "--wait", "--json", check=False).json()["run_id"]
    return ids


def counts(cli) -> tuple[int, int]:
    with sqlite3.connect(cli.home / "bitsmith.db") as conn:
        return (conn.execute("SELECT count(*) FROM runs").fetchone()[0],
                conn.execute("SELECT count(*) FROM sweeps").fetchone()[0])


def test_sweep_reference_to_an_undeclared_role_of_a_stored_run_is_refused_before_anything_is_written(cli) -> None:
    ids = seed_runs(cli)
    before = counts(cli)
    assert before == (2, 0)
    grid = cli.write_spec("grid.yaml", "kind: sweep\nbase: {kind: noop}\nstrategy: grid\n"
                                       "parameters: {inputs.data: [done/result, broken/model]}\n")
    res = cli("sweep", "run", grid, "--executor", "local", check=False)
    assert res.code == 2, res.err
    assert (f"{grid}: parameters.inputs.data: 'broken/model' names output 'model' of run 'broken' ({ids['broken']}, "
            "failed), which noop jobs do not declare; expected one of result") in res.err
    assert "bitsmith spec-schema noop" in res.err and "Traceback" not in res.err

    based = cli.write_spec("based.yaml", "kind: sweep\nbase: {kind: noop, inputs: {data: done/model}}\n"
                                         "strategy: grid\nparameters: {seed: [0, 1]}\n")
    res = cli("sweep", "run", based, "--executor", "local", check=False)
    assert res.code == 2, res.err
    assert (f"{based}: base.inputs.data: 'done/model' names output 'model' of run 'done' ({ids['done']}, "
            "succeeded), which noop jobs do not declare; expected one of result") in res.err
    by_id = cli.write_spec("by_id.yaml", "kind: sweep\nbase: {kind: noop}\nstrategy: grid\n"
                                         f"parameters: {{inputs.data: ['run:{ids['done'][:10]}/model']}}\n")
    res = cli("sweep", "run", by_id, "--executor", "local", check=False)
    assert res.code == 2, res.err
    assert f"names output 'model' of run {ids['done']}, which noop jobs do not declare" in res.err
    assert counts(cli) == before  # no sweep recorded, no child submitted

    ok = cli.write_spec("ok.yaml", "kind: sweep\nbase: {kind: noop}\nstrategy: grid\n"
                                   "parameters: {inputs.data: [done/result]}\n")
    assert cli("sweep", "run", ok, "--executor", "local", "--json").json()["rows"][0]["status"] == "succeeded"


def test_pipeline_reference_to_an_undeclared_role_of_a_stored_run_is_refused_before_the_first_stage(cli) -> None:
    ids = seed_runs(cli)
    cli.write_spec("first.yaml", "kind: noop\nname: first\npayload: pipeline\n")
    cli.write_spec("second.yaml", "kind: noop\nname: second\ninputs: {data: done/model}\n")
    pipeline = cli.write_spec("pipeline.yaml", "stages:\n  - {name: one, jobs: [{spec: first.yaml}]}\n"
                                               "  - {name: two, jobs: [{spec: second.yaml}]}\n")
    res = cli("demo", "--pipeline", pipeline, "--executor", "local", check=False)
    assert res.code == 2, res.err
    assert (f"{cli.home / 'specs' / 'second.yaml'}: inputs.data: 'done/model' names output 'model' of run 'done' "
            f"({ids['done']}, succeeded), which noop jobs do not declare; expected one of result") in res.err
    assert "Traceback" not in res.err
    assert counts(cli) == (2, 0)  # stage one was not submitted
