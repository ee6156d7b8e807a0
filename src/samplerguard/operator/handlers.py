"""kopf wiring: which events call which :class:`~samplerguard.operator.controller.Controller`
method. Nothing here decides anything.

* policies (both kinds): on every event, validate and write ``status`` (kopf's ``on.event``
  keeps no state on the object: a status write triggers one more event that finds nothing to
  change, so there is no loop);
* webhook configurations: any change (a ``helm upgrade`` re-applying them with an empty
  ``caBundle``) re-patches the bundle at once;
* background loops (certificate rotation, cluster report, image audit) run in the replica that
  holds the ``coordination.k8s.io`` Lease, so two replicas never rotate or audit twice;
* peering: ``--peering NAME`` makes replicas beyond the first stand by for policy events.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import kopf

from samplerguard.errors import SamplerGuardError, TemporaryError
from samplerguard.operator.controller import Controller
from samplerguard.policy.spec import GROUP, VERSION

__all__ = ["register"]

log = logging.getLogger("samplerguard.operator.handlers")

LEASE_SECONDS = 30


def register(
    registry: kopf.OperatorRegistry,
    controller: Controller,
    *,
    auditor: Callable[[], int] | None = None,
    peering: str | None = None,
    start_ingest: Callable[[], Any] | None = None,
) -> None:
    """Register every handler on ``registry`` (kopf.run(registry=...))."""
    cfg = controller.config

    @kopf.on.startup(registry=registry)
    async def _configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.WARNING
        settings.persistence.finalizer = "samplerguard.dev/operator"
        settings.watching.server_timeout = 300
        settings.networking.request_timeout = 30
        if peering:
            settings.peering.name = peering
            settings.peering.clusterwide = True
            settings.peering.mandatory = True
        else:
            settings.peering.standalone = True
        if start_ingest is not None:
            await start_ingest()

    @kopf.on.login(registry=registry)
    def _login(**kwargs: Any) -> Any:
        # A private registry has none of kopf's default login handlers; use the kubernetes
        # client's configuration (in-cluster or KUBECONFIG), loaded by run_operator.
        return kopf.login_via_client(**kwargs)

    for plural in ("clustersamplerpolicies", "samplerpolicies"):

        @kopf.on.event(GROUP, VERSION, plural, registry=registry)
        async def _policy(body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
            if kwargs.get("type") == "DELETED":
                controller.forget_policy(dict(body))
                return
            ev = await asyncio.to_thread(controller.reconcile_policy, dict(body))
            current = dict(body.get("status") or {})
            if _differs(current, ev.status):
                patch.status.update(ev.status)

    def _ours(name: str, **_: Any) -> bool:
        return name in (cfg.mutating_webhook, cfg.validating_webhook)

    for plural in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):

        @kopf.on.event("admissionregistration.k8s.io", "v1", plural, when=_ours, registry=registry)
        async def _webhook(**kwargs: Any) -> None:
            if kwargs.get("type") != "DELETED":
                await asyncio.to_thread(controller.reconcile_certs)

    @kopf.on.startup(registry=registry)
    async def _loops(memo: kopf.Memo, **_: Any) -> None:
        memo["tasks"] = [asyncio.create_task(_background(controller, auditor))]

    @kopf.on.cleanup(registry=registry)
    async def _stop(memo: kopf.Memo, **_: Any) -> None:
        for task in memo.get("tasks", []):
            task.cancel()


def _differs(current: dict[str, Any], wanted: dict[str, Any]) -> bool:
    def strip(conds: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return sorted(
            (
                c.get("type"),
                c.get("status"),
                c.get("reason"),
                c.get("message"),
                c.get("observedGeneration"),
            )
            for c in conds
        )

    return strip(current.get("conditions") or []) != strip(wanted.get("conditions") or [])


def _next_try(what: str, exc: Exception, every: float) -> float:
    """Seconds until a failed piece of background work runs again. A permanent failure (a
    403: the installation does not allow it) waits its usual period and is logged as an
    error; a temporary or unexpected one is retried within 10 s."""
    if isinstance(exc, SamplerGuardError) and not isinstance(exc, TemporaryError):
        log.error("%s failed: %s", what, exc)
        return every
    log.warning("%s failed: %s", what, exc)
    return min(every, 10.0)


async def _background(controller: Controller, auditor: Callable[[], int] | None) -> None:
    """Certificates first (the webhook cannot serve without them), then the periodic work,
    while this replica holds the Lease."""
    cfg = controller.config
    loop = asyncio.get_running_loop()
    next_cert = next_audit = next_report = next_observe = next_drbg = 0.0
    while True:
        try:
            leader = await asyncio.to_thread(
                controller.kube.try_lease, cfg.namespace, cfg.lease_name, cfg.holder, LEASE_SECONDS
            )
        except Exception as exc:
            log.warning("lease: %s", exc)
            leader = False
        now = loop.time()
        if now >= next_observe:  # every replica: serve the leaf the leader rotated
            try:
                await asyncio.to_thread(controller.observe_certs)
            except Exception as exc:
                log.warning("observe certificates: %s", exc)
            next_observe = now + 60.0
        if leader:
            for due, every, work in (
                (next_cert, cfg.cert_check_seconds, controller.reconcile_certs),
                (next_drbg, cfg.cert_check_seconds, controller.reconcile_drbg),
                (next_report, 15.0, controller.refresh_cluster_report),
                (next_audit, cfg.audit_interval_seconds, auditor),
            ):
                if work is None or now < due:
                    continue
                try:
                    await asyncio.to_thread(work)
                except Exception as exc:
                    every = _next_try(getattr(work, "__name__", str(work)), exc, every)
                if work == controller.reconcile_certs:
                    next_cert = now + every
                elif work == controller.reconcile_drbg:
                    next_drbg = now + every
                elif work == controller.refresh_cluster_report:
                    next_report = now + every
                else:
                    next_audit = now + every
        await asyncio.sleep(LEASE_SECONDS / 3)
