// The List Blobs page reader (cpp/listing.cpp) on good pages, on each shape it must decline, and
// on truncated and mutated pages (no crash, no read outside the page: the sanitizer run sees it).
// tests/targets/test_wire_listing.py compares it with ElementTree on generated pages.
#include <random>
#include <string>
#include <vector>

#include "check.hpp"
#include "listing.hpp"

using namespace pyengine;

namespace {

const std::string kDecl = "<?xml version=\"1.0\" encoding=\"utf-8\"?>";

std::string blob_xml(const std::string& name, const std::string& extra_meta = "") {
  return "<Blob><Name>" + name +
         "</Name><Properties><Content-Length>1234</Content-Length><Etag>0x8DC1</Etag>"
         "<BlobType>BlockBlob</BlobType></Properties><Metadata><pyenginesize>1234</pyenginesize>"
         "<pyenginemtimens>17</pyenginemtimens>" +
         extra_meta + "</Metadata></Blob>";
}

std::string page_xml(const std::string& blobs, const std::string& marker = "m2") {
  return kDecl + "<EnumerationResults ContainerName=\"c\"><Blobs>" + blobs +
         "</Blobs><NextMarker>" + marker + "</NextMarker></EnumerationResults>\n";
}

bool reads(const std::string& xml) {
  ListingPage page;
  return read_listing_page(xml, page);
}

std::string decoded(const std::string& raw, bool* ok = nullptr) {
  std::string out;
  const bool good = decode_xml_text(raw, out);
  if (ok != nullptr) *ok = good;
  return good ? out : "<declined>";
}

void test_good_page() {
  const std::string xml =
      page_xml(blob_xml("s1/a.dcm") + "\n  " + blob_xml("s1/b&amp;c&#233;.dcm", "<k>x&lt;y</k>") +
                   "<Blob><Name>e</Name><Properties><Content-Length></Content-Length>"
                   "</Properties><Metadata /></Blob>",
               "2!72!MDAw&amp;");
  ListingPage page;
  CHECK(read_listing_page(xml, page));
  CHECK(page.blobs.size() == 3);
  if (page.blobs.size() != 3) return;
  CHECK(page.blobs[0].name == "s1/a.dcm");
  CHECK(page.blobs[0].size_bytes == 1234);
  CHECK(page.blobs[0].etag == "0x8DC1");
  CHECK(page.blobs[0].metadata_count == 2);
  CHECK(page.metadata[0].key == "pyenginesize" && page.metadata[0].value == "1234");
  CHECK(page.blobs[1].name == "s1/b&c\xC3\xA9.dcm");
  CHECK(page.blobs[1].metadata_count == 3);
  const ListedPair& k = page.metadata[page.blobs[1].metadata_first + 2];
  CHECK(k.key == "k" && k.value == "x<y");
  CHECK(page.blobs[2].name == "e" && page.blobs[2].size_bytes == 0 && page.blobs[2].etag.empty());
  CHECK(page.blobs[2].metadata_count == 0);
  CHECK(page.next_marker == "2!72!MDAw&");

  // a metadata key called Name does not rename the blob; the last page has no marker
  const std::string named = "<EnumerationResults><Blobs><Blob><Metadata><Name>x</Name></Metadata>"
                            "<Name>real</Name></Blob></Blobs><NextMarker /></EnumerationResults>";
  CHECK(read_listing_page(named, page));
  CHECK(page.blobs.size() == 1 && page.blobs[0].name == "real" && page.next_marker.empty());
  // an empty listing, with a byte-order mark
  CHECK(read_listing_page("\xEF\xBB\xBF<EnumerationResults><Blobs /></EnumerationResults>", page));
  CHECK(page.blobs.empty());
}

void test_declined_shapes() {
  const std::vector<std::string> odd = {
      page_xml("<Blob><Name Encoded=\"true\">a%20b</Name></Blob>"),
      page_xml(blob_xml("a\r\nb")),
      page_xml("<!-- c -->" + blob_xml("a")),
      page_xml("<Blob><Name><![CDATA[a<b]]></Name></Blob>"),
      page_xml("<?pi x?>" + blob_xml("a")),
      page_xml("<Blob id=\"1\"><Name>a</Name></Blob>"),
      page_xml("<Blob\n><Name>a</Name></Blob>"),
      page_xml("<Blob/>"),
      page_xml("<Blob><Name>a</Name><Metadata x=\"1\"><k>v</k></Metadata></Blob>"),
      page_xml("<Blob><Name>a</Name><Metadata><k/></Metadata></Blob>"),
      page_xml("<Blob><Name>a</Name><Metadata><k a=\"1\">v</k></Metadata></Blob>"),
      page_xml("<Blob><Name>a</Name><Metadata><k>v</j></Metadata></Blob>"),
      page_xml("<Blob><Name>a</Name><Metadata>text<k>v</k></Metadata></Blob>"),
      page_xml("<Blob><Name /></Blob>"),
      page_xml("<Blob><Name>a</Name ></Blob>"),
      page_xml("<Blob><Name>a</Name><Properties><Content-Length>-1</Content-Length></Properties>"
               "</Blob>"),
      page_xml("<Blob><Name>a</Name><Properties><Content-Length>1_0</Content-Length>"
               "</Properties></Blob>"),
      page_xml("<Blob><Name>a</Name><Properties><Content-Length>1234567890123456789"
               "</Content-Length></Properties></Blob>"),
      page_xml(blob_xml("a&b")),
      page_xml(blob_xml("a&nbsp;b")),
      page_xml(blob_xml("a&#0;b")),
      page_xml(blob_xml("a&#xD800;b")),
      page_xml(blob_xml("a&#x110000;b")),
      page_xml(blob_xml("a&#X41;b")),
      page_xml(blob_xml("a")) + "<!-- after -->",
      "<?xml version=\"1.0\" encoding=\"latin-1\"?><EnumerationResults><Blobs>" + blob_xml("a") +
          "</Blobs></EnumerationResults>",
      page_xml(blob_xml("a"), "<x/>"),
      page_xml(blob_xml("a")).substr(0, 100),
  };
  for (const std::string& xml : odd) CHECK(!reads(xml));
  // invalid UTF-8: overlong, surrogate, above U+10FFFF, a lone continuation, cut short
  for (const std::string bad :
       {"\xC0\xAF", "\xED\xA0\x80", "\xF4\x90\x80\x80", "\x80", "\xE2\x82"}) {
    CHECK(!reads(page_xml(blob_xml("a" + bad))));
  }
  CHECK(reads(page_xml(blob_xml("a\xE2\x82\xAC\xF0\x9F\x98\x80"))));  // € and an emoji are fine
}

void test_decode_xml_text() {
  CHECK(decoded("plain") == "plain");
  CHECK(decoded("&lt;&gt;&amp;&quot;&apos;") == "<>&\"'");
  CHECK(decoded("&#65;&#x42;&#x10FFFF;") == "AB\xF4\x8F\xBF\xBF");
  bool ok = true;
  for (const std::string raw :
       {"&", "&amp", "&#;", "&#x;", "&#12a;", "&bogus;", "&#99999999999;"}) {
    decoded(raw, &ok);
    CHECK(!ok);
  }
}

// Every prefix of a good page, each prefix closed again, and random byte changes: the reader
// declines or reads, and never reads outside the page (ASan) or overflows (UBSan).
void test_truncated_and_mutated_pages() {
  const std::string good =
      page_xml(blob_xml("a&amp;b") + blob_xml("c", "<k>&#x41;</k>") + "<Blob><Metadata />" +
               "<Name>d</Name></Blob>");
  CHECK(reads(good));
  for (size_t n = 0; n < good.size(); ++n) {
    // a copy of exactly n bytes, so that ASan sees a read past the cut
    const std::string cut = good.substr(0, n);
    if (n + 1 < good.size()) CHECK(!reads(cut));  // the last byte is a newline after the end
    reads(cut + "</EnumerationResults>");
  }
  std::mt19937 rng(11);
  const std::string alphabet = "<>/&;#x!?\r\n =\"Blob\x80\xC3";
  for (int i = 0; i < 20000; ++i) {
    std::string m = good;
    for (int k = 0; k < 3; ++k) m[rng() % m.size()] = alphabet[rng() % alphabet.size()];
    reads(m);
  }
  CHECK(!reads(""));
  CHECK(!reads("<"));
  CHECK(!reads("<?"));
  CHECK(!reads("<?xml"));
}

}  // namespace

void test_listing_pages() {
  test_good_page();
  test_declined_shapes();
  test_decode_xml_text();
  test_truncated_and_mutated_pages();
}
