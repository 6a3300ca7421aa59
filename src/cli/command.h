// Subcommand registry. Each command lives in its own cmd_*.cc and registers itself with a static
// CommandRegistration, so frontends are added without touching main.cc:
//
//   static bhmoe::cli::CommandRegistration reg{"bench routing", "Benchmark the routing rules",
//       [](CLI::App& app) { ...add options...; return [=] { ...run...; return 0; }; }};
//
// `path` is one word ("route") or a parent and a child ("bench routing"). The setup function adds
// options to `app` and returns the action to run when that subcommand is chosen; the action returns
// the process exit status. Actions report user errors by throwing bhmoe::Error.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <vector>

namespace bhmoe::cli {

using Action = std::function<int()>;
using Setup = std::function<Action(CLI::App&)>;

struct CommandInfo {
  std::string path;
  std::string description;
  Setup setup;
};

std::vector<CommandInfo>& command_registry();

// A comma-separated list of integers >= 1 given to `option` ("8,16,32,64"); throws bhmoe::Error
// naming the option and the item at fault.
std::vector<int> parse_positive_int_list(const std::string& text, const char* option);

// A validator for a floating-point option: the value must be finite and in [min, max].
// CLI::Range alone lets nan through (every comparison with it is false) and inf up to an infinite
// max; a time budget of nan or inf seconds would never end.
CLI::Validator finite_range(double min, double max);

// A validator for a seed (uint64_t): decimal digits only, at most 2^64 - 1. CLI11 itself converts
// "-1" to 2^64 - 1 without a word.
CLI::Validator unsigned_integer();

struct CommandRegistration {
  CommandRegistration(std::string path, std::string description, Setup setup) {
    command_registry().push_back({std::move(path), std::move(description), std::move(setup)});
  }
};

}  // namespace bhmoe::cli
