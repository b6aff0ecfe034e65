"""Ray actor pools for workers that fan work out (evolutionary search, RL rollouts)."""
from __future__ import annotations

from typing import Any


class RayActorPool:
    """`n` Ray actors of one class; `map` keeps every actor busy and returns results in item order."""

    def __init__(self, cls: type, n_actors: int, args: tuple, kwargs: dict, cpus: float, gpus: float):
        import ray

        remote_cls = ray.remote(num_cpus=cpus, num_gpus=gpus)(cls)
        self.actors = [remote_cls.remote(*args, **kwargs) for _ in range(max(1, n_actors))]
        self.size = len(self.actors)

    def map(self, method: str, items: list[Any]) -> list[Any]:
        import ray

        results: list[Any] = [None] * len(items)
        free = list(range(self.size))
        in_flight: dict[Any, tuple[int, int]] = {}  # ref -> (item index, actor index)
        next_item = 0
        while next_item < len(items) or in_flight:
            while free and next_item < len(items):
                actor = free.pop()
                ref = getattr(self.actors[actor], method).remote(items[next_item])
                in_flight[ref] = (next_item, actor)
                next_item += 1
            done, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in done:
                index, actor = in_flight.pop(ref)
                results[index] = ray.get(ref)
                free.append(actor)
        return results

    def call_all(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        import ray

        return ray.get([getattr(a, method).remote(*args, **kwargs) for a in self.actors])

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []

    def __enter__(self) -> "RayActorPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def ray_actor_pool(cls: type, n_actors: int, args: tuple, kwargs: dict, cpus: float, gpus: float) -> RayActorPool:
    return RayActorPool(cls, n_actors, args, kwargs, cpus, gpus)
