"""What the reporting side built on a copied table survives every refresh exactly (functions,
foreign keys, partitions, rules, other tables' policies and defaults, inheritance, publications),
or the table is refused before anything is written, with the object and the statement to run."""

import os
import pwd

import pytest

CUSTOMERS = (
    "CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, score int);"
    "INSERT INTO customers SELECT g, 'c' || g, g % 10 FROM generate_series(1, 100) g;"
)


def debris(dbs):
    return dbs.target_rows("SELECT relname FROM pg_class WHERE relname LIKE '\\_copier\\_%'")


@pytest.fixture
def customers(copier_env, run_copier):
    copier_env.source(CUSTOMERS)
    assert run_copier("TABLES=customers").code == 0
    return copier_env


ROUTINES = """
CREATE ROLE fn_owner_{n}; CREATE ROLE fn_user_{n};
GRANT ALL ON SCHEMA public TO fn_owner_{n}; GRANT SELECT ON customers TO fn_owner_{n};
CREATE FUNCTION best_customers(min_score int) RETURNS SETOF customers
    LANGUAGE sql STABLE SECURITY DEFINER SET work_mem = '8MB'
    AS 'SELECT * FROM customers WHERE score >= min_score';
CREATE FUNCTION label(c customers) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT c.name || '!' $$;
CREATE FUNCTION customer_count() RETURNS bigint LANGUAGE sql STABLE
    BEGIN ATOMIC SELECT count(*) FROM customers; END;
CREATE PROCEDURE touch(c customers) LANGUAGE sql AS $$ SELECT 1 $$;
CREATE FUNCTION keep_top(a customers, b customers) RETURNS customers LANGUAGE sql IMMUTABLE STRICT
    AS $$ SELECT CASE WHEN b.score > a.score THEN b ELSE a END $$;
CREATE AGGREGATE top_customer(customers) (SFUNC = keep_top, STYPE = customers);
CREATE VIEW labelled AS SELECT label(c) AS l FROM best_customers(9) c;
ALTER FUNCTION best_customers(int) OWNER TO fn_owner_{n};
REVOKE ALL ON FUNCTION best_customers(int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION best_customers(int) TO fn_user_{n};
COMMENT ON FUNCTION best_customers(int) IS 'the best ones';
"""
ROUTINE_FACTS = """
SELECT p.oid::regprocedure::text, p.prokind, pg_get_userbyid(p.proowner), p.proacl::text[],
       obj_description(p.oid, 'pg_proc'), p.prosecdef, p.proconfig,
       CASE WHEN p.prokind <> 'a' THEN pg_get_functiondef(p.oid) END
FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace ORDER BY 1
"""


def test_functions_procedures_and_aggregates_on_the_row_type_survive(customers, run_copier):
    customers.target(ROUTINES.format(n=customers.target_name))
    before = customers.target_rows(ROUTINE_FACTS)
    customers.source("UPDATE customers SET score = 9 WHERE id <= 3;"
                     "ALTER TABLE customers ADD COLUMN note text")

    for _ in range(2):
        result = run_copier("TABLES=customers")
        assert result.code == 0, result.stderr

    after = customers.target_rows(ROUTINE_FACTS)
    assert [row[:7] for row in after] == [row[:7] for row in before]
    assert len(after) == 6
    assert customers.target_rows("SELECT count(*) FROM best_customers(9)") == [(13,)]
    assert customers.target_rows("SELECT customer_count(), (SELECT count(*) FROM labelled)") == [(100, 13)]
    assert customers.target_rows("SELECT (top_customer(c)).score FROM customers c") == [(9,)]
    assert debris(customers) == []


def test_a_function_that_no_longer_fits_is_named_with_its_remedy_and_nothing_changes(customers, run_copier):
    customers.target("CREATE FUNCTION scores() RETURNS bigint LANGUAGE sql STABLE"
                     " BEGIN ATOMIC SELECT sum(score) FROM customers; END")
    customers.source("ALTER TABLE customers DROP COLUMN score; DELETE FROM customers WHERE id > 1")

    result = run_copier("TABLES=customers")

    assert result.code == 1
    assert ("function public.scores() does not fit the new shape of public.customers: "
            "column customers.score does not exist") in result.stderr
    assert "remove it on the reporting side: DROP ROUTINE public.scores()" in result.stderr
    assert customers.target_rows("SELECT scores(), count(*) FROM customers") == [(450, 100)]
    assert debris(customers) == []


