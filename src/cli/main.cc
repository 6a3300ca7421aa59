// bhmoe: the command-line front end. Subcommands register themselves (see command.h).
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>

#include "cli/command.h"
#include "util/error.h"

namespace bhmoe::cli {

std::vector<CommandInfo>& command_registry() {
  static std::vector<CommandInfo> registry;
  return registry;
}

}  // namespace bhmoe::cli

int main(int argc, char** argv) {
  using namespace bhmoe::cli;
  CLI::App app{"bhmoe: adaptive (Benjamini-Hochberg) expert routing for mixture-of-experts models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "bhmoe 0.1.0");

  auto& registry = command_registry();
  std::sort(registry.begin(), registry.end(),
            [](const CommandInfo& a, const CommandInfo& b) { return a.path < b.path; });

  std::map<std::string, CLI::App*> parents;
  std::vector<std::pair<CLI::App*, Action>> actions;
  actions.reserve(registry.size());
  for (auto& info : registry) {
    CLI::App* parent = &app;
    std::string name = info.path;
    if (auto space = info.path.find(' '); space != std::string::npos) {
      std::string group = info.path.substr(0, space);
      name = info.path.substr(space + 1);
      auto [it, inserted] = parents.try_emplace(group, nullptr);
      if (inserted) {
        it->second = app.add_subcommand(group, group == "bench" ? "Benchmarks that print JSON figures"
                                                                : group + " commands");
        it->second->require_subcommand(1);
      }
      parent = it->second;
    }
    CLI::App* sub = parent->add_subcommand(name, info.description);
    actions.emplace_back(sub, info.setup(*sub));
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version arrive as "errors" with exit code 0; CLI11 prints them. Every other
    // parse error (an unknown flag, a value out of range, a missing required option) is reported
    // like any other error: "bhmoe: error:" with CLI11's message, which names the flag, and status
    // 1, not CLI11's own codes (105, 106, ...).
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) return app.exit(e);
    std::cerr << "bhmoe: error: " << e.what() << "\nRun with --help for more information.\n";
    return 1;
  }

  try {
    for (auto& [sub, action] : actions) {
      if (sub->parsed()) return action();
    }
  } catch (const bhmoe::Error& e) {
    std::fflush(stdout);
    std::cerr << "bhmoe: error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::cerr << "bhmoe: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
