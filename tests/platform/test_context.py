"""The run context as a worker sees it: a missing input is a clear SpecError, not a KeyError."""
from __future__ import annotations

from pathlib import Path

import pytest

from bitsmith.platform.context import local_context
from bitsmith.platform.errors import SpecError


def test_an_input_the_run_was_not_given_is_a_spec_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "corpus").mkdir()
    ctx, _ = local_context(tmp_path / "work", inputs={"corpus": tmp_path / "corpus"}, run_id="r1")
    assert ctx.input("corpus").path == tmp_path / "corpus"
    with pytest.raises(SpecError) as err:
        ctx.input("model")
    assert str(err.value) == "inputs.model: not given to run r1; expected an artifact ref for it (inputs given: corpus)"
