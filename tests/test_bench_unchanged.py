"""The unchanged-tables bench (bench/unchanged.py): its nights run on a tiny sample, each checked to be
what it says (the copier's lines, the targets' rows), and the report has every night and goal."""

import sys
from pathlib import Path

import psycopg2
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import unchanged  # noqa: E402  (bench/unchanged.py)


@pytest.fixture
def bench_databases(dbs):
    """The test's pair as source and the copier's target, and two more targets, dropped after."""
    extra = (f"{dbs.target_name}_every", f"{dbs.target_name}_dumped")
    conn = psycopg2.connect(dbs.cluster.dsn())
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for name in extra:
                cur.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        yield unchanged.Databases(dbs.source_name, dbs.target_name, *extra)
        with conn.cursor() as cur:
            for name in extra:
                cur.execute(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        conn.close()


def test_every_night_runs_is_checked_and_is_reported(dbs, bench_databases, tmp_path):
    measured = unchanged.measure(dbs.cluster, bench_databases, mb=0.5, rounds=1, log_dir=tmp_path, jobs=1)
    text = unchanged.report(measured, "python3 bench/unchanged.py --mb 0.5 --rounds 1", 1, ("0", "0"))

    assert len(measured.tenth) == 1  # of 12 tables (which one depends on the sizes: see the last test)
    did = {"all changed, after quiet nights": "12 copied", "all changed, every night": "12 copied",
           "nothing changed, first night": "12 unchanged before reading",
           "nothing changed, steady": "12 unchanged before reading",
           "10% changed, first night": "1 copied, 11 unchanged before reading",
           "10% changed, every night": "1 copied, 11 unchanged before reading"}
    assert [night.name for night in unchanged.NIGHTS] == list(did)
    for night, what in did.items():
        assert f"| {night} | {what} | " in text  # the nights' table
        for tool in unchanged.TOOLS:
            assert len(measured.of(night, tool)) == 1
            assert f"| {night} | `{unchanged.cell(tool)}` | " in text  # every run
    for goal, night, _ in unchanged.GOALS:
        assert f"| {goal} | {night} | " in text
    for table in measured.tables:
        assert f"| `{unchanged.cell(table)}` | " in text  # table by table
    # The copier's own lines, as the bench read them, kept for a look afterwards.
    assert len(list(tmp_path.glob("round1/*.jsonl"))) == 2 * len(unchanged.NIGHTS)


def test_what_the_copier_must_say_follows_from_what_changed():
    assert unchanged.expected_outcomes(["a", "b", "c"], ["a"]) == {
        "a": "copied", "b": "before reading", "c": "before reading"}


def test_a_changed_table_the_copier_calls_unchanged_stops_the_bench():
    lines = [{"event": "table_unchanged", "table": "public.orders", "found": "before loading"}]
    run = unchanged.Run("all changed, every night", unchanged.COPIER, 1.0, 1.0, 0.0, lines)
    with pytest.raises(unchanged.BenchError, match="public.orders"):
        unchanged.check_copier_night(None, unchanged.DATABASES, run, {"public.orders": "copied"})


def test_the_tenth_is_the_table_nearest_a_tenth_of_the_bytes():
    sizes = {"events": 40, "orders": 14, "order_lines": 12, "page_views": 10, "customers": 8, "invoices": 7,
             "products": 4, "mixed": 3, "refunds": 2}
    assert unchanged.nearest_tenth(sizes) == ["page_views"]
    assert unchanged.nearest_tenth({f"t{n}": 1 for n in range(20)}) == ["t0", "t1"]  # 2 of 20, 5% each
