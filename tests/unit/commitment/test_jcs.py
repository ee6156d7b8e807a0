"""The fast canonical JSON path gives exactly the reference RFC 8785 bytes."""

from __future__ import annotations

from typing import Any

import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from samplerguard.commitment.jcs import dumps, number

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
documents = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)


@given(documents)
def test_matches_the_reference_encoder(doc: Any) -> None:
    try:
        want = bytes(rfc8785.dumps(doc))
    except rfc8785.CanonicalizationError:
        # out of JSON's safe integer domain: refused by both, never encoded differently
        with pytest.raises(rfc8785.CanonicalizationError):
            dumps(doc)
        return
    assert dumps(doc) == want


def test_a_step_leaf() -> None:
    leaf: dict[str, Any] = {
        "type": "step",
        "index": 3,
        "timestep": 856.2857,
        "latent": "sha256:ab",
        "noise": [],
    }
    assert dumps(leaf) == bytes(rfc8785.dumps(leaf))
    assert dumps({"b": 1, "a": "\u00e9\n"}) == '{"a":"\u00e9\\n","b":1}'.encode()


@given(st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53) + 1, 2**53 - 1))
def test_number_matches_the_reference_encoder(x: float) -> None:
    assert number(x) == bytes(rfc8785.dumps(x)).decode()


@pytest.mark.parametrize("x", [999.0, 1e-7, 1e21, 5e-324, -0.0, 1e-4, 123456789012345.6])
def test_number_edge_cases(x: float) -> None:
    assert number(x) == bytes(rfc8785.dumps(x)).decode()


@pytest.mark.parametrize("x", [True, "1", None, float("nan")])
def test_number_refuses_what_is_not_a_json_number(x: object) -> None:
    with pytest.raises((TypeError, rfc8785.CanonicalizationError)):
        number(x)  # type: ignore[arg-type]
