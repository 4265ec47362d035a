// pybind11 only: type conversion, the buffer protocol, GIL release and exception mapping.
// Policy lives in Python (pyengine/engine/send.py); bytes never loop through Python.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>

#include "cipher.hpp"
#include "crc64.hpp"
#include "hash.hpp"
#include "listing.hpp"
#include "pipeline.hpp"
#include "stage_bench.hpp"

namespace py = pybind11;
using namespace pyengine;

namespace {

// A C-contiguous read-only view of any buffer exporter, released on scope exit (so a bytearray
// passed in can be resized again afterwards). Non-contiguous input is refused with BufferError.
class InputBuffer {
 public:
  explicit InputBuffer(const py::object& obj) {
    if (PyObject_GetBuffer(obj.ptr(), &view_, PyBUF_SIMPLE) != 0) throw py::error_already_set();
  }
  ~InputBuffer() { PyBuffer_Release(&view_); }
  InputBuffer(const InputBuffer&) = delete;
  InputBuffer& operator=(const InputBuffer&) = delete;
  const uint8_t* data() const { return static_cast<const uint8_t*>(view_.buf); }
  size_t size() const { return static_cast<size_t>(view_.len); }

 private:
  Py_buffer view_{};
};

py::bytes to_bytes(const uint8_t* p, size_t n) {
  return py::bytes(reinterpret_cast<const char*>(p), n);
}

ContentKey to_key(const py::bytes& key) {
  std::string s = key;
  if (s.size() != 32) throw py::value_error("content_key must be 32 bytes");
  ContentKey k;
  std::memcpy(k.data(), s.data(), 32);
  return k;
}

// Exports one pooled buffer read-only. Memoryviews keep it alive; the buffer goes back to the pool
// when the Chunk released it and the last memoryview is gone.
struct PooledView {
  std::unique_ptr<Lease> lease;
  size_t len_bytes;
};

struct Chunk {
  uint64_t file_id, index, offset_bytes, plain_bytes, payload_bytes, crc64;
  py::bytes xxh3_128;
  py::object view;  // PooledView, or None once released
  py::bytes head;
};

// The identity fields are what fstat said before the first read; the core checked after the last
// read that they did not change, so they describe exactly the bytes that were read.
struct FileDone {
  uint64_t file_id;
  std::string path;
  uint64_t size_bytes, file_size_bytes;
  int64_t mtime_ns, ctime_ns;
  uint64_t inode, device, chunks;
  py::object blake3;
  py::bytes head;
  py::object md5;  // bytes (16) with STAGE_MD5 on a whole-file read, else None
};

struct FileFailed {
  uint64_t file_id;
  std::string path, kind, reason;
  int errno_value;
};

py::object convert(Event& event) {
  if (auto* c = std::get_if<ChunkEvent>(&event)) {
    auto view = std::make_shared<PooledView>(PooledView{std::move(c->lease), c->payload_bytes});
    return py::cast(Chunk{c->file_id, c->index, c->offset_bytes, c->plain_bytes, c->payload_bytes,
                          c->crc64, to_bytes(c->xxh3_128.data(), 16), py::cast(view),
                          py::bytes(c->head)});
  }
  if (auto* d = std::get_if<FileDoneEvent>(&event)) {
    py::object digest = d->blake3 ? py::object(to_bytes(d->blake3->data(), 32)) : py::none();
    py::object md5 = d->md5 ? py::object(to_bytes(d->md5->data(), 16)) : py::none();
    const FileIdentity& id = d->identity;
    return py::cast(FileDone{d->file_id, d->path, d->size_bytes, id.size_bytes, id.mtime_ns,
                             id.ctime_ns, id.inode, id.device, d->chunks, digest,
                             py::bytes(d->head), md5});
  }
  auto& f = std::get<FileFailedEvent>(event);
  return py::cast(FileFailed{f.file_id, f.path, failure_kind_name(f.kind), f.reason, f.errno_value});
}

// A str from UTF-8 the listing reader has validated.
py::str utf8_str(std::string_view s) {
  PyObject* o = PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "strict");
  if (o == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(o);
}

// (blobs, next marker) of one List Blobs page, each blob built as blob_props(name, size_bytes,
// etag, metadata); None when the native reader declines the page.
py::object read_listing(const py::object& content, const py::object& blob_props) {
  InputBuffer in(content);
  const std::string_view xml(reinterpret_cast<const char*>(in.data()), in.size());
  // The GIL stays held (a measured exception to "release it for every call touching bytes"): a
  // 5000-blob page reads in ~5 ms, and the event loop that called us then waits for another
  // thread's switch interval to get the GIL back. With a busy Python thread beside it, a page
  // took 31-45 ms released against 25-30 ms held, and the delta showed no gain.
  ListingPage page;
  if (!read_listing_page(xml, page)) return py::none();
  // Metadata names repeat on every blob of a page: one str each (fewer allocations, and the
  // dict reuses the cached hash).
  std::vector<std::pair<std::string_view, py::str>> keys;
  auto key_str = [&keys](std::string_view k) -> const py::str& {
    for (auto& [view, str] : keys) {
      if (view == k) return str;
    }
    keys.emplace_back(k, utf8_str(k));
    return keys.back().second;
  };
  py::list blobs(page.blobs.size());
  PyObject* cls = blob_props.ptr();
  for (size_t i = 0; i < page.blobs.size(); ++i) {
    const ListedBlob& b = page.blobs[i];
    py::dict metadata;
    for (size_t k = 0; k < b.metadata_count; ++k) {
      const ListedPair& pair = page.metadata[b.metadata_first + k];
      const py::str value = utf8_str(pair.value);
      if (PyDict_SetItem(metadata.ptr(), key_str(pair.key).ptr(), value.ptr()) != 0) {
        throw py::error_already_set();
      }
    }
    py::str name = utf8_str(b.name);
    py::int_ size_bytes(b.size_bytes);
    py::str etag = utf8_str(b.etag);
    PyObject* args[] = {name.ptr(), size_bytes.ptr(), etag.ptr(), metadata.ptr()};
    PyObject* blob = PyObject_Vectorcall(cls, args, 4, nullptr);
    if (blob == nullptr) throw py::error_already_set();
    PyList_SET_ITEM(blobs.ptr(), static_cast<Py_ssize_t>(i), blob);  // steals the reference
  }
  return py::make_tuple(std::move(blobs), utf8_str(page.next_marker));
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "pyengine native core: parallel chunk reader, xxh3-128, BLAKE3, Azure CRC64, AES-256-GCM";
  m.attr("STAGE_READ") = static_cast<unsigned>(kStageRead);
  m.attr("STAGE_XXH3") = static_cast<unsigned>(kStageXxh3);
  m.attr("STAGE_CRC64") = static_cast<unsigned>(kStageCrc64);
  m.attr("STAGE_BLAKE3") = static_cast<unsigned>(kStageBlake3);
  m.attr("STAGE_ALL") = static_cast<unsigned>(kStageAll);
  m.attr("STAGE_MD5") = static_cast<unsigned>(kStageMd5);  // not in STAGE_ALL: serial per file
  m.attr("REGION_BYTES") = kRegionBytes;
  m.attr("REGION_OVERHEAD_BYTES") = kRegionOverheadBytes;

  m.def(
      "crc64",
      [](const py::object& data, uint64_t crc) {
        InputBuffer in(data);
        py::gil_scoped_release nogil;
        return pyengine::crc64(crc, in.data(), in.size());
      },
      py::arg("data"), py::arg("crc") = 0);
  m.def(
      "_crc64_portable",
      [](const py::object& data, uint64_t crc) {
        InputBuffer in(data);
        py::gil_scoped_release nogil;
        return crc64_portable(crc, in.data(), in.size());
      },
      py::arg("data"), py::arg("crc") = 0);
  m.def("xxh3_128", [](const py::object& data) {
    InputBuffer in(data);
    Digest16 d;
    {
      py::gil_scoped_release nogil;
      d = pyengine::xxh3_128(in.data(), in.size());
    }
    return to_bytes(d.data(), d.size());
  });
  m.def("blake3", [](const py::object& data) {
    InputBuffer in(data);
    Digest32 d;
    {
      py::gil_scoped_release nogil;
      d = pyengine::blake3(in.data(), in.size());
    }
    return to_bytes(d.data(), d.size());
  });
  m.def(
      "encrypt_regions",
      [](const py::object& data, const py::bytes& content_key, uint64_t first_region) {
        InputBuffer in(data);
        ContentKey key = to_key(content_key);
        std::string out(framed_bytes(in.size()), '\0');
        {
          py::gil_scoped_release nogil;
          RegionCipher cipher;
          cipher.set_key(key);
          auto* dst = reinterpret_cast<uint8_t*>(out.data());
          for (size_t r = 0; r * kRegionBytes < in.size(); ++r) {
            const size_t n = std::min(kRegionBytes, in.size() - r * kRegionBytes);
            uint8_t* frame = dst + r * (kRegionBytes + kRegionOverheadBytes);
            std::memcpy(frame + kNonceBytes, in.data() + r * kRegionBytes, n);
            cipher.encrypt_region(first_region + r, frame, n);
          }
        }
        return py::bytes(out);
      },
      py::arg("data"), py::arg("content_key"), py::arg("first_region") = 0);
  m.def(
      "stage_seconds",
      [](const std::string& stage, const py::object& data, int repeat) {
        InputBuffer in(data);
        py::gil_scoped_release nogil;
        return pyengine::stage_seconds(stage, in.data(), in.size(), repeat);
      },
      py::arg("stage"), py::arg("data"), py::arg("repeat") = 1);
  m.def("cpu_features", [] {
    py::dict d;
    for (auto& [name, on] : pyengine::cpu_features()) d[py::str(name)] = on;
    return d;
  });
  m.def("_crc64_force_portable", &crc64_force_portable);
  m.def("read_listing_page", &read_listing, py::arg("content"), py::arg("blob_props"));

  py::class_<PooledView, std::shared_ptr<PooledView>>(m, "_PooledView", py::buffer_protocol())
      .def_buffer([](PooledView& v) {
        return py::buffer_info(v.lease->data(), 1, py::format_descriptor<uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(v.len_bytes)}, {1}, /*readonly=*/true);
      });