FOREIGN_KEYS = """
CREATE TABLE orders (id int PRIMARY KEY, customer_id int NOT NULL REFERENCES customers (id),
                     parent_id int REFERENCES orders (id) DEFERRABLE INITIALLY DEFERRED);
INSERT INTO orders SELECT g, g % 100 + 1, NULLIF(g - 1, 0) FROM generate_series(1, 300) g;
"""
NOTES = "CREATE TABLE notes (customer_id int REFERENCES customers); INSERT INTO notes VALUES (100)"
KEYS = ("SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), convalidated"
        " FROM pg_constraint WHERE contype = 'f' ORDER BY 1, 2")


def test_foreign_keys_to_and_from_copied_tables_survive_and_are_validated_again(customers, run_copier):
    customers.source(FOREIGN_KEYS)
    customers.target(FOREIGN_KEYS.split("INSERT")[0] + "CREATE TABLE notes (customer_id int REFERENCES"
                     " customers ON DELETE CASCADE); INSERT INTO notes VALUES (1), (2);"
                     "COMMENT ON CONSTRAINT notes_customer_id_fkey ON notes IS 'kept'")
    before = customers.target_rows(KEYS)
    assert len(before) == 3 and all(valid for *_, valid in before)
    customers.source("INSERT INTO customers VALUES (101, 'new', 1);"
                     "INSERT INTO orders VALUES (301, 101, 300)")

    for _ in range(2):
        result = run_copier("TABLES=customers,orders", "--jobs", "2")
        assert result.code == 0, result.stderr
        assert customers.target_rows(KEYS) == before
    assert customers.target_rows("SELECT obj_description(oid, 'pg_constraint') FROM pg_constraint"
                                 " WHERE conname = 'notes_customer_id_fkey'") == [("kept",)]
    assert customers.target_rows("SELECT count(*) FROM orders WHERE customer_id = 101") == [(1,)]


def test_a_key_that_tonights_rows_break_stays_not_valid_with_a_warning(customers, run_copier):
    customers.target(NOTES)
    customers.source("DELETE FROM customers WHERE id = 100")

    result = run_copier("TABLES=customers")

    assert result.code == 0, result.stderr
    assert customers.target_rows("SELECT count(*) FROM customers") == [(99,)]
    assert customers.target_rows(KEYS) == [
        ("notes", "notes_customer_id_fkey", "FOREIGN KEY (customer_id) REFERENCES customers(id) NOT VALID",
         False)]
    (warning,) = result.of("warning")
    assert warning["message"].startswith("foreign key notes_customer_id_fkey of public.notes stays NOT "
                                         'VALID: insert or update on table "notes" violates foreign key')
    assert warning["message"].endswith("ALTER TABLE public.notes VALIDATE CONSTRAINT notes_customer_id_fkey")


def test_swap_together_validates_the_keys_and_fails_all_when_one_is_broken(customers, run_copier):
    customers.source(FOREIGN_KEYS)
    customers.target(FOREIGN_KEYS.split("INSERT")[0])
    assert run_copier("TABLES=customers,orders", "--swap", "together").code == 0
    assert all(valid for *_, valid in customers.target_rows(KEYS))
    customers.target(NOTES)
    customers.source("UPDATE orders SET customer_id = 1 WHERE customer_id = 100;"
                     "DELETE FROM customers WHERE id = 100")

    result = run_copier("TABLES=customers,orders", "--swap", "together")

    assert result.code == 1
    assert ("swap of all tables failed, none changed: tonight's rows break foreign key "
            "notes_customer_id_fkey of public.notes") in result.stderr
    assert "or ALTER TABLE public.notes DROP CONSTRAINT notes_customer_id_fkey" in result.stderr
    assert customers.target_rows("SELECT count(*) FROM customers") == [(100,)]
    assert customers.target_rows("SELECT count(*) FROM orders") == [(300,)]
    assert all(valid for *_, valid in customers.target_rows(KEYS))
    assert debris(customers) == []


PARTITIONED = """
CREATE TABLE events (id int NOT NULL, at date NOT NULL, kind text, PRIMARY KEY (id, at))
    PARTITION BY RANGE (at);
CREATE TABLE events_2023 PARTITION OF events FOR VALUES FROM ('2023-01-01') TO ('2024-01-01')
    WITH (fillfactor = 70);
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')
    PARTITION BY RANGE (at);
CREATE TABLE events_2024_h1 PARTITION OF events_2024 FOR VALUES FROM ('2024-01-01') TO ('2024-07-01');
CREATE TABLE events_2024_rest PARTITION OF events_2024 DEFAULT;
CREATE TABLE events_other PARTITION OF events DEFAULT;
CREATE INDEX events_kind ON events (kind);
CREATE INDEX events_2023_only ON events_2023 (kind, id);
CREATE ROLE partition_reader_{n};
GRANT SELECT ON events_2023 TO partition_reader_{n};
COMMENT ON TABLE events_2024_h1 IS 'first half';
CREATE FUNCTION no_op() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE TRIGGER only_2023 BEFORE INSERT ON events_2023 FOR EACH ROW EXECUTE FUNCTION no_op();
"""
PARTITION_FACTS = """
SELECT c.relname, c.relkind, pg_get_expr(c.relpartbound, c.oid), c.reloptions, c.relacl::text[],
       obj_description(c.oid, 'pg_class')
FROM pg_partition_tree('events') t JOIN pg_class c ON c.oid = t.relid ORDER BY 1
"""
EVENT_TRIGGERS = "SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2"
EVENT_INDEXES = ("SELECT tablename, indexname, indexdef FROM pg_indexes WHERE tablename LIKE 'events%'"
                 " ORDER BY 1, 2")


