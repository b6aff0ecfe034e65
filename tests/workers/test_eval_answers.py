"""Answer extraction, normalisation and the pass@k / maj@k estimators of generation tasks."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from bitsmith.workers.evaluators.answers import (EXTRACTORS, extract_boxed, extract_gsm8k, extract_last_number,
                                                 gold_answer, maj_at_k, majority_answer, normalize_answer, pass_at_k)
from bitsmith.workers.evaluators.generation import score_generations


def test_pass_at_k_matches_its_formula() -> None:
    assert pass_at_k(16, 4, 4) == pytest.approx(1 - math.comb(12, 4) / math.comb(16, 4))
    assert round(pass_at_k(16, 4, 4), 3) == 0.728
    for n, c, k in itertools.product([1, 5, 16], range(0, 17), [1, 2, 4, 16]):
        if c <= n and k <= n:
            assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the fraction correct


def test_pass_at_k_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k(4, 5, 1)


@pytest.mark.parametrize("text, expected", [
    ("The answer is 42.", "42"),
    ("3 apples and 5 pears make 8", "8"),
    ("it costs $1,234.50 in total", "1,234.50"),
    ("the temperature fell to -7 degrees", "-7"),
    ("about .5 of it", ".5"),
    ("no digits here", None),
    ("", None),
])
def test_extract_last_number(text: str, expected: str | None) -> None:
    assert extract_last_number(text) == expected


@pytest.mark.parametrize("text, expected", [
    (r"so \boxed{12}", "12"),
    (r"\boxed{1} then \boxed{\frac{1}{2}}", r"\frac{1}{2}"),
    (r"\boxed{ 7 } is it", " 7 "),
    (r"unclosed \boxed{3", None),
    ("nothing boxed 5", None),
])
def test_extract_boxed(text: str, expected: str | None) -> None:
    assert extract_boxed(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("She pays 3 + 4 = 7.\n#### 7", "7"),
    ("#### 1,000", "1,000"),
    ("#### -3\nlater #### 5", "5"),
    ("The answer is 7", None),
])
def test_extract_gsm8k(text: str, expected: str | None) -> None:
    assert extract_gsm8k(text) == expected


@pytest.mark.parametrize("raw, expected", [
    ("1,234", "1234"), ("12.0", "12"), ("+5", "5"), ("$5$", "5"), ("5.", "5"), ("0.50", "0.5"),
    ("-0", "0"), (" Paris. ", "paris"), ("New   York", "new york"), (r"\frac{1}{2}", r"\frac{1}{2}"),
])
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_gold_answer_takes_gsm8k_marker() -> None:
    assert gold_answer("3 + 4 = 7\n#### 7") == "7"
    assert gold_answer("1,000") == "1000"


def test_extractor_registry_matches_spec() -> None:
    from typing import get_args

    from bitsmith.platform.specs.eval import Extractor

    assert set(EXTRACTORS) == set(get_args(Extractor))


def test_majority_ignores_failures_and_breaks_ties_by_first_seen() -> None:
    assert majority_answer([None, "3", "4", "4", None]) == "4"
    assert majority_answer(["5", "3", "3", "5"]) == "5"
    assert majority_answer([None, None]) is None


def test_maj_at_k_full_set_and_random_subsets() -> None:
    rng = np.random.default_rng(0)
    answers = ["1", "1", "1", "2"]
    assert maj_at_k(answers, "1", 4, 8, rng) == 1.0
    assert maj_at_k(answers, "2", 4, 8, rng) == 0.0
    # with k=1 the subsets estimate the fraction correct (3/4)
    assert maj_at_k(answers, "1", 1, 4000, rng) == pytest.approx(0.75, abs=0.03)


def test_score_generations_counts_failures_and_correctness() -> None:
    outputs = [["= 7", "7", "no idea", "it is 8"],  # 2 correct, majority 7
               ["#### 3", "2", "2", "3"],  # 2 correct, tie 3 vs 2 -> 3 (seen first)
               ["5", "6", "6", "x"]]  # 1 correct, majority 6
    metrics, samples = score_generations(["3+4=", "1+2=", "2+3="], ["7", "3", "5"], outputs, "last_number",
                                         (1, 4), 16, seed=0)
    assert metrics["exact_match"] == pytest.approx(5 / 12)
    assert metrics["pass@1"] == pytest.approx(5 / 12)
    assert metrics["pass@4"] == 1.0
    assert metrics["maj@4"] == pytest.approx(2 / 3)
    assert metrics["extraction_failure_rate"] == pytest.approx(2 / 12)
    assert samples[0]["extracted"] == ["7", "7", None, "8"] and samples[0]["correct"] == [True, True, False, False]
