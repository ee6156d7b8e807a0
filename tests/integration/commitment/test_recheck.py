"""The re-check: honest openings score exactly 0; forged, mismatched and cheating ones fail."""

from __future__ import annotations

import struct
from typing import Any

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from samplerguard.commitment.opening import Opening
from samplerguard.commitment.recheck import recheck_step
from samplerguard.commitment.statement import Commitment
from samplerguard.errors import MalformedInputError, VerificationError


def _verified(rec: Any) -> Commitment:
    return Commitment.verify(rec.commitment.to_json(), rec.sink.key.public_key())


def test_every_honest_step_rechecks_to_exactly_zero(record: Any, program: Any) -> None:
    rec = record()
    c = _verified(rec)
    assert c.n_steps == 6
    for step in range(c.n_steps):
        r = recheck_step(c, Opening.from_bytes(rec.opening_bytes(step)), program, tau=0.0)
        assert (r.rel_l2, r.state_rel_l2, r.model_rel_l2) == (0.0, 0.0, 0.0)
        assert r.accepted


def test_signature_by_another_key_is_rejected(record: Any) -> None:
    rec = record()
    with pytest.raises(VerificationError, match="no signature verifies"):
        Commitment.verify(rec.commitment.to_json(), Ed25519PrivateKey.generate().public_key())


def test_tampered_payload_is_rejected(record: Any) -> None:
    import base64
    import json

    rec = record()
    env = json.loads(rec.commitment.to_json())
    payload = json.loads(base64.b64decode(env["payload"]))
    payload["predicate"]["recipe"]["guidance_scale"] = 1.0
    env["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    with pytest.raises(VerificationError, match="DSSE signature check failed"):
        Commitment.verify(json.dumps(env), rec.sink.key.public_key())


def test_opening_for_another_trajectory_is_rejected(record: Any, program: Any) -> None:
    a, b = record(request_id="req-a"), record(request_id="req-b")
    with pytest.raises(VerificationError, match="opening is for request 'req-b'"):
        recheck_step(_verified(a), Opening.from_bytes(b.opening_bytes(2)), program, tau=1e-5)


def test_proof_for_another_root_is_rejected(record: Any, program: Any) -> None:
    a, b = record(request_id="same"), record(provider="guidance-off", request_id="same")
    with pytest.raises(VerificationError, match="opening claims root"):
        recheck_step(_verified(a), Opening.from_bytes(b.opening_bytes(1)), program, tau=1e-5)


def test_wrong_step_index_is_rejected(record: Any, program: Any) -> None:
    rec = record()
    opening = Opening.from_bytes(rec.opening_bytes(3))
    meta = opening.meta.model_copy(update={"step": 2})
    with pytest.raises(VerificationError, match="does not carry leaf 3"):
        recheck_step(_verified(rec), Opening(meta, opening.tensors), program, tau=1e-5)


def test_wrong_tree_size_is_rejected(record: Any, program: Any) -> None:
    rec = record()
    opening = Opening.from_bytes(rec.opening_bytes(1))
    meta = opening.meta.model_copy(update={"tree_size": opening.meta.tree_size + 1})
    with pytest.raises(VerificationError, match="size"):
        recheck_step(_verified(rec), Opening(meta, opening.tensors), program, tau=1e-5)


@pytest.mark.parametrize(
    "replacement",
    [
        lambda t: t.to(torch.float64),
        lambda t: t.reshape(t.shape[0], -1),
        lambda t: t + 1e-3,
    ],
    ids=["dtype", "shape", "values"],
)
def test_substituted_latent_fails_its_digest(record: Any, program: Any, replacement: Any) -> None:
    rec = record()
    opening = Opening.from_bytes(rec.opening_bytes(2))
    tensors = dict(opening.tensors)
    tensors["latent_in"] = replacement(tensors["latent_in"])
    with pytest.raises(VerificationError, match="input latent digest mismatch"):
        recheck_step(_verified(rec), Opening(opening.meta, tensors), program, tau=1e-5)


def test_unknown_scheduler_is_rejected(record: Any, program: Any) -> None:
    from samplerguard.commitment.recheck import build_scheduler

    with pytest.raises(VerificationError, match="unknown sampler 'warp_drive'"):
        build_scheduler({"sampler": "warp_drive", "scheduler_class": "X"})
    with pytest.raises(VerificationError, match="expected 'EulerDiscreteScheduler'"):
        build_scheduler({"sampler": "euler", "scheduler_class": "DDIMScheduler"})


def test_other_model_is_rejected_before_any_step(record: Any) -> None:
    from samplerguard.models.digits import build_unet
    from samplerguard.models.programs import DigitsProgram

    rec = record()
    other = DigitsProgram(build_unet(seed=1).eval())
    with pytest.raises(VerificationError, match="recipe declares model"):
        recheck_step(_verified(rec), Opening.from_bytes(rec.opening_bytes(0)), other, tau=1e-5)


@pytest.mark.parametrize("cheat", ["substituted-model", "guidance-off"])
def test_every_step_of_a_whole_trajectory_cheat_is_caught(
    record: Any, program: Any, cheat: str
) -> None:
    rec = record(provider=cheat)
    c = _verified(rec)
    for step in range(c.n_steps):
        r = recheck_step(c, Opening.from_bytes(rec.opening_bytes(step)), program, tau=1e-5)
        assert not r.accepted, f"{cheat} step {step} passed with {r.worst:.2e}"
        assert r.worst > 1e-4


def test_fabricated_and_skipped_steps_are_caught_where_they_are(record: Any, program: Any) -> None:
    for cheat in ("fabricated-step", "fewer-steps"):
        rec = record(provider=cheat)
        c = _verified(rec)
        for step in range(c.n_steps):
            r = recheck_step(c, Opening.from_bytes(rec.opening_bytes(step)), program, tau=1e-5)
            assert r.accepted == (step not in rec.faked), (cheat, step, r.worst)


def test_scheduler_swap_is_caught(record: Any, program: Any) -> None:
    rec = record(provider="scheduler-swap")
    with pytest.raises(VerificationError, match="schedule digest differs"):
        recheck_step(_verified(rec), Opening.from_bytes(rec.opening_bytes(0)), program, tau=1e-5)


def test_truncated_openings_are_refused_at_every_cut(record: Any) -> None:
    data = record().opening_bytes(1)
    for cut in [0, 4, 8, 9, 100, len(data) // 2, len(data) - 1]:
        with pytest.raises(MalformedInputError):
            Opening.from_bytes(data[:cut])


def test_corrupted_header_and_padding_are_refused(record: Any) -> None:
    data = record().opening_bytes(1)
    (n,) = struct.unpack("<Q", data[:8])
    with pytest.raises(MalformedInputError, match="truncated or corrupted"):
        Opening.from_bytes(struct.pack("<Q", n + 10**9) + data[8:])
    with pytest.raises(MalformedInputError, match="not JSON"):
        Opening.from_bytes(data[:8] + b"\xff" * n + data[8 + n :])
    with pytest.raises(MalformedInputError, match="truncated or padded"):
        Opening.from_bytes(data + b"\x00" * 16)


def test_flipped_tensor_byte_is_caught_by_the_digest(record: Any, program: Any) -> None:
    rec = record()
    data = bytearray(rec.opening_bytes(2))
    data[-3] ^= 0x40  # inside the last tensor's bytes
    with pytest.raises(VerificationError, match=r"digest mismatch|does not match"):
        recheck_step(_verified(rec), Opening.from_bytes(bytes(data)), program, tau=1e-5)