def test_a_partitioned_reporting_table_stays_partitioned(copier_env, run_copier):
    copier_env.source("CREATE TABLE events (id int PRIMARY KEY, at date NOT NULL, kind text);"
                      "INSERT INTO events SELECT g, date '2023-06-01' + g, substr('abc', g % 3 + 1, 1)"
                      " FROM generate_series(1, 900) g")
    copier_env.target(PARTITIONED.format(n=copier_env.target_name))
    before = copier_env.target_rows(PARTITION_FACTS)
    indexes = copier_env.target_rows(EVENT_INDEXES)
    triggers = copier_env.target_rows(EVENT_TRIGGERS)
    assert triggers == [("events_2023", "only_2023")]

    for _ in range(2):
        result = run_copier("TABLES=events")
        assert result.code == 0, result.stderr

    assert copier_env.target_rows(PARTITION_FACTS) == before
    assert copier_env.target_rows(EVENT_INDEXES) == indexes
    assert copier_env.target_rows(EVENT_TRIGGERS) == triggers
    assert result.of("index_skipped") == []  # the reporting side's key of that name is kept
    assert copier_env.target_rows("SELECT count(*), sum(id) FROM events") == [(900, 405450)]
    assert copier_env.target_rows("SELECT count(*) FROM events_2024_h1") == [(182,)]
    assert debris(copier_env) == []


def test_a_key_to_a_partitioned_table_ends_valid_in_every_partition(copier_env, run_copier):
    """pg_dump | psql leaves a plain table's foreign key to a partitioned table valid, with the
    copies PostgreSQL keeps for each partition; before 18, VALIDATE after NOT VALID would leave
    those copies NOT VALID (a server defect fixed in 18). The copier makes such a key as it was.
    A key that was NOT VALID stays so."""
    schema = ("CREATE TABLE accounts (id int NOT NULL, region text NOT NULL, PRIMARY KEY (id, region))"
              " PARTITION BY LIST (region);"
              "CREATE TABLE accounts_eu PARTITION OF accounts FOR VALUES IN ('eu');"
              "CREATE TABLE accounts_us PARTITION OF accounts FOR VALUES IN ('us');"
              "CREATE TABLE payments (id int PRIMARY KEY, account int, region text);")
    keys = ("ALTER TABLE payments ADD CONSTRAINT paid_by FOREIGN KEY (account, region)"
            " REFERENCES accounts (id, region);"
            "ALTER TABLE payments ADD CONSTRAINT checked_later FOREIGN KEY (account, region)"
            " REFERENCES accounts (id, region) NOT VALID")
    rows = ("INSERT INTO accounts SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END"
            " FROM generate_series(1, 100) g;"
            "INSERT INTO payments SELECT g, g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END"
            " FROM generate_series(1, 100) g")
    copier_env.source(schema + rows + ";" + keys)
    copier_env.target(schema + rows + ";" + keys)  # as pg_dump | psql leaves it
    validity = ("SELECT coalesce(p.conname, c.conname), c.conrelid::regclass::text, "
                "c.confrelid::regclass::text, c.convalidated FROM pg_constraint c "
                "LEFT JOIN pg_constraint p ON p.oid = c.conparentid WHERE c.contype = 'f' ORDER BY 1, 2, 3")
    as_restored = copier_env.target_rows(validity)
    assert [v for v in as_restored if v[0] == "paid_by"] == [
        ("paid_by", "payments", table, True) for table in ("accounts", "accounts_eu", "accounts_us")]
    copier_env.source("UPDATE accounts SET id = id WHERE id < 10; UPDATE payments SET id = id")

    for tables in ("TABLES=accounts,payments", "TABLES=payments", "TABLES=accounts"):
        result = run_copier(tables)
        assert result.code == 0, result.stderr
        assert copier_env.target_rows(validity) == as_restored, tables
    assert debris(copier_env) == []


