"""Audit results: one record format for the verifier, the webhook, the operator and ``report``.

A :class:`ReportResult` is exactly one entry of ``results[]`` in a ``wgpolicyk8s.io/v1alpha2``
``PolicyReport`` or ``ClusterPolicyReport``, so existing report viewers read it unchanged. The
same JSON object, one per line, is the local-mode audit log (``--audit-log FILE``) and the body
the verifier posts to the operator's ingest endpoint.

The upstream schema allows only string values in ``properties``; the typed constructor
:meth:`ReportResult.build` formats numbers canonically and :attr:`ReportResult.metrics` parses
them back, so producers and consumers never disagree on the encoding.

The report CRDs themselves are generated from :class:`PolicyReport` and
:class:`ClusterPolicyReport` (see :mod:`samplerguard.policy.crd`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from samplerguard.errors import MalformedInputError
from samplerguard.policy.spec import LabelSelector

__all__ = [
    "MAX_LINE_BYTES",
    "PROPERTY_KEYS",
    "REPORT_API_VERSION",
    "RULES",
    "ClusterPolicyReport",
    "ObjectReference",
    "PolicyReport",
    "ReportResult",
    "ReportSummary",
    "ResultStatus",
    "Rule",
    "Timestamp",
    "append_audit_log",
    "read_audit_log",
    "summarize",
]

REPORT_GROUP = "wgpolicyk8s.io"
REPORT_VERSION = "v1alpha2"
REPORT_API_VERSION = f"{REPORT_GROUP}/{REPORT_VERSION}"

#: Longest accepted audit-log line. A result with its resources and properties is < 4 KiB.
MAX_LINE_BYTES = 64 * 1024

ResultStatus = Literal["pass", "fail", "warn", "error", "skip"]

#: The rules samplerguard reports on. ``rule`` of every result is one of these.
Rule = Literal[
    "signature",  # cosign signature / Sigstore bundle of the image (webhook, background audit)
    "provenance",  # SLSA provenance attestation (webhook, background audit)
    "recipe",  # sampler, schedule, steps and CFG within the policy (sidecar, verifier)
    "trajectory-recheck",  # one-step re-execution rel-L2 <= tau (verifier)
    "seed-health",  # seed-vector health checks and escrow (sidecar, verifier)
    "golden-digests",  # model weights / scheduler config / solver code digests (sidecar, verifier)
    "canary",  # canary suite conditional accuracy (verifier)
    "policy",  # the policy object itself is invalid (operator)
]
RULES: tuple[str, ...] = Rule.__args__  # type: ignore[attr-defined]

#: Keys of ``properties`` with a fixed meaning. Values are strings on the wire.
PROPERTY_KEYS: dict[str, str] = {
    "relL2": "float: measured ‖ẑ − z‖₂ / ‖z‖₂ of the re-checked step",
    "tau": "float: the policy's tolerance τ",
    "step": "int: index of the re-checked step",
    "trajectoryRoot": "hex: Merkle root of the committed trajectory",
    "trajectoryId": "str: the sidecar's trajectory id",
    "requestId": "str: the request id",
    "guidance": "float: the request's CFG / guidance scale",
    "steps": "int: the request's number of sampling steps",
    "sampler": "str: the request's sampler id",
    "schedule": "str: the request's schedule id",
    "image": "str: the image reference checked",
    "digest": "str: the image digest checked (sha256:…)",
    "mode": "str: the policy mode in force (enforce/warn/audit)",
    "count": "int: results folded into this one by aggregation (absent = 1)",
    "check": "str: the check that failed (samplerguard.errors.CHECKS)",
    "found": "str: what the failed check found",
    "expected": "str: what the failed check expected",
}


class _Wire(BaseModel):
    model_config = ConfigDict(
        populate_by_name=True, extra="forbid", frozen=True, use_attribute_docstrings=True
    )

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class Timestamp(_Wire):
    """A protobuf Timestamp, as the upstream CRD has it."""

    seconds: Annotated[int, Field(ge=0, le=253402300799)]
    """Seconds since the Unix epoch."""
    nanos: Annotated[int, Field(ge=0, le=999_999_999)] = 0
    """Nanoseconds within the second."""

    @classmethod
    def now(cls) -> Timestamp:
        ns = time.time_ns()
        return cls(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)

    @property
    def as_float(self) -> float:
        return self.seconds + self.nanos / 1e9


class ObjectReference(_Wire):
    """The workload a result is about (usually a Pod, or the Deployment owning it)."""

    api_version: str | None = Field(default=None, alias="apiVersion")
    """API version of the referent."""
    kind: str | None = None
    """Kind of the referent."""
    name: str | None = None
    """Name of the referent."""
    namespace: str | None = None
    """Namespace of the referent."""
    uid: str | None = None
    """UID of the referent."""
    resource_version: str | None = Field(default=None, alias="resourceVersion")
    """resourceVersion of the referent."""
    field_path: str | None = Field(default=None, alias="fieldPath")
    """A field within the referent, when the result is about one."""


_Text = Annotated[str, StringConstraints(max_length=1024)]


class ReportResult(_Wire):
    """One ``PolicyReportResult`` (``wgpolicyk8s.io/v1alpha2``)."""

    policy: Annotated[str, StringConstraints(min_length=1, max_length=512)]
    """``<ClusterSamplerPolicy name>`` or ``<namespace>/<SamplerPolicy name>``."""
    rule: Rule
    """The check: signature, provenance, golden-digests, trajectory-recheck, seed-health, canary
    or policy."""
    result: ResultStatus
    """pass, fail, warn, error (the check could not run) or skip."""
    message: _Text = ""
    """What was checked, what was found and what was expected."""
    severity: Literal["critical", "high", "medium", "low", "info"] | None = None
    """critical, high, medium, low or info."""
    category: str | None = "samplerguard"
    """The group of checks this result belongs to."""
    source: str | None = "samplerguard"
    """The producer of the result (samplerguard)."""
    scored: bool | None = True
    """Whether the result counts towards compliance."""
    timestamp: Timestamp | None = None
    """When the check ran."""
    resources: Annotated[list[ObjectReference], Field(max_length=64)] = []
    """The objects (Pod, workload) the result is about."""
    resource_selector: LabelSelector | None = Field(default=None, alias="resourceSelector")
    """Upstream's alternative to ``resources``; samplerguard never writes it."""
    properties: Annotated[
        dict[str, Annotated[str, StringConstraints(max_length=1024)]], Field(max_length=64)
    ] = {}
    """Key-value details as strings: requestId, root, step, relL2, tau and more."""

    @classmethod
    def build(
        cls,
        *,
        policy: str,
        rule: Rule,
        result: ResultStatus,
        message: str = "",
        resource: ObjectReference | Mapping[str, str] | None = None,
        timestamp: float | None = None,
        rel_l2: float | None = None,
        tau: float | None = None,
        step: int | None = None,
        guidance: float | None = None,
        steps: int | None = None,
        **extra: str,
    ) -> ReportResult:
        """Typed constructor: numbers become canonical strings (``repr`` of the float)."""
        props: dict[str, str] = dict(extra)
        for key, value in (
            ("relL2", rel_l2),
            ("tau", tau),
            ("step", step),
            ("guidance", guidance),
            ("steps", steps),
        ):
            if value is not None:
                props[key] = repr(float(value)) if isinstance(value, float) else str(value)
        ref: list[ObjectReference] = []
        if isinstance(resource, ObjectReference):
            ref = [resource]
        elif resource is not None:
            ref = [ObjectReference.model_validate(dict(resource))]
        ts = Timestamp.now() if timestamp is None else _ts(timestamp)
        severity = _SEVERITY[rule] if result in ("fail", "error") else None
        return cls(
            policy=policy,
            rule=rule,
            result=result,
            message=message[:1024],
            severity=severity,
            timestamp=ts,
            resources=ref,
            properties=props,
        )

    # -- reading back -------------------------------------------------------------------------

    def metric(self, key: str) -> float | None:
        """A numeric property, or None when absent or unparseable."""
        raw = self.properties.get(key)
        if raw is None:
            return None
        try:
            return float(raw)
        except ValueError:
            return None

    @property
    def namespace(self) -> str | None:
        for ref in self.resources:
            if ref.namespace:
                return ref.namespace
        return None

    @property
    def workload(self) -> str:
        """``Kind/namespace/name`` of the first resource, or ``-``."""
        if not self.resources:
            return "-"
        r = self.resources[0]
        return f"{r.kind or '?'}/{r.namespace or ''}/{r.name or '?'}"

    @property
    def when(self) -> float:
        return self.timestamp.as_float if self.timestamp else 0.0


