"""Generate an arithmetic reasoning task: "What is 37+45? Answer:" -> "82", with held-out problems."""
from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bitsmith.platform.errors import DataError

from .datasets import write_dataset

OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
MAX_ENUMERATED = 200_000  # problem spaces up to this size are enumerated, larger ones sampled


def format_prompt(a: int, op: str, b: int) -> str:
    return f"What is {a}{op}{b}? Answer:"


def make_record(a: int, op: str, b: int) -> dict[str, Any]:
    return {"prompt": format_prompt(a, op, b), "answer": str(OPERATIONS[op](a, b)), "a": a, "b": b, "op": op}


def generate_arithmetic(dest_dir: str | Path, *, n_train: int, n_test: int, n_calibration: int,
                        min_operand: int = 0, max_operand: int = 99,
                        operations: Sequence[str] = ("+", "-"), seed: int = 0,
                        allow_negative: bool = False) -> Path:
    """Write a `prompts` dataset of arithmetic problems with exactly verifiable numeric answers.

    Test and calibration problems are distinct problems that never occur in `train`; train draws
    from the remaining problems (with repetition when `n_train` exceeds them). Without
    `allow_negative`, subtraction puts the larger operand first. Deterministic in `seed`.
    """
    unknown = [op for op in operations if op not in OPERATIONS]
    if unknown or not operations:
        raise DataError(f"generate_arithmetic: operations {list(operations)}; expected a non-empty subset of "
                        f"{', '.join(OPERATIONS)}")
    if min_operand > max_operand:
        raise DataError(f"generate_arithmetic: min_operand {min_operand} > max_operand {max_operand}")
    rng = random.Random(seed)
    span = max_operand - min_operand + 1
    problems = _problem_space(min_operand, max_operand, operations, allow_negative, rng,
                              limit=n_train + n_test + n_calibration if span * span * len(operations)
                              > MAX_ENUMERATED else None)
    held = n_test + n_calibration
    if held >= len(problems):
        raise DataError(f"generate_arithmetic: {held} held-out problems requested but only {len(problems)} "
                        "distinct problems exist; expected fewer test/calibration records or a wider operand range")
    rng.shuffle(problems)
    test, calibration, pool = problems[:n_test], problems[n_test:held], problems[held:]
    train = pool[:n_train] if n_train <= len(pool) else pool + [rng.choice(pool) for _ in range(n_train - len(pool))]
    splits = {"train": [make_record(*p) for p in train], "calibration": [make_record(*p) for p in calibration],
              "test": [make_record(*p) for p in test]}
    source = {"name": "arithmetic", "seed": seed, "min_operand": min_operand, "max_operand": max_operand,
              "operations": list(operations), "allow_negative": allow_negative,
              "n_train": n_train, "n_test": n_test, "n_calibration": n_calibration}
    return write_dataset(dest_dir, "prompts", splits, source, task="arithmetic", answer_type="integer")


def _problem_space(lo: int, hi: int, operations: Sequence[str], allow_negative: bool, rng: random.Random,
                   limit: int | None) -> list[tuple[int, str, int]]:
    """All distinct (a, op, b) in a fixed order, or `limit` distinct random ones for huge ranges."""
    def canonical(a: int, op: str, b: int) -> tuple[int, str, int]:
        return (b, op, a) if op == "-" and not allow_negative and a < b else (a, op, b)

    if limit is None:
        space = {canonical(a, op, b) for op in operations for a, b in itertools.product(range(lo, hi + 1), repeat=2)}
        return sorted(space, key=lambda p: (operations.index(p[1]), p[0], p[2]))
    seen: dict[tuple[int, str, int], None] = {}
    while len(seen) < limit:
        seen[canonical(rng.randint(lo, hi), rng.choice(list(operations)), rng.randint(lo, hi))] = None
    return list(seen)
