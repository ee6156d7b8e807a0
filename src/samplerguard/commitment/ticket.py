"""Request tickets: the consumer's gateway vouches that a request id is a real request.

The sidecar issues one DRBG seed per request id, and never a second one for the same id. That
alone leaves the provider free to *invent* request ids: ask for a seed under ``shop-1``,
``shop-2``, …, look at each draw, and keep the one it likes (a safety classifier's blind spot,
the cheapest-looking image). With tickets the request ids are no longer the provider's to name.
The gateway in front of the provider (the party that takes the consumer's request) signs a
ticket for each request it forwards::

    DSSE envelope, payloadType "application/vnd.samplerguard.ticket.v1+json", payload (JCS):
    {"_type": "https://samplerguard.dev/RequestTicket/v1",
     "requestId": "...", "tenant": "...", "issuedAt": <unix s>, "expiresAt": <unix s>,
     "requestDigest": "sha256:..."}        # optional: the consumer's request parameters

A policy with ``spec.rng.tickets`` names the gateways' Ed25519 keys. The sidecar then issues a
seed only against a ticket signed by one of them, for this pod's tenant, within its lifetime,
and commits a trajectory only for a ticketed request id; the ticket's digest is signed into the
commitment and the ticket itself is kept for the verifier, which checks it again. A ticketed
request id's seed is derived from the master secret, tenant and id alone (no drawn nonce), so
every replica of the namespace, and a restarted sidecar, issues the same one. A provider gets
exactly one draw per request the gateway forwarded, so there is nothing to shop among.

``requestDigest`` is optional because a gateway does not always build the pipeline's exact
request parameters; when present, the trajectory must commit exactly those parameters.

Errors name the check ``ticket``; nothing in a ticket is secret.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from samplerguard.commitment import jcs
from samplerguard.commitment.dsse import (
    decode_b64,
    keyid,
    load_public_key,
    sign_envelope,
    verify_envelope,
)
from samplerguard.errors import MalformedInputError, VerificationError
from samplerguard.policy.spec import TicketRule

__all__ = [
    "CLOCK_SKEW_SECONDS",
    "MAX_TICKET_BYTES",
    "TICKET_PAYLOAD_TYPE",
    "TICKET_TYPE",
    "Ticket",
    "TicketSigners",
    "issue_ticket",
    "read_ticket",
    "ticket_digest",
    "verify_ticket",
]

TICKET_PAYLOAD_TYPE = "application/vnd.samplerguard.ticket.v1+json"
TICKET_TYPE = "https://samplerguard.dev/RequestTicket/v1"
#: The largest ticket envelope accepted (a few hundred bytes in practice).
MAX_TICKET_BYTES = 4096
#: A ticket's issue time may be this far in the sidecar's future (clocks of two machines).
CLOCK_SKEW_SECONDS = 60
_MAX_SIGNATURES = 4
#: verified envelopes remembered per set of signers (a seed request's, until its START)
_VERIFIED_CAP = 4096
_REQUIRED = ("_type", "requestId", "tenant", "issuedAt", "expiresAt")
_KNOWN = frozenset({*_REQUIRED, "requestDigest"})


def _fail(message: str, **kw: Any) -> VerificationError:
    return VerificationError(f"request ticket: {message}", check="ticket", **kw)


@dataclass(frozen=True)
class Ticket:
    """A verified ticket."""

    request_id: str
    tenant: str
    request_digest: str | None
    issued_at: int
    expires_at: int
    #: the keyid (SHA-256 of the raw public key) of the gateway key that signed it
    signer: str
    #: :func:`ticket_digest`: what the commitment binds
    digest: str


class TicketSigners:
    """The gateway keys a policy trusts (``spec.rng.tickets.signers``), by keyid."""

    def __init__(self, keys: Mapping[str, Ed25519PublicKey], max_lifetime: int) -> None:
        if not keys:
            raise MalformedInputError("a ticket policy names at least one signer")
        self.keys = dict(keys)
        self.max_lifetime = max_lifetime
        #: envelopes whose signature verified under these keys, by digest: (signer, payload).
        #: A seed request and its START carry the same ticket; the second check skips the
        #: Ed25519 verification (most of a ticket's cost) but not the checks of the payload.
        self._verified: OrderedDict[str, tuple[str, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def _known(self, digest: str) -> tuple[str, dict[str, Any]] | None:
        with self._lock:
            return self._verified.get(digest)

    def _remember(self, digest: str, signer: str, body: dict[str, Any]) -> None:
        with self._lock:
            self._verified[digest] = (signer, body)
            while len(self._verified) > _VERIFIED_CAP:
                self._verified.popitem(last=False)

    @staticmethod
    def of(rule: TicketRule) -> TicketSigners:
        """The signers a policy's ``spec.rng.tickets`` names."""
        return TicketSigners.from_pems(
            tuple(s.public_key for s in rule.signers), rule.max_lifetime_seconds
        )

    @staticmethod
    @functools.lru_cache(maxsize=8)
    def from_pems(pems: tuple[str, ...], max_lifetime: int) -> TicketSigners:
        """The signers of a policy's ``rng.tickets`` (parsed once per policy version)."""
        keys = [load_public_key(pem.encode()) for pem in pems]
        return TicketSigners({keyid(k): k for k in keys}, max_lifetime)