_SEVERITY: dict[str, Literal["high", "medium", "low"]] = {
    "signature": "high",
    "provenance": "high",
    "golden-digests": "high",
    "trajectory-recheck": "high",
    "recipe": "medium",
    "seed-health": "medium",
    "canary": "medium",
    "policy": "low",
}


def _ts(value: float) -> Timestamp:
    seconds = int(value)
    return Timestamp(seconds=seconds, nanos=round((value - seconds) * 1e9) % 1_000_000_000)


class ReportSummary(_Wire):
    pass_: int = Field(default=0, alias="pass", ge=0)
    """Number of passing results."""
    fail: int = Field(default=0, ge=0)
    """Number of failing results."""
    warn: int = Field(default=0, ge=0)
    """Number of warnings."""
    error: int = Field(default=0, ge=0)
    """Number of checks that could not run."""
    skip: int = Field(default=0, ge=0)
    """Number of skipped checks."""


def summarize(results: list[ReportResult]) -> ReportSummary:
    """Summary counts; an aggregated result counts ``properties.count`` times."""
    counts = {"pass": 0, "fail": 0, "warn": 0, "error": 0, "skip": 0}
    for r in results:
        n = r.metric("count")
        counts[r.result] += int(n) if n is not None and n >= 1 else 1
    return ReportSummary.model_validate(counts)


