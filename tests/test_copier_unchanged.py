"""Unchanged tables: a table whose source rows are what the reporting table already holds is not
written, indexed, analyzed or swapped; and whatever happens in between, every table equals its
source after the run. Decided by content (copier.py, "unchanged tables").

Every other copier test copies each night (conftest.copier_env sets COPIER_COPY_UNCHANGED);
these unset it.
"""

from __future__ import annotations

import json
import time

import psycopg2
import pytest
from test_copier_slices import load_job, publish, staging_debris


@pytest.fixture
def skipping(copier_env, monkeypatch):
    monkeypatch.delenv("COPIER_COPY_UNCHANGED")
    copier_env.source("CREATE TABLE regions (id serial PRIMARY KEY, name text NOT NULL, pad text);"
                      "INSERT INTO regions (name, pad) SELECT 'r' || g, repeat('p', 200) "
                      "FROM generate_series(1, 3000) g;"
                      "CREATE TABLE orders (id bigint PRIMARY KEY, region int, total numeric);"
                      "INSERT INTO orders SELECT g, g % 50, g * 1.5 FROM generate_series(1, 5000) g")
    counted(copier_env, "SELECT pg_stat_get_tuples_inserted('regions'::regclass) "
                        "+ pg_stat_get_tuples_inserted('orders'::regclass)", 8000)
    return copier_env


def counted(dbs, query: str, expected) -> None:
    """Waits until the source's statistics count what was written: they lag (up to 13 and 14 a
    collector process receives them), and a run that starts before they do takes tables written
    since the last one for written since: copied at once, where the tests expect them proved."""
    deadline = time.monotonic() + 30
    while dbs.source_rows(query) != [(expected,)]:
        assert time.monotonic() < deadline, f"the source's statistics never counted the writes: {query}"
        time.sleep(0.1)


SAME = ("SELECT count(*), sum(hashtext(t::text)) FROM {} t")


def assert_equal_to_source(dbs, *tables: str) -> None:
    for table in tables:
        assert dbs.target_rows(SAME.format(table)) == dbs.source_rows(SAME.format(table)), table


def written_and_rolled_back(dbs) -> None:
    """A write to regions the source rolled back: its statistics count it (they count what was
    tried), its rows are as they were. Waits until the counters show it (they lag)."""
    updates = "SELECT pg_stat_get_tuples_updated('regions'::regclass)"
    (before,), = dbs.source_rows(updates)
    writer = psycopg2.connect(dbs.source_dsn)
    try:
        writer.cursor().execute("UPDATE regions SET name = 'never' WHERE id <= 5")
        writer.rollback()
    finally:
        writer.close()
    counted(dbs, updates, before + 5)


def outcomes(run) -> dict[str, str]:
    """Each table's last word: copied, or unchanged before reading, before or after loading."""
    said = {e["table"]: "copied" for e in run.of("table_copied")}
    said |= {e["table"]: f"unchanged {e['found']}" for e in run.of("table_unchanged")}
    said |= {e["table"]: "failed" for e in run.of("table_failed")}
    return said


def nights_until_proved(dbs, run_copier, tables: str = "TABLES=regions") -> None:
    """Copied, then found unchanged after loading: the next night can prove it."""
    for _ in range(2):
        assert run_copier(tables).code == 0


def test_an_unchanged_table_is_proved_so_without_reading_it(skipping, run_copier):
    first = run_copier("TABLES=regions,orders")
    assert outcomes(first) == {"public.regions": "copied", "public.orders": "copied"}
    for _ in range(2):
        again = run_copier("TABLES=regions,orders")
        assert again.code == 0, again.stderr
        # no row written since the last read: proved unchanged on the source, nothing read
        assert outcomes(again) == {"public.regions": "unchanged before reading",
                                   "public.orders": "unchanged before reading"}
    (line,) = [e for e in again.of("table_unchanged") if e["table"] == "public.regions"]
    assert line["rows"] == 3000 and set(line["steps"]) <= {"wait", "stage", "load", "verify"}
    assert "index" not in line["steps"] and "swap" not in line["steps"]
    assert again.of("run_finished")[0]["unchanged"] == 2
    assert "2 of 2 tables copied (2 unchanged: not written)" in again.stderr
    assert staging_debris(skipping) == []
    assert_equal_to_source(skipping, "regions", "orders")


