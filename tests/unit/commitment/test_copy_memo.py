"""The recorder reuses the previous step's host copy of a state tensor the scheduler carries
unchanged (a multistep solver's shifted history), and copies anything that changed: the
captured states are exactly the ones a fresh capture makes."""

from __future__ import annotations

import pytest
import torch

from samplerguard.commitment import state
from samplerguard.commitment.state import CopyMemo, capture_schedule, capture_state
from samplerguard.models.digits import make_scheduler


@pytest.fixture(autouse=True)
def memo_every_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tensors here are small: memoise them all, as large latents are."""
    monkeypatch.setattr(state, "MEMO_MIN_BYTES", 0)


class _Carrier:
    """A stand-in scheduler carrying one tensor and a history list."""

    def __init__(self, t: torch.Tensor) -> None:
        self.carried = t
        self.history = [t, t * 2]


@pytest.mark.parametrize(("sampler", "shares"), [("dpmpp_2m", True), ("unipc", True)])
def test_a_memoised_capture_equals_a_fresh_one_and_shares_the_shifted_history(
    sampler: str, shares: bool
) -> None:
    s = make_scheduler(sampler)
    s.set_timesteps(8)
    schedule = capture_schedule(s)
    memo: CopyMemo = {}
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 8, 8, generator=gen)
    previous: dict[str, torch.Tensor] = {}
    shared = 0
    for t in s.timesteps:
        s.scale_model_input(x, t)
        x = s.step(torch.randn(x.shape, generator=gen), t, x).prev_sample
        kept = capture_state(s, schedule, memo)
        fresh = capture_state(s, schedule)
        assert kept.skeleton() == fresh.skeleton()
        got, want = kept.tensors(), fresh.tensors()
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want)
        shared += sum(1 for v in got.values() if any(v is p for p in previous.values()))
        previous = got
    assert (shared > 0) == shares


def test_a_tensor_changed_in_place_is_copied_again() -> None:
    t = torch.zeros(4)
    carrier = _Carrier(t)
    memo: CopyMemo = {}
    first = capture_state(carrier, {}, memo).values["carried"]
    assert isinstance(first, torch.Tensor)
    again = capture_state(carrier, {}, memo).values["carried"]
    assert again is first  # unchanged: the same copy
    t.add_(1.0)  # an in-place change moves the version counter
    changed = capture_state(carrier, {}, memo).values["carried"]
    assert isinstance(changed, torch.Tensor)
    assert changed is not first
    assert torch.equal(changed, torch.ones(4))
    assert torch.equal(first, torch.zeros(4))  # the earlier copy is untouched


def test_an_inference_tensor_is_always_copied() -> None:
    """An inference-mode tensor keeps no version counter: nothing can tell it is unchanged."""
    with torch.inference_mode():
        t = torch.ones(3)
    carrier = _Carrier(t)
    memo: CopyMemo = {}
    first = capture_state(carrier, {}, memo).values["carried"]
    second = capture_state(carrier, {}, memo).values["carried"]
    assert first is not second
    assert isinstance(second, torch.Tensor) and torch.equal(second, t)
    assert all(entry[0] is not t for entry in memo.values())


def test_the_memo_holds_only_the_last_capture() -> None:
    carrier = _Carrier(torch.zeros(2))
    memo: CopyMemo = {}
    capture_state(carrier, {}, memo)
    old = carrier.carried
    carrier.carried = torch.ones(2)
    carrier.history = []
    capture_state(carrier, {}, memo)
    assert all(entry[0] is not old for entry in memo.values())
    assert [entry[0] for entry in memo.values()] == [carrier.carried]


def test_a_small_tensor_is_copied_each_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state, "MEMO_MIN_BYTES", 64 << 10)
    small, large = _Carrier(torch.zeros(16)), _Carrier(torch.zeros(16 << 10))
    for carrier, shared in ((small, False), (large, True)):
        memo: CopyMemo = {}
        first = capture_state(carrier, {}, memo).values["carried"]
        again = capture_state(carrier, {}, memo).values["carried"]
        assert (again is first) == shared
