"""The Ray executor through the real CLI: resources, retries after a killed worker, timeouts."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.ray


def test_ray_runs_retry_after_worker_killed_and_timeout(cli) -> None:
    ok = cli.write_spec("ok.yaml", "kind: noop\nname: on-ray\nmetrics: 2\n")
    res = cli("submit", ok, "--wait", "--json").json()
    assert res["status"] == "succeeded"
    shown = cli("runs", "show", res["run_id"], "--json").json()["run"]
    assert shown["executor"] == "ray" and shown["pid"]

    crash = cli.write_spec("crash.yaml", "kind: noop\ncrash_on_attempts: [1]\nretries: 1\npayload: c\n")
    res = cli("submit", crash, "--wait", "--json").json()
    run = cli("runs", "show", res["run_id"], "--json").json()
    assert run["run"]["status"] == "succeeded" and run["run"]["attempt"] == 2
    assert [e["attempt"] for e in run["events"] if e["to_status"] == "running"] == [1, 2]

    dead = cli.write_spec("dead.yaml", "kind: noop\ncrash_on_attempts: [1]\nretries: 0\npayload: d\n")
    res = cli("submit", dead, "--wait", "--json", check=False)
    assert res.code == 1
    assert "worker process died" in res.json()["error"]

    slow = cli.write_spec("slow.yaml", "kind: noop\nsleep_s: 120\ntimeout_s: 3\n")
    res = cli("submit", slow, "--wait", "--json", check=False)
    assert res.code == 1 and "timed out" in res.json()["error"]
    assert cli("runs", "show", res.json()["run_id"], "--json").json()["run"]["status"] == "failed"
