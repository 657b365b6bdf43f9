"""Aggregate the runs of a sweep into a mean ± std table per method (or any record field).

    python scripts/aggregate_runs.py logs/embedded_compare/multiruns/<time>
    python scripts/aggregate_runs.py <sweep dir> --by task_name --csv out.csv --md out.md

Reads every ``metrics.json`` under the directory (one per bcd-train job); lists failed jobs (their record
says ``status: failed`` and the error) and jobs that have none (killed or still running) on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bcd_lightning.aggregate import (
    TABLE_METRICS,
    csv_table,
    incomplete_jobs,
    load_runs,
    markdown_table,
    report_failed,
    summarize,
)
from bcd_lightning.utils.run_dir import atomic_write_text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep_dir", type=Path, help="a multirun directory (or any folder of runs)")
    parser.add_argument("--by", default="method", help="record field to group by (default: method)")
    parser.add_argument("--md", type=Path, default=None, help="also write the markdown table here")
    parser.add_argument("--csv", type=Path, default=None, help="also write a CSV of means and stds here")
    args = parser.parse_args(argv)
    try:
        runs = load_runs(args.sweep_dir)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    report_failed(args.sweep_dir)
    for job in incomplete_jobs(args.sweep_dir):
        print(f"warning: no metrics.json in {job} (job crashed or unfinished): left out", file=sys.stderr)
    keys = [key for key, *_ in TABLE_METRICS]
    rows = summarize(runs, keys, by=args.by)
    table = markdown_table(rows, by=args.by)
    print(table, end="")
    if args.md:
        atomic_write_text(args.md, table)
    if args.csv:
        atomic_write_text(args.csv, csv_table(rows, keys, by=args.by))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
