"""Run every benchmark in this folder and print one table with the machine it ran on.

    python bench/run_all.py [--quick] [--only generation,switch]

Each `bench/bench_<topic>.py` module provides `run(quick) -> list[Row]`. A goal that is missed is
printed as FAIL but the exit code stays 0: benchmarks inform, tests gate. A benchmark that crashes
is reported as an error row (exit code 1), because then we measured nothing.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import sys
import time
import traceback
from pathlib import Path

from common import Row, format_table, machine_description

BENCH_DIR = Path(__file__).resolve().parent


def bench_modules(only: set[str] | None = None) -> list[str]:
    names = sorted(path.stem for path in BENCH_DIR.glob("bench_*.py"))
    if only:
        names = [name for name in names if name.removeprefix("bench_") in only]
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run every bench/bench_*.py and print one table.")
    parser.add_argument("--quick", action="store_true", help="short runs (fewer repeats, smaller cases)")
    parser.add_argument("--only", default="", help="comma-separated topics, e.g. generation,switch")
    args = parser.parse_args(argv)
    only = {name.strip() for name in args.only.split(",") if name.strip()} or None

    rows: list[Row] = []
    errors: list[str] = []
    started = time.perf_counter()
    for name in bench_modules(only):
        print(f"running {name} ...", file=sys.stderr, flush=True)
        module_started = time.perf_counter()
        try:
            rows += importlib.import_module(name).run(args.quick)
        except Exception:  # one broken benchmark must not hide the others' numbers
            errors.append(f"{name}: {traceback.format_exc()}")
            rows.append(Row(f"{name}: crashed (see below)", 0.0, 0.0, "-", "-", False))
        print(f"  {name} took {time.perf_counter() - module_started:.0f}s", file=sys.stderr, flush=True)

    print(f"Machine: {machine_description()}")
    print(
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, "
        f"{'quick' if args.quick else 'full'} run, {time.perf_counter() - started:.0f}s"
    )
    print()
    print(format_table(rows))
    passed = sum(row.passed for row in rows)
    print(f"\n{passed}/{len(rows)} goals met.")
    for error in errors:
        print(f"\nERROR in {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
