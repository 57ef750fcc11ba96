"""Whatever fails, and wherever, the reporting table keeps its previous contents."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg2
import pytest

import copier
from tests.conftest import admin_execute

REPO = Path(__file__).resolve().parent.parent
BIG_ROWS = 200_000


def staging_debris(dbs):
    return dbs.target_rows("SELECT relname FROM pg_class WHERE relname LIKE '\\_copier\\_%'")


@pytest.fixture
def big(copier_env, run_copier):
    """A table large enough to be caught mid-stream, already copied once."""
    copier_env.source("CREATE TABLE big (id int PRIMARY KEY, payload text);"
                      "INSERT INTO big SELECT g, 'old' FROM generate_series(1, 10) g")
    assert run_copier("TABLES=big").code == 0
    copier_env.source(f"TRUNCATE big; INSERT INTO big SELECT g, repeat('n', 150)"
                      f" FROM generate_series(1, {BIG_ROWS}) g")
    return copier_env


def terminate_copy(dsn: str, dbname: str) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = %s AND query LIKE 'COPY%%' AND pid <> pg_backend_pid()",
                    (dbname,))
        assert cur.fetchone()[0] == 1
    conn.close()


def assert_old_contents(dbs):
    assert dbs.target_rows("SELECT count(*), min(payload) FROM big") == [(10, "old")]
    assert staging_debris(dbs) == []


@pytest.mark.parametrize("side", ["source", "target"])
def test_backend_terminated_mid_copy_leaves_the_old_table(big, run_copier, at_moment, side):
    calls = []

    def kill_once(table, bytes):
        if not calls:
            calls.append(bytes)
            terminate_copy(big.source_dsn if side == "source" else big.target_dsn,
                           big.source_name if side == "source" else big.target_name)

    at_moment("loading", kill_once)
    result = run_copier("TABLES=big", "--progress-seconds", "0", "--retries", "0")

    assert result.code == 1
    assert calls and calls[0] < BIG_ROWS * 150  # it really was mid-copy
    (failed,) = result.of("table_failed")
    assert failed["table"] == "public.big"
    assert failed["error"].startswith(f"lost the connection to the {side} database: ")
    assert "copier: error: public.big:" in result.stderr
    assert_old_contents(big)


def test_lost_connection_is_retried_and_the_copy_completes(big, run_copier, monkeypatch, at_moment):
    calls = []

    def kill_once(table, bytes):
        if not calls:
            calls.append(bytes)
            terminate_copy(big.source_dsn, big.source_name)

    at_moment("loading", kill_once)
    monkeypatch.setattr(copier, "backoff", lambda attempt, base: 0.01)
    result = run_copier("TABLES=big", "--progress-seconds", "0", "--retries", "2")

    assert result.code == 0, result.stderr
    (retry,) = result.of("table_retry")
    assert retry["attempt"] == 1
    assert result.of("table_copied")[0]["rows"] == BIG_ROWS
    assert big.target_rows("SELECT count(*), min(payload) FROM big") == [(BIG_ROWS, "n" * 150)]


def test_other_errors_are_not_retried(big, run_copier, monkeypatch):
    big.target("CREATE DOMAIN strict_int AS int CHECK (VALUE < 5)")
    big.source("CREATE DOMAIN strict_int AS int; CREATE TABLE limited (n strict_int);"
               "INSERT INTO limited VALUES (1), (10)")
    result = run_copier("TABLES=limited", "--retries", "3")

    assert result.code == 1
    assert result.of("table_retry") == []
    assert 'violates check constraint "strict_int_check"' in result.of("table_failed")[0]["error"]
    assert big.target_rows("SELECT count(*) FROM pg_class WHERE relname = 'limited'") == [(0,)]


def test_a_type_the_target_rejects_fails_that_table_only(big, run_copier):
    big.target("CREATE DOMAIN positive AS int CHECK (VALUE > 100)")
    big.source("CREATE DOMAIN positive AS int CHECK (VALUE > 0);"
               "CREATE TABLE scores (n positive); INSERT INTO scores VALUES (5);"
               "CREATE TABLE fine (n int); INSERT INTO fine VALUES (1)")
    result = run_copier("TABLES=scores,fine")

    assert result.code == 1
    assert [e["table"] for e in result.of("table_failed")] == ["public.scores"]
    assert [e["table"] for e in result.of("table_copied")] == ["public.fine"]
    assert "copier: error: public.scores: value for domain public.positive violates" in result.stderr


def test_fail_fast_stops_at_the_first_failure(big, run_copier):
    big.target("CREATE DOMAIN positive AS int CHECK (VALUE > 100)")
    big.source("CREATE DOMAIN positive AS int; CREATE TABLE scores (n positive, pad text);"
               "INSERT INTO scores SELECT 5, repeat('x', 100000);"
               "CREATE TABLE fine (n int); INSERT INTO fine VALUES (1)")
    result = run_copier("TABLES=scores,fine", "--fail-fast")

    assert result.code == 1
    assert [e["table"] for e in result.of("table_failed")] == ["public.scores"]
    assert result.of("table_copied") == []
    assert "public.fine: not copied: an earlier table failed (--fail-fast)" in result.stderr
    assert big.target_rows("SELECT count(*) FROM pg_class WHERE relname = 'fine'") == [(0,)]


def test_all_tables_come_from_one_snapshot(copier_env, run_copier, at_moment):
    """A row committed on the source while the run is going is in no table of that run."""
    copier_env.source("CREATE TABLE first (id int, pad text); CREATE TABLE second (id int);"
                      "INSERT INTO first SELECT g, repeat('p', 200) FROM generate_series(1, 50000) g;"
                      "INSERT INTO second VALUES (1)")

    def write_during_run(table, bytes):
        copier_env.source("INSERT INTO second VALUES (2)")

    at_moment("loading", write_during_run)
    result = run_copier("TABLES=first,second", "--progress-seconds", "0")

    assert result.code == 0, result.stderr
    assert [e["table"] for e in result.of("table_copied")] == ["public.first", "public.second"]
    assert copier_env.source_rows("SELECT count(*) > 1 FROM second WHERE id = 2") == [(True,)]
    assert copier_env.target_rows("SELECT id FROM second") == [(1,)]


def test_parallel_jobs_copy_everything(copier_env, run_copier):
    for n in range(6):
        rows = 1000 * (n + 1)
        copier_env.source(f"CREATE TABLE t{n} (id int PRIMARY KEY, v text);"
                          f"INSERT INTO t{n} SELECT g, md5(g::text) FROM generate_series(1, {rows}) g")
    result = run_copier("TABLES=" + ",".join(f"t{n}" for n in range(6)), "--jobs", "3")

    assert result.code == 0, result.stderr
    copied = result.of("table_copied")
    assert sorted(e["table"] for e in copied) == [f"public.t{n}" for n in range(6)]
    assert {e["job"] for e in copied} <= {1, 2, 3}  # whichever job was free took the next table
    for n in range(6):
        fingerprint = f"SELECT count(*), md5(string_agg(v, ',' ORDER BY id)) FROM t{n}"
        assert copier_env.target_rows(fingerprint) == copier_env.source_rows(fingerprint)


# What a DBA sets for interactive users; pg_dump switches these off for its own sessions, too.
SHORT_TIMEOUTS = ((0, "statement_timeout = '50ms'"), (0, "idle_in_transaction_session_timeout = '100ms'"),
                  (140000, "idle_session_timeout = '100ms'"), (170000, "transaction_timeout = '200ms'"))


def test_timeouts_meant_for_interactive_users_do_not_cut_the_copy_off(copier_env, run_copier):
    copier_env.source("CREATE TABLE wide (id int PRIMARY KEY, v text);"
                      "INSERT INTO wide SELECT g, md5(g::text) FROM generate_series(1, 300000) g;"
                      "CREATE TABLE small (id int PRIMARY KEY); INSERT INTO small VALUES (1), (2)")
    for name in (copier_env.source_name, copier_env.target_name):
        for since, timeout in SHORT_TIMEOUTS:
            if copier_env.source_version >= since:  # each setting the server has
                copier_env.source(f"ALTER DATABASE {name} SET {timeout}")

    result = run_copier("TABLES=wide,small", "--jobs", "2")

    for name in (copier_env.source_name, copier_env.target_name):
        copier_env.source(f"ALTER DATABASE {name} RESET ALL")
    assert result.code == 0, result.stderr
    assert copier_env.target_rows("SELECT count(*) FROM wide") == [(300000,)]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_copy_rolls_back(big, signum):
    env = {**os.environ, "SOURCE_DSN": big.source_dsn, "TARGET_DSN": big.target_dsn}
    process = subprocess.Popen(
        [sys.executable, str(REPO / "copier.py"), "TABLES=big", "--progress-seconds", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if '"table_progress"' in line:
            break
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)

    assert process.returncode == 1
    assert "interrupted" in err
    assert '"table_copied"' not in out
    deadline = time.monotonic() + 10  # the server notices the closed connection and rolls back
    while big.target_rows("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                          " AND pid <> pg_backend_pid()") != [(0,)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert_old_contents(big)


@pytest.fixture
def tiny_tablespace(pg_cluster):
    """A 3 MB filesystem for the target's new tables: the disk fills up mid-copy."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny filesystem needs root (CI and the dev machines run as root)")
    mountpoint = Path(tempfile.mkdtemp(prefix="copier-tiny-"))
    mountpoint.chmod(0o755)  # the server's OS user must reach the tablespace
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3M,mode=755", "tmpfs", str(mountpoint)],
                   check=True)
    try:
        location = mountpoint / "ts"
        location.mkdir()
        if pg_cluster.os_user:
            shutil.chown(location, pg_cluster.os_user, pg_cluster.os_user)
        admin_execute(pg_cluster, f"CREATE TABLESPACE tiny LOCATION '{location}'")
        yield "tiny"
    finally:
        admin_execute(pg_cluster, "DROP TABLESPACE IF EXISTS tiny")
        subprocess.run(["umount", str(mountpoint)], check=True)
        mountpoint.rmdir()


