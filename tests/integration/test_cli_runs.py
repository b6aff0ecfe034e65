"""The control plane end to end through the real CLI, with the diagnostic `noop` job (local executor)."""
from __future__ import annotations

import os
import time



def _submit(cli, spec, *extra, check=True):
    return cli("submit", spec, "--executor", "local", "--wait", "--json", *extra, check=check)


def test_submit_list_show_artifacts_and_lineage(cli) -> None:
    spec = cli.write_spec("hello.yaml", "kind: noop\nname: hello\nmetrics: 4\npayload: hi\ntags: [demo]\n")
    res = _submit(cli, spec).json()
    assert res["status"] == "succeeded" and not res["cache_hit"]
    run_id = res["run_id"]
    listed = cli("runs", "list", "--json").json()
    assert [r["id"] for r in listed] == [run_id]
    assert cli("runs", "list", "--tag", "demo", "--json").json()[0]["id"] == run_id
    assert cli("runs", "list", "--kind", "train", "--json").json() == []
    shown = cli("runs", "show", run_id[:8], "--json").json()
    run = shown["run"]
    assert run["spec"]["payload"] == "hi" and run["spec"]["resources"]["cpus"] == 1.0  # resolved spec stored
    assert run["code_version"]["package"] and "python" in run["environment"]
    assert [e["to_status"] for e in shown["events"]] == ["queued", "running", "succeeded"]
    assert shown["metrics"]["noop/metrics_logged"] == 4.0
    digest = shown["outputs"][0]["digest"]
    art = cli("artifacts", "show", "hello/result", "--verify", "--json").json()["artifact"]
    assert art["digest"] == digest and art["producer_run_id"] == run_id
    dest = cli.home / "out.json"
    cli("artifacts", "get", digest[:10], dest)
    assert '"payload": "hi"' in dest.read_text()
    assert "result" in cli("lineage", f"run:{run_id[:8]}", "--down").out
    tree = cli("lineage", digest[:10]).out
    assert "noop run" in tree and "hello" in tree
    assert cli("lineage", digest[:10], "--format", "dot").out.startswith("digraph")
    assert cli("lineage", digest[:10], "--format", "mermaid").out.startswith("flowchart")
    assert "noop" in cli("runs", "logs", run_id[:8]).out + cli("runs", "logs", run_id[:8]).err
    table = cli("runs", "list").out
    assert run_id[:12] in table and "succeeded" in table


def test_cache_hit_and_no_cache(cli) -> None:
    spec = cli.write_spec("a.yaml", "kind: noop\nname: a\npayload: x\n")
    first = _submit(cli, spec).json()
    second = _submit(cli, spec, "--set", "name=renamed").json()  # name is not semantic
    assert second["cache_hit"] and second["cache_hit_of"] == first["run_id"]
    assert second["outputs"] == first["outputs"]
    third = _submit(cli, spec, "--no-cache").json()
    assert not third["cache_hit"] and third["outputs"] == first["outputs"]  # same bytes, deduplicated
    different = _submit(cli, spec, "--set", "seed=1").json()
    assert not different["cache_hit"]


def test_invalid_spec_exits_2_names_the_field_and_writes_nothing(cli) -> None:
    bad = cli.write_spec("bad.yaml", "kind: noop\nmetrics: lots\n")
    res = cli("submit", bad, "--executor", "local", check=False)
    assert res.code == 2 and "metrics" in res.err and "valid integer" in res.err
    res = cli("submit", cli.write_spec("k.yaml", "kind: quantise\n"), check=False)
    assert res.code == 2 and "kind" in res.err and "quantize" in res.err
    res = cli("submit", cli.write_spec("m.yaml", "kind: noop\ninputs: {data: deadbeefcafe}\n"), check=False)
    assert res.code == 2 and "inputs.data" in res.err
    res = cli("submit", cli.write_spec("s.yaml", "kind: noop\n"), "--set", "sleep_s=-1", check=False)
    assert res.code == 2 and "sleep_s" in res.err
    assert cli("runs", "list", "--json").json() == []


def test_failure_is_recorded_with_traceback(cli) -> None:
    spec = cli.write_spec("f.yaml", "kind: noop\nfail: true\n")
    res = _submit(cli, spec, check=False)
    assert res.code == 1
    shown = cli("runs", "show", res.json()["run_id"], "--json").json()["run"]
    assert shown["status"] == "failed" and "failing as asked" in shown["error"]
    assert "Traceback" in shown["traceback"]


