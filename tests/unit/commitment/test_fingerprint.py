"""The build fingerprint: what it records, what differs, and the flags a re-check reproduces."""

from __future__ import annotations

import torch

from samplerguard.commitment.fingerprint import build_fingerprint, differences, reproduce


def _mkldnn() -> bool:
    # torch types the flag as its descriptor (ContextProp); the value read is a bool
    return bool(torch.backends.mkldnn.enabled)


def test_this_process_reproduces_its_own_fingerprint() -> None:
    fp = build_fingerprint()
    assert fp["device"] == "cpu" and fp["threads"] == torch.get_num_threads()
    assert {"torch", "diffusers", "numpy", "python", "capability", "mkldnn"} <= set(fp)
    assert differences(fp) == []


def test_versions_and_devices_differ_but_settable_flags_do_not() -> None:
    fp = build_fingerprint()
    other = {**fp, "torch": "0.0.1", "device": "cuda", "threads": 97, "mkldnn": not fp["mkldnn"]}
    diff = differences(other)
    assert any(d.startswith("torch: '0.0.1'") for d in diff)
    assert any(d.startswith("device: 'cuda'") for d in diff)
    assert not any(d.startswith(("threads", "mkldnn")) for d in diff)
    assert differences(None) == ["no build fingerprint recorded"]


def test_reproduce_sets_the_recorded_flags_and_restores_them() -> None:
    threads, mkldnn = torch.get_num_threads(), _mkldnn()
    with reproduce({"threads": 1, "mkldnn": not mkldnn}):
        assert torch.get_num_threads() == 1
        assert _mkldnn() is (not mkldnn)
    assert torch.get_num_threads() == threads and _mkldnn() is mkldnn
    with reproduce({"threads": "many", "mkldnn": "yes"}):  # hostile values are ignored
        assert torch.get_num_threads() == threads and _mkldnn() is mkldnn


def test_concurrent_rechecks_never_see_each_others_flags() -> None:
    """The flags are process-wide: a re-check wanting other settings waits for the first to
    leave, and one wanting the same settings runs beside it."""
    import threading

    mkldnn = _mkldnn()
    inside, release, seen = threading.Event(), threading.Event(), []

    def first() -> None:
        with reproduce({"mkldnn": not mkldnn}):
            inside.set()
            release.wait(10)
            seen.append(("first", _mkldnn()))

    def other() -> None:
        with reproduce({"mkldnn": mkldnn}):
            seen.append(("other", _mkldnn()))

    def same() -> None:
        with reproduce({"mkldnn": not mkldnn}):
            seen.append(("same", _mkldnn()))

    a = threading.Thread(target=first)
    a.start()
    assert inside.wait(10)
    b, c = threading.Thread(target=other), threading.Thread(target=same)
    b.start()
    c.start()
    c.join(10)
    assert seen == [("same", not mkldnn)]  # shared the settings; the other one still waits
    assert b.is_alive()
    release.set()
    a.join(10)
    b.join(10)
    assert seen == [("same", not mkldnn), ("first", not mkldnn), ("other", mkldnn)]
    assert _mkldnn() is mkldnn