def test_a_table_written_to_is_copied_at_once_and_found_unchanged_after_loading(skipping, run_copier):
    """Rows written since the last read (here, rolled back): the table is copied at once, found
    to be what the reporting table holds before any index is built, and the next night proved."""
    assert run_copier("TABLES=regions,orders").code == 0
    written_and_rolled_back(skipping)
    run = run_copier("TABLES=regions,orders")
    assert outcomes(run) == {"public.regions": "unchanged after loading",
                             "public.orders": "unchanged before reading"}
    (line,) = [e for e in run.of("table_unchanged") if e["table"] == "public.regions"]
    assert "index" not in line["steps"] and "swap" not in line["steps"] and line["rows"] == 3000
    assert outcomes(run_copier("TABLES=regions,orders")) == {"public.regions": "unchanged before reading",
                                                             "public.orders": "unchanged before reading"}
    assert_equal_to_source(skipping, "regions", "orders")


def test_an_unchanged_table_takes_no_lock_readers_wait_for(skipping, run_copier):
    """A report that keeps the table open all night neither waits nor is ended: only a swap
    would have needed its lock."""
    assert run_copier("TABLES=regions").code == 0
    reader = psycopg2.connect(skipping.target_dsn)
    try:
        reader.cursor().execute("SELECT count(*) FROM regions")  # holds ACCESS SHARE, idle in transaction
        for found in ("after loading", "before reading"):
            if found == "after loading":
                written_and_rolled_back(skipping)
            run = run_copier("TABLES=regions", "--no-kill-readers", "--lock-timeout", "0.1",
                             "--lock-retries", "0", "--lock-budget", "0")
            assert run.code == 0, run.stderr
            assert outcomes(run) == {"public.regions": f"unchanged {found}"}
            assert run.of("session_ended") == []
    finally:
        reader.close()


@pytest.mark.parametrize("change", [
    "UPDATE regions SET name = name WHERE id = 7",  # to the same value
    "UPDATE regions SET name = 'moved' WHERE id = 7",
    "DELETE FROM regions WHERE id <= 10; INSERT INTO regions SELECT g, 'r' || g, repeat('p', 200) "
    "FROM generate_series(1, 10) g",
    "CREATE TEMP TABLE keep AS SELECT * FROM regions; TRUNCATE regions;"
    "INSERT INTO regions SELECT * FROM keep",
    "ALTER TABLE regions ADD COLUMN note text DEFAULT 'new'",
    "ALTER TABLE regions ALTER COLUMN pad TYPE varchar(300)",
    "CREATE INDEX regions_name ON regions (name)",
    "COMMENT ON COLUMN regions.name IS 'the region''s name'",
], ids=["same-value", "one-row", "deleted-and-back", "truncated-and-back", "column-added",
        "column-retyped", "index-added", "comment"])
def test_a_source_changed_in_any_way_is_copied(skipping, run_copier, change):
    for _ in range(3):  # the third run would read the source first
        assert run_copier("TABLES=regions").code == 0
    skipping.source(change)
    run = run_copier("TABLES=regions")
    assert run.code == 0, run.stderr
    # never proved unchanged: a row written again is a new row version, even with the same values
    assert outcomes(run) in ({"public.regions": "copied"}, {"public.regions": "unchanged after loading"})
    assert_equal_to_source(skipping, "regions")
    columns = "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute " \
              "WHERE attrelid = 'regions'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
    assert skipping.target_rows(columns) == skipping.source_rows(columns)
    if change.startswith(("ALTER", "CREATE INDEX", "COMMENT", "UPDATE regions SET name = 'moved'")):
        assert outcomes(run) == {"public.regions": "copied"}
    if "CREATE INDEX" in change:
        assert skipping.target_rows("SELECT to_regclass('regions_name') IS NOT NULL") == [(True,)]


@pytest.mark.parametrize("change", [
    "UPDATE regions SET name = name WHERE id = 7",
    "INSERT INTO regions (name) VALUES ('analyst''s row')",
    "DELETE FROM regions WHERE id = 3",
    "DELETE FROM regions WHERE id = 3; INSERT INTO regions SELECT 3, 'r3', repeat('p', 200)",
    "TRUNCATE regions",
    "ALTER TABLE regions ADD COLUMN mine int",
    "ALTER TABLE regions ALTER COLUMN name TYPE varchar(50)",
    "DROP TABLE regions; CREATE TABLE regions (id int PRIMARY KEY, name text, pad text)",
], ids=["same-value", "inserted", "deleted", "deleted-and-back", "truncated", "column-added",
        "column-retyped", "made-again"])
