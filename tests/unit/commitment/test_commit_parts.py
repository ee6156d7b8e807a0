"""``commit`` builds its Commitment from the parts it signed, without parsing the statement
back: it must equal what anyone who receives the envelope gets from ``Commitment.verify``, and
refuse the parts ``verify`` would refuse."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from samplerguard.commitment.statement import Commitment, commit
from samplerguard.errors import MalformedInputError
from tests.support.dataplane import tiny_record

OUT = "sha256:" + "ab" * 32


def _record(recipe: dict[str, object], steps: int = 2) -> object:
    return tiny_record(recipe, steps, OUT)


@pytest.mark.parametrize(
    "recipe",
    [
        {"pipeline": "t", "steps": 2},
        {"pipeline": "t", "guidance_scale": 7.5, "config": {"beta_end": 0.012, "k": 1.0}},
        {"pipeline": "é", "steps": 2, "nested": {"list": [1, 2.5, None, True]}},
    ],
)
def test_the_commitment_equals_what_its_receiver_verifies(recipe: dict[str, object]) -> None:
    key = Ed25519PrivateKey.generate()
    made = commit(
        _record(recipe),  # type: ignore[arg-type]
        key,
        request_id="r-1",
        tenant="tenant-a",
        extra={"policy": "p"},
    )
    received = Commitment.verify(made.to_json(), key.public_key())
    assert dataclasses.asdict(made) == dataclasses.asdict(received)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"output_digest": "sha256:" + "AB" * 32}, "no sha256 digest"),
        ({"output_digest": "md5:" + "ab" * 16}, "no sha256 digest"),
        ({"root": b"\0" * 31}, "64-hex"),
        ({"leaves": [b"x"] * 4}, "out of range"),
    ],
)
def test_parts_a_receiver_would_refuse_are_not_signed(
    change: dict[str, object], match: str
) -> None:
    record = dataclasses.replace(_record({"pipeline": "t"}), **change)  # type: ignore[type-var]
    with pytest.raises(MalformedInputError, match=match):
        commit(record, Ed25519PrivateKey.generate(), request_id="r-1", tenant="t")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"tenant": "t" * 129}, "tenant"),
        # the result is built from the parts, so the signed predicate must carry those parts
        ({"extra": {"root": "00" * 32}}, "would replace"),
    ],
)
def test_a_bad_tenant_or_an_extra_field_replacing_a_part_is_not_signed(
    arguments: dict[str, object], match: str
) -> None:
    kwargs: dict[str, object] = {"request_id": "r-1", "tenant": "t", **arguments}
    with pytest.raises(MalformedInputError, match=match):
        commit(_record({"pipeline": "t"}), Ed25519PrivateKey.generate(), **kwargs)  # type: ignore[arg-type]
