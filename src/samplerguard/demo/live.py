"""The demo on real processes: a sidecar and a verifier on loopback, providers through the hook.

``samplerguard demo`` (without ``--in-process``) runs this. It writes a policy pinning the bundled
model's digest, starts ``samplerguard sidecar`` and ``samplerguard verifier`` as subprocesses
(:mod:`samplerguard.demo.services`), and lets every provider of :mod:`.providers` generate
through the real hook streaming to the sidecar's Unix socket (:class:`SidecarSink`). After each
request the verifier is asked for a round (``POST /v1/rounds``): it pulls the new commitment
over authenticated TCP, draws k steps from its CSPRNG, fetches the openings and re-runs them
with its own copy of the model, and writes PolicyReport results to the audit log, which this
module reads back. The driver acts as the consumer's gateway: it signs a request ticket for
every request it forwards, and the policy requires them, so a last provider that shops for seeds
under request ids of its own is refused by the sidecar. Teardown stops both services;
``--keep`` leaves them running and prints how to reach them.
"""

from __future__ import annotations

import base64
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from samplerguard.commitment.request import request_digest
from samplerguard.commitment.ticket import issue_ticket
from samplerguard.demo.providers import CHEATS, Declared, Provider, request_params
from samplerguard.demo.run import (
    Check,
    DemoConfig,
    ProviderResult,
    _save_grid,
    max_requests_for,
    reason_text,
    render_markdown,
)
from samplerguard.demo.services import (
    ServiceProcess,
    make_token,
    run_round,
    start_sidecar,
    start_verifier,
)
from samplerguard.errors import SamplerGuardError
from samplerguard.hook.recorder import Recorder, RecordingError
from samplerguard.hook.sidecar_sink import SidecarSink
from samplerguard.policy.report import ReportResult, read_audit_log
from samplerguard.sidecar.keys import public_pem

__all__ = ["DEMO_POD", "run_live_demo"]

#: (namespace, name) the demo's sidecar reports as its pod.
DEMO_POD = ("samplerguard-demo", "digits-providers")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class _Gateway:
    """The consumer's gateway in front of the provider: it takes each request, signs a ticket
    for it (request id, tenant, the request parameters' digest) and forwards both."""

    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self._issued: dict[str, dict[str, Any]] = {}

    @property
    def public_pem(self) -> str:
        return public_pem(self.key)

    def forward(self, params: dict[str, Any]) -> None:
        rid = str(params["requestId"])
        self._issued[rid] = issue_ticket(
            self.key,
            request_id=rid,
            tenant=str(params["tenant"]),
            request_digest=request_digest(params),
        )

    def ticket(self, request_id: str) -> dict[str, Any] | None:
        return self._issued.get(request_id)


def write_demo_policy(
    path: Path, cfg: DemoConfig, model_digest: str, gateway_pem: str | None = None
) -> Path:
    rng: dict[str, Any] = {"mode": "ctr-drbg", "escrow": True}
    if gateway_pem is not None:
        rng["tickets"] = {"signers": [{"name": "demo-gateway", "publicKey": gateway_pem}]}
    body = {
        "apiVersion": "samplerguard.dev/v1alpha1",
        "kind": "ClusterSamplerPolicy",
        "metadata": {"name": "demo-live"},
        "spec": {
            "mode": "enforce",
            "recipe": {
                "samplers": [cfg.sampler],
                "steps": {"min": cfg.steps, "max": cfg.steps},
                "cfg": {"min": 1.0, "max": max(cfg.cfg, 1.0)},
            },
            "goldenDigests": {"modelWeights": [model_digest]},
            "rng": rng,
            "verification": {
                "fraction": 1.0,
                "stepsPerChallenge": cfg.k,
                "tau": cfg.tau,
                "retention": "1h",
            },
        },
    }
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _verdicts(audit: Path, seen: int) -> tuple[list[ReportResult], int]:
    if not audit.exists():
        return [], seen
    results = list(read_audit_log(audit))
    return results[seen:], len(results)


