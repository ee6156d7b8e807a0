"""``samplerguard verifier``: audit sidecars by spot-checking their committed trajectories.

Local mode: ``--sidecar URL`` (repeatable) and ``--token-file``. In a cluster:
``--discover kubernetes`` and the projected ServiceAccount token as ``--token-file``.
``--once`` runs one round and exits (1 if any trajectory failed, 2 if its only judgements were
errors); otherwise the verifier serves its status API on ``--listen`` and audits every
``--interval`` (a duration, ``5s``). ``canary`` runs the policy's canary suite instead (see
docs/verifier.md).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from samplerguard.cli._options import duration
from samplerguard.errors import TemporaryError

if TYPE_CHECKING:
    from samplerguard.policy.report_client import ResultsClient

__all__ = ["register", "run"]

DEFAULT_SA_TOKEN = "/var/run/secrets/samplerguard/token"  # noqa: S105 - a path, not a secret


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "verifier",
        help="run the verifier: challenge sidecars and re-check committed steps",
        description="Pull new commitments from sidecars, challenge the policy's fraction with k "
        "secret steps each, re-run them with the reference model, and write PolicyReport "
        "results.",
    )
    p.add_argument("--policy", default=None, help="policy file or ref")
    p.add_argument("--sidecar", action="append", default=[], help="sidecar URL (repeatable)")
    p.add_argument("--discover", choices=["static", "kubernetes"], default="static")
    p.add_argument("--namespace", help="kubernetes discovery: one namespace only")
    p.add_argument(
        "--label-selector",
        default=None,
        help="only pods with these labels (default: every pod the webhook injected, whether it "
        "opted in by its own label or its namespace's)",
    )
    p.add_argument(
        "--sidecar-image",
        default=None,
        help="kubernetes discovery: the image the webhook injects as the sidecar; a pod whose "
        "samplerguard-sidecar runs another is recorded as a failure and never challenged",
    )
    p.add_argument(
        "--exclude-namespace",
        action="append",
        default=[],
        help="kubernetes discovery: a namespace the webhook exempts (repeatable); a pod there "
        "carrying the sidecar is recorded as a failure and never challenged",
    )
    p.add_argument("--token-file", default=DEFAULT_SA_TOKEN)
    p.add_argument(
        "--reference-model",
        action="append",
        default=[],
        metavar="FAMILY=PATH",
        help="reference model per pipeline family: the digits .safetensors, or a diffusers "
        "model or pipeline folder (default: digits=<bundled weights>)",
    )
    p.add_argument(
        "--max-loaded-references",
        type=int,
        default=4,
        help="reference models kept loaded at once (least recently used goes first)",
    )
    p.add_argument("--state-dir", default="/var/lib/samplerguard")
    p.add_argument("--audit-log", default=None)
    p.add_argument("--report-url", default=None)
    p.add_argument("--report-token-file", default=None)
    p.add_argument("--shard", default="0/1", help="INDEX/COUNT")
    p.add_argument("--escrow-key", default=None, help="X25519 key")
    p.add_argument("--interval", type=duration, default="5s", help="time between rounds")
    p.add_argument("--timeout", type=duration, default="10s", help="time per sidecar request")
    p.add_argument("--listen", default="127.0.0.1:9472")
    p.add_argument("--ready-file")
    p.add_argument(
        "--once",
        action="store_true",
        help="one round, then exit: 1 if a trajectory failed, 2 if nothing passed and some "
        "judgement was an error, else 0",
    )
    p.add_argument("--no-loop", action="store_true", help="serve; audit only on POST /v1/rounds")
    p.add_argument("--device", default="cpu", help="torch device of the reference models")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (re-checks)")
    p.add_argument("mode", nargs="?", choices=["audit", "canary"], default="audit")
    p.add_argument("--canary-baseline", help="canary: baseline JSON (written if absent)")
    p.set_defaults(_run=run)


def _reader(path: str) -> object:
    def read() -> str:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise TemporaryError(
                f"token file {path} is unreadable ({exc.strerror or type(exc).__name__})"
            ) from None

    return read


def run(args: argparse.Namespace) -> int:
    import logging

    from samplerguard.errors import SamplerGuardError

    log = logging.getLogger("samplerguard.verifier")
    try:
        return _run(args)
    except (SamplerGuardError, ValueError, OSError) as exc:
        log.error("verifier cannot run: %s", exc)
        return 2


def _run(args: argparse.Namespace) -> int:
    import torch

    from samplerguard.policy.load import load_policy, report_policy_name
    from samplerguard.sidecar.config import parse_hostport
    from samplerguard.verifier.check import Checker
    from samplerguard.verifier.discovery import KubernetesDiscovery, StaticDiscovery
    from samplerguard.verifier.journal import Journal
    from samplerguard.verifier.reference import ReferenceModels
    from samplerguard.verifier.service import Verifier

    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        raise ValueError(f"--device {args.device!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: no CUDA device is available on this host")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {args.device}: no MPS device is available on this host")
    torch.set_num_threads(args.threads)
    if not args.policy:
        raise ValueError("--policy (or SAMPLERGUARD_POLICY) is required")
    policy = load_policy(args.policy)
    refs = _references(args.reference_model)
    references = ReferenceModels(
        refs,
        policy.spec.golden_digests,
        device=args.device,
        max_loaded=max(1, args.max_loaded_references),
    )
    if args.mode == "canary":
        from samplerguard.verifier.canary import run_canary_cli

        return run_canary_cli(policy, references, refs, args)
    escrow_key = None
    if args.escrow_key:
        from samplerguard.rng.escrow import load_x25519_private_key

        escrow_key = load_x25519_private_key(Path(args.escrow_key).read_bytes())
    checker = Checker(policy.spec, report_policy_name(policy), references, escrow_key=escrow_key)
    if args.discover == "kubernetes":
        discovery: StaticDiscovery | KubernetesDiscovery = KubernetesDiscovery(
            label_selector=args.label_selector,
            namespace=args.namespace,
            sidecar_image=args.sidecar_image,
            excluded_namespaces=tuple(args.exclude_namespace),
        )
    else:
        if not args.sidecar:
            raise ValueError("static discovery needs at least one --sidecar URL")
        discovery = StaticDiscovery(args.sidecar)
    index, _, count = args.shard.partition("/")
    if not args.once:
        from samplerguard.telemetry.provider import setup_service_metrics

        setup_service_metrics("samplerguard-verifier")
    verifier = Verifier(
        discovery=discovery,
        checker=checker,
        journal=Journal(Path(args.state_dir) / "journal.jsonl"),
        token=_reader(args.token_file),  # type: ignore[arg-type]
        audit_log=Path(args.audit_log) if args.audit_log else None,
        results_client=_results_client(args),
        shard=int(index),
        shards=int(count or 1),
        timeout=args.timeout,
        interval=args.interval,
    )
    if args.once:
        verifier.redeliver()
        verifier.run_round()
        verifier.stop()
        stats = verifier.stats
        print(
            f"judged {stats.judged}: {stats.passed} pass, {stats.failed} fail, {stats.errors} error"
        )
        if stats.failed:
            return 1
        # a round whose only judgements are errors verified nothing: that is not a pass
        return 2 if stats.errors and not stats.passed else 0
    from samplerguard.verifier.serve import serve

    return serve(
        verifier,
        parse_hostport(args.listen),
        Path(args.ready_file) if args.ready_file else None,
        loop=not args.no_loop,
    )


def _results_client(args: argparse.Namespace) -> ResultsClient | None:
    if not args.report_url:
        return None
    from samplerguard.policy.report_client import ResultsClient

    return ResultsClient(
        args.report_url,
        token_file=args.report_token_file or args.token_file,
        ca_file=os.environ.get("SSL_CERT_FILE"),
        timeout=args.timeout,
    )


def _references(specs: list[str]) -> dict[str, Path]:
    from samplerguard.models.digits import MODEL_FILE

    out = {"digits": MODEL_FILE}
    for spec in specs:
        pipeline, sep, path = spec.partition("=")
        if not sep:
            raise ValueError(f"--reference-model {spec!r} is not PIPELINE=PATH")
        out[pipeline] = Path(path)
    return out
