"""DSSE envelopes and the in-toto statements inside them, parsed strictly and bounded.

The encoding (PAE), the payload and statement types and the caps are
:mod:`samplerguard.commitment.dsse`'s, which owns them for every DSSE envelope samplerguard
handles; this module parses the supply chain's attestations with them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from samplerguard.commitment.dsse import (
    IN_TOTO_PAYLOAD_TYPE,
    IN_TOTO_STATEMENT_TYPES,
    MAX_ATTESTATION_ENVELOPE_BYTES,
    MAX_SIGNATURES,
    decode_b64,
    pae,
)
from samplerguard.errors import MalformedInputError

__all__ = [
    "Envelope",
    "Statement",
    "Subject",
    "decode_b64",
]


@dataclass(frozen=True)
class Envelope:
    """A parsed DSSE envelope. ``signatures`` holds ``(keyid, sig)`` pairs."""

    payload_type: str
    payload: bytes = field(repr=False)
    signatures: tuple[tuple[str, bytes], ...]

    @classmethod
    def from_json(cls, raw: bytes) -> Envelope:
        if len(raw) > MAX_ATTESTATION_ENVELOPE_BYTES:
            raise MalformedInputError(
                f"DSSE envelope is {len(raw)} bytes (at most {MAX_ATTESTATION_ENVELOPE_BYTES})"
            )
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedInputError(f"DSSE envelope is not JSON: {exc}") from None
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: object) -> Envelope:
        if not isinstance(doc, dict):
            raise MalformedInputError("DSSE envelope must be a JSON object")
        payload_type = doc.get("payloadType")
        if not isinstance(payload_type, str) or not payload_type:
            raise MalformedInputError("DSSE envelope lacks payloadType")
        payload = decode_b64(doc.get("payload"), "payload")
        sigs = doc.get("signatures")
        if not isinstance(sigs, list) or not sigs:
            raise MalformedInputError("DSSE envelope has no signatures")
        if len(sigs) > MAX_SIGNATURES:
            raise MalformedInputError(
                f"DSSE envelope has {len(sigs)} signatures (at most {MAX_SIGNATURES})"
            )
        pairs = []
        for i, sig in enumerate(sigs):
            if not isinstance(sig, dict):
                raise MalformedInputError(f"DSSE signature {i} is not an object")
            keyid = sig.get("keyid", "")
            if not isinstance(keyid, str):
                raise MalformedInputError(f"DSSE signature {i} keyid is not a string")
            pairs.append((keyid, decode_b64(sig.get("sig"), f"signature {i}")))
        return cls(payload_type, payload, tuple(pairs))

    @property
    def pae(self) -> bytes:
        return pae(self.payload_type, self.payload)

    def statement(self) -> Statement:
        if self.payload_type != IN_TOTO_PAYLOAD_TYPE:
            raise MalformedInputError(
                f"DSSE payloadType is {self.payload_type[:100]!r} (expected {IN_TOTO_PAYLOAD_TYPE})"
            )
        return Statement.from_json(self.payload)


@dataclass(frozen=True)
class Subject:
    name: str
    digest: Mapping[str, str]


@dataclass(frozen=True)
class Statement:
    """An in-toto Statement (v0.1 or v1)."""

    type: str
    predicate_type: str
    subjects: tuple[Subject, ...]
    predicate: Mapping[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, raw: bytes) -> Statement:
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedInputError(f"in-toto statement is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise MalformedInputError("in-toto statement must be a JSON object")
        stype = doc.get("_type")
        if stype not in IN_TOTO_STATEMENT_TYPES:
            raise MalformedInputError(
                f"in-toto _type is {str(stype)[:100]!r} "
                f"(expected one of {sorted(IN_TOTO_STATEMENT_TYPES)})"
            )
        ptype = doc.get("predicateType")
        if not isinstance(ptype, str) or not ptype:
            raise MalformedInputError("in-toto statement lacks predicateType")
        subjects_doc = doc.get("subject")
        if not isinstance(subjects_doc, list) or not subjects_doc or len(subjects_doc) > 1024:
            raise MalformedInputError("in-toto statement needs 1–1024 subjects")
        subjects = []
        for i, s in enumerate(subjects_doc):
            if not isinstance(s, dict):
                raise MalformedInputError(f"in-toto subject {i} is not an object")
            digest = s.get("digest")
            if not isinstance(digest, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in digest.items()
            ):
                raise MalformedInputError(f"in-toto subject {i} digest must map strings")
            name = s.get("name", "")
            subjects.append(Subject(name if isinstance(name, str) else "", digest))
        predicate = doc.get("predicate", {})
        if not isinstance(predicate, dict):
            raise MalformedInputError("in-toto predicate must be a JSON object")
        return cls(stype, ptype, tuple(subjects), predicate)

    @property
    def document(self) -> dict[str, Any]:
        """The statement as JSON data (what conditions on attestations read)."""
        return {
            "_type": self.type,
            "predicateType": self.predicate_type,
            "subject": [{"name": s.name, "digest": dict(s.digest)} for s in self.subjects],
            "predicate": self.predicate,
        }

    def names_digest(self, digest: str) -> bool:
        """Whether some subject carries ``digest`` (``sha256:<hex>``)."""
        algo, _, value = digest.partition(":")
        return any(s.digest.get(algo, "").lower() == value for s in self.subjects)

    def subject_digests(self) -> list[str]:
        return [f"{k}:{v}" for s in self.subjects for k, v in s.digest.items()]
