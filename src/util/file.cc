#include "util/file.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>

#include "util/error.h"

namespace bhmoe {
namespace {

std::string errno_text() { return std::strerror(errno); }

void write_all(int fd, std::string_view data, const std::filesystem::path& path) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("cannot write ", path.string(), ": ", errno_text());
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
}

// Opens `path` read-only without blocking (O_NONBLOCK: a FIFO with no writer would block open(2)
// for ever) and checks that it is a regular file; returns the descriptor and fills `st`.
int open_regular(const std::filesystem::path& path, struct stat* st) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) fail("cannot open ", path.string(), ": ", errno_text());
  if (::fstat(fd, st) != 0) {
    std::string why = errno_text();
    ::close(fd);
    fail("cannot stat ", path.string(), ": ", why);
  }
  if (!S_ISREG(st->st_mode)) {
    ::close(fd);
    fail(path.string(), " is ", file_kind_name(st->st_mode), ", not a regular file");
  }
  return fd;
}

}  // namespace

const char* file_kind_name(unsigned mode) {
  if (S_ISREG(mode)) return "a regular file";
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  return "not a regular file";
}

std::string read_regular_file(const std::filesystem::path& path) {
  struct stat st {};
  int fd = open_regular(path, &st);
  std::string out;
  try {
    out.reserve(static_cast<size_t>(st.st_size));
    char buffer[1 << 16];
    for (;;) {
      ssize_t n = ::read(fd, buffer, sizeof buffer);
      if (n < 0) {
        if (errno == EINTR) continue;
        fail("cannot read ", path.string(), ": ", errno_text());
      }
      if (n == 0) break;
      out.append(buffer, static_cast<size_t>(n));
    }
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
  return out;
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open ", path.string(), ": ", errno_text());
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) fail("cannot read ", path.string());
  return buffer.str();
}

void write_file_atomic(const std::filesystem::path& path, std::string_view contents) {
  std::filesystem::path dir = path.parent_path();
  if (!dir.empty() && !std::filesystem::exists(dir)) std::filesystem::create_directories(dir);
  std::random_device rd;
  std::filesystem::path tmp = path;
  tmp += ".tmp." + std::to_string(::getpid()) + "." + std::to_string(rd());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail("cannot create ", tmp.string(), ": ", errno_text());
  try {
    write_all(fd, contents, tmp);
    if (::fsync(fd) != 0) fail("cannot sync ", tmp.string(), ": ", errno_text());
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    std::string why = errno_text();
    ::unlink(tmp.c_str());
    fail("cannot rename ", tmp.string(), " to ", path.string(), ": ", why);
  }
}

void append_file_durable(const std::filesystem::path& path, std::string_view record) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) fail("cannot open ", path.string(), " for appending: ", errno_text());
  try {
    write_all(fd, record, path);
    if (::fsync(fd) != 0) fail("cannot sync ", path.string(), ": ", errno_text());
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
}

namespace {

FileIdentity identity_of(const struct stat& st) {
  FileIdentity id;
  id.device = static_cast<uint64_t>(st.st_dev);
  id.inode = static_cast<uint64_t>(st.st_ino);
  id.size = static_cast<uint64_t>(st.st_size);
  id.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  return id;
}

// The live mappings, readable from the SIGBUS handler: only atomics and fixed arrays (no locks, no
// allocation). A slot is free while `end` is 0; the path is written before `end` is published.
struct MappedRange {
  std::atomic<uintptr_t> begin{0}, end{0};
  char path[1024] = {};
};
constexpr int kMaxMappedRanges = 256;
MappedRange g_ranges[kMaxMappedRanges];
std::mutex g_ranges_mutex;  // serialises registration (the handler only reads)
struct sigaction g_previous_sigbus {};

void write_all(const char* text) {
  size_t left = std::strlen(text);
  while (left > 0) {
    const ssize_t n = ::write(STDERR_FILENO, text, left);
    if (n <= 0) return;
    text += n;
    left -= static_cast<size_t>(n);
  }
}

void on_sigbus(int sig, siginfo_t* info, void* context) {
  const uintptr_t at = reinterpret_cast<uintptr_t>(info->si_addr);
  for (MappedRange& r : g_ranges) {
    const uintptr_t end = r.end.load(std::memory_order_acquire);
    if (end != 0 && at >= r.begin.load(std::memory_order_relaxed) && at < end) {
      write_all("bhmoe: error: ");
      write_all(r.path);
      write_all(" shrank while it was memory-mapped (reading it raised SIGBUS): a file must not be "
                "truncated or rewritten in place while bhmoe uses it. Results already written are "
                "intact; rerun to resume once the file is whole.\n");
      ::_exit(1);
    }
  }
  // Not one of ours: hand it to the handler that was there before (or the default action).
  if (g_previous_sigbus.sa_flags & SA_SIGINFO) {
    if (g_previous_sigbus.sa_sigaction) return g_previous_sigbus.sa_sigaction(sig, info, context);
  } else if (g_previous_sigbus.sa_handler != SIG_DFL && g_previous_sigbus.sa_handler != SIG_IGN) {
    return g_previous_sigbus.sa_handler(sig);
  }
  // The default action: raised again (pending until the handler returns), it ends the process
  // whether the signal came from a fault or from kill/raise.
  ::signal(SIGBUS, SIG_DFL);
  ::raise(SIGBUS);
}

void register_mapping(const uint8_t* data, size_t size, const std::filesystem::path& path) {
  static std::once_flag installed;
  std::call_once(installed, [] {
    struct sigaction sa {};
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGBUS, &sa, &g_previous_sigbus);
  });
  const std::lock_guard<std::mutex> lock(g_ranges_mutex);
  for (MappedRange& r : g_ranges) {
    if (r.end.load(std::memory_order_relaxed) != 0) continue;
    std::snprintf(r.path, sizeof r.path, "%s", path.c_str());
    r.begin.store(reinterpret_cast<uintptr_t>(data), std::memory_order_relaxed);
    r.end.store(reinterpret_cast<uintptr_t>(data) + size, std::memory_order_release);
    return;
  }
  // More live mappings than slots: this one dies with a bare SIGBUS if truncated.
}