def test_a_row_no_partition_takes_fails_the_table_with_advice(copier_env, run_copier):
    copier_env.source("CREATE TABLE readings (at date NOT NULL, v int);"
                      "INSERT INTO readings VALUES ('2024-05-01', 1)")
    copier_env.target("CREATE TABLE readings (at date NOT NULL, v int) PARTITION BY RANGE (at);"
                      "CREATE TABLE readings_2024 PARTITION OF readings"
                      " FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');"
                      "INSERT INTO readings VALUES ('2024-02-02', 7)")
    assert run_copier("TABLES=readings").code == 0
    copier_env.source("INSERT INTO readings VALUES ('2031-01-01', 2)")

    result = run_copier("TABLES=readings")

    assert result.code == 1
    assert ("a row of public.readings fits none of the reporting table's partitions (Partition key of the "
            "failing row contains (at) = (2031-01-01).): add a partition for it on the reporting side, "
            "or a default one (CREATE TABLE ... PARTITION OF public.readings DEFAULT)") in result.stderr
    assert copier_env.target_rows("SELECT at::text, v FROM readings") == [("2024-05-01", 1)]
    assert debris(copier_env) == []


def test_a_partition_the_source_adds_appears_on_the_reporting_side(copier_env, run_copier):
    schema = ("CREATE TABLE m (at date NOT NULL, v int) PARTITION BY RANGE (at);"
              "CREATE TABLE m_2023 PARTITION OF m FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');")
    copier_env.source(schema + "INSERT INTO m VALUES ('2023-03-03', 1)")
    copier_env.target(schema + "GRANT SELECT ON m_2023 TO PUBLIC")
    copier_env.source("CREATE TABLE m_2024 PARTITION OF m FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');"
                      "INSERT INTO m VALUES ('2024-04-04', 2)")

    result = run_copier("TABLES=m")

    assert result.code == 0, result.stderr
    bounds = ("SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_partition_tree('m') t"
              " JOIN pg_class c ON c.oid = t.relid ORDER BY 1")
    assert copier_env.target_rows(bounds) == copier_env.source_rows(bounds)
    assert copier_env.target_rows("SELECT tableoid::regclass::text, v FROM m ORDER BY v") == [
        ("m_2023", 1), ("m_2024", 2)]
    grants = "SELECT relacl IS NOT NULL FROM pg_class WHERE relname = 'm_2023'"
    assert copier_env.target_rows(grants) == [(True,)]


OTHERS = """
CREATE TABLE audit (customer_id int DEFAULT nextval('customers_seq'), what text);
CREATE RULE no_delete AS ON DELETE TO customers DO INSTEAD NOTHING;
CREATE RULE log_insert AS ON INSERT TO audit DO ALSO SELECT count(*) FROM customers;
ALTER TABLE audit ENABLE ROW LEVEL SECURITY;
CREATE POLICY known ON audit USING (customer_id IN (SELECT id FROM customers));
CREATE TABLE vip_customers (level int) INHERITS (customers);
INSERT INTO vip_customers VALUES (500, 'vip', 9, 3);
CREATE PUBLICATION reporting_pub FOR TABLE customers;
"""
OTHERS_FACTS = """
SELECT 'rule', pg_get_ruledef(r.oid) FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class
    WHERE r.rulename <> '_RETURN' AND c.relnamespace = 'public'::regnamespace
UNION ALL SELECT 'policy', policyname || ' ' || qual FROM pg_policies
UNION ALL SELECT 'default', pg_get_expr(adbin, adrelid) FROM pg_attrdef WHERE adrelid = 'audit'::regclass
UNION ALL SELECT 'child', inhrelid::regclass || ' of ' || inhparent::regclass FROM pg_inherits
UNION ALL SELECT 'publication', pubname || ' ' || tablename FROM pg_publication_tables
ORDER BY 1, 2
"""


def test_rules_policies_defaults_children_and_publications_survive(customers, run_copier):
    customers.source("CREATE SEQUENCE customers_seq; ALTER TABLE customers ALTER COLUMN id"
                     " SET DEFAULT nextval('customers_seq')")
    assert run_copier("TABLES=customers").code == 0
    customers.target(OTHERS)
    before = customers.target_rows(OTHERS_FACTS)
    assert len(before) == 7  # the publication has the inheritance child too
    customers.source("DELETE FROM customers WHERE id > 50")

    result = run_copier("TABLES=customers")

    assert result.code == 0, result.stderr
    assert customers.target_rows(OTHERS_FACTS) == before
    assert customers.target_rows("SELECT count(*) FROM customers") == [(51,)]  # the child's row too
    assert customers.target_rows("SELECT count(*) FROM ONLY customers") == [(50,)]


