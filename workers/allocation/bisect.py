"""Bisection on how many of the least sensitive layers drop from high to low precision within a quality loss."""
from __future__ import annotations

from collections.abc import Callable


def drop_allocation(order: list[int], k: int, high: int, low: int, n_layers: int) -> list[int]:
    """Level `low` for the first k layers of `order` (least sensitive first), `high` for the rest."""
    allocation = [high] * n_layers
    for i in order[:k]:
        allocation[i] = low
    return allocation


def bisect_drop(order: list[int], high: int, low: int, n_layers: int,
                within: Callable[[list[int]], bool]) -> tuple[list[int], list[dict[str, float]]]:
    """The allocation with the most layers dropped whose measured quality stays `within` the tolerance,
    assuming quality degrades monotonically with k. Returns (allocation, probes [{k, ok}]).

    k = 0 (everything at `high`) is returned when even that misses the tolerance (the caller reports it).
    """
    probes: list[dict[str, float]] = []

    def ok(k: int) -> bool:
        result = within(drop_allocation(order, k, high, low, n_layers))
        probes.append({"dropped_layers": float(k), "within": float(result)})
        return result

    lo, hi = 0, len(order)  # invariant: lo is acceptable (assumed for 0), hi + 1 is not
    if ok(hi):
        return drop_allocation(order, hi, high, low, n_layers), probes
    hi -= 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return drop_allocation(order, lo, high, low, n_layers), probes
