"""The swap: readers see the old table or the new one, never anything in between, and
everything that belongs to the reporting side (views, grants, owner, comments) survives."""

import threading
import time

import psycopg2
import pytest

import copier

ORDERS = (
    "CREATE TABLE orders (id int PRIMARY KEY, customer text NOT NULL, total numeric(12, 2)"
    " CHECK (total >= 0), placed date DEFAULT current_date);"
    "CREATE INDEX orders_customer ON orders (customer);"
    "CREATE UNIQUE INDEX orders_placed_id ON orders (placed, id) WHERE total > 0;"
)


def staging_debris(dbs):
    return dbs.target_rows("SELECT relname FROM pg_class WHERE relname LIKE '\\_copier\\_%'")


@pytest.fixture
def orders(copier_env):
    copier_env.source(ORDERS + "INSERT INTO orders SELECT g, 'c' || g % 7, g, '2024-01-01'"
                      " FROM generate_series(1, 1000) g")
    return copier_env


def test_missing_target_table_is_created_with_keys_indexes_and_checks(orders, run_copier):
    orders.source("COMMENT ON TABLE orders IS 'from the shop'")
    assert run_copier("TABLES=orders").code == 0

    assert orders.target_rows("SELECT count(*), sum(total) FROM orders") == [(1000, 500500)]
    indexes = "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'orders' ORDER BY 1"
    assert orders.target_rows(indexes) == orders.source_rows(indexes)
    constraints = ("SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                   "WHERE conrelid = 'orders'::regclass ORDER BY 1")
    assert orders.target_rows(constraints) == orders.source_rows(constraints)
    assert orders.target_rows("SELECT obj_description('orders'::regclass)") == [("from the shop",)]
    assert staging_debris(orders) == []


def test_a_second_run_replaces_the_contents(orders, run_copier):
    assert run_copier("TABLES=orders").code == 0
    orders.source("DELETE FROM orders WHERE id > 10; UPDATE orders SET customer = 'new'")

    assert run_copier("TABLES=orders").code == 0
    assert orders.target_rows("SELECT count(*), min(customer), max(customer) FROM orders") == [
        (10, "new", "new")]


def test_empty_source_table_empties_the_target(orders, run_copier):
    assert run_copier("TABLES=orders").code == 0
    orders.source("TRUNCATE orders")

    result = run_copier("TABLES=orders")
    assert result.code == 0
    assert result.of("table_copied")[0]["rows"] == 0
    assert orders.target_rows("SELECT count(*) FROM orders") == [(0,)]


def test_table_without_primary_key_keeps_duplicates(copier_env, run_copier):
    copier_env.source("CREATE TABLE events (kind text, at int);"
                      "INSERT INTO events VALUES ('a', 1), ('a', 1), (NULL, NULL)")
    assert run_copier("TABLES=events").code == 0
    assert copier_env.target_rows("SELECT kind, at, count(*) FROM events GROUP BY 1, 2 ORDER BY 1") == [
        ("a", 1, 2), (None, None, 1)]


def test_changed_source_shape_replaces_the_target_shape(orders, run_copier):
    orders.target("CREATE TABLE orders (id int, legacy_column text); INSERT INTO orders VALUES (-1, 'old')")
    orders.source("ALTER TABLE orders ADD COLUMN channel text DEFAULT 'web'")

    assert run_copier("TABLES=orders").code == 0
    columns = ("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
               "WHERE attrelid = 'orders'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum")
    assert orders.target_rows(columns) == orders.source_rows(columns)
    assert orders.target_rows("SELECT count(*), min(channel) FROM orders") == [(1000, "web")]


REPORTING_SIDE = """
CREATE ROLE analyst_{n}; CREATE ROLE owner_{n}; CREATE ROLE auditor_{n};
GRANT CREATE ON SCHEMA public TO owner_{n};
CREATE TABLE orders (id int PRIMARY KEY, customer text NOT NULL, total numeric(12, 2), placed date);
INSERT INTO orders VALUES (1, 'old', 5, '2020-01-01');
ALTER TABLE orders OWNER TO owner_{n};
GRANT SELECT ON orders TO analyst_{n};
GRANT SELECT (id, customer) ON orders TO auditor_{n};
COMMENT ON TABLE orders IS 'reporting copy of shop orders';
ALTER TABLE orders SET (autovacuum_enabled = false, fillfactor = 90);
COMMENT ON COLUMN orders.total IS 'in euros';
CREATE SCHEMA marts;
CREATE VIEW marts.by_customer AS SELECT customer, sum(total) AS total FROM public.orders GROUP BY customer;
CREATE VIEW marts.top_customer AS SELECT * FROM marts.by_customer ORDER BY total DESC LIMIT 1;
CREATE MATERIALIZED VIEW marts.order_count AS SELECT count(*) AS n FROM public.orders;
CREATE UNIQUE INDEX order_count_n ON marts.order_count (n);
GRANT SELECT ON marts.by_customer, marts.top_customer, marts.order_count TO analyst_{n};
COMMENT ON VIEW marts.by_customer IS 'per customer';
"""


def test_views_grants_owner_comments_and_options_survive_and_see_the_new_data(orders, run_copier):
    n = orders.target_name
    orders.target(REPORTING_SIDE.format(n=n))

    result = run_copier("TABLES=orders")
    assert result.code == 0, result.stderr

    assert orders.target_rows("SELECT sum(total) FROM marts.by_customer") == [(500500,)]
    assert orders.target_rows("SELECT customer FROM marts.top_customer") == [("c6",)]
    assert orders.target_rows("SELECT n FROM marts.order_count") == [(1000,)]
    assert orders.target_rows("SELECT indexname FROM pg_indexes WHERE schemaname = 'marts'") == [
        ("order_count_n",)]
    assert orders.target_rows("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'orders'") == [
        (f"owner_{n}",)]
    privileges = (
        f"SELECT has_table_privilege('analyst_{n}', 'public.orders', 'SELECT'),"
        f" has_table_privilege('analyst_{n}', 'marts.by_customer', 'SELECT'),"
        f" has_table_privilege('analyst_{n}', 'marts.top_customer', 'SELECT'),"
        f" has_table_privilege('analyst_{n}', 'marts.order_count', 'SELECT'),"
        f" has_column_privilege('auditor_{n}', 'public.orders', 'customer', 'SELECT'),"
        f" has_column_privilege('auditor_{n}', 'public.orders', 'total', 'SELECT')"
    )
    assert orders.target_rows(privileges) == [(True, True, True, True, True, False)]
    assert orders.target_rows("SELECT reloptions FROM pg_class WHERE relname = 'orders'") == [
        (["autovacuum_enabled=false", "fillfactor=90"],)]
    assert orders.target_rows(
        "SELECT obj_description('orders'::regclass), col_description('orders'::regclass, 3),"
        " obj_description('marts.by_customer'::regclass)") == [
        ("reporting copy of shop orders", "in euros", "per customer")]
    assert staging_debris(orders) == []


ROW_SECURITY = """
CREATE ROLE limited_{n};
CREATE TABLE orders (id int PRIMARY KEY, customer text NOT NULL, total numeric(12, 2), placed date);
GRANT SELECT ON orders TO limited_{n};
ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
ALTER TABLE orders FORCE ROW LEVEL SECURITY;
CREATE POLICY two_customers ON orders FOR SELECT TO limited_{n} USING (customer IN ('c1', 'c2'));
CREATE POLICY not_the_big_ones ON orders AS RESTRICTIVE FOR SELECT TO PUBLIC USING (total < 900);
"""
POLICIES = "SELECT policyname, permissive, roles, cmd, qual, with_check FROM pg_policies ORDER BY 1"


def rows_seen_by(dbs, role: str) -> int:
    return dbs.target_rows(f"SET ROLE {role}; SELECT count(*) FROM orders")[0][0]


def test_row_level_security_and_its_policies_survive(orders, run_copier):
    n = orders.target_name
    orders.target(ROW_SECURITY.format(n=n))
    policies = orders.target_rows(POLICIES)

    result = run_copier("TABLES=orders")

    assert result.code == 0, result.stderr
    assert orders.target_rows(POLICIES) == policies
    assert orders.target_rows("SELECT relrowsecurity, relforcerowsecurity FROM pg_class "
                              "WHERE relname = 'orders'") == [(True, True)]
    expected = orders.source_rows("SELECT count(*) FROM orders WHERE customer IN ('c1', 'c2') "
                                  "AND total < 900")[0][0]
    assert 0 < expected < 1000
    assert rows_seen_by(orders, f"limited_{n}") == expected


def test_a_materialized_view_is_filled_as_its_owner_fills_it(orders, run_copier):
    """REFRESH runs the query as the view's owner: under row-level security, the owner's rows."""
    n = orders.target_name
    orders.target(ROW_SECURITY.format(n=n)
                  + f"GRANT CREATE ON SCHEMA public TO limited_{n}; SET ROLE limited_{n};"
                  "CREATE MATERIALIZED VIEW seen AS SELECT count(*) AS n FROM public.orders;"
                  "RESET ROLE")

    result = run_copier("TABLES=orders")

    assert result.code == 0, result.stderr
    expected = orders.source_rows("SELECT count(*) FROM orders WHERE customer IN ('c1', 'c2') "
                                  "AND total < 900")[0][0]
    assert orders.target_rows("SELECT n FROM seen") == [(expected,)]
    assert orders.target_rows("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'seen'") == [
        (f"limited_{n}",)]


def test_a_policy_that_no_longer_fits_fails_the_table_and_keeps_the_old_one(orders, run_copier):
    n = orders.target_name
    orders.target(f"CREATE ROLE region_{n}; CREATE TABLE orders (id int, customer text, region text);"
                  "INSERT INTO orders VALUES (1, 'old', 'eu'), (2, 'old', 'us');"
                  f"GRANT SELECT ON orders TO region_{n}; ALTER TABLE orders ENABLE ROW LEVEL SECURITY;"
                  f"CREATE POLICY eu_only ON orders TO region_{n} USING (region = 'eu')")

    result = run_copier("TABLES=orders")

    assert result.code == 1
    assert "row-level security policy eu_only does not fit the new shape of public.orders" in result.stderr
    assert rows_seen_by(orders, f"region_{n}") == 1
    assert orders.target_rows("SELECT count(*) FROM orders") == [(2,)]
    assert staging_debris(orders) == []


TRIGGERS = """
CREATE TABLE orders (id int PRIMARY KEY, customer text NOT NULL, total numeric(12, 2), placed date);
CREATE FUNCTION shout() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.customer := upper(NEW.customer); RETURN NEW; END $$;
CREATE TRIGGER shout_on_update BEFORE UPDATE OF customer ON orders FOR EACH ROW EXECUTE FUNCTION shout();
CREATE TRIGGER shout_when_asked BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION shout();
ALTER TABLE orders DISABLE TRIGGER shout_when_asked;
"""
TRIGGERS_QUERY = ("SELECT tgname, pg_get_triggerdef(oid), tgenabled FROM pg_trigger "
                  "WHERE tgrelid = 'orders'::regclass AND NOT tgisinternal ORDER BY 1")


def test_the_tables_own_triggers_survive_in_their_state(orders, run_copier):
    orders.target(TRIGGERS)
    triggers = orders.target_rows(TRIGGERS_QUERY)

    result = run_copier("TABLES=orders")

    assert result.code == 0, result.stderr
    assert orders.target_rows(TRIGGERS_QUERY) == triggers
    assert [state for _, _, state in triggers] == ["O", "D"]
    orders.target("UPDATE orders SET customer = 'quiet' WHERE id = 1")
    assert orders.target_rows("SELECT customer FROM orders WHERE id = 1") == [("QUIET",)]


def test_a_trigger_that_no_longer_fits_fails_the_table_and_keeps_the_old_one(orders, run_copier):
    orders.target(TRIGGERS.replace("UPDATE OF customer", "UPDATE OF customer, gone")
                  .replace("placed date", "placed date, gone text")
                  + "INSERT INTO orders VALUES (1, 'old', 5, '2020-01-01', 'x')")

    result = run_copier("TABLES=orders")

    assert result.code == 1
    assert "trigger shout_on_update does not fit the new shape of public.orders" in result.stderr
    assert orders.target_rows("SELECT id, customer, gone FROM orders") == [(1, "old", "x")]
    assert staging_debris(orders) == []


def test_a_view_that_no_longer_fits_fails_the_table_and_keeps_the_old_one(orders, run_copier):
    orders.target("CREATE TABLE orders (id int, customer text, gone text);"
                  "INSERT INTO orders VALUES (1, 'old', 'x');"
                  "CREATE VIEW uses_gone AS SELECT gone FROM orders")

    result = run_copier("TABLES=orders")
    assert result.code == 1
    assert "view public.uses_gone does not fit the new shape of public.orders" in result.stderr
    assert orders.target_rows("SELECT * FROM uses_gone") == [("x",)]
    assert orders.target_rows("SELECT id, customer FROM orders") == [(1, "old")]
    assert staging_debris(orders) == []


def test_readers_never_see_an_empty_or_partial_table(orders, run_copier, at_moment):
    assert run_copier("TABLES=orders").code == 0
    orders.source("INSERT INTO orders SELECT g, 'big' || g, g, '2024-01-02'"
                  " FROM generate_series(1001, 200000) g")
    seen: list[int] = []
    copying = threading.Event()
    stop = threading.Event()

    def reader():
        conn = psycopg2.connect(orders.target_dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            while not stop.is_set():
                cur.execute("SELECT count(*) FROM orders")
                seen.append((copying.is_set(), cur.fetchone()[0]))
        conn.close()

    def note_progress(table, bytes):
        copying.set()
        time.sleep(0.002)  # give the reader time to look while the load is running

    at_moment("loading", note_progress)
    thread = threading.Thread(target=reader)
    thread.start()
    try:
        result = run_copier("TABLES=orders", "--progress-seconds", "0")
    finally:
        stop.set()
        thread.join()

    assert result.code == 0, result.stderr
    counts = {count for _, count in seen}
    assert counts <= {1000, 200000}
    assert any(during and count == 1000 for during, count in seen)  # it looked during the load
    assert seen[-1][1] == 200000


def test_swap_waits_for_readers_then_gives_up_and_keeps_the_old_table(orders, run_copier):
    assert run_copier("TABLES=orders").code == 0
    orders.source("DELETE FROM orders")
    blocker = psycopg2.connect(orders.target_dsn)
    try:
        with blocker.cursor() as cur:
            cur.execute("SELECT count(*) FROM orders")  # holds its lock until the transaction ends
        result = run_copier("TABLES=orders", "--lock-timeout", "0.1", "--lock-retries", "2",
                            "--lock-budget", "0.5", "--no-kill-readers")
    finally:
        blocker.rollback()
        blocker.close()

    assert result.code == 1
    assert "could not lock public.orders for the swap within --lock-budget 0.5 s" in result.stderr
    assert orders.target_rows("SELECT count(*) FROM orders") == [(1000,)]
    assert staging_debris(orders) == []


def test_swap_succeeds_once_the_reader_is_gone(orders, run_copier):
    assert run_copier("TABLES=orders").code == 0
    orders.source("DELETE FROM orders WHERE id > 1")
    blocker = psycopg2.connect(orders.target_dsn)
    with blocker.cursor() as cur:
        cur.execute("SELECT count(*) FROM orders")
    timer = threading.Timer(0.5, blocker.rollback)
    timer.start()
    try:
        result = run_copier("TABLES=orders", "--lock-timeout", "0.2", "--lock-retries", "10")
    finally:
        timer.join()
        blocker.close()
    assert result.code == 0, result.stderr
    assert orders.target_rows("SELECT count(*) FROM orders") == [(1,)]


def test_swap_together_changes_all_tables_or_none(orders, run_copier):
    orders.source("CREATE TABLE customers (name text PRIMARY KEY); INSERT INTO customers VALUES ('c1')")
    assert run_copier("TABLES=orders,customers", "--swap", "together").code == 0
    assert orders.target_rows("SELECT count(*) FROM customers") == [(1,)]

    # customers cannot be swapped (a view needs a column the source dropped), so orders stays too
    orders.target("ALTER TABLE customers ADD COLUMN region text;"
                  "CREATE VIEW by_region AS SELECT region FROM customers")
    orders.source("DELETE FROM orders; INSERT INTO customers VALUES ('c2')")
    result = run_copier("TABLES=orders,customers", "--swap", "together", "--jobs", "2")

    assert result.code == 1
    assert "none changed" in result.stderr
    assert orders.target_rows("SELECT count(*) FROM orders") == [(1000,)]
    assert orders.target_rows("SELECT count(*) FROM customers") == [(1,)]
    assert staging_debris(orders) == []
    assert result.of("table_copied") == []


def test_a_foreign_key_on_the_reporting_side_to_the_table_survives(orders, run_copier):
    assert run_copier("TABLES=orders").code == 0
    orders.target("CREATE TABLE notes (order_id int REFERENCES orders (id)); INSERT INTO notes VALUES (1)")
    orders.source("DELETE FROM orders WHERE id > 5")

    result = run_copier("TABLES=orders")
    assert result.code == 0, result.stderr
    assert orders.target_rows("SELECT count(*) FROM orders") == [(5,)]
    assert orders.target_rows("SELECT conname, convalidated FROM pg_constraint WHERE contype = 'f'") == [
        ("notes_order_id_fkey", True)]


def test_partitioned_source_becomes_one_plain_table(copier_env, run_copier):
    copier_env.source(
        "CREATE TABLE measurements (at date NOT NULL, v int, PRIMARY KEY (at, v)) PARTITION BY RANGE (at);"
        "CREATE TABLE measurements_2023 PARTITION OF measurements"
        " FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');"
        "CREATE TABLE measurements_2024 PARTITION OF measurements"
        " FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');"
        "CREATE INDEX measurements_v ON measurements (v);"
        "INSERT INTO measurements VALUES ('2023-05-01', 1), ('2024-05-01', 2), ('2024-06-01', 3)")
    result = run_copier("TABLES=measurements")

    assert result.code == 0, result.stderr
    assert copier_env.target_rows("SELECT relkind FROM pg_class WHERE relname = 'measurements'") == [("r",)]
    assert copier_env.target_rows("SELECT count(*) FROM measurements") == [(3,)]
    assert copier_env.target_rows(
        "SELECT indexname FROM pg_indexes WHERE tablename = 'measurements' ORDER BY 1") == [
        ("measurements_pkey",), ("measurements_v",)]


def test_a_crashed_runs_staging_table_is_removed_by_the_next_run(orders, run_copier):
    import copier

    staging = copier.TableName("public", "orders").staging_name()
    orders.target(f"CREATE TABLE {staging} (leftover int)")  # as a --swap together run leaves it

    assert run_copier("TABLES=orders", "--swap", "together").code == 0
    assert staging_debris(orders) == []
    assert orders.target_rows("SELECT count(*) FROM orders") == [(1000,)]


def test_a_view_over_tables_copied_by_different_jobs_survives(copier_env, run_copier):
    """Both jobs replace the view while swapping their own table; one waits for the other."""
    copier_env.source(
        "CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY, w text);"
        "INSERT INTO a SELECT g, 'a' FROM generate_series(1, 20000) g;"
        "INSERT INTO b SELECT g, 'b' FROM generate_series(1, 20000) g")
    assert run_copier("TABLES=a,b").code == 0
    copier_env.target("CREATE VIEW ab AS SELECT a.id, a.v, b.w FROM a JOIN b USING (id)")
    copier_env.source("UPDATE a SET v = 'a2'; UPDATE b SET w = 'b2'")

    result = run_copier("TABLES=a,b", "--jobs", "2")

    assert result.code == 0, result.stderr
    assert copier_env.target_rows("SELECT count(*), min(v), min(w) FROM ab") == [(20000, "a2", "b2")]


def test_a_table_dropped_before_the_swap_locks_it_in_order_is_passed_over(copier_env, run_copier,
                                                                          at_moment):
    """copier.lock_in_order: a table named by its query but dropped before its LOCK (another
    session's DROP, between the two) leaves the swap to its own locks, and the table goes live."""
    copier_env.source("CREATE TABLE a (id int PRIMARY KEY); INSERT INTO a VALUES (1), (2)")
    copier_env.target("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int);"
                      "CREATE VIEW ab AS SELECT a.id FROM a, b; CREATE VIEW a_ids AS SELECT id FROM a")
    named = []

    def drop_b(table, tables):
        named.extend(tables)
        copier_env.target("DROP VIEW ab; DROP TABLE b")

    at_moment("locking", drop_b, once=True)
    result = run_copier("TABLES=a")

    assert result.code == 0, result.stderr
    assert named == ["public.a", "public.b"]  # the query named b: the LOCK found it gone
    assert copier_env.target_rows("SELECT count(*) FROM a_ids") == [(2,)]


@pytest.mark.parametrize("tied", [True, False], ids=["tied-to-a-view", "alone"])
def test_the_ordered_locks_leave_jit_as_the_session_had_it(copier_env, tied):
    """copier.lock_in_order turns JIT off for its own query only, whether it then locks or not:
    the swap's next statement, sent with what it returns, has the session's setting again."""
    copier_env.target("CREATE TABLE a (id int); CREATE TABLE b (id int)"
                      + ("; CREATE VIEW ab AS SELECT a.id, b.id AS b_id FROM a, b" if tied else ""))
    conn = psycopg2.connect(copier_env.target_dsn, options="-c jit=on")  # as a role's setting would
    try:
        with conn.cursor() as cur:
            first = copier.lock_in_order(cur, copier.TableName("public", "a"), "")
            cur.execute(first + "SHOW jit")
            assert cur.fetchone() == ("on",)
            cur.execute("SELECT count(*) FROM pg_locks"
                        " WHERE pid = pg_backend_pid() AND relation = 'b'::regclass")
            assert cur.fetchone() == (1 if tied else 0,)
    finally:
        conn.close()


def test_jobs_sharing_a_new_schema_and_types(copier_env, run_copier):
    copier_env.source(
        "CREATE SCHEMA shop; CREATE TYPE shop.state AS ENUM ('new', 'done');"
        "CREATE DOMAIN shop.qty AS int CHECK (VALUE >= 0);"
        + "".join(f"CREATE TABLE shop.t{n} (s shop.state, q shop.qty);"
                  f"INSERT INTO shop.t{n} VALUES ('done', {n});" for n in range(4)))
    result = run_copier("TABLES=" + ",".join(f"shop.t{n}" for n in range(4)), "--jobs", "4")

    assert result.code == 0, result.stderr
    assert copier_env.target_rows("SELECT sum(q), min(s::text) FROM ("
                                  + " UNION ALL ".join(f"SELECT * FROM shop.t{n}" for n in range(4))
                                  + ") x") == [(6, "done")]


def test_a_type_created_meanwhile_by_another_job_is_not_an_error(copier_env, run_copier, at_moment):
    copier_env.source("CREATE TYPE state AS ENUM ('new', 'done'); CREATE TABLE t (s state);"
                      "INSERT INTO t VALUES ('new')")
    made = []

    def another_job_wins(name):  # another job's CREATE TYPE, a moment before this one's
        made.append(name)
        copier_env.target("CREATE TYPE state AS ENUM ('new', 'done')")

    at_moment("creating_type", another_job_wins, once=True)
    result = run_copier("TABLES=t")

    assert result.code == 0, result.stderr
    assert made == ["public.state"]
    assert copier_env.target_rows("SELECT s::text FROM t") == [("new",)]


def test_indexes_added_on_the_reporting_side_come_back(orders, run_copier):
    assert run_copier("TABLES=orders").code == 0
    orders.target("CREATE INDEX orders_total_idx ON orders (total) WHERE total > 100;"
                  "COMMENT ON INDEX orders_total_idx IS 'for the monthly report';"
                  "ALTER TABLE orders ADD COLUMN legacy int;"
                  "CREATE INDEX orders_legacy_idx ON orders (legacy)")
    orders.source("UPDATE orders SET total = total + 1")

    result = run_copier("TABLES=orders")

    assert result.code == 0, result.stderr
    indexes = "SELECT indexname, indexdef FROM pg_indexes WHERE indexname LIKE 'orders\\_%' ORDER BY 1"
    names = [name for name, _ in orders.target_rows(indexes)]
    assert names == ["orders_customer", "orders_pkey", "orders_placed_id", "orders_total_idx"]
    assert dict(orders.target_rows(indexes))["orders_total_idx"] == (
        "CREATE INDEX orders_total_idx ON public.orders USING btree (total) WHERE (total > (100)::numeric)")
    assert orders.target_rows("SELECT obj_description('orders_total_idx'::regclass, 'pg_class')") == [
        ("for the monthly report",)]
    (skipped,) = result.of("index_skipped")
    assert skipped["index"] == "orders_legacy_idx"
    assert 'column "legacy" does not exist' in skipped["error"]
    assert orders.target_rows("SELECT sum(total) FROM orders") == [(501500,)]


# An index whose expression reports the index build's max_parallel_maintenance_workers.
WORKERS_PROBE = """
CREATE FUNCTION build_workers(x int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('max_parallel_maintenance_workers') <> current_setting('probe.expected') THEN
        RAISE EXCEPTION 'index built with % parallel workers',
            current_setting('max_parallel_maintenance_workers');
    END IF;
    RETURN x;
END $$;
"""


@pytest.mark.parametrize("argv, workers", [([], "0"), (["--index-workers", "3"], "3")])
def test_index_builds_use_the_parallel_workers_asked_for(copier_env, run_copier, argv, workers):
    copier_env.source(WORKERS_PROBE + "SELECT set_config('probe.expected', "
                      "current_setting('max_parallel_maintenance_workers'), false);"
                      "CREATE TABLE probed (id int PRIMARY KEY); CREATE INDEX ON probed (build_workers(id));"
                      "INSERT INTO probed SELECT generate_series(1, 100)")
    copier_env.target(WORKERS_PROBE
                      + f"ALTER DATABASE {copier_env.target_name} SET probe.expected = '{workers}'")

    result = run_copier("TABLES=probed", *argv)

    assert result.code == 0, result.stderr
    assert copier_env.target_rows("SELECT count(*) FROM probed") == [(100,)]


def test_index_workers_must_not_be_negative(capsys):
    with pytest.raises(SystemExit):
        copier.parse_args(["TABLES=t", "--index-workers", "-1"])
    assert "--index-workers must not be negative" in capsys.readouterr().err


STATISTICS = """
ALTER TABLE orders ALTER COLUMN customer SET STATISTICS 500;
ALTER TABLE orders ALTER COLUMN placed SET (n_distinct = 365);
CREATE STATISTICS orders_dep (dependencies, ndistinct) ON customer, placed FROM orders;
ALTER STATISTICS orders_dep SET STATISTICS 300;
"""
EXPRESSION_STATISTICS = "CREATE STATISTICS orders_lower ON (lower(customer)) FROM orders"  # from 14 on
# nullif: the default is -1 before PostgreSQL 17 and NULL from 17 on.
COLUMN_SETTINGS = ("SELECT attname, nullif(attstattarget, -1), attoptions FROM pg_attribute"
                   " WHERE attrelid = 'orders'::regclass AND attnum > 0"
                   " AND (attstattarget >= 0 OR attoptions IS NOT NULL) ORDER BY 1")
EXTENDED = ("SELECT stxname, stxkind::text[], pg_get_statisticsobjdef_columns(oid),"
            " nullif(stxstattarget, -1) FROM pg_statistic_ext WHERE stxrelid = 'orders'::regclass ORDER BY 1")
BUILT = ("SELECT s.stxname FROM pg_statistic_ext s JOIN pg_statistic_ext_data d ON d.stxoid = s.oid "
         "WHERE s.stxrelid = 'orders'::regclass AND (d.stxddependencies IS NOT NULL "
         "OR d.stxdexpr IS NOT NULL) ORDER BY 1")


def extended_statistics(dbs) -> tuple[str, str]:
    """EXTENDED and BUILT as a server before 14 can run them: plain columns only."""
    if dbs.source_version >= 140000:
        return EXTENDED, BUILT
    columns = ("(SELECT string_agg(attname, ', ' ORDER BY attnum) FROM pg_attribute"
               " WHERE attrelid = stxrelid AND attnum = ANY (stxkeys))")
    return (EXTENDED.replace("pg_get_statisticsobjdef_columns(oid)", columns),
            BUILT.replace(" OR d.stxdexpr IS NOT NULL", ""))


def test_statistics_settings_and_objects_come_from_the_source_and_are_built(orders, run_copier):
    expressions = orders.source_version >= 140000
    orders.source(STATISTICS + (EXPRESSION_STATISTICS if expressions else ""))
    extended, built = extended_statistics(orders)

    for _ in range(2):  # the second run replaces a table that already has them
        result = run_copier("TABLES=orders")
        assert result.code == 0, result.stderr

    assert orders.target_rows(COLUMN_SETTINGS) == orders.source_rows(COLUMN_SETTINGS) == [
        ("customer", 500, None), ("placed", None, ["n_distinct=365"])]
    assert orders.target_rows(extended) == orders.source_rows(extended)
    assert orders.target_rows(built) == [("orders_dep",), *[("orders_lower",)] * expressions]  # ANALYZE


def test_statistics_objects_keep_their_own_schema(copier_env, run_copier):
    """Same-named statistics objects in two schemas, on two tables in a third."""
    copier_env.source("CREATE SCHEMA s1; CREATE SCHEMA s2;"
                      "CREATE TABLE t1 (a int, b int); CREATE TABLE t2 (a int, b int);"
                      "INSERT INTO t1 SELECT g, g % 10 FROM generate_series(1, 100) g;"
                      "INSERT INTO t2 SELECT g, g % 10 FROM generate_series(1, 100) g;"
                      "CREATE STATISTICS s1.st ON a, b FROM t1; CREATE STATISTICS s2.st ON a, b FROM t2;"
                      "COMMENT ON STATISTICS s2.st IS 'for t2'")
    where = ("SELECT stxnamespace::regnamespace::text, stxname, stxrelid::regclass::text,"
             " obj_description(oid, 'pg_statistic_ext') FROM pg_statistic_ext ORDER BY 1")

    for _ in range(2):
        result = run_copier("TABLES=t1,t2")
        assert result.code == 0, result.stderr

    assert copier_env.target_rows(where) == copier_env.source_rows(where) == [
        ("s1", "st", "t1", None), ("s2", "st", "t2", "for t2")]


def test_statistics_added_on_the_reporting_side_come_back(orders, run_copier):
    assert run_copier("TABLES=orders").code == 0
    orders.target("CREATE STATISTICS report_stats (mcv) ON customer, total FROM orders;"
                  "COMMENT ON STATISTICS report_stats IS 'for the dashboard';"
                  "ALTER TABLE orders ADD COLUMN legacy int;"
                  "CREATE STATISTICS legacy_stats ON customer, legacy FROM orders")

    result = run_copier("TABLES=orders")

    assert result.code == 0, result.stderr
    extended, _ = extended_statistics(orders)
    assert orders.target_rows(extended) == [("report_stats", ["m"], "customer, total", None)]
    assert orders.target_rows("SELECT obj_description(oid, 'pg_statistic_ext') FROM pg_statistic_ext") == [
        ("for the dashboard",)]
    (skipped,) = result.of("statistics_skipped")
    assert skipped["statistics"] == "legacy_stats"
    assert 'column "legacy" does not exist' in skipped["error"]


def test_the_query_for_servers_before_14_reads_column_statistics_the_same(orders):
    """Servers before 14 lack pg_get_statisticsobjdef_columns; its stand-in runs on any version."""
    orders.source("CREATE STATISTICS two (ndistinct) ON placed, customer FROM orders")
    oid = orders.source_rows("SELECT 'orders'::regclass::oid")[0][0]

    old, new = (orders.source_rows(copier.extended_statistics_query(version), {"tables": [oid]})
                for version in (130000, orders.source_version))

    assert old == new == [(oid, "two", "public", ["d"], "customer, placed", None, None)]


def test_a_target_user_with_create_on_the_schema_only_is_enough(orders, run_copier, monkeypatch):
    """No CREATE on the database (a reporting user rarely has it): the schema exists already."""
    writer = f"writer_{orders.target_name}"
    orders.target(f"CREATE ROLE {writer} LOGIN; GRANT CREATE, USAGE ON SCHEMA public TO {writer}")
    monkeypatch.setenv("TARGET_DSN", orders.cluster.dsn(orders.target_name, user=writer))

    for _ in range(2):  # creates the table, then replaces it
        result = run_copier("TABLES=orders")
        assert result.code == 0, result.stderr

    owner = "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'orders'"
    assert orders.target_rows(f"SELECT ({owner}), (SELECT count(*) FROM orders)") == [(writer, 1000)]


def test_the_least_privileges_the_readme_names_are_enough(copier_env, run_copier, monkeypatch):
    """Source: SELECT on the tables and sequences. Target: CREATE in the schema, and membership
    in the role that owns the reporting table and its views. Nobody is a superuser."""
    n = copier_env.target_name
    reader, writer, owner, analyst = (f"{role}_{n}" for role in ("reader", "writer", "owner", "analyst"))
    copier_env.source(
        f"CREATE ROLE {reader} LOGIN; CREATE SCHEMA sales; CREATE TYPE sales.mood AS ENUM ('ok', 'bad');"
        "CREATE TABLE sales.orders (id serial PRIMARY KEY, n bigint GENERATED ALWAYS AS IDENTITY,"
        " m sales.mood, note text);"
        "INSERT INTO sales.orders (m, note) SELECT 'ok', 'x' FROM generate_series(1, 100);"
        f"GRANT USAGE ON SCHEMA sales TO {reader}; GRANT SELECT ON ALL TABLES IN SCHEMA sales TO {reader};"
        f"GRANT SELECT ON ALL SEQUENCES IN SCHEMA sales TO {reader}")
    copier_env.target(
        f"CREATE ROLE {writer} LOGIN; CREATE ROLE {owner}; CREATE ROLE {analyst}; GRANT {owner} TO {writer};"
        f"CREATE SCHEMA sales AUTHORIZATION {owner}; GRANT CREATE, USAGE ON SCHEMA sales TO {writer}")
    monkeypatch.setenv("SOURCE_DSN", copier_env.cluster.dsn(copier_env.source_name, user=reader))
    monkeypatch.setenv("TARGET_DSN", copier_env.cluster.dsn(copier_env.target_name, user=writer))
    assert run_copier("TABLES=sales.orders").code == 0
    copier_env.target(
        f"ALTER TABLE sales.orders OWNER TO {owner}; GRANT USAGE ON SCHEMA sales TO {analyst};"
        f"GRANT SELECT ON sales.orders TO {analyst}; SET ROLE {owner};"
        "CREATE VIEW sales.counted AS SELECT count(*) AS c FROM sales.orders;"
        "CREATE MATERIALIZED VIEW sales.snapshot AS SELECT count(*) AS c FROM sales.orders;"
        f"GRANT SELECT ON sales.counted TO {analyst}; RESET ROLE")
    copier_env.source("ALTER TYPE sales.mood ADD VALUE 'great'")
    copier_env.source("INSERT INTO sales.orders (m, note) VALUES ('great', 'y')")

    result = run_copier("TABLES=sales.orders", "--jobs", "2")

    assert result.code == 0, result.stderr
    assert copier_env.target_rows(f"SET ROLE {analyst}; SELECT c FROM sales.counted") == [(101,)]
    assert copier_env.target_rows("SELECT c FROM sales.snapshot") == [(101,)]
    owner_query = "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'orders'"
    assert copier_env.target_rows(owner_query) == [(owner,)]


def test_grants_are_exactly_the_old_ones_even_with_default_privileges(orders, run_copier):
    """Default privileges give every new table and view a grant; one revoked stays revoked."""
    n = orders.target_name
    orders.target(f"CREATE ROLE everyone_{n}; CREATE ROLE analyst_{n};"
                  f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO everyone_{n}")
    assert run_copier("TABLES=orders").code == 0
    orders.target(f"CREATE VIEW totals AS SELECT sum(total) FROM orders;"
                  f"REVOKE SELECT ON orders, totals FROM everyone_{n};"
                  f"GRANT SELECT ON orders, totals TO analyst_{n}")
    privileges = (f"SELECT has_table_privilege('everyone_{n}', 'orders', 'SELECT'),"
                  f" has_table_privilege('everyone_{n}', 'totals', 'SELECT'),"
                  f" has_table_privilege('analyst_{n}', 'orders', 'SELECT'),"
                  f" has_table_privilege('analyst_{n}', 'totals', 'SELECT')")
    assert orders.target_rows(privileges) == [(False, False, True, True)]

    result = run_copier("TABLES=orders")

    assert result.code == 0, result.stderr
    assert orders.target_rows(privileges) == [(False, False, True, True)]


def test_a_sequence_that_defaults_use_without_owning_it_is_made_on_the_target(copier_env, run_copier):
    """A shared sequence, or one made by hand without OWNED BY: the defaults must still work."""
    copier_env.source("CREATE SCHEMA ids;"
                      "CREATE SEQUENCE ids.shared AS integer INCREMENT BY 10 START WITH 100;"
                      "CREATE TABLE a (id int DEFAULT nextval('ids.shared') PRIMARY KEY, v text);"
                      "CREATE TABLE b (id int DEFAULT nextval('ids.shared') PRIMARY KEY, v text);"
                      "INSERT INTO a (v) VALUES ('x'), ('y'); INSERT INTO b (v) VALUES ('z')")

    for _ in range(2):  # then it exists, and is left as it is
        result = run_copier("TABLES=a,b", "--jobs", "2")
        assert result.code == 0, result.stderr

    definition = ("SELECT format_type(seqtypid, NULL), seqincrement, seqstart, last_value"
                  " FROM pg_sequence, ids.shared WHERE seqrelid = 'ids.shared'::regclass")
    assert copier_env.target_rows(definition) == copier_env.source_rows(definition) == [
        ("integer", 10, 100, 120)]
    copier_env.target("INSERT INTO b (v) VALUES ('new')")
    assert copier_env.target_rows("SELECT id FROM b WHERE v = 'new'") == [(130,)]


def test_an_unlogged_reporting_table_stays_unlogged(orders, run_copier):
    persistence = "SELECT relname, relpersistence FROM pg_class WHERE relname LIKE 'orders%' ORDER BY 1"
    assert run_copier("TABLES=orders").code == 0
    assert {p for _, p in orders.target_rows(persistence)} == {"p"}
    orders.target("ALTER TABLE orders SET UNLOGGED")

    result = run_copier("TABLES=orders")

    assert result.code == 0, result.stderr
    assert {p for _, p in orders.target_rows(persistence)} == {"u"}  # the table and its indexes
    assert orders.target_rows("SELECT count(*) FROM orders") == [(1000,)]


def test_a_default_on_another_tables_serial_asks_for_that_table_first_then_follows_it(copier_env, run_copier):
    copier_env.source("CREATE TABLE a (id serial PRIMARY KEY);"
                      "CREATE TABLE b (id int DEFAULT nextval('a_id_seq') PRIMARY KEY, v text);"
                      "INSERT INTO a DEFAULT VALUES; INSERT INTO b (v) VALUES ('x')")

    result = run_copier("TABLES=b")
    assert result.code == 1
    assert ('a default uses sequence "public"."a_id_seq", which belongs to table public.a: '
            'copy public.a first') in result.stderr
    assert copier_env.target_rows("SELECT count(*) FROM pg_class WHERE relname = 'a_id_seq'") == [(0,)]

    assert run_copier("TABLES=a").code == 0
    result = run_copier("TABLES=b")
    assert result.code == 0, result.stderr
    assert copier_env.target_rows("SELECT v FROM b") == [("x",)]

    copier_env.source("INSERT INTO a DEFAULT VALUES")
    result = run_copier("TABLES=a")  # b's default uses a's sequence: it follows a's new one
    assert result.code == 0, result.stderr
    copier_env.target("INSERT INTO b (v) VALUES ('y')")
    assert copier_env.target_rows("SELECT id FROM b WHERE v = 'y'") == [(4,)]  # the source's position


def test_a_second_column_on_the_same_serial_sequence_follows_it(copier_env, run_copier):
    copier_env.source("CREATE TABLE tickets (id serial PRIMARY KEY,"
                      " shadow int DEFAULT nextval('tickets_id_seq'), v text);"
                      "INSERT INTO tickets (v) VALUES ('a'), ('b')")

    for _ in range(2):  # creates the table, then replaces it
        result = run_copier("TABLES=tickets")
        assert result.code == 0, result.stderr

    defaults = ("SELECT attname, pg_get_expr(adbin, adrelid) FROM pg_attrdef JOIN pg_attribute"
                " ON attrelid = adrelid AND attnum = adnum WHERE adrelid = 'tickets'::regclass ORDER BY 1")
    assert copier_env.target_rows(defaults) == copier_env.source_rows(defaults)
    copier_env.target("INSERT INTO tickets (v) VALUES ('c')")
    assert copier_env.target_rows("SELECT id, shadow FROM tickets WHERE v = 'c'") == [(5, 6)]


def test_a_table_renamed_into_place_keeps_the_serial_sequence_it_shares(copier_env, run_copier):
    """Blue and green on the source: a copy of the table made LIKE it (its default on the old
    table's serial sequence) renamed into place. On the reporting side that sequence belongs to
    the table the swap replaces: it is kept, and the new table's default goes on with it."""
    copier_env.source("CREATE TABLE regions (id serial PRIMARY KEY, name text);"
                      "INSERT INTO regions (name) SELECT 'r' || g FROM generate_series(1, 30) g;"
                      "CREATE TABLE regions_next (LIKE regions INCLUDING ALL);"
                      "INSERT INTO regions_next SELECT id, 'next ' || name FROM regions")
    assert run_copier("TABLES=regions").code == 0
    copier_env.source("ALTER TABLE regions RENAME TO regions_old; ALTER TABLE regions_next RENAME TO regions")

    result = run_copier("TABLES=regions")

    assert result.code == 0, result.stderr
    assert result.of("index_skipped") == []
    rows = "SELECT id, name FROM regions ORDER BY id"
    assert copier_env.target_rows(rows) == copier_env.source_rows(rows)
    copier_env.target("INSERT INTO regions (name) VALUES ('new')")  # the default still works
    assert copier_env.target_rows("SELECT id FROM regions WHERE name = 'new'") == [(31,)]
    assert run_copier("TABLES=regions").code == 0  # and the next night too


def test_keys_and_indexes_renamed_on_the_source_are_not_taken_for_the_reporting_sides_own(
        copier_env, run_copier):
    copier_env.source("CREATE TABLE codes (id int PRIMARY KEY, code text UNIQUE, n int);"
                      "CREATE INDEX codes_n ON codes (n);"
                      "INSERT INTO codes SELECT g, 'c' || g, g % 7 FROM generate_series(1, 50) g")
    assert run_copier("TABLES=codes").code == 0
    copier_env.source("ALTER TABLE codes RENAME CONSTRAINT codes_pkey TO codes_pk;"
                      "ALTER TABLE codes RENAME CONSTRAINT codes_code_key TO codes_code_unique;"
                      "ALTER INDEX codes_n RENAME TO codes_by_n")
    copier_env.target("ALTER TABLE codes ADD CONSTRAINT analysts_code UNIQUE (code, id);"  # their own
                      "CREATE INDEX analysts_n ON codes (n, code)")

    result = run_copier("TABLES=codes")

    assert result.code == 0, result.stderr
    assert result.of("index_skipped") == []
    keys = "SELECT conname FROM pg_constraint WHERE conrelid = 'codes'::regclass ORDER BY 1"
    assert copier_env.target_rows(keys) == [("analysts_code",), ("codes_code_unique",), ("codes_pk",)]
    indexes = "SELECT indexname FROM pg_indexes WHERE tablename = 'codes' ORDER BY 1"
    assert copier_env.target_rows(indexes) == [("analysts_code",), ("analysts_n",), ("codes_by_n",),
                                               ("codes_code_unique",), ("codes_pk",)]
