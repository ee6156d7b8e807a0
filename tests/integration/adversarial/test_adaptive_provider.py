"""The catalogue of an adaptive provider's attacks, each recorded through the real hook.

The provider controls the app: its denoising loop, the tensors and sampler state it hands the
hook, every field of its requests. Each attack below records a well-formed, signed commitment
through the hook's plain-loop API (as a custom serving loop would) and is then challenged the
way the verifier challenges it (:func:`samplerguard.commitment.challenge.verify_challenge`),
with every step opened so the test states which steps reject and why; the catch probability per
challenged request follows from that (see ``benchmarks/bench_rel_l2_table.py``). The catalogue
grows: a new attack is a new ``cheat`` function and a test.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from samplerguard.commitment.challenge import (
    catch_probability,
    challenge_steps,
    verify_challenge,
)
from samplerguard.commitment.digest import output_bytes
from samplerguard.commitment.draws import noise_from
from samplerguard.commitment.request import verify_response
from samplerguard.commitment.statement import Commitment
from samplerguard.errors import MalformedInputError, VerificationError
from samplerguard.hook.local import LocalSink
from samplerguard.hook.recorder import Recorder, TrajectoryRequest, scheduler_config
from samplerguard.models.digits import StepInputs, guided_eps, make_scheduler, scheduler_step
from samplerguard.models.programs import DigitsProgram
from samplerguard.rng import NoiseAuthority, RequestNoise
from samplerguard.rng.escrow import open_escrow

STEPS = 8
LABELS = [3, 7]


@dataclass
class Served:
    commitment: Commitment
    sink: LocalSink
    output: bytes
    params: dict[str, Any]
    escrow: Any = None

    def challenge(self, program: Any, steps: list[int], *, noise: Any = None) -> Any:
        rid = self.commitment.request_id
        return verify_challenge(
            self.commitment,
            self.sink.transcript(rid),
            lambda s: self.sink.opening(rid, s),
            program,
            steps=steps,
            tau=1e-5,
            noise=noise,
        )

    def flagged(self, program: Any) -> list[int]:
        """Every step whose single-step challenge rejects."""
        out = []
        for step in range(self.commitment.n_steps):
            try:
                if not self.challenge(program, [step]).accepted:
                    out.append(step)
            except VerificationError:
                out.append(step)
        return out


@pytest.fixture(scope="module")
def recorder() -> Iterator[tuple[Recorder, LocalSink]]:
    sink = LocalSink()
    rec = Recorder(sink)
    yield rec, sink
    rec.close()


@pytest.fixture(scope="module")
def authority() -> NoiseAuthority:
    return NoiseAuthority(b"k" * 32, "ctr-drbg")


@pytest.fixture(scope="module")
def verifier_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


Cheat = Callable[..., Any]


def serve(
    tiny_unet: Any,
    recorder: tuple[Recorder, LocalSink],
    request_id: str,
    *,
    sampler: str = "euler",
    labels: list[int] = LABELS,
    run_labels: list[int] | None = None,
    latents: torch.Tensor | None = None,
    before_begin: Cheat | None = None,
    before_loop: Cheat | None = None,
    eps_for: Callable[..., torch.Tensor] | None = None,
    after_step: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    output: Callable[[torch.Tensor], bytes] | None = None,
    authority: NoiseAuthority | None = None,
    verifier_key: X25519PrivateKey | None = None,
    noise_fn: Any = None,
    params_labels: list[int] | None = None,
) -> Served:
    """One request served by a provider whose loop the keyword arguments alter."""
    rec, sink = recorder
    scheduler = make_scheduler(sampler)
    scheduler.set_timesteps(STEPS)
    params = {
        "requestId": request_id,
        "tenant": "tenant-a",
        "classLabels": params_labels or labels,
        "steps": STEPS,
        "guidanceScale": 3.0,
    }
    escrow = None
    noise = None
    rng_mode = "framework"
    if authority is not None:
        noise = authority.request("tenant-a", request_id, record_draws=False)
        rng_mode = noise.mode
        assert verifier_key is not None
        escrow = noise.escrow(verifier_key.public_key())
    if latents is None:
        latents = (
            noise.randn((len(labels), 1, 8, 8)) * scheduler.init_noise_sigma
            if noise is not None
            else torch.randn((len(labels), 1, 8, 8), generator=torch.Generator().manual_seed(5))
        )
    request = TrajectoryRequest(
        request_id=request_id,
        tenant="tenant-a",
        pipeline="digits",
        model_name="digits",
        model_digest=DigitsProgram(tiny_unet).model_digest,
        sampler=sampler,
        guidance_scale=3.0,
        steps=STEPS,
        rng_mode=rng_mode,
        params=params,
    )
    inputs = StepInputs(torch.tensor(run_labels or labels), 3.0)
    draw = noise_fn or (noise.noise_fn() if noise is not None else None)
    if before_begin is not None:
        before_begin(scheduler)
    with torch.no_grad(), rec.trajectory(request) as tr:
        tr.begin(scheduler, latents, conditioning={"class_labels": inputs.class_labels})
        if before_loop is not None:
            before_loop(scheduler)
        for i, t in enumerate(scheduler.timesteps):

            def real(t: torch.Tensor = t, z: torch.Tensor = latents) -> torch.Tensor:
                return guided_eps(tiny_unet, scheduler, z, t, inputs)

            eps = eps_for(i, latents, real, t) if eps_for is not None else real()
            if draw is not None:
                with noise_from(draw):
                    latents = scheduler_step(scheduler, eps, t, latents)
            else:
                latents = scheduler_step(scheduler, eps, t, latents)
            if after_step is not None:
                latents = after_step(i, latents)
            tr.step(i, t, latents, scheduler)
        out = output(latents) if output is not None else output_bytes(latents)
        tr.end(latents, out)
    if noise is not None:
        noise.close()
    assert tr.commitment is not None
    return Served(tr.commitment, sink, out, params, escrow)


def _escrow_draw(served: Served, key: X25519PrivateKey) -> Any:
    seed = open_escrow(key, served.escrow, request_id=served.commitment.request_id)
    stream = RequestNoise(seed, record_draws=False)
    return lambda shape, dtype: stream.randn(shape, dtype=dtype)


# -- the honest baseline ----------------------------------------------------------------------


def test_an_honest_provider_passes_every_step_exactly(
    tiny_unet: Any, program: DigitsProgram, recorder: Any
) -> None:
    served = serve(tiny_unet, recorder, "honest-1")
    result = served.challenge(program, list(range(STEPS)))
    assert result.accepted and result.exact and result.tau == 0.0
    assert all(r.worst == 0.0 for r in result.results)
    pub = served.sink.key.public_key()
    verify_response(served.commitment.to_json(), pub, request=served.params, output=served.output)


# -- 1. sampler-state smuggling ---------------------------------------------------------------


def test_a_smuggled_sigma_schedule_is_rejected_at_every_step(
    tiny_unet: Any, program: DigitsProgram, recorder: Any
) -> None:
    """Declares Euler x 8, repeats sigmas so most steps are exact no-ops, and runs the UNet on
    3 steps only. The smuggled ``sigmas`` travel in the committed state."""
    keep = {0, 3, 6}

    def smuggle(scheduler: Any) -> None:
        sig = scheduler.sigmas.clone()
        for i in range(len(sig) - 1):
            if i not in keep:
                sig[i + 1] = sig[i]
        scheduler.sigmas = sig

    def eps_for(i: int, latents: torch.Tensor, real: Any, t: Any) -> torch.Tensor:
        return real() if i in keep else torch.zeros_like(latents)

    served = serve(tiny_unet, recorder, "smuggle-1", before_loop=smuggle, eps_for=eps_for)
    assert served.flagged(program) == list(range(STEPS))
    with pytest.raises(VerificationError, match=r"not genuine.*sigmas") as info:
        served.challenge(program, [1])
    assert info.value.check == "state"


def test_a_schedule_tolerated_across_builds_is_still_re_checked_with_the_verifiers(
    tiny_unet: Any, program: DigitsProgram, recorder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another build (another CPU kernel level) computes the schedule a few bits apart, so the
    verifier tolerates a committed schedule digest other than its own when the declared build
    is one it cannot reproduce. A provider that declares another build to run a stretched
    schedule (every sigma 2 % larger: a different, committed schedule) gains nothing: each
    re-check runs with the verifier's schedule, and every step it ran is rejected."""
    from samplerguard.commitment.fingerprint import build_fingerprint
    from samplerguard.hook import recorder as hook_recorder

    def stretch(scheduler: Any) -> None:
        scheduler.sigmas = scheduler.sigmas * 1.02

    same = serve(tiny_unet, recorder, "stretch-same", before_begin=stretch)
    with pytest.raises(VerificationError, match="schedule digest differs") as info:
        same.challenge(program, [0])
    assert info.value.check == "schedule"
    mine = build_fingerprint(program.device)
    monkeypatch.setattr(
        hook_recorder, "build_fingerprint", lambda d: {**mine, "capability": "DEFAULT"}
    )
    other = serve(tiny_unet, recorder, "stretch-other", before_begin=stretch)
    first = other.challenge(program, [0])
    assert not first.exact and first.differences
    assert other.flagged(program) == list(range(STEPS))
    honest = serve(tiny_unet, recorder, "honest-other")
    assert honest.challenge(program, list(range(STEPS))).accepted


