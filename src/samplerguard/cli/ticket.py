"""``samplerguard ticket``: the gateway's request tickets (see docs/rng.md, "Request tickets").

    samplerguard ticket keygen --key gateway.key
    samplerguard ticket issue --key gateway.key --tenant acme --request params.json

``keygen`` writes a new Ed25519 private key (mode 0600; an existing file is never overwritten)
and prints the ``spec.rng.tickets`` block that makes a policy trust it. ``issue`` prints one
ticket (a DSSE envelope, JSON) for one request: the request id and tenant, and with
``--request`` the digest of the consumer's request parameters, which the trajectory must then
commit exactly. A gateway library does the same with
:func:`samplerguard.commitment.ticket.issue_ticket`.

Exit 0 on success, 2 on unusable input.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import yaml

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "ticket",
        help="make a gateway key, or issue a request ticket with one",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="ticket_action", required=True)
    keygen = actions.add_parser("keygen", help="write a new gateway key, print its policy block")
    keygen.add_argument("--key", type=Path, required=True, help="private key file to create")
    keygen.add_argument(
        "--name", default="gateway", help="the signer's name in the policy (default: gateway)"
    )
    issue = actions.add_parser("issue", help="print a ticket for one request")
    issue.add_argument("--key", type=Path, required=True, help="the gateway's private key")
    issue.add_argument("--tenant", required=True, help="the tenant the request is served for")
    issue.add_argument(
        "--request-id", help="the request id (default: the request file's, else a new one)"
    )
    issue.add_argument(
        "--request",
        type=Path,
        help="JSON file of the consumer's request parameters: their digest is bound",
    )
    issue.add_argument(
        "--lifetime", type=int, default=300, help="seconds the ticket is valid (default: 300)"
    )
    p.set_defaults(_run=run)


def run(args: argparse.Namespace) -> int:
    from samplerguard.errors import MalformedInputError

    try:
        if args.ticket_action == "keygen":
            return _keygen(args.key, args.name)
        return _issue(args)
    except MalformedInputError as exc:
        print(f"samplerguard ticket: {exc}", file=sys.stderr)
        return 2


def _keygen(path: Path, name: str) -> int:
    from samplerguard.errors import MalformedInputError
    from samplerguard.sidecar.keys import create_key, public_pem

    try:
        key = create_key(path)
    except FileExistsError:
        raise MalformedInputError(f"{path} exists; a key is never overwritten") from None
    except OSError as exc:
        raise MalformedInputError(f"cannot create {path}: {exc.strerror}") from None
    block = {"rng": {"tickets": {"signers": [{"name": name, "publicKey": public_pem(key)}]}}}
    print(f"# {path}: new gateway key; trust it in the policy's spec:", file=sys.stderr)
    print(yaml.safe_dump(block, sort_keys=False), end="")
    return 0


def _issue(args: argparse.Namespace) -> int:
    from samplerguard.commitment.request import check_request_params, request_digest
    from samplerguard.commitment.ticket import issue_ticket
    from samplerguard.errors import MalformedInputError
    from samplerguard.sidecar.keys import load_key

    key = load_key(args.key)
    digest, request_id = None, args.request_id
    if args.request is not None:
        try:
            params = check_request_params(json.loads(args.request.read_bytes()))
        except OSError as exc:
            raise MalformedInputError(f"cannot read {args.request}: {exc.strerror}") from None
        except ValueError as exc:
            raise MalformedInputError(f"{args.request} is not JSON: {exc}") from None
        if params["tenant"] != args.tenant:
            raise MalformedInputError(
                f"{args.request} is for tenant {params['tenant']!r}, not {args.tenant!r}"
            )
        if request_id is not None and params["requestId"] != request_id:
            raise MalformedInputError(
                f"{args.request} names request {params['requestId']!r}, not {request_id!r}"
            )
        request_id, digest = params["requestId"], request_digest(params)
    envelope = issue_ticket(
        key,
        request_id=request_id or f"req-{uuid.uuid4().hex}",
        tenant=args.tenant,
        request_digest=digest,
        lifetime=args.lifetime,
    )
    print(json.dumps(envelope, separators=(",", ":")))
    return 0
