// The List Blobs page reader. It follows wire._parse_blob_list_plain step by step (the same finds
// in the same order), so a page it accepts reads exactly as there; wherever that reader would
// depend on a regex's backtracking or on Python's int(), this one declines instead.
#include "listing.hpp"

#include <cstring>

namespace pyengine {
namespace {

constexpr size_t npos = std::string_view::npos;

bool starts_with(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}

// CR never gets here (the page check declines it): XML would turn CR LF into LF.
bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n'; }

bool is_digit(char c) { return c >= '0' && c <= '9'; }

// The bytes a metadata name may hold: ASCII only (names travel as x-ms-meta-* headers), and
// none that Python's \s matches (wire's pattern would then read another key).
bool is_name_byte(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || c == '_' ||
         c == '-' || c == '.' || c == ':';
}

// Strict UTF-8 as Python's bytes.decode("utf-8") takes it: no overlong forms, no surrogates,
// nothing above U+10FFFF (Unicode 15, table 3-7).
bool valid_utf8(const unsigned char* p, size_t n) {
  size_t i = 0;
  while (i < n) {
    // ASCII runs, 8 bytes at a time: nearly all of a listing
    while (i + 8 <= n) {
      uint64_t word;
      std::memcpy(&word, p + i, 8);
      if (word & 0x8080808080808080ULL) break;
      i += 8;
    }
    if (i >= n) break;
    const unsigned char c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return false;
    }
    if (n - i < len) return false;
    if (p[i + 1] < lo || p[i + 1] > hi) return false;
    for (size_t k = 2; k < len; ++k) {
      if (p[i + k] < 0x80 || p[i + k] > 0xBF) return false;
    }
    i += len;
  }
  return true;
}

bool ascii_iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

// The XML declaration, as wire._UTF8_DECLARATION takes it: no '?' before "?>", and an encoding,
// if named, is utf-8. Sets `after` past it.
bool read_declaration(std::string_view s, size_t& after) {
  const size_t q = s.find('?', 2);
  if (q == npos || q + 1 >= s.size() || s[q + 1] != '>') return false;
  const std::string_view decl = s.substr(0, q);
  if (!starts_with(decl, "<?xml") || decl.size() < 6 || !is_space(decl[5])) return false;
  for (size_t i = 0; i + 8 <= decl.size(); ++i) {
    if (!ascii_iequals(decl.substr(i, 8), "encoding")) continue;
    size_t j = i + 8;
    while (j < decl.size() && is_space(decl[j])) ++j;
    if (j >= decl.size() || decl[j] != '=') return false;
    ++j;
    while (j < decl.size() && is_space(decl[j])) ++j;
    if (j + 7 > decl.size()) return false;
    const char quote = decl[j];
    if ((quote != '"' && quote != '\'') || decl[j + 6] != quote) return false;
    if (!ascii_iequals(decl.substr(j + 1, 5), "utf-8")) return false;
    break;  // the first "encoding" decides
  }
  after = q + 2;
  return true;
}

// wire._plain_page's checks, plus the UTF-8 check the Python decode makes.
bool plain_page(std::string_view s) {
  if (!valid_utf8(reinterpret_cast<const unsigned char*>(s.data()), s.size())) return false;
  if (s.find('\r') != npos) return false;
  size_t start = 0;
  if (starts_with(s, "<?") && !read_declaration(s, start)) return false;
  size_t last = s.size();
  while (last > 0 && (is_space(s[last - 1]) || s[last - 1] == '\v' || s[last - 1] == '\f')) {
    --last;
  }
  constexpr std::string_view kClose = "</EnumerationResults>";
  if (last < kClose.size() || s.substr(last - kClose.size(), kClose.size()) != kClose) return false;
  for (size_t lt = s.find('<', start); lt != npos; lt = s.find('<', lt + 1)) {
    const std::string_view tag = s.substr(lt + 1, 5);
    if (!tag.empty() && (tag[0] == '!' || tag[0] == '?')) return false;
    // wire reads "<Blob " as another shape, and its find of "<Blob>" would miss a "<Blob\n>"
    // or "<Blob/>" although each is a blob (<Blobs>, <BlobType>, <BlobPrefix> are fine)
    if (tag.size() == 5 && tag.compare(0, 4, "Blob") == 0 && (is_space(tag[4]) || tag[4] == '/')) {
      return false;
    }
  }
  return true;
}

// `raw` as a value: itself, or decoded into page.decoded when it holds a reference.
bool text_value(std::string_view raw, ListingPage& page, std::string_view& out) {
  if (raw.find('&') == npos) {
    out = raw;
    return true;
  }
  std::string& decoded = page.decoded.emplace_back();
  if (!decode_xml_text(raw, decoded)) return false;
  out = decoded;
  return true;
}

enum class Field { Absent, Found, Odd };

// The first "<tag" of s must be "<tag>text</tag>" (then `text` is set), else Odd; Absent when s
// has none. wire's patterns also allow whitespace and attributes there: those decline.
Field exact_field(std::string_view s, std::string_view tag, std::string_view& text) {
  const size_t at = s.find(tag);  // tag is "<Name" etc.
  if (at == npos) return Field::Absent;
  size_t i = at + tag.size();
  if (i >= s.size() || s[i] != '>') return Field::Odd;
  ++i;
  const size_t lt = s.find('<', i);
  if (lt == npos) return Field::Odd;
  const std::string_view rest = s.substr(lt);
  if (!starts_with(rest, "</") || rest.substr(2, tag.size() - 1) != tag.substr(1) ||
      rest.size() < tag.size() + 2 || rest[tag.size() + 1] != '>') {
    return Field::Odd;
  }
  text = s.substr(i, lt - i);
  return Field::Found;
}

// A field of the blob's body less its metadata (two pieces around it): the first "<tag" decides,
// and it must lie whole in one piece (wire searches the joined string).
Field blob_field(std::string_view before, std::string_view after, std::string_view tag,
                 std::string_view& text) {
  const Field f = exact_field(before, tag, text);
  if (f != Field::Absent) return f;
  return exact_field(after, tag, text);
}

// <k>v</k> entries with only whitespace between them (wire's _SIMPLE_PAIR_RE form).
bool read_metadata(std::string_view meta, ListingPage& page) {
  size_t i = 0;
  const size_t n = meta.size();
  while (true) {
    while (i < n && is_space(meta[i])) ++i;
    if (i == n) return true;
    if (meta[i] != '<') return false;
    size_t j = i + 1;
    while (j < n && is_name_byte(meta[j])) ++j;
    if (j == i + 1 || j >= n || meta[j] != '>') return false;
    const char first = meta[i + 1];
    if (is_digit(first) || first == '-' || first == '.') return false;
    const std::string_view key = meta.substr(i + 1, j - i - 1);
    const size_t lt = meta.find('<', j + 1);
    if (lt == npos) return false;
    const std::string_view close = meta.substr(lt);
    if (close.size() < key.size() + 3 || close[1] != '/' ||
        close.compare(2, key.size(), key) != 0 || close[key.size() + 2] != '>') {
      return false;
    }
    std::string_view value;
    if (!text_value(meta.substr(j + 1, lt - j - 1), page, value)) return false;
    page.metadata.push_back({key, value});
    i = lt + key.size() + 3;
  }
}

bool read_blob(std::string_view body, ListingPage& page) {
  ListedBlob blob;
  blob.metadata_first = page.metadata.size();
  std::string_view before = body, after;
  const size_t meta_at = body.find("<Metadata");
  if (meta_at != npos) {
    const std::string_view rest = body.substr(meta_at);
    size_t meta_stop;  // past the metadata element
    if (starts_with(rest, "<Metadata>")) {
      const size_t meta_end = body.find("</Metadata>", meta_at);
      if (meta_end == npos) return false;
      if (!read_metadata(body.substr(meta_at + 10, meta_end - meta_at - 10), page)) return false;
      meta_stop = meta_end + 11;
      // wire cuts the metadata out and searches the rest joined: decline where a tag could
      // straddle the cut
      before = body.substr(0, meta_at);
      after = body.substr(meta_stop);
      if ((!before.empty() && before.back() != '>') || (!after.empty() && after[0] != '<')) {
        return false;
      }
    } else if (starts_with(rest, "<Metadata />") || starts_with(rest, "<Metadata/>")) {
      meta_stop = meta_at + (rest[9] == ' ' ? 12 : 11);
    } else {
      return false;
    }
    if (body.find("<Metadata", meta_stop) != npos) return false;  // a second one
  }
  blob.metadata_count = page.metadata.size() - blob.metadata_first;

  std::string_view raw;
  switch (blob_field(before, after, "<Name", raw)) {
    case Field::Odd:
      return false;  // attributes (Encoded="true"), <Name />, whitespace
    case Field::Found:
      if (!text_value(raw, page, blob.name)) return false;
      break;
    case Field::Absent:
      break;
  }
  switch (blob_field(before, after, "<Content-Length", raw)) {
    case Field::Odd:
      return false;
    case Field::Found:
      // int() of Python takes signs, spaces and '_' too: plain digits only here, and at most
      // 18 of them (no overflow; the largest blob is ~190 TiB, 15 digits)
      if (raw.size() > 18) return false;
      for (char c : raw) {
        if (!is_digit(c)) return false;
        blob.size_bytes = blob.size_bytes * 10 + static_cast<uint64_t>(c - '0');
      }
      break;
    case Field::Absent:
      break;
  }
  switch (blob_field(before, after, "<Etag", raw)) {
    case Field::Odd:
      return false;
    case Field::Found:
      if (!text_value(raw, page, blob.etag)) return false;
      break;
    case Field::Absent:
      break;
  }
  page.blobs.push_back(blob);
  return true;
}

// <NextMarker>m</NextMarker>, <NextMarker /> or none, at or after `from`.
bool read_next_marker(std::string_view s, size_t from, ListingPage& page) {
  const size_t at = s.find("<NextMarker", from);
  if (at == npos) return true;
  const std::string_view rest = s.substr(at);
  if (starts_with(rest, "<NextMarker />") || starts_with(rest, "<NextMarker/>")) {
    // wire's pattern would skip it and take a later one
    return s.find("<NextMarker", at + 1) == npos;
  }
  std::string_view raw;
  if (exact_field(rest, "<NextMarker", raw) != Field::Found) return false;
  return text_value(raw, page, page.next_marker);
}

}  // namespace