  py::class_<Chunk>(m, "Chunk")
      .def_readonly("file_id", &Chunk::file_id)
      .def_readonly("index", &Chunk::index)
      .def_readonly("offset_bytes", &Chunk::offset_bytes)
      .def_readonly("plain_bytes", &Chunk::plain_bytes)
      .def_readonly("payload_bytes", &Chunk::payload_bytes)
      .def_readonly("xxh3_128", &Chunk::xxh3_128)
      .def_readonly("crc64", &Chunk::crc64)
      .def_readonly("head", &Chunk::head)
      .def_property_readonly("data",
                             [](const Chunk& c) {
                               if (c.view.is_none()) throw py::value_error("chunk was released");
                               return py::memoryview(c.view);
                             })
      .def("release", [](Chunk& c) { c.view = py::none(); })
      .def("__enter__", [](Chunk& c) -> Chunk& { return c; }, py::return_value_policy::reference)
      .def("__exit__", [](Chunk& c, const py::args&) { c.view = py::none(); })
      .def("__repr__", [](const Chunk& c) {
        return "<Chunk file_id=" + std::to_string(c.file_id) + " index=" +
               std::to_string(c.index) + " plain_bytes=" + std::to_string(c.plain_bytes) + ">";
      });

  py::class_<FileDone>(m, "FileDone")
      .def_readonly("file_id", &FileDone::file_id)
      .def_readonly("path", &FileDone::path)
      .def_readonly("size_bytes", &FileDone::size_bytes)
      .def_readonly("file_size_bytes", &FileDone::file_size_bytes)
      .def_readonly("mtime_ns", &FileDone::mtime_ns)
      .def_readonly("ctime_ns", &FileDone::ctime_ns)
      .def_readonly("inode", &FileDone::inode)
      .def_readonly("device", &FileDone::device)
      .def_readonly("chunks", &FileDone::chunks)
      .def_readonly("blake3", &FileDone::blake3)
      .def_readonly("head", &FileDone::head)
      .def_readonly("md5", &FileDone::md5);

