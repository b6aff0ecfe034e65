"""The one registry helper: duplicates refused, a miss is a SpecError naming the field and the valid names."""
from __future__ import annotations

import pytest

from bitsmith.platform.errors import SpecError
from bitsmith.workers.registry import Registry


def test_a_second_entry_under_one_name_is_refused_and_the_first_kept() -> None:
    reg: Registry[int] = Registry("method.type", "widget")

    @reg.register("a")
    def first() -> int:
        return 1

    with pytest.raises(ValueError, match="widget 'a' registered twice"):
        reg.register("a")(lambda: 2)
    assert reg.lookup("a") is first and reg.names() == ("a",) and len(reg) == 1 and "a" in reg


def test_a_real_registry_refuses_a_duplicate() -> None:
    from bitsmith.workers.evaluators.answers import EXTRACTORS, extractor

    with pytest.raises(ValueError, match="answer extractor 'boxed' registered twice"):
        extractor("boxed")(lambda text: text)
    assert EXTRACTORS.names() == ("boxed", "gsm8k", "last_number")


def test_a_lookup_miss_names_the_field_and_lists_the_valid_names() -> None:
    from bitsmith.workers.grpo.rewards import get_reward

    with pytest.raises(SpecError) as err:
        get_reward("nope")
    assert str(err.value) == "rewards.name: unknown reward 'nope'; expected one of boxed, exact_numeric, format"


def test_every_registry_of_the_workers_is_a_registry() -> None:
    from bitsmith.workers import quantizers, search
    from bitsmith.workers.evaluators import EVALUATORS
    from bitsmith.workers.evaluators.answers import EXTRACTORS
    from bitsmith.workers.grpo.rewards import REWARDS

    for reg in (quantizers.METHODS, search.ALLOCATORS, EVALUATORS, EXTRACTORS, REWARDS):
        assert isinstance(reg, Registry)