void unregister_mapping(const uint8_t* data) {
  const std::lock_guard<std::mutex> lock(g_ranges_mutex);
  for (MappedRange& r : g_ranges) {
    if (r.end.load(std::memory_order_relaxed) != 0 &&
        r.begin.load(std::memory_order_relaxed) == reinterpret_cast<uintptr_t>(data)) {
      r.end.store(0, std::memory_order_release);
      r.begin.store(0, std::memory_order_relaxed);
      return;
    }
  }
}

}  // namespace

FileIdentity file_identity(const std::filesystem::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) fail("cannot stat ", path.string(), ": ", errno_text());
  return identity_of(st);
}

void require_unchanged(const std::filesystem::path& path, const FileIdentity& at_load) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    fail(path.string(), " changed on disk since it was loaded (it is gone: ", errno_text(),
         "); stopping so that no result comes from another file than the one recorded");
  }
  const FileIdentity now = identity_of(st);
  if (now == at_load) return;
  std::string what;
  if (now.device != at_load.device || now.inode != at_load.inode) {
    what = "it was replaced by another file";
  } else if (now.size != at_load.size) {
    what = cat("its size went from ", at_load.size, " to ", now.size, " bytes");
  } else {
    what = "it was modified in place";
  }
  fail(path.string(), " changed on disk since it was loaded (", what,
       "); stopping so that no result comes from another file than the one recorded");
}

MappedFile::MappedFile(const std::filesystem::path& path) : path_(path) {
  struct stat st {};
  int fd = open_regular(path, &st);
  size_ = static_cast<size_t>(st.st_size);
  identity_ = identity_of(st);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      std::string why = errno_text();
      ::close(fd);
      fail("cannot mmap ", path.string(), ": ", why);
    }
    data_ = static_cast<const uint8_t*>(p);
    register_mapping(data_, size_, path_);
  }
  ::close(fd);
}

void MappedFile::release() {
  if (!data_) return;
  unregister_mapping(data_);
  ::munmap(const_cast<uint8_t*>(data_), size_);
  data_ = nullptr;
  size_ = 0;
}

MappedFile::MappedFile(MappedFile&& other) noexcept { *this = std::move(other); }

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    release();
    path_ = std::move(other.path_);
    data_ = other.data_;
    size_ = other.size_;
    identity_ = other.identity_;
    other.data_ = nullptr;
    other.size_ = 0;
  }
  return *this;
}

MappedFile::~MappedFile() { release(); }

namespace {

// "(it is a regular file)" / "(it does not exist)" for a path that should be a directory, or
// empty when it is one.
std::string not_a_directory(const std::filesystem::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return path.string() + ": no such file or directory";
    return path.string() + " is not a directory (cannot stat it: " + errno_text() + ")";
  }
  if (S_ISDIR(st.st_mode)) return {};
  return path.string() + " is not a directory (it is " + file_kind_name(st.st_mode) + ")";
}

}  // namespace

void require_directory(const std::filesystem::path& path) {
  if (std::string why = not_a_directory(path); !why.empty()) fail(why);
}

void ensure_directory(const std::filesystem::path& path) {
  std::error_code ec;
  if (std::filesystem::exists(path, ec)) {
    require_directory(path);
    return;
  }
  std::filesystem::create_directories(path, ec);
  // create_directories also fails when a parent is a regular file; name the path asked for.
  if (ec) fail("cannot create directory ", path.string(), ": ", ec.message());
}

DirectoryLock::DirectoryLock(const std::filesystem::path& dir) {
  const std::filesystem::path lock = dir / kFileName;
  fd_ = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd_ < 0) fail("cannot open the lock file ", lock.string(), ": ", errno_text());
  int rc;
  do {
    rc = ::flock(fd_, LOCK_EX | LOCK_NB);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    const bool held = errno == EWOULDBLOCK;
    const std::string why = errno_text();
    ::close(fd_);
    fd_ = -1;
    if (held) {
      fail("the folder ", dir.string(),
           " is in use: another bhmoe process (a run, merge or report ",
           "writing to it) holds its lock ", lock.string(),
           "; wait for it to finish or choose another folder");
    }
    fail("cannot lock ", lock.string(), ": ", why);
  }
}

DirectoryLock::DirectoryLock(DirectoryLock&& other) noexcept : fd_(other.fd_) {
  other.fd_ = -1;
}

DirectoryLock& DirectoryLock::operator=(DirectoryLock&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.fd_;
    other.fd_ = -1;
  }
  return *this;
}

DirectoryLock::~DirectoryLock() {
  if (fd_ >= 0) ::close(fd_);  // closing the only descriptor releases the flock
}

}  // namespace bhmoe
