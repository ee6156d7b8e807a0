"""Policy sources: files re-read on change, the cluster's watch events applied."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from samplerguard.errors import PolicyError
from samplerguard.webhook import FilePolicySource
from samplerguard.webhook.kube import KubernetesPolicySource
from tests.support.webhook import policy


def _write(path: Path, *docs: object) -> None:
    path.write_text(yaml.safe_dump_all(docs))


def test_files_reload_and_bad_edits_keep_the_last_good_set(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", policy("a", "reg.io/a/**"), {"kind": "ConfigMap"})
    source = FilePolicySource(tmp_path)
    [first] = source.snapshot().policies
    assert first.metadata.uid.startswith("local-")
    _write(tmp_path / "b.yaml", policy("b", "reg.io/b/**", namespace="ml"))
    assert source.refresh() is True
    assert {p.metadata.name for p in source.snapshot().policies} == {"a", "b"}
    # An edit changes the resourceVersion (the cache key), not the uid.
    edited = policy("a", "reg.io/a/**", "warn")
    _write(tmp_path / "a.yaml", edited)
    source.refresh()
    again = next(p for p in source.snapshot().policies if p.metadata.name == "a")
    assert again.metadata.uid == first.metadata.uid
    assert again.metadata.resource_version != first.metadata.resource_version
    (tmp_path / "a.yaml").write_text(
        "kind: ClusterSamplerPolicy\nmetadata: {name: a}\nspec: {mode: nope}\n"
    )
    assert source.refresh() is False
    assert "mode" in (source.last_error or "")
    assert len(source.snapshot().policies) == 2


def test_first_load_must_succeed(tmp_path: Path) -> None:
    _write(tmp_path / "p.yaml", policy("a", "x/**"), policy("a", "y/**"))
    with pytest.raises(PolicyError, match="defined twice"):
        FilePolicySource(tmp_path)
    with pytest.raises(PolicyError, match="neither a file nor a directory"):
        FilePolicySource(tmp_path / "missing")


def _obj(name: str, rv: str, **kw: object) -> dict[str, object]:
    body = policy(name, "reg.io/**", **kw)  # type: ignore[arg-type]
    body["metadata"] = dict(body["metadata"], uid=f"uid-{name}", resourceVersion=rv)  # type: ignore[call-overload]
    return body


def _ready(source: KubernetesPolicySource) -> bool:
    # a call, not the property: mypy would carry the narrowing of one assert into the next
    return source.ready


def test_watch_events() -> None:
    source = KubernetesPolicySource(api=object())
    assert not _ready(source)
    source.replace_all("clustersamplerpolicies", [_obj("a", "1")])
    source.replace_all("samplerpolicies", [_obj("b", "2", namespace="ml")])
    assert _ready(source)
    source.apply_event("clustersamplerpolicies", {"type": "ADDED", "object": _obj("c", "3")})
    source.apply_event("clustersamplerpolicies", {"type": "MODIFIED", "object": _obj("a", "4")})
    snap = source.snapshot()
    versions = {p.metadata.name: p.metadata.resource_version for p in snap.policies}
    assert versions == {"a": "4", "b": "2", "c": "3"}
    # An edit into an invalid state withdraws the old version; a delete removes it.
    broken = _obj("c", "5")
    broken["spec"] = {"mode": "sometimes"}
    source.apply_event("clustersamplerpolicies", {"type": "MODIFIED", "object": broken})
    source.apply_event(
        "samplerpolicies", {"type": "DELETED", "object": _obj("b", "6", namespace="ml")}
    )
    assert {p.metadata.name for p in source.snapshot().policies} == {"a"}
    assert source.snapshot().generation > snap.generation
