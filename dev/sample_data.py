"""A realistic sample for the demo and the benchmark: a dozen tables of mixed types, skewed sizes.

    python -m dev.sample_data "host=127.0.0.1 port=5432 dbname=operational user=postgres" --mb 50

One table (``public.events``) holds about 40% of the bytes, the others range from a few
percent down to a handful of rows. Every row is generated server-side (generate_series, md5,
random() after setseed), so the same size always gives the same data and ~1 GB takes minutes,
not hours. Sizes are pg_total_relation_size (heap, TOAST and indexes): what the copier plans
its jobs with.

Between them the tables carry bigint/int keys, numeric, unicode text, jsonb, timestamptz,
date, boolean, uuid, bytea, an enum, an int[] array, an identity and a serial column, a table
without a primary key, a mixed-case name, a second schema and secondary indexes.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psycopg2
from psycopg2 import sql

SEED = 0.42
# Written on the largest table so a second run with the same size can skip the work.
MARKER_TABLE = "public.events"
# Two generators at a time: one per core on the reference machine.
GENERATOR_CONNECTIONS = 2

# Names with accents, other scripts, a combining sequence and an emoji: text must round-trip.
UNICODE_NAMES = (
    "(ARRAY['Zoë','Søren','Łukasz','Nguyễn Văn','张伟','Ольга','José Núñez','Αλέξανδρος',"
    "'محمد','Ærøskøbing','naïve café','🚀 Rocket'])"
)


@dataclass(frozen=True)
class SampleTable:
    """One table of the sample: how to create it, fill it and index it.

    ``share`` is its part of the requested bytes; tables with ``fixed_rows`` are tiny lookup
    tables whose size does not grow with the sample. ``bytes_per_row`` is measured (total
    relation size / rows at 100 MB) and turns a share of bytes into a row count.
    """

    name: str  # as the copier's TABLES accepts it
    ident: tuple[str, str]
    create: str
    fill: str  # {rows} is the row count; {customers} etc. the row counts of other tables
    finish: tuple[str, ...] = ()
    share: float = 0.0
    bytes_per_row: int = 100
    fixed_rows: int = 0

    def rows_for(self, total_bytes: int) -> int:
        if self.fixed_rows:
            return self.fixed_rows
        return max(1, int(total_bytes * self.share / self.bytes_per_row))


TABLES: tuple[SampleTable, ...] = (
    SampleTable(
        name="public.events", ident=("public", "events"), share=0.40, bytes_per_row=330,
        create="""
            CREATE TABLE public.events (
                id bigint GENERATED ALWAYS AS IDENTITY,
                occurred_at timestamptz NOT NULL,
                customer_id int NOT NULL,
                kind text NOT NULL,
                payload jsonb NOT NULL,
                note text)""",
        fill="""
            INSERT INTO public.events (occurred_at, customer_id, kind, payload, note)
            SELECT timestamptz '2024-01-01 00:00:00+00' + i * interval '7 seconds',
                   1 + (random() * ({customers} - 1))::int,
                   (ARRAY['view','click','cart','purchase','refund'])[1 + (random() * 4)::int],
                   jsonb_build_object('session', md5(i::text), 'score', round(random()::numeric, 4),
                                      'tags', jsonb_build_array(md5((i + 1)::text), (random() * 100)::int),
                                      'ok', random() < 0.9),
                   CASE WHEN random() < 0.2 THEN NULL
                        ELSE md5((i * 3)::text) || ' ' || md5((i * 7)::text) END
            FROM generate_series(1, {rows}) AS i""",
        finish=(
            "ALTER TABLE public.events ADD PRIMARY KEY (id)",
            "CREATE INDEX events_customer_idx ON public.events (customer_id)",
            "CREATE INDEX events_occurred_idx ON public.events (occurred_at)",
        ),
    ),
    SampleTable(
        name="public.orders", ident=("public", "orders"), share=0.14, bytes_per_row=128,
        create="""
            CREATE TABLE public.orders (
                id bigint NOT NULL,
                customer_id int NOT NULL,
                status public.order_status NOT NULL,
                total numeric(12,2) NOT NULL,
                ordered_at timestamptz NOT NULL,
                ship_date date,
                paid boolean NOT NULL DEFAULT false,
                CONSTRAINT orders_total_check CHECK (total >= 0))""",
        fill="""
            INSERT INTO public.orders
            SELECT i, 1 + (random() * ({customers} - 1))::int,
                   (enum_range(NULL::public.order_status))[1 + (random() * 4)::int],
                   round((random() * 2000)::numeric, 2),
                   timestamptz '2023-01-01 00:00:00+00' + i * interval '31 seconds',
                   CASE WHEN random() < 0.7 THEN date '2023-01-02' + (i / 3000) END,
                   random() < 0.8
            FROM generate_series(1, {rows}) AS i""",
        finish=(
            "ALTER TABLE public.orders ADD PRIMARY KEY (id)",
            "CREATE INDEX orders_customer_idx ON public.orders (customer_id)",
            "CREATE INDEX orders_ordered_at_idx ON public.orders (ordered_at)",
        ),
    ),
    SampleTable(
        name="public.order_lines", ident=("public", "order_lines"), share=0.12, bytes_per_row=101,
        create="""
            CREATE TABLE public.order_lines (
                order_id bigint NOT NULL,
                line_no smallint NOT NULL,
                product_id int NOT NULL,
                quantity int NOT NULL CHECK (quantity > 0),
                unit_price numeric(10,2) NOT NULL,
                discount numeric(4,3))""",
        fill="""
            INSERT INTO public.order_lines
            SELECT 1 + (i - 1) / 4, 1 + (i - 1) % 4, 1 + (random() * ({products} - 1))::int,
                   1 + (random() * 9)::int, round((random() * 300)::numeric, 2),
                   CASE WHEN random() < 0.3 THEN round((random() * 0.5)::numeric, 3) END
            FROM generate_series(1, {rows}) AS i""",
        finish=(
            "ALTER TABLE public.order_lines ADD PRIMARY KEY (order_id, line_no)",
            "CREATE INDEX order_lines_product_idx ON public.order_lines (product_id)",
        ),
    ),
    SampleTable(
        name="public.page_views", ident=("public", "page_views"), share=0.10, bytes_per_row=110,
        # A log table: no primary key, no index at all.
        create="""
            CREATE TABLE public.page_views (
                viewed_at timestamptz NOT NULL,
                path text NOT NULL,
                user_agent text,
                duration_ms int,
                client_ip inet)""",
        fill="""
            INSERT INTO public.page_views
            SELECT timestamptz '2024-06-01 00:00:00+00' + i * interval '2 seconds',
                   '/products/' || (random() * 5000)::int || '/' || left(md5(i::text), 8),
                   (ARRAY['Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0',
                          'Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) Safari/604.1',
                          'curl/8.5.0', NULL])[1 + (random() * 3)::int],
                   (random() * 30000)::int,
                   ('10.' || (random() * 255)::int || '.' || (random() * 255)::int || '.'
                    || (random() * 255)::int)::inet
            FROM generate_series(1, {rows}) AS i""",
    ),
    SampleTable(
        name="public.customers", ident=("public", "customers"), share=0.08, bytes_per_row=218,
        create="""
            CREATE TABLE public.customers (
                id serial,
                external_id uuid NOT NULL,
                name text NOT NULL,
                email text NOT NULL,
                country char(2) NOT NULL,
                signed_up date NOT NULL,
                active boolean NOT NULL,
                preferences jsonb)""",
        fill=f"""
            INSERT INTO public.customers (external_id, name, email, country, signed_up, active,
                                          preferences)
            SELECT md5('customer' || i)::uuid,
                   {UNICODE_NAMES}[1 + (random() * 11)::int] || ' #' || i,
                   'user' || i || '@example.' || (ARRAY['com','org','de','jp'])[1 + (random() * 3)::int],
                   (ARRAY['DE','FR','JP','US','BR','IN','VN','GR'])[1 + (random() * 7)::int],
                   date '2015-01-01' + (random() * 3650)::int,
                   random() < 0.85,
                   CASE WHEN random() < 0.5 THEN jsonb_build_object('newsletter', random() < 0.5,
                        'lang', (ARRAY['de','fr','ja','en'])[1 + (random() * 3)::int]) END
            FROM generate_series(1, {{rows}}) AS i""",
        finish=(
            "ALTER TABLE public.customers ADD PRIMARY KEY (id)",
            "CREATE UNIQUE INDEX customers_external_id_key ON public.customers (external_id)",
            "CREATE INDEX customers_email_idx ON public.customers (lower(email))",
        ),
    ),
    SampleTable(
        name="sales.invoices", ident=("sales", "invoices"), share=0.07, bytes_per_row=197,
        create="""
            CREATE TABLE sales.invoices (
                id bigint NOT NULL,
                invoice_no uuid NOT NULL,
                order_id bigint NOT NULL,
                amount numeric(14,4) NOT NULL,
                issued date NOT NULL,
                due date NOT NULL,
                signature bytea NOT NULL)""",
        fill="""
            INSERT INTO sales.invoices
            SELECT i, md5('invoice' || i)::uuid, 1 + (random() * ({orders} - 1))::int,
                   round((random() * 5000)::numeric, 4),
                   date '2023-01-01' + (i / 2000), date '2023-01-31' + (i / 2000),
                   decode(md5(i::text) || md5((-i)::text) || md5((i * 13)::text)
                          || md5((i * 17)::text), 'hex')
            FROM generate_series(1, {rows}) AS i""",
        finish=(
            "ALTER TABLE sales.invoices ADD PRIMARY KEY (id)",
            "CREATE INDEX invoices_order_idx ON sales.invoices (order_id)",
        ),
    ),
    SampleTable(
        name="public.products", ident=("public", "products"), share=0.04, bytes_per_row=324,
        create="""
            CREATE TABLE public.products (
                id int NOT NULL,
                sku text NOT NULL,
                name text NOT NULL,
                price numeric(10,2) NOT NULL,
                attributes jsonb NOT NULL,
                category_ids int[] NOT NULL,
                discontinued boolean NOT NULL DEFAULT false)""",
        fill=f"""
            INSERT INTO public.products
            SELECT i, 'SKU-' || lpad(i::text, 8, '0'),
                   {UNICODE_NAMES}[1 + (random() * 11)::int] || ' ' || md5(i::text),
                   round((random() * 500)::numeric, 2),
                   jsonb_build_object('color', (ARRAY['rot','grün','bleu','黒'])[1 + (random() * 3)::int],
                                      'weight_g', (random() * 5000)::int,
                                      'dims', jsonb_build_array(random(), random(), random())),
                   ARRAY[(random() * 100)::int, (random() * 100)::int, (random() * 100)::int],
                   random() < 0.05
            FROM generate_series(1, {{rows}}) AS i""",
        finish=(
            "ALTER TABLE public.products ADD PRIMARY KEY (id)",
            "CREATE UNIQUE INDEX products_sku_key ON public.products (sku)",
        ),
    ),
    SampleTable(
        name='"public"."Mixed Case"', ident=("public", "Mixed Case"), share=0.03, bytes_per_row=93,
        create="""
            CREATE TABLE public."Mixed Case" (
                "Id" int NOT NULL,
                "Display Name" text NOT NULL,
                "isActive" boolean,
                "Updated At" timestamptz NOT NULL)""",
        fill=f"""
            INSERT INTO public."Mixed Case"
            SELECT i, {UNICODE_NAMES}[1 + (random() * 11)::int] || ' ' || left(md5(i::text), 12),
                   CASE WHEN random() < 0.1 THEN NULL ELSE random() < 0.5 END,
                   timestamptz '2025-01-01 00:00:00+00' + i * interval '1 minute'
            FROM generate_series(1, {{rows}}) AS i""",
        finish=('ALTER TABLE public."Mixed Case" ADD PRIMARY KEY ("Id")',),
    ),
    SampleTable(
        name="sales.refunds", ident=("sales", "refunds"), share=0.02, bytes_per_row=98,
        create="""
            CREATE TABLE sales.refunds (
                id int GENERATED BY DEFAULT AS IDENTITY,
                invoice_id bigint NOT NULL,
                amount numeric(14,4) NOT NULL,
                reason text,
                refunded_at timestamptz NOT NULL)""",
        fill="""
            INSERT INTO sales.refunds (invoice_id, amount, reason, refunded_at)
            SELECT 1 + (random() * ({invoices} - 1))::int, round((random() * 200)::numeric, 4),
                   (ARRAY['damaged','late','wrong size','changed mind', NULL])[1 + (random() * 4)::int],
                   timestamptz '2023-02-01 00:00:00+00' + i * interval '5 minutes'
            FROM generate_series(1, {rows}) AS i""",
        finish=("ALTER TABLE sales.refunds ADD PRIMARY KEY (id)",),
    ),
    SampleTable(
        name="sales.regions", ident=("sales", "regions"), fixed_rows=8,
        create="""
            CREATE TABLE sales.regions (
                code text PRIMARY KEY,
                name text NOT NULL,
                manager text)""",
        fill="""
            INSERT INTO sales.regions
            SELECT (ARRAY['DE','FR','JP','US','BR','IN','VN','GR'])[i],
                   (ARRAY['Deutschland','France','日本','United States','Brasil','भारत','Việt Nam',
                          'Ελλάδα'])[i],
                   CASE WHEN i % 3 = 0 THEN NULL ELSE 'manager ' || i END
            FROM generate_series(1, {rows}) AS i""",
    ),
    SampleTable(
        name="public.currencies", ident=("public", "currencies"), fixed_rows=5,
        create="""
            CREATE TABLE public.currencies (
                code char(3) PRIMARY KEY,
                symbol text NOT NULL,
                rate_to_eur numeric(18,8) NOT NULL,
                updated date NOT NULL)""",
        fill="""
            INSERT INTO public.currencies
            SELECT (ARRAY['EUR','USD','JPY','BRL','INR'])[i], (ARRAY['€','$','¥','R$','₹'])[i],
                   (ARRAY[1, 0.92, 0.0061, 0.17, 0.011])[i], date '2025-11-01'
            FROM generate_series(1, {rows}) AS i""",
    ),
    SampleTable(
        name="public.settings", ident=("public", "settings"), fixed_rows=20,
        create="""
            CREATE TABLE public.settings (
                key text PRIMARY KEY,
                value jsonb,
                changed_at timestamptz NOT NULL DEFAULT now())""",
        fill="""
            INSERT INTO public.settings (key, value, changed_at)
            SELECT 'setting.' || i, CASE WHEN i % 4 = 0 THEN NULL ELSE jsonb_build_object('v', i) END,
                   timestamptz '2025-11-01 12:00:00+00'
            FROM generate_series(1, {rows}) AS i""",
    ),
)

SCHEMA_SETUP = (
    "CREATE SCHEMA IF NOT EXISTS sales",
    "CREATE TYPE public.order_status AS ENUM ('new', 'paid', 'shipped', 'delivered', 'cancelled')",
)


def table_names() -> list[str]:
    """The sample's tables as the copier's TABLES accepts them."""
    return [t.name for t in TABLES]


def row_counts(total_mb: float) -> dict[str, int]:
    total_bytes = int(total_mb * 1024 * 1024)
    return {t.name: t.rows_for(total_bytes) for t in TABLES}


def marker_text(total_mb: float) -> str:
    return f"dev/sample_data seed={SEED} mb={total_mb:g} tables={len(TABLES)}"


def connect(dsn: str):
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    return conn


def existing_marker(dsn: str) -> str | None:
    conn = connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT obj_description(to_regclass(%s), 'pg_class')", (MARKER_TABLE,))
            return cur.fetchone()[0]
    finally:
        conn.close()


def drop_sample(cur) -> None:
    for table in reversed(TABLES):
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier(*table.ident)))
    cur.execute("DROP TYPE IF EXISTS public.order_status CASCADE")


def create_tables(dsn: str) -> None:
    conn = connect(dsn)
    try:
        with conn.cursor() as cur:
            drop_sample(cur)
            for statement in SCHEMA_SETUP:
                cur.execute(statement)
            for table in TABLES:
                cur.execute(table.create)
    finally:
        conn.close()


def fill_table(dsn: str, table: SampleTable, counts: dict[str, int]) -> None:
    """Insert the rows, then build keys and indexes (faster than maintaining them row by row)."""
    conn = connect(dsn)
    try:
        with conn.cursor() as cur:
            # Each table seeds its own session, so its data does not depend on the fill order.
            cur.execute("SELECT setseed(%s)", (SEED,))
            cur.execute("SET maintenance_work_mem = '256MB'")
            cur.execute(table.fill.format(
                rows=counts[table.name],
                customers=counts["public.customers"],
                products=counts["public.products"],
                orders=counts["public.orders"],
                invoices=counts["sales.invoices"],
            ))
            for statement in table.finish:
                cur.execute(statement)
            cur.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(*table.ident)))
    finally:
        conn.close()


def fill_tables(dsn: str, counts: dict[str, int]) -> None:
    # Largest first, so the two connections finish at about the same time.
    ordered = sorted(TABLES, key=lambda t: -counts[t.name] * t.bytes_per_row)
    with ThreadPoolExecutor(GENERATOR_CONNECTIONS) as pool:
        for future in [pool.submit(fill_table, dsn, t, counts) for t in ordered]:
            future.result()


def mark_sample(dsn: str, total_mb: float) -> None:
    conn = connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("COMMENT ON TABLE public.events IS {}").format(
                sql.Literal(marker_text(total_mb))))
    finally:
        conn.close()


def create_sample(dsn: str, total_mb: float, force: bool = False) -> list[str]:
    """Create the sample's tables in the database at dsn, about total_mb MB in all.

    Skips the work when the database already holds the same sample (same seed and size),
    unless force. Returns the table names in the form the copier's TABLES accepts.
    """
    if force or existing_marker(dsn) != marker_text(total_mb):
        create_tables(dsn)
        fill_tables(dsn, row_counts(total_mb))
        mark_sample(dsn, total_mb)
    return table_names()


def sample_sizes(dsn: str) -> list[tuple[str, int, int]]:
    """(table, rows, total bytes) of each sample table, largest first."""
    conn = connect(dsn)
    try:
        with conn.cursor() as cur:
            sizes = []
            for table in TABLES:
                ident = sql.Identifier(*table.ident)
                cur.execute(sql.SQL("SELECT count(*), pg_total_relation_size({}) FROM {}").format(
                    sql.Literal(ident.as_string(conn)), ident))
                rows, size = cur.fetchone()
                sizes.append((table.name, rows, size))
    finally:
        conn.close()
    return sorted(sizes, key=lambda s: -s[2])


# ---------------------------------------------------------------------------------------------
# The reporting side: what an analyst builds on top of the copied tables.

REPORTING_ROLE = "analyst"
REPORTING_VIEWS = ("public.daily_revenue", "sales.unpaid_invoices", "public.customer_totals")

REPORTING_OBJECTS = (
    """CREATE OR REPLACE VIEW public.daily_revenue AS
       SELECT o.ordered_at::date AS day, count(*) AS orders, sum(o.total) AS revenue
       FROM public.orders o WHERE o.status <> 'cancelled' GROUP BY 1""",
    """CREATE OR REPLACE VIEW sales.unpaid_invoices AS
       SELECT i.id, i.invoice_no, i.amount, i.due, o.customer_id
       FROM sales.invoices i JOIN public.orders o ON o.id = i.order_id
       WHERE NOT o.paid""",
    "DROP MATERIALIZED VIEW IF EXISTS public.customer_totals",
    """CREATE MATERIALIZED VIEW public.customer_totals AS
       SELECT c.id, c.name, c.country, count(o.id) AS orders, coalesce(sum(o.total), 0) AS spent
       FROM public.customers c LEFT JOIN public.orders o ON o.customer_id = c.id
       GROUP BY c.id, c.name, c.country""",
    "COMMENT ON VIEW public.daily_revenue IS 'Revenue per day, cancelled orders excluded'",
    "COMMENT ON TABLE public.orders IS 'Copied nightly from the operational database'",
)


def ensure_role(cur, role: str) -> None:
    cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
    if cur.fetchone() is None:
        cur.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))


def create_reporting_views(dsn: str, role: str = REPORTING_ROLE) -> list[str]:
    """Create the analyst's views, materialized view, comments and grants in the reporting DB.

    The sample tables must already be there (after a first copy). Returns the view names.
    """
    conn = connect(dsn)
    try:
        with conn.cursor() as cur:
            ensure_role(cur, role)
            for statement in REPORTING_OBJECTS:
                cur.execute(statement)
            grantee = sql.Identifier(role)
            cur.execute(sql.SQL("GRANT USAGE ON SCHEMA sales TO {}").format(grantee))
            for relation in (*REPORTING_VIEWS, "public.orders", "public.customers"):
                schema, name = relation.split(".")
                cur.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(
                    sql.Identifier(schema, name), grantee))
    finally:
        conn.close()
    return list(REPORTING_VIEWS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dsn", help="libpq connection string of the database to fill")
    parser.add_argument("--mb", type=float, default=50, help="total size in MB (default 50)")
    parser.add_argument("--force", action="store_true", help="regenerate even if already there")
    args = parser.parse_args(argv)
    create_sample(args.dsn, args.mb, force=args.force)
    for name, rows, size in sample_sizes(args.dsn):
        print(f"{name:24} {rows:>10} rows {size / 1048576:9.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
