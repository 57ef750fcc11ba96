"""The benchmark's floor (bench/floor.py) measures every step on real tables and leaves nothing."""

import sys
from pathlib import Path

from psycopg2 import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import cpu  # noqa: E402  (bench/cpu.py)
import floor  # noqa: E402  (bench/floor.py)

TABLE = ("CREATE TABLE sales.orders (id int PRIMARY KEY, customer text, placed date,"
         " total numeric GENERATED ALWAYS AS (id * 2) STORED);"
         "CREATE INDEX ON sales.orders (customer);"
         "CREATE UNIQUE INDEX ON sales.orders (placed, id)")


def test_every_step_is_measured_and_the_fresh_tables_are_rolled_back(copier_env, run_copier, tmp_path):
    copier_env.source("CREATE SCHEMA sales;" + TABLE + ";INSERT INTO sales.orders SELECT g, "
                      "'c' || g % 100, date '2024-01-01' + g % 365 FROM generate_series(1, 200000) g")
    assert run_copier("TABLES=sales.orders").code == 0  # the target's table, as the bench has it

    measured = floor.measure_floor(copier_env.source_dsn, copier_env.target_dsn,
                                   [sql.Identifier("sales", "orders")], tmp_path,
                                   lambda: cpu.cluster_cpu_seconds(copier_env.cluster))

    assert all(seconds > 0 for seconds in measured.seconds.values()), measured
    leftovers = "SELECT relname FROM pg_class WHERE relname LIKE '\\_floor\\_%'"
    assert copier_env.target_rows(leftovers) == []
    assert list(tmp_path.iterdir()) == []


def test_indexes_are_rebuilt_on_the_fresh_table_unnamed():
    unique = 'CREATE UNIQUE INDEX "o i" ON sales.orders USING btree (placed, id)'
    assert floor.retarget(unique, "sales._floor_0") == (
        "CREATE UNIQUE INDEX ON sales._floor_0 USING btree (placed, id)")
    partial = "CREATE INDEX x ON ONLY public.t USING gin (tags) WHERE (id > 0)"
    assert floor.retarget(partial, "public._floor_1") == (
        "CREATE INDEX ON public._floor_1 USING gin (tags) WHERE (id > 0)")


def test_the_report_gives_the_floor_as_a_ratio():
    measured = floor.Floor(cpus=2, seconds={"read": 2.0, "relay": 1.0, "write": 4.0, "index": 2.0,
                                            "analyze": 1.0})
    text = floor.floor_table(measured, baseline_seconds=10.0, copier_cpu=11.0)
    assert "| total | 10.0 |" in text
    assert "5.0 s = 0.50× `pg_dump \\| psql`; without ANALYZE 4.5 s = 0.45×" in text
