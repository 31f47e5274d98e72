"""python -m bench [--quick] [--only B1,B2] [--db sqlite,postgres]: run the benchmarks, print
each figure with its ratio to a baseline measured in the same run, append to bench/RESULTS.md.

The full run measures at the sizes of the targets on both databases (about 25 minutes here). The
quick run (under two minutes here) runs every benchmark smaller and, unless ``--db`` says
otherwise, on SQLite only: the embedded default, which needs no database server."""

from __future__ import annotations

import argparse
import compileall
import importlib
import importlib.util
import sys
import time
from pathlib import Path

from .common import Result, append_results, print_results

# Each benchmark is a module with run(kind: "sqlite"|"postgres", quick: bool) -> list[Result].
PLAN = [
    ("B1", "b1_ingest"),
    ("B2", "b2_processing"),
    ("B3", "b3_latency"),
    ("B4", "b4_inbox"),
    ("B5", "b5_outbound"),
    ("B6", "b6_sockets"),
]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument(
        "--quick", action="store_true", help="smaller runs, on SQLite unless --db (two minutes)"
    )
    parser.add_argument("--only", default="", help="comma-separated: B1,B2,...")
    parser.add_argument("--db", default=None, help="default: sqlite,postgres (quick: sqlite)")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()
    only = {b.strip().upper() for b in args.only.split(",") if b.strip()}
    chosen = args.db if args.db is not None else "sqlite" if args.quick else "sqlite,postgres"
    databases = [d.strip() for d in chosen.split(",") if d.strip()]

    # Every process started here reads compiled bytecode, as an installed package has it: where
    # PYTHONDONTWRITEBYTECODE is set (this machine) each would otherwise compile the package at
    # start, which B5 pays again for every killed worker it restarts.
    package = importlib.util.find_spec("madoguchi")
    if package is not None and package.origin:
        compileall.compile_dir(Path(package.origin).parent, quiet=1)
    plan = [(name, module) for name, module in PLAN if importlib.util.find_spec(f"bench.{module}")]
    results: list[Result] = []
    notes: list[str] = []
    took: list[str] = []
    started = time.monotonic()
    for name, module in plan:
        if only and name not in only:
            continue
        bench = importlib.import_module(f"bench.{module}").run
        for kind in databases:
            print(f"== {name} on {kind}", flush=True)
            began = time.monotonic()
            try:
                produced = bench(kind, args.quick)
            except Exception as exc:  # one broken bench must not hide the others
                notes.append(f"{name} on {kind} failed: {exc}")
                print(f"{name} on {kind} failed: {exc}", file=sys.stderr)
                continue
            print_results(produced)
            took.append(f"{name} {kind} {time.monotonic() - began:.0f} s")
            results.extend(produced)
    mode = "quick" if args.quick else "full"
    notes.append(f"took {time.monotonic() - started:.0f} s ({', '.join(took)})")
    if not args.no_record:
        append_results(results, mode, notes)
    missed = [r for r in results if r.ok is False]
    print(f"{len(results)} figures, {len(missed)} targets missed; {notes[-1]}", flush=True)


if __name__ == "__main__":
    main()
