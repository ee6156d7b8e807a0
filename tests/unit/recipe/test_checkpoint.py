"""Recipe inside safetensors: round trip through the real library, hashes, corrupt files."""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file

from samplerguard.errors import MalformedInputError, VerificationError
from samplerguard.recipe import (
    RECIPE_KEY,
    Recipe,
    read_checkpoint,
    read_recipe,
    verify_hashes,
    weights_digest,
    write_recipe,
)


def test_write_then_read_with_safetensors(checkpoint: Path, recipe: Recipe, tmp_path: Path) -> None:
    out = tmp_path / "with-recipe.safetensors"
    written = write_recipe(checkpoint, recipe, out)
    assert written.hashes is not None and written.hashes.metadata is not None
    # The real library still loads it: tensors identical, metadata kept, recipe added.
    before, after = load_file(str(checkpoint)), load_file(str(out))
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with safe_open(str(out), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["author"] == "tests" and json.loads(meta[RECIPE_KEY])["modelId"] == "sg-test"
    assert read_recipe(out) == written
    assert verify_hashes(out) == written
    assert weights_digest(read_checkpoint(out)) == weights_digest(read_checkpoint(checkpoint))


def test_rewrite_in_place_replaces_the_recipe(checkpoint: Path, recipe: Recipe) -> None:
    write_recipe(checkpoint, recipe, checkpoint)
    changed = recipe.model_copy(update={"default_steps": 10})
    write_recipe(checkpoint, changed, checkpoint)
    assert read_recipe(checkpoint).default_steps == 10
    assert list(read_checkpoint(checkpoint).metadata).count(RECIPE_KEY) == 1


def _flip_data_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def test_weights_hash_mismatch(checkpoint: Path, recipe: Recipe) -> None:
    write_recipe(checkpoint, recipe, checkpoint)
    _flip_data_byte(checkpoint)
    with pytest.raises(VerificationError, match=r"weights hash mismatch .*got 'sha256:"):
        verify_hashes(checkpoint)


def test_metadata_hash_mismatch(checkpoint: Path, recipe: Recipe, tmp_path: Path) -> None:
    pinned = write_recipe(checkpoint, recipe, checkpoint)
    # Rewrite with different other metadata but keep the old pinned hashes.
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file(
        load_file(str(checkpoint)), str(other), metadata={"format": "pt", "author": "mallory"}
    )
    write_recipe(other, pinned, other, pin_hashes=False)
    with pytest.raises(VerificationError, match="metadata hash mismatch"):
        verify_hashes(other)


def test_unpinned_recipe_cannot_be_verified(checkpoint: Path, recipe: Recipe) -> None:
    write_recipe(checkpoint, recipe, checkpoint, pin_hashes=False)
    with pytest.raises(VerificationError, match="pins no hashes"):
        verify_hashes(checkpoint)


def test_missing_recipe(checkpoint: Path) -> None:
    with pytest.raises(MalformedInputError, match=r"has no 'samplerguard\.recipe' entry"):
        read_recipe(checkpoint)


def _raw(header: dict[str, object] | bytes, data: bytes = b"") -> bytes:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(body)) + body + data


F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "shorter than the 8-byte header length"),
        (b"\x01\x00", "shorter than the 8-byte header length"),
        (struct.pack("<Q", 1 << 40), "exceeds the"),
        (struct.pack("<Q", 100) + b"{}", "header claims 100 bytes"),
        (_raw(b"{not json"), "not UTF-8 JSON"),
        (_raw(b"\xff\xfe"), "not UTF-8 JSON"),
        (_raw(b"[]"), "not a JSON object"),
        (_raw({"__metadata__": {"a": 1}}), "must map strings to strings"),
        (_raw({"t": {"dtype": "F32", "shape": [2]}}, bytes(8)), "needs exactly"),
        (_raw({"t": F32 | {"dtype": "X9"}}, bytes(8)), "unknown dtype"),
        (_raw({"t": F32 | {"shape": [-2]}}, bytes(8)), "malformed shape"),
        (_raw({"t": F32 | {"data_offsets": [0, 16]}}, bytes(8)), "outside the 8-byte data"),
        (_raw({"t": F32 | {"shape": [3]}}, bytes(8)), "does not fill its offsets"),
        (_raw({"t": F32}, bytes(12)), "data section is 12 bytes but the tensors cover 8"),
        (_raw({"a": F32, "b": F32}, bytes(8)), "starts at 0, expected 8"),
        (_raw({"__metadata__": {RECIPE_KEY: "x" * (4 << 20) + "x"}}), "too large"),
    ],
)
def test_corrupt_headers(tmp_path: Path, blob: bytes, message: str) -> None:
    p = tmp_path / "bad.safetensors"
    p.write_bytes(blob)
    with pytest.raises(MalformedInputError, match=message):
        read_checkpoint(p)


@pytest.mark.parametrize(
    ("recipe_text", "message"),
    [
        ("{", "is invalid"),
        ("UNKNOWN_SAMPLER", "unknown sampler 'warp_drive'"),
        ("x" * ((1 << 20) + 1), "a recipe is at most"),
    ],
)
def test_corrupt_recipe_metadata(
    tmp_path: Path, recipe_body: Callable[..., dict[str, Any]], recipe_text: str, message: str
) -> None:
    if recipe_text == "UNKNOWN_SAMPLER":
        recipe_text = json.dumps(recipe_body(sampler="warp_drive"))
    p = tmp_path / "bad.safetensors"
    p.write_bytes(_raw({"__metadata__": {RECIPE_KEY: recipe_text}, "t": F32}, bytes(8)))
    with pytest.raises(MalformedInputError, match=message):
        read_recipe(p)


def test_truncated_checkpoint(checkpoint: Path, recipe: Recipe) -> None:
    write_recipe(checkpoint, recipe, checkpoint)
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[:-3])
    with pytest.raises(MalformedInputError, match="outside the 243-byte data"):
        read_checkpoint(checkpoint)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(blob=st.binary(max_size=300), cut=st.integers(0, 400))
def test_random_bytes_never_crash(tmp_path: Path, blob: bytes, cut: int) -> None:
    p = tmp_path / "fuzz.safetensors"
    # Half the time a plausible prefix, so the fuzzer reaches the JSON and tensor checks.
    p.write_bytes((_raw(blob) + blob)[:cut] if cut % 2 else blob)
    with contextlib.suppress(MalformedInputError):
        read_recipe(p)
