"""copier.py whose shared snapshot is ended the first time a job has loaded a slice (copier's
moment "unit_done"), before that job takes its next unit: for tests/test_copier_slices.py.

    HOLDER_ENDED=/tmp/x/ended SOURCE_DSN=... python tests/holder_hook.py ARGS

The hook is set when this file runs, and in the job processes too (spawn runs it again as
__mp_main__), not when a test imports it; creating the file HOLDER_ENDED names (O_EXCL) lets
exactly one of them end the snapshot. Reading the test's events instead left it to the
machine's load whether any slice started after the snapshot went.
"""

import os
import sys

import psycopg2

import copier


def end_it_after_a_slice(unit, result) -> None:
    if unit.step == "slice" and result.ok and first_time():
        end_snapshot_holder(os.environ["SOURCE_DSN"])


def first_time() -> bool:
    try:
        os.close(os.open(os.environ["HOLDER_ENDED"], os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        return False


def end_snapshot_holder(dsn: str) -> None:
    """End the session that holds the run's exported snapshot (tests/test_copier_outages.py
    calls it too)."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                        " WHERE query = 'SELECT pg_export_snapshot()' AND state = 'idle in transaction'"
                        " AND datname = current_database()")
            assert cur.fetchone() == (1,)
    finally:
        conn.close()


if __name__ in ("__main__", "__mp_main__"):  # the hooked copier and its job processes
    copier.LISTENERS["unit_done"] = [end_it_after_a_slice]

if __name__ == "__main__":
    sys.exit(copier.main(sys.argv[1:]))