  py::class_<FileFailed>(m, "FileFailed")
      .def_readonly("file_id", &FileFailed::file_id)
      .def_readonly("path", &FileFailed::path)
      .def_readonly("kind", &FileFailed::kind)
      .def_readonly("errno", &FileFailed::errno_value)
      .def_readonly("reason", &FileFailed::reason)
      .def_property_readonly("changed", [](const FileFailed& f) { return f.kind == "changed"; })
      .def_property_readonly("message",
                             [](const FileFailed& f) { return f.path + ": " + f.reason; })
      .def_property_readonly("error", [](const FileFailed& f) {
        py::module_ errors = py::module_::import("pyengine.errors");
        const char* cls = f.kind == "changed" ? "FileChangedError" : "SourceError";
        return errors.attr(cls)(f.path, f.reason);
      });

  py::class_<PoolStats>(m, "PoolStats")
      .def_readonly("cap_bytes", &PoolStats::cap_bytes)
      .def_readonly("allocated_bytes", &PoolStats::allocated_bytes)
      .def_readonly("in_use_bytes", &PoolStats::in_use_bytes)
      .def_readonly("in_use_buffers", &PoolStats::in_use_buffers)
      .def_readonly("waits", &PoolStats::waits);

  py::class_<Pipeline>(m, "Pipeline")
      .def(py::init<unsigned, size_t, bool>(), py::arg("threads"), py::arg("memory_cap_bytes"),
           py::arg("direct_io") = false)
      .def(
          "submit",
          [](Pipeline& p, uint64_t file_id, const std::string& path, uint64_t size_bytes,
             uint64_t chunk_bytes, uint64_t offset_bytes, int64_t length_bytes,
             const std::optional<py::bytes>& content_key, unsigned stages, uint32_t head_bytes) {
            SubmitRequest r;
            r.file_id = file_id;
            r.path = path;
            r.size_bytes = size_bytes;
            r.chunk_bytes = chunk_bytes;
            r.offset_bytes = offset_bytes;
            r.length_bytes = length_bytes;
            if (content_key) r.content_key = to_key(*content_key);
            r.stages = stages;
            r.head_bytes = head_bytes;
            py::gil_scoped_release nogil;
            p.submit(std::move(r));
          },
          py::arg("file_id"), py::arg("path"), py::kw_only(), py::arg("size_bytes"),
          py::arg("chunk_bytes"), py::arg("offset_bytes") = 0, py::arg("length_bytes") = -1,
          py::arg("content_key") = py::none(), py::arg("stages") = static_cast<unsigned>(kStageAll),
          py::arg("head_bytes") = 0)
      .def("fileno", &Pipeline::fileno)
      .def(
          "poll",
          [](Pipeline& p, size_t max_events) {
            std::vector<Event> events;
            {
              py::gil_scoped_release nogil;
              events = p.poll(max_events);
            }
            py::list out;
            for (auto& e : events) out.append(convert(e));
            return out;
          },
          py::arg("max_events") = 1024)
      .def("wait", &Pipeline::wait, py::arg("timeout_s") = -1.0,
           py::call_guard<py::gil_scoped_release>())
      .def("files_in_flight", &Pipeline::files_in_flight)
      .def("pool_stats", &Pipeline::pool_stats)
      .def("close", &Pipeline::close, py::call_guard<py::gil_scoped_release>())
      .def("__enter__", [](Pipeline& p) -> Pipeline& { return p; },
           py::return_value_policy::reference)
      .def("__exit__", [](Pipeline& p, const py::args&) {
        py::gil_scoped_release nogil;
        p.close();
      });

