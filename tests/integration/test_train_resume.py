"""A `train` job whose worker process is killed mid-run is retried by Ray, resumes from its checkpoint
artifact, and ends with the same model bytes as an uninterrupted run of the same spec."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.ray

SPEC = """kind: train
name: tiny-{tag}
inputs: {{corpus: corpus-pydoc}}
mode: {{type: pretrain, arch: {{layers: 1, hidden_size: 64, heads: 2, max_seq_len: 64}},
       tokenizer: {{vocab_size: 512}}}}
steps: 240
batch_size: 4
seq_len: 64
checkpoint_every_steps: 40
eval_every_steps: 80
eval_batches: 2
compute:
  threads: 1
retries: 1
"""


def test_killed_train_resumes_from_checkpoint_and_matches(cli) -> None:
    cli("data", "builtin", "pydoc")
    killed_spec = cli.write_spec("killed.yaml", SPEC.format(tag="killed"))
    proc = subprocess.Popen([sys.executable, "-m", "bitsmith.platform.cli.main", "submit", str(killed_spec),
                             "--wait", "--json"], env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.time() + 240
        killed_pid = None
        while killed_pid is None:
            assert time.time() < deadline, "no checkpoint appeared"
            assert proc.poll() is None, proc.communicate()
            runs = cli("runs", "list", "--kind", "train", "--json").json()
            if runs:
                shown = cli("runs", "show", runs[0]["id"], "--json").json()
                if any(o["role"].startswith("checkpoint/") for o in shown["outputs"]) and shown["run"]["pid"]:
                    killed_pid = shown["run"]["pid"]
                    os.kill(killed_pid, signal.SIGKILL)  # the Ray worker running our job, as the OOM killer would
            time.sleep(0.3)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    import json

    result = json.loads(out)
    assert result["status"] == "succeeded", err
    shown = cli("runs", "show", result["run_id"], "--json").json()
    assert shown["run"]["attempt"] == 2
    assert "resuming from checkpoint" in cli("runs", "logs", result["run_id"]).out

    clean_spec = cli.write_spec("clean.yaml", SPEC.format(tag="clean"))
    clean = cli("submit", clean_spec, "--executor", "local", "--wait", "--json", "--no-cache").json()
    assert clean["outputs"]["model"] == result["outputs"]["model"], "resumed run's model differs from uninterrupted"
