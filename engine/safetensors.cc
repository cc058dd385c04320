#include "engine/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <set>
#include <sstream>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/atomic_file.h"
#include "nlohmann/json.hpp"

namespace sirocco::engine {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

// The reference implementation refuses headers above 100 MB; a larger one
// is a corrupt length field, not a real checkpoint.
constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;
constexpr std::string_view kMetadataKey = "__metadata__";
constexpr std::string_view kIndexName = "model.safetensors.index.json";

absl::string_view Sv(std::string_view s) { return {s.data(), s.size()}; }

// "path: tensor \"name\": what" -- every parse error has this shape.
absl::Status TensorError(const std::string& path, std::string_view tensor, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": tensor \"", Sv(tensor), "\": ", what));
}

absl::Status FileError(const std::string& path, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

// numel * element size, or nullopt on overflow of int64/size_t.
std::optional<std::pair<int64_t, std::size_t>> SizeOf(std::span<const int64_t> shape, std::size_t element_size) {
  uint64_t numel = 1;
  for (int64_t dim : shape) {
    if (dim < 0) return std::nullopt;
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(dim), &numel)) {
      return std::nullopt;
    }
  }
  if (numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return std::nullopt;
  }
  std::size_t nbytes = 0;
  if (__builtin_mul_overflow(numel, element_size, &nbytes)) return std::nullopt;
  return std::make_pair(static_cast<int64_t>(numel), nbytes);
}

// Reads a JSON array of non-negative integers that fit in int64.
std::optional<std::vector<uint64_t>> UnsignedArray(const Json& value) {
  if (!value.is_array()) return std::nullopt;
  std::vector<uint64_t> out;
  out.reserve(value.size());
  for (const Json& item : value) {
    if (!item.is_number_unsigned()) return std::nullopt;
    const auto v = item.get<uint64_t>();
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return std::nullopt;
    }
    out.push_back(v);
  }
  return out;
}

// Parses `text` as JSON without exceptions; also reports whether a key
// repeats in the top-level object, which plain parsing silently collapses.
struct ParsedJson {
  Json value;
  std::string duplicate_key;  // empty when none
};
std::optional<ParsedJson> ParseJsonObject(std::string_view text) {
  ParsedJson out;
  std::set<std::string> seen;
  Json::parser_callback_t on_event = [&](int depth, Json::parse_event_t event, Json& parsed) {
    if (depth == 1 && event == Json::parse_event_t::key && parsed.is_string()) {
      const auto& key = parsed.get_ref<const std::string&>();
      if (!seen.insert(key).second && out.duplicate_key.empty()) {
        out.duplicate_key = key;
      }
    }
    return true;
  };
  out.value = Json::parse(text.begin(), text.end(), on_event,
                          /*allow_exceptions=*/false);
  if (out.value.is_discarded() || !out.value.is_object()) return std::nullopt;
  return out;
}

absl::StatusOr<std::string> ReadSmallFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read failed"));
  return std::move(contents).str();
}

// The Hugging Face shard name, "model-00001-of-00003.safetensors".
std::string ShardName(std::size_t number, std::size_t count) {
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), "model-%05zu-of-%05zu.safetensors", number, count);
  return buffer;
}

absl::Status WriteWholeFile(const std::string& path, std::string_view contents) {
  absl::StatusOr<AtomicFile> file = AtomicFile::Create(path);
  if (!file.ok()) return file.status();
  if (absl::Status s = file->Write(contents.data(), contents.size()); !s.ok()) {
    return s;
  }
  return file->Commit();
}

struct Mapping {
  void* address;
  std::size_t size;
};

// Maps a whole regular file of at least 8 bytes read-only.
absl::StatusOr<Mapping> MapReadOnly(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat(path, ": cannot open"));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int error = errno;
    ::close(fd);
    return absl::ErrnoToStatus(error, absl::StrCat(path, ": cannot stat"));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return FileError(path, "not a regular file");
  }
  const auto size = static_cast<std::size_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return FileError(path, absl::StrCat("file is ", size, " bytes, shorter than the 8-byte header length"));
  }
  void* address = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_error = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (address == MAP_FAILED) return absl::ErrnoToStatus(map_error, absl::StrCat(path, ": mmap failed"));
  return Mapping{address, size};
}