def test_a_shifted_step_counter_is_rejected(
    tiny_unet: Any, program: DigitsProgram, recorder: Any
) -> None:
    """The state's ``_step_index`` is advanced by one after step 2: step 3 then runs with step
    4's sigmas while the committed timestep stays step 3's."""

    served_ok = serve(tiny_unet, recorder, "counter-0")
    assert served_ok.challenge(program, [3]).accepted

    def shift(scheduler: Any) -> None:
        original = scheduler.step

        def step(*a: Any, **kw: Any) -> Any:
            out = original(*a, **kw)
            if (
                scheduler._step_index == 3 or scheduler._step_index == 5
            ):  # step 3 runs on step 4's sigmas ...
                scheduler._step_index = 4
            return out

        scheduler.step = step

    served = serve(tiny_unet, recorder, "counter-1", before_loop=shift)
    with pytest.raises(VerificationError, match="not genuine") as info:
        served.challenge(program, [3])
    assert info.value.check == "state"


# -- 2. output swap ---------------------------------------------------------------------------


def test_a_served_output_that_is_not_the_decode_is_rejected_on_every_challenge(
    tiny_unet: Any, program: DigitsProgram, recorder: Any
) -> None:
    other = torch.zeros(2, 1, 8, 8)
    served = serve(tiny_unet, recorder, "swap-out-1", output=lambda z: output_bytes(other))
    for step in range(STEPS):  # probability 1: whichever step is drawn
        with pytest.raises(VerificationError, match="output binding: the served output") as info:
            served.challenge(program, [step])
        assert info.value.check == "output-binding"


