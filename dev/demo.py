"""The main job on a local default: a sample operational database copied into a reporting one.

    dev/install.sh && .venv/bin/python dev/demo.py   # start (or reuse) the cluster, copy, report
    .venv/bin/python dev/demo.py --mb 500              # a bigger sample
    .venv/bin/python dev/demo.py --stop                # stop the local cluster

A persistent PostgreSQL cluster lives in .local/pg (gitignored), on 127.0.0.1 with trust
authentication. The database ``operational`` is filled with dev/sample_data's sample; on the
first run the tables are copied once into ``reporting`` and an analyst's views, materialized
view and grants are created there. Every run then changes a little of the source, as a day
would, and does what the nightly job does: ``copier.py TABLES=<all sample tables> --jobs 5``:
the changed tables are copied and swapped, the others found unchanged and left alone; and it
shows that the views survived the swap.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Run as `.venv/bin/python dev/demo.py`: make the repository's packages importable.
sys.path.insert(0, str(REPO))

import psycopg2  # noqa: E402
from psycopg2 import sql  # noqa: E402

import timeline  # noqa: E402
from dev import sample_data  # noqa: E402
from dev.localpg import LocalCluster, LocalPgError, free_port  # noqa: E402

CLUSTER_DIR = REPO / ".local" / "pg"
# The port is remembered so the DSNs printed last time keep working after a restart.
PORT_FILE = REPO / ".local" / "pg.port"
SOURCE_DB = "operational"
TARGET_DB = "reporting"
JOBS = 5
NIGHT_PAGE = REPO / ".local" / "night.html"


class DemoError(Exception):
    pass


def say(text: str) -> None:
    print(f"demo: {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The cluster and its databases.

def running_port() -> int | None:
    """The port of a server already running on CLUSTER_DIR (line 4 of postmaster.pid)."""
    try:
        lines = (CLUSTER_DIR / "postmaster.pid").read_text().splitlines()
        return int(lines[3])
    except (OSError, IndexError, ValueError):
        return None


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def remembered_port() -> int:
    try:
        port = int(PORT_FILE.read_text())
    except (OSError, ValueError):
        return free_port()
    return port if port_is_free(port) else free_port()


def ensure_cluster() -> LocalCluster:
    """Reuse the running cluster, or start it (creating it on the very first run)."""
    port = running_port()
    cluster = LocalCluster.create(CLUSTER_DIR, port=port or remembered_port())
    if port is None or not cluster.is_running():
        say(f"starting PostgreSQL in {CLUSTER_DIR.relative_to(REPO)} on port {cluster.port}")
        cluster.start()
    PORT_FILE.write_text(str(cluster.port))
    return cluster


def stop_cluster() -> int:
    if not (CLUSTER_DIR / "PG_VERSION").exists():
        say("no local cluster to stop")
        return 0
    cluster = LocalCluster.create(CLUSTER_DIR, port=running_port() or remembered_port())
    if cluster.is_running():
        cluster.stop()
        say("local cluster stopped")
    else:
        say("local cluster is not running")
    return 0


def ensure_database(cluster: LocalCluster, name: str) -> None:
    conn = psycopg2.connect(cluster.dsn())
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                say(f"created database {name}")
    finally:
        conn.close()


def query(dsn: str, statement: str) -> list[tuple]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
            return cur.fetchall()
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# The copier, run as the nightly job runs it.

def copier_command(tables: list[str]) -> list[str]:
    return [sys.executable, str(REPO / "copier.py"), "TABLES=" + ",".join(tables), "--jobs", str(JOBS)]


def copier_env(cluster: LocalCluster) -> dict[str, str]:
    return {**os.environ, "SOURCE_DSN": cluster.dsn(SOURCE_DB), "TARGET_DSN": cluster.dsn(TARGET_DB)}


def run_copier(cluster: LocalCluster, tables: list[str], quiet: bool = False) -> None:
    """Run copier.py; its JSON lines and summary stream through unless quiet. The night's
    picture is drawn from its JSON lines (NIGHT_PAGE), whether it succeeded or not."""
    if quiet:
        result = subprocess.run(copier_command(tables), env=copier_env(cluster), cwd=REPO,
                                capture_output=True, text=True)
        if result.returncode != 0:
            sys.stderr.write(result.stdout + result.stderr)
            raise DemoError(f"the copier failed (exit {result.returncode})")
        return
    lines = []
    with subprocess.Popen(copier_command(tables), env=copier_env(cluster), cwd=REPO,
                          stdout=subprocess.PIPE, text=True) as process:
        for line in process.stdout:
            sys.stdout.write(line)
            # Stamped as they arrive (the copier flushes each line): the bars sit where they ran.
            lines.append({**json.loads(line), "@timestamp": time.time() * 1000})
    NIGHT_PAGE.write_text(timeline.render_html(lines, "nightly-copy: the demo's run"))
    say(f"the night's timeline: {NIGHT_PAGE.relative_to(REPO)} (open it in a browser)")
    if process.returncode != 0:
        raise DemoError(f"the copier failed (exit {process.returncode})")


def has_reporting_views(cluster: LocalCluster) -> bool:
    names = ", ".join(f"to_regclass('{name}')" for name in sample_data.REPORTING_VIEWS)
    rows = query(cluster.dsn(TARGET_DB), f"SELECT num_nulls({names}) = 0")
    return rows[0][0]


def first_run_setup(cluster: LocalCluster, tables: list[str]) -> None:
    """What an analyst did once: an initial copy, then views and grants on top of it."""
    say("first run (no reporting views yet): initial copy into reporting, then an analyst's views")
    run_copier(cluster, tables, quiet=True)
    views = sample_data.create_reporting_views(cluster.dsn(TARGET_DB))
    say(f"created {', '.join(views)} (SELECT granted to role {sample_data.REPORTING_ROLE})")


# What a day on the operational database changes before the night: a few orders are paid, a few
# events are noted; the other tables stay as they were, and the copier leaves them alone
# (table_unchanged).
DAYS_BUSINESS = {
    "orders": "UPDATE public.orders SET paid = true WHERE NOT paid AND id % 97 = 0",
    "events": "UPDATE public.events SET note = 'seen' WHERE id % 89 = 0",
}


def a_days_business(cluster: LocalCluster) -> None:
    with psycopg2.connect(cluster.dsn(SOURCE_DB)) as conn, conn.cursor() as cur:
        for statement in DAYS_BUSINESS.values():
            cur.execute(statement)
    conn.close()
    say(f"a day's business on {SOURCE_DB}: some {' and '.join(DAYS_BUSINESS)} changed; "
        f"the other tables are as they were")


def show_views_survived(cluster: LocalCluster) -> None:
    rows = query(cluster.dsn(TARGET_DB), f"""
        SELECT (SELECT count(*) FROM public.daily_revenue),
               (SELECT sum(revenue) FROM public.daily_revenue),
               (SELECT count(*) FROM public.customer_totals),
               has_table_privilege('{sample_data.REPORTING_ROLE}', 'public.daily_revenue', 'SELECT'),
               (SELECT count(*) FROM sales.unpaid_invoices)""")
    days, revenue, customers, granted, invoices = rows[0]
    say(f"reporting view public.daily_revenue after the swap: {days} days, revenue {revenue}; "
        f"SELECT still granted to {sample_data.REPORTING_ROLE}: {granted}")
    say(f"materialized view public.customer_totals: {customers} rows; "
        f"sales.unpaid_invoices: {invoices} rows")


def shown_python() -> str:
    """The interpreter running the demo, as the user would type it (.venv/bin/python)."""
    path = Path(sys.executable)
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def print_how_to_rerun(cluster: LocalCluster, tables: list[str]) -> None:
    python = shown_python()
    print(f"""