absl::StatusOr<std::map<std::string, std::string>> ParseMetadata(const std::string& path, const Json& entry) {
  if (!entry.is_object()) return TensorError(path, kMetadataKey, "must be an object");
  std::map<std::string, std::string> metadata;
  for (const auto& [key, value] : entry.items()) {
    if (!value.is_string()) {
      return FileError(path, absl::StrCat("__metadata__ field \"", key, "\" is not a string"));
    }
    metadata.emplace(key, value.get<std::string>());
  }
  return metadata;
}

struct ParsedTensor {
  TensorInfo info;  // all but `data`
  uint64_t begin;   // offsets into the data buffer
  uint64_t end;
};

// Validates one header entry against a data buffer of `data_size` bytes.
absl::StatusOr<ParsedTensor> ParseTensor(const std::string& path, const std::string& name, const Json& entry,
                                         std::size_t data_size) {
  if (!entry.is_object()) return TensorError(path, name, "entry is not an object");
  const auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end() || !dtype_it->is_string()) {
    return TensorError(path, name, "missing string field \"dtype\"");
  }
  absl::StatusOr<DType> dtype = ParseDType(dtype_it->get<std::string>());
  if (!dtype.ok()) return TensorError(path, name, dtype.status().message());

  const auto shape_it = entry.find("shape");
  std::optional<std::vector<uint64_t>> shape;
  if (shape_it != entry.end()) shape = UnsignedArray(*shape_it);
  if (!shape.has_value()) {
    return TensorError(path, name, "field \"shape\" must be an array of non-negative integers");
  }
  const auto offsets_it = entry.find("data_offsets");
  std::optional<std::vector<uint64_t>> offsets;
  if (offsets_it != entry.end()) offsets = UnsignedArray(*offsets_it);
  if (!offsets.has_value() || offsets->size() != 2) {
    return TensorError(path, name, "field \"data_offsets\" must be [begin, end] of non-negative integers");
  }
  ParsedTensor out{.info = {}, .begin = (*offsets)[0], .end = (*offsets)[1]};
  const std::string range = absl::StrCat("data_offsets [", out.begin, ", ", out.end, "]");
  if (out.begin > out.end) return TensorError(path, name, absl::StrCat(range, " has begin > end"));
  if (out.end > data_size) {
    return TensorError(path, name, absl::StrCat(range, " run past the data buffer (", data_size, " bytes)"));
  }
  out.info.name = name;
  out.info.dtype = *dtype;
  out.info.shape.assign(shape->begin(), shape->end());
  const auto size = SizeOf(out.info.shape, DTypeSize(out.info.dtype));
  if (!size.has_value()) return TensorError(path, name, "shape overflows");
  if (size->second != out.end - out.begin) {
    return TensorError(path, name,
                       absl::StrCat("data_offsets span ", out.end - out.begin, " bytes but shape and dtype ",
                                    DTypeName(out.info.dtype), " need ", size->second));
  }
  out.info.nbytes = size->second;
  return out;
}

}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t dim : shape) n *= dim;
  return n;
}

// ---------------------------------------------------------------------------
// SafetensorsFile

