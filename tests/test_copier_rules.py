"""Column and row rules (rules.py): personal data never reaches the reporting database. Against
real databases: the documented example, hashed join keys that still join, a where that copies
exactly its rows, a strict table refusing a new column while the others are copied, and no raw
value anywhere on the reporting side or in the run's output."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

import rules

SALT = "pepper-7f3a"
# The example docs/copier.md documents, run here as it is written there.
EXAMPLE = re.search(r"```toml\n(.*?)```", (Path(__file__).parent.parent / "docs" / "copier.md").read_text(),
                    re.S).group(1)
# Raw values of the masked and dropped columns: none may reach the reporting side or the output.
SECRETS = ("alice@example.com", "bob@example.com", "+49 30 1234567", "asked about a refund",
           "1985-06-17")


@pytest.fixture
def shop(copier_env, monkeypatch, tmp_path):
    copier_env.source("""
        CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, email text NOT NULL UNIQUE,
                                phone text, notes text, created_at timestamptz DEFAULT now(),
                                birthday date);
        CREATE INDEX customers_phone ON customers (phone);
        INSERT INTO customers VALUES
            (1, 'Alice', 'alice@example.com', '+49 30 1234567', 'asked about a refund', now(),
             '1985-06-17'),
            (2, 'Bob', 'bob@example.com', NULL, NULL, now(), '1990-01-01');
        INSERT INTO customers SELECT g, 'c' || g, 'c' || g || '@example.org', '+1 555 ' || g,
            'note ' || g, now(), date '1970-01-01' + g FROM generate_series(3, 500) g;
        CREATE TABLE orders (id int PRIMARY KEY, customer_email text, total numeric);
        INSERT INTO orders SELECT g, CASE g % 3 WHEN 0 THEN 'alice@example.com'
            WHEN 1 THEN 'bob@example.com' ELSE 'c' || (g % 498 + 3) || '@example.org' END, g
            FROM generate_series(1, 900) g;
        CREATE TABLE events (id int PRIMARY KEY, created_at timestamptz, kind text);
        INSERT INTO events SELECT g, now() - g * interval '1 day', 'e' FROM generate_series(1, 1000) g;
        ANALYZE""")
    path = tmp_path / "rules.toml"
    path.write_text(EXAMPLE)
    monkeypatch.setenv(rules.RULES_VARIABLE, str(path))
    monkeypatch.setenv(rules.SALT_VARIABLE, SALT)
    return copier_env


def everything_on_the_reporting_side(dbs) -> str:
    """Every row of every user table, the planner's statistics and every comment, as text."""
    tables = dbs.target_rows("SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) "
                             "FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')")
    text = [str(dbs.target_rows(f"SELECT * FROM {name}")) for (name,) in tables]
    text.append(str(dbs.target_rows("SELECT * FROM pg_stats WHERE schemaname = 'public'")))
    text.append(str(dbs.target_rows("SELECT description FROM pg_description")))
    return "\n".join(text)


