"""The trajectory commitment: an in-toto Statement v1 in a DSSE envelope, signed with Ed25519.

Standard in-toto tooling reads it: ``subject`` is the output's sha256, ``predicateType`` is
``https://samplerguard.dev/trajectory/v1``, and the predicate carries the Merkle root, the tree
size, the recipe, the model and recipe digests, the tenant's pseudonym and the request id.

A :class:`Commitment` only comes from :meth:`Commitment.verify` (signature checked) or from
:func:`commit` (just signed). There is no other public constructor.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from samplerguard.commitment.dsse import IN_TOTO_STATEMENT_V1, sign_envelope, verify_envelope
from samplerguard.commitment.trajectory import canonical
from samplerguard.errors import MalformedInputError, VerificationError

__all__ = ["PREDICATE_TYPE", "STATEMENT_TYPE", "Commitment", "Tree", "commit"]

STATEMENT_TYPE = IN_TOTO_STATEMENT_V1
PREDICATE_TYPE = "https://samplerguard.dev/trajectory/v1"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class Tree(Protocol):
    """What a commitment signs: a :class:`~samplerguard.commitment.trajectory.TrajectoryRecord`
    in the hook, or the sidecar's digest-only tree."""

    @property
    def recipe(self) -> Mapping[str, Any]: ...

    @property
    def root(self) -> bytes: ...

    @property
    def tree_size(self) -> int: ...

    @property
    def output_digest(self) -> str: ...


@dataclass(frozen=True)
class Commitment:
    """A verified trajectory commitment."""

    envelope: dict[str, Any]
    statement: dict[str, Any]
    root: bytes
    tree_size: int
    recipe: dict[str, Any]
    request_id: str
    tenant: str
    output_digest: str

    @property
    def predicate(self) -> dict[str, Any]:
        predicate: dict[str, Any] = self.statement["predicate"]
        return predicate

    @property
    def n_steps(self) -> int:
        return self.tree_size - 4

    def to_json(self) -> str:
        return json.dumps(self.envelope, sort_keys=True)

    @classmethod
    def verify(cls, envelope: object, public_key: Ed25519PublicKey) -> Commitment:
        """Check the DSSE signature, then parse the statement. Raises
        :class:`VerificationError` (bad signature, wrong types) or
        :class:`MalformedInputError` (not an envelope / statement at all)."""
        payload = verify_envelope(envelope, public_key)
        if isinstance(envelope, bytes | str):
            envelope = json.loads(envelope)
        assert isinstance(envelope, dict)
        try:
            statement = json.loads(payload)
        except ValueError as exc:
            raise MalformedInputError(f"commitment payload is not JSON: {exc}") from None
        return cls._from_statement(envelope, statement)

    @classmethod
    def _from_statement(cls, envelope: dict[str, Any], statement: object) -> Commitment:
        if not isinstance(statement, dict):
            raise MalformedInputError("commitment statement is not a JSON object")
        if statement.get("_type") != STATEMENT_TYPE:
            raise VerificationError(
                f"statement _type is {statement.get('_type')!r}, expected {STATEMENT_TYPE!r}",
                check="statement",
                found=str(statement.get("_type")),
                expected=STATEMENT_TYPE,
            )
        if statement.get("predicateType") != PREDICATE_TYPE:
            raise VerificationError(
                f"predicateType is {statement.get('predicateType')!r}, expected {PREDICATE_TYPE!r}",
                check="statement",
                found=str(statement.get("predicateType")),
                expected=PREDICATE_TYPE,
            )
        pred = statement.get("predicate")
        subjects = statement.get("subject")
        if not isinstance(pred, dict) or not isinstance(subjects, list) or len(subjects) != 1:
            raise MalformedInputError("statement needs one subject and a predicate object")
        subject = subjects[0]
        digest = subject.get("digest", {}).get("sha256") if isinstance(subject, dict) else None
        root_hex, size = pred.get("root"), pred.get("treeSize")
        recipe, request_id, tenant = pred.get("recipe"), pred.get("requestId"), pred.get("tenant")
        digest, root_hex, size, recipe, request_id, tenant = _check_parts(
            digest, root_hex, size, recipe, request_id, tenant
        )
        recipe_digest = "sha256:" + hashlib.sha256(canonical(recipe)).hexdigest()
        if pred.get("recipeDigest") != recipe_digest:
            raise VerificationError(
                f"predicate.recipeDigest is {pred.get('recipeDigest')!r}, but the recipe it "
                f"carries hashes to {recipe_digest!r}",
                check="statement",
                found=str(pred.get("recipeDigest")),
                expected=recipe_digest,
            )
        return cls(
            envelope=envelope,
            statement=statement,
            root=bytes.fromhex(root_hex),
            tree_size=size,
            recipe=recipe,
            request_id=request_id,
            tenant=tenant,
            output_digest="sha256:" + digest,
        )


