// Building /bin/sh command lines (gnuplot runs, tests that run the bhmoe binary).
#pragma once

#include <string>
#include <string_view>

namespace bhmoe {

// `text` as one single-quoted /bin/sh word: every byte literal, embedded single quotes as '\''.
std::string shell_quote(std::string_view text);

}  // namespace bhmoe