def test_a_final_latent_that_is_not_the_last_step_is_rejected(
    tiny_unet: Any, program: DigitsProgram, recorder: Any
) -> None:
    _, sink = recorder
    served = serve(tiny_unet, recorder, "swap-final-1")
    record = sink.record("swap-final-1")
    forged = dataclasses.replace(record, final=record.final + 1.0)
    sink._records["swap-final-1"] = forged
    with pytest.raises(VerificationError, match="output binding") as info:
        served.challenge(program, [0])
    assert info.value.check == "output-binding"


# -- 3. request swap --------------------------------------------------------------------------


def test_a_conditioning_swap_is_rejected_by_the_verifier(
    tiny_unet: Any, program: DigitsProgram, recorder: Any
) -> None:
    """The consumer asked for [3, 7]; the provider commits those parameters but runs [3, 3]."""
    served = serve(tiny_unet, recorder, "swap-req-1", run_labels=[3, 3])
    with pytest.raises(
        VerificationError, match="request binding: conditioning 'class_labels'"
    ) as info:
        served.challenge(program, [0])
    assert info.value.check == "request-binding"


def test_a_request_swap_is_rejected_by_the_consumer(
    tiny_unet: Any, program: DigitsProgram, recorder: Any
) -> None:
    """The provider commits parameters of its own ([3, 3]) and runs them: the verifier sees a
    consistent trajectory, but the consumer's one call rejects it."""
    served = serve(tiny_unet, recorder, "swap-req-2", labels=[3, 3])
    assert served.challenge(program, [0]).accepted
    asked = {**served.params, "classLabels": [3, 7]}
    with pytest.raises(VerificationError, match="request binding: the commitment binds") as info:
        verify_response(
            served.commitment.to_json(),
            served.sink.key.public_key(),
            request=asked,
            output=served.output,
        )
    assert info.value.check == "request-binding"
    with pytest.raises(VerificationError, match="output binding") as info:
        verify_response(
            served.commitment.to_json(),
            served.sink.key.public_key(),
            request=served.params,
            output=b"another image",
        )
    assert info.value.check == "output-binding"