def test_a_reporting_table_written_to_or_altered_is_copied_again(skipping, run_copier, change):
    for _ in range(2):  # copied, then found unchanged: the next run reads the source first
        assert run_copier("TABLES=regions").code == 0
    for path in ("read first", "copied at once"):  # after a copy, the next one copies at once
        skipping.target(change)
        run = run_copier("TABLES=regions")
        assert run.code == 0, run.stderr
        assert outcomes(run) == {"public.regions": "copied"}, path
        assert_equal_to_source(skipping, "regions")


# id: (the side a row is written to, then how the fingerprint is damaged)
TAMPERED = {
    "lost": ("target", "DELETE FROM nightly_copy.fingerprints"),
    "other-value": ("target", "UPDATE nightly_copy.fingerprints SET fingerprint = 'x'"),
    "other-rows": ("target", "UPDATE nightly_copy.fingerprints SET rows = rows + 1"),
    "no-transactions": ("target", "UPDATE nightly_copy.fingerprints SET loaded_by = '{}'"),
    "schema-dropped": ("target", "DROP SCHEMA nightly_copy CASCADE"),
    # the record that proves the source unchanged
    "source-lost": ("source", "UPDATE nightly_copy.fingerprints SET source = NULL"),
    "source-other-rows": ("source", "UPDATE nightly_copy.fingerprints SET source = "
                                    "jsonb_set(source, '{rows}', '2999')"),
    "source-later-snapshot": ("source", "UPDATE nightly_copy.fingerprints SET source = jsonb_set("
                                        "source, '{xmin}', to_jsonb((source->>'xmin')::bigint + 1000000))"),
    "source-other-identity": ("source", "UPDATE nightly_copy.fingerprints SET source = "
                                        "jsonb_set(source, '{identity}', '\"x\"')"),
    "source-malformed": ("source", "UPDATE nightly_copy.fingerprints SET source = '{\"rows\": 1}'"),
}


@pytest.mark.parametrize("tamper", TAMPERED.values(), ids=TAMPERED)
def test_a_fingerprint_lost_or_tampered_with_means_copy(skipping, run_copier, tamper):
    side, damage = tamper
    nights_until_proved(skipping, run_copier)
    if side == "target":
        skipping.target("UPDATE regions SET name = 'not the source' WHERE id = 1")
    else:
        skipping.source("UPDATE regions SET name = 'changed' WHERE id = 9")
    skipping.target(damage)
    run = run_copier("TABLES=regions")
    assert run.code == 0, run.stderr
    assert outcomes(run) == {"public.regions": "copied"}
    assert_equal_to_source(skipping, "regions")


def test_a_sequence_moved_on_the_source_moves_on_the_reporting_side(skipping, run_copier):
    for _ in range(2):
        assert run_copier("TABLES=regions").code == 0
    skipping.source("SELECT nextval('regions_id_seq') FROM generate_series(1, 40)")  # rows unchanged
    for _ in range(2):
        run = run_copier("TABLES=regions")
        assert outcomes(run) == {"public.regions": "unchanged before reading"}
        assert skipping.target_rows("SELECT last_value FROM regions_id_seq") == \
            skipping.source_rows("SELECT last_value FROM regions_id_seq")


def test_copy_unchanged_copies_every_table(skipping, run_copier, monkeypatch):
    for _ in range(3):
        assert run_copier("TABLES=regions").code == 0
    assert outcomes(run_copier("TABLES=regions", "--copy-unchanged")) == {"public.regions": "copied"}
    monkeypatch.setenv("COPIER_COPY_UNCHANGED", "1")
    assert outcomes(run_copier("TABLES=regions")) == {"public.regions": "copied"}
    monkeypatch.delenv("COPIER_COPY_UNCHANGED")
    # what the copies recorded still counts
    assert outcomes(run_copier("TABLES=regions")) == {"public.regions": "unchanged before reading"}


def test_a_run_that_died_after_a_swap_left_a_true_fingerprint(skipping, run_copier, at_moment):
    """The fingerprint is written in the swap's transaction: a run ended right after one table
    went live leaves that table's, and the next run's verdicts are right."""
    assert run_copier("TABLES=regions,orders").code == 0
    skipping.source("UPDATE regions SET name = 'moved' WHERE id = 7; UPDATE orders SET total = 0")
    counted(skipping, "SELECT pg_stat_get_tuples_updated('regions'::regclass)", 1)

    def die(unit, result):
        raise KeyboardInterrupt

    at_moment("unit_done", die, once=True)
    assert run_copier("TABLES=regions,orders").code == 1  # regions (the largest) went live, then it died
    assert_equal_to_source(skipping, "regions")
    run = run_copier("TABLES=regions,orders")
    assert outcomes(run) == {"public.regions": "unchanged before reading", "public.orders": "copied"}
    assert_equal_to_source(skipping, "regions", "orders")


