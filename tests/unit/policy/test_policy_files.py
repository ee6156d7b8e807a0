"""Policy files have one reader: every loader reads a file the same way and refuses the same."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from samplerguard.errors import MalformedInputError, PolicyError
from samplerguard.policy.load import MAX_POLICY_BYTES, load_policy, read_documents
from samplerguard.webhook.policies import load_policy_files
from tests.support.webhook import policy


def _verify_image_policies(path: Path) -> list[str]:
    from samplerguard.cli.verify_image import _Inputs, _load_policies

    inputs = _Inputs()
    _load_policies([path], inputs)
    return [p.metadata.name for p in inputs.policies]


def test_documents_drop_empty_ones_and_expand_a_list(tmp_path: Path) -> None:
    file = tmp_path / "p.yaml"
    listed = {"apiVersion": "v1", "kind": "List", "items": [policy("b", "x/**"), None]}
    file.write_text("---\n" + yaml.safe_dump_all([policy("a", "y/**"), None, listed]))
    docs = read_documents(file)
    assert [d["metadata"]["name"] for d in docs] == ["a", "b"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"x" * (MAX_POLICY_BYTES + 1), "larger than"),
        (b"kind: \xff\xfe\n", "not UTF-8"),
        (b"{{{{", "not YAML"),
        (b"kind: List\nitems: 3\n", "items are not a list"),
    ],
)
def test_every_loader_refuses_an_unusable_file_with_the_same_words(
    tmp_path: Path, content: bytes, message: str
) -> None:
    file = tmp_path / "p.yaml"
    file.write_bytes(content)
    with pytest.raises(PolicyError, match=message):
        read_documents(file)
    with pytest.raises(PolicyError, match=message):
        load_policy(str(file))
    with pytest.raises(PolicyError, match=message):
        load_policy_files(file)
    with pytest.raises(MalformedInputError, match=message) as info:
        _verify_image_policies(file)
    assert not isinstance(info.value, PolicyError)  # verify-image reports its own class


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"cannot read policy file .*absent\.yaml"):
        read_documents(tmp_path / "absent.yaml")


def test_the_loaders_agree_on_a_listed_policy(tmp_path: Path) -> None:
    """A kubectl List holding one policy, after an empty document, is that policy for the data
    plane, the webhook's file source, verify-image and adapt-policy alike."""
    file = tmp_path / "p.yaml"
    listed = {"apiVersion": "v1", "kind": "List", "items": [policy("only", "reg.io/**")]}
    file.write_text("---\n" + yaml.safe_dump_all([None, listed]))
    assert load_policy(str(file)).metadata.name == "only"
    assert [p.metadata.name for p in load_policy_files(file)] == ["only"]
    assert _verify_image_policies(file) == ["only"]

    from samplerguard.cli import adapt_policy

    args = argparse.Namespace(policy=file, registry=None, public_key=None)
    assert adapt_policy.run(args) == 0
