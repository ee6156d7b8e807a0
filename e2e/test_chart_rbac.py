"""The chart's own least-privilege RBAC is enough: its manifests are accepted by the server,
and two operator replicas run as the chart's ServiceAccount (a real token), peer through
the ClusterKopfPeering, create the TLS Secret, patch both caBundles, take the Lease and
write policy status, with no 403 in their logs."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cleanup import drop_cluster_report_entries

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]
NS = "sg-rbac-e2e"
APP_NS = "sg-rbac-app"  # a namespace whose pods get injected sidecars
REL = "sgr"
KUBECTL = os.environ.get("KUBECTL") or shutil.which("kubectl") or "/opt/k8s/bin/kubectl"


def kubectl(
    *args: str, stdin: str | None = None, check: bool = True, kubeconfig: str | None = None
) -> str:
    env = {**os.environ, **({"KUBECONFIG": kubeconfig} if kubeconfig else {})}
    out = subprocess.run(
        [KUBECTL, *args], input=stdin, capture_output=True, text=True, timeout=60, env=env
    )
    if check and out.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {out.stderr}")
    return out.stdout


def _render() -> list[dict[str, Any]]:
    import helm_python as helm

    rendered = helm.Chart.load(REPO / "charts" / "samplerguard").render(
        {"sidecar": {"namespaces": [APP_NS]}}, name=REL, namespace=NS, is_install=True
    )
    docs = [
        d
        for path, text in sorted(rendered.items())
        if not path.endswith("NOTES.txt")
        for d in yaml.safe_load_all(text)
        if d
    ]
    # the chart puts some objects in the app namespaces (the DRBG Role and RoleBinding): every
    # namespaced object names its namespace, so one apply without -n takes them all
    for d in docs:
        if d["kind"] not in _CLUSTER_KINDS:
            d["metadata"].setdefault("namespace", NS)
    return docs


_CLUSTER_KINDS = frozenset(
    {
        "ClusterRole",
        "ClusterRoleBinding",
        "ClusterKopfPeering",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
        "CustomResourceDefinition",
        "Namespace",
        "ClusterSamplerPolicy",
        "PriorityClass",
    }
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("rbac")
    docs = _render()
    kubectl("apply", "--server-side", "-f", str(REPO / "charts" / "samplerguard" / "crds"))
    kubectl("wait", "--for", "condition=established", "crd", "--all", "--timeout=60s")
    kubectl("create", "namespace", NS, check=False)
    kubectl("create", "namespace", APP_NS, check=False)
    # Everything is accepted by the server (the pods would not run here: no kubelet).
    kubectl("apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump_all(docs))
    wanted = (
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ServiceAccount",
        "ClusterKopfPeering",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    )
    real = [d for d in docs if d["kind"] in wanted]
    # the policy first: the chart's fail-closed policy webhook has no webhook running behind it
    # here (no kubelet), and the operator only needs to find the policy
    policy = yaml.safe_load((REPO / "policies" / "lcm-few-step.yaml").read_text())
    policy["metadata"]["name"] = "rbac-e2e-lcm"
    kubectl("apply", "-f", "-", stdin=json.dumps(policy))
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(real))
    token = kubectl("create", "token", f"{REL}-operator", "-n", NS, "--duration=1h").strip()
    admin = yaml.safe_load(Path(os.environ["KUBECONFIG"]).read_text())
    ctx = admin["contexts"][0]
    ctx["context"]["user"] = "operator-sa"
    admin["users"] = [{"name": "operator-sa", "user": {"token": token}}]
    sa_config = tmp / "operator-sa.kubeconfig"
    sa_config.write_text(yaml.safe_dump(admin))
    procs, logs = [], []
    try:
        for i in range(2):
            log = (tmp / f"operator-{i}.log").open("w")
            logs.append(log)
            args = [
                sys.executable,
                "-m",
                "samplerguard",
                "-v",
                "operator",
                f"--namespace={NS}",
                f"--tls-secret={REL}-webhook-tls",
                f"--mutating-webhook={REL}-mutating",
                f"--validating-webhook={REL}-validating",
                f"--webhook-service={REL}-webhook",
                f"--operator-service={REL}-operator",
                f"--lease={REL}-operator",
                f"--peering={REL}",
                "--ingest=off",
                "--health=off",
                "--audit-interval=5s",
                # only this module's pods: another installation may share the cluster
                f"--audit-namespace={APP_NS}",
                f"--verifier-user=system:serviceaccount:{NS}:{REL}-verifier",
            ]
            env = {**os.environ, "KUBECONFIG": str(sa_config), "POD_NAME": f"operator-{i}"}
            procs.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env))
        yield {
            "tmp": tmp,
            "sa_config": str(sa_config),
            "procs": procs,
            "hooks": [d for d in real if d["kind"].endswith("WebhookConfiguration")],
        }
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for log in logs:
            log.close()
        # fail-closed webhook configurations first, then the rest: cluster-wide RBAC, the
        # peering object, the namespaces
        for d in sorted(real, key=lambda d: not d["kind"].endswith("WebhookConfiguration")):
            kubectl(
                "delete",
                d["kind"].lower(),
                d["metadata"]["name"],
                *(["-n", d["metadata"]["namespace"]] if "namespace" in d["metadata"] else []),
                "--ignore-not-found",
                check=False,
            )
        kubectl("delete", "clustersamplerpolicy", "rbac-e2e-lcm", "--ignore-not-found", check=False)
        kubectl(
            "delete", "namespace", NS, APP_NS, "--ignore-not-found", "--timeout=50s", check=False
        )
        drop_cluster_report_entries(KUBECTL, policies={"rbac-e2e-lcm"}, namespaces={NS, APP_NS})


def _wait(what: str, fn: Any, timeout: float = 90.0) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = fn()
        if got:
            return got
        time.sleep(1)
    pytest.fail(f"timed out waiting for {what}")


def test_operator_as_its_service_account(installed: dict[str, Any]) -> None:
    ca = _wait(
        "the TLS Secret",
        lambda: kubectl(
            "get",
            "secret",
            "-n",
            NS,
            f"{REL}-webhook-tls",
            "-o",
            "jsonpath={.data.ca-bundle\\.crt}",
            check=False,
        ),
    )
    for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
        name = f"{REL}-{kind.removesuffix('webhookconfiguration')}"
        bundles = _wait(
            f"caBundle of {name}",
            lambda k=kind, n=name: kubectl(
                "get", k, n, "-o", "jsonpath={.webhooks[*].clientConfig.caBundle}", check=False
            ).split(),
        )
        hooks = kubectl("get", kind, name, "-o", "jsonpath={.webhooks[*].name}").split()
        assert len(bundles) == len(hooks) >= 2 and set(bundles) == {ca}
    assert base64.b64decode(ca).startswith(b"-----BEGIN CERTIFICATE-----")
    ready = _wait(
        "policy status",
        lambda: kubectl(
            "get",
            "csp",
            "rbac-e2e-lcm",
            "-o",
            "jsonpath={.status.conditions[0].status}",
            check=False,
        ),
    )
    assert ready == "True"
    holder = kubectl(
        "get", "lease", "-n", NS, f"{REL}-operator", "-o", "jsonpath={.spec.holderIdentity}"
    )
    assert holder in ("operator-0", "operator-1")
    # Both replicas registered in the peering object.
    peers = _wait(
        "two peers",
        lambda: (
            len(
                json.loads(kubectl("get", "clusterkopfpeering", REL, "-o", "json")).get("status")
                or {}
            )
            >= 2
            or None
        ),
        60,
    )
    assert peers
    time.sleep(6)  # one audit pass (lists pods, namespaces, policies as the SA)
    for i in range(2):
        text = (installed["tmp"] / f"operator-{i}.log").read_text()
        # a 403 status, not the digits 403 inside a timestamp (",403 INFO": its milliseconds)
        # or a kopf peer id ("root@vm/20261124035843/…" on 24 November at 03:58)
        assert not re.search(r"(?<![0-9,])403(?![0-9])", text), text[-3000:]
        assert "Forbidden" not in text, text[-3000:]
        assert installed["procs"][i].poll() is None, text[-3000:]


def test_helm_upgrade_blanking_the_ca_bundle_is_repaired(installed: dict[str, Any]) -> None:
    """``helm upgrade`` re-applies the webhook configurations from the templates; rendered
    without a cluster (no ``lookup``) they carry no caBundle. The operator, watching them,
    patches it back within seconds, and the CA is unchanged (the Secret is not Helm's)."""
    name = f"{REL}-validating"
    before = _wait(
        "caBundle",
        lambda: kubectl(
            "get",
            "validatingwebhookconfiguration",
            name,
            "-o",
            "jsonpath={.webhooks[0].clientConfig.caBundle}",
            check=False,
        ),
    )
    for hook in installed["hooks"]:
        kubectl("replace", "-f", "-", stdin=json.dumps(hook))  # as rendered: no caBundle
    blank = kubectl(
        "get",
        "validatingwebhookconfiguration",
        name,
        "-o",
        "jsonpath={.webhooks[0].clientConfig.caBundle}",
    )
    start = time.monotonic()
    after = _wait(
        "caBundle repaired",
        lambda: kubectl(
            "get",
            "validatingwebhookconfiguration",
            name,
            "-o",
            "jsonpath={.webhooks[0].clientConfig.caBundle}",
            check=False,
        ),
        30,
    )
    assert after == before
    print(f"caBundle blank={blank == ''}, repaired in {time.monotonic() - start:.1f}s")


def _can(verb: str, resource: str, namespace: str) -> bool:
    """`kubectl auth can-i` as the default ServiceAccount of ``namespace`` (the identity the
    injected sidecar runs under), with its real groups."""
    out = subprocess.run(
        [
            KUBECTL,
            "auth",
            "can-i",
            verb,
            resource,
            f"--as=system:serviceaccount:{namespace}:default",
            f"--as-group=system:serviceaccounts:{namespace}",
            "--as-group=system:serviceaccounts",
            "--as-group=system:authenticated",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout.strip() == "yes"


def test_injected_sidecars_may_review_tokens_only_in_their_namespaces(
    installed: dict[str, Any],
) -> None:
    assert _can("create", "tokenreviews.authentication.k8s.io", APP_NS)
    assert _can("get", "clustersamplerpolicies.samplerguard.dev", APP_NS)
    assert not _can("list", "secrets", APP_NS)
    assert not _can("create", "pods", APP_NS)
    assert not _can("create", "tokenreviews.authentication.k8s.io", "default")
