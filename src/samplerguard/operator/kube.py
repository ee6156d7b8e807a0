"""The operator's few API calls; their failures are translated into our errors once, by
:mod:`samplerguard.kubeapi`.

Synchronous (the ``kubernetes`` client); the async handlers call them with
``asyncio.to_thread``. Every write that can race another replica uses ``resourceVersion``
and retries a :class:`~samplerguard.kubeapi.Conflict` by re-reading, so two operators never lose
each other's results.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import uuid
from collections.abc import Callable
from typing import Any, cast

from kubernetes import client

from samplerguard.kubeapi import Conflict, NotFound
from samplerguard.kubeapi import call as _call
from samplerguard.operator.certs import CertState
from samplerguard.policy.report import REPORT_GROUP, REPORT_VERSION, ObjectReference

__all__ = ["Kube"]

log = logging.getLogger("samplerguard.operator.kube")

_TIMEOUT = 10


class Kube:
    def __init__(self, api: client.ApiClient | None = None) -> None:
        self.api = api or client.ApiClient()
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.admission = client.AdmissionregistrationV1Api(self.api)
        self.auth = client.AuthenticationV1Api(self.api)
        self.coordination = client.CoordinationV1Api(self.api)

    # -- the TLS Secret --------------------------------------------------------------------

    def get_secret(self, namespace: str, name: str) -> tuple[CertState, str | None]:
        try:
            secret = _call(
                f"read Secret {namespace}/{name}",
                lambda: self.core.read_namespaced_secret(
                    name, namespace, _request_timeout=_TIMEOUT
                ),
            )
        except NotFound:
            return CertState(), None
        data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
        meta = secret.metadata
        return CertState(data), meta.resource_version if meta is not None else None

    def put_secret(
        self,
        namespace: str,
        name: str,
        state: CertState,
        resource_version: str | None,
        *,
        type_: str = "kubernetes.io/tls",
    ) -> None:
        body = client.V1Secret(
            api_version="v1",
            kind="Secret",
            type=type_,
            metadata=client.V1ObjectMeta(
                name=name,
                namespace=namespace,
                labels={"app.kubernetes.io/managed-by": "samplerguard-operator"},
                resource_version=resource_version,
            ),
            data={k: base64.b64encode(v).decode() for k, v in sorted(state.data.items())},
        )
        if resource_version is None:
            _call(
                f"create Secret {namespace}/{name}",
                lambda: self.core.create_namespaced_secret(
                    namespace, body, _request_timeout=_TIMEOUT
                ),
            )
        else:
            _call(
                f"replace Secret {namespace}/{name}",
                lambda: self.core.replace_namespaced_secret(
                    name, namespace, body, _request_timeout=_TIMEOUT
                ),
            )

    # -- caBundle ----------------------------------------------------------------------------

    def patch_ca_bundle(self, kind: str, name: str, bundle: bytes) -> bool:
        """Set ``clientConfig.caBundle`` of every webhook in one configuration. Returns
        whether anything changed; a missing configuration is not an error (not installed
        yet)."""
        encoded = base64.b64encode(bundle).decode()
        read: Any
        patch: Any
        if kind == "mutating":
            read = self.admission.read_mutating_webhook_configuration
            patch = self.admission.patch_mutating_webhook_configuration
        else:
            read = self.admission.read_validating_webhook_configuration
            patch = self.admission.patch_validating_webhook_configuration
        try:
            current = _call(
                f"read {kind} webhook configuration {name}",
                lambda: read(name, _request_timeout=_TIMEOUT),
            )
        except NotFound:
            return False
        hooks = current.webhooks or []
        if all((h.client_config.ca_bundle or "") == encoded for h in hooks):
            return False
        # A JSON patch naming each index, guarded by a test of the webhook's name so that a
        # concurrent reorder (helm upgrade) fails the patch instead of hitting the wrong one.
        ops: list[dict[str, Any]] = []
        for i, h in enumerate(hooks):
            ops.append({"op": "test", "path": f"/webhooks/{i}/name", "value": h.name})
            ops.append(
                {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": encoded}
            )
        _call(
            f"patch caBundle of {kind} webhook configuration {name}",
            lambda: patch(
                name,
                ops,
                _content_type="application/json-patch+json",
                _request_timeout=_TIMEOUT,
            ),
        )
        return True

    # -- reports ---------------------------------------------------------------------------

    def get_report(self, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            if namespace is None:
                body = _call(
                    f"read ClusterPolicyReport {name}",
                    lambda: self.custom.get_cluster_custom_object(
                        REPORT_GROUP,
                        REPORT_VERSION,
                        "clusterpolicyreports",
                        name,
                        _request_timeout=_TIMEOUT,
                    ),
                )
            else:
                body = _call(
                    f"read PolicyReport {namespace}/{name}",
                    lambda: self.custom.get_namespaced_custom_object(
                        REPORT_GROUP,
                        REPORT_VERSION,
                        namespace,
                        "policyreports",
                        name,
                        _request_timeout=_TIMEOUT,
                    ),
                )
        except NotFound:
            return None
        return cast(dict[str, Any], body)

    def put_report(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        ns = meta.get("namespace")
        name = meta["name"]
        rv = meta.get("resourceVersion")
        if ns is None:
            plural = "clusterpolicyreports"
            if rv:
                fn: Callable[[], Any] = lambda: self.custom.replace_cluster_custom_object(  # noqa: E731
                    REPORT_GROUP, REPORT_VERSION, plural, name, body, _request_timeout=_TIMEOUT
                )
            else:
                fn = lambda: self.custom.create_cluster_custom_object(  # noqa: E731
                    REPORT_GROUP, REPORT_VERSION, plural, body, _request_timeout=_TIMEOUT
                )
        else:
            plural = "policyreports"
            if rv:
                fn = lambda: self.custom.replace_namespaced_custom_object(  # noqa: E731
                    REPORT_GROUP,
                    REPORT_VERSION,
                    ns,
                    plural,
                    name,
                    body,
                    _request_timeout=_TIMEOUT,
                )
            else:
                fn = lambda: self.custom.create_namespaced_custom_object(  # noqa: E731
                    REPORT_GROUP, REPORT_VERSION, ns, plural, body, _request_timeout=_TIMEOUT
                )
        _call(f"write {body['kind']} {ns or ''}/{name}", fn)

    def list_reports(self, label_selector: str) -> list[dict[str, Any]]:
        out = _call(
            "list PolicyReports",
            lambda: self.custom.list_cluster_custom_object(
                REPORT_GROUP,
                REPORT_VERSION,
                "policyreports",
                label_selector=label_selector,
                _request_timeout=_TIMEOUT,
            ),
        )
        return list(out.get("items") or [])  # type: ignore[attr-defined]

    def list_cluster_reports(self, label_selector: str) -> list[dict[str, Any]]:
        out = _call(
            "list ClusterPolicyReports",
            lambda: self.custom.list_cluster_custom_object(
                REPORT_GROUP,
                REPORT_VERSION,
                "clusterpolicyreports",
                label_selector=label_selector,
                _request_timeout=_TIMEOUT,
            ),
        )
        return list(out.get("items") or [])  # type: ignore[attr-defined]

    # -- policies, pods, namespaces ---------------------------------------------------------

    def list_policies(self, plural: str) -> list[dict[str, Any]]:
        out = _call(
            f"list {plural}",
            lambda: self.custom.list_cluster_custom_object(
                "samplerguard.dev", "v1alpha1", plural, _request_timeout=_TIMEOUT
            ),
        )
        return list(out.get("items") or [])  # type: ignore[attr-defined]

    def patch_policy_status(self, namespace: str | None, name: str, status: dict[str, Any]) -> None:
        """Merge-patch a policy's status subresource."""
        body = {"status": status}
        if namespace is None:
            _call(
                f"patch status of ClusterSamplerPolicy {name}",
                lambda: self.custom.patch_cluster_custom_object_status(
                    "samplerguard.dev",
                    "v1alpha1",
                    "clustersamplerpolicies",
                    name,
                    body,
                    _content_type="application/merge-patch+json",
                    _request_timeout=_TIMEOUT,
                ),
            )
        else:
            _call(
                f"patch status of SamplerPolicy {namespace}/{name}",
                lambda: self.custom.patch_namespaced_custom_object_status(
                    "samplerguard.dev",
                    "v1alpha1",
                    namespace,
                    "samplerpolicies",
                    name,
                    body,
                    _content_type="application/merge-patch+json",
                    _request_timeout=_TIMEOUT,
                ),
            )

    def list_namespaces(self) -> list[dict[str, Any]]:
        out = _call(
            "list namespaces",
            lambda: self.core.list_namespace(_request_timeout=_TIMEOUT),
        )
        san = self.api.sanitize_for_serialization
        return [san(n) for n in out.items]  # type: ignore[no-untyped-call]

    def list_pods(self, label_selector: str | None = None) -> list[dict[str, Any]]:
        out = _call(
            "list pods",
            lambda: self.core.list_pod_for_all_namespaces(
                label_selector=label_selector, _request_timeout=_TIMEOUT
            ),
        )
        san = self.api.sanitize_for_serialization
        return [san(p) for p in out.items]  # type: ignore[no-untyped-call]

    # -- events ----------------------------------------------------------------------------

    def create_event(
        self,
        involved: ObjectReference,
        *,
        type_: str,
        reason: str,
        message: str,
        component: str = "samplerguard-operator",
    ) -> None:
        ns = involved.namespace or "default"
        now = dt.datetime.now(dt.UTC)
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(
                name=f"{(involved.name or 'samplerguard')[:200]}.{uuid.uuid4().hex[:12]}",
                namespace=ns,
            ),
            involved_object=client.V1ObjectReference(
                api_version=involved.api_version,
                kind=involved.kind,
                name=involved.name,
                namespace=involved.namespace,
                uid=involved.uid,
            ),
            reason=reason[:128],
            message=message[:1024],
            type=type_,
            source=client.V1EventSource(component=component),
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            reporting_component=component,
            reporting_instance=component,
        )
        _call(
            f"create Event in {ns}",
            lambda: self.core.create_namespaced_event(ns, body, _request_timeout=_TIMEOUT),
        )

    # -- authentication of the verifier ---------------------------------------------------

    def token_user(self, token: str, audiences: list[str] | None = None) -> str | None:
        """The authenticated user name of a bearer token (TokenReview), or None."""
        review = client.V1TokenReview(
            spec=client.V1TokenReviewSpec(token=token, audiences=audiences or None)
        )
        out = _call(
            "TokenReview",
            lambda: self.auth.create_token_review(review, _request_timeout=_TIMEOUT),
        )
        status = out.status
        if status is None or not status.authenticated or status.user is None:
            return None
        return str(status.user.username)

    # -- leader lease for the background loops ---------------------------------------------

    def try_lease(self, namespace: str, name: str, holder: str, seconds: int) -> bool:
        """Acquire or renew a coordination Lease; True while this replica holds it."""
        now = dt.datetime.now(dt.UTC)
        try:
            lease = _call(
                f"read Lease {namespace}/{name}",
                lambda: self.coordination.read_namespaced_lease(
                    name, namespace, _request_timeout=_TIMEOUT
                ),
            )
        except NotFound:
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=name, namespace=namespace),
                spec=client.V1LeaseSpec(
                    holder_identity=holder,
                    lease_duration_seconds=seconds,
                    acquire_time=now,
                    renew_time=now,
                ),
            )
            try:
                _call(
                    "create Lease",
                    lambda: self.coordination.create_namespaced_lease(
                        namespace, body, _request_timeout=_TIMEOUT
                    ),
                )
            except Conflict:
                return False
            return True
        spec = lease.spec
        if spec is None:
            spec = lease.spec = client.V1LeaseSpec()
        renew = spec.renew_time
        expired = renew is None or (now - renew).total_seconds() > (
            spec.lease_duration_seconds or seconds
        )
        if spec.holder_identity != holder and not expired:
            return False
        if spec.holder_identity != holder:
            spec.acquire_time = now
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
        spec.holder_identity = holder
        spec.renew_time = now
        spec.lease_duration_seconds = seconds
        try:
            _call(
                "renew Lease",
                lambda: self.coordination.replace_namespaced_lease(
                    name, namespace, lease, _request_timeout=_TIMEOUT
                ),
            )
        except Conflict:
            return False
        return True