def run_live_demo(
    cfg: DemoConfig, *, keep: bool = False, progress: Callable[[str], None] = _log
) -> dict[str, Any]:
    from samplerguard.commitment.digest import safetensors_digest
    from samplerguard.models.digits import CLASSIFIER_FILE, MODEL_FILE, load_classifier, load_unet

    torch.set_num_threads(cfg.threads or 1)
    if not MODEL_FILE.exists():
        raise SamplerGuardError(f"bundled weights are missing at {MODEL_FILE}")
    out = cfg.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    services = out / "services"
    digest = safetensors_digest(MODEL_FILE)
    gateway = _Gateway()
    policy = write_demo_policy(out / "policy.yaml", cfg, digest, gateway.public_pem)
    token = make_token(services / "verifier.token")
    audit = out / "audit.jsonl"
    audit.unlink(missing_ok=True)
    for stale in (services / "verifier-state" / "journal.jsonl",):
        stale.unlink(missing_ok=True)
    sidecar: ServiceProcess | None = None
    verifier: ServiceProcess | None = None
    started = time.monotonic()
    try:
        import shutil

        shutil.rmtree(services / "sidecar" / "openings", ignore_errors=True)
        # Both services start at once (each takes seconds to import torch): the sidecar's port
        # is chosen here so the verifier can be told it before the sidecar is up.
        port = _free_port()
        # The sidecar holds the DRBG master secret and issues every request's seed, escrowed
        # to the verifier's X25519 key: the providers (the apps) never hold the secret.
        escrow_key = X25519PrivateKey.generate()
        escrow_pem = _secret_file(
            services / "verifier-escrow.pem",
            escrow_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        escrow_pub = _secret_file(
            services / "verifier-escrow.pub.pem",
            escrow_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )
        master = _secret_file(
            services / "sidecar-master-secret",
            ("base64:" + base64.b64encode(os.urandom(32)).decode()).encode(),
        )
        sidecar = start_sidecar(
            services / "sidecar",
            token_file=token,
            policy=policy,
            model_files=[MODEL_FILE],
            extra_args=[
                "--listen-tcp",
                f"127.0.0.1:{port}",
                "--master-secret-file",
                str(master),
                "--escrow-public-key",
                str(escrow_pub),
            ],
            # the identity the Downward API gives an injected sidecar: the verifier's results
            # (and the report) name this workload
            env={
                "SAMPLERGUARD_POD_NAME": DEMO_POD[1],
                "SAMPLERGUARD_POD_NAMESPACE": DEMO_POD[0],
                "SAMPLERGUARD_POD_UID": str(uuid.uuid4()),
            },
            wait=False,
        )
        verifier = start_verifier(
            services / "verifier-state",
            sidecars=[f"http://127.0.0.1:{port}"],
            token_file=token,
            policy=policy,
            audit_log=audit,
            extra_args=["--escrow-key", str(escrow_pem)],
            wait=False,
        )
        # load the providers' model while both services import torch
        unet = load_unet()
        classifier = load_classifier() if CLASSIFIER_FILE.exists() else None
        sidecar.wait_ready(120)
        verifier.wait_ready(120)
        progress(
            f"samplerguard demo (live): sidecar pid {sidecar.pid} on {sidecar.url} "
            f"(socket {sidecar.ready['socket']}), verifier pid {verifier.pid} on {verifier.url}, "
            f"up in {time.monotonic() - started:.1f}s"
        )
        summary = _run_providers(
            cfg,
            out,
            Path(sidecar.ready["socket"]),
            verifier,
            audit,
            digest,
            progress,
            unet,
            classifier,
            gateway,
        )
        if cfg.export is not None:
            _export(cfg, sidecar.url, token, summary)
        summary["services"] = {
            "sidecar": {
                "pid": sidecar.pid,
                "url": sidecar.url,
                "socket": sidecar.ready["socket"],
                "log": str(sidecar.log_path),
            },
            "verifier": {"pid": verifier.pid, "url": verifier.url, "log": str(verifier.log_path)},
            "token_file": str(token),
            "audit_log": str(audit),
            "kept": keep,
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        (out / "summary.md").write_text(render_markdown(summary))
        return summary
    finally:
        if not keep:
            for svc in (verifier, sidecar):
                if svc is not None:
                    svc.stop()


def _challenged_steps(journal: Path, request_id: str) -> list[int]:
    """The steps the verifier drew for a request, from its journal (the draw is journaled
    before any opening is fetched)."""
    steps: list[int] = []
    try:
        lines = journal.read_text().splitlines()
    except OSError:
        return steps
    for line in lines:
        if f'/{request_id}"' not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if str(entry.get("challenge", "")).endswith(f"/{request_id}"):
            steps = [int(s) for s in entry.get("steps") or []]
    return steps


def _export(cfg: DemoConfig, sidecar_url: str, token: Path, summary: dict[str, Any]) -> None:
    """An audit bundle per provider (its last request), plus the reference checkpoint, so
    ``verify-trajectory --bundle`` works after the services are gone."""
    import shutil

    from samplerguard.models.digits import MODEL_FILE
    from samplerguard.verifier.bundle import export_bundle
    from samplerguard.verifier.client import SidecarClient

    assert cfg.export is not None
    cfg.export.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(MODEL_FILE, cfg.export / "reference-model.safetensors")
    secret = token.read_text().strip()
    client = SidecarClient(sidecar_url, lambda: secret, timeout=30.0)
    try:
        for p in summary["providers"]:
            if p["request_id"]:
                export_bundle(client, p["request_id"], cfg.export / p["provider"])
                p["bundle"] = str(cfg.export / p["provider"])
    finally:
        client.close()


def _secret_file(path: Path, data: bytes) -> Path:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


class _SidecarNoise:
    """Per-request noise from the seeds the sidecar issues (the provider's noise source),
    asked for with the gateway's ticket of the request."""

    def __init__(self, sink: SidecarSink, gateway: _Gateway) -> None:
        self.sink = sink
        self.gateway = gateway

    def request(self, tenant: str, request_id: str) -> Any:
        ticket = self.gateway.ticket(request_id)
        return self.sink.request_noise(tenant, request_id, "ctr-drbg", ticket=ticket)


def _seed_shopping(
    socket: Path, gateway: _Gateway, declared: Declared, spent: str, progress: Callable[[str], None]
) -> ProviderResult:
    """The provider that wants to choose its noise: it asks the sidecar for seeds under request
    ids it made up (to keep the draw it likes), and once more under a ticket already spent.
    Without the gateway's ticket for a fresh request there is no seed."""
    res = ProviderResult(provider="seed-shopping", verdict="rejected", requests=0, root="")
    sink = SidecarSink(socket, io_timeout=60.0)
    attempts: list[tuple[str, dict[str, Any] | None]] = [
        (f"shop-{n}-{time.time_ns() % 10**9}", None) for n in range(3)
    ]
    attempts.append((spent, gateway.ticket(spent)))
    try:
        for rid, ticket in attempts:
            res.requests += 1
            try:
                sink.request_noise(declared.tenant, rid, "ctr-drbg", ticket=ticket).close()
            except SamplerGuardError as exc:
                res.checks.append(Check(None, None, None, "reject", str(exc)))
                continue
            res.verdict = "not caught"
            res.checks.append(Check(None, None, None, "pass", f"seed issued for {rid}"))
    finally:
        sink.close()
    progress(
        f"  {'seed-shopping':<18} {res.requests} seed requests without a fresh gateway ticket: "
        + ("all REFUSED by the sidecar" if res.verdict == "rejected" else "NOT all refused")
    )
    return res


def _run_providers(
    cfg: DemoConfig,
    out: Path,
    socket: Path,
    verifier: ServiceProcess,
    audit: Path,
    digest: str,
    progress: Callable[[str], None],
    unet: Any,
    classifier: Any,
    gateway: _Gateway,
) -> dict[str, Any]:
    declared = Declared(sampler=cfg.sampler, steps=cfg.steps, cfg=cfg.cfg)
    journal = out / "services" / "verifier-state" / "journal.jsonl"
    progress(
        f"  bundled digits model {digest[:19]}…, declared {cfg.sampler} × {cfg.steps} steps, "
        f"CFG {cfg.cfg}, k={cfg.k}, τ={cfg.tau:.0e}"
    )
    gen = torch.Generator().manual_seed(2024)  # class labels only; noise comes from the DRBG
    seen = 0
    results: list[ProviderResult] = []
    for name in ("honest", *CHEATS):
        sink = SidecarSink(socket, io_timeout=60.0)
        recorder = Recorder(sink)
        provider = Provider(
            name, unet, declared, recorder, _SidecarNoise(sink, gateway), tickets=gateway.ticket
        )
        limit = cfg.honest_requests if name == "honest" else max_requests_for(cfg)
        res = ProviderResult(provider=name, verdict="accepted", requests=0, root="")
        gen_times: list[float] = []
        check_times: list[float] = []
        try:
            for r in range(1, limit + 1):
                labels = torch.randint(0, 10, (cfg.batch,), generator=gen)
                rid = f"{name}-{r}-{time.time_ns() % 10**9}"
                gateway.forward(request_params(declared, rid, labels))
                start = time.perf_counter()
                try:
                    g = provider.generate(rid, labels)
                except RecordingError as exc:
                    res.checks = [Check(None, None, None, "reject", f"sidecar refused: {exc}")]
                    res.requests, res.verdict = r, "rejected"
                    progress(f"  {name:<18} request {r}: REFUSED by the sidecar ({exc})")
                    break
                gen_times.append(time.perf_counter() - start)
                start = time.perf_counter()
                run_round(verifier)
                check_times.append(time.perf_counter() - start)
                new, seen = _verdicts(audit, seen)
                mine = [x for x in new if x.properties.get("trajectoryId") == rid]
                rechecks = [x for x in mine if x.rule == "trajectory-recheck"]
                res.requests, res.root = r, g.commitment.root.hex()
                res.faked_steps = g.faked_steps
                res.request_id = rid
                res.challenged = _challenged_steps(journal, rid)
                res.checks = [
                    Check(
                        None if x.metric("step") is None else int(x.metric("step") or 0),
                        x.metric("relL2"),
                        x.metric("relL2"),
                        "pass" if x.result == "pass" else "reject",
                        "" if x.result == "pass" else reason_text(x.message),
                    )
                    for x in rechecks
                ]
                if classifier is not None:
                    res.accuracy = classifier.accuracy(g.images, labels)
                caught = any(c.verdict == "reject" for c in res.checks) or not rechecks
                if r == 1 or caught:
                    _save_grid(g.images, out / f"{name}.png", g.commitment, labels)
                    res.image = f"{name}.png"
                progress(
                    f"  {name:<18} request {r}: root {res.root[:16]}… → "
                    + ("REJECTED by the verifier" if caught else "pass")
                )
                if caught:
                    res.verdict = "rejected"
                    break
            else:
                res.verdict = "accepted" if name == "honest" else "not caught"
        finally:
            recorder.close()
        res.generation_s = statistics.mean(gen_times) if gen_times else 0.0
        res.recheck_s = statistics.mean(check_times) if check_times else 0.0
        results.append(res)
    results.append(_seed_shopping(socket, gateway, declared, results[0].request_id, progress))
    honest = results[0]
    rho = honest.recheck_s / honest.generation_s if honest.generation_s else float("nan")
    return {
        "mode": "live",
        "model_digest": digest,
        "declared": asdict(declared),
        "k": cfg.k,
        "tau": cfg.tau,
        "verification_ratio": {
            "one_step_recheck_s": honest.recheck_s / max(cfg.k, 1),
            "generation_s": honest.generation_s,
            "rho": rho / max(cfg.k, 1),
            "rho_times_N": rho / max(cfg.k, 1) * cfg.steps,
        },
        "providers": [asdict(r) for r in results],
        "all_cheaters_caught": all(r.verdict == "rejected" for r in results[1:]),
        "honest_accepted": honest.verdict == "accepted",
    }
