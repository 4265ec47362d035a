// One List Blobs page (the online delta's listing) read without a tree: the fixed shape the
// service writes, or a decline so that the Python readers (pyengine/targets/wire.py) take it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <vector>

namespace pyengine {

struct ListedPair {
  std::string_view key;
  std::string_view value;
};

struct ListedBlob {
  std::string_view name;
  uint64_t size_bytes = 0;
  std::string_view etag;
  size_t metadata_first = 0;  // index into ListingPage::metadata
  size_t metadata_count = 0;
};

struct ListingPage {
  std::vector<ListedBlob> blobs;
  std::vector<ListedPair> metadata;  // every blob's pairs, in page order
  std::string_view next_marker;
  // Texts that held entity references, decoded; the views above point here or into the page.
  // A deque: growing it never moves a string already referenced.
  std::deque<std::string> decoded;
};

// Reads one List Blobs page (UTF-8 bytes, untrusted) into `page`, with the answer
// wire._parse_blob_list_plain gives: each blob's name, Content-Length, Etag and <k>v</k>
// metadata, and the next marker. Returns false (a decline; `page` is then meaningless) for any
// shape it does not know: invalid UTF-8, CR, "<!" or "<?" after the declaration, a declaration
// naming another encoding, attributes on Blob or Name (Encoded="true" names), metadata in another
// form, a '&' that starts no XML reference or a reference to no character. Views point into
// `xml` or into page.decoded.
bool read_listing_page(std::string_view xml, ListingPage& page);

// Appends raw with its XML references decoded (&lt; &gt; &amp; &quot; &apos;, &#N; and &#xH;),
// as wire._text does; false for a '&' that starts no reference or names no XML character.
bool decode_xml_text(std::string_view raw, std::string& out);

}  // namespace pyengine