class _ReportMeta(_Wire):
    model_config = ConfigDict(populate_by_name=True, extra="allow", frozen=True)

    name: str
    """The report's name."""
    namespace: str | None = None
    """The report's namespace."""
    labels: dict[str, str] = {}
    """The report's labels."""
    resource_version: str | None = Field(default=None, alias="resourceVersion")
    """The report's resourceVersion."""


class _ReportBase(_Wire):
    model_config = ConfigDict(
        populate_by_name=True, extra="ignore", frozen=True, use_attribute_docstrings=True
    )

    api_version: Literal["wgpolicyk8s.io/v1alpha2"] = Field(
        default="wgpolicyk8s.io/v1alpha2", alias="apiVersion"
    )
    """wgpolicyk8s.io/v1alpha2."""
    metadata: _ReportMeta
    """Standard object metadata."""
    scope: ObjectReference | None = None
    """The object all results of this report are about, when there is one."""
    scope_selector: LabelSelector | None = Field(default=None, alias="scopeSelector")
    """Upstream's alternative to scope; samplerguard never writes it."""
    summary: ReportSummary = ReportSummary()
    """Counts of results by outcome."""
    results: list[ReportResult] = []
    """The results."""


class PolicyReport(_ReportBase):
    """Namespaced report (short name ``polr``)."""

    kind: Literal["PolicyReport"] = "PolicyReport"
    """PolicyReport."""


class ClusterPolicyReport(_ReportBase):
    """Cluster-scoped report (short name ``cpolr``)."""

    kind: Literal["ClusterPolicyReport"] = "ClusterPolicyReport"
    """ClusterPolicyReport."""


# -- the local audit log ---------------------------------------------------------------------


def append_audit_log(path: str | os.PathLike[str], results: list[ReportResult]) -> None:
    """Append results as JSON lines. One ``write`` per call with ``O_APPEND``, so concurrent
    writers on a local file system do not interleave lines."""
    if not results:
        return
    data = "".join(
        json.dumps(r.to_wire(), separators=(",", ":"), sort_keys=True) + "\n" for r in results
    ).encode()
    fd = os.open(os.fspath(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read_audit_log(
    path: str | os.PathLike[str], *, strict: bool = False, max_lines: int = 10_000_000
) -> Iterator[ReportResult]:
    """Yield the results of a JSON-lines audit log.

    A line that is too long, not JSON or not a result is skipped (a crash mid-write leaves a
    truncated last line), unless ``strict``: then it raises :class:`MalformedInputError` naming
    the line number and what was wrong.
    """
    p = Path(path)
    with p.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno > max_lines:
                raise MalformedInputError(f"{p}: more than {max_lines} lines")
            if not raw.strip():
                continue
            try:
                if len(raw) > MAX_LINE_BYTES:
                    raise ValueError(f"line longer than {MAX_LINE_BYTES} bytes")
                yield ReportResult.model_validate(json.loads(raw))
            except (ValueError, ValidationError) as exc:
                if strict:
                    first = str(exc).splitlines()[0][:300]
                    raise MalformedInputError(
                        f"{p}:{lineno}: not a PolicyReport result: {first}"
                    ) from None
