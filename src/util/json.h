// Strict JSON reading for the files users hand us (config.json, tokenizer.json, the safetensors
// header and index, calibrations). nlohmann::json alone reports errors as
// "[json.exception.parse_error.101] ..." without the file, and silently keeps the last of two equal
// keys; these wrappers name the file, the line and column, and the key path where parsing stopped,
// and reject duplicate keys, so a file cannot say two things at once.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace bhmoe {

// Parses `text`; `source` names it in messages (usually the path). Throws bhmoe::Error:
//   "<source>: malformed JSON at line L, column C (at key path P): <what is wrong>"
//   "<source>: number 1e400 at key path P is out of range (beyond +-1.8e308)"
//   "<source>: key "k" appears twice in the object at key path P"
nlohmann::json parse_json(std::string_view text, std::string_view source);

// read_regular_file + parse_json, the path naming the source.
nlohmann::json read_json_file(const std::filesystem::path& path);

// A nlohmann::json exception's message without its "[json.exception.<kind>.<id>] " prefix, for the
// rare errors that arise after parsing (a value of an unexpected type deep inside a structure).
std::string json_error_text(const nlohmann::json::exception& e);

}  // namespace bhmoe
