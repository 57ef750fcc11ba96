"""The benches' CPU accounting (bench/cpu.py): a backend's work is counted also when it has only
just exited, before the postmaster reaped it (psql's backend, right after a restore)."""

import sys
from pathlib import Path

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import cpu  # noqa: E402  (bench/cpu.py)


def test_a_backend_that_just_exited_is_counted(dbs):
    before = cpu.cluster_cpu_seconds(dbs.cluster)
    conn = psycopg2.connect(dbs.source_dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid(), count(*) FROM generate_series(1, 3000000)")
        pid = cur.fetchone()[0]
    stat = cpu.process_stat(pid)
    its_own = (int(stat[11]) + int(stat[12])) / cpu.CLOCK_TICKS  # read while it lives
    conn.close()  # the backend exits: for a moment a zombie whose CPU time /proc no longer shows

    counted = cpu.cluster_cpu_seconds(dbs.cluster) - before  # everything else only adds
    assert its_own > 0
    assert counted >= its_own - 1 / cpu.CLOCK_TICKS
