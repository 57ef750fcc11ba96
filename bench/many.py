"""Per-table overhead: many small tables, as real reporting databases have beside a few big ones.

    python3 bench/many.py                       # 1,000 tables of 200 rows, 3 rounds
    python3 bench/many.py --tables 100 --rounds 1

Each table has a key, an index and 200 rows. The copier (--jobs 2), `pg_dump | psql` and
`pgcopydb clone --table-jobs 2 --index-jobs 2` refresh a populated target of their own, in
rotating order, each after a VACUUM of the targets and a CHECKPOINT (autovacuum is off for the
bench: without the VACUUM, the catalogs' dead rows of every refresh pile up, and each round is
slower than the one before). What is measured is everything but the rows: catalog reads, DDL,
swaps, round trips. The cluster lives in bench/results/pgdata-many (gitignored).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


from timed import (  # noqa: E402
    admin,
    bench_cluster,
    fresh_database,
    run_copier,
    run_dump_restore,
    run_pgcopydb,
)

from dev.localpg import LocalCluster  # noqa: E402

DATADIR = REPO / "bench" / "results" / "pgdata-many"
SOURCE, COPIED, DUMPED, CLONED = "many_source", "many_copier", "many_dumped", "many_cloned"


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
    return run_copier(cluster, SOURCE, COPIED, names, "--jobs", "2")


def dump_restore(cluster: LocalCluster, names: list[str]) -> float:
    return run_dump_restore(cluster, SOURCE, DUMPED)


def pgcopydb(cluster: LocalCluster, names: list[str]) -> float:
    """pgcopydb clone of the whole database (its unit; the source holds only these tables)."""
    return run_pgcopydb(cluster, SOURCE, CLONED, DATADIR.parent / "pgcopydb-many",
                        "--table-jobs", "2", "--index-jobs", "2", "--drop-if-exists")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", type=int, default=1000, help="how many tables (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    args = parser.parse_args(argv)

    cluster = bench_cluster(DATADIR, {"max_locks_per_transaction": "1024"})
    try:
        names = fill_source(cluster, args.tables)
        fresh_database(cluster, COPIED)
        fresh_database(cluster, DUMPED)
        fresh_database(cluster, CLONED)
        runs = [("copier --jobs 2", copier), ("pg_dump | psql", dump_restore),
                ("pgcopydb --table-jobs 2", pgcopydb)]
        for _, tool in runs:
            tool(cluster, names)  # untimed: populated targets
        times: dict[str, list[float]] = {label: [] for label, _ in runs}
        for round_no in range(args.rounds):
            for label, tool in runs[round_no % 3:] + runs[:round_no % 3]:
                for target in (COPIED, DUMPED, CLONED):
                    admin(cluster, "VACUUM", target)
                admin(cluster, "CHECKPOINT")
                times[label].append(tool(cluster, names))
    finally:
        cluster.stop()
    baseline = statistics.median(times["pg_dump | psql"])
    escaped_bar = "\\|"  # a bar inside a markdown table's cell
    print(f"{args.tables} tables of 200 rows, a key and an index each; {args.rounds} rounds\n")
    print("| tool | median s | ms per table | vs pg_dump \\| psql | runs |\n|---|---:|---:|---:|---|")
    for label, values in times.items():
        median = statistics.median(values)
        print(f"| {label.replace('|', escaped_bar)} | {median:.2f} | {median * 1000 / args.tables:.1f} "
              f"| {median / baseline:.2f}x | {', '.join(f'{v:.2f}' for v in values)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
