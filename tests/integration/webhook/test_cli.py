"""``samplerguard webhook`` as a real process: flags, local-mode policies, HTTPS, exit codes."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.webhook import policy, post, review, workload, write_self_signed


def _parent_of(stat: Path) -> int | None:
    try:
        return int(stat.read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(params=[1, 2], ids=["1-worker", "2-workers"])
def running(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[httpx.Client, Path]]:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    write_self_signed(cert, key)
    (tmp_path / "policies").mkdir()
    # Port 1 on loopback: nothing listens, so the registry is "down" from the first request.
    (tmp_path / "policies" / "acme.yaml").write_text(
        yaml.safe_dump(policy("acme", "127.0.0.1:1/**"))
    )
    (tmp_path / "ns.yaml").write_text(yaml.safe_dump({"ml": {"samplerguard.dev/enforce": "true"}}))
    port = _port()
    log = (tmp_path / "webhook.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "samplerguard",
            "webhook",
            "--listen",
            f"127.0.0.1:{port}",
            "--cert",
            str(cert),
            "--key",
            str(key),
            "--policies",
            str(tmp_path / "policies"),
            "--namespace-labels",
            str(tmp_path / "ns.yaml"),
            "--plain-http-registry",
            "127.0.0.1:1",
            "--registry-timeout",
            "500ms",
            "--audit-log",
            str(tmp_path / "audit.jsonl"),
            "--workers",
            str(request.param),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    ctx = ssl.create_default_context(cafile=str(cert))
    with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=ctx, timeout=10) as client:
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                log.close()
                pytest.fail(f"webhook did not start: {(tmp_path / 'webhook.log').read_text()}")
            time.sleep(0.1)
        if request.param > 1:  # the workers are the webhook process's children
            children = [
                stat for stat in Path("/proc").glob("[0-9]*/stat") if _parent_of(stat) == proc.pid
            ]
            assert len(children) == request.param
        try:
            yield client, tmp_path
        finally:
            proc.terminate()
            # Graceful: 0, or uvicorn re-raising SIGTERM after its shutdown (one worker).
            assert proc.wait(timeout=20) in (0, -signal.SIGTERM)
            log.close()


def test_local_mode_process_fails_closed(running: tuple[httpx.Client, Path]) -> None:
    client, tmp = running
    response = post(client, "/validate", review(workload("Pod", "127.0.0.1:1/acme/sampler:1.0")))
    assert response["allowed"] is False
    assert "cannot resolve the tag" in response["status"]["message"]
    response = post(client, "/mutate", review(workload("Pod", "busybox")))
    assert response["allowed"] is False
    assert "no policy's image rules match" in response["status"]["message"]
    # Not opted in: left alone.
    assert post(client, "/validate", review(workload("Pod", "busybox"), namespace="dev"))["allowed"]
    # Enforced failures are recorded in the audit log (policy.report format).
    assert '"policy":"acme"' in (tmp / "audit.jsonl").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cert", "/nonexistent.crt", "--key", "/nonexistent.key"], "cannot load the serving"),
        (["--listen", "nohost"], "is not HOST:PORT"),
        ([], "--cert and --key are required"),
    ],
)
@pytest.mark.slow
def test_unusable_configuration_exits_2(tmp_path: Path, args: list[str], message: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "samplerguard", "webhook", "--policies", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert message in out.stdout + out.stderr