def test_the_documented_example(shop, run_copier):
    result = run_copier("TABLES=customers,orders,events")
    assert result.code == 0, result.stderr
    columns = shop.target_rows("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                               "WHERE attrelid = 'customers'::regclass AND attnum > 0 ORDER BY attnum")
    assert columns == [("id", "integer"), ("name", "text"), ("email", "text"), ("phone", "text"),
                       ("created_at", "timestamp with time zone"), ("birthday", "date")]
    assert shop.target_rows("SELECT name, phone, birthday::text, length(email) FROM customers "
                            "WHERE id = 1") == [("Alice", None, "1985-01-01", 64)]
    # the hash is deterministic: what the source computes with the same salt
    assert shop.target_rows("SELECT email FROM customers WHERE id = 1") == shop.source_rows(
        "SELECT encode(sha256(convert_to(%s || 'alice@example.com', 'UTF8')), 'hex')", (SALT,))
    # the key on email is kept (on its hashes), the index on phone (emptied) is left out
    indexes = "SELECT indexname FROM pg_indexes WHERE tablename = 'customers' ORDER BY 1"
    assert shop.target_rows(indexes) == [("customers_email_key",), ("customers_pkey",)]
    # where: exactly the rows it selects
    assert shop.target_rows("SELECT count(*) FROM events") == shop.source_rows(
        "SELECT count(*) FROM events WHERE created_at > now() - interval '400 days'")
    everything = everything_on_the_reporting_side(shop)
    output = json.dumps(result.events) + result.stderr
    for secret in SECRETS:
        assert secret not in everything and secret not in output, secret
    assert SALT not in everything and SALT not in output


def test_hashed_join_keys_still_join(shop, run_copier):
    assert run_copier("TABLES=customers,orders").code == 0
    join = ("SELECT c.id, count(*) FROM orders o JOIN customers c ON c.email = o.customer_email"
            " GROUP BY 1 ORDER BY 1")
    assert shop.target_rows(join) == shop.source_rows(join)
    # the same salt every night: the next night's hashes are the same
    before = shop.target_rows("SELECT id, email FROM customers ORDER BY id")
    assert run_copier("TABLES=customers", "--copy-unchanged").code == 0
    assert shop.target_rows("SELECT id, email FROM customers ORDER BY id") == before


def test_a_new_column_on_a_strict_table_refuses_it_and_the_others_are_copied(shop, run_copier):
    assert run_copier("TABLES=customers,orders").code == 0
    shop.source("ALTER TABLE customers ADD COLUMN passport text DEFAULT 'P1234567';"
                "UPDATE customers SET name = 'Alicia' WHERE id = 1; UPDATE orders SET total = 0")

    result = run_copier("TABLES=customers,orders")

    assert result.code == 1
    (failed,) = result.of("table_failed")
    assert failed["table"] == "public.customers"
    assert ("column 'passport' of public.customers on the source is not named by its rules, which are "
            "strict") in failed["error"]
    assert 'passport = "drop"' in failed["error"] and '[tables."public.customers"] columns' in failed["error"]
    assert [e["table"] for e in result.of("table_copied")] == ["public.orders"]
    assert shop.target_rows("SELECT name FROM customers WHERE id = 1") == [("Alice",)]  # last night's
    assert "P1234567" not in everything_on_the_reporting_side(shop)
    dry = run_copier("TABLES=customers,orders", "--dry-run")
    assert dry.code == 1
    assert "copier: error: public.customers: column 'passport'" in dry.stderr
    assert "rules of public.customers: keep id, name, created_at; hash email; null phone; drop notes; " \
           "sql birthday; strict" in dry.stderr


@pytest.mark.parametrize(("document", "message"), [
    ('[tables."public.nope"]\ncolumns = { a = "keep" }',
     '[tables."public.nope"]: no such table on the source'),
    ('[tables."public.customers"]\ncolumns = { mail = "hash" }', "no column 'mail' in this table"),
    ('[tables."public.customers"]\ncolumns = { email = "mask" }', "unknown action 'mask'"),
    ('[tables."public.customers"]\ncolumns = { birthday = { sql = "date_trunc(year, birthday" } }',
     "unbalanced parentheses"),
    ('[tables."public.customers"]\ncolumns = { birthday = { sql = "birthday + true" } }',
     "column 'birthday': the source refuses it"),
    ('[tables."public.customers"]\ncolumns = { birthday = { sql = "1; DROP TABLE orders" } }',
     "one SQL expression, without ';' or comments"),
    ('[tables."public.events"]\nwhere = "kind LIKE \'%e%\' AND nope"',
     "where: the source refuses it: column \"nope\" does not exist"),
    ('[tables."public.events"]\nwhere = "kind"',
     "where: the source refuses it: argument of WHERE must be type boolean"),
    ('[tables."public.customers"]\nsorted = true', "unknown key 'sorted'"),
    ('tables = [1', "not TOML"),
], ids=["unknown-table", "unknown-column", "unknown-action", "unbalanced", "bad-expression",
        "two-statements", "unknown-column-in-where", "not-a-condition", "unknown-key", "not-toml"])
def test_a_rules_document_with_anything_wrong_is_one_line_and_changes_nothing(
        shop, run_copier, tmp_path, monkeypatch, document, message):
    assert run_copier("TABLES=orders", "--copy-unchanged").code == 0
    shop.source("UPDATE orders SET total = -1")
    (tmp_path / "bad.toml").write_text(document)
    monkeypatch.setenv(rules.RULES_VARIABLE, str(tmp_path / "bad.toml"))

    result = run_copier("TABLES=orders")

    assert result.code == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("copier: error: "), result.stderr
    assert message in result.stderr
    assert result.events == []
    assert shop.target_rows("SELECT count(*) FROM orders WHERE total = -1") == [(0,)]
    assert shop.source_rows("SELECT count(*) FROM orders") == [(900,)]  # nothing dropped either


def test_a_hash_without_its_salt_is_refused(shop, run_copier, monkeypatch):
    monkeypatch.delenv(rules.SALT_VARIABLE)
    result = run_copier("TABLES=orders")
    assert result.code == 1
    assert "a hash needs its salt, in COPIER_HASH_SALT" in result.stderr
    assert shop.target_rows("SELECT to_regclass('orders')") == [(None,)]


def test_an_error_on_the_source_about_a_masked_value_is_withheld(shop, run_copier, tmp_path, monkeypatch):
    (tmp_path / "cast.toml").write_text(
        '[tables."public.customers"]\ncolumns = { phone = { sql = "phone::int" } }')
    monkeypatch.setenv(rules.RULES_VARIABLE, str(tmp_path / "cast.toml"))
    result = run_copier("TABLES=customers")
    assert result.code == 1
    (failed,) = result.of("table_failed")
    assert "(invalid_text_representation, SQLSTATE 22P02); the message is withheld" in failed["error"]
    assert "+49 30" not in result.stderr + json.dumps(result.events)


def test_a_dropped_column_a_reporting_view_uses_fails_with_advice(shop, run_copier):
    shop.target("CREATE TABLE customers (id int PRIMARY KEY, name text, email text, phone text, notes text,"
                " created_at timestamptz, birthday date);"
                "CREATE VIEW followups AS SELECT id, notes FROM customers")
    result = run_copier("TABLES=customers")
    assert result.code == 1
    (failed,) = result.of("table_failed")
    assert "view public.followups does not fit the new shape of public.customers" in failed["error"]
    assert "DROP VIEW public.followups" in failed["error"]


@pytest.mark.parametrize("args", [("--jobs", "2", "--split-larger-than", "10kB"), ("--swap", "together")],
                         ids=["slices", "swap-together"])
def test_rules_hold_through_slices_swap_together_and_unchanged_nights(shop, run_copier, monkeypatch, args):
    monkeypatch.delenv("COPIER_COPY_UNCHANGED")
    tables = "TABLES=customers,orders,events"
    first = run_copier(tables, *args)
    assert first.code == 0, first.stderr
    if "--jobs" in args:
        assert first.of("slice_loaded")
    second = run_copier(tables, *args)
    assert second.code == 0, second.stderr
    assert {e["table"] for e in second.of("table_unchanged")} >= {"public.customers", "public.orders"}
    assert shop.target_rows("SELECT count(*), count(phone) FROM customers") == [(500, 0)]
    everything = everything_on_the_reporting_side(shop)
    for secret in SECRETS:
        assert secret not in everything
    # a rule changed: the table is copied again, with the new rule
    with open(os.environ[rules.RULES_VARIABLE], "w") as file:
        file.write(EXAMPLE.replace('phone = "null"', 'phone = "hash"'))
    third = run_copier(tables, *args)
    assert third.code == 0, third.stderr
    assert "public.customers" not in {e["table"] for e in third.of("table_unchanged")}
    assert shop.target_rows("SELECT count(phone) FROM customers") == [(499,)]


def test_a_ruled_table_is_proved_unchanged_unless_its_rules_compute(shop, run_copier, monkeypatch):
    """Kept, emptied and hashed columns are the rows as stored: proved unchanged without reading
    them (a new salt changes every hash: read again). A rule's SQL or where may read the clock or
    other tables: read and hashed every night."""
    monkeypatch.delenv("COPIER_COPY_UNCHANGED")
    tables = "TABLES=customers,orders,events"
    for _ in range(2):
        assert run_copier(tables).code == 0
    run = run_copier(tables)
    found = {e["table"]: e["found"] for e in run.of("table_unchanged")}
    assert found == {"public.orders": "before reading", "public.customers": "before loading",
                     "public.events": "before loading"}
    monkeypatch.setenv(rules.SALT_VARIABLE, SALT + "-new")
    run = run_copier(tables)
    assert run.code == 0, run.stderr
    assert {e["table"] for e in run.of("table_copied")} == {"public.orders", "public.customers"}
    assert shop.target_rows("SELECT customer_email FROM orders WHERE id = 3") == shop.source_rows(
        "SELECT encode(sha256(convert_to(%s || 'alice@example.com', 'UTF8')), 'hex')", (SALT + "-new",))


def test_rules_hold_through_a_night_split_over_machines(shop, tmp_path):
    """The load jobs read the source through the rules (in one shared snapshot), the publish
    swaps what they staged: the same tables as a run in one piece. An expression may hold a %."""
    from test_copier_slices import load_job, publish, staging_debris

    initial = """name = { sql = "CASE WHEN name LIKE 'A%' THEN 'A.' END" }"""
    (tmp_path / "split.toml").write_text(EXAMPLE.replace('name = "keep"', initial))
    env = {rules.RULES_VARIABLE: str(tmp_path / "split.toml"), rules.SALT_VARIABLE: SALT}
    jobs = [load_job(shop, "night-1", 1, 2, "customers,events", **env),
            load_job(shop, "night-1", 2, 2, "orders", **env)]
    assert [job.finish()[0] for job in jobs] == [0, 0]
    published = publish(shop, "night-1", "customers,orders,events", **env)  # as on AWS: the same settings
    assert published.returncode == 0, published.stderr
    assert shop.target_rows("SELECT name, phone FROM customers WHERE id IN (1, 2) ORDER BY id") == [
        ("A.", None), (None, None)]
    join = ("SELECT count(*) FROM orders o JOIN customers c ON c.email = o.customer_email")
    assert shop.target_rows(join) == shop.source_rows(join)
    assert shop.target_rows("SELECT count(*) FROM events") == shop.source_rows(
        "SELECT count(*) FROM events WHERE created_at > now() - interval '400 days'")
    everything = everything_on_the_reporting_side(shop)
    for secret in (*SECRETS, "Alice"):
        assert secret not in everything
    assert staging_debris(shop) == []
