"""The worker's remembered schedule digest is always the digest of the tensors it is given."""

from __future__ import annotations

import torch

from samplerguard.commitment.state import ScheduleDigests, capture_schedule, schedule_digest
from samplerguard.demo.providers import make_scheduler


def _schedule(steps: int = 20) -> dict[str, torch.Tensor]:
    sched = make_scheduler("dpmpp_2m")
    sched.set_timesteps(steps)
    return dict(capture_schedule(sched))


def test_the_same_schedule_gives_the_same_digest_every_time() -> None:
    digests = ScheduleDigests()
    schedule = _schedule()
    want = schedule_digest(schedule)
    assert [digests(schedule) for _ in range(3)] == [want] * 3
    assert digests(_schedule()) == want  # another set-up of the same schedule: equal bytes


def test_any_change_of_the_bytes_gives_the_new_digest() -> None:
    digests = ScheduleDigests()
    schedule = _schedule()
    digests(schedule)
    changes = {
        "other steps": _schedule(25),
        "one sigma nudged in place": {**schedule, "sigmas": schedule["sigmas"].clone()},
        "-0.0 for 0.0": {**schedule, "sigmas": schedule["sigmas"].clone()},
        "another dtype": {**schedule, "sigmas": schedule["sigmas"].double()},
        "another shape": {**schedule, "sigmas": schedule["sigmas"][:-1]},
        "a tensor less": {k: v for k, v in schedule.items() if k != "betas"},
        "a tensor more": {**schedule, "extra": torch.zeros(3)},
    }
    nudged = changes["one sigma nudged in place"]["sigmas"]
    nudged[3] = torch.nextafter(nudged[3], torch.tensor(float("inf"), dtype=nudged.dtype))
    sigmas = changes["-0.0 for 0.0"]["sigmas"]
    sigmas[sigmas == 0] = -0.0
    assert bool((sigmas == 0).any())  # the schedule ends in a zero sigma
    for what, changed in changes.items():
        got = digests(changed)
        assert got == schedule_digest(changed), what
        assert got != schedule_digest(schedule), what
        assert digests(schedule) == schedule_digest(schedule), what  # and back


def test_a_tensor_changed_in_place_after_it_was_remembered_is_seen() -> None:
    digests = ScheduleDigests()
    schedule = _schedule()
    before = digests(schedule)
    schedule["timesteps"][0] += 1  # the same tensor object, new bytes
    assert digests(schedule) == schedule_digest(schedule) != before