def test_disk_full_on_the_target_leaves_the_old_table(big, tiny_tablespace, run_copier):
    big.target(f"ALTER DATABASE {big.target_name} SET default_tablespace = {tiny_tablespace}")
    result = run_copier("TABLES=big")

    assert result.code == 1
    (failed,) = result.of("table_failed")
    # SQLSTATE 53100 in those words: which tablespace, how much the table needed
    assert failed["error"].startswith("the reporting database's disk is full (tablespace tiny): "
                                      "staging public.big needed about ")
    assert "could not extend file" not in result.stderr
    assert_old_contents(big)
    big.target(f"ALTER DATABASE {big.target_name} RESET default_tablespace")


def test_a_source_table_whose_row_security_hides_rows_fails_instead_of_copying_some(
        copier_env, run_copier, monkeypatch):
    reader = f"reader_{copier_env.source_name}"
    copier_env.source(f"CREATE ROLE {reader} LOGIN;"
                      "CREATE TABLE accounts (id int PRIMARY KEY, tenant text);"
                      "INSERT INTO accounts SELECT g, 't' || g % 3 FROM generate_series(1, 30) g;"
                      f"GRANT SELECT ON accounts TO {reader};"
                      "ALTER TABLE accounts ENABLE ROW LEVEL SECURITY;"
                      f"CREATE POLICY one_tenant ON accounts TO {reader} USING (tenant = 't1')")
    monkeypatch.setenv("SOURCE_DSN", copier_env.cluster.dsn(copier_env.source_name, user=reader))

    result = run_copier("TABLES=accounts")

    assert result.code == 1
    assert "row-level security" in result.stderr
    assert "BYPASSRLS" in result.stderr  # what to do about it
    assert copier_env.target_rows("SELECT count(*) FROM pg_class WHERE relname = 'accounts'") == [(0,)]

    copier_env.source(f"ALTER ROLE {reader} BYPASSRLS")
    result = run_copier("TABLES=accounts")
    assert result.code == 0, result.stderr
    assert copier_env.target_rows("SELECT count(*) FROM accounts") == [(30,)]


