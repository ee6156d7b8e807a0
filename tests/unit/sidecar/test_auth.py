"""Who may read openings: token file (local mode) and TokenReview against a faked API server.

The TokenReview path talks to a real HTTP server on loopback that answers like the API
server's ``/apis/authentication.k8s.io/v1/tokenreviews``; the kubernetes client is the real one.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from samplerguard.errors import TemporaryError
from samplerguard.kubeapi import Forbidden
from samplerguard.sidecar.auth import TokenFileAuth, TokenReviewAuth, UnauthorizedError

VERIFIER = "system:serviceaccount:samplerguard:samplerguard-verifier"


def test_token_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("s3cret-token-of-enough-length\n")
    auth = TokenFileAuth(path)
    assert auth.authenticate("s3cret-token-of-enough-length")
    for bad in (None, "", "s3cret-token-of-enough-lengtH", "x" * 20000):
        with pytest.raises(UnauthorizedError):
            auth.authenticate(bad)


def test_token_file_rotation_and_short_tokens(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first-token-0123456789")
    auth = TokenFileAuth(path)
    path.write_text("second-token-0123456789")
    import os

    os.utime(path, (1, 1))  # a new mtime even within the same clock tick
    assert auth.authenticate("second-token-0123456789")
    with pytest.raises(UnauthorizedError):
        auth.authenticate("first-token-0123456789")
    path.write_text("short")
    os.utime(path, (2, 2))
    with pytest.raises(TemporaryError, match="fewer than 16 bytes"):
        auth.authenticate("short")


class _FakeApiServer(BaseHTTPRequestHandler):
    calls: list[dict[str, Any]] = []  # noqa: RUF012

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.calls.append(body)
        if self.path != "/apis/authentication.k8s.io/v1/tokenreviews":
            self.send_response(404)
            self.end_headers()
            return
        token = body["spec"]["token"]
        if token in ("boom", "forbidden"):
            self.send_response(500 if token == "boom" else 403)
            self.end_headers()
            return
        users = {"good": VERIFIER, "other": "system:serviceaccount:ml:app"}
        status: dict[str, Any] = {"authenticated": token in users}
        if token in users:
            status["user"] = {"username": users[token]}
            status["audiences"] = body["spec"].get("audiences") or []
        doc = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": body["spec"],
            "status": status,
        }
        data = json.dumps(doc).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def api() -> Iterator[Any]:
    from kubernetes import client

    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeApiServer)
    _FakeApiServer.calls = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cfg = client.Configuration()
    cfg.host = f"http://127.0.0.1:{server.server_address[1]}"
    api_client = client.ApiClient(cfg)
    yield client.AuthenticationV1Api(api_client)
    api_client.close()  # type: ignore[no-untyped-call]
    server.shutdown()
    server.server_close()


def test_tokenreview_accepts_only_the_verifier_and_caches(api: Any) -> None:
    auth = TokenReviewAuth((VERIFIER,), audience="samplerguard-sidecar", api=api)
    assert auth.authenticate("good") == VERIFIER
    assert auth.authenticate("good") == VERIFIER
    assert len(_FakeApiServer.calls) == 1  # cached
    assert _FakeApiServer.calls[0]["spec"]["audiences"] == ["samplerguard-sidecar"]
    with pytest.raises(UnauthorizedError):
        auth.authenticate("other")  # authenticated, but not the verifier's ServiceAccount
    with pytest.raises(UnauthorizedError):
        auth.authenticate("forged")
    with pytest.raises(UnauthorizedError):
        auth.authenticate(None)


def test_tokenreview_failure_is_temporary_never_a_pass(api: Any) -> None:
    auth = TokenReviewAuth((VERIFIER,), audience=None, api=api)
    with pytest.raises(TemporaryError, match="TokenReview: API server answered 500"):
        auth.authenticate("boom")


def test_a_sidecar_forbidden_to_review_tokens_is_refused_permanently(api: Any) -> None:
    """A 403 (the pod's namespace is not one the chart lets review tokens) is not a passing
    outage: it raises Forbidden, which the sidecar's API answers with 503 and an error log."""
    auth = TokenReviewAuth((VERIFIER,), audience=None, api=api)
    with pytest.raises(Forbidden, match="TokenReview: API server answered 403") as exc:
        auth.authenticate("forbidden")
    assert not isinstance(exc.value, TemporaryError)


def test_unreachable_api_server_is_temporary() -> None:
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = "http://127.0.0.1:9"  # discard port: connection refused
    cfg.retries = 0
    with client.ApiClient(cfg) as api_client:
        auth = TokenReviewAuth(
            (VERIFIER,), audience=None, api=client.AuthenticationV1Api(api_client)
        )
        with pytest.raises(TemporaryError, match="unreachable"):
            auth.authenticate("good")


def test_a_token_file_that_disappears_refuses_every_request_without_crashing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "token"
    path.write_text("a-token-of-enough-length")
    auth = TokenFileAuth(path)
    path.unlink()
    with pytest.raises(TemporaryError, match=r"token file .* is unreadable"):
        auth.authenticate("a-token-of-enough-length")
