"""Answer extraction and normalisation, and the sample-based estimators pass@k and maj@k."""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation

import numpy as np

from bitsmith.workers.registry import Registry

Extractor = Callable[[str], "str | None"]
EXTRACTORS: Registry[Extractor] = Registry("tasks.extractor", "answer extractor")
extractor = EXTRACTORS.register

_NUMBER = re.compile(r"[-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)")
_GSM8K = re.compile(r"####\s*([-+]?[\d,]*\.?\d+)")


@extractor("last_number")
def extract_last_number(text: str) -> str | None:
    """The last number in the text (`1,234.5`, `-7`, `.5`), or None."""
    matches = [m for m in _NUMBER.findall(text) if any(c.isdigit() for c in m)]
    return matches[-1] if matches else None


@extractor("boxed")
def extract_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (nested braces allowed), or None if there is none or it is unclosed."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


@extractor("gsm8k")
def extract_gsm8k(text: str) -> str | None:
    """The number after the last `#### ` (GSM8K's answer marker), or None."""
    matches = _GSM8K.findall(text)
    return matches[-1] if matches else None


def normalize_answer(answer: str) -> str:
    """Canonical form for exact match: numbers lose thousands separators, `+`, trailing zeros and `.`;
    text loses surrounding `$`, spaces and a final period, and is lower-cased with single spaces."""
    text = answer.strip().strip("$").strip().rstrip(".").strip()
    number = re.sub(r"(?<=\d),(?=\d{3})", "", text)
    try:
        value = Decimal(number)
    except InvalidOperation:
        return " ".join(text.lower().split())
    if not value.is_finite():
        return " ".join(text.lower().split())
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def gold_answer(answer: str) -> str:
    """The reference answer, normalised (a GSM8K-style `... #### 42` keeps what follows the marker)."""
    if "####" in answer:
        answer = answer.rsplit("####", 1)[1]
    return normalize_answer(answer)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k = 1 - C(n-c, k) / C(n, k) (Chen et al. 2021, eq. 1), in a stable product form."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def majority_answer(answers: Sequence[str | None]) -> str | None:
    """The most frequent extracted answer (failures ignored); ties go to the one seen first."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)


def maj_at_k(answers: Sequence[str | None], gold: str, k: int, subsets: int, rng: np.random.Generator) -> float:
    """Fraction of random k-subsets of the samples whose majority answer equals `gold`."""
    n = len(answers)
    if not 1 <= k <= n:
        raise ValueError(f"maj@k needs 1 <= k <= n; got n={n}, k={k}")
    if k == n:
        return float(majority_answer(answers) == gold)
    hits = 0
    for _ in range(subsets):
        pick = sorted(rng.choice(n, size=k, replace=False).tolist())
        hits += majority_answer([answers[i] for i in pick]) == gold
    return hits / subsets