def test_a_table_another_run_is_copying_is_refused_and_left_alone(copier_env, run_copier):
    copier_env.source("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
    other = psycopg2.connect(copier_env.target_dsn)  # another run's lock on public.t
    try:
        with other.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(hashtext('nightly-copier'), hashtext('public.t'))")
        result = run_copier("TABLES=t")
    finally:
        other.close()
    assert result.code == 1
    assert result.stderr.strip() == "copier: error: another copier run is copying public.t right now"
    assert copier_env.target_rows("SELECT to_regclass('public.t')") == [(None,)]


class SlowToHangUp:
    """A TCP proxy to a server that passes a client's Terminate message on 2 s late, as a busy
    server is late to end a closed session: until then the session and its locks live on."""

    TERMINATE = b"X\x00\x00\x00\x04"

    def __init__(self, port: int):
        self.port = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self.accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"host=127.0.0.1 port={self.listener.getsockname()[1]}"

    def accept(self) -> None:
        with contextlib.suppress(OSError):  # closed: the test is over
            while True:
                client, _ = self.listener.accept()
                server = socket.create_connection(("127.0.0.1", self.port))
                threading.Thread(target=self.pump, args=(client, server, True), daemon=True).start()
                threading.Thread(target=self.pump, args=(server, client, False), daemon=True).start()

    def pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if from_client and data.endswith(self.TERMINATE):
                    time.sleep(2)
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def test_a_run_right_after_one_whose_session_ends_late_copies(copier_env, run_copier, monkeypatch):
    """The run lets go of its tables before it hangs up: the next one (a publish after the
    load jobs) does not find them taken by a session still on its way out."""
    copier_env.source("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
    proxy = SlowToHangUp(copier_env.cluster.port)
    monkeypatch.setenv("TARGET_DSN", copier_env.target_dsn.replace(
        f"host=127.0.0.1 port={copier_env.cluster.port}", proxy.address))
    try:
        assert run_copier("TABLES=t").code == 0
    finally:
        proxy.listener.close()

    copier_env.source("INSERT INTO t VALUES (2)")
    monkeypatch.setenv("TARGET_DSN", copier_env.target_dsn)
    result = run_copier("TABLES=t")
    assert result.code == 0, result.stderr
    assert copier_env.target_rows("SELECT id FROM t ORDER BY id") == [(1,), (2,)]