def test_a_column_of_the_tables_row_type_is_refused_before_anything_is_written(customers, run_copier):
    customers.target("CREATE TABLE snapshots (c customers); INSERT INTO snapshots SELECT c FROM customers c")
    customers.source("DELETE FROM customers; CREATE TYPE mood AS ENUM ('ok')")
    customers.source("ALTER TABLE customers ADD COLUMN m mood")

    result = run_copier("TABLES=customers")

    assert result.code == 1
    assert ("public.customers cannot be replaced: column c of table public.snapshots depends on it and "
            "would not survive the refresh; resolve it on the reporting side (give the column another "
            "type, e.g. ALTER TABLE public.snapshots ALTER COLUMN c TYPE jsonb USING to_jsonb(c)), "
            "or stop copying public.customers") in result.stderr
    assert customers.target_rows("SELECT count(*) FROM customers") == [(100,)]
    assert customers.target_rows("SELECT count(*) FROM pg_type WHERE typname = 'mood'") == [(0,)]
    assert debris(customers) == []


def test_a_dependent_made_during_the_run_is_refused_at_the_swap(customers, run_copier, at_moment):
    """Nothing was tied to the table when the run started (its check is done once, for every
    table): a column of its row type that an analyst adds meanwhile is still found at the swap,
    and the table keeps last night's rows."""
    checked = []

    def then_an_analyst_adds_a_column(units):
        checked.extend(u.source.untied for u in units)
        customers.target("CREATE TABLE snapshots (c customers)")

    at_moment("tables_checked", then_an_analyst_adds_a_column)
    customers.source("DELETE FROM customers WHERE id % 2 = 0")
    result = run_copier("TABLES=customers")

    assert result.code == 1
    assert "public.customers cannot be replaced: column c of table public.snapshots depends on it" \
        in result.stderr
    assert customers.target_rows("SELECT count(*) FROM customers") == [(100,)]
    assert checked == [True]
    assert debris(customers) == []


def test_a_partition_of_a_reporting_table_is_refused(copier_env, run_copier):
    copier_env.source("CREATE TABLE y2024 (at date, v int); INSERT INTO y2024 VALUES ('2024-01-01', 1)")
    copier_env.target("CREATE TABLE years (at date, v int) PARTITION BY RANGE (at);"
                      "CREATE TABLE y2024 PARTITION OF years"
                      " FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')")

    result = run_copier("TABLES=y2024")

    assert result.code == 1
    assert ("public.y2024 is a partition of public.years on the reporting side: copy public.years instead "
            "(its partitions come along), or ALTER TABLE public.years DETACH PARTITION public.y2024"
            ) in result.stderr
    assert copier_env.target_rows("SELECT count(*) FROM years") == [(0,)]


@pytest.mark.parametrize("reporting_side, named, remedy", [
    ("CREATE DOMAIN good_customer AS customers CHECK ((VALUE).score > 0)",
     "type public.good_customer", "DROP DOMAIN public.good_customer"),
    ("CREATE FUNCTION score_of(c customers) RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT c.score $$;"
     "CREATE TABLE picks (c customers CHECK (score_of(c) >= 0))",
     "column c of table public.picks", "give the column another type, e.g. ALTER TABLE public.picks"),
    ("CREATE FUNCTION best(c customers) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$ SELECT c.score > 5 $$;"
     "CREATE TABLE flags (id int, CONSTRAINT sane CHECK (best(ROW(id, 'x', 1)::customers)))",
     "constraint sane on table public.flags", "ALTER TABLE public.flags DROP CONSTRAINT sane"),
], ids=["domain over the row type", "column of the row type", "check calling a function remade"])
def test_what_cannot_be_kept_is_refused_with_its_remedy_and_nothing_changes(
        customers, run_copier, reporting_side, named, remedy):
    customers.target(reporting_side)
    customers.source("DELETE FROM customers WHERE id > 10")

    result = run_copier("TABLES=customers")

    assert result.code == 1
    (failed,) = result.of("table_failed")
    assert failed["error"].startswith(f"public.customers cannot be replaced: {named} depends on it")
    assert f"resolve it on the reporting side ({remedy}" in failed["error"]
    assert customers.target_rows("SELECT count(*) FROM customers") == [(100,)]
    assert debris(customers) == []


def test_a_dry_run_names_what_would_be_refused_tonight(customers, run_copier):
    customers.target("CREATE TABLE snapshots (c customers)")

    result = run_copier("TABLES=customers", "--dry-run")

    assert result.code == 1
    assert ("copier: error: public.customers: public.customers cannot be replaced: column c of table "
            "public.snapshots depends on it") in result.stderr
    assert result.of("table_failed") == []