operational (source): {cluster.dsn(SOURCE_DB)}
reporting (target):   {cluster.dsn(TARGET_DB)}

Run the copier by hand:
  SOURCE_DSN='{cluster.dsn(SOURCE_DB)}' \\
  TARGET_DSN='{cluster.dsn(TARGET_DB)}' \\
  {python} copier.py TABLES='{",".join(tables)}' --jobs {JOBS}

Against real databases, set SOURCE_DSN/TARGET_DSN to their connection strings (or leave them
unset to read the settings from SSM Parameter Store). Stop the local cluster with:
  {python} dev/demo.py --stop""", file=sys.stderr)


def run_demo(mb: float) -> int:
    cluster = ensure_cluster()
    for name in (SOURCE_DB, TARGET_DB):
        ensure_database(cluster, name)
    started = time.monotonic()
    say(f"filling {SOURCE_DB} with the ~{mb:g} MB sample (skipped if already there)")
    tables = sample_data.create_sample(cluster.dsn(SOURCE_DB), mb)
    say(f"{len(tables)} tables ready in {time.monotonic() - started:.1f}s")
    if not has_reporting_views(cluster):
        first_run_setup(cluster, tables)
    a_days_business(cluster)
    say(f"running the copier: {len(tables)} tables, --jobs {JOBS}")
    run_copier(cluster, tables)
    show_views_survived(cluster)
    print_how_to_rerun(cluster, tables)
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run the copier on a local default: sample data, local PostgreSQL, --jobs 5.",
        epilog="exit status: 0 done; 1 an error, explained in one line on stderr (the local "
               "cluster, a database, the copier's own exit); 2 a usage error; 130 interrupted")
    parser.add_argument("--mb", type=float, default=50,
                        help="size of the sample in the operational database (default 50)")
    parser.add_argument("--stop", action="store_true", help="stop the local cluster and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.stop:
            return stop_cluster()
        return run_demo(args.mb)
    except (DemoError, LocalPgError, psycopg2.Error, subprocess.CalledProcessError,
            OSError) as exc:
        say(f"error: {' '.join(str(exc).split()) or type(exc).__name__}")
        return 1
    except KeyboardInterrupt:
        say("interrupted: run it again to continue (the cluster and its data stay)")
        return 130


if __name__ == "__main__":
    sys.exit(main())