  // Restore's write path and the body sender: bound in their own sections below.
  void bind_writer(py::module_ & m);
  bind_writer(m);
  void bind_body_sender(py::module_ & m);
  bind_body_sender(m);
}

// ---- Restore: the native write path (cpp/writer.hpp) -------------------------------------------

#include "writer.hpp"

#include <unordered_map>

namespace {

struct RangeDone {
  uint64_t token, file_id, index;
  bool ok;
  std::string reason;
  py::object cv;  // bytes(32) or None
};

// The Python side of a Writer: the downloaded buffers stay exported (and so alive and unmoved)
// until their range's event is polled; they are released there, with the GIL held.
class PyWriter {
 public:
  explicit PyWriter(unsigned threads) : writer_(threads) {}
  ~PyWriter() {
    {
      py::gil_scoped_release nogil;
      writer_.close();
    }
    held_.clear();
  }

  uint64_t submit(uint64_t file_id, uint64_t index, int fd, uint64_t offset_bytes,
                  uint64_t plain_bytes, const py::object& data,
                  const std::optional<py::bytes>& content_key, bool hash, bool last,
                  std::optional<uint64_t> crc64) {
    auto buf = std::make_unique<InputBuffer>(data);
    WriteRange r;
    r.token = ++next_token_;
    r.file_id = file_id;
    r.index = index;
    r.fd = fd;
    r.offset_bytes = offset_bytes;
    r.plain_bytes = plain_bytes;
    r.data = buf->data();
    r.data_bytes = buf->size();
    if (content_key) r.content_key = to_key(*content_key);
    r.hash = hash;
    r.last = last;
    r.expected_crc64 = crc64;
    try {
      writer_.submit(r);
    } catch (const std::invalid_argument& e) {
      throw py::value_error(e.what());
    }
    held_.emplace(r.token, std::move(buf));
    return r.token;
  }

