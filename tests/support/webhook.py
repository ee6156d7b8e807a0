"""Self-signed serving certificates for the HTTPS tests, made with ``cryptography``."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def write_self_signed(cert: Path, key: Path, common_name: str = "samplerguard-webhook") -> str:
    """Write a P-256 key and a self-signed certificate for 127.0.0.1/localhost; return the
    certificate's serial number in hex (to tell rotated certificates apart)."""
    private = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return format(certificate.serial_number, "x")


# --- AdmissionReview bodies as the API server sends them -----------------------------------

import json  # noqa: E402
import uuid  # noqa: E402
from typing import Any  # noqa: E402

from kubernetes import client as k8s  # noqa: E402

_API = k8s.ApiClient()

#: kind → (group, version, resource)
RESOURCES: dict[str, tuple[str, str, str]] = {
    "Pod": ("", "v1", "pods"),
    "Deployment": ("apps", "v1", "deployments"),
    "StatefulSet": ("apps", "v1", "statefulsets"),
    "DaemonSet": ("apps", "v1", "daemonsets"),
    "ReplicaSet": ("apps", "v1", "replicasets"),
    "Job": ("batch", "v1", "jobs"),
    "CronJob": ("batch", "v1", "cronjobs"),
}


def pod_spec(*images: str, init: tuple[str, ...] = ()) -> k8s.V1PodSpec:
    return k8s.V1PodSpec(
        containers=[
            k8s.V1Container(name=f"c{i}", image=image, env=[k8s.V1EnvVar(name="A", value="1")])
            for i, image in enumerate(images)
        ],
        init_containers=[k8s.V1Container(name=f"i{i}", image=image) for i, image in enumerate(init)]
        or None,
    )