#: the predicate fields commit() sets itself; ``extra`` may add others, never replace these
_CORE_PREDICATE = frozenset(
    {"root", "treeSize", "recipe", "recipeDigest", "modelDigest", "tenant", "requestId"}
)


def _check_parts(
    digest: object,
    root_hex: object,
    size: object,
    recipe: object,
    request_id: object,
    tenant: object,
) -> tuple[str, str, int, dict[str, Any], str, str]:
    """What a commitment's statement must hold: the output's sha256 (hex), the root (hex), a
    tree size in range, a recipe object, the request id and the tenant; returned as checked."""
    if not (isinstance(digest, str) and _HEX64.match(digest)):
        raise MalformedInputError("statement subject has no sha256 digest")
    if not (isinstance(root_hex, str) and _HEX64.match(root_hex)):
        raise MalformedInputError("predicate.root is not a 64-hex SHA-256")
    if not (isinstance(size, int) and not isinstance(size, bool) and 5 <= size <= 4100):
        raise MalformedInputError(f"predicate.treeSize {size!r} is out of range")
    if not isinstance(recipe, dict):
        raise MalformedInputError("predicate.recipe is not an object")
    if not (isinstance(request_id, str) and _REQUEST_ID.match(request_id)):
        raise MalformedInputError("predicate.requestId is missing or malformed")
    if not isinstance(tenant, str) or len(tenant) > 128:
        raise MalformedInputError("predicate.tenant is missing or malformed")
    return digest, root_hex, size, recipe, request_id, tenant


def commit(
    record: Tree,
    key: Ed25519PrivateKey,
    *,
    request_id: str,
    tenant: str,
    extra: dict[str, Any] | None = None,
) -> Commitment:
    """Sign the commitment for a finished trajectory."""
    if not _REQUEST_ID.match(request_id):
        raise MalformedInputError(f"request id {request_id[:40]!r} is malformed")
    recipe = record.recipe
    output = record.output_digest
    # the checks Commitment.verify holds a received statement to, on the parts signed here
    _check_parts(
        output.removeprefix("sha256:") if output.startswith("sha256:") else None,
        record.root.hex(),
        record.tree_size,
        recipe,
        request_id,
        tenant,
    )
    if extra and not _CORE_PREDICATE.isdisjoint(extra):
        raise MalformedInputError(
            f"extra predicate fields {sorted(_CORE_PREDICATE & set(extra))} would replace the "
            "commitment's own"
        )
    predicate: dict[str, Any] = {
        "root": record.root.hex(),
        "treeSize": record.tree_size,
        "recipe": dict(recipe),
        "recipeDigest": "sha256:" + hashlib.sha256(canonical(recipe)).hexdigest(),
        "modelDigest": recipe.get("model", {}).get("digest"),
        "tenant": tenant,
        "requestId": request_id,
        "committedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if extra:
        predicate.update(extra)
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [
            {
                "name": f"{request_id}/output",
                "digest": {"sha256": record.output_digest.removeprefix("sha256:")},
            }
        ],
        "predicateType": PREDICATE_TYPE,
        "predicate": predicate,
    }
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
    envelope = sign_envelope(payload, key)
    # built here from checked parts: no need to parse it back (Commitment.verify does, for
    # everyone who receives it), which canonicalised the recipe a second time per commit
    return Commitment(
        envelope=envelope,
        statement=statement,
        root=record.root,
        tree_size=record.tree_size,
        recipe=predicate["recipe"],
        request_id=request_id,
        tenant=tenant,
        output_digest=record.output_digest,
    )
