"""``samplerguard sidecar``: the injected service (see docs/sidecar.md).

Every flag falls back to its ``SAMPLERGUARD_*`` variable (the webhook's injection contract), so
in a pod the container runs ``samplerguard sidecar`` with no arguments. ``--probe SOCKET`` is the
readiness probe: it asks a running sidecar over its socket and exits 0 when it is ready.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from samplerguard.cli._options import duration, seconds

__all__ = ["register", "run"]


def _env(name: str) -> str | None:
    from samplerguard.sidecar.config import ENV

    return os.environ.get(ENV[name]) or None


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from samplerguard.durations import format_duration
    from samplerguard.sidecar.config import SidecarConfig

    p = sub.add_parser(
        "sidecar",
        help="run the sidecar: trajectory ingestion, commitments, openings",
        description="Ingest trajectories from the hook over a Unix socket, sign commitments, "
        "store openings and serve them to the authenticated verifier over TCP. Durations read "
        "as in policies (30s, 5m, 24h; a bare number is seconds).",
    )
    p.add_argument("--probe", metavar="SOCKET", help="readiness probe against a running sidecar")
    p.add_argument("--socket", help="Unix socket for the hook [SAMPLERGUARD_SOCKET]")
    p.add_argument("--openings-dir", help="openings store [SAMPLERGUARD_OPENINGS_DIR]")
    p.add_argument("--listen-tcp", help="HOST:PORT for the verifier API [SAMPLERGUARD_LISTEN_TCP]")
    p.add_argument("--key-file", help="Ed25519 key, created at first start [SAMPLERGUARD_KEY_FILE]")
    p.add_argument(
        "--policy", help="policy file or ClusterSamplerPolicy/NAME [SAMPLERGUARD_POLICY]"
    )
    p.add_argument("--tenant", help="the only tenant this pod serves [SAMPLERGUARD_TENANT]")
    p.add_argument("--auth", choices=["token-file", "tokenreview"], help="[SAMPLERGUARD_AUTH]")
    p.add_argument(
        "--token-file", help="verifier bearer token (local mode) [SAMPLERGUARD_TOKEN_FILE]"
    )
    p.add_argument(
        "--allowed-subject",
        action="append",
        help="ServiceAccount username allowed by TokenReview (repeatable) "
        "[SAMPLERGUARD_VERIFIER_SUBJECTS, comma-separated]",
    )
    p.add_argument("--audience", help="TokenReview audience [SAMPLERGUARD_TOKEN_AUDIENCE]")
    p.add_argument(
        "--model-file",
        action="append",
        help="weights file hashed for runtime integrity (repeatable) "
        "[SAMPLERGUARD_MODEL_FILES, colon-separated]",
    )
    p.add_argument(
        "--scheduler-config", help="scheduler_config.json [SAMPLERGUARD_SCHEDULER_CONFIG]"
    )
    defaults = SidecarConfig()
    p.add_argument(
        "--integrity-interval",
        type=duration,
        help="time between re-measurements of the model files "
        f"(default: {format_duration(defaults.integrity_interval)})",
    )
    p.add_argument(
        "--policy-refresh",
        type=duration,
        help="time between re-reads of the policy; 0: read once "
        f"(default: {format_duration(defaults.policy_refresh)})",
    )
    p.add_argument(
        "--retention",
        type=duration,
        help="how long openings are kept without a policy (a policy's retention wins) "
        f"(default: {format_duration(defaults.retention)})",
    )
    p.add_argument(
        "--seed-ttl",
        type=duration,
        help="how long an issued DRBG seed waits for its request's START before it is recorded "
        f"as abandoned (default: {format_duration(defaults.seed_ttl)})",
    )
    p.add_argument(
        "--secret-refresh",
        type=duration,
        help="at most this often the DRBG master secret and escrow key files are looked at "
        "for a new version; 0: at every request "
        f"(default: {format_duration(defaults.secret_refresh)})",
    )
    p.add_argument("--max-store-bytes", type=int, help="openings store cap")
    p.add_argument("--min-free-bytes", type=int, help="free-space floor on the volume")
    p.add_argument("--max-connections", type=int, default=64)
    p.add_argument("--fsync", action="store_true", help="fsync every commit before answering")
    p.add_argument(
        "--store-direct-io",
        choices=["auto", "on", "off"],
        help="write openings with O_DIRECT, bypassing the page cache: auto (default: where "
        "the volume supports it), on (required) or off [SAMPLERGUARD_STORE_DIRECT_IO]",
    )
    p.add_argument(
        "--master-secret-file",
        help="the per-request DRBGs' master secret: the sidecar then issues every DRBG "
        "request's seed [SAMPLERGUARD_MASTER_SECRET_FILE]",
    )
    p.add_argument(
        "--rng-mode",
        choices=["ctr-drbg", "hmac-drbg"],
        help="the mode of the seeds it issues (default ctr-drbg) [SAMPLERGUARD_RNG_MODE]",
    )
    p.add_argument(
        "--escrow-public-key",
        help="the verifier's X25519 public key (PEM); issued seeds are escrowed to it "
        "[SAMPLERGUARD_ESCROW_PUBLIC_KEY]",
    )
    p.add_argument("--ready-file", help="write addresses and key id here once serving")
    p.set_defaults(_run=run)


def _config(args: argparse.Namespace) -> object:
    from samplerguard.sidecar.config import ENV, SidecarConfig, parse_hostport

    kw: dict[str, object] = {}

    def pick(flag: object, env: str) -> str | None:
        return str(flag) if flag is not None else _env(env)

    if v := pick(args.socket, "socket"):
        kw["socket"] = Path(v)
    if v := pick(args.openings_dir, "openings_dir"):
        kw["openings_dir"] = Path(v)
    if v := pick(args.listen_tcp, "listen_tcp"):
        kw["listen_tcp"] = parse_hostport(v)
    if v := pick(args.key_file, "key_file"):
        kw["key_file"] = Path(v)
    if v := pick(args.token_file, "token_file"):
        kw["token_file"] = Path(v)
    if v := pick(args.scheduler_config, "scheduler_config"):
        kw["scheduler_config"] = Path(v)
    if v := pick(args.master_secret_file, "master_secret_file"):
        kw["master_secret_file"] = Path(v)
    if v := pick(args.escrow_public_key, "escrow_public_key"):
        kw["escrow_public_key"] = Path(v)
    if v := pick(args.rng_mode, "rng_mode"):
        kw["rng_mode"] = v
    for name in ("policy", "tenant", "audience", "auth", "pod_name", "pod_namespace", "pod_uid"):
        value = getattr(args, name, None)
        if v := pick(value, name):
            kw[name] = v
    subjects = args.allowed_subject or (
        (_env("allowed_subjects") or "").split(",") if _env("allowed_subjects") else None
    )
    if subjects:
        kw["allowed_subjects"] = tuple(s.strip() for s in subjects if s.strip())
    models = args.model_file or (
        (_env("model_files") or "").split(":") if _env("model_files") else None
    )
    if models:
        kw["model_files"] = tuple(Path(m) for m in models if m)
    for name, conv in (
        ("integrity_interval", seconds),
        ("policy_refresh", seconds),
        ("secret_refresh", seconds),
        ("seed_ttl", seconds),
        ("retention", seconds),
        ("max_store_bytes", int),
        ("min_free_bytes", int),
    ):
        value = getattr(args, name)
        if value is not None:
            kw[name] = value
        elif (raw := _env(name)) is not None:
            try:
                kw[name] = conv(raw)
            except ValueError as exc:
                raise ValueError(f"{ENV[name]}={raw[:40]!r}: {exc}") from None
    kw["max_connections"] = args.max_connections
    kw["fsync"] = args.fsync
    direct = args.store_direct_io or _env("store_direct_io")
    if direct is not None:
        if direct not in ("auto", "on", "off"):
            raise ValueError(
                f"SAMPLERGUARD_STORE_DIRECT_IO must be auto, on or off, not {direct!r}"
            )
        kw["store_direct_io"] = direct
    if args.ready_file:
        kw["ready_file"] = Path(args.ready_file)
    return SidecarConfig(**kw)  # type: ignore[arg-type]


def run(args: argparse.Namespace) -> int:
    import logging

    from samplerguard.errors import SamplerGuardError

    log = logging.getLogger("samplerguard.sidecar")
    if args.probe:
        from samplerguard.hook.sidecar_sink import probe

        try:
            probe(args.probe)
        except SamplerGuardError as exc:
            print(f"not ready: {exc}")
            return 1
        print("ready")
        return 0
    try:
        from samplerguard.sidecar.serve import serve

        return serve(_config(args))  # type: ignore[arg-type]
    except (SamplerGuardError, ValueError) as exc:
        log.error("sidecar cannot start: %s", exc)
        return 2
