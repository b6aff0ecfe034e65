"""Inside a Ray task started from the repo root, `platform` is still the standard library's."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ray_from_repo_root():
    import ray

    old = os.getcwd()
    os.chdir(ROOT)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        os.chdir(old)


def test_platform_module_in_ray_task(ray_from_repo_root) -> None:
    ray = ray_from_repo_root

    @ray.remote
    def probe() -> tuple[str, str, str]:
        import platform
        import sys

        import bitsmith.platform.specs  # noqa: F401  (the package still imports under its own name)

        return platform.__file__, platform.system(), sys.path[0]

    path, system, _ = ray.get(probe.remote())
    assert path.endswith("platform.py") and str(ROOT / "platform") not in path
    assert system == "Linux"
