"""Request tickets: only a policy signer's ticket for exactly this request, tenant, parameters
and time is accepted; every forged, stale, misdirected or malformed one is refused by name."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from samplerguard.commitment import dsse
from samplerguard.commitment.dsse import sign_envelope
from samplerguard.commitment.request import request_digest
from samplerguard.commitment.ticket import (
    MAX_TICKET_BYTES,
    TICKET_PAYLOAD_TYPE,
    TICKET_TYPE,
    TicketSigners,
    issue_ticket,
    read_ticket,
    ticket_digest,
    verify_ticket,
)
from samplerguard.errors import MalformedInputError, VerificationError

NOW = 1_800_000_000
GATEWAY = Ed25519PrivateKey.generate()
PARAMS = {"requestId": "r-1", "tenant": "acme", "steps": 20, "guidanceScale": 7.5, "prompt": "a"}
DIGEST = request_digest(PARAMS)


def _pem(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


SIGNERS = TicketSigners.from_pems((_pem(GATEWAY),), 600)


def _ticket(**kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"request_id": "r-1", "tenant": "acme", "now": NOW}
    args.update(kw)
    return issue_ticket(kw.pop("key", GATEWAY), **{k: v for k, v in args.items() if k != "key"})


def _verify(ticket: object, **kw: Any) -> Any:
    args: dict[str, Any] = {"tenant": "acme", "request_id": "r-1", "now": NOW + 1}
    args.update(kw)
    return verify_ticket(ticket, SIGNERS, **args)


def _payload(envelope: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(base64.b64decode(envelope["payload"]))
    return doc


def _resigned(body: dict[str, Any], key: Ed25519PrivateKey = GATEWAY) -> dict[str, Any]:
    return sign_envelope(json.dumps(body).encode(), key, TICKET_PAYLOAD_TYPE)


def test_a_gateway_ticket_verifies_and_binds_its_digest() -> None:
    ticket = _ticket(request_digest=DIGEST)
    got = _verify(ticket, request_digest=DIGEST)
    assert (got.request_id, got.tenant, got.request_digest) == ("r-1", "acme", DIGEST)
    assert got.expires_at - got.issued_at == 300
    assert (
        got.digest
        == ticket_digest(ticket)
        == "sha256:" + hashlib.sha256(base64.b64decode(ticket["payload"])).hexdigest()
    )
    assert got.signer in SIGNERS.keys
    # text and bytes forms are the same ticket
    assert _verify(json.dumps(ticket), request_digest=DIGEST).digest == got.digest
    assert _verify(json.dumps(ticket).encode(), request_digest=DIGEST).digest == got.digest
    doc, named = read_ticket(ticket)
    assert doc == ticket and named["requestId"] == "r-1"


def test_a_key_the_policy_does_not_name_is_refused() -> None:
    forged = _ticket(key=Ed25519PrivateKey.generate())
    with pytest.raises(VerificationError, match="none of the policy's ticket signers") as err:
        _verify(forged)
    assert err.value.check == "ticket"
    # a second signer in the policy is accepted as well
    other = Ed25519PrivateKey.generate()
    both = TicketSigners.from_pems((_pem(GATEWAY), _pem(other)), 600)
    assert (
        verify_ticket(_ticket(key=other), both, tenant="acme", request_id="r-1", now=NOW).signer
        == list(both.keys)[1]
    )


def test_an_edited_payload_breaks_the_signature() -> None:
    ticket = _ticket()
    body = _payload(ticket)
    body["requestId"] = "r-2"
    ticket["payload"] = base64.b64encode(json.dumps(body).encode()).decode()
    with pytest.raises(VerificationError, match="none of the policy's ticket signers"):
        _verify(ticket, request_id="r-2")


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"tenant": "other"}, "issued for tenant 'acme', not 'other'"),
        ({"request_id": "r-2"}, "issued for request 'r-1', not 'r-2'"),
        ({"now": NOW + 301}, "expired 1 s ago"),
        ({"now": NOW - 61}, "issued 61 s in the future"),
    ],
)
def test_a_ticket_for_another_request_tenant_or_time_is_refused(
    kw: dict[str, Any], message: str
) -> None:
    with pytest.raises(VerificationError, match=message) as err:
        _verify(_ticket(), **kw)
    assert err.value.check == "ticket"


def test_the_verifier_judges_after_the_fact_without_a_clock() -> None:
    assert _verify(_ticket(), now=None).request_id == "r-1"
    # but never a lifetime over the policy's cap, whenever it is judged
    with pytest.raises(VerificationError, match="lives 3600 s, over the policy's 600 s"):
        _verify(_ticket(lifetime=3600), now=None)


def test_bound_parameters_must_be_the_committed_ones() -> None:
    ticket = _ticket(request_digest=DIGEST)
    swapped = request_digest({**PARAMS, "prompt": "b"})
    with pytest.raises(VerificationError, match="binds other request parameters"):
        _verify(ticket, request_digest=swapped)
    with pytest.raises(VerificationError, match="the trajectory commits none"):
        _verify(ticket, request_digest=None)
    # at a seed request there are no parameters yet
    assert _verify(ticket, request_digest=None, check_request=False).request_digest == DIGEST
    # a ticket that binds none leaves the parameters to the consumer's own check
    assert _verify(_ticket(), request_digest=swapped).request_digest is None


def _mutations() -> list[tuple[str, Any]]:
    base = _payload(_ticket(request_digest=DIGEST))
    cases: list[tuple[str, Any]] = []
    for key in ("_type", "requestId", "tenant", "issuedAt", "expiresAt"):
        cases.append((rf"lacks \['{key}'\]", {k: v for k, v in base.items() if k != key}))
    cases += [
        ("unknown fields", {**base, "seed": 7}),
        ("type is not", {**base, "_type": "https://example.com/Other"}),
        ("requestId is not a string", {**base, "requestId": 7}),
        ("tenant is not a string", {**base, "tenant": ""}),
        ("issuedAt is not a unix time", {**base, "issuedAt": True}),
        ("expiresAt is not a unix time", {**base, "expiresAt": 1.5e9}),
        ("expires before it is issued", {**base, "expiresAt": base["issuedAt"]}),
        ("requestDigest is not a sha256", {**base, "requestDigest": "md5:00"}),
        ("requestDigest is not a sha256", {**base, "requestDigest": "sha256:" + "G" * 64}),
        ("payload is not a JSON object", ["r-1"]),
    ]
    return cases


@pytest.mark.parametrize(("message", "body"), _mutations())
def test_malformed_payloads_are_refused_even_when_signed(message: str, body: Any) -> None:
    with pytest.raises(MalformedInputError, match=message):
        _verify(_resigned(body), request_digest=DIGEST)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda e: e.update(payloadType="application/vnd.in-toto+json"), "payloadType"),
        (lambda e: e.update(signatures=[]), "1 to 4 signatures"),
        (lambda e: e.update(signatures=e["signatures"] * 5), "1 to 4 signatures"),
        (lambda e: e.update(extra=1), "fields a DSSE envelope has not"),
        (lambda e: e.update(payload="%%%"), "not valid base64"),
        (lambda e: e["signatures"][0].update(sig="%%%"), "not valid base64"),
        (lambda e: e["signatures"].__setitem__(0, "sig"), "not an object"),
        (lambda e: e.update(payload=base64.b64encode(b"x" * 5000).decode()), "over 4096"),
    ],
)
def test_malformed_envelopes_are_refused(edit: Any, message: str) -> None:
    ticket = copy.deepcopy(_ticket())
    edit(ticket)
    with pytest.raises(MalformedInputError, match=message):
        _verify(ticket)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("[1]", "not a DSSE envelope"),
        ("{", "is not JSON"),
        (b"\xff\xfe", "is not JSON"),
        ("x" * (MAX_TICKET_BYTES + 1), "exceeds 4096 bytes"),
        (7, "not a DSSE envelope"),
    ],
)
def test_ticket_text_that_is_not_an_envelope_is_refused(raw: Any, message: str) -> None:
    with pytest.raises(MalformedInputError, match=message):
        _verify(raw)


def test_issuing_checks_what_it_signs() -> None:
    with pytest.raises(MalformedInputError, match=r"1\.\.86400"):
        _ticket(lifetime=0)
    with pytest.raises(MalformedInputError, match="requestDigest"):
        _ticket(request_digest="sha256:short")
    assert _payload(_ticket())["_type"] == TICKET_TYPE


def test_a_policy_names_at_least_one_signer_and_only_ed25519_keys() -> None:
    with pytest.raises(MalformedInputError, match="at least one signer"):
        TicketSigners({}, 600)
    from cryptography.hazmat.primitives.asymmetric import ec

    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = p256.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    with pytest.raises(MalformedInputError, match="Ed25519"):
        TicketSigners.from_pems((pem,), 600)


def test_a_second_check_of_the_same_ticket_skips_only_the_signature(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A seed request and its START carry one ticket: the second check reuses the verified
    signature, and still judges the request, tenant, time and parameters anew."""
    import samplerguard.commitment.ticket as module

    signers = TicketSigners.from_pems((_pem(GATEWAY),), 601)  # a fresh cache
    calls: list[int] = []
    real = dsse.verify_envelope

    def counted(*args: Any, **kw: Any) -> bytes:
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(module, "verify_envelope", counted)
    ticket = _ticket(request_digest=DIGEST)
    first = verify_ticket(
        ticket, signers, tenant="acme", request_id="r-1", request_digest=DIGEST, now=NOW
    )
    again = verify_ticket(
        json.dumps(ticket), signers, tenant="acme", request_id="r-1", request_digest=DIGEST
    )
    assert calls == [1] and again.digest == first.digest
    with pytest.raises(VerificationError, match="expired"):
        verify_ticket(ticket, signers, tenant="acme", request_id="r-1", now=NOW + 400)
    with pytest.raises(VerificationError, match="issued for request"):
        verify_ticket(ticket, signers, tenant="acme", request_id="r-2", now=NOW)
    with pytest.raises(VerificationError, match="the trajectory commits none"):
        verify_ticket(ticket, signers, tenant="acme", request_id="r-1", request_digest=None)
    # an edited copy is another envelope: verified (and refused) on its own
    edited = copy.deepcopy(ticket)
    edited["signatures"][0]["sig"] = base64.b64encode(b"\0" * 64).decode()
    with pytest.raises(VerificationError, match="none of the policy's ticket signers"):
        verify_ticket(edited, signers, tenant="acme", request_id="r-1", now=NOW)
    assert len(calls) == 2


def test_the_digest_is_the_signed_payload_s_whatever_travels_beside_it() -> None:
    """A copy with an extra signature entry or another key id is the same ticket: the
    commitment binds what the gateway signed, so the provider cannot make the gateway's own
    check of a response fail by re-wrapping its ticket."""
    ticket = _ticket()
    rewrapped = copy.deepcopy(ticket)
    rewrapped["signatures"][0]["keyid"] = "not-the-key-id"
    rewrapped["signatures"].append({"keyid": "", "sig": base64.b64encode(b"1" * 64).decode()})
    assert ticket_digest(rewrapped) == ticket_digest(ticket)
    assert _verify(rewrapped).digest == _verify(ticket).digest
    other = _ticket(request_id="r-2")
    assert ticket_digest(other) != ticket_digest(ticket)
