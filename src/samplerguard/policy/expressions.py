"""The two expression languages a policy may hold, with the semantics of the tools they come from.

* Regular expressions in identities (``subjectRegExp``, ``issuerRegExp``) are RE2, as in Go,
  and match a *substring*, as cosign's ``--certificate-identity-regexp`` and policy-controller's
  ``subjectRegExp`` do (Go's ``regexp.MatchString``). A pattern meant to pin the whole identity
  says so with ``^…$``. RE2 is also what the API server's CEL ``matches()`` speaks, so the CRD
  and :func:`parse_policy` refuse the same patterns.
* Conditions on attestation predicates are CEL (the language of the CRDs' own validation
  rules and of Kyverno's and Kubernetes' admission policies). They are compiled when the policy
  is parsed, so a policy whose condition does not compile is refused at apply time.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

__all__ = [
    "CONDITION_VARIABLES",
    "check_condition",
    "check_regexp",
    "evaluate_condition",
    "regexp_search",
]

#: The names a condition may use: the statement's predicate, its type, and its subjects.
CONDITION_VARIABLES = ("predicate", "predicateType", "subject")


@functools.lru_cache(maxsize=512)
def _regexp(pattern: str) -> Any:
    import re2  # type: ignore[import-untyped]

    options = re2.Options()
    options.log_errors = False  # the error is raised, not logged to stderr
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise ValueError(str(detail)) from None


def check_regexp(pattern: str, what: str) -> str:
    """``pattern`` if it compiles as RE2; :class:`ValueError` that names ``what`` otherwise."""
    try:
        _regexp(pattern)
    except ValueError as exc:
        raise ValueError(
            f"{what} {pattern!r} is not a valid RE2 regular expression "
            f"(the syntax cosign and Go use): {exc}"
        ) from None
    return pattern


def regexp_search(pattern: str, text: str) -> bool:
    """Whether ``pattern`` matches somewhere in ``text`` (Go's ``regexp.MatchString``)."""
    return _regexp(pattern).search(text) is not None


@functools.lru_cache(maxsize=256)
def _program(expression: str) -> Any:
    import celpy
    from celpy.celparser import CELParseError

    env = celpy.Environment()
    try:
        ast = env.compile(expression)
    except CELParseError as exc:
        raise ValueError(" ".join(str(exc).split())) from None
    return env.program(ast)


def check_condition(expression: str) -> str:
    """``expression`` if it compiles as CEL; :class:`ValueError` otherwise. The variables it
    may read are :data:`CONDITION_VARIABLES`; any other name fails when evaluated."""
    try:
        _program(expression)
    except ValueError as exc:
        raise ValueError(f"condition {expression!r} is not valid CEL: {exc}") from None
    return expression


def evaluate_condition(expression: str, statement: Mapping[str, Any]) -> tuple[bool, str]:
    """Evaluate a compiled condition against an in-toto statement; returns (holds, what it
    gave). An evaluation error (a missing field, a type mismatch) or a non-boolean result
    counts as not holding: a condition fails closed."""
    from celpy import celtypes
    from celpy.adapter import json_to_cel
    from celpy.evaluation import CELEvalError

    program = _program(expression)
    activation = {
        "predicate": json_to_cel(statement.get("predicate", {})),
        "predicateType": json_to_cel(statement.get("predicateType", "")),
        "subject": json_to_cel(statement.get("subject", [])),
    }
    try:
        result = program.evaluate(activation)
    except CELEvalError as exc:
        return False, f"error: {exc.args[0] if exc.args else exc}"
    if isinstance(result, CELEvalError):
        return False, f"error: {result.args[0] if result.args else result}"
    if not isinstance(result, celtypes.BoolType):
        return False, f"not a boolean (got {type(result).__name__} {str(result)[:80]})"
    return bool(result), str(bool(result)).lower()
