"""The sidecar service: wires key, policy, store, integrity, ingestion, auth and telemetry."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from samplerguard.commitment.dsse import keyid
from samplerguard.commitment.statement import Commitment
from samplerguard.commitment.ticket import Ticket, TicketSigners, verify_ticket
from samplerguard.errors import MalformedInputError, PolicyError, TemporaryError, VerificationError
from samplerguard.policy.load import load_policy, report_policy_name
from samplerguard.policy.schedule import schedule_id
from samplerguard.policy.spec import GoldenDigests, SamplerPolicySpec
from samplerguard.rng.escrow import escrow_digest
from samplerguard.sidecar.abandoned import SeedLedger
from samplerguard.sidecar.auth import Authenticator, TokenFileAuth, TokenReviewAuth
from samplerguard.sidecar.config import SidecarConfig
from samplerguard.sidecar.enforce import Admission, RequestRefusedError, admit
from samplerguard.sidecar.ingest import Decision, Gate, IngestServer, StartRequest
from samplerguard.sidecar.integrity import IntegrityMonitor
from samplerguard.sidecar.keys import load_or_create_key, public_pem
from samplerguard.sidecar.seeds import SecretUnavailableError, SeedIssuer, seed_issuer_from_files
from samplerguard.sidecar.store import OpeningStore
from samplerguard.telemetry.service import ServiceMetrics, log_denial

__all__ = ["Sidecar"]

log = logging.getLogger(__name__)


def _seed_issuer(cfg: SidecarConfig, on_change: Callable[[str], None]) -> SeedIssuer | None:
    """The sidecar-held DRBG, when a master secret is configured: it follows the mounted
    Secret's files (a re-made or rotated master secret is taken up without a restart)."""
    if cfg.master_secret_file is None:
        return None
    return seed_issuer_from_files(
        cfg.rng_mode,
        cfg.master_secret_file,
        cfg.escrow_public_key,
        check_interval=cfg.secret_refresh,
        on_change=on_change,
        ttl=cfg.seed_ttl,
        ledger=SeedLedger(cfg.seed_ledger_file),
        tenant=cfg.tenant,
    )


def _telemetry(service: str) -> Any:
    """The service's metrics: ``GET /metrics`` always, OTLP when an endpoint is configured."""
    try:
        from samplerguard.telemetry.provider import setup_service_metrics

        return setup_service_metrics(service)
    except Exception as exc:  # telemetry must never stop the data plane
        log.warning("telemetry disabled: %s", exc)
        return None


