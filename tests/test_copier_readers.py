"""Readers in the way of a swap: an analyst's idle transaction or a long query costs a table
minutes, not its night. Blocked swaps are tried again after the other tables, and the sessions
in the way are ended as pg_repack does, or only waited for with --no-kill-readers."""

import threading

import psycopg2
import pytest

from copier import is_alive

# Quick tries: the first phase (inside the job) gives up after 2 x 0.2 s, the second (after the
# other tables) has a few seconds in all.
QUICK = ("--lock-timeout", "0.2", "--lock-retries", "1")
TABLES = "TABLES=orders,customers"


@pytest.fixture
def refreshed(copier_env, run_copier):
    copier_env.source("CREATE TABLE orders (id int PRIMARY KEY, total int);"
                      "INSERT INTO orders SELECT g, g FROM generate_series(1, 100) g;"
                      "CREATE TABLE customers (id int PRIMARY KEY);"
                      "INSERT INTO customers SELECT generate_series(1, 10)")
    assert run_copier(TABLES).code == 0
    copier_env.source("DELETE FROM orders WHERE id > 50")
    return copier_env


def idle_reader(dsn: str):
    """BEGIN; SELECT ... then nothing: what a BI tool left open holds its lock all night."""
    conn = psycopg2.connect(dsn, application_name="bi-tool")
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM orders")
    return conn


def test_an_idle_transaction_in_the_way_is_ended_and_the_table_copied(refreshed, run_copier):
    reader = idle_reader(refreshed.target_dsn)
    try:
        result = run_copier(TABLES, *QUICK, "--lock-budget", "30")
    finally:
        alive = is_alive(reader)
        reader.close()

    assert result.code == 0, result.stderr
    (deferred,) = result.of("swap_deferred")
    assert deferred["table"] == "public.orders"
    (ended,) = result.of("session_ended")
    assert ended["table"] == "public.orders" and ended["action"] == "terminated"
    assert ended["state"] == "idle in transaction" and ended["application"] == "bi-tool"
    assert ended["query"] == "SELECT count(*) FROM orders"
    assert "copier: warning: terminated session" in result.stderr
    assert not alive
    assert refreshed.target_rows("SELECT count(*) FROM orders") == [(50,)]
    assert [e["table"] for e in result.of("table_copied")] == ["public.customers", "public.orders"]


def test_a_running_query_in_the_way_is_cancelled(refreshed, run_copier):
    reader = psycopg2.connect(refreshed.target_dsn, application_name="report")
    reader.autocommit = True
    failures = []

    def long_query():
        try:
            with reader.cursor() as cur:
                cur.execute("SELECT count(*), pg_sleep(60) FROM orders")
        except psycopg2.Error as exc:
            failures.append(exc)

    query = threading.Thread(target=long_query)
    query.start()
    try:
        result = run_copier(TABLES, *QUICK, "--lock-budget", "30")
    finally:
        query.join(70)
        reader.close()

    assert result.code == 0, result.stderr
    (ended,) = result.of("session_ended")
    assert ended["action"] == "cancelled the query of" and ended["state"] == "active"
    assert isinstance(failures[0], psycopg2.errors.QueryCanceled)
    assert refreshed.target_rows("SELECT count(*) FROM orders") == [(50,)]


def test_with_no_kill_readers_the_reader_is_only_waited_for(refreshed, run_copier):
    reader = idle_reader(refreshed.target_dsn)
    try:
        result = run_copier(TABLES, *QUICK, "--lock-budget", "1", "--no-kill-readers")
        alive = is_alive(reader)
    finally:
        reader.close()

    assert result.code == 1
    assert result.of("session_ended") == []
    assert alive
    (failed,) = result.of("table_failed")
    assert failed["error"].startswith(
        "could not lock public.orders for the swap within --lock-budget 1 s (--no-kill-readers); "
        "in the way: ")
    assert "(user postgres, application bi-tool, idle in transaction for " in failed["error"]
    assert refreshed.target_rows("SELECT count(*) FROM orders") == [(100,)]
    assert refreshed.target_rows("SELECT count(*) FROM pg_class WHERE relname LIKE '\\_copier\\_%'") == [(0,)]


def test_a_session_the_copier_may_not_end_fails_the_table_with_advice(refreshed, run_copier, monkeypatch):
    n = refreshed.target_name
    refreshed.target(f"CREATE ROLE writer_{n} LOGIN; GRANT CREATE, USAGE ON SCHEMA public TO writer_{n};"
                     f"ALTER TABLE orders OWNER TO writer_{n}; ALTER TABLE customers OWNER TO writer_{n}")
    monkeypatch.setenv("TARGET_DSN", refreshed.cluster.dsn(n, user=f"writer_{n}"))
    reader = idle_reader(refreshed.target_dsn)  # a superuser's: only a superuser may end it
    try:
        result = run_copier(TABLES, *QUICK, "--lock-budget", "2")
        alive = is_alive(reader)
    finally:
        reader.close()

    assert result.code == 1
    assert alive
    refusal = ("must be a superuser to terminate superuser process" if refreshed.target_version < 160000
               else "permission denied to terminate process")  # PostgreSQL 16 reworded it
    assert f"may not be ended: {refusal}" in result.stderr
    assert "grant pg_signal_backend to the copier's user" in result.stderr
    (failed,) = result.of("table_failed")
    assert failed["error"].endswith(
        "(user postgres, application bi-tool, its state hidden from the copier's user)")
    assert refreshed.target_rows("SELECT count(*) FROM orders") == [(100,)]


def test_swap_together_ends_the_reader_in_the_way_too(refreshed, run_copier):
    reader = idle_reader(refreshed.target_dsn)
    try:
        result = run_copier(TABLES, *QUICK, "--swap", "together", "--lock-budget", "30")
    finally:
        alive = is_alive(reader)
        reader.close()

    assert result.code == 0, result.stderr
    (ended,) = result.of("session_ended")
    assert ended["action"] == "terminated" and ended["application"] == "bi-tool"
    assert not alive
    assert refreshed.target_rows("SELECT count(*) FROM orders") == [(50,)]
