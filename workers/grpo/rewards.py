"""The registry of verifiable rewards: `(completion, gold answer) -> float`, each identified by name and code hash.

A reward's identity in the run record is a SHA-256 over its name and the code fingerprint of the module
defining it (its source and every `bitsmith.*` module it imports: extractors, normalisers), the rule every
cache key uses, so a changed scoring rule changes the hash.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bitsmith.platform.context import code_fingerprint
from bitsmith.workers.evaluators.answers import extract_boxed, extract_last_number, gold_answer, normalize_answer
from bitsmith.workers.registry import Registry

RewardFn = Callable[[str, str], float]


@dataclass(frozen=True)
class Reward:
    name: str
    fn: RewardFn

    @property
    def code_sha256(self) -> str:
        payload = {"name": self.name, "code": code_fingerprint(self.fn.__module__).digest}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def __call__(self, completion: str, answer: str) -> float:
        return float(self.fn(completion, answer))


REWARDS: Registry[Reward] = Registry("rewards.name", "reward")
get_reward = REWARDS.lookup


def reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Register a reward function under `name`."""
    def register(fn: RewardFn) -> RewardFn:
        REWARDS.add(name, Reward(name, fn))
        return fn
    return register


@reward("exact_numeric")
def exact_numeric(completion: str, answer: str) -> float:
    """1 if the last number in the completion equals the gold answer (normalised), else 0."""
    found = extract_last_number(completion)
    return float(found is not None and normalize_answer(found) == gold_answer(answer))


@reward("boxed")
def boxed_match(completion: str, answer: str) -> float:
    """1 if the content of the last `\\boxed{}` equals the gold answer (normalised), else 0."""
    found = extract_boxed(completion)
    return float(found is not None and normalize_answer(found) == gold_answer(answer))


_BARE_NUMBER = re.compile(r"\s*[-+]?\d[\d,]*(?:\.\d+)?\s*")


@reward("format")
def format_reward(completion: str, answer: str) -> float:
    """1 if the completion states one final answer: a bare number, or exactly one `\\boxed{...}`; else 0."""
    if _BARE_NUMBER.fullmatch(completion):
        return 1.0
    return float(completion.count("\\boxed{") == 1 and completion.rstrip().endswith("}"))


def score(completions: Sequence[str], answers: Sequence[str], terms: Sequence[tuple[str, float]],
          ) -> tuple[list[float], dict[str, list[float]]]:
    """Weighted sum of the reward terms for each (completion, answer), and each term's raw values."""
    per_term = {name: [get_reward(name)(c, a) for c, a in zip(completions, answers)] for name, _ in terms}
    totals = [sum(weight * per_term[name][i] for name, weight in terms) for i in range(len(completions))]
    return totals, per_term


def reward_identity(names: Sequence[str]) -> dict[str, str]:
    """{name: code SHA-256} of the rewards a run used (for its report and artifact metadata)."""
    return {name: get_reward(name).code_sha256 for name in dict.fromkeys(names)}
