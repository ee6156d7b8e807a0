"""PNG provenance and file naming."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from samplerguard.errors import MalformedInputError
from samplerguard.recipe import (
    Provenance,
    embed_provenance,
    provenance_filename,
    read_provenance,
    save_png,
)

PROV = Provenance(
    created=datetime(2026, 11, 23, 20, 45, 1, tzinfo=UTC),
    model_id="sg-digits",
    sampler="ddim",
    schedule="trailing",
    steps=20,
    cfg=3.5,
    width=8,
    height=8,
    seed_pseudonym="s-5f1c0a9e2b7d4c11",
    tenant_pseudonym="t-000102030405060708090a0b",
    request_id="req-1",
    rng_mode="ctr-drbg",
    commitment_root="ab" * 32,
    tree_size=24,
    extra={"classLabel": "7"},
)


def _image() -> Image.Image:
    return Image.new("L", (8, 8), color=128)


def test_file_name_pattern() -> None:
    assert provenance_filename(PROV) == (
        "20261123T204501Z-s-5f1c0a9e2b7d4c11-sg-digits-ddim-trailing-20-cfg3.5.png"
    )
    odd = PROV.model_copy(update={"model_id": "../../etc/passwd", "schedule": "a/b c"})
    name = provenance_filename(odd)
    assert "/" not in name and ".." not in name
    assert re.fullmatch(r"[0-9TZ]+-s-[0-9a-f]+-[\w.-]+-ddim-[\w.-]+-20-cfg3\.5\.png", name)


def test_round_trip(tmp_path: Path) -> None:
    path = save_png(_image(), PROV, tmp_path)
    assert path.name == provenance_filename(PROV)
    assert read_provenance(path) == PROV
    # The chunk is a standard iTXt any PNG reader sees.
    with Image.open(path) as im:
        assert isinstance(im, PngImagePlugin.PngImageFile)
        assert "samplerguard" in im.text and '"commitmentRoot"' in im.text["samplerguard"]


def test_embedding_replaces_an_earlier_record_and_keeps_other_text() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "diffusers")
    buf = io.BytesIO()
    _image().save(buf, format="PNG", pnginfo=info)
    first = embed_provenance(buf.getvalue(), PROV)
    second = embed_provenance(first, PROV.model_copy(update={"steps": 10}))
    assert read_provenance(second).steps == 10
    with Image.open(io.BytesIO(second)) as im:
        assert isinstance(im, PngImagePlugin.PngImageFile)
        assert im.text["Software"] == "diffusers"


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(MalformedInputError, match="not a PNG"):
        read_provenance(b"GIF89a....")
    plain = io.BytesIO()
    _image().save(plain, format="PNG")
    with pytest.raises(MalformedInputError, match="no 'samplerguard' provenance chunk"):
        read_provenance(plain.getvalue())
    good = embed_provenance(_image(), PROV)
    with pytest.raises(MalformedInputError, match="corrupt PNG"):
        read_provenance(good[:60])
    info = PngImagePlugin.PngInfo()
    info.add_itxt("samplerguard", '{"modelId": 5}')
    bad = io.BytesIO()
    _image().save(bad, format="PNG", pnginfo=info)
    with pytest.raises(MalformedInputError, match="provenance record is invalid"):
        read_provenance(bad.getvalue())
    with pytest.raises(MalformedInputError, match="cannot read"):
        read_provenance(tmp_path / "absent.png")
    with pytest.raises(MalformedInputError, match="cannot embed"):
        embed_provenance(object(), PROV)
