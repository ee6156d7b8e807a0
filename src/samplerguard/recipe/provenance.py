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
    "PNG_COMMITMENT_KEY",
    "PNG_KEY",
    "Provenance",
    "embed_provenance",
    "provenance_filename",
    "provenance_from_commitment",
    "read_commitment",
    "read_provenance",
    "save_png",
    "verify_provenance",
]

PNG_KEY = "samplerguard"
#: the signed commitment (its DSSE envelope as JSON) the record claims to come from
PNG_COMMITMENT_KEY = "samplerguard-commitment"
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


def embed_provenance(
    image: Any, provenance: Provenance, envelope: dict[str, Any] | None = None
) -> bytes:
    """PNG bytes of ``image`` (a PIL image, or PNG bytes) with the record in iTXt
    ``samplerguard`` and, when given, the signed commitment's DSSE envelope in iTXt
    ``samplerguard-commitment``. Earlier samplerguard chunks are replaced."""
    from PIL import Image, PngImagePlugin

    if isinstance(image, bytes | bytearray):
        image = _open_png(bytes(image), "the image")
    if not isinstance(image, Image.Image):
        raise MalformedInputError(f"cannot embed provenance in a {type(image).__name__}")
    info = PngImagePlugin.PngInfo()
    for key, value in (getattr(image, "text", None) or {}).items():
        if key not in (PNG_KEY, PNG_COMMITMENT_KEY):
            info.add_itxt(key, value)
    info.add_itxt(PNG_KEY, provenance.to_json(), zip=False)
    if envelope is not None:
        import json

        info.add_itxt(PNG_COMMITMENT_KEY, json.dumps(envelope, sort_keys=True), zip=True)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def save_png(
    image: Any,
    provenance: Provenance,
    directory: str | os.PathLike[str],
    envelope: dict[str, Any] | None = None,
) -> Path:
    """Write the image with its provenance under its conventional name; returns the path."""
    out = Path(directory) / provenance_filename(provenance)
    out.write_bytes(embed_provenance(image, provenance, envelope))
    return out


def provenance_from_commitment(commitment: Any, **extra: str) -> Provenance:
    """The record of an output whose trajectory ``commitment`` (a verified
    :class:`~samplerguard.commitment.statement.Commitment`) signed."""
    from samplerguard.commitment import jcs
    from samplerguard.commitment.digest import bytes_digest
    from samplerguard.policy.schedule import schedule_id

    recipe = commitment.recipe
    model = recipe.get("model") if isinstance(recipe.get("model"), dict) else {}
    config = recipe.get("scheduler_config")
    return Provenance(
        model_id=str(model.get("name") or recipe.get("pipeline")),
        sampler=str(recipe.get("sampler")),
        schedule=schedule_id(
            str(recipe.get("scheduler_class")), config if isinstance(config, dict) else {}
        ),
        steps=int(recipe.get("steps", 1)),
        cfg=float(recipe.get("guidance_scale", 0.0)),
        # the seed never leaves the sidecar; the record names no pseudonym of it here
        seed_pseudonym="withheld",
        request_id=commitment.request_id,
        rng_mode=recipe.get("rng")
        if recipe.get("rng") in ("ctr-drbg", "hmac-drbg")
        else "framework",
        commitment_root=commitment.root.hex(),
        tree_size=commitment.tree_size,
        recipe_digest=bytes_digest(jcs.dumps(recipe)),
        extra=extra,
    )


def read_commitment(source: str | os.PathLike[str] | bytes) -> dict[str, Any] | None:
    """The DSSE envelope a PNG carries in ``samplerguard-commitment``, or None."""
    import json

    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    text = (getattr(_open_png(data, "the PNG"), "text", None) or {}).get(PNG_COMMITMENT_KEY)
    if text is None:
        return None
    if len(text) > 1 << 20:
        raise MalformedInputError("the PNG's commitment chunk exceeds 1 MiB")
    try:
        doc = json.loads(text)
    except ValueError:
        raise MalformedInputError("the PNG's commitment chunk is not JSON") from None
    if not isinstance(doc, dict):
        raise MalformedInputError("the PNG's commitment chunk is not a DSSE envelope")
    return doc


def verify_provenance(record: Provenance, envelope: dict[str, Any], public_key: Any) -> Any:
    """Check the record against the commitment it names: the envelope's signature under
    ``public_key``, then every field the record shares with the signed statement. Returns the
    verified commitment; raises :class:`~samplerguard.errors.VerificationError` naming the
    first field that differs (an edited record, or a record pasted beside another commitment)."""
    from samplerguard.commitment.statement import Commitment
    from samplerguard.errors import VerificationError

    commitment = Commitment.verify(envelope, public_key)
    want = provenance_from_commitment(commitment)
    for field in (
        "commitment_root",
        "tree_size",
        "request_id",
        "recipe_digest",
        "sampler",
        "schedule",
        "steps",
        "cfg",
        "model_id",
        "rng_mode",
    ):
        got, signed = getattr(record, field), getattr(want, field)
        if got != signed:
            raise VerificationError(
                f"provenance: {field} is {got!r}, the signed commitment says {signed!r}"
            )
    return commitment


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
