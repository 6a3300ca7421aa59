#include "util/file.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>

#include <chrono>
#include <filesystem>

#include "util/error.h"

namespace bhmoe {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;

class FileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           cat("bhmoe-file-test-", ::getpid(), "-",
               ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // A FIFO nobody writes to: opening it for reading in blocking mode would never return.
  fs::path fifo() {
    fs::path path = dir_ / "model.fifo";
    if (::mkfifo(path.c_str(), 0600) != 0) ADD_FAILURE() << "mkfifo failed";
    return path;
  }

  fs::path dir_;
};

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST_F(FileTest, ReadRegularFileReadsWholeFile) {
  std::string bytes(200000, 'x');
  bytes[12345] = '\0';
  write_file_atomic(dir_ / "a.bin", bytes);
  EXPECT_EQ(read_regular_file(dir_ / "a.bin"), bytes);
  write_file_atomic(dir_ / "empty", "");
  EXPECT_EQ(read_regular_file(dir_ / "empty"), "");
}

TEST_F(FileTest, FifoIsRejectedWithoutBlocking) {
  fs::path path = fifo();
  auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(error_of([&] { read_regular_file(path); }),
            path.string() + " is a FIFO (named pipe), not a regular file");
  EXPECT_EQ(error_of([&] { MappedFile mapped(path); }),
            path.string() + " is a FIFO (named pipe), not a regular file");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

TEST_F(FileTest, DirectoryAndDeviceAreRejected) {
  EXPECT_EQ(error_of([&] { read_regular_file(dir_); }),
            dir_.string() + " is a directory, not a regular file");
  EXPECT_EQ(error_of([&] { MappedFile mapped("/dev/null"); }),
            "/dev/null is a character device, not a regular file");
}

TEST_F(FileTest, MissingFileNamesThePath) {
  EXPECT_THAT(error_of([&] { read_regular_file(dir_ / "nope.json"); }),
              AllOf(HasSubstr("cannot open"), HasSubstr("nope.json"),
                    HasSubstr("No such file or directory")));
}

TEST_F(FileTest, MappedFileMapsRegularFile) {
  write_file_atomic(dir_ / "w.bin", "abcdef");
  MappedFile mapped(dir_ / "w.bin");
  ASSERT_EQ(mapped.size(), 6u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(mapped.data()), 6), "abcdef");
}

TEST_F(FileTest, RequireUnchangedTellsEachKindOfChange) {
  const fs::path path = dir_ / "weights.bin";
  write_file_atomic(path, "abc");
  const FileIdentity loaded = file_identity(path);
  EXPECT_EQ(loaded, MappedFile(path).identity());
  EXPECT_EQ(loaded.size, 3u);
  require_unchanged(path, loaded);  // no error

  // Same size, new modification time: modified in place.
  struct timespec times[2] = {{0, UTIME_OMIT}, {12345, 678}};
  ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), times, 0), 0);
  EXPECT_THAT(error_of([&] { require_unchanged(path, loaded); }),
              AllOf(HasSubstr(path.string() + " changed on disk since it was loaded"),
                    HasSubstr("it was modified in place")));
  // Grown in place.
  append_file_durable(path, "d");
  EXPECT_THAT(error_of([&] { require_unchanged(path, loaded); }),
              HasSubstr("its size went from 3 to 4 bytes"));
  // Replaced by rename (a new inode), even with the same contents.
  const FileIdentity grown = file_identity(path);
  write_file_atomic(path, "abcd");
  EXPECT_THAT(error_of([&] { require_unchanged(path, grown); }),
              HasSubstr("it was replaced by another file"));
  fs::remove(path);
  EXPECT_THAT(error_of([&] { require_unchanged(path, grown); }), HasSubstr("(it is gone: "));
}

// A mapped file truncated by another process: reading past its new end raises SIGBUS, which must
// end the process with a message naming the file, not a bare signal.
TEST_F(FileTest, ReadingATruncatedMappingNamesTheFileAndExits) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "AddressSanitizer installs its own SIGBUS handler";
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
  GTEST_SKIP() << "AddressSanitizer installs its own SIGBUS handler";
#endif
#endif
  const fs::path path = dir_ / "truncated.bin";
  write_file_atomic(path, std::string(3 * 4096, 'x'));
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        MappedFile mapped(path);
        fs::resize_file(path, 0);
        volatile uint8_t byte = mapped.data()[2 * 4096];
        (void)byte;
      },
      ::testing::ExitedWithCode(1), "truncated.bin shrank while it was memory-mapped");
  // An address outside every mapping still dies of the signal itself.
  EXPECT_EXIT(
      {
        MappedFile keep(path);  // the handler is installed, and the signal is not about a mapping
        ::raise(SIGBUS);
      },
      ::testing::KilledBySignal(SIGBUS), "");
}

TEST_F(FileTest, RequireAndEnsureDirectoryNameThePath) {
  write_file_atomic(dir_ / "file", "x");
  EXPECT_EQ(error_of([&] { require_directory(dir_ / "file"); }),
            (dir_ / "file").string() + " is not a directory (it is a regular file)");
  EXPECT_EQ(error_of([&] { require_directory(dir_ / "absent"); }),
            (dir_ / "absent").string() + ": no such file or directory");
  EXPECT_EQ(error_of([&] { require_directory(dir_); }), "(no error)");
  EXPECT_EQ(error_of([&] { ensure_directory(dir_ / "file"); }),
            (dir_ / "file").string() + " is not a directory (it is a regular file)");
  EXPECT_THAT(error_of([&] { ensure_directory(dir_ / "file" / "sub"); }),
              HasSubstr("cannot create directory " + (dir_ / "file" / "sub").string()));
  EXPECT_EQ(error_of([&] { ensure_directory(dir_ / "new" / "sub"); }), "(no error)");
  EXPECT_TRUE(fs::is_directory(dir_ / "new" / "sub"));
}

TEST_F(FileTest, DirectoryLockExcludesASecondHolderUntilReleased) {
  {
    DirectoryLock first(dir_);
    // flock locks belong to open file descriptions: a second open, even in this process, conflicts
    // exactly as another process would.
    EXPECT_THAT(error_of([&] { DirectoryLock second(dir_); }),
                AllOf(HasSubstr("the folder " + dir_.string() + " is in use"),
                      HasSubstr("another bhmoe process"),
                      HasSubstr((dir_ / DirectoryLock::kFileName).string())));
    DirectoryLock moved(std::move(first));  // the lock moves with the object
    EXPECT_THAT(error_of([&] { DirectoryLock second(dir_); }), HasSubstr("is in use"));
  }
  EXPECT_EQ(error_of([&] { DirectoryLock again(dir_); }), "(no error)");
  EXPECT_THAT(error_of([&] { DirectoryLock absent(dir_ / "absent"); }),
              HasSubstr("cannot open the lock file"));
}
}  // namespace
}  // namespace bhmoe