# -- 4 and 5. replay and step noise (DRBG mode) ------------------------------------------------


def test_a_replayed_trajectory_under_a_new_request_id_fails_the_noise_check(
    tiny_unet: Any,
    program: DigitsProgram,
    recorder: Any,
    authority: NoiseAuthority,
    verifier_key: X25519PrivateKey,
) -> None:
    old = serve(tiny_unet, recorder, "replay-old", authority=authority, verifier_key=verifier_key)
    old_z = old.sink.transcript("replay-old").initial
    assert old.challenge(program, [0], noise=_escrow_draw(old, verifier_key)).accepted
    new = serve(
        tiny_unet,
        recorder,
        "replay-new",
        latents=old_z,
        authority=authority,
        verifier_key=verifier_key,
    )
    with pytest.raises(VerificationError, match="noise binding: z_N") as info:
        new.challenge(program, [0], noise=_escrow_draw(new, verifier_key))
    assert info.value.check == "noise-binding"


def test_an_escrow_moved_to_another_request_is_refused(
    tiny_unet: Any,
    recorder: Any,
    authority: NoiseAuthority,
    verifier_key: X25519PrivateKey,
) -> None:
    a = serve(tiny_unet, recorder, "escrow-a", authority=authority, verifier_key=verifier_key)
    with pytest.raises(VerificationError, match="request id does not match") as info:
        open_escrow(verifier_key, a.escrow, request_id="escrow-b")
    assert info.value.check == "escrow"


def test_steered_step_noise_is_rejected_at_the_step_that_draws_it(
    tiny_unet: Any,
    program: DigitsProgram,
    recorder: Any,
    authority: NoiseAuthority,
    verifier_key: X25519PrivateKey,
) -> None:
    """Euler ancestral draws noise every step; the provider replaces step 5's draw with noise of
    its choosing (the committed digests are of what it really used)."""
    noise = authority.request("tenant-a", "steer-1", record_draws=False)
    escrow = noise.escrow(verifier_key.public_key())
    z = noise.randn((2, 1, 8, 8)) * make_scheduler("euler_ancestral").init_noise_sigma
    calls = {"n": 0}

    def steered(shape: tuple[int, ...], dtype: torch.dtype, dev: torch.device) -> torch.Tensor:
        calls["n"] += 1
        real = noise.randn(shape, dtype=dtype)
        return torch.full(shape, 0.5, dtype=dtype) if calls["n"] == 6 else real

    served = serve(
        tiny_unet,
        recorder,
        "steer-1",
        sampler="euler_ancestral",
        latents=z,
        noise_fn=steered,
    )
    served.escrow = escrow
    # the verifier regenerates the stream from the escrow: z_N, then one draw per step; the
    # steered draw is step 5's
    with pytest.raises(VerificationError, match="noise binding: step 5 noise 0") as info:
        served.challenge(program, [0], noise=_escrow_draw(served, verifier_key))
    assert info.value.check == "noise-binding"
    noise.close()