SafetensorsFile::SafetensorsFile(std::string path, void* mapping, std::size_t mapped_size)
    : path_(std::move(path)), mapping_(mapping), mapped_size_(mapped_size) {}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapped_size_);
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  absl::StatusOr<Mapping> mapped = MapReadOnly(path);
  if (!mapped.ok()) return mapped.status();
  // Owned from here on, so every early return below unmaps.
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile(path, mapped->address, mapped->size));
  const auto* bytes = static_cast<const std::byte*>(mapped->address);
  const std::size_t file_size = mapped->size;

  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes, sizeof(header_len));  // little-endian host
  if (header_len > file_size - 8) {
    return FileError(
        path, absl::StrCat("header length ", header_len, " runs past the end of the file (", file_size, " bytes)"));
  }
  if (header_len > kMaxHeaderBytes) {
    return FileError(path, absl::StrCat("header length ", header_len, " exceeds the ", kMaxHeaderBytes, "-byte limit"));
  }
  const std::string_view header(reinterpret_cast<const char*>(bytes + 8), header_len);
  std::optional<ParsedJson> parsed = ParseJsonObject(header);
  if (!parsed.has_value()) return FileError(path, "header is not a valid JSON object");
  if (!parsed->duplicate_key.empty()) {
    return TensorError(path, parsed->duplicate_key, "appears twice in the header");
  }

  const std::byte* data = bytes + 8 + header_len;
  const std::size_t data_size = file_size - 8 - header_len;
  std::vector<ParsedTensor> tensors;
  for (const auto& [name, entry] : parsed->value.items()) {
    if (name == kMetadataKey) {
      absl::StatusOr<std::map<std::string, std::string>> metadata = ParseMetadata(path, entry);
      if (!metadata.ok()) return metadata.status();
      file->metadata_ = *std::move(metadata);
      continue;
    }
    absl::StatusOr<ParsedTensor> tensor = ParseTensor(path, name, entry, data_size);
    if (!tensor.ok()) return tensor.status();
    tensor->info.data = data + tensor->begin;
    tensors.push_back(*std::move(tensor));
  }

  // File order; sorting by (begin, end) also makes overlaps adjacent to the
  // furthest-reaching range before them. Empty tensors occupy no bytes and
  // overlap nothing.
  std::sort(tensors.begin(), tensors.end(), [](const ParsedTensor& a, const ParsedTensor& b) {
    return std::tie(a.begin, a.end) < std::tie(b.begin, b.end);
  });
  const ParsedTensor* furthest = nullptr;  // non-empty range with the largest end so far
  for (const ParsedTensor& t : tensors) {
    if (t.begin == t.end) continue;
    if (furthest != nullptr && t.begin < furthest->end) {
      return TensorError(path, t.info.name, absl::StrCat("data overlaps tensor \"", furthest->info.name, "\""));
    }
    furthest = &t;
  }
  file->tensors_.reserve(tensors.size());
  for (ParsedTensor& t : tensors) {
    file->index_.emplace(t.info.name, file->tensors_.size());
    file->tensors_.push_back(std::move(t.info));
  }
  return file;
}

const TensorInfo* SafetensorsFile::Find(std::string_view name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

// ---------------------------------------------------------------------------
// Checkpoint

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat(dir, ": not a checkpoint directory"));
  }
  std::unique_ptr<Checkpoint> checkpoint(new Checkpoint(dir));
  const fs::path root(dir);
  absl::Status status;
  if (fs::exists(root / kIndexName, ec)) {
    status = checkpoint->OpenIndexed((root / kIndexName).string());
  } else if (fs::exists(root / "model.safetensors", ec)) {
    status = checkpoint->AddWholeFile((root / "model.safetensors").string());
  } else if (fs::exists(root / "consolidated.safetensors", ec)) {
    status = checkpoint->AddWholeFile((root / "consolidated.safetensors").string());
  } else {
    std::vector<std::string> paths;
    for (fs::directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
      if (it->path().extension() == ".safetensors" && it->is_regular_file(ec)) {
        paths.push_back(it->path().string());
      }
    }
    if (ec) {
      return absl::UnavailableError(absl::StrCat(dir, ": cannot list: ", ec.message()));
    }
    if (paths.empty()) {
      return absl::NotFoundError(absl::StrCat(dir, ": no *.safetensors files"));
    }
    std::sort(paths.begin(), paths.end());
    for (const std::string& path : paths) {
      status = checkpoint->AddWholeFile(path);
      if (!status.ok()) break;
    }
  }
  if (!status.ok()) return status;
  return checkpoint;
}

absl::Status Checkpoint::AddWholeFile(const std::string& path) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  if (!file.ok()) return file.status();
  const SafetensorsFile* raw = file->get();
  files_.push_back(*std::move(file));
  for (const TensorInfo& tensor : raw->tensors()) {
    const auto [it, inserted] = entries_.emplace(tensor.name, Entry{&tensor, raw});
    if (!inserted) {
      return TensorError(path, tensor.name, absl::StrCat("also present in ", it->second.file->path()));
    }
  }
  return absl::OkStatus();
}

