"""What the side benchmarks (ab.py, partitioned.py, many.py, skewed.py, unchanged.py) share: their
cluster's admin connection, fresh databases, and the timed refreshes: the copier (copying every
table, unchanged or not, unless told otherwise), `pg_dump | psql` and `pgcopydb clone`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psycopg2

REPO = Path(__file__).resolve().parent.parent


def admin(cluster, statement: str, db: str = "postgres") -> list[tuple]:
    conn = psycopg2.connect(cluster.dsn(db))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def bench_cluster(datadir: Path, restart_settings: dict[str, str] | None = None):
    """A side benchmark's cluster, started, with autovacuum off (no background work between
    the timed runs); settings that need a restart (max_locks_per_transaction) restart it."""
    from dev.localpg import LocalCluster

    cluster = LocalCluster.create(datadir)
    cluster.start()
    admin(cluster, "ALTER SYSTEM SET autovacuum = off")
    for name, value in (restart_settings or {}).items():
        admin(cluster, f"ALTER SYSTEM SET {name} = {value}")
    if restart_settings:
        cluster.stop()
        cluster.start()
    else:
        admin(cluster, "SELECT pg_reload_conf()")
    return cluster


def fresh_database(cluster, name: str, ddl: str | None = None) -> None:
    admin(cluster, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin(cluster, f"CREATE DATABASE {name}")
    if ddl:
        admin(cluster, ddl, name)


def ensure_database(cluster, name: str) -> None:
    if not admin(cluster, f"SELECT 1 FROM pg_database WHERE datname = '{name}'"):
        admin(cluster, f"CREATE DATABASE {name}")


# A bench that refreshes the same data round after round must see a refresh: without it the
# copier finds the tables unchanged and writes nothing (bench/unchanged.py measures that).
COPY_UNCHANGED = "--copy-unchanged"


def run_copier(cluster, source: str, target: str, tables: list[str], *options: str,
               script: Path = REPO / "copier.py", log: Path | None = None,
               copy_unchanged: bool = True) -> float:
    """Seconds one copier run takes, start-up included; its JSON lines go to log when given.

    Every table is copied (--copy-unchanged) unless copy_unchanged is false: for the copier that
    skips unchanged tables, or one older than the option. COPIER_COPY_UNCHANGED is not passed on:
    the bench says which it measures, not the environment it runs in."""
    env = {**os.environ, "SOURCE_DSN": cluster.dsn(source), "TARGET_DSN": cluster.dsn(target),
           "PYTHONPATH": str(REPO)}
    env.pop("COPIER_COPY_UNCHANGED", None)
    every_table = (COPY_UNCHANGED,) if copy_unchanged else ()
    with open(log or os.devnull, "w") as stdout:
        started = time.monotonic()
        subprocess.run([sys.executable, str(script), "TABLES=" + ",".join(tables), *every_table, *options],
                       env=env, check=True, stdout=stdout, stderr=subprocess.DEVNULL)
        return time.monotonic() - started


def run_dump_restore(cluster, source: str, target: str, *dump_options: str) -> float:
    """Seconds `pg_dump --clean --if-exists | psql` takes."""
    started = time.monotonic()
    dump = subprocess.Popen([cluster.bin("pg_dump"), "--clean", "--if-exists", *dump_options,
                             cluster.dsn(source)], stdout=subprocess.PIPE)
    subprocess.run([cluster.bin("psql"), "-q", "-v", "ON_ERROR_STOP=1", cluster.dsn(target)],
                   stdin=dump.stdout, check=True, stdout=subprocess.DEVNULL)
    dump.wait()
    return time.monotonic() - started


def run_pgcopydb(cluster, source: str, target: str, work_dir: Path, *options: str,
                 log: Path | None = None) -> float:
    """Seconds one `pgcopydb clone` takes; its last work directory is removed first, untimed.

    pgcopydb runs pg_dump and pg_restore from PATH: it gets the server's own binaries first.
    Its log (stderr) goes to log when given."""
    shutil.rmtree(work_dir, ignore_errors=True)
    env = {**os.environ, "PATH": f"{cluster.bindir}:{os.environ['PATH']}"}
    uri = "postgres://postgres@127.0.0.1:{}/{}".format
    with open(log or os.devnull, "w") as stderr:
        started = time.monotonic()
        subprocess.run(["pgcopydb", "clone", "--source", uri(cluster.port, source),
                        "--target", uri(cluster.port, target), "--dir", str(work_dir), *options],
                       env=env, check=True, stdout=subprocess.DEVNULL, stderr=stderr)
        return time.monotonic() - started