# -- 7. sparse cheats -------------------------------------------------------------------------


def test_feature_caching_every_4th_step_is_caught_by_every_window_of_4(
    tiny_unet: Any, program: DigitsProgram, recorder: Any
) -> None:
    cache: dict[str, torch.Tensor] = {}

    def eps_for(i: int, latents: torch.Tensor, real: Any, t: Any) -> torch.Tensor:
        if i % 4 == 3:
            return cache["eps"]
        cache["eps"] = real()
        return cache["eps"]

    served = serve(tiny_unet, recorder, "cache-1", eps_for=eps_for)
    assert served.flagged(program) == [3, 7]
    for start in range(STEPS - 3):  # any window of 4 holds a cached step
        assert not served.challenge(program, list(range(start, start + 4))).accepted
    assert catch_probability(STEPS, 1, 2) == pytest.approx(0.25)


def test_guidance_skipped_on_the_last_steps_is_flagged_there(
    tiny_unet: Any, program: DigitsProgram, recorder: Any
) -> None:
    def eps_for(
        i: int, latents: torch.Tensor, real: Callable[[], torch.Tensor], t: Any
    ) -> torch.Tensor:
        if i < STEPS - 2:
            return real()
        scale = make_scheduler("euler")  # scale_model_input only; the loop's scheduler steps
        scale.set_timesteps(STEPS)
        scale._step_index = i
        return guided_eps(tiny_unet, scale, latents, t, StepInputs(torch.tensor(LABELS), 1.0))

    served = serve(tiny_unet, recorder, "late-cfg-1", eps_for=eps_for)
    assert served.flagged(program) == [STEPS - 2, STEPS - 1]


def test_a_one_in_a_million_nudge_is_caught_when_its_step_is_challenged(
    tiny_unet: Any, program: DigitsProgram, recorder: Any
) -> None:
    """A covert channel: one latent moved by 1e-6 of its norm. The verifier reproduces the
    build, so the tolerance is 0 and the nudged step fails."""

    def after_step(i: int, latents: torch.Tensor) -> torch.Tensor:
        if i == 4:
            nudged: torch.Tensor = latents + 1e-6 * latents.norm() / math.sqrt(latents.numel())
            return nudged
        return latents

    served = serve(tiny_unet, recorder, "nudge-1", after_step=after_step)
    assert served.flagged(program) == [4]
    result = served.challenge(program, [4])
    assert result.exact and not result.accepted and 0 < result.results[0].rel_l2 < 1e-5


# -- 6 and bad input: recipes the verifier cannot build ----------------------------------------


def test_a_bogus_scheduler_config_is_a_clear_rejection_not_a_crash(
    tiny_unet: Any, program: DigitsProgram, recorder: Any
) -> None:
    declared = make_scheduler("euler")
    config = {**scheduler_config(declared), "beta_schedule": "bogus"}
    _, sink = recorder
    served = serve(tiny_unet, recorder, "bogus-0")
    fields = dict(served.commitment.recipe)
    fields["scheduler_config"] = config
    bad = _recommit(sink, served, fields)
    with pytest.raises(VerificationError, match="cannot be built from its config") as info:
        bad.challenge(program, [0])
    assert info.value.check == "sampler"


def _recommit(sink: LocalSink, served: Served, recipe: dict[str, Any]) -> Served:
    """The provider signs a recipe of its choosing over a recorded trajectory (it controls the
    hook, so it can): the leaves no longer match, or the recipe is hostile."""
    from samplerguard.commitment.statement import commit

    record = sink.record(served.commitment.request_id)
    forged = dataclasses.replace(record, recipe=recipe)
    c = commit(forged, sink.key, request_id=served.commitment.request_id, tenant="tenant-a")
    return Served(c, sink, served.output, served.params)