absl::Status Checkpoint::OpenIndexed(const std::string& index_path) {
  absl::StatusOr<std::string> text = ReadSmallFile(index_path);
  if (!text.ok()) return text.status();
  std::optional<ParsedJson> index = ParseJsonObject(*text);
  if (!index.has_value()) return FileError(index_path, "not a valid JSON object");
  const auto map_it = index->value.find("weight_map");
  if (map_it == index->value.end() || !map_it->is_object()) {
    return FileError(index_path, "missing object field \"weight_map\"");
  }
  if (map_it->empty()) return FileError(index_path, "\"weight_map\" is empty");

  // shard file name -> tensors the index places there
  std::map<std::string, std::vector<std::string>> shards;
  for (const auto& [name, shard] : map_it->items()) {
    if (!shard.is_string()) {
      return TensorError(index_path, name, "weight_map value is not a string");
    }
    const auto& shard_name = shard.get_ref<const std::string&>();
    // Shards are siblings of the index; anything else would let an index
    // reach outside the checkpoint directory.
    if (shard_name.empty() || shard_name == "." || shard_name == ".." || shard_name.find('/') != std::string::npos) {
      return TensorError(index_path, name,
                         absl::StrCat("shard \"", shard_name, "\" is not a file name in the checkpoint directory"));
    }
    shards[shard_name].push_back(name);
  }
  const fs::path root(dir_);
  for (const auto& [shard_name, names] : shards) {
    const std::string shard_path = (root / shard_name).string();
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(shard_path);
    if (!file.ok()) {
      return absl::Status(file.status().code(),
                          absl::StrCat(index_path, ": shard \"", shard_name, "\" (holding tensor \"", names.front(),
                                       "\"): ", file.status().message()));
    }
    const SafetensorsFile* raw = file->get();
    files_.push_back(*std::move(file));
    for (const std::string& name : names) {
      const TensorInfo* tensor = raw->Find(name);
      if (tensor == nullptr) {
        return TensorError(index_path, name,
                           absl::StrCat("index places it in ", shard_path, ", which has no such tensor"));
      }
      entries_.emplace(name, Entry{tensor, raw});
    }
  }
  return absl::OkStatus();
}

const TensorInfo* Checkpoint::Find(std::string_view name) const {
  const auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : it->second.tensor;
}

const SafetensorsFile* Checkpoint::FileOf(std::string_view name) const {
  const auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : it->second.file;
}

std::vector<std::string> Checkpoint::Names() const {
  std::vector<std::string> names;
  names.reserve(entries_.size());
  for (const auto& [name, entry] : entries_) names.push_back(name);
  return names;
}

// ---------------------------------------------------------------------------
// SafetensorsWriter

void SafetensorsWriter::Add(std::string name, DType dtype, std::vector<int64_t> shape,
                            std::span<const std::byte> bytes) {
  Add(std::move(name), dtype, std::move(shape), std::vector<std::byte>(bytes.begin(), bytes.end()));
}

void SafetensorsWriter::Add(std::string name, DType dtype, std::vector<int64_t> shape, std::vector<std::byte> bytes) {
  auto reject = [&](absl::string_view what) {
    if (first_error_.ok()) {
      first_error_ = absl::InvalidArgumentError(absl::StrCat("SafetensorsWriter::Add: tensor \"", name, "\": ", what));
    }
  };
  if (name.empty()) return reject("empty name");
  if (name == kMetadataKey) return reject("name is reserved for metadata");
  if (names_.count(name) != 0) return reject("added twice");
  const auto size = SizeOf(shape, DTypeSize(dtype));
  if (!size.has_value()) return reject("negative or overflowing dimension");
  if (size->second != bytes.size()) {
    return reject(
        absl::StrCat("got ", bytes.size(), " bytes but shape and dtype ", DTypeName(dtype), " need ", size->second));
  }
  names_.emplace(name, tensors_.size());
  tensors_.push_back(Pending{std::move(name), dtype, std::move(shape), std::move(bytes)});
}

