"""parse_blob_list reads List Blobs pages natively (cpp/listing.cpp), else with str.find and
small patterns: each must give what ElementTree gives for every page it reads, and hand any page
of another shape on (native → patterns → ElementTree)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from urllib.parse import quote
from xml.sax.saxutils import escape

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyengine import _core
from pyengine.targets import wire
from pyengine.targets.wire import parse_blob_list, parse_blob_list_tree

_chars = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")) | st.sampled_from(
    ["&", "<", ">", '"', "'", "\n", "\t"]
)
_text = st.text(_chars, max_size=20)
_key = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)


@st.composite
def _blob_parts(draw: st.DrawFn) -> tuple[str, bool]:
    """A <Blob> element, and whether the native reader must read it (not decline it)."""
    name = draw(_text)
    encoded = draw(st.booleans())
    name_xml = (
        f'<Name Encoded="true">{escape(quote(name))}</Name>'
        if encoded
        else f"<Name>{escape(name)}</Name>"
    )
    props = (
        f"<Properties><Last-Modified>Thu, 26 Nov 2026</Last-Modified>"
        f"<Etag>{escape(draw(_text))}</Etag>"
        f"<Content-Length>{draw(st.integers(0, 2**50))}</Content-Length>"
        "<Content-Type /><BlobType>BlockBlob</BlobType></Properties>"
    )
    meta = draw(st.dictionaries(_key, _text, max_size=4))
    form = draw(st.sampled_from(["full", "empty", "none", "selfclosing-value"]))
    if form == "full" or (form == "selfclosing-value" and meta):
        items = [f"<{k}>{escape(v)}</{k}>" for k, v in meta.items()]
        if form == "selfclosing-value":
            items[0] = f"<{next(iter(meta))} />"
        meta_xml = f"<Metadata>{''.join(items)}</Metadata>"
    elif form == "empty":
        meta_xml = "<Metadata />"
    else:
        meta_xml = ""
    native = not encoded and not (form == "selfclosing-value" and meta)
    return f"<Blob>{name_xml}{props}{meta_xml}</Blob>", native


def _blob() -> st.SearchStrategy[str]:
    return _blob_parts().map(lambda parts: parts[0])


def _page(blobs: list[str], marker: str, pretty: bool) -> bytes:
    sep = "\n  " if pretty else ""
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<EnumerationResults ServiceEndpoint="http://h/" ContainerName="c">{sep}<Blobs>'
        + sep.join(blobs)
        + f"</Blobs>{sep}<NextMarker>{marker}</NextMarker></EnumerationResults>"
    ).encode()


@settings(deadline=None)
@given(
    blobs=st.lists(_blob(), max_size=6),
    marker=st.sampled_from(["", "2!72!MDAwMDc1", "a&amp;b"]),
    pretty=st.booleans(),
)
def test_listing_page_reads_as_elementtree_reads_it(
    blobs: list[str], marker: str, pretty: bool
) -> None:
    page = _page(blobs, marker, pretty)
    assert parse_blob_list(page) == parse_blob_list_tree(page)


def test_a_metadata_key_called_name_does_not_rename_the_blob() -> None:
    page = (
        b"<EnumerationResults><Blobs><Blob><Metadata><Name>x</Name></Metadata>"
        b"<Name>real</Name><Properties><Content-Length>5</Content-Length></Properties></Blob>"
        b"</Blobs><NextMarker /></EnumerationResults>"
    )
    blobs, marker = parse_blob_list(page)
    assert [(b.name, b.size_bytes, b.metadata) for b in blobs] == [("real", 5, {"Name": "x"})]
    assert marker == ""


@pytest.mark.parametrize(
    "odd",
    [
        "<Blob><Name><![CDATA[a<b]]></Name></Blob>",
        "<!-- note --><Blob><Name>a</Name></Blob>",
        "<Blob><Name>a\r\nb</Name></Blob>",
        '<Blob><Name>a</Name><Metadata x="1"><k>v</k></Metadata></Blob>',
    ],
)
def test_a_page_of_another_shape_is_read_by_elementtree(
    odd: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = f"<EnumerationResults><Blobs>{odd}</Blobs></EnumerationResults>".encode()
    calls = []
    tree = wire.parse_blob_list_tree
    monkeypatch.setattr(wire, "parse_blob_list_tree", lambda c: calls.append(c) or tree(c))
    assert wire.parse_blob_list(page) == tree(page)
    assert calls == [page]


def test_a_malformed_page_still_raises() -> None:
    with pytest.raises(ET.ParseError):
        parse_blob_list(b"<EnumerationResults><Blobs><Blob><Name>a</Blob>")


# ---- the native reader (cpp/listing.cpp) ----------------------------------------------------

_MARKERS = st.sampled_from(["", "2!72!MDAwMDc1", "a&amp;b", "&#x41;&#66;&lt;"])


def _native(page: bytes) -> tuple[list[wire.BlobProps], str] | None:
    return _core.read_listing_page(page, wire.BlobProps)


@settings(deadline=None)
@given(blobs=st.lists(_blob_parts(), max_size=6), marker=_MARKERS, pretty=st.booleans())
def test_native_reader_reads_as_elementtree_or_declines_an_encoded_or_odd_blob(
    blobs: list[tuple[str, bool]], marker: str, pretty: bool
) -> None:
    page = _page([xml for xml, _ in blobs], marker, pretty)
    native = _native(page)
    if all(reads for _, reads in blobs):
        assert native == parse_blob_list_tree(page)
    else:
        assert native is None


def test_parse_blob_list_takes_a_service_page_from_the_native_reader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    page = _page(["<Blob><Name>a&amp;b</Name><Metadata><k>v</k></Metadata></Blob>"], "m", False)
    expected = parse_blob_list_tree(page)

    def python_reader(content: bytes) -> None:
        raise AssertionError("the Python readers ran")

    monkeypatch.setattr(wire, "_parse_blob_list_python", python_reader)
    assert parse_blob_list(page) == expected == ([wire.BlobProps("a&b", 0, "", {"k": "v"})], "m")


_BLOB = "<Blob><Name>a</Name><Properties><Content-Length>5</Content-Length></Properties></Blob>"


@pytest.mark.parametrize(
    "odd",
    [
        '<Blob><Name Encoded="true">a%20b</Name></Blob>',
        "<Blob><Name>a\r\nb</Name></Blob>",
        "<!-- note -->" + _BLOB,
        "<Blob><Name><![CDATA[a<b]]></Name></Blob>",
        "<?pi x?>" + _BLOB,
        '<Blob Deleted="true"><Name>a</Name></Blob>',
        "<Blob\n><Name>a</Name></Blob>",
        '<Blob><Name>a</Name><Metadata x="1"><k>v</k></Metadata></Blob>',
        "<Blob><Name>a</Name><Metadata><k /></Metadata></Blob>",
        '<Blob><Name>a</Name><Metadata><k a="1">v</k></Metadata></Blob>',
        "<Blob><Name>a</Name><Metadata><k>v</k >\n</Metadata></Blob>",
        "<Blob><Name>a</Name><Properties><Content-Length> 5</Content-Length></Properties></Blob>",
        "<Blob><Name>a&#0;</Name></Blob>",
        "<Blob><Name>a&bogus;</Name></Blob>",
    ],
)
def test_native_reader_declines_a_page_of_another_shape(odd: str) -> None:
    page = f"<EnumerationResults><Blobs>{odd}</Blobs></EnumerationResults>".encode()
    assert _native(page) is None
    assert parse_blob_list(page) == wire._parse_blob_list_python(page)


@pytest.mark.parametrize(
    "page",
    [
        b'<?xml version="1.0" encoding="iso-8859-1"?><EnumerationResults><Blobs>'
        + _BLOB.encode()
        + b"</Blobs></EnumerationResults>",
        b"<EnumerationResults><Blobs><Blob><Name>a\xe9</Name></Blob></Blobs></EnumerationResults>",
        b"<EnumerationResults><Blobs><Blob><Name>\xed\xa0\x80</Name></Blob></Blobs>"
        b"</EnumerationResults>",
        b"<EnumerationResults><Blobs><Blob><Name>\xc0\xaf</Name></Blob></Blobs>"
        b"</EnumerationResults>",
    ],
)
def test_native_reader_declines_another_encoding_or_invalid_utf8(page: bytes) -> None:
    assert _native(page) is None


def _python_or_error(page: bytes) -> object:
    try:
        return wire._parse_blob_list_python(page)
    except Exception as e:  # the error itself is the expected answer
        return type(e)


def test_a_truncated_page_is_declined_and_raises_as_before() -> None:
    page = _page([_BLOB, _BLOB.replace("<Name>a", "<Name>b&amp;")], "m", True)
    for n in range(len(page)):
        assert _native(page[:n]) is None
        with pytest.raises(ET.ParseError):
            parse_blob_list(page[:n])


@settings(deadline=None)
@given(
    blobs=st.lists(_blob(), min_size=1, max_size=3),
    edits=st.lists(
        st.tuples(st.integers(0, 10**6), st.sampled_from(list(b'<>/&;#x!?\r\n ="Blob\x80\xc3'))),
        min_size=1,
        max_size=4,
    ),
)
def test_a_garbled_page_reads_as_the_python_readers_read_it_or_is_declined(
    blobs: list[str], edits: list[tuple[int, int]]
) -> None:
    page = bytearray(_page(blobs, "m", False))
    for at, byte in edits:
        page[at % len(page)] = byte
    native = _native(bytes(page))
    if native is not None:
        assert native == _python_or_error(bytes(page))


@settings(deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash_the_native_reader(garbage: bytes) -> None:
    native = _native(b"<EnumerationResults><Blobs>" + garbage + b"</Blobs></EnumerationResults>")
    assert native is None or isinstance(native[0], list)
