"""The build fingerprint: what it records, what differs, and the flags a re-check reproduces."""

from __future__ import annotations

import torch

from samplerguard.commitment.fingerprint import build_fingerprint, differences, reproduce


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
    threads, mkldnn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    with reproduce({"threads": 1, "mkldnn": not mkldnn}):
        assert torch.get_num_threads() == 1
        assert torch.backends.mkldnn.enabled is (not mkldnn)
    assert torch.get_num_threads() == threads and torch.backends.mkldnn.enabled is mkldnn
    with reproduce({"threads": "many", "mkldnn": "yes"}):  # hostile values are ignored
        assert torch.get_num_threads() == threads and torch.backends.mkldnn.enabled is mkldnn
