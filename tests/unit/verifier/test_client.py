"""The sidecar client translates transport failures into our error types, with bounds."""

from __future__ import annotations

import httpx
import pytest

from samplerguard.errors import MalformedInputError, TemporaryError
from samplerguard.verifier.client import SidecarClient, SidecarMissingError, VerifierAuthError


def _client(handler: object) -> SidecarClient:
    return SidecarClient(
        "http://sidecar.test",
        lambda: "tok",
        transport=httpx.MockTransport(handler),  # type: ignore[arg-type]
    )


def test_bearer_token_is_sent_and_json_parsed() -> None:
    seen: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req.headers.get("authorization", ""))
        return httpx.Response(200, json={"trajectories": [{"id": "a", "seq": 1}]})

    assert _client(handler).trajectories() == [{"id": "a", "seq": 1}]
    assert seen == ["Bearer tok"]


@pytest.mark.parametrize(
    ("status", "exc", "match"),
    [
        (401, VerifierAuthError, "refused the verifier's credentials"),
        (404, SidecarMissingError, "has no"),
        (503, TemporaryError, "HTTP 503"),
        (418, MalformedInputError, "HTTP 418"),
    ],
)
def test_status_codes_map_to_types(status: int, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        _client(lambda req: httpx.Response(status)).trajectory("a")


def test_timeouts_and_refusals_are_temporary() -> None:
    def timeout(req: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=req)

    def refused(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=req)

    with pytest.raises(TemporaryError, match="timed out"):
        _client(timeout).trajectory("a")
    with pytest.raises(TemporaryError, match="unreachable"):
        _client(refused).trajectory("a")


def test_oversized_and_non_json_answers_are_refused() -> None:
    big = b"x" * (9 << 20)
    with pytest.raises(MalformedInputError, match="more than"):
        _client(lambda req: httpx.Response(200, content=big)).trajectory("a")
    with pytest.raises(MalformedInputError, match="non-JSON"):
        _client(lambda req: httpx.Response(200, content=b"<html>")).trajectory("a")
    with pytest.raises(MalformedInputError, match="no public key"):
        _client(lambda req: httpx.Response(200, json={})).public_key()


def test_the_timeout_is_a_deadline_for_the_whole_call_not_per_read() -> None:
    """A real server that answers a byte every 0.3 s: each read is well within a 1 s timeout,
    the call as a whole is cut at 1 s."""
    import time

    from tests.support.trickle import Trickler

    answer = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"x" * 100
    with Trickler(answer, every=0.3) as server:
        client = SidecarClient(f"http://127.0.0.1:{server.port}", lambda: "t", timeout=1.0)
        started = time.monotonic()
        try:
            with pytest.raises(TemporaryError, match=r"timed out after 1\.0s"):
                client.trajectory("a")
        finally:
            client.close()
    assert time.monotonic() - started < 5.0  # the trickle would take 40 s
