"""The `noop` job: sleep, log metrics, write a small result; fail or crash on demand (for platform tests)."""
from __future__ import annotations

import json
import os
import signal
import time

from bitsmith.platform.context import OutputArtifact, RunContext, WorkerOutputs
from bitsmith.platform.specs.noop import NoopSpec


def run(spec: NoopSpec, ctx: RunContext) -> WorkerOutputs:
    if ctx.attempt in spec.crash_on_attempts:
        os.kill(os.getpid(), signal.SIGKILL)  # a hard process death, as from the OOM killer
    if spec.sleep_s:
        steps = max(1, int(spec.sleep_s * 10))
        for _ in ctx.progress(range(steps), desc="sleeping"):
            time.sleep(spec.sleep_s / steps)
    for step in range(spec.metrics):
        ctx.log_metrics({"noop/value": float(step)}, step=step)
    if spec.fail:
        raise RuntimeError("noop: failing as asked (fail=true)")
    result = ctx.output_path("result.json")
    data_digest = ctx.inputs["data"].digest if "data" in ctx.inputs else None
    result.write_text(json.dumps({"payload": spec.payload, "seed": spec.seed, "input": data_digest}))
    return WorkerOutputs(artifacts={"result": OutputArtifact(result, kind="result")},
                         metrics={"noop/metrics_logged": float(spec.metrics)})