class Sidecar:
    def __init__(self, cfg: SidecarConfig, *, k8s_api: Any = None) -> None:
        self.cfg = cfg
        self.key, created = load_or_create_key(cfg.effective_key_file)
        self.public_pem = public_pem(self.key)
        self.keyid = keyid(self.key.public_key())
        if created:
            log.info("generated the sidecar signing key %s…", self.keyid[:16])
        self._k8s_api = k8s_api
        self.policy = load_policy(cfg.policy, api=k8s_api) if cfg.policy else None
        self.spec: SamplerPolicySpec | None = self.policy.spec if self.policy else None
        self.policy_name = report_policy_name(self.policy) if self.policy else None
        #: Why the policy cannot be used right now (deleted, invalid); new requests are refused.
        self.policy_problem: str | None = None
        retention = self.spec.verification.retention_seconds if self.spec else cfg.retention
        self.store = OpeningStore(
            cfg.openings_dir,
            retention=retention,
            max_bytes=cfg.max_store_bytes,
            min_free_bytes=cfg.min_free_bytes,
            direct_io={"auto": None, "on": True, "off": False}[cfg.store_direct_io],
        )
        self.metrics = _telemetry("samplerguard-sidecar")
        self.telemetry = self.metrics.telemetry if self.metrics is not None else None
        self.service_metrics = ServiceMetrics(
            self.metrics.provider if self.metrics is not None else None
        )
        #: request id → when its START was admitted (the ingestion latency's start)
        self._started: dict[str, float] = {}
        self.alerts: list[str] = []
        #: the DRBG secret's changes seen (newest last, bounded): when and what
        self.drbg_events: list[str] = []
        self.integrity = IntegrityMonitor(
            self.spec.golden_digests if self.spec else GoldenDigests(),
            model_files=cfg.model_files,
            scheduler_config=cfg.scheduler_config,
            interval=cfg.integrity_interval,
            on_alert=self._alert,
        )
        self.auth = self._authenticator()
        self.gate = Gate(
            key=self.key,
            public_pem=self.public_pem,
            admit=self._admit,
            committed=self._committed,
            refused=self._refused,
            seeds=_seed_issuer(cfg, self._drbg_secret_changed),
            ticket=self.check_ticket,
        )
        self.ingest = IngestServer(
            cfg.socket,
            self.store,
            self.gate,
            max_connections=cfg.max_connections,
            max_trajectory_bytes=cfg.max_trajectory_bytes,
            fsync=cfg.fsync,
            mode=cfg.socket_mode,
        )
        self.refused = 0
        self._stop = threading.Event()
        self._housekeeper = threading.Thread(
            target=self._housekeep, name="sg-retention", daemon=True
        )
        self._policy_watcher = threading.Thread(
            target=self._watch_policy, name="sg-policy", daemon=True
        )

    def _authenticator(self) -> Authenticator:
        mode = self.cfg.auth
        if mode is None:
            in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
            mode = "tokenreview" if self.cfg.token_file is None and in_cluster else "token-file"
        if mode == "tokenreview":
            return TokenReviewAuth(self.cfg.allowed_subjects, audience=self.cfg.audience)
        if self.cfg.token_file is None:
            raise MalformedInputError(
                "local mode needs --token-file (the verifier's bearer token); in a cluster use "
                "--auth tokenreview"
            )
        return TokenFileAuth(self.cfg.token_file)

    @property
    def pod(self) -> dict[str, str]:
        pod = self.cfg.pod
        if not self.cfg.pod_uid:
            # several local sidecars on one host: tell them apart by their socket
            pod["uid"] = "local-" + hashlib.sha256(str(self.cfg.socket).encode()).hexdigest()[:16]
        return pod

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self.integrity.start()
        self.gate.ready = self.integrity.current.ok
        self.ingest.start()
        self._housekeeper.start()
        if self.cfg.policy and self.cfg.policy_refresh > 0:
            self._policy_watcher.start()
        log.info(
            "sidecar up: socket %s, key %s…, policy %s, %d trajectories kept",
            self.cfg.socket,
            self.keyid[:16],
            self.policy_name or "(none)",
            len(self.store.committed(limit=1 << 30)),
        )

    def stop(self) -> None:
        self._stop.set()
        self.integrity.stop()
        self.ingest.close()
        self.store.close()
        if self.metrics is not None:
            self.metrics.shutdown()

    def _housekeep(self) -> None:
        while not self._stop.wait(min(60.0, max(1.0, self.store.retention / 10))):
            expired = self.store.expire()
            if expired:
                log.info("retention: %d trajectories expired", expired)
            self.gate.ready = self.integrity.current.ok
            self.check_drbg_secret()

    def check_drbg_secret(self) -> None:
        """Look at the mounted DRBG secret now and then even without requests, so that a lost
        or changed one shows in the logs, metrics and ``/v1/integrity`` while the app idles."""
        if self.gate.seeds is not None:
            with contextlib.suppress(SecretUnavailableError):
                self.gate.seeds.current()

    def _drbg_secret_changed(self, change: str) -> None:
        self.service_metrics.drbg_secret_changes.add(1, {"change": change})
        self.drbg_events = [
            *self.drbg_events[-19:],
            f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {change}",
        ]

    @property
    def drbg_state(self) -> dict[str, Any] | None:
        """The DRBG facts ``/v1/integrity`` shows (no secret, no seed)."""
        seeds = self.gate.seeds
        if seeds is None:
            return None
        return {
            "mode": seeds.mode,
            "escrowed": seeds.escrow_key is not None,
            "secretProblem": seeds.secret_problem,
            "secretChanges": seeds.secret_changes,
            "events": list(self.drbg_events),
        }

    def refresh_policy(self) -> bool:
        """Read the policy again; returns whether it changed. An API server that does not
        answer keeps the current policy; a policy that is gone or invalid refuses new requests
        (fail closed) until a valid one is back."""
        if not self.cfg.policy:
            return False
        try:
            policy = load_policy(self.cfg.policy, api=self._k8s_api)
        except TemporaryError as exc:
            log.warning("policy %s not re-read (kept the current one): %s", self.cfg.policy, exc)
            return False
        except PolicyError as exc:
            if self.policy_problem != str(exc):
                log.error(
                    "policy %s is unusable, new requests are refused: %s", self.cfg.policy, exc
                )
            self.policy_problem = str(exc)
            return False
        recovered = self.policy_problem is not None
        self.policy_problem = None
        if self.policy is not None and policy.spec == self.policy.spec and not recovered:
            return False
        self.policy, self.spec = policy, policy.spec
        self.policy_name = report_policy_name(policy)
        self.store.retention = policy.spec.verification.retention_seconds
        self.integrity.set_golden(policy.spec.golden_digests)
        log.info("policy %s re-read: the new version applies to new requests", self.policy_name)
        return True

    def _watch_policy(self) -> None:
        while not self._stop.wait(self.cfg.policy_refresh):
            try:
                self.refresh_policy()
            except Exception:  # the watcher must outlive one bad read
                log.exception("policy re-read failed")

    # -- admission (called on ingestion threads) -----------------------------------------------

    def _alert(self, message: str) -> None:
        self.gate.ready = False
        self.alerts = [
            *self.alerts[-49:],
            f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {message}",
        ]
        if self.telemetry is not None:
            for artifact in ("model_weights", "scheduler_config"):
                if artifact.replace("_", " ") in message:
                    self.telemetry.record_integrity_check(artifact, ok=False)

    def _admit(self, start: StartRequest) -> Decision:
        m = self.integrity.current
        if not m.ok:
            raise RequestRefusedError(
                "runtime integrity mismatch, new requests are refused: " + "; ".join(m.problems),
                checks=("integrity",),
            )
        if self.policy_problem is not None:
            raise RequestRefusedError(
                f"the policy {self.cfg.policy} is unusable, new requests are refused: "
                f"{self.policy_problem}",
                checks=("policy",),
            )
        if self.cfg.tenant and start.tenant != self.cfg.tenant:
            raise RequestRefusedError(
                f"request tenant {start.tenant!r} is not this pod's tenant {self.cfg.tenant!r}"
            )
        try:
            admission = admit(self.spec, start.recipe, start.rng_mode)
        except RequestRefusedError as exc:
            self._record_violations(list(exc.checks), "rejected")
            raise
        reasons, checks = list(admission.reasons), list(admission.checks)
        beacon, facts, problems = self.integrity.check_request(
            start.recipe,
            start.solver_code,
            peer_pid=start.peer_pid,
            solver_files=start.solver_files,
        )
        checks += ["integrity"] * len(problems)
        if self.spec is not None and self.spec.rng.escrow and start.seed_escrow is None:
            problems.append("the policy requires a seed escrow; the request carries none")
            checks.append("seed")
        ticket, unticketed = self._ticket(
            start.ticket, start.tenant, start.request_id, start.recipe.get("request")
        )
        if unticketed is not None:
            problems.append(unticketed)
            checks.append("ticket")
        if problems:
            if self.spec is not None and self.spec.mode == "enforce":
                self._record_violations(checks, "rejected")
                raise RequestRefusedError("; ".join(problems), checks=tuple(checks))
            reasons += problems
        if reasons:
            admission = Admission("quarantine", tuple(reasons), tuple(checks))
            action = "warned" if self.spec and self.spec.mode == "warn" else "audited"
            self._record_violations(checks, action)
        predicate: dict[str, Any] = {
            "hashBeacon": beacon,
            "integrity": facts,
            "sidecar": {"keyid": self.keyid, "pod": self.pod},
        }
        if self.policy_name:
            predicate["policy"] = self.policy_name
        if start.seed_escrow is not None:
            predicate["seedEscrowDigest"] = escrow_digest(start.seed_escrow)
        if ticket is not None:
            predicate["requestTicket"] = {"digest": ticket.digest, "signer": ticket.signer}
        if self.telemetry is not None:
            self._record_request(start, beacon)
        if len(self._started) < 4096:  # trajectories in flight; more means FINISHes were lost
            self._started[start.request_id] = time.monotonic()
        return Decision(admission, predicate)

    def check_ticket(self, envelope: object, tenant: str, request_id: str) -> bool:
        """Before a seed is issued: whether a valid ticket vouches for the request id. A
        policy that requires tickets in enforce mode refuses a request without a valid one
        (under warn and audit the seed is issued and the START, which checks the ticket again,
        is quarantined)."""
        ticket, problem = self._ticket(envelope, tenant, request_id, None, check_request=False)
        if problem is not None and self.spec is not None and self.spec.mode == "enforce":
            self._record_violations(["ticket"], "rejected")
            raise RequestRefusedError(problem, checks=("ticket",))
        return ticket is not None

    def _ticket(
        self,
        envelope: object,
        tenant: str,
        request_id: str,
        request: object,
        *,
        check_request: bool = True,
    ) -> tuple[Ticket | None, str | None]:
        """The request's verified ticket and None, or None and why it is not acceptable; (None,
        None) when the policy requires no tickets."""
        rule = self.spec.rng.tickets if self.spec is not None else None
        if rule is None:
            return None, None
        if envelope is None:
            return None, (
                "the policy requires a request ticket signed by the consumer's gateway; the "
                "request carries none"
            )
        try:
            ticket = verify_ticket(
                envelope,
                TicketSigners.of(rule),
                tenant=tenant,
                request_id=request_id,
                request_digest=request if isinstance(request, str) else None,
                check_request=check_request,
                now=time.time(),
            )
        except (VerificationError, MalformedInputError) as exc:
            return None, str(exc)
        return ticket, None

    def _record_violations(self, checks: list[str], action: str) -> None:
        if self.telemetry is not None:
            for check in checks:
                self.telemetry.record_policy_violation(check, action=action)

    def _record_request(self, start: StartRequest, beacon: str) -> None:
        from samplerguard.telemetry import RequestObservation

        if self.telemetry is None:
            return
        recipe = start.recipe
        config = recipe.get("scheduler_config")
        try:
            self.telemetry.record_request(
                RequestObservation(
                    sampler=str(recipe.get("sampler")),
                    schedule=schedule_id(
                        str(recipe.get("scheduler_class") or ""),
                        config if isinstance(config, dict) else {},
                    ),
                    steps=int(recipe.get("steps", 0)),
                    guidance_scale=float(recipe.get("guidance_scale", 0.0)),
                    rng_mode=start.rng_mode,
                    rng_escrowed=start.seed_escrow is not None,
                )
            )
            self.telemetry.record_beacon(beacon)
        except (TypeError, ValueError):
            log.debug("telemetry: odd recipe values", exc_info=True)

    def _committed(self, start: StartRequest, commitment: Commitment, decision: Decision) -> None:
        began = self._started.pop(start.request_id, None)
        if began is not None:
            self.service_metrics.ingest.record(time.monotonic() - began, {"outcome": "committed"})
        log.info(
            "committed %s: root %s…, %d steps%s",
            start.request_id,
            commitment.root.hex()[:16],
            commitment.n_steps,
            " (quarantined)" if decision.admission.verdict == "quarantine" else "",
        )

    def _refused(self, start: StartRequest | None, reason: str) -> None:
        self.refused += 1
        began = self._started.pop(start.request_id, None) if start is not None else None
        self.service_metrics.ingest.record(
            time.monotonic() - began if began is not None else 0.0, {"outcome": "refused"}
        )
        log_denial(
            "sidecar",
            f"request {start.request_id}" if start is not None else "a request",
            "admission",
            reason,
            tenant=start.tenant if start is not None else "",
            policy=self.policy_name or "",
        )
