"""Per-table overhead: many small tables, as real reporting databases have beside a few big ones.

    python3 bench/many.py                       # 1,000 tables of 200 rows, 3 rounds
    python3 bench/many.py --tables 100 --rounds 1

Each table has a key, an index and 200 rows. The copier (--jobs 2) and `pg_dump | psql`
refresh a populated target of their own, in alternating order, each after a CHECKPOINT. What
is measured is everything but the rows: catalog reads, DDL, swaps, round trips. The cluster
lives in bench/results/pgdata-many (gitignored).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psycopg2  # noqa: E402

from dev.localpg import LocalCluster  # noqa: E402

DATADIR = REPO / "bench" / "results" / "pgdata-many"
SOURCE, COPIED, DUMPED = "many_source", "many_copier", "many_dumped"


def admin(cluster: LocalCluster, statement: str, db: str = "postgres"):
    conn = psycopg2.connect(cluster.dsn(db))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


def fresh_database(cluster: LocalCluster, name: str) -> None:
    admin(cluster, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin(cluster, f"CREATE DATABASE {name}")


def fill_source(cluster: LocalCluster, tables: int) -> list[str]:
    fresh_database(cluster, SOURCE)
    names = [f"small_{n:04d}" for n in range(tables)]
    admin(cluster, ";".join(
        f"CREATE TABLE {name} (id int PRIMARY KEY, code text, amount numeric(10, 2), at date);"
        f"CREATE INDEX {name}_code ON {name} (code);"
        f"INSERT INTO {name} SELECT g, 'c' || g % 17, g * 1.5, date '2024-01-01' + g"
        " FROM generate_series(1, 200) g"
        for name in names), SOURCE)
    return names


def copier(cluster: LocalCluster, names: list[str]) -> float:
    env = {**os.environ, "SOURCE_DSN": cluster.dsn(SOURCE), "TARGET_DSN": cluster.dsn(COPIED)}
    started = time.monotonic()
    subprocess.run([sys.executable, str(REPO / "copier.py"), "TABLES=" + ",".join(names), "--jobs", "2"],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - started


def dump_restore(cluster: LocalCluster, names: list[str]) -> float:
    started = time.monotonic()
    dump = subprocess.Popen([cluster.bin("pg_dump"), "--clean", "--if-exists", cluster.dsn(SOURCE)],
                            stdout=subprocess.PIPE)
    subprocess.run([cluster.bin("psql"), "-q", "-v", "ON_ERROR_STOP=1", cluster.dsn(DUMPED)],
                   stdin=dump.stdout, check=True, stdout=subprocess.DEVNULL)
    dump.wait()
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", type=int, default=1000, help="how many tables (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    args = parser.parse_args(argv)

    cluster = LocalCluster.create(DATADIR)
    cluster.start()
    try:
        admin(cluster, "ALTER SYSTEM SET autovacuum = off")
        admin(cluster, "ALTER SYSTEM SET max_locks_per_transaction = 1024")
        cluster.stop()
        cluster.start()
        names = fill_source(cluster, args.tables)
        fresh_database(cluster, COPIED)
        fresh_database(cluster, DUMPED)
        copier(cluster, names), dump_restore(cluster, names)  # untimed: populated targets
        times: dict[str, list[float]] = {"copier --jobs 2": [], "pg_dump | psql": []}
        runs = [("copier --jobs 2", copier), ("pg_dump | psql", dump_restore)]
        for round_no in range(args.rounds):
            for label, tool in runs[round_no % 2:] + runs[:round_no % 2]:
                admin(cluster, "CHECKPOINT")
                times[label].append(tool(cluster, names))
    finally:
        cluster.stop()
    baseline = statistics.median(times["pg_dump | psql"])
    escaped_bar = "\\|"  # a bar inside a markdown table's cell
    print(f"{args.tables} tables of 200 rows, a key and an index each; {args.rounds} rounds\n")
    print("| tool | median s | ms per table | vs pg_dump \\| psql |\n|---|---:|---:|---:|")
    for label, values in times.items():
        median = statistics.median(values)
        print(f"| {label.replace('|', escaped_bar)} | {median:.2f} | {median * 1000 / args.tables:.1f} "
              f"| {median / baseline:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
