"""What a partitioned reporting table costs the nightly copy.

    python3 bench/partitioned.py                 # ~300 MB, 3 rounds (the bench/README figures)
    python3 bench/partitioned.py --mb 20 --rounds 1

One source table (events: a key, a date, a few columns and a text payload); two reporting
databases, one with the table plain, one with it partitioned by month (25 partitions and a
default one, the key extended by the partition key, as pg_dump makes it). The copier refreshes
each, in alternating order, after a CHECKPOINT; `pg_dump | psql` into a plain table is the
baseline. A partitioned table cannot be loaded with COPY ... FREEZE: rows are routed to the
partitions and written with WAL-visible hint bits set later, which is the difference measured.
The cluster lives in bench/results/pgdata-partitioned (gitignored).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


from timed import admin, bench_cluster, fresh_database, run_copier, run_dump_restore  # noqa: E402

from dev.localpg import LocalCluster  # noqa: E402

DATADIR = REPO / "bench" / "results" / "pgdata-partitioned"
SOURCE, PLAIN, PARTITIONED, DUMPED = "part_source", "part_plain", "part_partitioned", "part_dumped"
ROW_BYTES = 160  # about, on disk with the index

TABLE = ("CREATE TABLE events (id bigint NOT NULL, at date NOT NULL, customer int, kind text,"
         " payload text, PRIMARY KEY (id, at))")
MONTHS = [f"{2024 + m // 12}-{m % 12 + 1:02d}-01" for m in range(26)]


def partitioned_ddl() -> str:
    parts = [TABLE + " PARTITION BY RANGE (at)"]
    for n, (start, end) in enumerate(zip(MONTHS, MONTHS[1:], strict=False)):
        parts.append(f"CREATE TABLE events_{n:02d} PARTITION OF events"
                     f" FOR VALUES FROM ('{start}') TO ('{end}')")
    parts.append("CREATE TABLE events_default PARTITION OF events DEFAULT")
    parts.append("CREATE INDEX events_customer ON events (customer)")
    return ";".join(parts)


def copier(cluster: LocalCluster, target: str) -> float:
    return run_copier(cluster, SOURCE, target, ["events"])


def dump_restore(cluster: LocalCluster, target: str) -> float:
    return run_dump_restore(cluster, SOURCE, target, "-t", "events")


def fill_source(cluster: LocalCluster, mb: float) -> int:
    rows = int(mb * 1e6 / ROW_BYTES)
    fresh_database(cluster, SOURCE, TABLE + "; CREATE INDEX events_customer ON events (customer)")
    admin(cluster, "INSERT INTO events SELECT g, date '2024-01-01' + (g % 760), g % 5000,"
                   " (ARRAY['view', 'click', 'buy'])[g % 3 + 1], md5(g::text) || md5((g * 7)::text)"
                   f" FROM generate_series(1, {rows}) g", SOURCE)
    admin(cluster, "VACUUM ANALYZE events", SOURCE)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=300, help="source table size in MB (default 300)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    args = parser.parse_args(argv)

    cluster = bench_cluster(DATADIR)
    try:
        rows = fill_source(cluster, args.mb)
        fresh_database(cluster, PLAIN)
        fresh_database(cluster, PARTITIONED, partitioned_ddl())
        fresh_database(cluster, DUMPED)
        copier(cluster, PLAIN), copier(cluster, PARTITIONED), dump_restore(cluster, DUMPED)  # untimed fills
        times: dict[str, list[float]] = {"copier, plain table": [], "copier, partitioned table": [],
                                         "pg_dump | psql, plain table": []}
        runs = [("copier, plain table", copier, PLAIN), ("copier, partitioned table", copier, PARTITIONED),
                ("pg_dump | psql, plain table", dump_restore, DUMPED)]
        for round_no in range(args.rounds):
            for label, tool, target in runs[round_no % 3:] + runs[:round_no % 3]:
                admin(cluster, "CHECKPOINT")
                times[label].append(tool(cluster, target))
        kept = admin(cluster, "SELECT count(*) FROM pg_inherits WHERE inhparent = 'events'::regclass",
                     PARTITIONED)[0][0]
    finally:
        cluster.stop()
    baseline = statistics.median(times["pg_dump | psql, plain table"])
    escaped_bar = "\\|"  # a bar inside a markdown table's cell
    print(f"{rows} rows, {args.mb:g} MB, {args.rounds} rounds; "
          f"the partitioned target kept its {kept} partitions\n")
    print("| tool | median s | vs pg_dump \\| psql |\n|---|---:|---:|")
    for label, values in times.items():
        median = statistics.median(values)
        print(f"| {label.replace('|', escaped_bar)} | {median:.2f} | {median / baseline:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
