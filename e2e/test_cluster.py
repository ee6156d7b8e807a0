"""End to end against a real API server: CRDs, policies, the operator and the webhook (both
out of cluster, registered with url clientConfigs on https://127.0.0.1), a real loopback OCI
registry with signed, attested, unsigned, wrongly signed and badly attested images."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cleanup import drop_cluster_report_entries

from samplerguard.policy.report import ReportResult

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]
# Where the out-of-cluster webhook and operator listen, as the API server reaches them
# (127.0.0.1 for a local control plane; kind: the docker bridge gateway).
HOST = os.environ.get("SG_E2E_HOST", "127.0.0.1")
NS = "sg-e2e-system"
APP_NS = "sg-e2e-ml"
KUBECTL = os.environ.get("KUBECTL") or shutil.which("kubectl") or "/opt/k8s/bin/kubectl"
OIDC_ISSUER = "https://token.actions.githubusercontent.com"
RELEASE_WORKFLOW = "https://github.com/acme/sampler/.github/workflows/release.yml@refs/heads/main"
BUILDER = "https://github.com/slsa-framework/slsa-github-generator/.github/workflows/generator_container_slsa3.yml@refs/tags/v2.0.0"


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


def _wait(what: str, fn: Any, timeout: float = 60.0) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = fn()
        if got:
            return got
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def registry() -> Iterator[Any]:
    from tests.support.supplychain import LocalRegistry, registry_binary

    if registry_binary() is None:
        pytest.skip("docker-registry is not installed")
    with LocalRegistry() as reg:
        yield reg


@pytest.fixture(scope="module")
def images(registry: Any) -> dict[str, Any]:

    with registry.client() as client:
        return _publish(client, registry)


def _publish(client: Any, registry: Any) -> dict[str, Any]:
    from tests.support.publish import (
        Signer,
        attest_image,
        push_image,
        sign_image,
        slsa_v1_predicate,
    )
    from tests.support.supplychain import PrivateSigstore

    good_key, other_key = Signer.generate(), Signer.generate()
    sigstore = PrivateSigstore()
    out: dict[str, Any] = {"key": good_key.public_pem, "trusted_root": sigstore.trusted_root_json()}
    # Keyless: the policy trusts the release workflow of acme/sampler; one image is signed
    # by that identity, one by another repository's workflow (a wrong identity).
    for name, subject in (
        ("keyless-good", f"{RELEASE_WORKFLOW}"),
        (
            "keyless-wrong-identity",
            "https://github.com/evil/fork/.github/workflows/release.yml@refs/heads/main",
        ),
    ):
        signer = sigstore.keyless_signer(subject, OIDC_ISSUER)
        ref = f"{registry.host}/sg-e2e/keyless/{name}:1.0"
        digest = push_image(client, ref, layers=[name.encode()])
        sign_image(client, ref, digest, signer)
        pred = slsa_v1_predicate(
            builder_id=BUILDER,
            repository="git+https://github.com/acme/sampler",
            ref="refs/heads/main",
        )
        attest_image(client, ref, digest, signer, "https://slsa.dev/provenance/v1", pred)
        out[name] = ref
    for name, signer, repo in (
        ("good", good_key, "git+https://github.com/acme/sampler"),
        ("unsigned", None, None),
        ("wrong-identity", other_key, "git+https://github.com/acme/sampler"),
        ("bad-provenance", good_key, "git+https://github.com/evil/fork"),
    ):
        ref = f"{registry.host}/sg-e2e/{name}:1.0"
        digest = push_image(client, ref, layers=[name.encode()])
        if signer is not None:
            sign_image(client, ref, digest, signer)
            pred = slsa_v1_predicate(
                builder_id=BUILDER, repository=repo or "", ref="refs/heads/main"
            )
            attest_image(client, ref, digest, signer, "https://slsa.dev/provenance/v1", pred)
        out[name] = ref
    return out


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, registry: Any, images: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("e2e")
    kubectl("apply", "--server-side", "-f", str(REPO / "charts" / "samplerguard" / "crds"))
    kubectl("wait", "--for", "condition=established", "crd", "--all", "--timeout=60s")
    for ns, labels in ((NS, {}), (APP_NS, {"samplerguard.dev/enforce": "true"})):
        kubectl("create", "namespace", ns, check=False)
        for k, v in labels.items():
            kubectl("label", "namespace", ns, f"{k}={v}", "--overwrite")
    policy = {
        "apiVersion": "samplerguard.dev/v1alpha1",
        "kind": "ClusterSamplerPolicy",
        "metadata": {"name": "e2e-sampler"},
        "spec": {
            "mode": "enforce",
            # no DRBG Secret in this control-plane lane (the kubelet lane covers DRBG noise)
            "rng": {"mode": "framework"},
            "namespaceSelector": {"matchLabels": {"samplerguard.dev/enforce": "true"}},
            "images": [
                {
                    "glob": f"{registry.host}/sg-e2e/keyless/**",
                    "authorities": [
                        {
                            "name": "release-workflow",
                            "keyless": {
                                "identities": [
                                    {
                                        "issuer": OIDC_ISSUER,
                                        "subjectRegExp": r"^https://github\.com/acme/sampler/.*$",
                                    }
                                ]
                            },
                        }
                    ],
                },
                {
                    "glob": f"{registry.host}/sg-e2e/*",
                    "authorities": [{"name": "release-key", "key": {"publicKey": images["key"]}}],
                },
            ],
            "attestations": [
                {
                    "name": "slsa",
                    "builderIds": [BUILDER],
                    "sourceUris": ["git+https://github.com/acme/sampler"],
                    "sourceRefs": ["refs/heads/main"],
                }
            ],
            "recipe": {
                "samplers": ["euler"],
                "steps": {"min": 10, "max": 50},
                "cfg": {"min": 1, "max": 8},
            },
        },
    }
    kubectl("apply", "-f", "-", stdin=json.dumps(policy))
    wport, iport = _port(), _port()
    token = tmp / "ingest-token"
    token.write_text("e2e-" + base64.b16encode(os.urandom(16)).decode())
    hooks = []
    for kind, path in (
        ("MutatingWebhookConfiguration", "/mutate"),
        ("ValidatingWebhookConfiguration", "/validate"),
    ):
        name = "sg-e2e-" + ("mutating" if kind.startswith("M") else "validating")
        hook: dict[str, Any] = {
            "name": f"{path[1:]}.e2e.samplerguard.dev",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "timeoutSeconds": 10,
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": APP_NS}},
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
        if kind.startswith("M"):
            hook["reinvocationPolicy"] = "IfNeeded"
        hooks.append(
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": kind,
                "metadata": {"name": name},
                "webhooks": [hook],
            }
        )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    (tmp / "trusted_root.json").write_bytes(images["trusted_root"])
    op_log = (tmp / "operator.log").open("w")
    operator = subprocess.Popen(
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
            "--ingest",
            f"{HOST}:{iport}",
            "--ingest-token-file",
            str(token),
            "--mutating-webhook",
            "sg-e2e-mutating",
            "--validating-webhook",
            "sg-e2e-validating",
            "--audit-interval",
            "5s",
            # only this module's pods: another installation may share the cluster
            "--audit-namespace",
            APP_NS,
            "--registry-plain-http",
            registry.host,
            "--health=off",
            "--cert-check",
            "5s",
        ],
        stdout=op_log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    webhook = None
    try:
        _wait("operator's certificate files", lambda: (tmp / "tls" / "tls.crt").is_file(), 90)
        for h in hooks:
            kubectl("apply", "-f", "-", stdin=json.dumps(h))
        wh_log = (tmp / "webhook.log").open("w")
        webhook = subprocess.Popen(
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
                "--plain-http-registry",
                registry.host,
                "--trusted-root",
                str(tmp / "trusted_root.json"),
                "--sidecar-image",
                f"{registry.host}/sg-e2e/good:1.0",
                # denials go to the operator: PolicyReport entries and Events
                "--report-url",
                f"https://{HOST}:{iport}/v1/results",
                "--report-token-file",
                str(token),
                "--report-ca",
                str(tmp / "tls" / "ca.crt"),
            ],
            stdout=wh_log,
            stderr=subprocess.STDOUT,
            env=env,
        )

        def ready() -> bool:
            try:
                return (
                    httpx.get(
                        f"https://{HOST}:{wport}/readyz",
                        verify=ssl.create_default_context(cafile=str(tmp / "tls" / "ca.crt")),
                        timeout=2,
                    ).status_code
                    == 200
                )
            except httpx.HTTPError:
                return False

        _wait("webhook readiness", ready, 60)
        yield {
            "tmp": tmp,
            "ingest": f"https://{HOST}:{iport}",
            "token": token.read_text(),
            "images": images,
        }
    finally:
        for proc in (webhook, operator):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        op_log.close()
        if webhook is not None:
            wh_log.close()
        for h in hooks:
            kubectl(
                "delete",
                h["kind"].lower(),
                h["metadata"]["name"],
                "--ignore-not-found",
                check=False,
            )
        # Waited for: an operator still running elsewhere (the next module's) folds every
        # namespace's PolicyReport into the ClusterPolicyReport while the namespace exists.
        kubectl("delete", "namespace", APP_NS, NS, "--timeout=50s", check=False)
        kubectl(
            "delete",
            "clustersamplerpolicy",
            "e2e-sampler",
            "e2e-broken",
            "--ignore-not-found",
            check=False,
        )
        drop_cluster_report_entries(
            KUBECTL, policies={"e2e-sampler", "e2e-broken"}, namespaces={APP_NS, NS}
        )


def test_operator_patched_both_ca_bundles(cluster: dict[str, Any]) -> None:
    ca = (cluster["tmp"] / "tls" / "ca-bundle.crt").read_bytes()
    for kind, name in (
        ("mutatingwebhookconfiguration", "sg-e2e-mutating"),
        ("validatingwebhookconfiguration", "sg-e2e-validating"),
    ):
        got = _wait(
            f"caBundle of {name}",
            lambda k=kind, n=name: (
                kubectl("get", k, n, "-o", "jsonpath={.webhooks[0].clientConfig.caBundle}").stdout
            ),
        )
        assert base64.b64decode(got) == ca


def test_policy_status_and_bad_policy(cluster: dict[str, Any]) -> None:
    status = _wait(
        "Ready condition",
        lambda: (
            kubectl(
                "get",
                "csp",
                "e2e-sampler",
                "-o",
                'jsonpath={.status.conditions[?(@.type=="Ready")].status}',
            ).stdout
        ),
    )
    assert status == "True"
    bad = yaml.safe_load((REPO / "policies" / "edm.yaml").read_text())
    bad["metadata"]["name"] = "e2e-broken"
    bad["spec"]["images"][0]["authorities"][0]["key"]["publicKey"] = (
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
    )
    kubectl("apply", "-f", "-", stdin=json.dumps(bad))
    msg = _wait(
        "Ready=False",
        lambda: (
            kubectl(
                "get",
                "csp",
                "e2e-broken",
                "-o",
                'jsonpath={.status.conditions[?(@.status=="False")].message}',
            ).stdout
        ),
    )
    assert "publicKey is not a PEM public key" in msg
    # ... and a Warning Event on it (cluster-scoped objects' Events live in "default").
    events = _wait(
        "a PolicyInvalid Event",
        lambda: json.loads(
            kubectl(
                "get",
                "events",
                "-n",
                "default",
                "--field-selector",
                "reason=PolicyInvalid,involvedObject.name=e2e-broken",
                "-o",
                "json",
            ).stdout
        )["items"],
        30,
    )
    assert events[0]["type"] == "Warning" and "publicKey" in events[0]["message"]
    cel = bad.copy()
    cel["spec"] = {**bad["spec"], "recipe": {**bad["spec"]["recipe"], "cfg": {"min": 9, "max": 1}}}
    refused = kubectl("apply", "-f", "-", stdin=json.dumps(cel), check=False)
    assert refused.returncode != 0 and "min must be less than or equal to max" in refused.stderr


def _pod(name: str, image: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": APP_NS},
            "spec": {"containers": [{"name": "sampler", "image": image}]},
        }
    )


@pytest.mark.parametrize("name", ["good", "keyless-good"])
def test_signed_and_attested_image_is_admitted_and_injected(
    cluster: dict[str, Any], name: str
) -> None:
    out = kubectl("apply", "-f", "-", stdin=_pod(name, cluster["images"][name]), check=False)
    assert out.returncode == 0, out.stderr
    pod = json.loads(kubectl("get", "pod", "-n", APP_NS, name, "-o", "json").stdout)
    images = [c["image"] for c in pod["spec"]["containers"]]
    # the tag was rewritten to the verified digest
    assert any("@sha256:" in i and f"/{name}@" in i for i in images), images
    names = {c["name"] for c in pod["spec"]["containers"]} | {
        c["name"] for c in pod["spec"].get("initContainers", [])
    }
    assert len(names) >= 2, names  # the sidecar (and hook init container) were injected
    assert pod["spec"].get("volumes")
    # the sidecar sees the app's processes, to hash the solver code they loaded
    assert pod["spec"].get("shareProcessNamespace") is True


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("unsigned", "signature"),
        ("wrong-identity", "signature does not verify with key"),
        ("keyless-wrong-identity", "github.com/evil/fork"),
        ("bad-provenance", "github.com/evil/fork"),
    ],
)
def test_bad_images_are_denied_with_a_reason(
    cluster: dict[str, Any], name: str, expected: str
) -> None:
    out = kubectl("apply", "-f", "-", stdin=_pod(name, cluster["images"][name]), check=False)
    assert out.returncode != 0
    assert "denied the request" in out.stderr and expected in out.stderr, out.stderr
    print(f"\n{name}: {out.stderr.strip()}")


def test_denials_become_events_and_report_entries(cluster: dict[str, Any]) -> None:
    out = kubectl(
        "apply", "-f", "-", stdin=_pod("unsigned", cluster["images"]["unsigned"]), check=False
    )
    assert out.returncode != 0

    def denied_event() -> list[dict[str, Any]]:
        items = json.loads(
            kubectl(
                "get",
                "events",
                "-n",
                APP_NS,
                "--field-selector",
                "reason=VerificationFailed",
                "-o",
                "json",
            ).stdout
        )["items"]
        return [e for e in items if "unsigned" in e.get("message", "")]

    events = _wait("a VerificationFailed Event for the denied pod", denied_event, 60)
    assert events[0]["type"] == "Warning"
    report = json.loads(
        kubectl("get", "policyreport", "-n", APP_NS, "samplerguard", "-o", "json").stdout
    )
    assert any(r["rule"] == "signature" and r["result"] == "fail" for r in report["results"])


def test_results_become_policy_reports(cluster: dict[str, Any]) -> None:
    lines = []
    for i in range(5):
        lines.append(
            json.dumps(
                ReportResult.build(
                    policy="e2e-sampler",
                    rule="trajectory-recheck",
                    result="fail" if i == 0 else "pass",
                    message="step 3 relL2",
                    resource={
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "namespace": APP_NS,
                        "name": "good",
                    },
                    rel_l2=0.2 if i == 0 else 1e-7,
                    tau=1e-4,
                    step=3,
                    guidance=4.0,
                    steps=20,
                ).to_wire()
            )
        )
    r = httpx.post(
        f"{cluster['ingest']}/v1/results",
        content="\n".join(lines),
        headers={"Authorization": f"Bearer {cluster['token']}"},
        verify=ssl.create_default_context(cafile=str(cluster["tmp"] / "tls" / "ca.crt")),
        timeout=30,
    )
    assert r.status_code == 200 and r.json() == {"recorded": 5}
    report = json.loads(
        kubectl("get", "policyreport", "-n", APP_NS, "samplerguard", "-o", "json").stdout
    )
    recheck = {r["result"]: r for r in report["results"] if r["rule"] == "trajectory-recheck"}
    assert recheck["pass"]["properties"]["count"] == "4"
    assert recheck["fail"]["properties"]["count"] == "1"
    assert recheck["fail"]["properties"]["relL2Max"] == "0.2"
    assert report["summary"]["fail"] >= 1
    cluster_report = _wait(
        "ClusterPolicyReport",
        lambda: (
            json.loads(
                kubectl(
                    "get", "clusterpolicyreport", "samplerguard-cluster", "-o", "json", check=False
                ).stdout
                or "{}"
            )
            .get("summary", {})
            .get("fail")
        ),
        60,
    )
    assert cluster_report >= 1
    verdict = _wait(
        "the Verdict column",
        lambda: kubectl("get", "csp", "e2e-sampler", "-o", "jsonpath={.status.lastVerdict}").stdout,
        60,
    )
    # one failed re-check posted here, plus the webhook's denials posted by earlier tests
    m = re.match(r"fail (\d+)/(\d+) \(", verdict)
    assert m and 1 <= int(m.group(1)) <= int(m.group(2)), verdict
    page = cluster["tmp"] / "report" / "report.md"
    out = subprocess.run(
        [sys.executable, "-m", "samplerguard", "report", "--out", str(page)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    text = page.read_text()
    assert "trajectory-recheck" in text and f"Pod {APP_NS}/good" in text
    assert "## Verdict per workload" in text and "requests checked" in text
    assert [p.name for p in page.parent.iterdir()] == ["report.md"]  # nothing beside it
    events = kubectl(
        "get", "events", "-n", APP_NS, "--field-selector", "reason=VerificationFailed", "-o", "json"
    ).stdout
    assert json.loads(events)["items"]


def _audit_results(pod: str) -> list[dict[str, Any]]:
    out = kubectl("get", "policyreport", "-n", APP_NS, "samplerguard", "-o", "json", check=False)
    if out.returncode != 0:
        return []
    return [
        r
        for r in json.loads(out.stdout)["results"]
        if r["rule"] == "signature"
        and r.get("properties", {}).get("origin") == "background-audit"
        and r["resources"][0]["name"] == pod
    ]


def test_background_audit_sees_a_key_rotation(cluster: dict[str, Any]) -> None:
    """The admitted pod is re-verified while it runs; once the policy trusts a new key (the
    old one rotated out, the image never re-signed), its signature result turns to fail."""
    passed = _wait(
        "an audit pass for pod good",
        lambda: [r for r in _audit_results("good") if r["result"] == "pass"],
        60,
    )
    assert "1 check(s) passed" in passed[0]["message"] or "passed" in passed[0]["message"]
    from tests.support.publish import Signer

    rotated = Signer.generate().public_pem
    body = json.loads(kubectl("get", "csp", "e2e-sampler", "-o", "json").stdout)
    for rule in body["spec"]["images"]:
        for auth in rule["authorities"]:
            if "key" in auth:
                auth["key"]["publicKey"] = rotated
    kubectl("apply", "-f", "-", stdin=json.dumps(body))
    failed = _wait(
        "an audit failure for pod good",
        lambda: [r for r in _audit_results("good") if r["result"] == "fail"],
        60,
    )
    assert "signature does not verify with key" in failed[0]["message"], failed[0]["message"]
    assert failed[0]["severity"] == "high"
