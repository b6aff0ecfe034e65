"""The KubeRay head pod runs the store's dispatcher beside Ray: same image and settings, the head's /tmp/ray shared."""
from __future__ import annotations

from pathlib import Path

import yaml

RAYCLUSTER = Path(__file__).resolve().parents[2] / "infra" / "k8s" / "raycluster.yaml"


def test_the_head_pod_runs_one_dispatcher_sidecar_that_joins_the_head_through_its_tmp_ray() -> None:
    (cluster,) = [d for d in yaml.safe_load_all(RAYCLUSTER.read_text()) if d]
    pod = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    head, dispatcher = pod["containers"]
    assert dispatcher["name"] == "dispatcher" and dispatcher["image"] == head["image"]
    assert dispatcher["envFrom"] == head["envFrom"]  # the same store, artifact root and Ray address (auto)
    script = " ".join(dispatcher["args"])
    assert script.rstrip().endswith("exec bitsmith scheduler start --foreground")  # SIGTERM reaches it
    mounts = {c["name"]: {m["name"]: m["mountPath"] for m in c["volumeMounts"]} for c in (head, dispatcher)}
    assert mounts["ray-head"]["ray-tmp"] == mounts["dispatcher"]["ray-tmp"] == "/tmp/ray"
    assert mounts["dispatcher"]["bitsmith-shared"] == mounts["ray-head"]["bitsmith-shared"]
    assert {v["name"]: v for v in pod["volumes"]}["ray-tmp"] == {"name": "ray-tmp", "emptyDir": {}}
    for group in cluster["spec"]["workerGroupSpecs"]:  # only the head runs it: one dispatcher per store
        assert [c["name"] for c in group["template"]["spec"]["containers"]] == ["ray-worker"]