PARTITION_EXTRAS = """
ALTER TABLE events_2023 ENABLE ROW LEVEL SECURITY;
ALTER TABLE events_2023 FORCE ROW LEVEL SECURITY;
CREATE POLICY only_kind_a ON events_2023 FOR SELECT TO PUBLIC USING (kind = 'a');
CREATE TABLE event_log (id int, at date);
CREATE RULE log_deletes AS ON DELETE TO events_other DO ALSO INSERT INTO event_log VALUES (OLD.id, OLD.at);
"""
PARTITION_SECURITY = """
SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,
       (SELECT array_agg(p.policyname || ': ' || p.qual) FROM pg_policies p WHERE p.tablename = c.relname),
       (SELECT array_agg(pg_get_ruledef(r.oid)) FROM pg_rewrite r WHERE r.ev_class = c.oid)
FROM pg_partition_tree('events') t JOIN pg_class c ON c.oid = t.relid ORDER BY 1
"""


def test_a_partitions_policies_and_rules_survive(copier_env, run_copier):
    copier_env.source("CREATE TABLE events (id int PRIMARY KEY, at date NOT NULL, kind text);"
                      "INSERT INTO events SELECT g, date '2022-06-01' + g, substr('abc', g % 3 + 1, 1)"
                      " FROM generate_series(1, 900) g")
    copier_env.target(PARTITIONED.format(n=copier_env.target_name) + PARTITION_EXTRAS)
    before = copier_env.target_rows(PARTITION_SECURITY)
    assert [r for r in before if r[1] or r[4]] == [
        ("events_2023", True, True, ["only_kind_a: (kind = 'a'::text)"], None),
        ("events_other", False, False, None,
         ["CREATE RULE log_deletes AS\n    ON DELETE TO public.events_other DO  INSERT INTO event_log"
          " (id, at)\n  VALUES (old.id, old.at);"])]

    for _ in range(2):
        result = run_copier("TABLES=events")
        assert result.code == 0, result.stderr

    assert copier_env.target_rows(PARTITION_SECURITY) == before
    assert copier_env.target_rows("SELECT count(*) FROM events") == [(900,)]
    assert debris(copier_env) == []


COLUMN_SETTINGS = ("SELECT a.attname, CASE WHEN a.attstattarget >= 0 THEN a.attstattarget END, a.attoptions,"
                   " a.attstorage, to_jsonb(a) ->> 'attcompression' FROM pg_attribute a"
                   " WHERE a.attrelid = 't'::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY 1")
TABLE_SETTINGS = ("SELECT c.relreplident, (SELECT i.indexrelid::regclass::text FROM pg_index i"
                  " WHERE i.indrelid = c.oid AND i.indisclustered)"
                  " FROM pg_class c WHERE c.oid = 't'::regclass")


def test_column_and_table_settings_of_the_reporting_side_survive(copier_env, run_copier):
    """An analyst's statistics targets, n_distinct, storage, compression, replica identity and
    CLUSTER index stay, night after night; tonight's rows are stored as the column says. A
    statistics target the source sets wins; a storage the column's new type refuses, and the
    CLUSTER of an index that no longer fits, are left out with a warning."""
    dbs = copier_env
    dbs.source("CREATE TABLE t (id int PRIMARY KEY, x int, s text, n text);"
               "INSERT INTO t SELECT g, g % 7, repeat('s', 3000), 'n' FROM generate_series(1, 50) g")
    assert run_copier("TABLES=t").code == 0
    dbs.target("ALTER TABLE t ALTER COLUMN x SET STATISTICS 1000, ALTER COLUMN x SET (n_distinct = 7),"
               " ALTER COLUMN s SET STORAGE EXTERNAL, ALTER COLUMN n SET STORAGE EXTERNAL,"
               " ALTER COLUMN id SET STATISTICS 300; CREATE INDEX t_n ON t (n text_pattern_ops);"
               " ALTER TABLE t CLUSTER ON t_n;"
               " ALTER TABLE t REPLICA IDENTITY FULL")
    if dbs.target_version >= 140000:
        dbs.target("ALTER TABLE t ALTER COLUMN s SET COMPRESSION pglz")
    kept = dbs.target_rows(COLUMN_SETTINGS), dbs.target_rows(TABLE_SETTINGS)

    for night in (1, 2):
        assert run_copier("TABLES=t").code == 0
        assert (dbs.target_rows(COLUMN_SETTINGS), dbs.target_rows(TABLE_SETTINGS)) == kept, f"night {night}"
    # EXTERNAL: tonight's values are stored out of line, uncompressed, as the column asks
    assert dbs.target_rows("SELECT min(pg_column_size(s)) FROM t") == [(3000,)]

    dbs.source("ALTER TABLE t ALTER COLUMN id SET STATISTICS 50, ALTER COLUMN n TYPE int USING 1")
    result = run_copier("TABLES=t")
    assert result.code == 0, result.stderr
    settings = {row[0]: row[1:] for row in dbs.target_rows(COLUMN_SETTINGS)}
    assert settings["id"][0] == 50 and settings["x"][:2] == (1000, ["n_distinct=7"])
    assert settings["n"][2] == "p"  # an int column has no other storage
    assert [w["message"] for w in result.of("warning")] == [
        "public.t: column n: SET STORAGE EXTERNAL left out, its type is now integer",
        "public.t: CLUSTER ON t_n left out: no index of that name on the new table"]  # it no longer fit
    assert [s["index"] for s in result.of("index_skipped")] == ["t_n"]
    assert dbs.target_rows(TABLE_SETTINGS) == [("f", None)]