  py::list poll(size_t max_events) {
    std::vector<RangeDoneEvent> events;
    {
      py::gil_scoped_release nogil;
      events = writer_.poll(max_events);
    }
    py::list out;
    for (auto& e : events) {
      held_.erase(e.token);
      py::object cv = e.cv ? py::object(to_bytes(e.cv->data(), 32)) : py::object(py::none());
      out.append(py::cast(RangeDone{e.token, e.file_id, e.index, e.ok, e.reason, cv}));
    }
    return out;
  }

  py::bytes digest(uint64_t file_id, const std::vector<py::bytes>& cvs) {
    std::vector<Digest32> pieces;
    pieces.reserve(cvs.size());
    for (const auto& b : cvs) {
      std::string s = b;
      if (s.size() != 32) throw py::value_error("each range CV must be 32 bytes");
      Digest32 d;
      std::memcpy(d.data(), s.data(), 32);
      pieces.push_back(d);
    }
    Digest32 out;
    try {
      py::gil_scoped_release nogil;
      out = writer_.digest(file_id, pieces);
    } catch (const std::logic_error& e) {
      throw py::value_error(e.what());
    }
    return to_bytes(out.data(), out.size());
  }

  Writer writer_;

 private:
  uint64_t next_token_ = 0;
  std::unordered_map<uint64_t, std::unique_ptr<InputBuffer>> held_;
};

}  // namespace

