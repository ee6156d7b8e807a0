"""Auto-instrumentation under a gateway's request ticket: the call is recorded under the ticket's
request id, the ticket travels with the seed request and the START, and a ticket for another
tenant or request is refused in the app before anything reaches the sidecar."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from samplerguard.commitment.ticket import issue_ticket
from samplerguard.errors import MalformedInputError
from samplerguard.hook import TrajectoryRequest, ticketed
from samplerguard.hook.auto import _STATE, _request_noise, request_for
from samplerguard.rng import NoiseAuthority
from tests.support.families import BUILDERS
from tests.support.families import request_for as declared

GATEWAY = Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def pipe() -> Any:
    return BUILDERS["stable-diffusion"]().pipe


def test_a_call_inside_a_ticket_is_recorded_under_its_request_id(pipe: Any) -> None:
    ticket = issue_ticket(GATEWAY, request_id="gw-42", tenant="acme")
    with ticketed(json.dumps(ticket)) as rid:
        req = request_for(pipe, {"num_inference_steps": 4}, "acme")
    assert rid == req.request_id == "gw-42"
    assert req.ticket == ticket
    # outside the block the hook names the request itself, and no ticket goes along
    plain = request_for(pipe, {"num_inference_steps": 4}, "acme")
    assert plain.request_id.startswith("req-") and plain.ticket is None


def test_a_ticket_for_another_tenant_or_request_is_refused_in_the_app(pipe: Any) -> None:
    ticket = issue_ticket(GATEWAY, request_id="gw-1", tenant="acme")
    with ticketed(ticket), pytest.raises(MalformedInputError, match="tenant 'acme', not"):
        request_for(pipe, {"num_inference_steps": 4}, "other-tenant")
    with pytest.raises(MalformedInputError, match="for request 'gw-1'"):
        dataclasses.replace(declared(BUILDERS["stable-diffusion"]()), ticket=ticket)
    with pytest.raises(MalformedInputError, match="not a DSSE envelope"), ticketed("[]"):
        pass


class _Sink:
    """The sink's seed interface, recording what the hook asks for."""

    def __init__(self) -> None:
        self.asked: list[dict[str, Any]] = []
        self.authority = NoiseAuthority(b"m" * 32, "ctr-drbg")

    def request_noise(self, tenant: str, request_id: str, mode: str, *, ticket: Any = None) -> Any:
        self.asked.append({"requestId": request_id, "mode": mode, "ticket": ticket})
        return self.authority.request(tenant, request_id)


@contextlib.contextmanager
def _drbg_mode() -> Iterator[None]:
    before = _STATE.get("rng_mode")
    _STATE["rng_mode"] = "ctr-drbg"
    try:
        yield
    finally:
        _STATE["rng_mode"] = before


def test_the_seed_request_carries_the_ticket(pipe: Any) -> None:
    ticket = issue_ticket(GATEWAY, request_id="gw-7", tenant="t")
    sink = _Sink()
    recorder = type("R", (), {"sink": sink})()
    with ticketed(ticket):
        req = request_for(pipe, {"num_inference_steps": 4}, "t")
    assert isinstance(req, TrajectoryRequest)
    with _drbg_mode(), _request_noise(recorder, req) as drawn:
        assert drawn.rng_mode == "ctr-drbg"
    assert sink.asked == [{"requestId": "gw-7", "mode": "ctr-drbg", "ticket": ticket}]
