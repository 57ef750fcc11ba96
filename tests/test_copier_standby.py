"""A read replica as the source: a real hot standby of the session's cluster."""

import time

import psycopg2
import pytest
from conftest import background_databases

from dev.localpg import LocalCluster

WARNING = "copier: warning: the source is a standby with hot_standby_feedback off"


@pytest.fixture(scope="module")
def standby(pg_cluster, tmp_path_factory):
    # Binaries without pg_basebackup copy the primary while it is stopped for a moment: no
    # earlier test's database may be in the middle of its drop then.
    background_databases.wait()
    replica = LocalCluster.standby_of(pg_cluster, tmp_path_factory.mktemp("standby") / "data")
    replica.start()
    yield replica
    replica.stop()


def one_value(dsn: str, query: str):
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(query)
            return cur.fetchone()[0]
    finally:
        conn.close()


def wait_for_replay(primary: LocalCluster, standby: LocalCluster) -> None:
    # The insert position: with synchronous_commit off (the test cluster's setting) the last
    # commit may not be written yet, and the standby receives it only once it is.
    lsn = one_value(primary.dsn(), "SELECT pg_current_wal_insert_lsn()")
    deadline = time.monotonic() + 30
    while one_value(standby.dsn(), f"SELECT pg_last_wal_replay_lsn() < '{lsn}'"):
        assert time.monotonic() < deadline, "the standby did not catch up in 30 s"
        time.sleep(0.05)


def set_feedback(standby: LocalCluster, value: str) -> None:
    conn = psycopg2.connect(standby.dsn())
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"ALTER SYSTEM SET hot_standby_feedback = {value}")
        cur.execute("SELECT pg_reload_conf()")
    conn.close()
    deadline = time.monotonic() + 10
    while one_value(standby.dsn(), "SHOW hot_standby_feedback") != value:
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.fixture
def from_replica(copier_env, standby, monkeypatch):
    copier_env.source("CREATE TABLE orders (id int PRIMARY KEY, total numeric);"
                      "INSERT INTO orders SELECT g, g FROM generate_series(1, 5000) g;"
                      "CREATE TABLE customers (id int PRIMARY KEY, name text);"
                      "INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 300) g")
    wait_for_replay(copier_env.cluster, standby)
    monkeypatch.setenv("SOURCE_DSN", standby.dsn(copier_env.source_name))
    return copier_env


def test_copies_from_a_read_replica_with_parallel_jobs(from_replica, standby, run_copier):
    set_feedback(standby, "off")

    result = run_copier("TABLES=orders,customers", "--jobs", "2")

    assert result.code == 0, result.stderr
    assert from_replica.target_rows("SELECT count(*), sum(total) FROM orders") == [(5000, 12502500)]
    assert from_replica.target_rows("SELECT count(*) FROM customers") == [(300,)]
    assert WARNING in result.stderr  # hot_standby_feedback is off by default
    (event,) = result.of("warning")
    assert event["message"].startswith("the source is a standby with hot_standby_feedback off")


def test_no_warning_when_the_replica_keeps_the_rows_the_copy_needs(from_replica, standby, run_copier):
    set_feedback(standby, "on")
    try:
        result = run_copier("TABLES=orders")
    finally:
        set_feedback(standby, "off")

    assert result.code == 0, result.stderr
    assert WARNING not in result.stderr
    assert result.of("warning") == []


def test_a_replica_source_proves_a_table_unchanged_after_a_night_that_found_it_so(from_replica, standby,
                                                                                  run_copier, monkeypatch):
    """A replica's statistics do not count the primary's writes: the proof is tried only when
    the last run found the table unchanged, and a write replayed since is still seen."""
    monkeypatch.delenv("COPIER_COPY_UNCHANGED")
    found = []
    for _ in range(3):
        run = run_copier("TABLES=orders,customers")
        assert run.code == 0, run.stderr
        found.append({e["table"]: e["found"] for e in run.of("table_unchanged")})
    assert found == [{}, dict.fromkeys(("public.orders", "public.customers"), "after loading"),
                     dict.fromkeys(("public.orders", "public.customers"), "before reading")]
    from_replica.source("UPDATE orders SET total = -1 WHERE id = 4000")  # on the primary
    wait_for_replay(from_replica.cluster, standby)
    run = run_copier("TABLES=orders,customers")
    assert [e["table"] for e in run.of("table_copied")] == ["public.orders"]
    assert from_replica.target_rows("SELECT total FROM orders WHERE id = 4000") == [(-1,)]
