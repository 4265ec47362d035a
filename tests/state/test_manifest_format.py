"""The manifest line is built without a dict and json.dumps: it must stay byte-for-byte the text
json.dumps gives for the documented fields (readers parse it; verify compares it)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from hypothesis import given
from hypothesis import strategies as st

from pyengine.state.manifest import STATUSES, ManifestEntry, format_line, iso_utc, strip_query
from pyengine.state.records import one_line
from pyengine.targets.auth import redact
from pyengine.targets.local_share import crc64_hex_from_etag


def _reference(e: ManifestEntry) -> str:
    url = redact(e.blob_url) if e.blob_url is not None else None
    line = {
        "path": e.path,
        "size_bytes": e.size_bytes,
        "mtime_ns": e.mtime_ns,
        "mtime": _reference_iso(e.mtime_ns),
        "blake3": e.blake3,
        "blob_url": strip_query(url) if url and "sig=" in url.lower() else url,
        "etag": e.etag,
        "status": e.status,
        "error": one_line(e.error) if e.error is not None else None,
        "job_id": e.job_id,
        "encrypted": e.encrypted,
        "crc64": crc64_hex_from_etag(e.etag),
    }
    if e.tenant is not None:
        line["tenant"] = e.tenant
        line["study_uid"] = e.study_uid
    return json.dumps(line, ensure_ascii=True, separators=(",", ":")) + "\n"


def _reference_iso(mtime_ns: int) -> str:
    seconds, ns = divmod(mtime_ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, tz=timezone.utc).replace(microsecond=ns // 1000)
    return stamp.isoformat().replace("+00:00", "Z")


_text = st.text(st.characters(codec="utf-8") | st.sampled_from(["\udcff", '"', "\\", "\n"]))
_opt = st.none() | _text
_mtime = st.integers(min_value=-(10**18), max_value=4 * 10**18)


@given(
    path=_text,
    size_bytes=st.integers(min_value=0, max_value=2**62),
    mtime_ns=_mtime,
    status=st.sampled_from(STATUSES),
    blob_url=st.none()
    | st.sampled_from(
        ["http://h/a/c/x%20y.dcm", "https://a.blob/c/b?sv=1&sig=SECRET", "http://h/c/Bearer x"]
    ),
    blake3=_opt,
    etag=st.none() | st.sampled_from(['"0x8DC"', "crc64:00ff00ff00ff00ff"]),
    error=_opt,
    encrypted=st.booleans(),
    tenant=_opt,
    study_uid=_opt,
)
def test_manifest_line_is_the_json_dumps_text_of_its_fields(**fields: object) -> None:
    entry = ManifestEntry(job_id="20261126-1124-abcd", **fields)  # type: ignore[arg-type]
    assert format_line(entry, redact) == _reference(entry)


@given(_mtime)
def test_iso_utc_matches_datetime_isoformat(mtime_ns: int) -> None:
    assert iso_utc(mtime_ns) == _reference_iso(mtime_ns)


def test_iso_utc_known_values() -> None:
    assert iso_utc(0) == "1970-01-01T00:00:00Z"
    assert iso_utc(1_764_150_000_123_456_789) == "2025-11-26T09:40:00.123456Z"
    assert iso_utc(-1) == "1969-12-31T23:59:59.999999Z"
    year_999_ns = -30_610_224_000 * 10**9 - 60 * 10**9 + 5 * 10**9
    assert iso_utc(year_999_ns) == _reference_iso(year_999_ns)
    assert iso_utc(year_999_ns).startswith("0999-12-31T23:59:05")


_secretish = st.text(
    st.sampled_from(list("sigSIG=:; \t\nabcdeknorstuyzAB\u212a\u017f\u0130'\"")), max_size=40
) | st.sampled_from(["http://h/c/x?sig=abc", "Bearer tok", "SharedKey a:b", "authorization: x"])


@given(_secretish)
def test_a_url_passed_over_by_the_manifest_is_one_redact_leaves_unchanged(url: str) -> None:
    from pyengine.state.manifest import _may_hold_secret

    if not _may_hold_secret(url):
        assert redact(url) == url
