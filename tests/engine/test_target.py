"""pyengine.targets.base: the engine's one interface to a target, and BlobStore implementing it."""

from __future__ import annotations

import inspect

import pytest

from pyengine.targets.azure_blob import BlobProps, BlobStats, BlobStore
from pyengine.targets.base import StoredBlob, Target, TargetStats


def _members(protocol: type) -> list[str]:
    return [n for n in vars(protocol) if not n.startswith("_")]


def _parameters(fn: object) -> list[tuple[str, object, bool]]:
    """(name, kind, has a default) of each parameter: what a caller relies on."""
    return [
        (p.name, p.kind, p.default is not inspect.Parameter.empty)
        for p in inspect.signature(fn).parameters.values()  # type: ignore[arg-type]
    ]


def test_target_protocol_names_exactly_the_calls_the_engine_makes() -> None:
    methods = {n for n in _members(Target) if callable(getattr(Target, n))}
    assert methods == {
        "ensure_container",
        "put_block",
        "put_block_list",
        "put_blob",
        "get_properties",
        "get_block_list",
        "list_blobs",
        "delete_blob",
        "set_metadata",
        "discard_uncommitted",
    }
    assert "stats" in Target.__annotations__


@pytest.mark.parametrize("name", [n for n in _members(Target) if callable(getattr(Target, n))])
def test_blob_store_has_each_target_method_with_the_same_parameters(name: str) -> None:
    ours, theirs = getattr(Target, name), getattr(BlobStore, name)
    assert _parameters(theirs) == _parameters(ours)
    assert inspect.iscoroutinefunction(theirs) == inspect.iscoroutinefunction(ours) or (
        name == "list_blobs" and inspect.isasyncgenfunction(theirs)
    )


def test_blob_props_and_stats_carry_the_fields_the_engine_reads() -> None:
    for protocol, impl in ((StoredBlob, BlobProps), (TargetStats, BlobStats)):
        fields = set(impl.__dataclass_fields__)  # type: ignore[attr-defined]
        assert set(_members(protocol)) <= fields, impl


def test_a_blob_store_is_a_target() -> None:
    target: Target = BlobStore.__new__(BlobStore)  # no session: only the type is checked here
    assert isinstance(target, BlobStore)
