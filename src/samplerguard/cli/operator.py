"""``samplerguard operator``: the kopf operator (policies, certificates, reports, audit).

This module reads the flags; :mod:`samplerguard.operator.run` wires and runs the operator."""

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
    """The flags as an :class:`OperatorConfig` and :class:`RunOptions`; 2 for a bad flag."""
    from samplerguard.operator.controller import OperatorConfig
    from samplerguard.operator.run import RunOptions, run_operator

    if args.leaf_lifetime <= 0:
        print("samplerguard operator: --leaf-lifetime must be longer than 0s")
        return 2
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
    options = RunOptions(
        ingest=None if args.ingest == "off" else args.ingest,
        health=None if args.health == "off" else args.health,
        ingest_token_file=args.ingest_token_file,
        peering=args.peering,
        peering_priority=args.peering_priority,
        audit=not args.no_audit,
        audit_namespaces=frozenset(args.audit_namespace),
        opt_in_label=args.opt_in_label,
        registry_plain_http=tuple(args.registry_plain_http),
        registry_ca=args.registry_ca,
    )
    return run_operator(cfg, options)
