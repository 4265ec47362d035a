"""The online delta's merge-join (engine/delta.py) on synthetic sorted streams, and the scan
order it relies on (engine/scan.py walks each directory in blob-listing order)."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import pytest

from pyengine.engine import delta as delta_mod
from pyengine.engine.delta import UNKNOWN, ListingJoin
from pyengine.engine.scan import SourceFile, scan


@dataclass
class Blob:
    name: str
    size_bytes: int = 1
    etag: str = "0x8D1"
    metadata: dict[str, str] = field(default_factory=dict)


async def _stream(names):
    for n in names:
        yield Blob(n)


def _utf8_sorted(names):
    return sorted(names, key=lambda n: n.encode("utf-8"))


async def _join(listed: list[str], scanned: list[str]):
    j = ListingJoin(_stream(listed))
    try:
        found = {}
        for name in scanned:
            r = await j.lookup(name)
            found[name] = r if r is UNKNOWN or r is None else r.name
        await j.finish()
        return found, j, [b.name for b in j.unmatched]
    finally:
        await j.aclose()
        j.close()


TRICKY = [
    "a.b",
    "a/x",
    "a/x/y",
    "a0",
    "a-b",
    "A",
    "Z/1",
    "é",
    "e",
    "e/f",
    "日本/1",
    "ß",
    "\U0001f600/x",
    "\uff41",  # fullwidth a: above the BMP's surrogate range in UTF-8, below U+1F600
    "x y",
    "x!y",
    "x/y.z",
    "x/y/z",
    "x/y-z",
]


def test_join_pairs_every_scanned_name_with_its_listed_blob():
    listed = _utf8_sorted(TRICKY)
    found, j, unmatched = asyncio.run(_join(listed, listed))
    assert found == {n: n for n in listed}
    assert unmatched == [] and j.complete and j.listed == len(listed)


def test_join_reports_new_files_as_absent_and_unclaimed_blobs_as_unmatched():
    listed = _utf8_sorted(TRICKY)
    gone = {"a/x", "ß", "x/y/z"}
    new = {"a/w", "a/x0", "zz"}
    scanned = _utf8_sorted((set(listed) - gone) | new)
    found, j, unmatched = asyncio.run(_join(listed, scanned))
    assert {n for n, r in found.items() if r is None} == new
    assert {n for n, r in found.items() if isinstance(r, str)} == set(listed) - gone
    assert sorted(unmatched) == sorted(gone) and j.complete


def test_join_answers_unknown_for_a_scan_name_out_of_order():
    found, j, _ = asyncio.run(_join(["a", "b", "c"], ["b", "a", "c"]))
    assert found == {"b": "b", "a": UNKNOWN, "c": "c"}
    assert j.unknown == 1


def test_join_answers_unknown_once_the_listing_goes_backwards_and_is_not_reused():
    # the order is checked per batch as it arrives: the whole batch is in doubt
    found, j, _ = asyncio.run(_join(["a", "c", "b", "d"], ["a", "b", "d"]))
    assert set(found.values()) == {UNKNOWN}
    assert j.broken and not j.complete


def test_join_keeps_order_across_listing_batches(monkeypatch):
    monkeypatch.setattr(delta_mod, "_BATCH", 7)
    names = _utf8_sorted(f"d{i % 13}/f{i}" for i in range(200))
    keep = names[::3]
    found, j, unmatched = asyncio.run(_join(names, keep))
    assert found == {n: n for n in keep}
    assert len(unmatched) == len(names) - len(keep) and j.complete and j.listed == 200


def test_listed_blob_has_lowercase_metadata_names_and_a_quoted_etag():
    async def one():
        async def listing():
            yield Blob("a", etag="0x8DABC", metadata={"PyEngineSize": "1", "encryptiondata": "{}"})

        j = ListingJoin(listing())
        r = await j.lookup("a")
        await j.aclose()
        j.close()
        return r

    r = asyncio.run(one())
    assert r.etag == '"0x8DABC"'
    assert r.metadata == {"pyenginesize": "1", "encryptiondata": "{}"}


def test_join_raises_a_listing_failure_in_the_caller():
    async def failing():
        yield Blob("a")
        raise OSError("listing failed")

    async def run():
        j = ListingJoin(failing())
        try:
            await j.lookup("b")
        finally:
            await j.aclose()
            j.close()

    with pytest.raises(OSError, match="listing failed"):
        asyncio.run(run())


@pytest.mark.parametrize("seed", [1, 2])
def test_scan_yields_files_in_the_order_list_blobs_gives_their_names(tmp_path, seed):
    rng = random.Random(seed)
    alphabet = ["a", "A", "b", ".", "-", "_", " ", "0", "é", "ß", "日", "\U0001f600"]
    names = {*TRICKY[:4], "x/y.z", "x/y/z", "x/y-z", "é/1", "e"}
    while len(names) < 120:
        depth = rng.randint(1, 4)
        parts = [
            "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 3))) for _ in range(depth)
        ]
        if any(p in (".", "..") or p.endswith(".") for p in parts):
            continue
        names.add("/".join(parts))
    # a name may not be both a file and a directory: keep the deepest
    files = {n for n in names if not any(m.startswith(n + "/") for m in names)}
    for n in files:
        p = tmp_path / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    got = [i.rel_path for i in scan(str(tmp_path)) if isinstance(i, SourceFile)]
    assert got == _utf8_sorted(files)
