"""Run the operator until kopf stops: the controller behind kopf's handlers, the background
image audit, the results ingest server and kopf's liveness endpoint.

The Kubernetes client uses the in-cluster config in a pod and the kubeconfig named by
``KUBECONFIG`` elsewhere. The ingest server starts with kopf (its startup handler), on
the webhook's serving certificate, and follows its rotation: new handshakes get the new leaf.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf
from kopf._core.engines.peering import Identity as kopf_identity
from kubernetes import config as kconfig

from samplerguard.errors import MalformedInputError
from samplerguard.operator import audit as audit_mod
from samplerguard.operator.certs import CertState
from samplerguard.operator.controller import Controller, OperatorConfig
from samplerguard.operator.handlers import register as register_handlers
from samplerguard.operator.identity import operator_identity, peering_priority
from samplerguard.operator.ingest import Authenticator, build_app, serve, tls_context
from samplerguard.operator.kube import Kube
from samplerguard.telemetry.provider import setup_service_metrics

__all__ = ["RunOptions", "run_operator"]


@dataclass(frozen=True)
class RunOptions:
    """What the process adds to the controller's :class:`OperatorConfig`: the servers beside
    kopf, kopf's peering, and the reach of the background audit."""

    #: ``HOST:PORT`` of the results ingest (HTTPS); None: no ingest server.
    ingest: str | None
    #: ``HOST:PORT`` of kopf's liveness endpoint (``/healthz``); None: none.
    health: str | None
    #: Local mode: the file holding the bearer token verifiers post with, in place of a
    #: TokenReview of their ServiceAccount token.
    ingest_token_file: Path | None = None
    #: kopf's peering object; None: this replica runs standalone.
    peering: str | None = None
    #: This replica's peering priority; None: derived from its identity, so replicas never tie.
    peering_priority: int | None = None
    #: False: no background image audit.
    audit: bool = True
    #: Audit only the pods of these namespaces; empty: every opted-in namespace.
    audit_namespaces: frozenset[str] = frozenset()
    #: The namespace label whose value true opts a namespace in.
    opt_in_label: str = "samplerguard.dev/enforce"
    #: Registries (``host:port``) the audit speaks to over plain HTTP.
    registry_plain_http: tuple[str, ...] = ()
    #: CA bundle for registries whose certificate a private CA issued; None: the system's.
    registry_ca: str | None = None


def _load_kube_config() -> None:
    try:
        kconfig.load_incluster_config()  # type: ignore[no-untyped-call]
    except kconfig.ConfigException:
        kconfig.load_kube_config()  # type: ignore[no-untyped-call]


def _auditor(
    cfg: OperatorConfig, options: RunOptions, kube: Kube, controller: Controller
) -> Callable[[], int] | None:
    """One audit round (its count of recorded results), or None when the audit is off or the
    supply-chain package is not installed."""
    if not options.audit:
        return None
    try:
        from samplerguard.supplychain.kube_secrets import KubernetesKeySecrets
        from samplerguard.supplychain.registry import RegistryClient
        from samplerguard.supplychain.verifier import ImageVerifier

        # keys that policies keep in Secrets are read as the webhook reads them (the chart
        # grants the operator `get secrets` where it grants it to the webhook)
        verifier = ImageVerifier(
            RegistryClient(
                plain_http=options.registry_plain_http, verify=options.registry_ca or True
            ),
            key_source=KubernetesKeySecrets(cfg.namespace),
        )
        check = audit_mod.image_checker(verifier)
    except ImportError as exc:  # the supply-chain package is optional at this layer
        print(f"background audit disabled: {exc}")
        return None
    scope = options.audit_namespaces

    def auditor() -> int:
        pods = kube.list_pods()
        if scope:
            pods = [p for p in pods if (p.get("metadata") or {}).get("namespace") in scope]
        results = audit_mod.audit(
            pods,
            kube.list_namespaces(),
            kube.list_policies("clustersamplerpolicies") + kube.list_policies("samplerpolicies"),
            check,
            cfg.namespace,
            options.opt_in_label,
        )
        return controller.record(results)

    return auditor


def _ingest_starter(
    cfg: OperatorConfig, options: RunOptions, kube: Kube, controller: Controller
) -> Callable[[], Coroutine[Any, Any, None]]:
    """What kopf's startup awaits: the ingest server on the webhook's serving certificate (made
    first if there is none yet), reloaded whenever the controller rotates it."""

    async def start_ingest() -> None:
        if options.ingest is None:
            return
        host, _, port = options.ingest.rpartition(":")
        if options.ingest_token_file is not None:
            try:
                token = options.ingest_token_file.read_text().strip()
            except OSError as exc:
                raise MalformedInputError(
                    f"--ingest-token-file {options.ingest_token_file}: {exc.strerror or exc}"
                ) from None
            auth = Authenticator(local_token=token)
        else:
            auth = Authenticator(review=kube.token_user, allowed_users=cfg.verifier_users)
        await asyncio.to_thread(controller.reconcile_certs)
        state, _ = await asyncio.to_thread(kube.get_secret, cfg.namespace, cfg.tls_secret)
        tmp = Path(tempfile.mkdtemp(prefix="sg-operator-tls-"))

        def write(st: CertState) -> tuple[str, str]:
            (tmp / "tls.crt").write_bytes(st.data["tls.crt"])
            key = tmp / "tls.key"
            key.touch(mode=0o600)
            key.write_bytes(st.data["tls.key"])
            return str(tmp / "tls.crt"), str(key)

        ctx = tls_context(*write(state))

        def reload(st: CertState) -> None:
            # New handshakes use the new leaf; the context object stays the server's.
            ctx.load_cert_chain(*write(st))

        controller.cert_listeners.append(reload)
        await serve(build_app(controller.record, auth), host or "0.0.0.0", int(port), ctx)  # noqa: S104

    return start_ingest


def run_operator(cfg: OperatorConfig, options: RunOptions) -> int:
    """Wire the controller into kopf and run until kopf stops; 0 then."""
    _load_kube_config()
    kube = Kube()
    controller = Controller(cfg, kube)
    auditor = _auditor(cfg, options, kube, controller)
    start_ingest = _ingest_starter(cfg, options, kube, controller)
    # results counted on ingest, served on the ingest port's GET /metrics, OTLP when configured
    setup_service_metrics("samplerguard-operator")
    identity = operator_identity()
    priority = options.peering_priority
    if priority is None:
        priority = peering_priority(identity)
    registry = kopf.OperatorRegistry()
    register_handlers(
        registry, controller, auditor=auditor, peering=options.peering, start_ingest=start_ingest
    )
    kopf.run(
        registry=registry,
        clusterwide=True,
        standalone=options.peering is None,
        peering_name=options.peering,
        # kopf's own identity would look the uid up in /etc/passwd (none for 65532)
        identity=kopf_identity(identity),
        priority=priority,
        liveness_endpoint=None if options.health is None else f"http://{options.health}/healthz",
    )
    return 0
