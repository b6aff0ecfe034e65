"""Multiple-choice knapsack: one level per layer, least total loss under a cost budget (DP or MILP).

costs[i][l] and losses[i][l] are layer i's cost (integer bits) and loss at level l; the budget bounds
Σ_i costs[i][l_i]. Both solvers return the level index per layer, or None when no choice fits.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from functools import reduce

import numpy as np

MAX_DP_STATES = 400_000  # budget units of the DP table; larger budgets are coarsened (costs rounded up)


def allocation_cost(costs: Sequence[Sequence[int]], allocation: Sequence[int]) -> int:
    return sum(int(c[lv]) for c, lv in zip(costs, allocation))


def solve_dp(costs: Sequence[Sequence[int]], losses: Sequence[Sequence[float]], budget: int,
             max_states: int = MAX_DP_STATES) -> list[int] | None:
    """Exact DP over the budget in units of gcd(costs) (Pisinger's multiple-choice knapsack recursion).

    dp_i[c] = min_l dp_{i-1}[c - cost_il] + loss_il is the least loss of layers 0..i within cost c. When
    budget / gcd exceeds `max_states`, costs are rounded up to a coarser unit: still feasible, then
    possibly not optimal (use the milp solver for exactness on large budgets).
    """
    unit = reduce(math.gcd, (int(c) for row in costs for c in row), 0) or 1
    if budget // unit > max_states:
        unit = math.ceil(budget / max_states)
    cap = budget // unit
    if cap < 0:
        return None
    n = len(costs)
    dp = np.zeros(cap + 1)
    choice = np.zeros((n, cap + 1), dtype=np.int16)
    for i in range(n):
        new = np.full(cap + 1, np.inf)
        for lv, (c, loss) in enumerate(zip(costs[i], losses[i])):
            w = -(-int(c) // unit)  # ceil: a coarsened allocation never exceeds the budget
            if w > cap:
                continue
            cand = np.full(cap + 1, np.inf)
            cand[w:] = dp[: cap + 1 - w] + float(loss)
            better = cand < new
            new[better] = cand[better]
            choice[i, better] = lv
        dp = new
    if not np.isfinite(dp[cap]):
        return None
    allocation = [0] * n
    c = cap
    for i in range(n - 1, -1, -1):  # walk the choices back from the full budget
        lv = int(choice[i, c])
        allocation[i] = lv
        c -= -(-int(costs[i][lv]) // unit)
    return allocation


def solve_milp(costs: Sequence[Sequence[int]], losses: Sequence[Sequence[float]], budget: int,
               time_limit_s: float = 60.0) -> list[int] | None:
    """The same problem as a 0/1 integer program (scipy's HiGHS): x_il ∈ {0, 1}, Σ_l x_il = 1,
    Σ cost_il x_il <= budget, minimise Σ loss_il x_il."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    n = len(costs)
    sizes = [len(row) for row in costs]
    offsets = np.cumsum([0] + sizes)
    m = int(offsets[-1])
    c = np.array([float(v) for row in losses for v in row])
    pick = np.zeros((n, m))
    for i in range(n):
        pick[i, offsets[i]:offsets[i + 1]] = 1
    cost_row = np.array([[float(v) for row in costs for v in row]])
    constraints = [LinearConstraint(pick, 1, 1), LinearConstraint(cost_row, -np.inf, float(budget))]
    res = milp(c, constraints=constraints, integrality=np.ones(m), bounds=Bounds(0, 1),
               options={"time_limit": time_limit_s, "mip_rel_gap": 0.0})
    if res.x is None:
        return None
    x = res.x.round().astype(int)
    return [int(np.argmax(x[offsets[i]:offsets[i + 1]])) for i in range(n)]


SOLVERS = {"dp": solve_dp, "milp": solve_milp}


def solve(solver: str, costs: Sequence[Sequence[int]], losses: Sequence[Sequence[float]],
          budget: int) -> list[int] | None:
    try:
        fn = SOLVERS[solver]
    except KeyError:
        raise ValueError(f"solver {solver!r}; expected one of {', '.join(SOLVERS)}") from None
    return fn(costs, losses, budget)
