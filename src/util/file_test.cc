#include "util/file.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

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
