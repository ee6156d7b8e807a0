"""The decision: which images a request brings, which policies govern them, and the answer.

One pass serves both endpoints. ``/mutate`` additionally pins tags to the verified digests
and injects the sidecar, after verifying the injected images under the same policies, so a
pod is never admitted with an image that was not checked (verify-then-inject).

Per image and policy the order is:

1. parse the reference (a bad one is a denial);
2. resolve a tag to its digest (cached; during an outage the last-known-good resolution);
3. the verdict cache, keyed by (repository, digest, policy uid, policy spec version);
4. on a miss, the verifier in a bounded thread pool; identical concurrent checks share one
   verification (single flight);
5. registry unreachable → a pass within the last-known-good window still passes, anything
   else is denied: fail closed.

The policy's mode decides what a failed check does: ``enforce`` denies, ``warn`` admits with
a warning, ``audit`` admits and records. The whole request runs under one deadline, well
inside the API server's webhook timeout; running out of time is a denial.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import anyio
import anyio.to_thread

from samplerguard.errors import MalformedInputError, SamplerGuardError, TemporaryError
from samplerguard.policy.drbg import is_drbg_mode
from samplerguard.policy.report import ReportResult
from samplerguard.supplychain.reference import ImageReference, parse_reference
from samplerguard.webhook.audit import AuditTrail, ResultsForwarder
from samplerguard.webhook.cache import CacheKey, ResolutionCache, VerdictCache
from samplerguard.webhook.config import (
    ANNOTATION_POLICY,
    LABEL_INJECT,
    InjectionConfig,
    WebhookConfig,
)
from samplerguard.webhook.inject import (
    already_injected,
    foreign_injection,
    injection_patch,
    pin_patch,
    pod_escapes,
    secret_references,
    sidecar_changes,
    tenant_of,
)
from samplerguard.webhook.optin import NamespaceLabels, opted_in
from samplerguard.webhook.policies import AnyPolicy, PolicySource, policy_name, spec_version
from samplerguard.webhook.review import AdmissionRequest, AdmissionReview, allow, deny
from samplerguard.webhook.verifying import DigestResolver, ImageVerifierLike, PullSecrets
from samplerguard.webhook.workloads import PodTemplate, find_pod_template, handles

__all__ = ["Admission", "Check"]

log = logging.getLogger(__name__)

Mode = Literal["enforce", "warn", "audit"]
T = TypeVar("T")
NO_POLICY = "(no policy)"


@dataclass(frozen=True)
class Check:
    """One image checked under one policy (or under none: the no-match rule)."""

    image: str
    policy: str
    mode: Mode
    passed: bool
    detail: str
    last_known_good: bool = False

    def sentence(self) -> str:
        return f"image {self.image}: policy {self.policy}: {self.detail}"


@dataclass(frozen=True)
class _Scoped:
    """The resolver for one pod (None: the default) and the pull secrets it carries."""

    resolver: DigestResolver | None
    scope: str


@dataclass
class _ImageOutcome:
    image: str
    #: The reference to admit (pinned to the verified digest), when it was resolved.
    pinned: str | None = None
    checks: list[Check] = field(default_factory=list)
    #: Names of the policies whose image rules match this image.
    governed_by: list[str] = field(default_factory=list)


@functools.lru_cache(maxsize=4096)
def _reference(image: str) -> tuple[ImageReference, tuple[str, ...]]:
    """The parsed reference and the strings an image rule's glob is matched against: as
    written, and the normalised repository with and without tag/digest (so ``nginx`` matches
    ``index.docker.io/**``). Memoised: a pure function of the string, on the hot path."""
    ref = parse_reference(image)
    return ref, tuple(dict.fromkeys((image, ref.name, str(ref))))


#: (glob, candidate) → match. The policy model compiles the glob on every call.
_GLOB_MEMO: dict[tuple[str, str], bool] = {}


def _governs(policy: AnyPolicy, candidates: tuple[str, ...]) -> bool:
    for rule in policy.spec.images:
        for candidate in candidates:
            key = (rule.glob, candidate)
            hit = _GLOB_MEMO.get(key)
            if hit is None:
                if len(_GLOB_MEMO) >= 65536:
                    _GLOB_MEMO.clear()
                hit = _GLOB_MEMO[key] = rule.matches(candidate)
            if hit:
                return True
    return False


class Admission:
    """Answers AdmissionReview requests. One instance per process; runs on one event loop."""

    def __init__(
        self,
        config: WebhookConfig,
        policies: PolicySource,
        verifier: ImageVerifierLike,
        resolver: DigestResolver,
        *,
        namespaces: NamespaceLabels | None = None,
        cache: VerdictCache | None = None,
        resolutions: ResolutionCache | None = None,
        audit: AuditTrail | None = None,
        pull_secrets: PullSecrets | None = None,
    ) -> None:
        self.config = config
        self.policies = policies
        self.verifier = verifier
        self.resolver = resolver
        self.namespaces = namespaces
        self.pull_secrets = pull_secrets
        # "is None", not "or": an empty cache is falsy.
        self.cache = (
            cache
            if cache is not None
            else VerdictCache(
                fresh_ttl=config.fresh_ttl,
                last_known_good_ttl=config.last_known_good_ttl,
                failure_ttl=config.failure_ttl,
            )
        )
        self.resolutions = (
            resolutions
            if resolutions is not None
            else ResolutionCache(
                ttl=config.resolve_ttl, last_known_good_ttl=config.last_known_good_ttl
            )
        )
        self.audit = (
            audit if audit is not None else AuditTrail(config.audit_log, forward=_forwarder(config))
        )
        self._limiter: anyio.CapacityLimiter | None = None
        self._inflight: dict[Any, asyncio.Future[Any]] = {}

    # -- entry point --------------------------------------------------------------------------

    async def review(
        self, request: AdmissionRequest, *, mutate: bool, deadline: float | None = None
    ) -> AdmissionReview:
        """The answer to one request. Never raises: every failure is a denial.

        ``deadline``: the event loop time by which the answer must be ready (the server passes
        the request's arrival + ``config.deadline``, so reading the body counts too); default
        ``config.deadline`` from now."""
        uid = request.uid
        loop = asyncio.get_running_loop()
        when = deadline if deadline is not None else loop.time() + self.config.deadline
        try:
            async with asyncio.timeout_at(when):
                return await self._review(request, mutate)
        except TimeoutError:
            return deny(
                uid,
                f"samplerguard could not finish checking within {self.config.deadline:g}s; "
                "denied (fail closed). Retry: verdicts computed meanwhile are cached.",
                code=503,
                reason="Timeout",
            )
        except MalformedInputError as exc:
            return deny(
                uid, f"samplerguard cannot check this object: {exc}", code=400, reason="BadRequest"
            )
        except Exception:  # a bug must not admit anything
            log.exception("admission of request %s failed", uid)
            return deny(
                uid,
                "samplerguard failed internally; denied (fail closed)",
                code=500,
                reason="InternalError",
            )

    async def _review(self, req: AdmissionRequest, mutate: bool) -> AdmissionReview:
        uid = req.uid
        if req.operation in ("DELETE", "CONNECT"):
            return allow(uid)
        if req.sub_resource and not (
            req.kind.kind == "Pod" and req.sub_resource == "ephemeralcontainers"
        ):
            # status, scale, binding, eviction…: no new pod spec to check.
            return allow(uid)
        namespace = req.namespace
        if namespace in self.config.exempt:
            return allow(uid)
        if not handles(req.kind.group, req.kind.kind):
            raise MalformedInputError(
                f"kind {req.kind.group or 'core'}/{req.kind.version}/{req.kind.kind} carries no "
                "pod spec samplerguard checks; the webhook configuration should not send it"
            )
        if req.object is None:
            raise MalformedInputError(f"{req.operation} request without an object")
        metadata = req.object.get("metadata")
        if isinstance(metadata, dict) and metadata.get("deletionTimestamp"):
            return allow(uid)  # finalizer removal and the like on a dying object
        if not namespace:
            raise MalformedInputError("the request names no namespace")
        tpl = find_pod_template(req.kind.group, req.kind.kind, req.object)

        ns_labels = await self._namespace_labels(namespace)
        if not opted_in(tpl.labels, ns_labels, self.config.opt_in_label):
            if tpl.is_pod and self.config.injection.enabled and already_injected(tpl):
                # this webhook injects only where pods opted in: a pod elsewhere carrying the
                # injection brought its own, and the verifier would audit it
                return deny(
                    uid,
                    f"samplerguard denied {req.kind.kind} {namespace}/{_name_of(req, tpl)}: it "
                    "carries samplerguard's sidecar injection but is not opted in (neither its "
                    "namespace nor the pod label); a pod gets its sidecar from the webhook, "
                    "never brings its own",
                )
            return allow(uid)
        policies = self.policies.snapshot().for_namespace(namespace, ns_labels)

        inj = self.config.injection
        inject = (
            mutate
            and req.operation == "CREATE"  # a running pod's containers cannot be added to
            and tpl.is_pod
            and inj.enabled
            and tpl.labels.get(LABEL_INJECT) != "false"
            and not already_injected(tpl)
        )
        if inj.drbg_secret is not None and (
            found := secret_references(tpl, inj.drbg_secret, inj.sidecar_image)
        ):
            return deny(
                uid,
                f"samplerguard denied {req.kind.kind} {namespace}/{_name_of(req, tpl)}: "
                f"{', '.join(found)}: only the injected sidecar may read the Secret "
                f"{inj.drbg_secret}, which holds the namespace's DRBG master secret",
            )
        images = tpl.images()
        # a pod arriving with the sidecar already (a reinvocation, or one the provider made)
        # must carry this webhook's injection exactly: its sidecar is what the verifier audits
        # (an opt-out label does not skip this: the verifier audits any pod that carries it)
        carried = req.operation == "CREATE" and tpl.is_pod and inj.enabled and already_injected(tpl)
        if tpl.is_pod and inj.enabled and (inject or already_injected(tpl)):
            # what an app container of an injected pod must not hold: a way into the
            # sidecar's files (its signing key, openings, ledger and master secret), or, once
            # the pod runs, another sidecar image or code run next to it
            exposure = pod_escapes(tpl) + (
                sidecar_changes(tpl, _old_template(req)) if req.operation == "UPDATE" else []
            )
            if exposure:
                return deny(
                    uid,
                    f"samplerguard denied {req.kind.kind} {namespace}/{_name_of(req, tpl)}: "
                    + "; ".join(exposure)
                    + ": the sidecar's files must stay out of the app's reach",
                )
        injected = [inj.sidecar_image, inj.effective_hook_image] if inject else []
        if carried:
            injected = [inj.sidecar_image]
        wanted = list(dict.fromkeys(images + injected))
        scoped = await self._resolver_for(namespace, tpl)
        cached = [self._cached_outcome(i, policies, scoped) for i in wanted]
        outcomes = [o for o in cached if o is not None]
        if len(outcomes) < len(wanted):
            outcomes = (
                [await self._check_image(wanted[0], policies, scoped)]
                if len(wanted) == 1
                else await asyncio.gather(*(self._check_image(i, policies, scoped) for i in wanted))
            )
        checks = [c for o in outcomes for c in o.checks]
        what = f"{req.kind.kind} {namespace}/{_name_of(req, tpl)}"

        denials = [c for c in checks if not c.passed and c.mode == "enforce"]
        warnings = [
            f"samplerguard ({c.mode}): {c.sentence()}"
            for c in checks
            if not c.passed and c.mode == "warn"
        ]
        audits = [c for c in checks if not c.passed and c.mode == "audit"]
        warnings += [
            f"samplerguard: image {c.image} admitted on a last-known-good verdict under "
            f"{c.policy} (registry unreachable)"
            for c in checks
            if c.passed and c.last_known_good
        ]
        if not req.dry_run:
            self._record(req, tpl, [c for c in checks if not c.passed])
        if denials:
            return deny(
                uid,
                f"samplerguard denied {what}: " + "; ".join(c.sentence() for c in denials),
                warnings=warnings,
            )
        if carried and (foreign := self._foreign_injection(tpl, namespace, policies, outcomes)):
            return deny(
                uid,
                f"samplerguard denied {what}: {foreign}; a pod gets its sidecar from the "
                "webhook, never brings its own",
                warnings=warnings,
            )
        audit_note = (
            {"image-policy-audit": "; ".join(c.sentence() for c in audits)[:1024]}
            if audits
            else None
        )
        if not mutate:
            return allow(uid, warnings=warnings, audit=audit_note)

        pins = {
            o.image: o.pinned
            for o in outcomes
            if o.pinned and _reference(o.image)[0].digest is None
        }
        if req.operation == "UPDATE":
            # Rewriting an image the object already had would restart the pod's container
            # (or roll a Deployment) for nothing: pin only what this update changes.
            pins = {i: p for i, p in pins.items() if i not in _old_images(req)}
        patch = pin_patch(tpl, pins)
        if inject:
            chosen = _pod_policy(tpl, policies, outcomes, images)
            rng_mode, note = _rng_mode(inj, policies, chosen)
            if note is not None and rng_mode is None:
                return deny(uid, f"samplerguard denied {what}: {note}", warnings=warnings)
            if note is not None:
                warnings.append(f"samplerguard: {note}")
            more, inj_warnings = injection_patch(
                tpl,
                inj,
                sidecar_image=pins.get(inj.sidecar_image, inj.sidecar_image),
                hook_image=pins.get(inj.effective_hook_image, inj.effective_hook_image),
                tenant=tenant_of(tpl, namespace),
                policy=chosen,
                rng_mode=rng_mode or "framework",
            )
            patch += more
            warnings += inj_warnings
        return allow(uid, patch=patch, warnings=warnings, audit=audit_note)

    # -- pieces -------------------------------------------------------------------------------

    async def _namespace_labels(self, namespace: str) -> Mapping[str, str] | None:
        if self.namespaces is None:
            return None
        try:
            return await self.namespaces.labels(namespace)
        except Exception as exc:  # unknown labels fail closed (see optin)
            log.warning("namespace %s: label lookup failed: %s", namespace, exc)
            return None

    async def _resolver_for(self, namespace: str, tpl: PodTemplate) -> _Scoped:
        """A resolver carrying the pod's ``imagePullSecrets`` (None: the default one) and the
        scope naming those secrets, under which rejections are cached."""
        refs = tpl.spec.get("imagePullSecrets")
        if self.pull_secrets is None or not isinstance(refs, list):
            return _Scoped(None, "")
        names = sorted(
            {r["name"] for r in refs[:16] if isinstance(r, dict) and isinstance(r.get("name"), str)}
        )
        creds = await self.pull_secrets.credentials(namespace, names) if names else None
        if creds is None:
            return _Scoped(None, "")
        return _Scoped(self.resolver.with_credentials(creds), f"{namespace}/{','.join(names)}")

    def _image_plan(
        self, image: str, policies: list[AnyPolicy]
    ) -> tuple[_ImageOutcome, ImageReference | None, list[AnyPolicy]]:
        """The parts of an image's check that need no registry: its outcome so far, its parsed
        reference and the policies governing it (reference None: the outcome is final)."""
        outcome = _ImageOutcome(image)
        try:
            ref, candidates = _reference(image)
        except MalformedInputError as exc:
            outcome.checks.append(Check(image, NO_POLICY, "enforce", False, str(exc)))
            return outcome, None, []
        governing = [p for p in policies if _governs(p, candidates)]
        outcome.governed_by = [policy_name(p) for p in governing]
        if not governing:
            action = self.config.no_match
            outcome.checks.append(
                Check(
                    image,
                    NO_POLICY,
                    "enforce" if action == "deny" else "warn",
                    action == "allow",
                    "no policy's image rules match this image "
                    f"({len(policies)} policies govern this namespace)",
                )
            )
            return outcome, None, []
        return outcome, ref, governing

    def _foreign_injection(
        self,
        tpl: PodTemplate,
        namespace: str,
        policies: list[AnyPolicy],
        outcomes: list[_ImageOutcome],
    ) -> str | None:
        """Why the sidecar ``tpl`` carries is not this webhook's injection for it, or None."""
        inj = self.config.injection
        chosen = _pod_policy(tpl, policies, outcomes, tpl.images())
        rng_mode, _ = _rng_mode(inj, policies, chosen)
        return foreign_injection(
            tpl,
            inj,
            sidecar_images=_pinned_forms(inj.sidecar_image, outcomes),
            tenant=tenant_of(tpl, namespace),
            policy=chosen,
            rng_mode=rng_mode or "framework",
        )

    def _cached_outcome(
        self, image: str, policies: list[AnyPolicy], scoped: _Scoped
    ) -> _ImageOutcome | None:
        """:meth:`_check_image`'s outcome from the caches alone, or None when a resolution or a
        verdict has to be fetched. A cached admission takes this path for every image: no task
        per image, no await (gathering two cached images cost a mutation a sixth of its CPU)."""
        outcome, ref, governing = self._image_plan(image, policies)
        if ref is None:
            return outcome
        digest = ref.digest or self.resolutions.fresh(str(ref))
        if digest is None:
            return None
        checks = [self._cached_verdict(image, ref.name, digest, p, scoped) for p in governing]
        if None in checks:
            return None
        outcome.pinned = f"{ref.name}@{digest}"
        outcome.checks += [c for c in checks if c is not None]
        return outcome

    async def _check_image(
        self, image: str, policies: list[AnyPolicy], scoped: _Scoped
    ) -> _ImageOutcome:
        outcome, ref, governing = self._image_plan(image, policies)
        if ref is None:
            return outcome
        try:
            digest = ref.digest or await self._resolve(str(ref), scoped)
        except SamplerGuardError as exc:
            detail = f"cannot resolve the tag to a digest: {exc}"
            outcome.checks += [
                Check(image, policy_name(p), p.spec.mode, False, detail) for p in governing
            ]
            return outcome
        outcome.pinned = f"{ref.name}@{digest}"
        if len(governing) == 1:  # the common case, without gather's task overhead
            outcome.checks.append(
                await self._verdict(image, ref.name, digest, governing[0], scoped)
            )
        else:
            outcome.checks += await asyncio.gather(
                *(self._verdict(image, ref.name, digest, p, scoped) for p in governing)
            )
        return outcome

    async def _resolve(self, ref: str, scoped: _Scoped) -> str:
        hit = self.resolutions.fresh(ref)
        if hit is not None:
            return hit
        try:
            digest = await self._single_flight(
                ("resolve", ref, scoped.scope),
                functools.partial((scoped.resolver or self.resolver).resolve, ref),
            )
        except TemporaryError as exc:
            lkg = self.resolutions.last_known_good(ref)
            if lkg is None:
                raise TemporaryError(
                    f"{exc}; no resolution within the last-known-good window, denied (fail closed)"
                ) from exc
            return lkg
        self.resolutions.put(ref, digest)
        return digest

    def _cached_verdict(
        self, image: str, name: str, digest: str, policy: AnyPolicy, scoped: _Scoped
    ) -> Check | None:
        """The verdict cache's answer for the image under ``policy``, if it holds a fresh one."""
        key: CacheKey = (name, digest, policy.metadata.uid, spec_version(policy))
        hit = self.cache.fresh(key, scoped.scope)
        if hit is None:
            return None
        return Check(image, policy_name(policy), policy.spec.mode, hit.passed, hit.detail)

    async def _verdict(
        self,
        image: str,
        name: str,
        digest: str,
        policy: AnyPolicy,
        scoped: _Scoped,
    ) -> Check:
        hit = self._cached_verdict(image, name, digest, policy, scoped)
        if hit is not None:
            return hit
        pname = policy_name(policy)
        mode = policy.spec.mode
        key: CacheKey = (name, digest, policy.metadata.uid, spec_version(policy))
        call = functools.partial(
            self.verifier.verify,
            f"{name}@{digest}",
            policy.spec,
            policy_name=pname,
            digest=digest,
            client=scoped.resolver,
            policy_namespace=policy.metadata.namespace,
        )
        try:
            verdict = await self._single_flight(("verify", key, scoped.scope), call)
        except TemporaryError as exc:
            lkg = self.cache.last_known_good(key)
            if lkg is not None:
                return Check(image, pname, mode, True, lkg.detail, last_known_good=True)
            return Check(
                image,
                pname,
                mode,
                False,
                f"registry unreachable ({exc}) and no pass within the last-known-good window; "
                "denied (fail closed)",
            )
        except SamplerGuardError as exc:  # malformed reference, auth refused, not found
            return Check(image, pname, mode, False, f"cannot be checked: {exc}")
        if verdict.passed and verdict.digest == digest:
            self.cache.record_pass(key, f"verified {digest}", scoped.scope)
            return Check(image, pname, mode, True, f"verified {digest}")
        # The sentence already names image and policy: keep only the failed checks.
        reasons = f"{digest}: " + (
            "; ".join(f"{c.name}: {c.detail}" for c in verdict.failed) or "not verified"
        )
        if verdict.passed:  # the verifier checked another digest than the one to be admitted
            reasons = f"verified digest {verdict.digest} differs from the admitted {digest}"
        self.cache.record_failure(key, reasons, scoped.scope)
        return Check(image, pname, mode, False, reasons)

    async def _single_flight(self, key: Any, call: Callable[[], T]) -> T:
        """Run ``call`` in the worker pool, sharing one run among concurrent identical keys.
        The shared run is shielded: one request's deadline does not cancel it for the rest."""
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(self._in_thread(call))
            self._inflight[key] = future
            future.add_done_callback(lambda f: self._settled(key, f))
        result: T = await asyncio.shield(future)
        return result

    def _settled(self, key: Any, future: asyncio.Future[Any]) -> None:
        self._inflight.pop(key, None)
        if not future.cancelled():
            future.exception()  # retrieved: a failure nobody awaited any more is not "lost"

    async def _in_thread(self, call: Callable[[], T]) -> T:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.config.verify_concurrency)
        return await anyio.to_thread.run_sync(call, limiter=self._limiter)

    def _record(self, req: AdmissionRequest, tpl: PodTemplate, failed: list[Check]) -> None:
        if not failed:
            return
        resource = {
            "apiVersion": f"{req.kind.group}/{req.kind.version}".lstrip("/"),
            "kind": req.kind.kind,
            "namespace": req.namespace,
            "name": _name_of(req, tpl),
        }
        self.audit.record(
            [
                ReportResult.build(
                    policy=_report_policy(c.policy),
                    rule="signature",
                    result="fail" if c.mode == "enforce" else "warn",
                    message=c.sentence(),
                    resource=resource,
                    image=c.image,
                    mode=c.mode,
                )
                for c in failed
            ]
        )


def _forwarder(config: WebhookConfig) -> ResultsForwarder | None:
    if not config.report_url:
        return None
    if not config.report_token_file:
        raise MalformedInputError("--report-url needs --report-token-file")
    from samplerguard.policy.report_client import ResultsClient

    client = ResultsClient(
        config.report_url,
        token_file=config.report_token_file,
        ca_file=config.report_ca_file,
        deadline=10.0,
    )
    return ResultsForwarder(client)


def _old_template(req: AdmissionRequest) -> PodTemplate | None:
    try:
        return find_pod_template(req.kind.group, req.kind.kind, req.old_object)
    except MalformedInputError:
        return None


def _old_images(req: AdmissionRequest) -> set[str]:
    try:
        return set(find_pod_template(req.kind.group, req.kind.kind, req.old_object).images())
    except MalformedInputError:
        return set()


def _name_of(req: AdmissionRequest, tpl: PodTemplate) -> str:
    if req.name:
        return req.name
    meta = req.object.get("metadata") if req.object else None
    if isinstance(meta, dict):
        name = meta.get("name") or meta.get("generateName")
        if isinstance(name, str) and name:
            return name[:253]
    return "(unnamed)"


def _report_policy(name: str) -> str:
    """PolicyReport naming: a ClusterSamplerPolicy by name, a SamplerPolicy as ``ns/name``."""
    kind, _, rest = name.partition("/")
    return rest if kind in ("ClusterSamplerPolicy", "SamplerPolicy") else name


def _pinned_forms(image: str, outcomes: list[_ImageOutcome]) -> set[str]:
    """``image`` and the digest-pinned reference its verification resolved it to."""
    return {image} | {o.pinned for o in outcomes if o.image == image and o.pinned}


def _rng_mode(
    inj: InjectionConfig, policies: list[AnyPolicy], chosen: str
) -> tuple[str | None, str | None]:
    """The RNG mode the pod is wired for, and a note. A policy asking for DRBG noise when this
    webhook mounts no DRBG Secret: denied under ``enforce`` (mode None), else admitted on
    framework noise with a warning (the sidecar then quarantines every request: the policy's
    rng check names why, and the verifier challenges each). Never a silent fallback."""
    policy = next((p for p in policies if policy_name(p) == chosen), None)
    if policy is None:
        return "framework", None
    mode = policy.spec.rng.mode
    if not is_drbg_mode(mode) or inj.drbg_secret is not None:
        return mode, None
    note = (
        f"policy {chosen} asks for {mode} noise, but no DRBG Secret is configured for "
        "injected sidecars (the chart's drbg.enabled)"
    )
    if policy.spec.mode == "enforce":
        return None, note
    return "framework", note + "; the app draws framework noise and every request is quarantined"


def _pod_policy(
    tpl: PodTemplate, policies: list[AnyPolicy], outcomes: list[_ImageOutcome], images: list[str]
) -> str:
    """The policy the sidecar enforces: the pod's annotation if it names a governing policy,
    else the first (namespaced first) policy governing one of the pod's own images."""
    names = [policy_name(p) for p in policies]
    wanted = tpl.annotations.get(ANNOTATION_POLICY)
    if wanted is not None:
        if wanted not in names:
            raise MalformedInputError(
                f"annotation {ANNOTATION_POLICY} names {wanted!r}, which does not govern this "
                f"namespace (governing: {', '.join(names) or 'none'})"
            )
        return wanted
    own = set(images)
    for outcome in outcomes:
        if outcome.image in own and outcome.governed_by:
            return outcome.governed_by[0]
    return names[0] if names else ""
