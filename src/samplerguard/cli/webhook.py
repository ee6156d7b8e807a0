"""``samplerguard webhook``: the admission webhook over HTTPS.

Every flag has an environment variable (``SAMPLERGUARD_<FLAG>``, shown in ``--help``), so the
chart configures the container through ``env`` alone. With ``--policies`` the webhook reads
policies from files (local mode); without it, it watches the CRDs through the API server.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from samplerguard.cli._options import duration

__all__ = ["register", "run"]

log = logging.getLogger(__name__)


def _add(parser: argparse.ArgumentParser, flag: str, env: str, help: str, **kw: Any) -> None:
    del env  # the variable is SAMPLERGUARD_<FLAG>, as for every command (cli._options)
    parser.add_argument(flag, help=help, **kw)


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "webhook",
        help="run the admission webhook (validate + inject) over HTTPS",
        description="Admission webhook: verifies sampler images against samplerguard policies "
        "and injects the sidecar. Durations read as in policies (30s, 10m, 1h; a bare number "
        "is seconds). See docs/webhook.md.",
    )
    _add(p, "--listen", "LISTEN", "HOST:PORT to serve HTTPS on", default="127.0.0.1:8443")
    _add(p, "--cert", "CERT", "serving certificate (PEM); reloaded when the file changes")
    _add(p, "--key", "KEY", "serving private key (PEM); reloaded with the certificate")
    _add(
        p,
        "--policies",
        "POLICIES",
        "policy file or directory (local mode); unset: watch the CRDs in the cluster",
    )
    _add(
        p,
        "--namespace-labels",
        "NAMESPACE_LABELS",
        "local mode: YAML mapping namespace -> labels, for the opt-in double check",
    )
    _add(
        p,
        "--namespace",
        "NAMESPACE",
        "samplerguard's own namespace (never touched)",
        default=os.environ.get("POD_NAMESPACE", "samplerguard"),
    )
    p.add_argument(
        "--exempt-namespace",
        action="append",
        default=[],
        help="another namespace never touched (repeatable; kube-system always is)",
    )
    p.add_argument(
        "--opt-in-label",
        default="samplerguard.dev/enforce",
        help="namespace label whose value true opts a namespace in (the chart's optInLabel) ",
    )
    _add(
        p,
        "--workers",
        "WORKERS",
        "worker processes sharing the port (each with its own caches and policy watch)",
        type=int,
        default=1,
    )
    _add(p, "--deadline", "DEADLINE", "time per request, end to end", type=duration, default="8s")
    _add(p, "--max-body-bytes", "MAX_BODY_BYTES", "largest request body", type=int, default=3 << 20)
    _add(
        p,
        "--no-match",
        "NO_MATCH",
        "what happens to images no policy names",
        choices=["deny", "warn", "allow"],
        default="deny",
    )
    _add(
        p,
        "--fresh-ttl",
        "FRESH_TTL",
        "how long a pass is served from cache",
        type=duration,
        default="5m",
    )
    _add(
        p,
        "--last-known-good-ttl",
        "LAST_KNOWN_GOOD_TTL",
        "how long a pass still counts while the registry is unreachable",
        type=duration,
        default="1h",
    )
    _add(
        p,
        "--failure-ttl",
        "FAILURE_TTL",
        "how long a rejection is cached",
        type=duration,
        default="10s",
    )
    _add(p, "--audit-log", "AUDIT_LOG", "append failed checks here as JSON lines")
    _add(
        p,
        "--report-url",
        "REPORT_URL",
        "post failed checks to the operator's /v1/results (PolicyReports and Events)",
    )
    _add(p, "--report-token-file", "REPORT_TOKEN_FILE", "bearer token for --report-url")
    _add(p, "--report-ca", "REPORT_CA", "CA certificate of the operator's results endpoint")
    _add(
        p,
        "--read-pull-secrets",
        "READ_PULL_SECRETS",
        "in a cluster: read pods' imagePullSecrets to reach private registries (needs get on "
        "secrets)",
        action="store_true",
    )
    _add(p, "--trusted-root", "TRUSTED_ROOT", "Sigstore trusted_root.json for keyless checks")
    p.add_argument(
        "--plain-http",
        action="append",
        default=[],
        dest="plain_http_registry",
        metavar="HOST:PORT",
        help="registry spoken to over plain HTTP (loopback test registries; repeatable)",
    )
    p.add_argument(  # the former spelling, kept working
        "--plain-http-registry",
        action="append",
        dest="plain_http_registry",
        help=argparse.SUPPRESS,
    )
    _add(p, "--registry-ca", "REGISTRY_CA", "CA bundle for registries with private TLS")
    _add(
        p,
        "--registry-timeout",
        "REGISTRY_TIMEOUT",
        "time per registry request",
        type=duration,
        default="3s",
    )
    _add(
        p,
        "--sidecar-image",
        "SIDECAR_IMAGE",
        "sidecar image to inject",
        default="ghcr.io/samplerguard/sidecar:0.1.0",
    )
    _add(p, "--hook-image", "HOOK_IMAGE", "image holding the hook package (default: sidecar's)")
    _add(
        p,
        "--run-dir",
        "RUN_DIR",
        "shared directory for the socket and openings",
        default="/var/run/samplerguard",
    )
    _add(
        p,
        "--sidecar-port",
        "SIDECAR_PORT",
        "TCP port the verifier reaches the sidecar on",
        type=int,
        default=9471,
    )
    _add(
        p,
        "--drbg-secret",
        "DRBG_SECRET",
        "the Secret (in each injected pod's namespace) holding the DRBG master secret and the "
        "verifier's escrow public key, mounted into sidecars whose policy asks for DRBG noise "
        "(unset: such pods are denied under enforce)",
    )
    _add(p, "--no-inject", "NO_INJECT", "validate and pin digests only", action="store_true")
    _add(
        p,
        "--plain-sidecar",
        "PLAIN_SIDECAR",
        "inject the sidecar as a plain container instead of a native sidecar",
        action="store_true",
    )
    for flag, what, default in (
        ("--sidecar-cpu-request", "CPU request", "50m"),
        ("--sidecar-memory-request", "memory request", "256Mi"),
        ("--sidecar-memory-limit", "memory limit", "1Gi"),
    ):
        p.add_argument(flag, default=default, help=f"the injected sidecar's {what}")
    p.add_argument(
        "--sidecar-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the sidecar (repeatable)",
    )
    p.set_defaults(_run=run)


def _config(args: argparse.Namespace) -> Any:
    from samplerguard.errors import MalformedInputError
    from samplerguard.webhook import InjectionConfig, WebhookConfig

    host, _, port = str(args.listen).rpartition(":")
    if not host or not (port.isascii() and port.isdigit()):
        raise MalformedInputError(f"--listen {args.listen!r} is not HOST:PORT")
    if args.deadline <= 0:
        raise MalformedInputError("--deadline must be longer than 0s")
    if not args.cert or not args.key:
        raise MalformedInputError("--cert and --key are required: the webhook only speaks HTTPS")
    env: list[tuple[str, str]] = []
    for item in args.sidecar_env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise MalformedInputError(f"--sidecar-env {item!r} is not NAME=VALUE")
        env.append((name, value))
    if args.policies is None and not any(name == "SAMPLERGUARD_AUTH" for name, _ in env):
        # In a cluster the verifier authenticates to the sidecar with its ServiceAccount token.
        env.append(("SAMPLERGUARD_AUTH", "tokenreview"))
    return WebhookConfig(
        host=host.strip("[]"),
        port=int(port),
        certfile=args.cert,
        keyfile=args.key,
        policies=args.policies,
        own_namespace=args.namespace,
        exempt_namespaces=("kube-system", *args.exempt_namespace),
        opt_in_label=args.opt_in_label,
        deadline=args.deadline,
        max_body_bytes=args.max_body_bytes,
        no_match=args.no_match,
        fresh_ttl=args.fresh_ttl,
        last_known_good_ttl=args.last_known_good_ttl,
        failure_ttl=args.failure_ttl,
        audit_log=args.audit_log,
        report_url=args.report_url,
        report_token_file=args.report_token_file,
        report_ca_file=args.report_ca,
        injection=InjectionConfig(
            enabled=not args.no_inject,
            sidecar_image=args.sidecar_image,
            hook_image=args.hook_image,
            run_dir=args.run_dir,
            sidecar_port=args.sidecar_port,
            native_sidecar=not args.plain_sidecar,
            sidecar_env=tuple(env),
            drbg_secret=args.drbg_secret or None,
            sidecar_cpu_request=args.sidecar_cpu_request,
            sidecar_memory_request=args.sidecar_memory_request,
            sidecar_memory_limit=args.sidecar_memory_limit,
        ),
    )


def run(args: argparse.Namespace) -> int:
    import yaml

    from samplerguard.errors import MalformedInputError
    from samplerguard.supplychain import ImageVerifier, RegistryClient, TrustedRoots
    from samplerguard.supplychain.verifier import KeySource
    from samplerguard.webhook import (
        Admission,
        FilePolicySource,
        ReloadingCertificate,
        StaticNamespaceLabels,
    )
    from samplerguard.webhook.optin import NamespaceLabels
    from samplerguard.webhook.policies import PolicySource
    from samplerguard.webhook.server import serve
    from samplerguard.webhook.verifying import PullSecrets

    try:
        config = _config(args)
        ReloadingCertificate(config.certfile, config.keyfile)  # unusable files: exit 2 now
        policies: PolicySource
        namespaces: NamespaceLabels | None = None
        pull_secrets: PullSecrets | None = None
        key_secrets: KeySource | None = None
        if config.policies is not None:
            policies = FilePolicySource(config.policies)
            if args.namespace_labels:
                with open(args.namespace_labels, encoding="utf-8") as fh:
                    labels = yaml.safe_load(fh) or {}
                if not isinstance(labels, dict):
                    raise MalformedInputError("--namespace-labels must be a mapping")
                namespaces = StaticNamespaceLabels(labels)
        else:
            from kubernetes import config as kube_config

            from samplerguard.webhook.kube import (
                KubernetesKeySecrets,
                KubernetesNamespaceLabels,
                KubernetesPolicySource,
                KubernetesPullSecrets,
            )

            try:
                kube_config.load_incluster_config()  # type: ignore[no-untyped-call]
            except kube_config.ConfigException:
                kube_config.load_kube_config()  # type: ignore[no-untyped-call]
            policies = KubernetesPolicySource()
            namespaces = KubernetesNamespaceLabels()
            key_secrets = KubernetesKeySecrets(args.namespace)
            if args.read_pull_secrets:
                pull_secrets = KubernetesPullSecrets()
        roots = TrustedRoots.from_files(default=args.trusted_root) if args.trusted_root else None
    except (MalformedInputError, OSError) as exc:
        log.error("%s", exc)
        print(f"samplerguard webhook: {exc}")
        return 2

    def build() -> Admission:
        """Runs in each worker: everything with threads or connections is made here."""
        from samplerguard.telemetry.provider import setup_service_metrics

        setup_service_metrics("samplerguard-webhook")
        client = RegistryClient(
            timeout=args.registry_timeout,
            plain_http=args.plain_http_registry,
            verify=args.registry_ca or True,
        )
        source = FilePolicySource(config.policies) if config.policies is not None else policies
        return Admission(
            config,
            source,
            ImageVerifier(client, trusted_roots=roots, key_source=key_secrets),
            client,
            namespaces=namespaces,
            pull_secrets=pull_secrets,
        )

    print(f"samplerguard webhook: serving https://{args.listen}", flush=True)
    try:
        return serve(config, build, workers=max(1, args.workers))
    except OSError as exc:  # the address is taken or not ours
        print(f"samplerguard webhook: cannot listen on {args.listen}: {exc}")
        return 2