def workload(
    kind: str,
    *images: str,
    name: str = "sampler",
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    init: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A workload of ``kind`` running ``images``, serialised as the API server sends it."""
    meta = k8s.V1ObjectMeta(name=name, labels=labels, annotations=annotations)
    spec = pod_spec(*images, init=init)
    template = k8s.V1PodTemplateSpec(
        metadata=k8s.V1ObjectMeta(labels=labels, annotations=annotations), spec=spec
    )
    selector = k8s.V1LabelSelector(match_labels=labels or {"app": name})
    obj: Any
    if kind == "Pod":
        obj = k8s.V1Pod(api_version="v1", kind="Pod", metadata=meta, spec=spec)
    elif kind == "Deployment":
        obj = k8s.V1Deployment(
            api_version="apps/v1",
            kind=kind,
            metadata=meta,
            spec=k8s.V1DeploymentSpec(selector=selector, template=template),
        )
    elif kind == "StatefulSet":
        obj = k8s.V1StatefulSet(
            api_version="apps/v1",
            kind=kind,
            metadata=meta,
            spec=k8s.V1StatefulSetSpec(selector=selector, template=template, service_name=name),
        )
    elif kind == "DaemonSet":
        obj = k8s.V1DaemonSet(
            api_version="apps/v1",
            kind=kind,
            metadata=meta,
            spec=k8s.V1DaemonSetSpec(selector=selector, template=template),
        )
    elif kind == "ReplicaSet":
        obj = k8s.V1ReplicaSet(
            api_version="apps/v1",
            kind=kind,
            metadata=meta,
            spec=k8s.V1ReplicaSetSpec(selector=selector, template=template),
        )
    elif kind == "Job":
        obj = k8s.V1Job(
            api_version="batch/v1", kind=kind, metadata=meta, spec=k8s.V1JobSpec(template=template)
        )
    elif kind == "CronJob":
        obj = k8s.V1CronJob(
            api_version="batch/v1",
            kind=kind,
            metadata=meta,
            spec=k8s.V1CronJobSpec(
                schedule="*/5 * * * *",
                job_template=k8s.V1JobTemplateSpec(spec=k8s.V1JobSpec(template=template)),
            ),
        )
    else:
        raise ValueError(kind)
    body: dict[str, Any] = _API.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
    return body


def review(
    obj: dict[str, Any] | None,
    *,
    kind: str = "Pod",
    namespace: str = "ml",
    operation: str = "CREATE",
    sub_resource: str | None = None,
    dry_run: bool = False,
    old: dict[str, Any] | None = None,
) -> dict[str, Any]:
    group, version, resource = RESOURCES.get(kind, ("", "v1", kind.lower() + "s"))
    gvk = {"group": group, "version": version, "kind": kind}
    gvr = {"group": group, "version": version, "resource": resource}
    request: dict[str, Any] = {
        "uid": str(uuid.uuid4()),
        "kind": gvk,
        "resource": gvr,
        "requestKind": gvk,
        "requestResource": gvr,
        "name": _name(obj),
        "namespace": namespace,
        "operation": operation,
        "userInfo": {
            "username": "kubernetes-admin",
            "groups": ["system:masters", "system:authenticated"],
        },
        "object": obj,
        "oldObject": old,
        "dryRun": dry_run,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
    }
    if sub_resource:
        request["subResource"] = sub_resource
        request["requestSubResource"] = sub_resource
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def _name(obj: dict[str, Any] | None) -> str:
    meta = (obj or {}).get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    return name if isinstance(name, str) else ""


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


# --- a registry double: the seam for unit tests (integration tests use the real registry) ---

import hashlib  # noqa: E402
import threading  # noqa: E402

from samplerguard.errors import TemporaryError, VerificationError  # noqa: E402
from samplerguard.policy import SamplerPolicySpec  # noqa: E402
from samplerguard.supplychain import CheckResult, ImageVerdict, parse_reference  # noqa: E402


def digest_of(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


class RegistryDouble:
    """Tags, signed digests and an on/off switch, with the verifier's and resolver's shape."""

    def __init__(self) -> None:
        self.tags: dict[str, str] = {}
        self.signed: set[tuple[str, str]] = set()
        self.down = False
        self.verify_calls = 0
        self.resolve_calls = 0
        self._lock = threading.Lock()

    def push(self, ref: str, *, signed: bool = True) -> str:
        """Publish ``ref`` (``name:tag``); return its digest."""
        parsed = parse_reference(ref)
        digest = digest_of(str(parsed))
        self.tags[str(parsed)] = digest
        if signed:
            self.signed.add((parsed.name, digest))
        return digest

    def resolve(self, ref: str) -> str:
        with self._lock:
            self.resolve_calls += 1
        if self.down:
            raise TemporaryError("registry unreachable: connection refused")
        parsed = parse_reference(ref)
        if parsed.digest:
            return parsed.digest
        try:
            return self.tags[str(parsed)]
        except KeyError:
            raise VerificationError(f"manifest unknown: {ref} is not in the registry") from None

    def with_credentials(self, credentials: object) -> RegistryDouble:
        return self

    def verify(
        self,
        image_ref: str,
        spec: SamplerPolicySpec,
        *,
        policy_name: str,
        digest: str | None = None,
        client: object = None,
        policy_namespace: str | None = None,
    ) -> ImageVerdict:
        with self._lock:
            self.verify_calls += 1
        if self.down:
            raise TemporaryError("registry unreachable: connection refused")
        parsed = parse_reference(image_ref)
        digest = digest or parsed.digest or self.resolve(image_ref)
        ok = (parsed.name, digest) in self.signed
        check = CheckResult(
            "signature/key",
            ok,
            "signature verified" if ok else "no signature verifies (got 0 valid of 1, expected 1)",
        )
        return ImageVerdict(image_ref, digest, policy_name, ok, (check,))


# --- policies and HTTP helpers for the webhook tests -----------------------------------------

import base64  # noqa: E402

import httpx  # noqa: E402
import jsonpatch  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec as _ec  # noqa: E402

REGISTRY = "registry.local:5000"
KEY_PEM = (
    _ec.generate_private_key(_ec.SECP256R1())
    .public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)


def policy(
    name: str,
    glob: str,
    mode: str = "enforce",
    *,
    namespace: str | None = None,
    selector: dict[str, str] | None = None,
) -> dict[str, object]:
    meta: dict[str, object] = {"name": name}
    kind = "ClusterSamplerPolicy"
    if namespace:
        meta["namespace"] = namespace
        kind = "SamplerPolicy"
    spec: dict[str, object] = {
        "mode": mode,
        "images": [{"glob": glob, "authorities": [{"name": "ci", "key": {"publicKey": KEY_PEM}}]}],
    }
    if selector:
        spec["namespaceSelector"] = {"matchLabels": selector}
    return {"apiVersion": "samplerguard.dev/v1alpha1", "kind": kind, "metadata": meta, "spec": spec}


def post(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST an AdmissionReview and return its ``response`` (asserting HTTP 200)."""
    r = client.post(path, content=encode(body), headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["apiVersion"] == "admission.k8s.io/v1"
    assert out["response"]["uid"] == body["request"]["uid"]
    response: dict[str, Any] = out["response"]
    return response


def patched(obj: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with the response's JSONPatch applied, as the API server would."""
    if "patch" not in response:
        return obj
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    result: dict[str, Any] = jsonpatch.apply_patch(obj, ops)
    return result


def patched_ops(obj: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = jsonpatch.apply_patch(obj, ops)
    return result


def inject(pod: dict[str, Any], cfg: Any, rng_mode: str = "framework") -> tuple[Any, list[str]]:
    """``pod`` after the injection ``cfg`` (an InjectionConfig) makes for tenant ``t`` under
    ``ClusterSamplerPolicy/p``, and the injection's warnings."""
    from samplerguard.webhook.inject import injection_patch
    from samplerguard.webhook.workloads import find_pod_template

    tpl = find_pod_template("", "Pod", pod)
    ops, warnings = injection_patch(
        tpl,
        cfg,
        sidecar_image=cfg.sidecar_image,
        hook_image=cfg.effective_hook_image,
        tenant="t",
        policy="ClusterSamplerPolicy/p",
        rng_mode=rng_mode,
    )
    return patched_ops(pod, ops), warnings
