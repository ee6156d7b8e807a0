"""An audit bundle: what a sidecar serves about one trajectory, as files that outlive it.

Layout of a bundle directory (``samplerguard export-trajectory`` and ``samplerguard demo
--export`` write it, ``samplerguard verify-trajectory --bundle`` reads it)::

    trajectory.json              the sidecar's GET /v1/trajectories/{id} answer (.commitment
                                 is the signed DSSE envelope)
    public-key.pem               the sidecar's Ed25519 key, from GET /v1/public-key
    transcript.safetensors       GET /v1/trajectories/{id}/transcript
    openings/<step>.safetensors  GET /v1/trajectories/{id}/openings/<step>, for every step

Nothing in a bundle is trusted: ``verify-trajectory`` checks the signature, the Merkle
inclusion of every opened leaf and re-runs the steps. The public key is a convenience copy; an
auditor who holds the sidecar's key from elsewhere passes it with ``--public-key``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from samplerguard.errors import MalformedInputError
from samplerguard.verifier.client import SidecarClient

__all__ = [
    "OPENINGS_DIR",
    "PUBLIC_KEY_FILE",
    "TRAJECTORY_FILE",
    "TRANSCRIPT_FILE",
    "bundle_openings",
    "export_bundle",
]

TRAJECTORY_FILE = "trajectory.json"
PUBLIC_KEY_FILE = "public-key.pem"
TRANSCRIPT_FILE = "transcript.safetensors"
OPENINGS_DIR = "openings"
#: A trajectory has at most 4096 steps (the commitment's tree size bound).
MAX_STEPS = 4096


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def export_bundle(
    client: SidecarClient, trajectory_id: str, out: Path, *, steps: Iterable[int] | None = None
) -> Path:
    """Fetch one trajectory's commitment, key, transcript and openings into ``out``.

    ``steps`` limits the openings (default: every step). Raises the client's errors
    (:class:`~samplerguard.errors.TemporaryError` when the sidecar is unreachable,
    :class:`~samplerguard.errors.MalformedInputError` for an unknown trajectory).
    """
    doc = client.trajectory(trajectory_id)
    n = doc.get("steps")
    if not isinstance(n, int) or isinstance(n, bool) or not 0 < n <= MAX_STEPS:
        raise MalformedInputError(f"trajectory {trajectory_id!r}: step count {n!r} is invalid")
    _, key_doc = client.public_key()
    wanted = sorted(set(range(n) if steps is None else steps))
    if any(not 0 <= s < n for s in wanted):
        raise MalformedInputError(f"trajectory {trajectory_id!r} has steps 0..{n - 1} only")
    (out / OPENINGS_DIR).mkdir(parents=True, exist_ok=True)
    _write(out / TRAJECTORY_FILE, json.dumps(doc, indent=1, sort_keys=True).encode())
    _write(out / PUBLIC_KEY_FILE, str(key_doc["publicKey"]).encode())
    _write(out / TRANSCRIPT_FILE, client.transcript(trajectory_id))
    for step in wanted:
        _write(out / OPENINGS_DIR / f"{step}.safetensors", client.opening(trajectory_id, step))
    return out


def bundle_openings(bundle: Path, steps: Iterable[int] | None = None) -> list[Path]:
    """The opening files of a bundle, in step order (``steps``: only those)."""
    folder = bundle / OPENINGS_DIR
    if steps is not None:
        return [folder / f"{s}.safetensors" for s in sorted(set(steps))]
    found = []
    for p in folder.glob("*.safetensors") if folder.is_dir() else ():
        if p.stem.isascii() and p.stem.isdigit():
            found.append((int(p.stem), p))
    return [p for _, p in sorted(found)]
