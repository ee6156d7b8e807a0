"""The verifier's journal (restart semantics) and shard assignment."""

from __future__ import annotations

from pathlib import Path

from samplerguard.verifier.discovery import StaticDiscovery, in_shard
from samplerguard.verifier.journal import Journal


def test_journal_survives_restart_and_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    j = Journal(path)
    steps = j.challenge("pod/a", lambda: [3, 7])
    assert j.challenge("pod/a", lambda: [1, 2]) == steps == [3, 7]
    j.record("pod/b", "ab" * 32, [{"rule": "recipe"}])
    j.record("pod/c", "cd" * 32, [{"rule": "recipe"}])
    j.delivered("pod/c")
    j.close()
    with path.open("a") as fh:
        fh.write('{"judged": "pod/d", "roo')  # crash mid-write
    again = Journal(path)
    assert again.is_judged("pod/b") and again.is_judged("pod/c")
    assert not again.is_judged("pod/d")
    assert set(again.undelivered()) == {"pod/b"}
    # an interrupted challenge keeps its draw across the restart
    assert again.challenge("pod/a", lambda: [0, 1]) == [3, 7]
    again.close()


def test_shards_partition_stably() -> None:
    uids = [f"uid-{i}" for i in range(300)]
    owners = [[s for s in range(3) if in_shard(u, s, 3)] for u in uids]
    assert all(len(o) == 1 for o in owners)  # every pod in exactly one shard
    counts = [sum(o == [s] for o in owners) for s in range(3)]
    assert min(counts) > 60  # and roughly balanced
    assert [in_shard(u, 1, 3) for u in uids] == [in_shard(u, 1, 3) for u in uids]
    assert all(in_shard(u, 0, 1) for u in uids)


def test_static_discovery() -> None:
    [t] = StaticDiscovery(["http://127.0.0.1:1/"]).targets()
    assert t.url == "http://127.0.0.1:1" and t.resource["kind"] == "Pod"
