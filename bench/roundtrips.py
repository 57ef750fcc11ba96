"""Where a small table's time goes: statements and seconds per step of its copy.

    python3 bench/roundtrips.py                     # 200 tables of 200 rows, --jobs 1
    python3 bench/roundtrips.py --tables 50

Refreshes a populated target of small tables (a key, an index and 200 rows each, as
bench/many.py) with the copier running in this process (--jobs 1, --copy-unchanged: every table
is copied, as by the other tools), every statement it sends
counted and timed, and charged to the step of the copy it was sent from (the innermost of the
named functions below on the stack). Prints per table: statements and milliseconds by step,
and the rest of the wall time (the client's own work). The cluster lives in
bench/results/pgdata-roundtrips (gitignored).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import os
import re
import sys
import time
from pathlib import Path

import psycopg2
import psycopg2.extensions

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from many import fill_source  # noqa: E402
from timed import COPY_UNCHANGED, admin, bench_cluster, fresh_database, run_copier  # noqa: E402

import copier  # noqa: E402

DATADIR = REPO / "bench" / "results" / "pgdata-roundtrips"
SOURCE, TARGET = "many_source", "roundtrips_target"

# The steps of one table's copy, and the run's own work around them, by function name.
STEPS = (
    "read_definition", "refuse_what_cannot_survive", "prepare_target", "stage_table", "load_rows",
    "build_indexes", "build_reporting_indexes", "set_statistics", "set_sequences",
    "capture_reporting_side", "restore_reporting_side", "replace_table",
    "swap_into_place", "complete", "transaction", "connect", "resolve_tables", "check_target", "lock_tables",
    "late_swaps", "export_snapshot", "warn_if_recovery_may_cancel", "validate_after_run", "run",
    "pump_source", "found_again", "with_definitions",
    # the fingerprints: made, read and recorded (a refresh with --copy-unchanged records them too)
    "fingerprint_store_usable", "make_fingerprint_store", "with_fingerprints", "record_fingerprint",
)
SEEN: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])


def step_of(frame) -> str:
    while frame is not None:
        name = frame.f_code.co_name
        if name in STEPS and frame.f_globals.get("__name__") == "copier":
            return name
        frame = frame.f_back
    return "other"


def step_and_statement(cursor, query) -> str:
    """The copy's own statements (BEGIN, ANALYZE, COMMIT) by their first word."""
    step = step_of(sys._getframe(2))
    if step in ("complete", "transaction", "run"):
        text = query if isinstance(query, str) else query.as_string(cursor)
        words = re.findall(r"[A-Za-z_]+", text[:40])
        step += ": " + (words[0] if words else "?")
    return step


class CountingCursor(psycopg2.extensions.cursor):
    def execute(self, query, vars=None):
        step = step_and_statement(self, query)
        started = time.perf_counter()
        try:
            return super().execute(query, vars)
        finally:
            SEEN[step][0] += 1
            SEEN[step][1] += time.perf_counter() - started

    def copy_expert(self, sql, file, size=8192):
        step = step_of(sys._getframe(1))
        started = time.perf_counter()
        try:
            return super().copy_expert(sql, file, size)
        finally:
            SEEN[step][0] += 1
            SEEN[step][1] += time.perf_counter() - started


def counting_connect(dsn="", **kwargs):
    return original_connect(dsn, cursor_factory=CountingCursor, **kwargs)


original_connect = psycopg2.connect


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", type=int, default=200, help="how many tables (default 200)")
    args = parser.parse_args(argv)
    cluster = bench_cluster(DATADIR, {"max_locks_per_transaction": "1024"})
    try:
        names = fill_source(cluster, args.tables)
        fresh_database(cluster, TARGET)
        run_copier(cluster, SOURCE, TARGET, names, "--jobs", "1")  # untimed: a populated target
        admin(cluster, "CHECKPOINT")
        os.environ.update(SOURCE_DSN=cluster.dsn(SOURCE), TARGET_DSN=cluster.dsn(TARGET))
        copier.psycopg2.connect = counting_connect
        errors = io.StringIO()
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(errors):
            code = copier.main(["TABLES=" + ",".join(names), COPY_UNCHANGED, "--jobs", "1"])
        wall = time.perf_counter() - started
    finally:
        copier.psycopg2.connect = original_connect
        cluster.stop()
    if code:
        raise SystemExit("the copier failed:\n" + errors.getvalue()[-3000:])
    n = args.tables
    print(f"{n} tables of 200 rows, a key and an index each; copier --jobs 1 in-process\n")
    print("| step | statements per table | ms per table |\n|---|---:|---:|")
    for step, (count, seconds) in sorted(SEEN.items(), key=lambda item: -item[1][1]):
        print(f"| {step} | {count / n:.2f} | {seconds * 1000 / n:.2f} |")
    statements = sum(count for count, _ in SEEN.values())
    in_server = sum(seconds for _, seconds in SEEN.values())
    print(f"| all statements | {statements / n:.2f} | {in_server * 1000 / n:.2f} |")
    print(f"| client (the rest) | | {(wall - in_server) * 1000 / n:.2f} |")
    print(f"| wall | | {wall * 1000 / n:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