std::size_t SafetensorsWriter::total_bytes() const {
  std::size_t total = 0;
  for (const Pending& t : tensors_) total += t.bytes.size();
  return total;
}

absl::Status SafetensorsWriter::WriteGroup(const std::string& path, std::span<const Pending* const> group,
                                           const Metadata& metadata) const {
  // ordered_json keeps insertion order, so the header lists tensors in the
  // order their data follows.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header[std::string(kMetadataKey)] = metadata;
  std::size_t offset = 0;
  for (const Pending* t : group) {
    header[t->name] = {{"dtype", std::string(DTypeName(t->dtype))},
                       {"shape", t->shape},
                       {"data_offsets", {offset, offset + t->bytes.size()}}};
    offset += t->bytes.size();
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::ordered_json::exception& e) {
    // dump() throws only for strings that are not valid UTF-8.
    return FileError(path, absl::StrCat("header cannot be encoded: ", e.what()));
  }
  // Pad so the data buffer starts 8-byte aligned (8 + header length).
  text.append((8 - text.size() % 8) % 8, ' ');

  absl::StatusOr<AtomicFile> file = AtomicFile::Create(path);
  if (!file.ok()) return file.status();
  const uint64_t header_len = text.size();
  absl::Status status = file->Write(&header_len, sizeof(header_len));
  if (status.ok()) status = file->Write(text.data(), text.size());
  for (const Pending* t : group) {
    if (!status.ok()) break;
    status = file->Write(t->bytes.data(), t->bytes.size());
  }
  if (!status.ok()) return status;
  return file->Commit();
}

absl::Status SafetensorsWriter::WriteFile(const std::string& path, const Metadata& metadata) const {
  if (!first_error_.ok()) {
    return absl::Status(first_error_.code(), absl::StrCat(path, ": not written: ", first_error_.message()));
  }
  std::vector<const Pending*> all;
  all.reserve(tensors_.size());
  for (const Pending& t : tensors_) all.push_back(&t);
  return WriteGroup(path, all, metadata);
}

absl::Status SafetensorsWriter::WriteSharded(const std::string& dir, std::size_t max_shard_bytes,
                                             const Metadata& metadata) const {
  if (!first_error_.ok()) {
    return absl::Status(first_error_.code(), absl::StrCat(dir, ": not written: ", first_error_.message()));
  }
  if (max_shard_bytes == 0) return FileError(dir, "max_shard_bytes must be positive");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return FileError(dir, absl::StrCat("cannot create directory: ", ec.message()));

  std::vector<std::vector<const Pending*>> shards(1);
  std::size_t shard_bytes = 0;
  for (const Pending& t : tensors_) {
    if (!shards.back().empty() && shard_bytes + t.bytes.size() > max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(&t);
    shard_bytes += t.bytes.size();
  }

  const fs::path root(dir);
  if (shards.size() == 1) {
    absl::Status status = WriteGroup((root / "model.safetensors").string(), shards[0], metadata);
    if (!status.ok()) return status;
    fs::remove(root / kIndexName, ec);
    if (ec) return FileError(dir, absl::StrCat("cannot remove stale index: ", ec.message()));
    return absl::OkStatus();
  }

  Json weight_map = Json::object();
  for (std::size_t i = 0; i < shards.size(); ++i) {
    const std::string shard_name = ShardName(i + 1, shards.size());
    absl::Status status = WriteGroup((root / shard_name).string(), shards[i], metadata);
    if (!status.ok()) return status;
    for (const Pending* t : shards[i]) weight_map[t->name] = shard_name;
  }
  // The index goes last: until it exists no reader is pointed at the shards.
  const Json index = {{"metadata", {{"total_size", total_bytes()}}}, {"weight_map", std::move(weight_map)}};
  std::string text;
  try {
    text = index.dump(2) + "\n";
  } catch (const Json::exception& e) {
    return FileError(dir, absl::StrCat("index cannot be encoded: ", e.what()));
  }
  return WriteWholeFile((root / kIndexName).string(), text);
}

}  // namespace sirocco::engine