def test_windows_cover_consecutive_steps() -> None:
    for _ in range(200):
        # windows are clipped at both ends, so two may cover as little as one step
        steps = challenge_steps(20, 2, 4)
        assert 1 <= len(steps) <= 8 and all(0 <= s < 20 for s in steps)
        runs = 1 + sum(1 for a, b in itertools.pairwise(steps) if b != a + 1)
        assert runs <= 2, steps  # at most two runs of consecutive steps
    assert challenge_steps(3, 1, 10) == [0, 1, 2]
    with pytest.raises(MalformedInputError):
        challenge_steps(0, 1, 1)


# -- bad input: every malformed or hostile transcript is a clear rejection ----------------------


def test_malformed_and_forged_transcripts_are_refused_with_their_check(
    tiny_unet: Any, program: DigitsProgram, recorder: Any
) -> None:
    from samplerguard.commitment.plan import sampler_plan
    from samplerguard.commitment.transcript import Transcript, check_transcript

    _, sink = recorder
    served = serve(tiny_unet, recorder, "bad-transcript")
    good = sink.transcript("bad-transcript")
    raw = good.to_bytes()
    for data, match in (
        (b"", "truncated"),
        (raw[:-5], "truncated or padded"),
        (b"\x08" + b"\x00" * 7 + b"{not json", "not JSON"),
    ):
        with pytest.raises(MalformedInputError, match=match):
            Transcript.from_bytes(data)
    plan = sampler_plan(served.commitment.recipe, tuple(good.initial.shape), good.initial.dtype)
    leaves = list(good.meta.leaves)
    leaves[3], leaves[4] = leaves[4], leaves[3]  # two step leaves swapped
    swapped = Transcript(
        good.meta.model_copy(update={"leaves": leaves}),
        {"initial": good.initial, "final": good.final},
    )
    with pytest.raises(VerificationError, match="do not rebuild the committed root") as info:
        check_transcript(served.commitment, swapped, plan, program)
    assert info.value.check == "inclusion"
    hostile = {**served.params, "classLabels": ["seven"]}
    bad_request = Transcript(
        good.meta.model_copy(update={"request": hostile}),
        {"initial": good.initial, "final": good.final},
    )
    with pytest.raises(VerificationError, match="request binding") as info:
        check_transcript(served.commitment, bad_request, plan, program)
    assert info.value.check == "request-binding"
    no_request = Transcript(
        good.meta.model_copy(update={"request": None}),
        {"initial": good.initial, "final": good.final},
    )
    with pytest.raises(VerificationError, match="binds no request parameters") as info:
        check_transcript(served.commitment, no_request, plan, program)
    assert info.value.check == "request-binding"
    other = Transcript(good.meta, {"initial": good.initial, "final": good.final + 1})
    with pytest.raises(VerificationError, match="final latent is not committed") as info:
        check_transcript(served.commitment, other, plan, program)
    assert info.value.check == "output-binding"


def test_a_nan_in_the_committed_state_fails_instead_of_scoring_zero() -> None:
    import math

    from samplerguard.commitment.recheck import RecheckResult, _state_rel_l2
    from samplerguard.commitment.state import SamplerState

    want = SamplerState(values={"model_outputs": [torch.ones(2, 2)]})
    nan = torch.ones(2, 2)
    nan[0, 0] = float("nan")
    got = SamplerState(values={"model_outputs": [nan]})
    assert _state_rel_l2(got, want) == math.inf
    result = RecheckResult("r", 0, 0.0, float("nan"), 0.0, tau=1.0)
    assert result.worst == math.inf and not result.accepted


def test_windows_cover_the_first_and_last_steps_as_often_as_the_middle() -> None:
    import random

    rng = random.Random(3)
    counts = [0] * 20
    for _ in range(20_000):
        for s in challenge_steps(20, 1, 4, rng):  # type: ignore[arg-type]
            counts[s] += 1
    share = [c / 20_000 for c in counts]
    expected = 4 / (20 + 4 - 1)
    assert all(abs(x - expected) < 0.015 for x in share), share


