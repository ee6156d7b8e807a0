"""ResultsClient against the real ingest server over real TLS (operator-issued certificate)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from samplerguard.errors import MalformedInputError, TemporaryError
from samplerguard.operator.certs import CertPolicy, CertState, plan
from samplerguard.operator.ingest import Authenticator, build_app, serve, tls_context
from samplerguard.policy.report import ReportResult
from samplerguard.policy.report_client import ResultsClient
from tests.support.secret_volume import SecretVolume


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, tmp: Path) -> None:
        state = plan(
            CertState(),
            CertPolicy(dns_names=("localhost",), ip_addresses=("127.0.0.1",)),
            dt.datetime.now(dt.UTC),
        ).state
        for k in ("tls.crt", "tls.key", "ca.crt"):
            (tmp / k).write_bytes(state.data[k])
        (tmp / "token").write_text("tok\n")
        self.tmp = tmp
        self.got: list[ReportResult] = []
        self.fail_next = 0
        self.port = _port()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def record(self, batch: list[ReportResult]) -> int:
        if self.fail_next:
            self.fail_next -= 1
            raise TemporaryError("conflict", delay=0)
        self.got.extend(batch)
        return len(batch)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        ctx = self.ctx = tls_context(str(self.tmp / "tls.crt"), str(self.tmp / "tls.key"))
        app = build_app(self.record, Authenticator(local_token="tok"))
        self._runner = self._loop.run_until_complete(serve(app, "127.0.0.1", self.port, ctx))
        self._ready.set()
        self._loop.run_forever()

    def stop(self) -> None:
        fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
        fut.result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path)
    yield s
    s.stop()


def _r(i: int) -> ReportResult:
    return ReportResult.build(
        policy="p",
        rule="trajectory-recheck",
        result="pass",
        resource={"kind": "Pod", "namespace": "ml", "name": f"x{i}"},
        rel_l2=1e-7,
    )


def _client(server: Server, **kw: Any) -> ResultsClient:
    return ResultsClient(
        f"https://127.0.0.1:{server.port}/v1/results",
        token_file=server.tmp / "token",
        ca_file=server.tmp / "ca.crt",
        **kw,
    )


def test_post_over_tls_with_retry(server: Server) -> None:
    server.fail_next = 2  # two 503s, then accepted
    with _client(server) as c:
        assert c.post([_r(i) for i in range(3)]) == 3
    assert [r.resources[0].name for r in server.got] == ["x0", "x1", "x2"]


def test_bad_token_is_not_retried(server: Server) -> None:
    (server.tmp / "token").write_text("wrong")
    with (
        _client(server) as c,
        pytest.raises(MalformedInputError, match=r"refused the results \(401\)"),
    ):
        c.post([_r(0)])


def test_operator_down_is_temporary(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("tok")
    c = ResultsClient(
        f"https://127.0.0.1:{_port()}/v1/results", token_file=tmp_path / "token", deadline=0.5
    )
    with c, pytest.raises(TemporaryError, match="results not recorded"):
        c.post([_r(0)])


def test_untrusted_certificate_is_refused(server: Server, tmp_path: Path) -> None:
    other = plan(CertState(), CertPolicy(dns_names=("x",)), dt.datetime.now(dt.UTC)).state
    (tmp_path / "other-ca.crt").write_bytes(other.data["ca.crt"])
    c = ResultsClient(
        f"https://127.0.0.1:{server.port}/v1/results",
        token_file=server.tmp / "token",
        ca_file=tmp_path / "other-ca.crt",
        deadline=0.3,
    )
    with (
        c,
        pytest.raises(TemporaryError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"),
    ):
        c.post([_r(0)])
    assert server.got == []


def test_reloaded_certificate_serves_new_handshakes(server: Server, tmp_path: Path) -> None:
    """What the operator does on rotation: load_cert_chain on the live context."""
    new = plan(
        CertState(),
        CertPolicy(dns_names=("localhost",), ip_addresses=("127.0.0.1",)),
        dt.datetime.now(dt.UTC),
    ).state
    d = tmp_path / "new"
    d.mkdir()
    for k in ("tls.crt", "tls.key", "ca.crt"):
        (d / k).write_bytes(new.data[k])
    server.ctx.load_cert_chain(str(d / "tls.crt"), str(d / "tls.key"))
    fresh = ResultsClient(
        f"https://127.0.0.1:{server.port}/v1/results",
        token_file=server.tmp / "token",
        ca_file=d / "ca.crt",
    )
    with fresh:
        assert fresh.post([_r(9)]) == 1
    with _client(server, deadline=0.3) as stale, pytest.raises(TemporaryError):
        stale.post([_r(10)])  # the old CA no longer vouches for what is served


def _rotate(server: Server, where: Path) -> CertState:
    """What the operator does on a rotation with a new CA: a new leaf on the live context."""
    new = plan(
        CertState(),
        CertPolicy(dns_names=("localhost",), ip_addresses=("127.0.0.1",)),
        dt.datetime.now(dt.UTC),
    ).state
    where.mkdir()
    for k in ("tls.crt", "tls.key"):
        (where / k).write_bytes(new.data[k])
    server.ctx.load_cert_chain(str(where / "tls.crt"), str(where / "tls.key"))
    return new


def _mounted_ca_client(server: Server, tmp_path: Path) -> tuple[SecretVolume, ResultsClient]:
    """A client whose CA is the ``ca.crt`` of a mounted TLS Secret volume."""
    volume = SecretVolume(tmp_path / "tls", {"ca.crt": (server.tmp / "ca.crt").read_bytes()})
    client = ResultsClient(
        f"https://127.0.0.1:{server.port}/v1/results",
        token_file=server.tmp / "token",
        ca_file=volume.root / "ca.crt",
        deadline=0.3,
    )
    return volume, client


def test_a_running_client_follows_its_mounted_ca_through_a_rotation(
    server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The CA Secret is re-made and the kubelet updates the mounted ``ca.crt``: the same
    client (a verifier or webhook that keeps running) delivers again."""
    volume, c = _mounted_ca_client(server, tmp_path)
    with c:
        assert c.post([_r(0)]) == 1
        new = _rotate(server, tmp_path / "new")
        # until the volume is updated the new certificate is not trusted: nothing delivered
        with pytest.raises(TemporaryError, match="certificate verify failed"):
            c.post([_r(1)])
        volume.update({"ca.crt": new.data["ca.crt"]})
        with caplog.at_level(logging.INFO, logger="samplerguard.policy.report_client"):
            assert c.post([_r(2)]) == 1
        assert "changed: the operator is verified against it now" in caplog.text
    assert [r.resources[0].name for r in server.got] == ["x0", "x2"]


