"""Who this operator replica is, for kopf's peering and the Lease.

Two facts kopf would otherwise work out for itself, wrongly in the operator's image:

* the identity: kopf's default asks ``getpass.getuser()``, which looks the uid up in
  ``/etc/passwd``; the image runs as uid 65532, which has no entry there, so kopf's start-up
  dies with ``KeyError: 'getpwuid(): uid not found: 65532'``. The identity here comes from the
  pod's name (the Downward API's ``POD_NAME``), else the host name, and never from the user
  database;
* the peering priority: replicas of one Deployment all start with kopf's default priority 0,
  and peers of equal priority all pause ("Pausing all operators, including self"), so with two
  replicas no policy would ever get a status. Each replica's priority is derived from its
  identity instead: distinct pods get distinct priorities, the highest one serves, the others
  stand by and take over when its peering entry expires.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Mapping

__all__ = ["operator_identity", "peering_priority"]

#: kopf keeps the priority as a JSON number in the peering object; stay within int32.
_PRIORITY_SPAN = 2**31 - 2


def operator_identity(env: Mapping[str, str] | None = None) -> str:
    """``POD_NAME`` (or kopf's own ``POD_ID``) when set, else ``samplerguard-operator@<host>``."""
    env = os.environ if env is None else env
    for name in ("POD_NAME", "POD_ID"):
        value = env.get(name, "").strip()
        if value:
            return value
    return f"samplerguard-operator@{socket.gethostname()}"


def peering_priority(identity: str) -> int:
    """A priority in ``[1, 2**31 - 2]``, stable for one identity and spread over identities
    (SHA-256), so two replicas never tie."""
    if not identity:
        raise ValueError("an operator identity must not be empty")
    digest = hashlib.sha256(identity.encode()).digest()
    return 1 + int.from_bytes(digest[:8], "big") % _PRIORITY_SPAN