def test_swap_together_swaps_the_changed_and_leaves_the_unchanged(skipping, run_copier):
    assert run_copier("TABLES=regions,orders", "--swap", "together").code == 0
    skipping.source("UPDATE orders SET total = total + 1 WHERE id < 100")
    run = run_copier("TABLES=regions,orders", "--swap", "together")
    assert run.code == 0, run.stderr
    assert outcomes(run) == {"public.regions": "unchanged before reading", "public.orders": "copied"}
    assert [e["table"] for e in run.of("table_staged")] == ["public.orders"]
    assert_equal_to_source(skipping, "regions", "orders")
    assert staging_debris(skipping) == []


def test_a_sliced_table_is_found_unchanged_by_its_finish(skipping, run_copier):
    args = ("TABLES=orders,regions", "--jobs", "2", "--split-larger-than", "100kB")
    assert run_copier(*args).code == 0
    run = run_copier(*args)
    assert run.code == 0, run.stderr
    assert len(run.of("slice_loaded")) > 1
    (orders,) = [e for e in run.of("table_unchanged") if e["table"] == "public.orders"]
    assert orders["found"] == "after loading" and orders["slices"] > 1
    skipping.source("UPDATE orders SET total = -1 WHERE id = 4999")  # in the last slice only
    run = run_copier(*args)
    assert outcomes(run)["public.orders"] == "copied"
    assert_equal_to_source(skipping, "regions", "orders")
    assert staging_debris(skipping) == []


def test_a_reporting_table_partitioned_on_its_side_is_recognised(skipping, run_copier):
    skipping.target("CREATE TABLE orders (id bigint, region int, total numeric) PARTITION BY RANGE (id);"
                    "CREATE TABLE orders_low PARTITION OF orders FOR VALUES FROM (MINVALUE) TO (2500);"
                    "CREATE TABLE orders_high PARTITION OF orders FOR VALUES FROM (2500) TO (MAXVALUE)")
    for found in ("copied", "unchanged before reading"):
        assert outcomes(run_copier("TABLES=orders")) == {"public.orders": found}
    skipping.target("UPDATE orders_high SET total = 0 WHERE id = 2600")  # a write in one partition
    assert outcomes(run_copier("TABLES=orders")) == {"public.orders": "copied"}
    assert_equal_to_source(skipping, "orders")


def test_without_room_for_fingerprints_every_table_is_copied(skipping, run_copier, monkeypatch):
    """A target user that may not make the copier's schema: one warning, and every table copied."""
    writer = f"plain_{skipping.target_name}"
    skipping.target(f"CREATE ROLE {writer} LOGIN; GRANT CREATE, USAGE ON SCHEMA public TO {writer}")
    monkeypatch.setenv("TARGET_DSN", skipping.cluster.dsn(skipping.target_name, user=writer))
    for _ in range(2):
        run = run_copier("TABLES=regions")
        assert run.code == 0, run.stderr
        assert outcomes(run) == {"public.regions": "copied"}
        (warning,) = run.of("warning")
        assert warning["message"].startswith("the target user may not keep the tables' fingerprints")
    assert skipping.target_rows("SELECT to_regnamespace('nightly_copy')") == [(None,)]


