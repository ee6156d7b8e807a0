"""``samplerguard operator``: the kopf operator (policies, certificates, reports, audit)."""

from __future__ import annotations

import argparse
from argparse import SUPPRESS
from pathlib import Path
from typing import Any

from samplerguard.cli._options import duration

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "operator",
        help="run the operator (policy status, webhook certificates, PolicyReports, audit)",
        description="Run the kopf operator. In a pod it uses the in-cluster config; outside, "
        "the kubeconfig named by KUBECONFIG. Flags default to SAMPLERGUARD_<FLAG> variables; "
        "durations read as in policies (30s, 10m, 72h, 90d; a bare number is seconds).",
    )
    p.add_argument("--namespace", default="samplerguard")
    p.add_argument("--tls-secret", default="samplerguard-webhook-tls")
    p.add_argument("--mutating-webhook", default="samplerguard-mutating")
    p.add_argument("--validating-webhook", default="samplerguard-validating")
    p.add_argument("--webhook-service", default="samplerguard-webhook")
    p.add_argument("--operator-service", default="samplerguard-operator")
    p.add_argument(
        "--ip-san", action="append", default=[], help="extra IP SAN (out-of-cluster webhook)"
    )
    p.add_argument("--dns-san", action="append", default=[], help="extra DNS SAN")
    p.add_argument("--cert-dir", type=Path, help="also write tls.crt/tls.key/ca.crt here")
    p.add_argument("--leaf-lifetime", type=duration, default="90d", help="serving certificate life")
    p.add_argument(
        "--leaf-renew-before",
        type=duration,
        default="30d",
        help="re-issue the serving certificate when less than this is left",
    )
    p.add_argument(
        "--audit-interval",
        type=duration,
        default="10m",
        help="background audit period; 0 disables it",
    )
    p.add_argument("--cert-check", type=duration, default="5m", help="certificate check period")
    p.add_argument(
        "--verifier-user",
        action="append",
        default=[],
        help="ServiceAccount user allowed to post results "
        "(default system:serviceaccount:<namespace>:samplerguard-verifier)",
    )
    p.add_argument("--ingest", default="0.0.0.0:8443", help="HOST:PORT, or 'off'")
    p.add_argument("--ingest-token-file", type=Path, help="local mode: shared bearer token")
    p.add_argument(
        "--health",
        default="0.0.0.0:8080",
        help="HOST:PORT of the liveness endpoint (/healthz), or 'off'",
    )
    p.add_argument("--lease", default="samplerguard-operator")
    p.add_argument("--peering", default=None)
    p.add_argument(
        "--peering-priority",
        type=int,
        default=None,
        help="this replica's kopf peering priority (default: derived from the pod name, so "
        "replicas never tie)",
    )
    p.add_argument(
        "--plain-http",
        action="append",
        default=[],
        dest="registry_plain_http",
        metavar="HOST:PORT",
        help="registry spoken to over plain HTTP (loopback test registries; repeatable)",
    )
    p.add_argument(  # the former spelling, kept working
        "--registry-plain-http", action="append", dest="registry_plain_http", help=SUPPRESS
    )
    p.add_argument(
        "--registry-ca",
        default="" or None,
        help="CA bundle for registries whose TLS certificate a private CA issued",
    )
    p.add_argument(
        "--opt-in-label",
        default="samplerguard.dev/enforce",
        help="namespace label whose value true opts a namespace in (the chart's optInLabel)",
    )
    p.add_argument(
        "--audit-namespace",
        action="append",
        default=[],
        help="audit only the pods of this namespace (repeatable; default: every opted-in "
        "namespace), for an operator that shares the cluster with another installation",
    )
    p.add_argument(
        "--escrow-secret",
        default=None,
        help="the Secret (in --namespace) holding the verifier's X25519 escrow key pair, "
        "created when absent; unset: no DRBG Secrets are managed",
    )
    p.add_argument(
        "--drbg-secret",
        default="samplerguard-drbg",
        help="the name of the DRBG Secret (master secret, escrow public key) in each "
        "--drbg-namespace",
    )
    p.add_argument(
        "--drbg-namespace",
        action="append",
        default=[],
        help="a namespace whose injected sidecars get a DRBG Secret (repeatable)",
    )
    p.add_argument("--no-audit", action="store_true", help="disable the background image audit")
    p.set_defaults(_run=run)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import tempfile

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

    if args.leaf_lifetime <= 0:
        print("samplerguard operator: --leaf-lifetime must be longer than 0s")
        return 2
    try:
        kconfig.load_incluster_config()  # type: ignore[no-untyped-call]
    except kconfig.ConfigException:
        kconfig.load_kube_config()  # type: ignore[no-untyped-call]
    users = tuple(args.verifier_user) or (
        f"system:serviceaccount:{args.namespace}:samplerguard-verifier",
    )
    cfg = OperatorConfig(
        namespace=args.namespace,
        tls_secret=args.tls_secret,
        mutating_webhook=args.mutating_webhook,
        validating_webhook=args.validating_webhook,
        webhook_service=args.webhook_service,
        operator_service=args.operator_service,
        extra_ip_sans=tuple(args.ip_san),
        extra_dns_sans=tuple(args.dns_san),
        cert_dir=args.cert_dir,
        cert_check_seconds=args.cert_check,
        leaf_days=args.leaf_lifetime / 86400,
        leaf_renew_before_days=args.leaf_renew_before / 86400,
        audit_interval_seconds=args.audit_interval,
        verifier_users=users,
        lease_name=args.lease,
        escrow_secret=args.escrow_secret,
        drbg_secret=args.drbg_secret,
        drbg_namespaces=tuple(args.drbg_namespace),
    )
    kube = Kube()
    controller = Controller(cfg, kube)

    auditor = None
    if not args.no_audit:
        try:
            from samplerguard.supplychain.kube_secrets import KubernetesKeySecrets
            from samplerguard.supplychain.registry import RegistryClient
            from samplerguard.supplychain.verifier import ImageVerifier

            # keys that policies keep in Secrets are read as the webhook reads them (the chart
            # grants the operator `get secrets` where it grants it to the webhook)
            verifier = ImageVerifier(
                RegistryClient(
                    plain_http=args.registry_plain_http, verify=args.registry_ca or True
                ),
                key_source=KubernetesKeySecrets(args.namespace),
            )
            check = audit_mod.image_checker(verifier)

            scope = frozenset(args.audit_namespace)

            def auditor() -> int:
                pods = kube.list_pods()
                if scope:
                    pods = [p for p in pods if (p.get("metadata") or {}).get("namespace") in scope]
                results = audit_mod.audit(
                    pods,
                    kube.list_namespaces(),
                    kube.list_policies("clustersamplerpolicies")
                    + kube.list_policies("samplerpolicies"),
                    check,
                    cfg.namespace,
                    args.opt_in_label,
                )
                return controller.record(results)

        except ImportError as exc:  # the supply-chain package is optional at this layer
            print(f"background audit disabled: {exc}")

    async def start_ingest() -> None:
        if args.ingest == "off":
            return
        host, _, port = args.ingest.rpartition(":")
        if args.ingest_token_file is not None:
            try:
                token = args.ingest_token_file.read_text().strip()
            except OSError as exc:
                raise MalformedInputError(
                    f"--ingest-token-file {args.ingest_token_file}: {exc.strerror or exc}"
                ) from None
            auth = Authenticator(local_token=token)
        else:
            auth = Authenticator(review=kube.token_user, allowed_users=users)
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

    from samplerguard.telemetry.provider import setup_service_metrics

    # results counted on ingest, served on the ingest port's GET /metrics, OTLP when configured
    setup_service_metrics("samplerguard-operator")
    identity = operator_identity()
    priority = args.peering_priority
    if priority is None:
        priority = peering_priority(identity)
    registry = kopf.OperatorRegistry()
    register_handlers(
        registry, controller, auditor=auditor, peering=args.peering, start_ingest=start_ingest
    )
    kopf.run(
        registry=registry,
        clusterwide=True,
        standalone=args.peering is None,
        peering_name=args.peering,
        # kopf's own identity would look the uid up in /etc/passwd (none for 65532)
        identity=kopf_identity(identity),
        priority=priority,
        liveness_endpoint=None if args.health == "off" else f"http://{args.health}/healthz",
    )
    return 0
