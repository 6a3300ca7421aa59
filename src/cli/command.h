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

struct CommandRegistration {
  CommandRegistration(std::string path, std::string description, Setup setup) {
    command_registry().push_back({std::move(path), std::move(description), std::move(setup)});
  }
};

}  // namespace bhmoe::cli