def test_a_spoofed_build_fingerprint_cannot_loosen_an_exact_policy(
    tiny_unet: Any, program: DigitsProgram, recorder: Any
) -> None:
    """The fingerprint is the provider's claim: declaring a build the verifier cannot reproduce
    would move the check from exact to tau. A policy that demands the same build
    (``requireSameBuild``) fails such a trajectory; an honest one still passes."""
    _, sink = recorder
    served = serve(tiny_unet, recorder, "spoof-1")
    rid = served.commitment.request_id
    exact = verify_challenge(
        served.commitment,
        sink.transcript(rid),
        lambda s: sink.opening(rid, s),
        program,
        steps=[4],
        tau=1e-5,
        require_exact=True,
    )
    assert exact.exact and exact.accepted
    fields = dict(served.commitment.recipe)
    fields["runtime"] = {**fields["runtime"], "torch": "0.0.1"}
    spoofed = _recommit(sink, served, fields)
    with pytest.raises(VerificationError, match="cannot reproduce the declared build") as info:
        verify_challenge(
            spoofed.commitment,
            sink.transcript(rid),
            lambda s: sink.opening(rid, s),
            program,
            steps=[4],
            tau=1e-5,
            require_exact=True,
        )
    assert info.value.check == "build"


def test_declaring_another_build_reaches_no_looser_tau_than_this_verifiers_entries(
    tiny_unet: Any, program: DigitsProgram, recorder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider picks the fingerprint it declares. Claiming the producer side of a loose
    entry calibrated for *another* verifier, or a build no entry covers, only reaches the
    tightest calibrated tau; a nudge above it is still rejected."""
    from samplerguard.commitment.fingerprint import build_fingerprint
    from samplerguard.hook import recorder as hook_recorder
    from samplerguard.policy.spec import VerificationRule
    from samplerguard.policy.tolerance import select_tolerance

    mine = build_fingerprint(program.device)
    rule = VerificationRule.model_validate(
        {
            "calibration": [
                {  # loose, but calibrated for a GPU verifier: never this one
                    "producer": {"device": "cuda", "deviceName": "NVIDIA H100"},
                    "verifier": {"device": "cuda", "deviceName": "NVIDIA A100"},
                    "tau": 5e-3,
                    "honestSamples": 6000,
                    "falseRejection": 1e-3,
                },
                {  # tight, for this verifier
                    "producer": {"capability": "SPOOFED"},
                    "verifier": {"capability": mine["capability"]},
                    "tau": 1e-6,
                    "honestSamples": 6000,
                    "falseRejection": 1e-3,
                },
            ]
        }
    )

    def after_step(i: int, latents: torch.Tensor) -> torch.Tensor:
        return latents * (1 + 1e-4) if i == 4 else latents

    _, sink = recorder
    for n, claim in enumerate(
        (
            {"device": "cuda", "deviceName": "NVIDIA H100"},  # the loose entry's producer
            {"torch": "0.0.1"},  # nothing covers it: the fallback
            {"capability": "SPOOFED"},  # the tight entry
        )
    ):
        # the provider's hook records the fingerprint it chooses
        monkeypatch.setattr(hook_recorder, "build_fingerprint", lambda d, c=claim: {**mine, **c})
        served = serve(tiny_unet, recorder, f"claim-{n}", after_step=after_step)
        rid = served.commitment.request_id
        declared = served.commitment.recipe["runtime"]
        tolerance = select_tolerance(rule, declared, mine)
        assert tolerance.tau == 1e-6, (claim, tolerance.why)
        result = verify_challenge(
            served.commitment,
            sink.transcript(rid),
            functools.partial(sink.opening, rid),
            program,
            steps=[4],
            tau=tolerance.tau,
        )
        assert not result.exact and not result.accepted, (claim, result.results[0].worst)
