"""parse_blob_list reads List Blobs pages with str.find and small patterns: it must give what
ElementTree gives for every page, and hand any page of another shape to ElementTree."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from urllib.parse import quote
from xml.sax.saxutils import escape

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyengine.targets import wire
from pyengine.targets.wire import parse_blob_list, parse_blob_list_tree

_chars = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")) | st.sampled_from(
    ["&", "<", ">", '"', "'", "\n", "\t"]
)
_text = st.text(_chars, max_size=20)
_key = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)


@st.composite
def _blob(draw: st.DrawFn) -> str:
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
    return f"<Blob>{name_xml}{props}{meta_xml}</Blob>"


@given(
    blobs=st.lists(_blob(), max_size=6),
    marker=st.sampled_from(["", "2!72!MDAwMDc1", "a&amp;b"]),
    pretty=st.booleans(),
)
def test_listing_page_reads_as_elementtree_reads_it(
    blobs: list[str], marker: str, pretty: bool
) -> None:
    sep = "\n  " if pretty else ""
    page = (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<EnumerationResults ServiceEndpoint="http://h/" ContainerName="c">{sep}<Blobs>'
        + sep.join(blobs)
        + f"</Blobs>{sep}<NextMarker>{marker}</NextMarker></EnumerationResults>"
    ).encode()
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