def test_a_ca_file_that_cannot_be_loaded_keeps_the_current_trust(
    server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    volume, c = _mounted_ca_client(server, tmp_path)
    with c:
        volume.update({"ca.crt": b"-----BEGIN CERTIFICATE-----\nnot one\n"})
        with caplog.at_level(logging.WARNING, logger="samplerguard.policy.report_client"):
            assert c.post([_r(0)]) == 1  # still the old CA, which still vouches for the server
        assert "cannot be loaded (the current CA stays trusted)" in caplog.text
        # and it gives no trust it did not have: a certificate from another CA stays refused
        _rotate(server, tmp_path / "new")
        with pytest.raises(TemporaryError, match="certificate verify failed"):
            c.post([_r(1)])


def test_an_operator_that_trickles_its_answer_is_cut_at_the_timeout(tmp_path: Path) -> None:
    """A byte every 0.3 s: each read is within the 1 s timeout, the request is cut at 1 s, and
    the post gives up at its deadline with a temporary error."""
    import time

    from tests.support.trickle import Trickler

    token = tmp_path / "token"
    token.write_text("t" * 20)
    result = ReportResult.build(policy="p", rule="recipe", result="pass")
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: 20\r\n\r\n" + b"{" * 20
    with Trickler(answer, every=0.3) as server:
        url = f"http://127.0.0.1:{server.port}/v1/results"
        with ResultsClient(url, token_file=token, timeout=1.0, deadline=0.0) as client:
            started = time.monotonic()
            with pytest.raises(TemporaryError, match=r"timed out after 1\.0s"):
                client.post([result])
    assert time.monotonic() - started < 5.0