def test_load_jobs_read_an_unchanged_table_first_and_the_publish_keeps_it(skipping):
    """On AWS: a load job proves unchanged a table that was unchanged last night and leaves a
    note; the publish checks the reporting table again and drops the note."""
    tables = "public.regions,public.orders"
    for night in ("n1", "n2", "n3"):
        jobs = [load_job(skipping, night, k, 2, table) for k, table in enumerate(tables.split(","), 1)]
        for job in jobs:
            assert job.finish()[0] == 0
        published = publish(skipping, night, tables)
        assert published.returncode == 0, published.stderr
    lines = [json.loads(line) for line in published.stdout.splitlines() if line.startswith("{")]
    found = {e["table"]: e["found"] for e in lines if e["event"] == "table_unchanged"}
    assert found == {"public.regions": "before reading", "public.orders": "before reading"}
    assert [e["rows"] for e in jobs[0].of("table_loaded")] == [3000]
    assert staging_debris(skipping) == []

    # Written to between the load and the publish: the publish refuses to call it unchanged.
    jobs = [load_job(skipping, "n4", k, 2, table) for k, table in enumerate(tables.split(","), 1)]
    for job in jobs:
        assert job.finish()[0] == 0
    skipping.target("UPDATE regions SET name = 'analyst' WHERE id = 1")
    published = publish(skipping, "n4", tables)
    assert published.returncode == 1
    assert "public.regions: the reporting table public.regions was written to" in published.stderr
    assert skipping.target_rows("SELECT name FROM regions WHERE id = 1") == [("analyst",)]
    # and the next night copies it
    jobs = [load_job(skipping, "n5", k, 2, table) for k, table in enumerate(tables.split(","), 1)]
    for job in jobs:
        assert job.finish()[0] == 0
    assert publish(skipping, "n5", tables).returncode == 0
    assert_equal_to_source(skipping, "regions", "orders")
    assert staging_debris(skipping) == []  # what n4 left staged went with n5's run


# --- proved unchanged on the source without reading it (copier.py, "unchanged on the source")


def test_a_row_written_by_a_transaction_open_during_the_last_read_is_seen(skipping, run_copier):
    """Rows a transaction (and its subtransaction) wrote while last night's read ran, committed
    after it: invisible then, visible now, with an xmin the last snapshot saw as in progress."""
    nights_until_proved(skipping, run_copier)
    writer = psycopg2.connect(skipping.source_dsn)
    try:
        cur = writer.cursor()
        cur.execute("INSERT INTO regions (name) VALUES ('top-level'); SAVEPOINT s; "
                    "INSERT INTO regions (name) VALUES ('in a subtransaction'); RELEASE SAVEPOINT s; "
                    "DELETE FROM regions WHERE id IN (5, 6)")  # as many rows as before, all told
        run = run_copier("TABLES=regions")  # the writer is still open: its rows are not tonight's
        assert outcomes(run) == {"public.regions": "unchanged before reading"}
        writer.commit()
    finally:
        writer.close()
    run = run_copier("TABLES=regions")
    assert run.code == 0, run.stderr
    assert outcomes(run) == {"public.regions": "copied"}
    assert_equal_to_source(skipping, "regions")
    assert skipping.target_rows("SELECT count(*) FROM regions WHERE name = 'in a subtransaction'") == [(1,)]


# Another orders, made before the last night with as many rows (old row versions all) and the
# same definition, then renamed to the table's name: other rows.
ANOTHER_ORDERS = ("CREATE TABLE orders_next (LIKE orders INCLUDING ALL);"
                  "INSERT INTO orders_next SELECT id, region, -total FROM orders")
RENAMED_INTO_PLACE = ("ALTER TABLE orders RENAME TO orders_old;"
                      "ALTER TABLE orders_old RENAME CONSTRAINT orders_pkey TO orders_old_pkey;"
                      "ALTER TABLE orders_next RENAME TO orders;"
                      "ALTER TABLE orders RENAME CONSTRAINT orders_next_pkey TO orders_pkey")


def test_a_table_renamed_into_place_is_copied(skipping, run_copier):
    skipping.source(ANOTHER_ORDERS)
    nights_until_proved(skipping, run_copier, "TABLES=orders")
    skipping.source(RENAMED_INTO_PLACE)
    run = run_copier("TABLES=orders")
    assert run.code == 0, run.stderr
    assert outcomes(run) == {"public.orders": "copied"}
    assert_equal_to_source(skipping, "orders")


def test_a_table_renamed_into_place_as_the_run_starts_is_copied(skipping, run_copier, at_moment):
    """The same, between the run's look at the source's tables and the proof: the proof looks
    at the table's relations again under its lock."""
    skipping.source(ANOTHER_ORDERS)
    nights_until_proved(skipping, run_copier, "TABLES=orders")

    def rename(units):
        skipping.source(RENAMED_INTO_PLACE)

    at_moment("tables_checked", rename, once=True)
    run = run_copier("TABLES=orders")
    assert run.code == 0, run.stderr
    assert outcomes(run) == {"public.orders": "copied"}
    assert_equal_to_source(skipping, "orders")