def issue_ticket(
    key: Ed25519PrivateKey,
    *,
    request_id: str,
    tenant: str,
    request_digest: str | None = None,
    lifetime: int = 300,
    now: float | None = None,
) -> dict[str, Any]:
    """A gateway's ticket for one request (the DSSE envelope as a JSON object)."""
    if not 1 <= lifetime <= 86400:
        raise MalformedInputError(f"a ticket lives 1..86400 s, not {lifetime}")
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {
        "_type": TICKET_TYPE,
        "requestId": request_id,
        "tenant": tenant,
        "issuedAt": issued,
        "expiresAt": issued + lifetime,
    }
    if request_digest is not None:
        payload["requestDigest"] = request_digest
    _check_payload(payload)
    return sign_envelope(jcs.dumps(payload), key, TICKET_PAYLOAD_TYPE)


def ticket_digest(envelope: object) -> str:
    """``sha256:`` over the ticket's payload bytes, as the gateway signed them: the same for
    every copy of one ticket, whatever signature entries or key ids travel beside it."""
    doc, _ = _envelope(envelope)
    return _payload_digest(doc)


def _payload_digest(doc: Mapping[str, Any]) -> str:
    payload = decode_b64(doc.get("payload"), "payload", where="request ticket")
    return "sha256:" + hashlib.sha256(payload).hexdigest()


def verify_ticket(
    envelope: object,
    signers: TicketSigners,
    *,
    tenant: str,
    request_id: str,
    request_digest: str | None = None,
    check_request: bool = True,
    now: float | None = None,
) -> Ticket:
    """Check a ticket for ``request_id`` of ``tenant``: signed by one of ``signers``, naming
    exactly this request, within the signers' lifetime cap and, unless ``now`` is None (the
    verifier, judging after the fact), valid at ``now``. A ticket that binds the request
    parameters must bind ``request_digest``, the digest the trajectory commits (None: it commits
    none, which such a ticket refuses), unless ``check_request`` is False (a seed request,
    before there are parameters). Raises :class:`VerificationError` (check ``ticket``) or
    :class:`MalformedInputError`."""
    doc, canonical = _envelope(envelope)
    # the cache is keyed by the whole envelope: what verified is this payload with these
    # signatures
    seen = hashlib.sha256(canonical).hexdigest()
    known = signers._known(seen)
    if known is None:
        signer, body = _verified_payload(doc, signers)
        signers._remember(seen, signer, body)
    else:
        signer, body = known
    if body["tenant"] != tenant:
        raise _fail(
            f"issued for tenant {body['tenant'][:64]!r}, not {tenant[:64]!r}",
            found=body["tenant"],
            expected=tenant,
        )
    if body["requestId"] != request_id:
        raise _fail(
            f"issued for request {body['requestId'][:64]!r}, not {request_id[:64]!r}",
            found=body["requestId"],
            expected=request_id,
        )
    issued, expires = body["issuedAt"], body["expiresAt"]
    if expires - issued > signers.max_lifetime:
        raise _fail(
            f"lives {expires - issued} s, over the policy's {signers.max_lifetime} s",
            found=str(expires - issued),
            expected=str(signers.max_lifetime),
        )
    if now is not None:
        if now > expires:
            raise _fail(f"expired {math.ceil(now - expires)} s ago", found=str(expires))
        if issued > now + CLOCK_SKEW_SECONDS:
            raise _fail(f"issued {math.ceil(issued - now)} s in the future", found=str(issued))
    bound = body.get("requestDigest")
    if bound is not None and check_request and bound != request_digest:
        raise _fail(
            "binds other request parameters than the ones committed (a changed prompt, label, "
            "size, steps or guidance)"
            if request_digest is not None
            else "binds the consumer's request parameters and the trajectory commits none",
            found=str(request_digest),
            expected=bound,
        )
    return Ticket(
        request_id=request_id,
        tenant=tenant,
        request_digest=bound,
        issued_at=issued,
        expires_at=expires,
        signer=signer,
        digest=_payload_digest(doc),
    )


