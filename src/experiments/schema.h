// The one schema of the columns bhmoe's experiment outputs hold: every key of a results.jsonl row
// and every column of the CSV files `bhmoe run` / `report` / `merge` write, with its type, unit and
// meaning. `bhmoe report --schema` prints it. The CSV writers of max_k_comparison.csv and
// matched_compute.csv take their headers from it, and tests check that the keys of a results.jsonl
// row and the columns of bh_routing_results.csv are exactly the ones listed here (both ways), so the
// documentation cannot drift from what is written.
//
// Spelling: one name per quantity across outputs, American "utilization" (expert_utilization_cv;
// `bhmoe route --stats` writes the same names). Units: NLL and KL in nats (natural log), per
// predicted token unless the meaning says otherwise; times in seconds; counts of experts per
// routing decision (one token in one layer).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace bhmoe::experiments {

// The output files the schema covers.
enum SchemaFile : unsigned {
  kResultsJsonl = 1u << 0,     // results.jsonl (one flat JSON object per experiment)
  kResultsCsv = 1u << 1,       // bh_routing_results.csv (one line per experiment)
  kMaxKCsv = 1u << 2,          // max_k_comparison.csv
  kMatchedCsv = 1u << 3,       // matched_compute.csv
};

struct ColumnDoc {
  unsigned files;  // SchemaFile bits: the files holding this column with this meaning
  const char* name;
  const char* type;     // string | integer | number | boolean | array of ... | object
  const char* unit;     // "-" when unitless
  const char* meaning;  // including when it is empty / null
};

// Every documented column, in the order the files write them.
const std::vector<ColumnDoc>& output_schema();

// The file name of a SchemaFile bit ("results.jsonl", ...).
const char* schema_file_name(SchemaFile file);

// The names of the columns of `file`, in schema order.
std::vector<std::string> schema_columns(SchemaFile file);

// A CSV header line (no newline) of `file`'s columns.
std::string schema_csv_header(SchemaFile file);

// The text `bhmoe report --schema` prints: one Markdown table per file.
std::string schema_text();

}  // namespace bhmoe::experiments
