#include "util/json.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "util/error.h"

namespace bhmoe {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

std::string error_of(std::string_view text) {
  try {
    parse_json(text, "dir/x.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Json, ParsesValidText) {
  nlohmann::json j = parse_json(R"({"a": [1, {"b": 2.5}], "c": "d"})", "x");
  EXPECT_EQ(j["a"][1]["b"].get<double>(), 2.5);
  EXPECT_EQ(j["c"], "d");
  // Equal keys in different objects are fine.
  EXPECT_NO_THROW(parse_json(R"({"a": {"k": 1}, "b": {"k": 2}, "k": 3})", "x"));
}

TEST(Json, OutOfRangeNumberNamesFileAndKeyPath) {
  EXPECT_EQ(error_of(R"({"rope_theta": 1e400})"),
            "dir/x.json: number 1e400 at key path rope_theta is not finite as a double (beyond "
            "+-1.8e308)");
  EXPECT_THAT(error_of(R"({"layers": [{"layer": 0}, {"layer": 1, "x": [0, -1e999]}]})"),
              AllOf(HasSubstr("-1e999"), HasSubstr("layers[1].x[1]"), Not(HasSubstr("json."))));
  EXPECT_THAT(error_of("[1e400]"), HasSubstr("at key path [0]"));
  EXPECT_THAT(error_of("1e400"), HasSubstr("at the top level"));
}

TEST(Json, SyntaxErrorNamesLineColumnAndKeyPath) {
  std::string message = error_of("{\n  \"model\": {\"vocab\": {\"a\": 1,,}}\n}");
  EXPECT_THAT(message, AllOf(HasSubstr("dir/x.json: malformed JSON at line 2, column"),
                             HasSubstr("model.vocab"), Not(HasSubstr("json.exception")),
                             Not(HasSubstr("[json"))));
  EXPECT_THAT(error_of(""), AllOf(HasSubstr("dir/x.json: malformed JSON"),
                                  HasSubstr("at the top level"), Not(HasSubstr("json."))));
  EXPECT_THAT(error_of("{} trailing"), HasSubstr("malformed JSON at line 1, column"));
}

// An error while reading the key after a completed value is reported at the object, not at the
// key before it; keys from the file are shortened in the path.
TEST(Json, KeyPathAfterACompletedValue) {
  EXPECT_THAT(error_of(R"({"a": 1, 2})"), HasSubstr("(at the top level)"));
  EXPECT_THAT(error_of(R"({"m": {"a": [1], 2}})"), HasSubstr("(at key path m)"));
  std::string long_key(200, 'k');
  std::string message = error_of("{\"" + long_key + "\": [1, }");
  EXPECT_THAT(message, HasSubstr("(at key path " + std::string(77, 'k') + "...[1])"));
}

TEST(Json, NanAndInfinityNamed) {
  EXPECT_EQ(error_of("{\"x\": [0, NaN]}"),
            "dir/x.json: NaN at line 1, column 11 (at key path x[1]) is not a JSON number; numbers "
            "must be finite");
  EXPECT_THAT(error_of("{\"x\": -Infinity}"), HasSubstr("-Infinity at line 1, column 7"));
}

TEST(Json, DuplicateKeysAreRejected) {
  EXPECT_EQ(error_of(R"({"a": 1, "a": 2})"),
            "dir/x.json: key \"a\" appears twice in the object at the top level (a file must "
            "not say two things at once)");
  EXPECT_THAT(error_of(R"({"m": {"v": {"x": 1, "y": 2, "x": 3}}})"),
              AllOf(HasSubstr("key \"x\" appears twice"), HasSubstr("key path m.v ")));
  EXPECT_THAT(error_of(R"([{"a": 1}, {"b": 1, "b": 2}])"), HasSubstr("key path [1] "));
}

TEST(Json, ErrorTextLosesTheLibraryPrefix) {
  try {
    nlohmann::json j = 3;
    (void)j.at("x");
    FAIL() << "expected an exception";
  } catch (const nlohmann::json::exception& e) {
    EXPECT_THAT(json_error_text(e), Not(HasSubstr("json.exception")));
    EXPECT_FALSE(json_error_text(e).empty());
  }
}

}  // namespace
}  // namespace bhmoe
