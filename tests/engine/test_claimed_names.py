"""The names a run's source files claim (engine/mirror.py ClaimedNames): what deletion spares.
Every name added is found again exactly, whatever characters it holds."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pyengine.engine.mirror import ClaimedNames

# names as the scan can give them: any text SQLite can store (no lone surrogates)
names = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@given(st.lists(names, max_size=30), st.lists(names, max_size=10))
def test_every_added_name_is_claimed_and_no_other(added, others):
    claimed = ClaimedNames()
    try:
        claimed.add(added[: len(added) // 2], files=1)
        claimed.add(added[len(added) // 2 :], files=2)
        assert all(n in claimed for n in added)
        assert not any(n in claimed for n in others if n not in added)
        assert claimed.files == 3
    finally:
        claimed.close()


def test_names_json_escapes_come_back_as_they_were():
    odd = ['a"b', "c\\d", "é/日本", "x\ny", "", "tab\t", "a/b", "\u2028", "nul\x00end"]
    claimed = ClaimedNames()
    claimed.add(odd, files=len(odd))
    assert all(n in claimed for n in odd) and "a" not in claimed
    claimed.close()
