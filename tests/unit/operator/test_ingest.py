"""The results endpoint on a real loopback HTTP server: auth, all-or-nothing, limits."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from samplerguard.errors import TemporaryError
from samplerguard.kubeapi import Forbidden, Unavailable
from samplerguard.operator.ingest import Authenticator, build_app, serve
from samplerguard.policy.report import ReportResult

TOKEN = "s3cret-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _line(**kw: Any) -> str:
    r = ReportResult.build(
        policy="p",
        rule="recipe",
        result="pass",
        resource={"kind": "Pod", "namespace": "ml", "name": "x"},
        **kw,
    )
    return json.dumps(r.to_wire())


def _run(
    record: Callable[[list[ReportResult]], int], auth: Authenticator, requests: Callable[[str], Any]
) -> Any:
    async def main() -> Any:
        port = _free_port()
        runner = await serve(build_app(record, auth), "127.0.0.1", port, None)
        try:
            return await asyncio.to_thread(requests, f"http://127.0.0.1:{port}")
        finally:
            await runner.cleanup()

    return asyncio.run(main())


def test_auth_then_all_or_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from samplerguard.operator import ingest

    monkeypatch.setattr(ingest, "MAX_BODY", 4096)
    got: list[ReportResult] = []

    def record(batch: list[ReportResult]) -> int:
        got.extend(batch)
        return len(batch)

    def calls(base: str) -> list[httpx.Response]:
        h = {"Authorization": f"Bearer {TOKEN}"}
        body = "\n".join([_line(guidance=4.0), _line(steps=20)]) + "\n"
        return [
            httpx.post(f"{base}/v1/results", content=body),
            httpx.post(
                f"{base}/v1/results", content=body, headers={"Authorization": "Bearer nope"}
            ),
            httpx.post(f"{base}/v1/results", content=body + "{not json\n", headers=h),
            httpx.post(f"{base}/v1/results", content=body, headers=h),
            httpx.post(f"{base}/v1/results", content=b"x" * 5000, headers=h),
        ]

    r = _run(record, Authenticator(local_token=TOKEN), calls)
    assert [x.status_code for x in r] == [401, 401, 400, 200, 413]
    assert "line 3: not a PolicyReport result" in r[2].json()["error"]
    assert r[3].json() == {"recorded": 2}
    assert len(got) == 2 and got[0].metric("guidance") == 4.0


def test_api_server_trouble_is_503_retry() -> None:
    def record(batch: list[ReportResult]) -> int:
        raise TemporaryError("PolicyReport ml/samplerguard kept conflicting", delay=2)

    def call(base: str) -> httpx.Response:
        return httpx.post(
            f"{base}/v1/results", content=_line(), headers={"Authorization": f"Bearer {TOKEN}"}
        )

    r = _run(record, Authenticator(local_token=TOKEN), call)
    assert r.status_code == 503 and r.headers["Retry-After"] == "2"


def test_a_forbidden_token_review_or_write_is_a_500_not_a_retry() -> None:
    """A 403 from the API server stays a 403 until the installation changes: the poster is
    told so (500) instead of being asked to retry (503)."""

    def forbidden_review(token: str) -> str | None:
        raise Forbidden("TokenReview", status=403, reason="Forbidden")

    def forbidden_write(batch: list[ReportResult]) -> int:
        raise Forbidden("write PolicyReport ml/samplerguard", status=403, reason="Forbidden")

    def call(base: str) -> httpx.Response:
        return httpx.post(
            f"{base}/v1/results", content=_line(), headers={"Authorization": f"Bearer {TOKEN}"}
        )

    for record, auth in (
        (lambda batch: len(batch), Authenticator(review=forbidden_review)),
        (forbidden_write, Authenticator(local_token=TOKEN)),
    ):
        r = _run(record, auth, call)
        assert r.status_code == 500 and "Retry-After" not in r.headers
        assert "API server answered 403 (Forbidden)" in r.json()["error"]
    away = Unavailable("TokenReview", status=0, reason="ConnectionRefusedError", delay=3)

    def unreachable(token: str) -> str | None:
        raise away

    r = _run(lambda batch: len(batch), Authenticator(review=unreachable), call)
    assert r.status_code == 503 and r.headers["Retry-After"] == "3"
    assert "TokenReview: API server unreachable (ConnectionRefusedError)" in r.json()["error"]


def test_token_review_allow_list_and_cache() -> None:
    reviews: list[str] = []

    def review(token: str) -> str | None:
        reviews.append(token)
        return {
            "good": "system:serviceaccount:sg:samplerguard-verifier",
            "other": "system:serviceaccount:sg:default",
        }.get(token)

    auth = Authenticator(
        review=review, allowed_users=("system:serviceaccount:sg:samplerguard-verifier",)
    )

    async def main() -> list[str | None]:
        return [
            await auth.user("Bearer good"),
            await auth.user("Bearer good"),
            await auth.user("Bearer other"),
            await auth.user("Basic Zm9v"),
            await auth.user(None),
        ]

    assert asyncio.run(main()) == [
        "system:serviceaccount:sg:samplerguard-verifier",
        "system:serviceaccount:sg:samplerguard-verifier",
        None,
        None,
        None,
    ]
    assert reviews == ["good", "other"]  # the second "good" came from the cache


def test_authenticator_needs_a_method() -> None:
    with pytest.raises(ValueError, match="needs a local token or a TokenReview"):
        Authenticator()


def test_large_and_chunked_bodies_arrive_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """A body bigger than one socket read (and one without Content-Length) is read whole;
    a chunked body over the limit is refused."""
    from samplerguard.operator import ingest

    monkeypatch.setattr(ingest, "MAX_BODY", 512 * 1024)
    got: list[ReportResult] = []

    def record(batch: list[ReportResult]) -> int:
        got.extend(batch)
        return len(batch)

    lines = [_line(guidance=float(i), steps=i + 1) for i in range(600)]  # ~300 KB
    body = ("\n".join(lines) + "\n").encode()

    def chunks(data: bytes) -> Any:
        for i in range(0, len(data), 7000):
            yield data[i : i + 7000]

    def calls(base: str) -> list[httpx.Response]:
        h = {"Authorization": f"Bearer {TOKEN}"}
        return [
            httpx.post(f"{base}/v1/results", content=body, headers=h),
            httpx.post(f"{base}/v1/results", content=chunks(body), headers=h),
            httpx.post(f"{base}/v1/results", content=chunks(body * 3), headers=h),
        ]

    r = _run(record, Authenticator(local_token=TOKEN), calls)
    assert [x.status_code for x in r] == [200, 200, 413]
    assert len(got) == 1200 and got[599].metric("steps") == 600  # the third recorded nothing


def test_deeply_nested_json_is_a_400_not_a_500() -> None:
    auth = Authenticator(local_token=TOKEN)
    nested = "[" * 200_000 + "]" * 200_000

    def requests(url: str) -> httpx.Response:
        return httpx.post(
            url + "/v1/results",
            content=nested,
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=10,
        )

    resp = _run(lambda batch: len(batch), auth, requests)
    assert resp.status_code == 400 and "nested too deeply" in resp.json()["error"]


def test_idle_and_half_sent_connections_cannot_crowd_out_a_poster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """8x the connection cap held open (half idle, half with an unfinished header): posts are
    still served, and the guard keeps the count at the cap by evicting the idlers."""
    from samplerguard.operator import ingest
    from samplerguard.serving import Limits

    monkeypatch.setattr(ingest, "LIMITS", Limits(max_connections=8, idle_timeout=5.0))
    auth = Authenticator(local_token=TOKEN)

    def requests(port: int) -> list[int]:
        held = []
        for i in range(64):  # from another loopback address than the poster's
            s = socket.create_connection(
                ("127.0.0.1", port), timeout=5, source_address=("127.0.0.2", 0)
            )
            if i % 2:
                s.sendall(b"POST /v1/results HTTP/1.1\r\nhost: x\r\n")
            held.append(s)
        try:
            return [
                httpx.post(
                    f"http://127.0.0.1:{port}/v1/results",
                    content=_line(),
                    headers={"Authorization": f"Bearer {TOKEN}"},
                    timeout=5,
                ).status_code
                for _ in range(3)
            ]
        finally:
            for s in held:
                s.close()

    async def main() -> tuple[list[int], int, int]:
        port = _free_port()
        runner = await serve(build_app(lambda batch: len(batch), auth), "127.0.0.1", port, None)
        try:
            codes = await asyncio.to_thread(requests, port)
            (site,) = runner.sites
            assert isinstance(site, ingest.BoundedSite)
            guard = site.guard
            return codes, guard.evicted + guard.refused, len(guard.connections)
        finally:
            await runner.cleanup()

    codes, turned_away, held = asyncio.run(main())
    assert codes == [200, 200, 200]
    assert turned_away >= 64 - 4 and held <= 8


def test_an_empty_local_token_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="the local token is empty"):
        Authenticator(local_token="")
