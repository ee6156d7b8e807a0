"""What an audit page shows, computed from report results: pure functions, no rendering.

The verifier writes several results per request (``recipe``, ``seed-health``,
``trajectory-recheck``), all carrying the same ``requestId``. A request is counted once: its
outcome is the worst of its results, and its guidance and step count come from one result
(the ``recipe`` one when present). Results folded by the operator
(:mod:`samplerguard.operator.reports`) carry ``count`` and bounded sample lists instead; they are
counted ``count`` times, and only one rule's samples feed a histogram so that a request's
recipe and re-check results never add up to two requests.

A re-check score of exactly 0 (the same build reproduces the step bit for bit) is kept apart
from the positive scores, which are binned on a log scale.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from samplerguard.policy.report import ReportResult

__all__ = [
    "STATUSES",
    "Failure",
    "Group",
    "ReportView",
    "TrendBucket",
    "build_view",
    "reason_of",
    "subject_of",
]

_RANK = {"fail": 4, "error": 3, "warn": 2, "pass": 1, "skip": 0}
STATUSES = ("pass", "fail", "warn", "error", "skip")
#: The widths a trend bucket may take, in seconds: the first that gives <= MAX_BUCKETS wins.
_BUCKET_WIDTHS = (1, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400)
MAX_BUCKETS = 48


def _count(r: ReportResult) -> int:
    n = r.metric("count")
    return int(n) if n is not None and n >= 1 else 1


def _request_of(r: ReportResult) -> str | None:
    return r.properties.get("requestId") or r.properties.get("trajectoryId")


def subject_of(r: ReportResult) -> str:
    """The workload a result is about: ``Kind namespace/name`` (``-`` when none is named)."""
    if not r.resources:
        return "-"
    ref = r.resources[0]
    where = f"{ref.namespace}/" if ref.namespace else ""
    return f"{ref.kind or '?'} {where}{ref.name or '?'}"


_STEP_PREFIX = re.compile(r"^step \d+: ")


def reason_of(r: ReportResult) -> str:
    """A short, stable reason for grouping failures: the score against τ for a re-check that
    exceeded it, else the message's leading clause (``noise binding``, ``commitment
    rejected``…)."""
    rel, tau = r.metric("relL2"), r.metric("tau")
    if r.rule == "trajectory-recheck" and rel is not None and tau is not None and rel > tau:
        return "re-checked step differs from the reference (rel-L2 > τ)"
    text = _STEP_PREFIX.sub("", r.message.strip()) or r.rule
    if text.startswith("request: "):
        text = text[len("request: ") :]
    if len(text) <= 80 and not re.search(r"\d", text):
        return text
    head = text.split(":", 1)[0].strip()
    if 0 < len(head) <= 48 and head != text:
        return head
    return text if len(text) <= 80 else text[:79].rstrip() + "…"


@dataclass
class Group:
    """Counts for one policy or one workload."""

    name: str
    requests: Counter[str] = field(default_factory=Counter)
    results: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def verdict(self) -> str:
        """``fail`` when anything failed, else ``error``, ``warn``, ``pass``, or ``none``."""
        merged = self.requests + self.results
        for status in ("fail", "error", "warn", "pass"):
            if merged.get(status):
                return status
        return "none"

    @property
    def failed_requests(self) -> int:
        return self.requests.get("fail", 0)


@dataclass(frozen=True)
class Failure:
    """One ``fail`` or ``error`` result, with what an investigation starts from."""

    when: float
    policy: str
    workload: str
    rule: str
    result: str
    request_id: str
    root: str
    step: int | None
    score: float | None
    tau: float | None
    message: str
    count: int


@dataclass(frozen=True)
class TrendBucket:
    start: float
    requests: Counter[str]


@dataclass
class ReportView:
    entries: int
    first: float | None
    last: float | None
    requests: Counter[str]
    results: Counter[str]
    by_rule: dict[str, Counter[str]]
    policies: list[Group]
    workloads: list[Group]
    failures: list[Failure]
    guidance: list[float]
    steps: list[float]
    scores: list[float]
    exact_zero: int
    tau: float | None
    bucket_s: int
    trend: list[TrendBucket]

    @property
    def request_total(self) -> int:
        return sum(self.requests.values())

    @property
    def failing_workloads(self) -> list[Group]:
        return [w for w in self.workloads if w.verdict in ("fail", "error")]


def _samples(r: ReportResult, key: str) -> list[float]:
    joined = r.properties.get(f"{key}Samples")
    raw = joined.split(",") if joined else [r.properties[key]] if key in r.properties else []
    out = []
    for v in raw:
        try:
            f = float(v)
        except ValueError:
            continue
        if math.isfinite(f):
            out.append(f)
    return out


def _bucket_width(span: float) -> int:
    for width in _BUCKET_WIDTHS:
        if span / width < MAX_BUCKETS:
            return width
    return _BUCKET_WIDTHS[-1]


def build_view(results: Iterable[ReportResult]) -> ReportView:
    """Everything the page shows, from the results of an audit log or of PolicyReports."""
    items = list(results)
    # one outcome per request: the worst of its results; one time: its latest result
    per_request: dict[str, list[ReportResult]] = defaultdict(list)
    loose: list[ReportResult] = []
    for r in items:
        rid = _request_of(r)
        if rid is not None and "count" not in r.properties:
            per_request[rid].append(r)
        else:
            loose.append(r)

    results_by_status: Counter[str] = Counter()
    by_rule: dict[str, Counter[str]] = defaultdict(Counter)
    for r in items:
        results_by_status[r.result] += _count(r)
        by_rule[r.rule][r.result] += _count(r)

    policies: dict[str, Group] = {}
    workloads: dict[str, Group] = {}

    def groups(r: ReportResult) -> tuple[Group, Group]:
        p = policies.setdefault(r.policy, Group(r.policy))
        w = subject_of(r)
        return p, workloads.setdefault(w, Group(w))

    requests: Counter[str] = Counter()
    outcomes: list[tuple[float, str, int]] = []
    guidance: list[float] = []
    steps: list[float] = []
    for rs in per_request.values():
        worst = max(rs, key=lambda x: _RANK[x.result])
        requests[worst.result] += 1
        outcomes.append((max(x.when for x in rs), worst.result, 1))
        seen_groups: set[int] = set()
        for r in rs:
            for g in groups(r):
                if id(g) not in seen_groups:
                    g.requests[worst.result] += 1
                    seen_groups.add(id(g))
        recipe = next((x for x in rs if x.rule == "recipe"), None)
        carrier = recipe or next((x for x in rs if "guidance" in x.properties), None)
        if carrier is not None:
            guidance += _samples(carrier, "guidance")[:1]
            steps += _samples(carrier, "steps")[:1]
    # folded entries (cluster reports) and results that are not about a request
    rules_with_samples = {r.rule for r in loose if "guidanceSamples" in r.properties}
    sample_rule = "recipe" if "recipe" in rules_with_samples else "trajectory-recheck"
    # the trend counts a folded request by its verdict: its re-check where there is one
    trend_rule = (
        "trajectory-recheck"
        if any(r.rule == "trajectory-recheck" and "count" in r.properties for r in loose)
        else sample_rule
    )
    folded: dict[tuple[str, str], dict[str, Counter[str]]] = defaultdict(
        lambda: defaultdict(Counter)
    )
    for r in loose:
        for g in groups(r):
            g.results[r.result] += _count(r)
        if r.rule in ("recipe", "trajectory-recheck") and "count" in r.properties:
            folded[(r.policy, subject_of(r))][r.rule][r.result] += _count(r)
            if r.rule == trend_rule:
                # a folded entry has one time, its latest: the trend is coarse here
                outcomes.append((r.when, r.result, _count(r)))
                guidance += _samples(r, "guidance")
                steps += _samples(r, "steps")
    for (policy, workload), rules in folded.items():
        # every trajectory has one recipe result; a re-check that failed turns one of its
        # passing requests into a failed one
        counted = Counter(rules.get("recipe") or rules.get("trajectory-recheck") or Counter())
        if "recipe" in rules:
            for status in ("fail", "error"):
                moved = min(rules["trajectory-recheck"][status], counted["pass"] + counted["warn"])
                from_pass = min(moved, counted["pass"])
                counted["pass"] -= from_pass
                counted["warn"] -= moved - from_pass
                counted[status] += moved
        counted = +counted
        requests += counted
        policies[policy].requests += counted
        workloads[workload].requests += counted
    scores: list[float] = []
    taus: list[float] = []
    for r in items:
        if r.rule != "trajectory-recheck":
            continue
        scores += _samples(r, "relL2")
        tau = r.metric("tau")
        if tau is not None:
            taus.append(tau)

    failures = []
    for r in items:
        if r.result not in ("fail", "error"):
            continue
        for g in groups(r):
            g.reasons[reason_of(r)] += _count(r)
        step = r.metric("step")
        failures.append(
            Failure(
                when=r.when,
                policy=r.policy,
                workload=subject_of(r),
                rule=r.rule,
                result=r.result,
                request_id=_request_of(r) or "-",
                root=r.properties.get("trajectoryRoot", "-"),
                step=None if step is None else int(step),
                score=r.metric("relL2"),
                tau=r.metric("tau"),
                message=r.message,
                count=_count(r),
            )
        )
    failures.sort(key=lambda f: -f.when)

    times = [r.when for r in items if r.when > 0]
    first, last = (min(times), max(times)) if times else (None, None)
    width = _bucket_width((last or 0) - (first or 0))
    buckets: dict[int, Counter[str]] = defaultdict(Counter)
    for when, status, n in outcomes:
        if when > 0:
            buckets[int(when // width)][status] += n
    trend = [TrendBucket(float(k * width), buckets[k]) for k in sorted(buckets)]

    return ReportView(
        entries=len(items),
        first=first,
        last=last,
        requests=requests,
        results=results_by_status,
        by_rule={k: by_rule[k] for k in sorted(by_rule)},
        policies=sorted(policies.values(), key=lambda g: g.name),
        workloads=sorted(workloads.values(), key=lambda g: (-_RANK.get(g.verdict, 0), g.name)),
        failures=failures,
        guidance=guidance,
        steps=steps,
        scores=[s for s in scores if s > 0],
        exact_zero=sum(1 for s in scores if s == 0),
        tau=max(taus) if taus else None,
        bucket_s=width,
        trend=trend,
    )
