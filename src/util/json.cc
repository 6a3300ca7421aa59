#include "util/json.h"

#include <algorithm>
#include <unordered_set>
#include <vector>

#include "util/error.h"
#include "util/file.h"

namespace bhmoe {
namespace {

using nlohmann::json;

// Where the parser is: one frame per open object or array, so an error can say which key (or array
// element) it was reading. Kept up to date from the parser's callback events.
struct Frame {
  bool is_object = false;
  std::string key;        // objects: the key whose value is being read
  size_t index = 0;       // arrays: elements completed so far, i.e. the index being read
  std::unordered_set<std::string> keys;  // objects: the keys seen, to reject duplicates
};

std::string path_of(const std::vector<Frame>& frames) {
  std::string path;
  for (const Frame& f : frames) {
    if (f.is_object) {
      if (f.key.empty()) continue;  // no key read yet (or the one being reported)
      if (!path.empty()) path += '.';
      // Keys come from the file: a long one is shortened so the message stays readable.
      path += f.key.size() > 80 ? f.key.substr(0, 77) + "..." : f.key;
    } else {
      path += cat("[", f.index, "]");
    }
  }
  return path;
}

std::string where_text(const std::vector<Frame>& frames) {
  std::string path = path_of(frames);
  return path.empty() ? std::string("at the top level") : cat("at key path ", path);
}

// 1-based line and column of byte `offset` (nlohmann's parse_error::byte is 1-based, pointing at
// the last byte read).
std::pair<size_t, size_t> line_column(std::string_view text, size_t byte) {
  size_t end = std::min(byte > 0 ? byte - 1 : 0, text.size());
  size_t line = 1, column = 1;
  for (size_t i = 0; i < end; ++i) {
    if (text[i] == '\n') {
      ++line;
      column = 1;
    } else {
      ++column;
    }
  }
  return {line, column};
}

// The part of a parse_error message after "parse error at line L, column C: " (or after the
// "[json.exception...] " prefix when there is no position).
std::string parse_error_detail(const json::parse_error& e) {
  std::string text = json_error_text(e);
  size_t colon = text.find(": ");
  if (text.rfind("parse error", 0) == 0 && colon != std::string::npos) text = text.substr(colon + 2);
  // The "last read" part quotes the file, however long the token was.
  if (text.size() > 300) text = text.substr(0, 297) + "...";
  return text;
}

}  // namespace

std::string json_error_text(const json::exception& e) {
  std::string text = e.what();
  if (text.rfind("[json.exception.", 0) == 0) {
    size_t close = text.find("] ");
    if (close != std::string::npos) text = text.substr(close + 2);
  }
  return text;
}

json parse_json(std::string_view text, std::string_view source) {
  std::vector<Frame> frames;
  // Completing a value inside an array moves that array's index on; inside an object it ends the
  // key (an error while reading the next key is then reported at the object, not the last key).
  auto completed = [&frames]() {
    if (frames.empty()) return;
    if (frames.back().is_object) {
      frames.back().key.clear();
    } else {
      ++frames.back().index;
    }
  };
  // Exceptions thrown here leave json::parse unchanged (nlohmann does not catch them).
  json::parser_callback_t callback = [&](int /*depth*/, json::parse_event_t event,
                                         json& parsed) -> bool {
    switch (event) {
      case json::parse_event_t::object_start:
        frames.push_back(Frame{true, {}, 0, {}});
        break;
      case json::parse_event_t::array_start:
        frames.push_back(Frame{false, {}, 0, {}});
        break;
      case json::parse_event_t::key: {
        std::string key = parsed.get<std::string>();
        if (!frames.back().keys.insert(key).second) {
          frames.back().key.clear();
          std::string object = path_of(frames);
          fail(source, ": key \"", key, "\" appears twice in the object at ",
               object.empty() ? std::string("the top level") : cat("key path ", object),
               " (a file must not say two things at once)");
        }
        frames.back().key = std::move(key);
        break;
      }
      case json::parse_event_t::object_end:
      case json::parse_event_t::array_end:
        frames.pop_back();
        completed();
        break;
      case json::parse_event_t::value:
        completed();
        break;
    }
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), callback);
  } catch (const json::parse_error& e) {
    auto [line, column] = line_column(text, e.byte);
    // Python's json module writes NaN and Infinity, which JSON does not have.
    const size_t at = std::min(e.byte > 0 ? e.byte - 1 : 0, text.size());
    for (std::string_view word : {"NaN", "Infinity"}) {
      if (text.substr(at, word.size()) == word) {
        const bool minus = at > 0 && text[at - 1] == '-';
        fail(source, ": ", minus ? "-" : "", word, " at line ", line, ", column ", column - minus,
             " (", where_text(frames), ") is not a JSON number; numbers must be finite");
      }
    }
    fail(source, ": malformed JSON at line ", line, ", column ", column, " (", where_text(frames),
         "): ", parse_error_detail(e));
  } catch (const json::out_of_range& e) {
    // 406: a number that does not fit a double, such as 1e400.
    std::string detail = json_error_text(e);
    size_t open = detail.find('\'');
    size_t close = detail.rfind('\'');
    if (e.id == 406 && open != std::string::npos && close > open) {
      fail(source, ": number ", detail.substr(open + 1, close - open - 1), " ", where_text(frames),
           " is not finite as a double (beyond +-1.8e308)");
    }
    fail(source, ": unreadable JSON ", where_text(frames), ": ", detail);
  } catch (const json::exception& e) {
    fail(source, ": unreadable JSON ", where_text(frames), ": ", json_error_text(e));
  }
}

json read_json_file(const std::filesystem::path& path) {
  return parse_json(read_regular_file(path), path.string());
}

}  // namespace bhmoe
