"""The verifier loop: discover sidecars, pull new commitments, judge them, deliver the results.

Each round: the sidecars of this shard (stable hash of the pod UID); per sidecar, its public
key and the trajectories committed since the last round; each one not yet in the journal is
judged (:mod:`.check`), the verdict goes to the journal (fsync) and then to the audit log and,
when configured, to the operator's ingest endpoint. A sidecar that times out or cannot be
reached is reported once per outage as an ``error`` result and retried next round.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from samplerguard.errors import MalformedInputError, SamplerGuardError, TemporaryError
from samplerguard.policy.report import ReportResult, append_audit_log
from samplerguard.policy.report_client import ResultsClient
from samplerguard.telemetry.provider import current_service_metrics
from samplerguard.telemetry.service import ServiceMetrics
from samplerguard.verifier.check import Checker
from samplerguard.verifier.client import SidecarClient, VerifierAuthError
from samplerguard.verifier.discovery import Discovery, Target, in_shard
from samplerguard.verifier.journal import Journal

__all__ = ["Verifier", "VerifierStats"]

log = logging.getLogger(__name__)


@dataclass
class VerifierStats:
    rounds: int = 0
    judged: int = 0
    challenged: int = 0
    passed: int = 0
    failed: int = 0
    abandoned_seeds: int = 0
    errors: int = 0
    sidecars: dict[str, str] = field(default_factory=dict)  # url → "ok" | error text


class Verifier:
    def __init__(
        self,
        *,
        discovery: Discovery,
        checker: Checker,
        journal: Journal,
        token: Callable[[], str],
        audit_log: Path | None = None,
        results_client: ResultsClient | None = None,
        shard: int = 0,
        shards: int = 1,
        timeout: float = 10.0,
        interval: float = 5.0,
    ) -> None:
        self.discovery = discovery
        self.checker = checker
        self.journal = journal
        self.token = token
        self.audit_log = audit_log
        self.results_client = results_client
        self.shard, self.shards = shard, shards
        self.timeout = timeout
        self.interval = interval
        self.stats = VerifierStats()
        self.instruments = ServiceMetrics()
        current = current_service_metrics()
        self.telemetry = current.telemetry if current is not None else None
        self._clients: dict[str, SidecarClient] = {}
        self._cursor: dict[str, int] = {}
        self._seed_cursor: dict[str, int] = {}
        self._outage: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        checker.challenge = journal.challenge

    # -- delivery ------------------------------------------------------------------------------

    def _deliver(self, key: str, results: list[dict[str, Any]]) -> bool:
        parsed = [ReportResult.model_validate(r) for r in results]
        try:
            if self.audit_log is not None:
                append_audit_log(self.audit_log, parsed)
            if self.results_client is not None:
                self.results_client.post(parsed)
        except (OSError, TemporaryError) as exc:
            # kept in the journal; delivered again next round
            log.warning("results for %s not delivered yet: %s", key, exc)
            return False
        except MalformedInputError as exc:
            # the operator refused the batch itself: retrying cannot help
            log.error("the operator refused the results for %s: %s", key, exc)
        self.journal.delivered(key)
        return True

    def redeliver(self) -> int:
        n = 0
        for key, results in self.journal.undelivered().items():
            n += self._deliver(key, results)
        return n

    # -- one round -----------------------------------------------------------------------------

    def _client(self, target: Target) -> SidecarClient:
        client = self._clients.get(target.url)
        if client is None:
            client = SidecarClient(target.url, self.token, timeout=self.timeout)
            self._clients[target.url] = client
        return client

    def _report_outage(self, target: Target, message: str) -> None:
        self.stats.sidecars[target.url] = message
        if self._outage.get(target.url) == message:
            return
        self._outage[target.url] = message
        log.warning("%s", message)
        result = self.checker._result(target, "trajectory-recheck", "error", message)
        key = f"outage:{target.url}:{time.time_ns()}"
        self.journal.record(key, "", [result.to_wire()])
        self._deliver(key, [result.to_wire()])
        self.stats.errors += 1
        self.instruments.sidecar_errors.add(1)

    def _recommitted(self, target: Target, key: str, tid: str, first: str, again: str) -> None:
        """A request id judged before is listed again under another root: the sidecar
        committed it twice (an eviction and a replay). That is a failure, recorded once."""
        rekey = f"{key}#recommitted:{again}"
        if self.journal.is_judged(rekey):
            return
        result = self.checker._result(
            target,
            "trajectory-recheck",
            "fail",
            f"request id {tid!r} was committed again with root {again[:16]}…, after it was "
            f"judged with root {first[:16]}… (a replayed request id)",
            trajectoryId=tid,
            requestId=tid,
            trajectoryRoot=again,
        )
        self.journal.record(rekey, again, [result.to_wire()])
        self._deliver(rekey, [result.to_wire()])
        self.stats.failed += 1

    def _refuse(self, target: Target) -> None:
        """A pod whose sidecar is not one (see :attr:`Target.refusal`): a failure, recorded
        once per pod, and the pod is never asked for openings."""
        key = f"impostor:{target.uid}"
        if self.journal.is_judged(key):
            return
        log.error("pod %s/%s: %s", target.namespace, target.name, target.refusal)
        result = self.checker._result(target, "trajectory-recheck", "fail", target.refusal)
        self.journal.record(key, "", [result.to_wire()])
        self._deliver(key, [result.to_wire()])
        self.stats.failed += 1

    def run_round(self) -> int:
        """One pass over every sidecar of this shard; returns how many trajectories were judged."""
        judged = 0
        try:
            targets = self.discovery.targets()
        except TemporaryError as exc:
            log.warning("discovery failed: %s", exc)
            return 0
        except SamplerGuardError as exc:  # permanent (a 403): the installation must change
            log.error("discovery refused: %s", exc)
            return 0
        for target in targets:
            if target.refusal:
                if in_shard(target.uid, self.shard, self.shards):
                    self._refuse(target)
                continue
            client = self._client(target)
            try:
                public_key, info = client.public_key()
                pod = info.get("pod") if isinstance(info.get("pod"), dict) else {}
                uid = str(pod.get("uid") or target.uid) if pod else target.uid
                if pod and not target.name:
                    target = Target(
                        url=target.url,
                        uid=uid,
                        name=str(pod.get("name", "")),
                        namespace=str(pod.get("namespace", "")),
                    )
                if not in_shard(uid, self.shard, self.shards):
                    continue
                judged += self._audit(target, client, public_key)
                self._abandoned(target, client)
                if self._outage.pop(target.url, None) is not None:
                    log.info("sidecar %s is reachable again", target.url)
                self.stats.sidecars[target.url] = "ok"
            except (TemporaryError, VerifierAuthError) as exc:
                self._report_outage(target, str(exc))
            except (MalformedInputError, RecursionError) as exc:
                # a sidecar that answers garbage (its key, its list) fails its own audit; it
                # never stops the round for the sidecars after it
                what = (
                    str(exc) if isinstance(exc, MalformedInputError) else "JSON nested too deeply"
                )
                self._report_outage(target, f"sidecar {target.url} answered malformed: {what}")
        self.stats.rounds += 1
        return judged

    def _abandoned(self, target: Target, client: SidecarClient) -> None:
        """Each seed the sidecar issued that never became a trajectory is a warning of the
        pod, recorded once: an app that asks for seeds under fresh request ids and keeps the
        draw it likes leaves one per draw discarded (``sidecar.abandoned``)."""
        at = _cursor_key(target)
        after = self._seed_cursor.get(at, 0)
        for item in client.abandoned_seeds(after=after):
            rid, seq = str(item.get("id", ""))[:128], item.get("seq")
            if not isinstance(seq, int) or isinstance(seq, bool):
                raise MalformedInputError("an abandoned seed without a sequence number")
            self._seed_cursor[at] = max(self._seed_cursor.get(at, 0), seq)
            tenant = str(item.get("tenant", ""))[:128]
            # one seed per (tenant, request id): each is its own discarded draw
            key = f"{target.uid}/abandoned-seed/{tenant}/{rid}"
            if self.journal.is_judged(key):
                continue
            result = self.checker._result(
                target,
                "seed-health",
                "warn",
                f"the DRBG seed issued for request {rid!r} was never bound to a committed "
                f"trajectory ({str(item.get('reason', 'unknown'))[:60]}): a discarded draw",
                requestId=rid,
            )
            self.journal.record(key, "", [result.to_wire()])
            self._deliver(key, [result.to_wire()])
            self.stats.abandoned_seeds += 1

    def _audit(self, target: Target, client: SidecarClient, public_key: Any) -> int:
        n = 0
        at = _cursor_key(target)
        after = self._cursor.get(at, 0)
        for item in client.trajectories(after=after):
            tid, seq = str(item.get("id")), int(item.get("seq", 0))
            key = f"{target.uid}/{tid}"
            judged_root = self.journal.judged_root(key)
            if judged_root is not None:
                listed = str(item.get("root", ""))
                if judged_root and listed and listed != judged_root:
                    self._recommitted(target, key, tid, judged_root, listed)
                self._cursor[at] = max(self._cursor.get(at, 0), seq)
                continue
            with self.instruments.timed(self.instruments.recheck) as attributes:
                judgement = self.checker.judge(target, client, public_key, key, tid)
                attributes["outcome"] = judgement.outcome
            if self.telemetry is not None and judgement.outcome in ("pass", "fail", "error"):
                worst = [r.metric("relL2") for r in judgement.results]
                scores = [w for w in worst if w is not None]
                self.telemetry.record_verification(
                    judgement.outcome,  # type: ignore[arg-type]
                    rel_l2=max(scores) if scores else None,
                )
            results = [r.to_wire() for r in judgement.results]
            self.journal.record(key, judgement.root, results)
            self._deliver(key, results)
            self._cursor[at] = max(self._cursor.get(at, 0), seq)
            n += 1
            self.stats.judged += 1
            self.stats.challenged += judgement.challenged
            if judgement.outcome == "pass":
                self.stats.passed += 1
            elif judgement.outcome == "fail":
                self.stats.failed += 1
            else:
                self.stats.errors += 1
            log.info("judged %s: %s", key, judgement.outcome)
        return n

    # -- the loop ------------------------------------------------------------------------------

    def start(self) -> None:
        self.redeliver()
        self._thread = threading.Thread(target=self._loop, name="sg-verifier", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_round()
                self.redeliver()
            except Exception:  # one bad round must not stop the auditing
                log.exception("verifier round failed")
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for client in self._clients.values():
            client.close()
        self.journal.close()


def _cursor_key(target: Target) -> str:
    """Where a sidecar's listings were read up to: per pod, not per address. A pod reached at
    an address an earlier pod had (pod IPs are reused) lists from its own sequence 1."""
    return f"{target.uid}@{target.url}"
