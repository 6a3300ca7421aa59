#!/usr/bin/env python3
"""Median figures per (weights, router) of `bhmoe bench model` JSON lines, as a Markdown table.

    bench/summarize.py bench/model.jsonl [--series ID]
"""
import argparse
import json
import statistics
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("record", help="JSON lines written by bhmoe bench model --record")
    parser.add_argument("--series", help="only lines of this series (bench/model_series.sh)")
    args = parser.parse_args()
    groups = {}
    with open(args.record, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                print(f"{args.record}:{number}: not JSON ({e})", file=sys.stderr)
                return 1
            if row.get("bench") != "model":
                continue
            if args.series and row.get("series") != args.series:
                continue
            groups.setdefault((row["weights"], row["router"]), []).append(row)
    if not groups:
        print(f"{args.record}: no matching bench model lines", file=sys.stderr)
        return 1

    def med(rows, key, scale=1.0):
        values = [r[key] * scale for r in rows if key in r]
        return f"{statistics.median(values):.1f}" if values else ""

    def med3(rows, key):
        values = [r[key] for r in rows if key in r]
        return f"{statistics.median(values):.3f}" if values else ""

    def med_k(rows, k):
        values = [r["decode_ms_per_token_by_k"][k] for r in rows if k in r["decode_ms_per_token_by_k"]]
        return f"{statistics.median(values):.1f}" if values else ""

    print("| weights | router | runs | prefill-64 tok/s | prefill-256 tok/s | decode tok/s | "
          "decode ms at k=1/2/4/8/16 | read GB/s (huge / 4 KiB pages) | decode % of bound | "
          "adaptive / fixed at mean k | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (weights, router), rows in sorted(groups.items()):
        ks = " / ".join(med_k(rows, k) for k in ("1", "2", "4", "8", "16"))
        print(f"| {weights} | {router} | {len(rows)} | {med(rows, 'prefill_tokens_per_s_64')} | "
              f"{med(rows, 'prefill_tokens_per_s_256')} | {med(rows, 'decode_tokens_per_s')} | "
              f"{ks} | {med(rows, 'read_bandwidth_gbs')} / {med(rows, 'read_bandwidth_4k_pages_gbs')} | "
              f"{med(rows, 'decode_fraction_of_bound', 100)} | "
              f"{med3(rows, 'adaptive_over_fixed_time')} | {med(rows, 'peak_rss_mib', 1 / 1024)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