def test_an_enum_label_renamed_is_copied(skipping, run_copier):
    """The rows are untouched; what they read as is not."""
    skipping.source("CREATE TYPE mood AS ENUM ('sad', 'ok'); ALTER TABLE regions ADD COLUMN mood mood[];"
                    "UPDATE regions SET mood = '{ok}'")
    nights_until_proved(skipping, run_copier)
    assert outcomes(run_copier("TABLES=regions")) == {"public.regions": "unchanged before reading"}
    skipping.source("ALTER TYPE mood RENAME VALUE 'ok' TO 'fine'")
    run = run_copier("TABLES=regions")
    assert run.code == 0, run.stderr
    assert outcomes(run) == {"public.regions": "copied"}
    assert skipping.target_rows("SELECT DISTINCT mood::text FROM regions") == [("{fine}",)]


def test_frozen_and_vacuumed_rows_are_still_proved_unchanged(skipping, run_copier):
    nights_until_proved(skipping, run_copier)
    skipping.source("VACUUM (FREEZE) regions")
    for _ in range(2):
        assert outcomes(run_copier("TABLES=regions")) == {"public.regions": "unchanged before reading"}
    assert_equal_to_source(skipping, "regions")


def test_a_partitioned_source_is_proved_and_a_write_in_a_partition_seen(skipping, run_copier):
    skipping.source("CREATE TABLE sales (id int, total int) PARTITION BY RANGE (id);"
                    "CREATE TABLE sales_low PARTITION OF sales FOR VALUES FROM (0) TO (100);"
                    "CREATE TABLE sales_high PARTITION OF sales FOR VALUES FROM (100) TO (200);"
                    "INSERT INTO sales SELECT g, g FROM generate_series(0, 199) g;"
                    "CREATE TABLE sales_other (LIKE sales);"
                    "INSERT INTO sales_other SELECT g, -g FROM generate_series(100, 199) g")
    nights_until_proved(skipping, run_copier, "TABLES=sales")
    assert outcomes(run_copier("TABLES=sales")) == {"public.sales": "unchanged before reading"}
    skipping.source("UPDATE sales SET total = 0 WHERE id = 150")
    counted(skipping, "SELECT pg_stat_get_tuples_updated('sales_high'::regclass)", 1)
    assert outcomes(run_copier("TABLES=sales")) == {"public.sales": "copied"}
    assert outcomes(run_copier("TABLES=sales")) == {"public.sales": "unchanged before reading"}
    # a partition swapped for another as old and as large, under its name: other rows
    skipping.source("ALTER TABLE sales DETACH PARTITION sales_high;"
                    "ALTER TABLE sales_high RENAME TO sales_gone;"
                    "ALTER TABLE sales_other RENAME TO sales_high;"
                    "ALTER TABLE sales ATTACH PARTITION sales_high FOR VALUES FROM (100) TO (200)")
    run = run_copier("TABLES=sales")
    assert run.code == 0, run.stderr
    assert outcomes(run) == {"public.sales": "copied"}
    assert_equal_to_source(skipping, "sales")


def test_without_a_record_of_the_source_it_is_read_and_hashed_then_proved(skipping, run_copier):
    """A fingerprint an older copier recorded (no source record): read and hashed, which
    records one; the next night proves it."""
    nights_until_proved(skipping, run_copier)
    skipping.target("ALTER TABLE nightly_copy.fingerprints DROP COLUMN source")
    for found in ("before loading", "before reading"):
        run = run_copier("TABLES=regions")
        assert run.code == 0, run.stderr
        assert outcomes(run) == {"public.regions": f"unchanged {found}"}


def test_a_source_whose_functions_the_proof_may_not_call_is_hashed(skipping, run_copier, monkeypatch):
    """A DBA revoked a function the proof calls: nothing is proved, nothing fails; a table
    unchanged last night is read and hashed first, as before the proof."""
    reader = f"reader_{skipping.source_name}"
    skipping.source(f"CREATE ROLE {reader} LOGIN; GRANT SELECT ON ALL TABLES IN SCHEMA public TO {reader};"
                    f"GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO {reader};"
                    "REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC")
    monkeypatch.setenv("SOURCE_DSN", skipping.cluster.dsn(skipping.source_name, user=reader))
    found = []
    for _ in range(3):
        run = run_copier("TABLES=regions")
        assert run.code == 0, run.stderr
        found.append(outcomes(run)["public.regions"])
    assert found == ["copied", "unchanged after loading", "unchanged before loading"]
    assert skipping.target_rows("SELECT source FROM nightly_copy.fingerprints") == [(None,)]