def _verified_payload(doc: dict[str, Any], signers: TicketSigners) -> tuple[str, dict[str, Any]]:
    """The signer's keyid and the payload of an envelope one of ``signers`` signed."""
    for kid, key in signers.keys.items():
        try:
            payload = verify_envelope(doc, key, TICKET_PAYLOAD_TYPE)
        except VerificationError:
            continue
        return kid, _body(payload)
    raise _fail(
        "signed by none of the policy's ticket signers (a ticket the gateway did not issue)",
        expected=", ".join(k[:16] for k in signers.keys),
    )


def read_ticket(envelope: object) -> tuple[dict[str, Any], dict[str, Any]]:
    """The envelope and its payload, shape-checked but *not* verified: what the hook reads to
    learn the request id and tenant a ticket names (the sidecar verifies it)."""
    doc, _ = _envelope(envelope)
    return doc, _body(decode_b64(doc.get("payload"), "payload", where="request ticket"))


def _body(payload: bytes) -> dict[str, Any]:
    """The payload as a checked ticket body."""
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise MalformedInputError("request ticket: the payload is not JSON") from None
    return _check_payload(body)


def _envelope(envelope: object) -> tuple[dict[str, Any], bytes]:
    if isinstance(envelope, bytes | str):
        if len(envelope) > MAX_TICKET_BYTES:
            raise MalformedInputError(f"request ticket exceeds {MAX_TICKET_BYTES} bytes")
        try:
            envelope = json.loads(envelope)
        except (ValueError, UnicodeDecodeError):
            raise MalformedInputError("request ticket is not JSON") from None
    if not isinstance(envelope, dict):
        raise MalformedInputError("request ticket is not a DSSE envelope (a JSON object)")
    if set(envelope) - {"payloadType", "payload", "signatures"}:
        raise MalformedInputError("request ticket carries fields a DSSE envelope has not")
    if envelope.get("payloadType") != TICKET_PAYLOAD_TYPE:
        raise MalformedInputError(f"request ticket payloadType is not {TICKET_PAYLOAD_TYPE}")
    sigs = envelope.get("signatures")
    if not isinstance(sigs, list) or not 1 <= len(sigs) <= _MAX_SIGNATURES:
        raise MalformedInputError(f"request ticket needs 1 to {_MAX_SIGNATURES} signatures")
    canonical = _canonical(envelope)
    if len(canonical) > MAX_TICKET_BYTES:
        raise MalformedInputError(
            f"request ticket is {len(canonical)} bytes, over {MAX_TICKET_BYTES}"
        )
    return envelope, canonical


def _canonical(envelope: Mapping[str, Any]) -> bytes:
    try:
        return jcs.dumps(dict(envelope))
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise MalformedInputError(f"request ticket is not canonical JSON: {exc}") from None


def _check_payload(body: object) -> dict[str, Any]:
    """``body`` if it is a well-formed ticket payload, else :class:`MalformedInputError`."""
    if not isinstance(body, dict):
        raise MalformedInputError("request ticket: the payload is not a JSON object")
    missing = [k for k in _REQUIRED if k not in body]
    if missing:
        raise MalformedInputError(f"request ticket lacks {missing}")
    unknown = sorted(set(body) - _KNOWN)
    if unknown:
        raise MalformedInputError(f"request ticket carries unknown fields {unknown[:4]}")
    if body["_type"] != TICKET_TYPE:
        raise MalformedInputError(f"request ticket type is not {TICKET_TYPE}")
    for name in ("requestId", "tenant"):
        value = body[name]
        if not isinstance(value, str) or not 0 < len(value) <= 253:
            raise MalformedInputError(f"request ticket {name} is not a string of 1..253")
    for name in ("issuedAt", "expiresAt"):
        value = body[name]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 1 << 40:
            raise MalformedInputError(f"request ticket {name} is not a unix time in seconds")
    if body["expiresAt"] <= body["issuedAt"]:
        raise MalformedInputError("request ticket expires before it is issued")
    digest = body.get("requestDigest")
    if digest is not None and (
        not isinstance(digest, str)
        or not digest.startswith("sha256:")
        or len(digest) != 71
        or not all(c in "0123456789abcdef" for c in digest[7:])
    ):
        raise MalformedInputError("request ticket requestDigest is not a sha256: digest")
    return body
