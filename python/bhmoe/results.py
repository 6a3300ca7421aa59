"""Experiment results as records that pandas takes as they are."""

import json
import os


def _flatten(row, prefix="", out=None):
    out = {} if out is None else out
    for key, value in row.items():
        name = prefix + key
        if isinstance(value, dict):
            _flatten(value, name + ".", out)
        else:
            out[name] = value
    return out


def load_results(out):
    """Rows of an experiment's results.jsonl (`out` is the run's --out folder or the file itself),
    one dict per row with nested objects flattened to dotted keys ("model.name", "config.k"), ready
    for pandas.DataFrame(load_results(out)). A torn last line (a run killed mid-write) is skipped, as
    the runner's resume does; any other unreadable line is an error naming the file and line."""
    path = os.path.join(out, "results.jsonl") if os.path.isdir(out) else out
    rows = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines) and not lines[-1].endswith("}"):
                break  # torn final line without its newline
            raise ValueError("%s:%d: not a JSON object (%s)" % (path, number, e.msg)) from None
        if not isinstance(row, dict):
            raise ValueError("%s:%d: not a JSON object" % (path, number))
        rows.append(_flatten(row))
    return rows