@pytest.fixture
def tablespace(copier_env, tmp_path):
    """A tablespace of the reporting side's own (the server's OS user owns its folder); dropped
    with what is in it after the test, so no later backup of the cluster meets it."""
    folder = tmp_path / "fast_disk"
    folder.mkdir()
    tmp_path.chmod(0o755)
    if copier_env.cluster.os_user:
        user = pwd.getpwnam(copier_env.cluster.os_user)
        os.chown(folder, user.pw_uid, user.pw_gid)
    name = f"fast_{copier_env.target_name}"
    copier_env.target(f"CREATE TABLESPACE {name} LOCATION '{folder}'")
    yield name
    copier_env.target("DROP TABLE IF EXISTS t, e")
    copier_env.target(f"DROP TABLESPACE {name}")


PLACES = ("SELECT c.relname, s.spcname FROM pg_class c LEFT JOIN pg_tablespace s ON s.oid = c.reltablespace"
          " WHERE c.relnamespace = 'public'::regnamespace"
          "   AND c.relname IN ('t', 't_pkey', 't_x', 'e', 'e1', 'e2')"
          " ORDER BY 1")


def test_tables_partitions_and_indexes_stay_in_their_tablespaces(copier_env, run_copier, tablespace):
    """A DBA moved a reporting table, its key's index and an index of their own to another disk,
    and keeps one partition of a partitioned table on the default one: night after night,
    everything is where they put it."""
    dbs = copier_env
    dbs.source("CREATE TABLE t (id int PRIMARY KEY, x int);"
               "INSERT INTO t SELECT g, g FROM generate_series(1, 90) g;"
               "CREATE TABLE e (id int, at date NOT NULL);"
               "INSERT INTO e SELECT g, date '2023-06-01' + g FROM generate_series(1, 900) g")
    assert run_copier("TABLES=t").code == 0
    dbs.target(f"ALTER TABLE t SET TABLESPACE {tablespace}; ALTER INDEX t_pkey SET TABLESPACE {tablespace};"
               f"CREATE INDEX t_x ON t (x) TABLESPACE {tablespace};"
               f"CREATE TABLE e (id int, at date NOT NULL) PARTITION BY RANGE (at) TABLESPACE {tablespace};"
               "CREATE TABLE e1 PARTITION OF e FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');"
               "CREATE TABLE e2 PARTITION OF e DEFAULT TABLESPACE pg_default")
    places = dbs.target_rows(PLACES)
    assert places == [("e", tablespace), ("e1", tablespace), ("e2", None),
                      ("t", tablespace), ("t_pkey", tablespace), ("t_x", tablespace)]

    for night in (1, 2):
        result = run_copier("TABLES=t,e")
        assert result.code == 0, result.stderr
        assert dbs.target_rows(PLACES) == places, f"night {night}"
    assert dbs.target_rows("SELECT count(*) FROM e2") == [(687,)]  # from 2024 on


TABLE_NOTES = ("SELECT s.relname, s.relacl::text, obj_description(s.oid, 'pg_class') FROM pg_class s"
               " WHERE s.relkind = 'S' AND s.relnamespace = 'public'::regnamespace ORDER BY 1",
               "SELECT c.relname, obj_description(c.oid, 'pg_class') FROM pg_class c"
               " WHERE c.relkind = 'i' AND c.relnamespace = 'public'::regnamespace ORDER BY 1",
               "SELECT conname, obj_description(oid, 'pg_constraint') FROM pg_constraint"
               " WHERE conrelid = 't'::regclass ORDER BY 1",
               "SELECT reloptions FROM pg_class"
               " WHERE oid = (SELECT reltoastrelid FROM pg_class WHERE oid = 't'::regclass)")


