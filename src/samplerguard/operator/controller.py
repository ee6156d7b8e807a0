"""The operator's reconcilers, free of kopf so that tests drive them directly.

:class:`Controller` holds the configuration and a :class:`~samplerguard.operator.kube.Kube`;
:mod:`samplerguard.operator.handlers` wires its methods to kopf's events and timers.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from samplerguard.errors import TemporaryError
from samplerguard.kubeapi import Conflict
from samplerguard.operator.certs import CertPolicy, CertState, plan
from samplerguard.operator.drbg import NEW_MASTER, DrbgSecrets, reconcile_drbg
from samplerguard.operator.kube import Kube
from samplerguard.operator.reports import (
    CLUSTER_REPORT_NAME,
    REPORT_NAME,
    cluster_report,
    namespace_report,
)
from samplerguard.operator.status import Evaluation, evaluate, policy_ref
from samplerguard.policy.report import ObjectReference, ReportResult

__all__ = ["Controller", "OperatorConfig"]

log = logging.getLogger("samplerguard.operator")

MANAGED = "app.kubernetes.io/managed-by=samplerguard"
_EVENT_REASON = {"fail": "VerificationFailed", "error": "VerificationError"}


@dataclass(frozen=True)
class OperatorConfig:
    """Everything the chart passes in (flags or ``SAMPLERGUARD_*`` environment)."""

    namespace: str = "samplerguard"
    tls_secret: str = "samplerguard-webhook-tls"  # noqa: S105 - a Secret's name
    mutating_webhook: str = "samplerguard-mutating"
    validating_webhook: str = "samplerguard-validating"
    webhook_service: str = "samplerguard-webhook"
    operator_service: str = "samplerguard-operator"
    extra_ip_sans: tuple[str, ...] = ()
    extra_dns_sans: tuple[str, ...] = ()
    #: Write tls.crt/tls.key/ca.crt here too (local mode: an out-of-cluster webhook reads them).
    cert_dir: Path | None = None
    leaf_days: float = 90
    leaf_renew_before_days: float = 30
    cert_check_seconds: float = 300.0
    audit_interval_seconds: float = 600.0
    #: ServiceAccount user names allowed to post results (``system:serviceaccount:ns:name``).
    verifier_users: tuple[str, ...] = ("system:serviceaccount:samplerguard:samplerguard-verifier",)
    #: The escrow Secret (in ``namespace``); None: the operator makes no DRBG Secrets.
    escrow_secret: str | None = None
    #: The DRBG Secret's name in each of ``drbg_namespaces``.
    drbg_secret: str = "samplerguard-drbg"  # noqa: S105 - a Secret's name
    #: The namespaces whose injected sidecars get a DRBG Secret (the chart's
    #: ``sidecar.namespaces``).
    drbg_namespaces: tuple[str, ...] = ()
    lease_name: str = "samplerguard-operator"
    holder: str = field(default_factory=lambda: os.environ.get("POD_NAME", os.uname().nodename))
    events: bool = True

    def drbg(self) -> DrbgSecrets | None:
        if self.escrow_secret is None:
            return None
        return DrbgSecrets(
            namespace=self.namespace,
            escrow_secret=self.escrow_secret,
            drbg_secret=self.drbg_secret,
            namespaces=self.drbg_namespaces,
        )

    def cert_policy(self) -> CertPolicy:
        dns: list[str] = []
        for svc in (self.webhook_service, self.operator_service):
            dns += [svc, f"{svc}.{self.namespace}.svc", f"{svc}.{self.namespace}.svc.cluster.local"]
        dns += list(self.extra_dns_sans)
        return CertPolicy(
            dns_names=tuple(dns),
            ip_addresses=self.extra_ip_sans,
            leaf_days=self.leaf_days,
            leaf_renew_before_days=self.leaf_renew_before_days,
        )


@dataclass
class _Tally:
    """Verdicts of checks that ran. An ``error`` (a sidecar that could not be reached, an
    opening that could not be fetched) is no verdict on the provider: it is counted apart and
    never makes a policy read ``fail``."""

    passed: int = 0
    failed: int = 0
    errors: int = 0
    rule: str = ""

    def text(self) -> str:
        total = self.passed + self.failed
        verdict = (
            f"fail {self.failed}/{total} ({self.rule})" if self.failed else f"pass {total}/{total}"
        )
        return f"{verdict}, {self.errors} errors" if self.errors else verdict


class Controller:
    def __init__(self, config: OperatorConfig, kube: Kube) -> None:
        self.config = config
        self.kube = kube
        self._lock = threading.Lock()
        #: Current validity result of every ClusterSamplerPolicy (by policy ref).
        self._cluster_policy_results: dict[str, ReportResult] = {}
        self._cluster_dirty = True
        self._last_event: dict[tuple[str, str], float] = {}
        #: namespaces whose DRBG Secret this operator has reconciled (a later absence: lost)
        self._drbg_seen: set[str] = set()
        #: Called with the new Secret content whenever the serving leaf changes.
        self.cert_listeners: list[Callable[[CertState], None]] = []
        self._served_leaf = b""
        #: policy ref -> [pass, fail+error, latest failing rule]; flushed to status.lastVerdict
        self._verdicts: dict[str, _Tally] = {}
        self._verdicts_dirty: set[str] = set()
        #: last validity result per SamplerPolicy: recorded in reports only when it changes
        self._ns_policy_state: dict[str, str] = {}

    # -- policies ----------------------------------------------------------------------------

    def reconcile_policy(self, body: dict[str, object]) -> Evaluation:
        """Validate; remember the result for the reports; an Event when invalid."""
        ev = evaluate(dict(body))
        ref = policy_ref(dict(body))
        if body.get("kind") == "ClusterSamplerPolicy":
            with self._lock:
                old = self._cluster_policy_results.get(ref)
                self._cluster_policy_results[ref] = ev.result
                self._cluster_dirty |= old is None or old.result != ev.result.result
        else:
            ns = ev.result.namespace
            with self._lock:
                changed = self._ns_policy_state.get(ref) != ev.result.result
                self._ns_policy_state[ref] = ev.result.result
            if ns is not None and not ev.ok and changed:
                self.record([ev.result])
        if not ev.ok:
            self.event(ev.result, "PolicyInvalid", ev.message)
        return ev

    def forget_policy(self, body: dict[str, object]) -> None:
        with self._lock:
            self._ns_policy_state.pop(policy_ref(dict(body)), None)
            if self._cluster_policy_results.pop(policy_ref(dict(body)), None) is not None:
                self._cluster_dirty = True

    # -- certificates --------------------------------------------------------------------------

    def reconcile_certs(self, now: dt.datetime | None = None) -> bool:
        """Ensure the Secret, then the caBundles. Returns whether anything was written."""
        cfg = self.config
        now = now or dt.datetime.now(dt.UTC)
        for _ in range(5):
            state, rv = self.kube.get_secret(cfg.namespace, cfg.tls_secret)
            decision = plan(state, cfg.cert_policy(), now)
            if not decision.changed:
                break
            try:
                self.kube.put_secret(cfg.namespace, cfg.tls_secret, decision.state, rv)
            except Conflict:
                continue  # another replica rotated first: re-read theirs
            log.info(
                "TLS Secret %s/%s updated: %s",
                cfg.namespace,
                cfg.tls_secret,
                "; ".join(decision.reasons),
            )
            break
        else:
            raise TemporaryError("the TLS Secret kept changing under us")
        state = decision.state
        changed = decision.changed
        self._notify_certs(state)
        if cfg.cert_dir is not None:
            self._write_cert_dir(cfg.cert_dir, state.data)
        for kind, name in (
            ("mutating", cfg.mutating_webhook),
            ("validating", cfg.validating_webhook),
        ):
            if self.kube.patch_ca_bundle(kind, name, state.ca_bundle):
                log.info("caBundle of %s webhook configuration %s patched", kind, name)
                changed = True
        return changed

    def observe_certs(self) -> None:
        """Every replica, leader or not: pick up a leaf another replica rotated (the ingest
        server of this one must serve it)."""
        state, _ = self.kube.get_secret(self.config.namespace, self.config.tls_secret)
        if state.data.get("tls.crt") and state.data.get("tls.key"):
            self._notify_certs(state)

    def _notify_certs(self, state: CertState) -> None:
        leaf = state.data.get("tls.crt", b"")
        if not leaf or leaf == self._served_leaf:
            return
        self._served_leaf = leaf
        for listener in list(self.cert_listeners):
            try:
                listener(state)
            except Exception as exc:
                log.error("certificate listener failed: %s", exc)

    @staticmethod
    def _write_cert_dir(directory: Path, data: dict[str, bytes]) -> None:
        """Lay the files out as a Secret volume does: ``tls.crt -> ..data/tls.crt`` and
        ``..data -> ..<random>/``, swapped with one atomic rename, so a reader never sees a
        new certificate with an old key."""
        keys = ("tls.crt", "tls.key", "ca.crt", "ca-bundle.crt")
        directory.mkdir(parents=True, exist_ok=True)
        current = directory / "..data"
        if current.is_dir() and all(
            (current / k).is_file() and (current / k).read_bytes() == data[k] for k in keys
        ):
            return
        fresh = Path(tempfile.mkdtemp(prefix="..", dir=directory))
        for key in keys:
            target = fresh / key
            target.touch(mode=0o600 if key.endswith(".key") else 0o644)
            target.write_bytes(data[key])
        staging = directory / "..data_tmp"
        staging.unlink(missing_ok=True)
        staging.symlink_to(fresh.name)
        old = current.resolve() if current.is_symlink() else None
        staging.replace(current)  # the atomic switch
        for key in keys:
            link = directory / key
            if not link.is_symlink():
                link.unlink(missing_ok=True)
                link.symlink_to(f"..data/{key}")
        if old is not None and old.parent == directory.resolve() and old.name.startswith(".."):
            shutil.rmtree(old, ignore_errors=True)

    # -- DRBG Secrets ---------------------------------------------------------------------------

    def reconcile_drbg(self) -> list[str]:
        """Create the escrow key pair and each namespace's DRBG Secret where absent (see
        :mod:`samplerguard.operator.drbg`). Returns the Secrets written; each write is an Event
        on its Secret (a Warning when a Secret this operator had seen was lost)."""
        cfg = self.config.drbg()
        if cfg is None:
            return []

        def reconciled(ns: str, changes: list[str]) -> None:
            if changes:
                self._drbg_event(cfg.drbg_secret, ns, changes, lost=ns in self._drbg_seen)
            self._drbg_seen.add(ns)

        return reconcile_drbg(self.kube, cfg, reconciled)

    def _drbg_event(self, name: str, ns: str, changes: list[str], *, lost: bool) -> None:
        if not self.config.events:
            return
        if NEW_MASTER in changes:
            reason = "DrbgSecretRecreated" if lost else "DrbgSecretCreated"
        elif any(c.startswith("master secret") for c in changes):
            reason = "DrbgSecretReplaced"
        else:
            reason = "DrbgSecretUpdated"
        what = "was lost and is made again with" if lost and NEW_MASTER in changes else "has"
        message = (
            f"DRBG Secret {ns}/{name} {what} {', '.join(changes)}: running sidecars take it up "
            "from their updated volume without a restart; the escrows already made still open "
            "at the verifier"
        )
        involved = ObjectReference.model_validate(
            {"apiVersion": "v1", "kind": "Secret", "namespace": ns, "name": name}
        )
        try:
            self.kube.create_event(
                involved,
                type_="Warning"
                if reason in ("DrbgSecretRecreated", "DrbgSecretReplaced")
                else "Normal",
                reason=reason,
                message=message,
            )
        except Exception as exc:  # Events are best effort
            log.warning("could not post Event %s on Secret %s/%s: %s", reason, ns, name, exc)

    # -- reports -------------------------------------------------------------------------------

    def record(self, results: Iterable[ReportResult]) -> int:
        """Fold results into their namespaces' PolicyReports. Results without a namespace go
        to the ClusterPolicyReport's cluster-scoped part. Returns how many were recorded."""
        by_ns: dict[str | None, list[ReportResult]] = {}
        results = list(results)
        for r in results:
            by_ns.setdefault(r.namespace, []).append(r)
        self._note_verdicts(results)
        n = 0
        for ns, batch in by_ns.items():
            if ns is None:
                with self._lock:
                    for r in batch:
                        self._cluster_policy_results[f"{r.policy}#{r.rule}#{r.workload}"] = r
                    self._cluster_dirty = True
                n += len(batch)
                continue
            for _ in range(8):
                existing = self.kube.get_report(ns, REPORT_NAME)
                body = namespace_report(ns, existing, batch)
                try:
                    self.kube.put_report(body)
                except Conflict:
                    continue
                break
            else:
                raise TemporaryError(f"PolicyReport {ns}/{REPORT_NAME} kept conflicting")
            n += len(batch)
            with self._lock:
                self._cluster_dirty = True
        for r in results:
            if r.result in ("fail", "error"):
                self.event(r, _EVENT_REASON[r.result], f"{r.rule}: {r.message}")
        return n

    def refresh_cluster_report(self, force: bool = False) -> bool:
        self.flush_verdicts()
        with self._lock:
            if not (self._cluster_dirty or force):
                return False
            self._cluster_dirty = False
            own = list(self._cluster_policy_results.values())
        namespaced = self.kube.list_reports(MANAGED)
        for _ in range(8):
            existing = self.kube.get_report(None, CLUSTER_REPORT_NAME)
            body = cluster_report(namespaced, own, existing)
            try:
                self.kube.put_report(body)
            except Conflict:
                continue
            return True
        with self._lock:
            self._cluster_dirty = True
        raise TemporaryError("ClusterPolicyReport kept conflicting")

    # -- status.lastVerdict ----------------------------------------------------------------

    def _note_verdicts(self, results: list[ReportResult]) -> None:
        with self._lock:
            for r in results:
                if r.rule == "policy":
                    continue
                tally = self._verdicts.setdefault(r.policy, _Tally())
                n = r.metric("count")
                k = int(n) if n is not None and n >= 1 else 1
                if r.result == "fail":
                    tally.failed += k
                    tally.rule = r.rule
                elif r.result == "error":
                    tally.errors += k
                elif r.result == "pass":
                    tally.passed += k
                self._verdicts_dirty.add(r.policy)

    def flush_verdicts(self) -> int:
        """Write ``status.lastVerdict`` of the policies that got results since the last flush
        (the Verdict printer column), e.g. ``fail 2/40 (trajectory-recheck)``."""
        with self._lock:
            dirty = {p: self._verdicts[p].text() for p in self._verdicts_dirty}
            self._verdicts_dirty.clear()
        written = 0
        for ref, text in dirty.items():
            ns, _, name = ref.rpartition("/")
            try:
                self.kube.patch_policy_status(ns or None, name, {"lastVerdict": text})
                written += 1
            except Exception as exc:
                log.info("lastVerdict of %s not written: %s", ref, exc)
        return written

    # -- events --------------------------------------------------------------------------------

    def event(self, result: ReportResult, reason: str, message: str) -> None:
        """A Warning Event on the result's resource; at most one per resource and reason a
        minute, and never an exception (Events are best effort)."""
        if not self.config.events or not result.resources:
            return
        ref = result.resources[0]
        if ref.namespace is None and ref.kind not in ("ClusterSamplerPolicy",):
            return
        key = (f"{ref.kind}/{ref.namespace}/{ref.name}", reason)
        now = time.monotonic()
        if now - self._last_event.get(key, -1e9) < 60:
            return
        self._last_event[key] = now
        involved = ref
        if ref.namespace is None:  # cluster-scoped objects' Events live in "default"
            involved = ObjectReference.model_validate({**ref.to_wire(), "namespace": None})
        try:
            self.kube.create_event(
                involved, type_="Warning", reason=reason, message=f"{result.policy}: {message}"
            )
        except Exception as exc:
            log.warning("could not post Event %s on %s: %s", reason, key[0], exc)
