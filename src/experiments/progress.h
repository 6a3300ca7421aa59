// Progress of `bhmoe run`: every line goes to run.log (timestamped, durably); on stderr either a
// plain line per finished experiment or a bar redrawn in place (mode -1: bar when stderr is a
// terminal, 0: lines, 1: bar); quiet prints nothing.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>

#include "experiments/results.h"

namespace bhmoe::experiments {

class Progress {
 public:
  Progress(int mode, bool quiet, std::filesystem::path log);

  // The number of experiments to come; the ETA is measured from this call.
  void start(int64_t total);
  void log_line(const std::string& line);  // run.log only
  void message(const std::string& line);   // run.log and stderr
  void finished(int64_t done, const std::string& key, const ResultRow& row);
  void done();  // ends the bar's line

 private:
  static std::string clock_text(double seconds);
  bool bar_;
  bool quiet_;
  int64_t total_ = 0;
  std::filesystem::path log_;
  std::chrono::steady_clock::time_point start_;
  bool drawn_ = false;
};

}  // namespace bhmoe::experiments