bool decode_xml_text(std::string_view raw, std::string& out) {
  out.reserve(out.size() + raw.size());
  size_t i = 0;
  while (true) {
    const size_t amp = raw.find('&', i);
    out.append(raw.substr(i, amp == npos ? npos : amp - i));
    if (amp == npos) return true;
    const size_t semi = raw.find(';', amp + 1);
    if (semi == npos) return false;
    const std::string_view ref = raw.substr(amp + 1, semi - amp - 1);
    i = semi + 1;
    if (ref == "lt") {
      out.push_back('<');
    } else if (ref == "gt") {
      out.push_back('>');
    } else if (ref == "amp") {
      out.push_back('&');
    } else if (ref == "quot") {
      out.push_back('"');
    } else if (ref == "apos") {
      out.push_back('\'');
    } else {
      if (ref.size() < 2 || ref[0] != '#') return false;
      const bool hex = ref[1] == 'x';
      const std::string_view digits = ref.substr(hex ? 2 : 1);
      if (digits.empty()) return false;
      uint32_t cp = 0;
      for (char c : digits) {
        uint32_t d;
        if (is_digit(c)) {
          d = static_cast<uint32_t>(c - '0');
        } else if (hex && c >= 'a' && c <= 'f') {
          d = static_cast<uint32_t>(c - 'a' + 10);
        } else if (hex && c >= 'A' && c <= 'F') {
          d = static_cast<uint32_t>(c - 'A' + 10);
        } else {
          return false;
        }
        cp = cp * (hex ? 16 : 10) + d;
        if (cp > 0x10FFFF) return false;  // Python's chr() raises: leave it to wire
      }
      // NUL and lone surrogates are no XML characters (wire would return them as they are)
      if (cp == 0 || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
      if (cp < 0x80) {
        out.push_back(static_cast<char>(cp));
      } else if (cp < 0x800) {
        out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
      } else if (cp < 0x10000) {
        out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
      } else {
        out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
      }
    }
  }
}

bool read_listing_page(std::string_view xml, ListingPage& page) {
  page = ListingPage{};
  if (starts_with(xml, "\xEF\xBB\xBF")) xml.remove_prefix(3);  // wire strips one BOM
  if (!plain_page(xml)) return false;
  const size_t end = xml.rfind("</Blobs>");
  size_t pos = xml.find("<Blob>");
  while (end != npos && pos != npos && pos < end) {
    const size_t close = xml.find("</Blob>", pos);
    if (close == npos || close > end) return false;
    const std::string_view body = xml.substr(pos + 6, close - pos - 6);
    pos = xml.find("<Blob>", close);
    if (!read_blob(body, page)) return false;
  }
  return read_next_marker(xml, end == npos ? 0 : end, page);
}

}  // namespace pyengine
