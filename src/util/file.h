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

// An input folder (a checkpoint, a shard, a cases folder) must exist and be a directory: otherwise
// an error "<path> is not a directory (it is a regular file)" / "(it does not exist)".
void require_directory(const std::filesystem::path& path);

// An output folder: created with its parents when missing; an existing non-directory at `path` is
// an error "<path> is not a directory (it is a regular file)", as is a failure to create it (with
// the system's reason).
void ensure_directory(const std::filesystem::path& path);

// Writes `contents` to a temporary file beside `path`, fsyncs it, then renames it over `path`.
void write_file_atomic(const std::filesystem::path& path, std::string_view contents);

// Appends one record (a line, say) and fsyncs, so a crash loses at most the record being written.
void append_file_durable(const std::filesystem::path& path, std::string_view record);

// What tells whether a file is still the one that was read: device, inode, size and modification
// time (nanoseconds).
struct FileIdentity {
  uint64_t device = 0, inode = 0, size = 0;
  int64_t mtime_ns = 0;
  bool operator==(const FileIdentity&) const = default;
};
FileIdentity file_identity(const std::filesystem::path& path);  // stat; an error names the path

// Throws "<path> changed on disk since it was loaded (...)" when the file at `path` no longer has the
// identity it had when loaded (modified in place, replaced, or removed). Long jobs call this
// before each result they write, so no result is computed from a file other than the one recorded.
void require_unchanged(const std::filesystem::path& path, const FileIdentity& at_load);

// Read-only private mapping of a whole regular file (anything else is an error naming the path,
// raised without blocking). Movable, not copyable; unmaps on destruction.
//
// The size is fixed when the file is mapped, and readers (safetensors) check everything they index
// against it. What cannot be prevented is another process truncating the file in place while it is
// mapped: MAP_PRIVATE copies pages only on write, so reading a page that now lies beyond the end of
// the file raises SIGBUS, and no check made before the read can rule that out (the file can shrink
// between any check and the load). Replacing the file by rename, as make-model, write_file_atomic
// and every download tool do, is safe: the mapping keeps the old inode alive. Recovering from the
// SIGBUS would need a siglongjmp out of a kernel in mid-loop on any thread, leaving locks and the
// thread pool undefined; instead every mapping is registered, and a SIGBUS handler (installed with
// the first mapping, chaining to the previous handler for addresses that are not ours) writes
// "bhmoe: error: <path> shrank while it was mapped ..." to stderr and exits with status 1. Results
// already appended are durable (append_file_durable), so a rerun resumes.
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
  const FileIdentity& identity() const { return identity_; }  // when it was mapped

 private:
  void release();
  std::filesystem::path path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  FileIdentity identity_;
};

// An exclusive advisory lock (flock) on the file `dir`/bhmoe.lock, held for the object's lifetime,
// so that two processes writing one output folder cannot interleave: the second fails at once with
// an error naming the folder and saying another process holds it, rather than waiting or
// corrupting results. The kernel releases the lock when the holder exits, however it exits (a
// killed run leaves no stale lock; the empty file stays and is harmless). Advisory: it excludes
// only writers that take it. `dir` must exist. Movable, not copyable.
class DirectoryLock {
 public:
  explicit DirectoryLock(const std::filesystem::path& dir);
  DirectoryLock(DirectoryLock&& other) noexcept;
  DirectoryLock& operator=(DirectoryLock&& other) noexcept;
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;
  ~DirectoryLock();

  static constexpr const char* kFileName = "bhmoe.lock";

 private:
  int fd_ = -1;
};

}  // namespace bhmoe
