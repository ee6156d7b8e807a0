"""Provenance in outputs: the effective parameters and the commitment root inside the PNG.

The record is compact JSON in an ``iTXt`` chunk with keyword ``samplerguard`` (UTF-8, not
compressed, so ``exiftool`` / ``pngcheck -t`` show it). Files are named::

    [datetime]-[seed-pseudonym]-[model]-[sampler]-[schedule]-[steps]-cfg[CFG].png
    20261123T204501Z-s-5f1c0a9e2b7d4c11-sg-digits-ddim-trailing-20-cfg3.5.png

The seed pseudonym is the keyed hash from :mod:`samplerguard.rng` (``RequestNoise.seed_pseudonym``),
never the seed.
"""

from __future__ import annotations

import io
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from pydantic.alias_generators import to_camel

from samplerguard.errors import MalformedInputError

__all__ = [
    "PNG_KEY",
    "Provenance",
    "embed_provenance",
    "provenance_filename",
    "read_provenance",
    "save_png",
]

PNG_KEY = "samplerguard"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_RECORD = 64 << 10
_MAX_PNG = 256 << 20
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

_Label = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class Provenance(BaseModel):
    """What produced an image. Wire names are camelCase."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    schema_version: Literal["samplerguard.provenance/v1"] = "samplerguard.provenance/v1"
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))
    model_id: _Label
    sampler: _Label
    schedule: _Label
    steps: Annotated[int, Field(ge=1, le=10_000)]
    cfg: Annotated[float, Field(ge=0.0, le=100.0)]
    width: Annotated[int, Field(ge=1, le=65_536)] | None = None
    height: Annotated[int, Field(ge=1, le=65_536)] | None = None
    prediction_type: _Label | None = None
    seed_pseudonym: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9-]{1,64}$")]
    tenant_pseudonym: _Label | None = None
    request_id: _Label | None = None
    rng_mode: Literal["ctr-drbg", "hmac-drbg", "framework"] | None = None
    #: The trajectory commitment's Merkle root (hex) and its tree size.
    commitment_root: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = None
    tree_size: Annotated[int, Field(ge=0)] | None = None
    recipe_digest: Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")] | None = None
    #: Free-form extra parameters (class label, preset …), strings only.
    extra: Annotated[
        dict[str, Annotated[str, StringConstraints(max_length=256)]], Field(max_length=32)
    ] = {}

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True)


def provenance_filename(p: Provenance) -> str:
    """``[datetime]-[seed-pseudonym]-[model]-[sampler]-[schedule]-[steps]-cfg[CFG].png``; every
    field is reduced to ``[A-Za-z0-9._-]`` so the name is safe on any file system."""

    def clean(text: str) -> str:
        return _UNSAFE.sub("_", text).strip("._-")[:64] or "x"

    when = p.created.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    seed = re.sub(r"[^A-Za-z0-9-]", "", p.seed_pseudonym)[:64]
    return (
        f"{when}-{seed}-{clean(p.model_id)}-{clean(p.sampler)}-{clean(p.schedule)}"
        f"-{p.steps}-cfg{p.cfg:g}.png"
    )


def embed_provenance(image: Any, provenance: Provenance) -> bytes:
    """PNG bytes of ``image`` (a PIL image, or PNG bytes) with the record in iTXt
    ``samplerguard``. Any earlier ``samplerguard`` text chunk is replaced."""
    from PIL import Image, PngImagePlugin

    if isinstance(image, bytes | bytearray):
        image = _open_png(bytes(image), "the image")
    if not isinstance(image, Image.Image):
        raise MalformedInputError(f"cannot embed provenance in a {type(image).__name__}")
    info = PngImagePlugin.PngInfo()
    for key, value in (getattr(image, "text", None) or {}).items():
        if key != PNG_KEY:
            info.add_itxt(key, value)
    info.add_itxt(PNG_KEY, provenance.to_json(), zip=False)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def save_png(image: Any, provenance: Provenance, directory: str | os.PathLike[str]) -> Path:
    """Write the image with its provenance under its conventional name; returns the path."""
    out = Path(directory) / provenance_filename(provenance)
    out.write_bytes(embed_provenance(image, provenance))
    return out


def _open_png(data: bytes, where: str) -> Any:
    from PIL import Image, UnidentifiedImageError

    if not data.startswith(_PNG_SIGNATURE):
        raise MalformedInputError(f"{where} is not a PNG (bad signature)")
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise MalformedInputError(f"{where} is a corrupt PNG: {exc}") from None
    except Image.DecompressionBombError as exc:
        raise MalformedInputError(f"{where} is too large to decode: {exc}") from None
    return im


def read_provenance(source: str | os.PathLike[str] | bytes) -> Provenance:
    """The ``samplerguard`` record of a PNG. :class:`MalformedInputError` when the file is not
    a PNG, is corrupt, or carries no (or an invalid) record."""
    if isinstance(source, bytes):
        data, where = source, "the PNG"
    else:
        path = Path(source)
        where = str(path)
        try:
            if path.stat().st_size > _MAX_PNG:
                raise MalformedInputError(f"{where} is larger than {_MAX_PNG} bytes")
            data = path.read_bytes()
        except OSError as exc:
            raise MalformedInputError(f"cannot read {where}: {exc.strerror}") from None
    im = _open_png(data, where)
    text = (getattr(im, "text", None) or {}).get(PNG_KEY)
    if text is None:
        raise MalformedInputError(f"{where} has no {PNG_KEY!r} provenance chunk")
    if len(text) > _MAX_RECORD:
        raise MalformedInputError(f"{where}: the provenance record exceeds {_MAX_RECORD} bytes")
    try:
        return Provenance.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise MalformedInputError(
            f"{where}: the provenance record is invalid ({loc}: {first['msg']})"
        ) from None
