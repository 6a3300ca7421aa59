#include "experiments/progress.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>

#include "experiments/report.h"
#include "util/error.h"
#include "util/file.h"
#include "util/time.h"

namespace bhmoe::experiments {

Progress::Progress(int mode, bool quiet, std::filesystem::path log)
    : bar_(mode == 1 || (mode < 0 && ::isatty(STDERR_FILENO))),
      quiet_(quiet),
      log_(std::move(log)),
      start_(std::chrono::steady_clock::now()) {}

void Progress::start(int64_t total) {
  total_ = total;
  start_ = std::chrono::steady_clock::now();
}

void Progress::log_line(const std::string& line) {
  append_file_durable(log_, utc_now() + " " + line + "\n");
}

void Progress::message(const std::string& line) {
  log_line(line);
  if (quiet_) return;
  if (bar_ && drawn_) std::fprintf(stderr, "\r\033[K");
  std::fprintf(stderr, "%s\n", line.c_str());
  drawn_ = false;
}

void Progress::finished(int64_t done, const std::string& key, const ResultRow& row) {
  double elapsed = seconds_since(start_);
  double eta =
      done > 0 ? elapsed / static_cast<double>(done) * static_cast<double>(total_ - done) : 0;
  char summary[256];
  if (row.ok()) {
    std::snprintf(summary, sizeof summary, "ok %.2fs experts %.2f", row.wall_time_sec,
                  row.avg_experts_per_token);
  } else {
    std::snprintf(summary, sizeof summary, "FAILED: %.160s", row.error.c_str());
  }
  std::string line = cat("[", done, "/", total_, "] ", key, " ", summary);
  log_line(line);
  if (quiet_) return;
  if (bar_) {
    int width = 30;
    int filled = total_ ? static_cast<int>(width * done / total_) : width;
    std::string bar(static_cast<size_t>(filled), '#');
    bar.resize(static_cast<size_t>(width), '.');
    if (!row.ok()) {
      std::fprintf(stderr, "\r\033[K%s\n", line.c_str());
    }
    std::fprintf(stderr, "\r\033[K[%s] %lld/%lld  %s elapsed, ETA %s  %s", bar.c_str(),
                 static_cast<long long>(done), static_cast<long long>(total_),
                 clock_text(elapsed).c_str(), clock_text(eta).c_str(), key.c_str());
    std::fflush(stderr);
    drawn_ = true;
  } else {
    std::fprintf(stderr, "%s (ETA %s)\n", line.c_str(), clock_text(eta).c_str());
  }
}

void Progress::done() {
  if (bar_ && drawn_ && !quiet_) std::fprintf(stderr, "\n");
  drawn_ = false;
}

std::string Progress::clock_text(double seconds) {
  int s = static_cast<int>(std::lround(seconds));
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%d:%02d", s / 60, s % 60);
  return buffer;
}

}  // namespace bhmoe::experiments
