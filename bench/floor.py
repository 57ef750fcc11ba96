"""The floor: the work any safe refresh must do, measured one step at a time on this machine.

A copy that reads each source table, writes it into a fresh table on the target, builds the
same keys and indexes there and ANALYZEs it cannot cost less CPU than those steps do alone.
Each is timed here in isolation, as CPU seconds of the server's processes (parallel index
workers and the WAL writer included) and of the client moving the rows:

    read     COPY t TO STDOUT (FORMAT binary)                the source's backend
    relay    psycopg2's copy_expert out (into a sink that      the client (Python + libpq)
             drops the rows) and in (from a file)
    write    COPY fresh FROM STDIN (FORMAT binary, FREEZE)   the target's backend
    index    every key and index of the table, after the load, one at a time, no parallel
             workers (the cheapest way in CPU)
    analyze  ANALYZE

Divided by the number of cores, their sum is the shortest wall time any tool doing this work
could reach with every core busy all the time: compared with `pg_dump | psql`'s time, it says
which ratios this machine can show at all. The fresh tables are rolled back afterwards.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
from psycopg2 import sql

STEPS = ("read", "relay", "write", "index", "analyze")

# The target table's keys and indexes, to rebuild on the fresh copy.
INDEXES_QUERY = """
SELECT pg_get_indexdef(i.indexrelid)
FROM pg_index i
WHERE i.indrelid = %s::regclass
ORDER BY i.indexrelid
"""


@dataclass
class Floor:
    cpus: int
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STEPS, 0.0))

    def total(self, without: tuple[str, ...] = ()) -> float:
        return sum(s for step, s in self.seconds.items() if step not in without)

    def wall(self, without: tuple[str, ...] = ()) -> float:
        """The shortest wall time: the work spread over every core, none ever idle."""
        return self.total(without) / self.cpus


def measure_floor(source_dsn: str, target_dsn: str, tables: list[sql.Identifier],
                  work_dir: Path, server_cpu: Callable[[], float]) -> Floor:
    """Each step of each table, one after another on an otherwise idle server."""
    floor = Floor(os.cpu_count() or 1)
    work_dir.mkdir(parents=True, exist_ok=True)
    source, target = psycopg2.connect(source_dsn), psycopg2.connect(target_dsn)
    try:
        for n, table in enumerate(tables):
            rows_file = work_dir / f"table{n}.copy"
            try:
                read_table(source, table, rows_file, floor, server_cpu)
                rebuild_table(target, table, n, rows_file, floor, server_cpu)
            finally:
                rows_file.unlink(missing_ok=True)
    finally:
        source.close()
        target.close()
    return floor


class Sink:
    """Takes the rows and drops them: the client's own cost of receiving them, nothing else."""

    def write(self, data: bytes) -> None:
        pass


def read_table(conn, table: sql.Identifier, rows_file: Path, floor: Floor, server_cpu) -> None:
    copy_out = sql.SQL("COPY {} TO STDOUT (FORMAT binary)").format(table).as_string(conn)
    with conn.cursor() as cur:
        with open(rows_file, "wb") as out:
            step(floor, "read", server_cpu, lambda: cur.copy_expert(copy_out, out))
        started = time.process_time()
        cur.copy_expert(copy_out, Sink())
        floor.seconds["relay"] += time.process_time() - started
    conn.rollback()


def rebuild_table(conn, table: sql.Identifier, n: int, rows_file: Path, floor: Floor,
                  server_cpu) -> None:
    schema = table.strings[0]
    fresh = sql.Identifier(schema, f"_floor_{n}")
    fresh_text = fresh.as_string(conn)
    with conn.cursor() as cur:
        cur.execute("SET maintenance_work_mem = '512MB'; SET max_parallel_maintenance_workers = 0")
        cur.execute(INDEXES_QUERY, (table.as_string(conn),))
        indexes = [retarget(definition, fresh_text) for (definition,) in cur.fetchall()]
        cur.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING GENERATED)").format(fresh, table))
        copy_in = sql.SQL("COPY {} FROM STDIN (FORMAT binary, FREEZE)").format(fresh).as_string(conn)
        with open(rows_file, "rb") as rows:
            started = time.process_time()
            step(floor, "write", server_cpu, lambda: cur.copy_expert(copy_in, rows))
            floor.seconds["relay"] += time.process_time() - started
        for index_sql in indexes:
            step(floor, "index", server_cpu, lambda index_sql=index_sql: cur.execute(index_sql))
        step(floor, "analyze", server_cpu, lambda: cur.execute(sql.SQL("ANALYZE {}").format(fresh)))
    conn.rollback()


def retarget(index_sql: str, fresh: str) -> str:
    """CREATE [UNIQUE] INDEX name ON table USING ... -> an unnamed index on the fresh table."""
    head, _, method = index_sql.partition(" USING ")
    unique = "UNIQUE " if head.startswith("CREATE UNIQUE") else ""
    return f"CREATE {unique}INDEX ON {fresh} USING {method}"


def step(floor: Floor, name: str, server_cpu: Callable[[], float], action: Callable[[], object]) -> None:
    """Add the server's CPU seconds for the action to `name`."""
    before = server_cpu()
    action()
    floor.seconds[name] += server_cpu() - before


def floor_table(floor: Floor, baseline_seconds: float | None, copier_cpu: float | None) -> str:
    labels = {
        "read": "read: `COPY … TO STDOUT (FORMAT binary)` on the source",
        "relay": "relay: the client receiving and sending the rows (psycopg2 `copy_expert`)",
        "write": "write: `COPY … FROM STDIN (FORMAT binary, FREEZE)` into a fresh table",
        "index": "index: the table's keys and indexes, built after the load, no parallel workers",
        "analyze": "analyze: `ANALYZE`",
    }
    lines = ["| step | CPU s |", "|---|---:|"]
    lines += [f"| {labels[name]} | {floor.seconds[name]:.1f} |" for name in STEPS]
    lines.append(f"| total | {floor.total():.1f} |")
    if copier_cpu is not None:
        lines.append(f"| the copier's median run (client + server), for comparison | {copier_cpu:.1f} |")

    def as_ratio(seconds: float) -> str:
        return f" = {seconds / baseline_seconds:.2f}× `pg_dump \\| psql`" if baseline_seconds else ""

    lines += [
        "",
        f"Floor on {floor.cpus} cores (total / cores, every core busy all the time): "
        f"{floor.wall():.1f} s{as_ratio(floor.wall())}; without ANALYZE "
        f"{floor.wall(without=('analyze',)):.1f} s{as_ratio(floor.wall(without=('analyze',)))}.",
    ]
    return "\n".join(lines)