def test_corrupted_artifact_is_detected(cli) -> None:
    spec = cli.write_spec("c.yaml", "kind: noop\nname: c\npayload: precious\n")
    digest = next(iter(_submit(cli, spec).json()["outputs"].values()))
    stored = cli.home / "artifacts" / "objects" / digest[:2] / digest
    os.chmod(stored, 0o644)
    stored.write_text("tampered")
    res = cli("artifacts", "show", digest[:12], "--verify", check=False)
    assert res.code == 1 and "corrupted" in res.err
    consumer = cli.write_spec("d.yaml", f"kind: noop\ninputs: {{data: {digest[:12]}}}\n")
    res = _submit(cli, consumer, check=False)
    assert res.code == 1 and "corrupted" in res.json()["error"]


def test_reproduce_matches(cli) -> None:
    spec = cli.write_spec("r.yaml", "kind: noop\nmetrics: 3\npayload: same\nseed: 7\n")
    run_id = _submit(cli, spec).json()["run_id"]
    res = cli("reproduce", run_id[:10], "--executor", "local", "--json")
    report = res.json()
    assert report["matches"] and report["original_id"] == run_id
    assert all(o["same"] for o in report["outputs"])


def test_cancel_a_running_job(cli) -> None:
    spec = cli.write_spec("slow.yaml", "kind: noop\nsleep_s: 60\n")
    run_id = cli("submit", spec, "--executor", "local").out.strip()
    deadline = time.time() + 60
    while cli("runs", "show", run_id, "--json").json()["run"]["status"] != "running":
        assert time.time() < deadline, "run never started"
        time.sleep(0.5)
    cli("runs", "cancel", run_id[:10])
    while (status := cli("runs", "show", run_id, "--json").json()["run"]["status"]) == "running":
        assert time.time() < deadline, "cancel did not take effect"
        time.sleep(0.5)
    assert status == "cancelled"


def test_db_current_and_upgrade(cli) -> None:
    cli("runs", "list")  # the embedded store is created on first use
    cur = cli("db", "current", "--json").json()
    assert cur["up_to_date"] and cur["current"] == cur["head"]
    cli("db", "upgrade")  # harmless at head


def test_runs_show_prints_the_fingerprint_and_an_old_run_still_shows_and_reproduces(cli) -> None:
    import json
    import sqlite3

    from bitsmith.platform.provenance import kind_fingerprint

    spec = cli.write_spec("fp.yaml", "kind: noop\nmetrics: 2\npayload: fp\n")
    run_id = _submit(cli, spec).json()["run_id"]
    fingerprint = kind_fingerprint("noop").digest
    assert f"fingerprint {fingerprint}" in " ".join(cli("runs", "show", run_id).out.split())
    old = {"package": "0.1.0", "commit": "c" * 40, "dirty_hash": None}  # recorded before code fingerprints
    with sqlite3.connect(cli.home / "bitsmith.db") as conn:
        conn.execute("UPDATE runs SET code_version = ? WHERE id = ?", (json.dumps(old), run_id))
    assert "recorded before code fingerprints" in cli("runs", "show", run_id).out
    res = cli("reproduce", run_id, "--executor", "local")
    assert "MATCH" in res.out and "not compared" in res.out and "fingerprint: None -> " + fingerprint in res.out


def test_reproduce_of_a_run_whose_stored_spec_an_older_version_wrote_is_a_clear_error(cli) -> None:
    import json
    import sqlite3

    spec = cli.write_spec("old.yaml", "kind: noop\npayload: old\n")
    run_id = _submit(cli, spec).json()["run_id"]
    stored = cli("runs", "show", run_id, "--json").json()["run"]["spec"]
    with sqlite3.connect(cli.home / "bitsmith.db") as conn:  # a field an older bitsmith wrote at the top level
        conn.execute("UPDATE runs SET spec = ? WHERE id = ?", (json.dumps({**stored, "threads": 1}), run_id))
    res = cli("reproduce", run_id, "--executor", "local", check=False)
    assert res.code == 2 and "Traceback" not in res.err
    assert "threads" in res.err and "recorded by a version of bitsmith" in res.err