def test_comments_on_keys_and_indexes_sequence_grants_and_toast_options_survive(copier_env, run_copier):
    """What a pg_dump of the reporting side would carry about a table beside its own grants:
    comments on its key, its checks and indexes, its sequences' grants and comments, its TOAST
    table's options."""
    dbs, n = copier_env, copier_env.target_name
    dbs.source("CREATE TABLE t (id serial PRIMARY KEY, code int GENERATED ALWAYS AS IDENTITY UNIQUE,"
               " x text CONSTRAINT x_set CHECK (x <> '')); CREATE INDEX t_x ON t (x);"
               "INSERT INTO t (x) SELECT 'x' FROM generate_series(1, 100) g")
    assert run_copier("TABLES=t").code == 0
    dbs.target(f"CREATE ROLE app_{n}; GRANT USAGE, SELECT ON SEQUENCE t_id_seq TO app_{n};"
               f"GRANT SELECT ON SEQUENCE t_code_seq TO app_{n}; COMMENT ON SEQUENCE t_id_seq IS 'ids';"
               "COMMENT ON INDEX t_pkey IS 'the key''s index'; COMMENT ON INDEX t_x IS 'by x';"
               "COMMENT ON CONSTRAINT t_pkey ON t IS 'the key';"
               "COMMENT ON CONSTRAINT x_set ON t IS 'no blanks';"
               "COMMENT ON CONSTRAINT t_code_key ON t IS 'codes';"
               "ALTER TABLE t SET (toast.autovacuum_enabled = false)")
    kept = [dbs.target_rows(query) for query in TABLE_NOTES]

    for night in (1, 2):
        result = run_copier("TABLES=t")
        assert result.code == 0, result.stderr
        assert [dbs.target_rows(query) for query in TABLE_NOTES] == kept, f"night {night}"
    assert kept[0][1] == ("t_id_seq", f"{{postgres=rwU/postgres,app_{n}=rU/postgres}}", "ids")


CHECKED = ("SELECT (SELECT array_agg(conname ORDER BY conname) FROM pg_constraint"
           "         WHERE conrelid = 't'::regclass AND contype IN ('p', 'c')),"
           " (SELECT array_agg(attname ORDER BY attname) FROM pg_attribute"
           "  WHERE attrelid = 't'::regclass AND attnum > 0 AND attnotnull),"
           " (SELECT array_agg(pg_get_expr(adbin, adrelid) ORDER BY adnum) FROM pg_attrdef"
           "  WHERE adrelid = 't'::regclass)")


def test_checks_not_nulls_and_defaults_of_the_reporting_side_survive_unless_tonight_breaks_them(
        copier_env, run_copier):
    """An analyst's CHECK, NOT NULL and DEFAULT on a reporting table stay night after night. One
    that tonight's rows break is left out with a warning, and the rows go live."""
    dbs = copier_env
    dbs.source("CREATE TABLE t (id int PRIMARY KEY, x int, y text);"
               "INSERT INTO t SELECT g, g, 'y' FROM generate_series(1, 100) g")
    assert run_copier("TABLES=t").code == 0
    dbs.target("ALTER TABLE t ADD CONSTRAINT x_positive CHECK (x > 0), ALTER COLUMN y SET NOT NULL,"
               " ALTER COLUMN y SET DEFAULT 'none'")
    kept = dbs.target_rows(CHECKED)
    assert kept == [(["t_pkey", "x_positive"], ["id", "y"], ["'none'::text"])]

    for night in (1, 2):
        result = run_copier("TABLES=t")
        assert result.code == 0, result.stderr
        assert dbs.target_rows(CHECKED) == kept, f"night {night}"
        assert result.of("warning") == []

    dbs.source("UPDATE t SET x = -1 WHERE id = 1")
    result = run_copier("TABLES=t")
    assert result.code == 0, result.stderr
    (warning,) = result.of("warning")
    assert warning["message"] == "public.t: the reporting side's CHECK x_positive left out"
    assert "violated by some row" in warning["error"]
    assert dbs.target_rows(CHECKED) == [(["t_pkey"], ["id", "y"], ["'none'::text"])]
    assert dbs.target_rows("SELECT x FROM t WHERE id = 1") == [(-1,)]


def test_a_replica_identity_using_an_index_stays_on_that_index(copier_env, run_copier):
    dbs = copier_env
    dbs.source("CREATE TABLE t (id int PRIMARY KEY, code int NOT NULL);"
               "INSERT INTO t SELECT g, g FROM generate_series(1, 50) g")
    assert run_copier("TABLES=t").code == 0
    dbs.target("CREATE UNIQUE INDEX t_code ON t (code); ALTER TABLE t REPLICA IDENTITY USING INDEX t_code")
    identity = ("SELECT c.relreplident, (SELECT i.indexrelid::regclass::text FROM pg_index i"
                " WHERE i.indrelid = c.oid AND i.indisreplident) FROM pg_class c WHERE c.oid = 't'::regclass")

    result = run_copier("TABLES=t")

    assert result.code == 0, result.stderr
    assert dbs.target_rows(identity) == [("i", "t_code")]