void bind_writer(py::module_& m) {
  py::class_<RangeDone>(m, "RangeDone")
      .def_readonly("token", &RangeDone::token)
      .def_readonly("file_id", &RangeDone::file_id)
      .def_readonly("index", &RangeDone::index)
      .def_readonly("ok", &RangeDone::ok)
      .def_readonly("reason", &RangeDone::reason)
      .def_readonly("cv", &RangeDone::cv)
      .def("__repr__", [](const RangeDone& d) {
        return "<RangeDone file_id=" + std::to_string(d.file_id) +
               " index=" + std::to_string(d.index) + (d.ok ? " ok>" : " failed>");
      });

  py::class_<PyWriter>(m, "Writer")
      .def(py::init<unsigned>(), py::arg("threads"))
      .def("submit", &PyWriter::submit, py::arg("file_id"), py::arg("index"), py::arg("fd"),
           py::kw_only(), py::arg("offset_bytes"), py::arg("plain_bytes"), py::arg("data"),
           py::arg("content_key") = py::none(), py::arg("hash") = true, py::arg("last") = false,
           py::arg("crc64") = py::none())
      .def("poll", &PyWriter::poll, py::arg("max_events") = 1024)
      .def("fileno", [](PyWriter& w) { return w.writer_.fileno(); })
      .def("wait", [](PyWriter& w, double timeout_s) { return w.writer_.wait(timeout_s); },
           py::arg("timeout_s") = -1.0, py::call_guard<py::gil_scoped_release>())
      .def("digest", &PyWriter::digest, py::arg("file_id"), py::arg("range_cvs"))
      .def("discard", [](PyWriter& w, uint64_t file_id) { w.writer_.discard(file_id); })
      .def("close", [](PyWriter& w) { w.writer_.close(); },
           py::call_guard<py::gil_scoped_release>());
}

// ---- Small plain-HTTP sends (cpp/body_sender.hpp) ----------------------------------------------

#include "body_sender.hpp"

namespace {

// The Python side of a BodySender: head and body stay exported (alive, unmoved; a bytearray
// cannot be resized) until their send's completion is polled, and are released there with the
// GIL held, so a caller that stops waiting (cancelled) cannot free what the thread still reads.
// send() and poll() keep the GIL: each is a queue step of a microsecond or two, and a GIL
// released and taken back per small file is a hand-over the loop would wait for.
class PyBodySender {
 public:
  ~PyBodySender() {
    {
      py::gil_scoped_release nogil;
      sender_.close();
    }
    held_.clear();
  }

  // The send's token, or None when it could not be queued (the caller's transport sends).
  py::object send(int fd, const py::object& head, const py::object& body) {
    auto h = std::make_unique<InputBuffer>(head);
    auto b = std::make_unique<InputBuffer>(body);
    const uint64_t token = ++next_token_;
    if (!sender_.send(fd, h->data(), h->size(), b->data(), b->size(), token)) return py::none();
    held_.emplace(token, std::make_pair(std::move(h), std::move(b)));
    return py::int_(token);
  }

  py::list poll(size_t max_events) {
    py::list out;
    for (const SendDone& d : sender_.poll(max_events)) {
      held_.erase(d.token);
      out.append(py::make_tuple(d.token, d.sent_bytes, d.error));
    }
    return out;
  }

  void close() {
    {
      py::gil_scoped_release nogil;
      sender_.close();
    }
    // every attempt is made; their completions stay to be polled, their buffers are let go only
    // there (or when this object goes)
  }

  BodySender sender_;

 private:
  uint64_t next_token_ = 0;
  std::unordered_map<uint64_t, std::pair<std::unique_ptr<InputBuffer>, std::unique_ptr<InputBuffer>>>
      held_;
};

}  // namespace

void bind_body_sender(py::module_& m) {
  py::class_<PyBodySender>(m, "BodySender")
      .def(py::init<>())
      .def("send", &PyBodySender::send, py::arg("fd"), py::arg("head"), py::arg("body"))
      .def("poll", &PyBodySender::poll, py::arg("max_events") = 1024)
      .def("fileno", [](PyBodySender& s) { return s.sender_.fileno(); })
      .def("close", &PyBodySender::close);
}
