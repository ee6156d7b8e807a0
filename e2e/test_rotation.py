"""Certificate rotation under traffic: the operator re-issues the webhook's serving certificate
on every check (a 1-day leaf renewed 2 days ahead), the out-of-cluster webhook follows the
files, and the API server keeps reaching it through the unchanged caBundle: no admission
fails while the leaf changes underneath."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cleanup import drop_cluster_report_entries
from cryptography import x509

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]
HOST = os.environ.get("SG_E2E_HOST", "127.0.0.1")
NS = "sg-rot-system"
APP_NS = "sg-rot-ml"
KUBECTL = os.environ.get("KUBECTL") or shutil.which("kubectl") or "/opt/k8s/bin/kubectl"


def kubectl(
    *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KUBECTL, *args], input=stdin, capture_output=True, text=True, check=check, timeout=60
    )


def _port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _serial(port: int, ca: Path) -> int:
    ctx = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection((HOST, port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


@pytest.fixture(scope="module")
def rotating(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("rotation")
    kubectl("apply", "--server-side", "-f", str(REPO / "charts" / "samplerguard" / "crds"))
    for ns in (NS, APP_NS):
        kubectl("create", "namespace", ns, check=False)
    wport = _port()
    names = {
        "MutatingWebhookConfiguration": "sg-rot-mutating",
        "ValidatingWebhookConfiguration": "sg-rot-validating",
    }
    hooks = []
    for kind, name in names.items():
        path = "/mutate" if kind.startswith("M") else "/validate"
        hooks.append(
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": kind,
                "metadata": {"name": name},
                "webhooks": [
                    {
                        "name": f"{path[1:]}.rot.samplerguard.dev",
                        "admissionReviewVersions": ["v1"],
                        "sideEffects": "None",
                        "failurePolicy": "Fail",
                        "timeoutSeconds": 10,
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": APP_NS}
                        },
                        "clientConfig": {"url": f"https://{HOST}:{wport}{path}"},
                        "rules": [
                            {
                                "apiGroups": [""],
                                "apiVersions": ["v1"],
                                "operations": ["CREATE"],
                                "resources": ["pods"],
                            }
                        ],
                    }
                ],
            }
        )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    logs = [(tmp / "operator.log").open("w"), (tmp / "webhook.log").open("w")]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "samplerguard",
                    "operator",
                    "--namespace",
                    NS,
                    "--ip-san",
                    HOST,
                    "--cert-dir",
                    str(tmp / "tls"),
                    "--mutating-webhook",
                    names["MutatingWebhookConfiguration"],
                    "--validating-webhook",
                    names["ValidatingWebhookConfiguration"],
                    "--no-audit",
                    "--ingest",
                    "off",
                    "--health",
                    "off",
                    "--tls-secret",
                    "sg-rot-tls",
                    "--lease",
                    "sg-rot",
                    "--leaf-lifetime",
                    "1d",
                    "--leaf-renew-before",
                    "2d",  # longer than the leaf: every check re-issues it
                    "--cert-check",
                    "1s",
                ],
                stdout=logs[0],
                stderr=subprocess.STDOUT,
                env=env,
            )
        )
        deadline = time.monotonic() + 90
        while not (tmp / "tls" / "tls.crt").exists():
            assert time.monotonic() < deadline, (tmp / "operator.log").read_text()[-2000:]
            time.sleep(0.5)
        for h in hooks:
            kubectl("apply", "-f", "-", stdin=json.dumps(h))
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "samplerguard",
                    "webhook",
                    "--listen",
                    f"{HOST}:{wport}",
                    "--cert",
                    str(tmp / "tls" / "tls.crt"),
                    "--key",
                    str(tmp / "tls" / "tls.key"),
                    "--namespace",
                    NS,
                    "--no-match",
                    "allow",
                    "--no-inject",
                ],
                stdout=logs[1],
                stderr=subprocess.STDOUT,
                env=env,
            )
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                _serial(wport, tmp / "tls" / "ca.crt")
                break
            except OSError:
                assert time.monotonic() < deadline, (tmp / "webhook.log").read_text()[-2000:]
                time.sleep(0.5)
        yield {"tmp": tmp, "port": wport, "hooks": names}
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for log in logs:
            log.close()
        for kind, name in names.items():
            kubectl("delete", kind.lower(), name, "--ignore-not-found", check=False)
        kubectl("delete", "namespace", APP_NS, NS, "--timeout=50s", check=False)
        drop_cluster_report_entries(KUBECTL, policies=(), namespaces={APP_NS, NS})


def _bundle(name: str) -> str:
    return kubectl(
        "get",
        "validatingwebhookconfiguration",
        name,
        "-o",
        "jsonpath={.webhooks[0].clientConfig.caBundle}",
    ).stdout


def test_admission_keeps_working_while_the_leaf_rotates(rotating: dict[str, Any]) -> None:
    ca = rotating["tmp"] / "tls" / "ca.crt"
    bundle = ""
    end = time.monotonic() + 60
    while not bundle and time.monotonic() < end:
        bundle = _bundle(rotating["hooks"]["ValidatingWebhookConfiguration"])
        time.sleep(0.5)
    assert base64.b64decode(bundle) == (rotating["tmp"] / "tls" / "ca-bundle.crt").read_bytes()
    serials: list[int] = []
    admissions = 0
    start = time.monotonic()
    while time.monotonic() - start < 45 and len(set(serials)) < 3:
        serials.append(_serial(rotating["port"], ca))
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"p{admissions}", "namespace": APP_NS},
            "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]},
        }
        out = kubectl("create", "--dry-run=server", "-f", "-", stdin=json.dumps(pod), check=False)
        assert out.returncode == 0, out.stderr  # the API server reached the webhook over TLS
        admissions += 1
        time.sleep(1)
    distinct = len(set(serials))
    took = time.monotonic() - start
    print(f"{admissions} admissions, {distinct} serving certificates in {took:.0f}s")
    assert distinct >= 2, "the leaf was never rotated"
    # The CA (and so every caBundle) stayed the same throughout.
    assert _bundle(rotating["hooks"]["ValidatingWebhookConfiguration"]) == bundle
