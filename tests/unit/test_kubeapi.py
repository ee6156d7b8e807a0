"""Kubernetes API failures become our typed errors once, where the call enters the client.

A real ``kubernetes`` client talks to a real loopback HTTP server that answers each status with
the API server's ``Status`` body, so what is translated is what the client really raises."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes import client

from samplerguard.errors import MalformedInputError, SamplerGuardError, TemporaryError
from samplerguard.kubeapi import (
    Conflict,
    Forbidden,
    Gone,
    KubeApiError,
    NotFound,
    Unavailable,
    call,
    kube_call,
    translate,
)

_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "AlreadyExists",
    410: "Expired",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}


class _ApiServer(BaseHTTPRequestHandler):
    """Answers GET /api/v1/namespaces/<status> with that status and a Status body."""

    def do_GET(self) -> None:
        status = int(self.path.rsplit("/", 1)[-1])
        body = json.dumps(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "reason": _REASONS[status],
                "message": f'namespaces "{status}" is {_REASONS[status]} ' + "x" * 400,
                "code": status,
            }
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if status == 429:
            self.send_header("Retry-After", "7")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def core() -> Iterator[client.CoreV1Api]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ApiServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    config = client.Configuration()
    config.host = f"http://127.0.0.1:{server.server_address[1]}"
    config.retries = False
    with client.ApiClient(config) as api:
        yield client.CoreV1Api(api)
    server.shutdown()
    server.server_close()


def _read(core: client.CoreV1Api, status: int) -> BaseException:
    with pytest.raises(SamplerGuardError) as exc:
        call(f"read Namespace {status}", lambda: core.read_namespace(str(status)))
    return exc.value


@pytest.mark.parametrize(
    ("status", "kind"),
    [(401, Forbidden), (403, Forbidden), (404, NotFound), (409, Conflict), (410, Gone)],
)
def test_a_refusal_becomes_its_permanent_type(
    core: client.CoreV1Api, status: int, kind: type[KubeApiError]
) -> None:
    err = _read(core, status)
    assert type(err) is kind
    assert not isinstance(err, TemporaryError)  # never retried as if the server were away
    assert (err.what, err.status, err.reason) == (
        f"read Namespace {status}",
        status,
        _REASONS[status],
    )
    assert err.message.startswith(f'namespaces "{status}" is {_REASONS[status]} xxx')
    assert len(err.message) == 300  # the API server's explanation, bounded
    assert str(err).startswith(
        f"read Namespace {status}: API server answered {status} ({_REASONS[status]}: namespaces"
    )
    assert isinstance(err.__cause__, client.exceptions.ApiException)


@pytest.mark.parametrize("status", [400, 422])
def test_any_other_refusal_is_a_permanent_kube_api_error(
    core: client.CoreV1Api, status: int
) -> None:
    err = _read(core, status)
    assert type(err) is KubeApiError
    assert not isinstance(err, TemporaryError | MalformedInputError)
    assert err.status == status


@pytest.mark.parametrize(("status", "delay"), [(429, 7.0), (500, 1.0), (503, 1.0)])
def test_an_overloaded_or_failing_server_is_unavailable_and_temporary(
    core: client.CoreV1Api, status: int, delay: float
) -> None:
    err = _read(core, status)
    assert type(err) is Unavailable and isinstance(err, TemporaryError)
    assert (err.status, err.reason, err.delay) == (status, _REASONS[status], delay)


def test_no_answer_is_unavailable_with_status_0() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = client.Configuration()
    config.host = f"http://127.0.0.1:{port}"
    config.retries = False
    with client.ApiClient(config) as api, pytest.raises(Unavailable) as exc:
        call("list pods", lambda: client.CoreV1Api(api).list_pod_for_all_namespaces())
    assert exc.value.status == 0 and isinstance(exc.value, TemporaryError)
    assert str(exc.value).startswith("list pods: API server unreachable (")
    assert exc.value.reason  # the transport error's type, e.g. MaxRetryError


def test_an_os_error_is_unavailable() -> None:
    err = translate("TokenReview", ConnectionResetError(104, "reset"))
    assert type(err) is Unavailable
    assert (err.status, err.reason) == (0, "ConnectionResetError")


def test_other_exceptions_pass_through_unchanged() -> None:
    assert translate("x", ValueError("not ours")) is None
    assert translate("x", NotFound("y", status=404)) is None  # already translated
    with pytest.raises(ValueError, match="not ours"), kube_call("x"):
        raise ValueError("not ours")
    gone = Gone("watch", status=410)
    with pytest.raises(Gone) as exc, kube_call("x"):
        raise gone
    assert exc.value is gone


def test_a_body_that_is_not_a_status_leaves_the_http_reason() -> None:
    exc = client.exceptions.ApiException(status=403, reason="Forbidden")
    exc.body = b"<html>nope</html>"  # type: ignore[assignment]  # the client hands bytes too
    err = translate("read Secret a/b", exc)
    assert type(err) is Forbidden
    assert (err.reason, err.message) == ("Forbidden", "")
    assert str(err) == "read Secret a/b: API server answered 403 (Forbidden)"
