"""How the hook compares a pipeline option with its neutral value, and names it when refused."""

from __future__ import annotations

import torch

from samplerguard.families import describe_argument
from samplerguard.hook.pipelines import _same


def test_an_option_is_neutral_only_with_the_neutral_type_and_value() -> None:
    assert _same(None, None)
    assert _same(0.0, 0.0)
    assert not _same(0, 0.0)  # an int where the neutral value is a float is not the same
    assert not _same(False, 0)
    assert not _same(0.7, 0.0)
    assert not _same(None, 0.0)
    assert not _same(0.0, None)


def test_a_refused_argument_is_named_briefly() -> None:
    assert describe_argument(torch.zeros(2, 4, 8, 8)) == "<tensor (2, 4, 8, 8)>"
    assert describe_argument(0.7) == "0.7"
    assert describe_argument("x" * 100) == repr("x" * 100)[:60]
