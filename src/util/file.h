// File helpers: whole-file reads, atomic writes (nothing already written is ever half-replaced),
// and a read-only memory map. All report failures as bhmoe::Error naming the path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace bhmoe {

std::string read_file(const std::filesystem::path& path);

// Like read_file, for inputs that must be regular files (configs, tokenizers, calibrations, indexes):
// anything else (a FIFO, a socket, a device, a directory) is an error naming the path and its kind,
// raised without blocking: opening a FIFO for reading would otherwise wait for a writer for ever.
std::string read_regular_file(const std::filesystem::path& path);

// What kind of file a stat mode is, in words ("a FIFO", "a directory", ...), for messages.
const char* file_kind_name(unsigned mode);

// Writes `contents` to a temporary file beside `path`, fsyncs it, then renames it over `path`.
void write_file_atomic(const std::filesystem::path& path, std::string_view contents);

// Appends one record (a line, say) and fsyncs, so a crash loses at most the record being written.
void append_file_durable(const std::filesystem::path& path, std::string_view record);

// Read-only private mapping of a whole regular file (anything else is an error naming the path,
// raised without blocking). Movable, not copyable; unmaps on destruction.
class MappedFile {
 public:
  MappedFile() = default;
  explicit MappedFile(const std::filesystem::path& path);
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace bhmoe
