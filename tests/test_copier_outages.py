"""Real outages: a database server stopped and started with pg_ctl in the middle of a run.

Source and target live in separate clusters here, so that stopping one leaves the other up
(and the session's cluster, which every other test uses, is never stopped). The long outages
(30 s and 90 s of the source, 30 s of the target during a load and during a swap) run at the
same time, each against its own cluster, and start with the test session (the `long_outages`
fixture in conftest.py runs `long_outages_running` first thing; the tests that read their
results run last): their 90 s of waiting overlap the rest of the suite.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest

import copier
from dev.localpg import LocalCluster
from tests.conftest import admin_execute
from tests.holder_hook import end_snapshot_holder

REPO = Path(__file__).resolve().parent.parent
TABLES = [f"t{n:02}" for n in range(1, 13)]
FINGERPRINT = "SELECT count(*), md5(string_agg(v, ',' ORDER BY id)) FROM {}"


def query(dsn: str, statement: str):
    conn = connected(dsn)
    try:
        return execute(conn, statement)
    finally:
        conn.close()


def connected(dsn: str):
    """A connection opened in the test's own thread: a background thread must not open one
    (conftest.BackgroundDatabases says why), it may use one."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    return conn


def execute(conn, statement: str):
    with conn.cursor() as cur:
        cur.execute(statement)
        return cur.fetchall() if cur.description else None


def fill_source(dsn: str, tables=TABLES) -> None:
    """A dozen tables of 30k-85k rows: small, yet a run of them lasts a few seconds."""
    for n, name in enumerate(tables):
        query(dsn, f"CREATE TABLE {name} (id int PRIMARY KEY, v text);"
                   f"INSERT INTO {name} SELECT g, md5(g::text) || repeat('x', 60)"
                   f" FROM generate_series(1, {30000 + 5000 * n}) g")


def assert_equal_to_source(source_dsn: str, target_dsn: str, tables=TABLES) -> None:
    for name in tables:
        fingerprint = FINGERPRINT.format(name)
        assert query(target_dsn, fingerprint) == query(source_dsn, fingerprint), name
    assert staging_debris(target_dsn) == []


def staging_debris(dsn: str) -> list:
    return query(dsn, "SELECT relname FROM pg_class WHERE relname LIKE '\\_copier\\_%'")


@dataclass
class Outcome:
    code: int
    events: list[dict]
    stderr: str

    def of(self, event: str) -> list[dict]:
        return [e for e in self.events if e["event"] == event]


def run_copier_process(argv: list[str], source_dsn: str, target_dsn: str, extra_env=None,
                       on_event=None) -> Outcome:
    """copier.py (or the outage hook) as its own process; on_event sees each JSON line."""
    env = {**os.environ, "SOURCE_DSN": source_dsn, "TARGET_DSN": target_dsn,
           "PYTHONPATH": str(REPO), **(extra_env or {})}
    env.pop("TABLES", None)
    process = subprocess.Popen([sys.executable, *argv], env=env, cwd=REPO, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stderr: list[str] = []
    drain = threading.Thread(target=lambda: stderr.extend(process.stderr), daemon=True)
    drain.start()
    events = []
    for line in process.stdout:
        if line.startswith("{"):
            events.append(json.loads(line))
            if on_event:
                on_event(events[-1])
    code = process.wait()
    drain.join()
    return Outcome(code, events, "".join(stderr))


def outage(cluster: LocalCluster, seconds: float) -> threading.Thread:
    """Stop the cluster now (its connections die with it) and start it again seconds later."""
    cluster.stop()
    restart = threading.Timer(seconds, cluster.start)
    restart.start()
    return restart


def cluster_spec(cluster: LocalCluster) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cluster).items()}


@dataclass
class Scenario:
    source_dsn: str
    target_dsn: str
    outcome: Future


def in_background(work) -> Future:
    future: Future = Future()

    def target():
        try:
            future.set_result(work())
        except BaseException as exc:  # noqa: BLE001 - the test that reads it raises it
            future.set_exception(exc)

    threading.Thread(target=target, daemon=True).start()
    return future


def source_outage_scenario(steady: LocalCluster, spare: LocalCluster, seconds: int,
                           n: int) -> Scenario:
    """A dozen tables, --jobs 2; the source goes away once the first table is copied."""
    admin_execute(spare, f"CREATE DATABASE outage_src_{n}")
    admin_execute(steady, f"CREATE DATABASE outage_tgt_{n}")
    source, target = spare.dsn(f"outage_src_{n}"), steady.dsn(f"outage_tgt_{n}")
    fill_source(source)
    restarts = []

    def on_event(event):
        if event["event"] == "table_copied" and not restarts:
            restarts.append(outage(spare, seconds))

    def work():
        result = run_copier_process(["copier.py", "TABLES=" + ",".join(TABLES), "--jobs", "2"],
                                    source, target, on_event=on_event)
        for restart in restarts:
            restart.join()
        return result

    return Scenario(source, target, in_background(work))


def target_outage_scenario(steady: LocalCluster, spare: LocalCluster, at: str, n: int) -> Scenario:
    """Two tables already in the reporting database (one with a view on it); the target goes
    away for 30 s during the next run's first load, or its first swap."""
    admin_execute(steady, f"CREATE DATABASE outage_src_{n}")
    admin_execute(spare, f"CREATE DATABASE outage_tgt_{n}")
    source, target = steady.dsn(f"outage_src_{n}"), spare.dsn(f"outage_tgt_{n}")
    tables = TABLES[:2]
    fill_source(source, tables)
    source_conn, target_conn = connected(source), connected(target)

    def work():
        first = run_copier_process(["copier.py", "TABLES=" + ",".join(tables)], source, target)
        assert first.code == 0, first.stderr
        execute(target_conn, "CREATE VIEW t01_count AS SELECT count(*) AS n FROM t01")
        execute(source_conn, "UPDATE t01 SET v = 'new ' || v WHERE id % 3 = 0;"
                             " DELETE FROM t02 WHERE id < 100")
        source_conn.close()
        target_conn.close()
        spec = {"at": at, "seconds": 30, "cluster": cluster_spec(spare)}
        return run_copier_process(
            ["tests/outage_hook.py", "TABLES=" + ",".join(tables), "--progress-seconds", "0"],
            source, target, extra_env={"OUTAGE": json.dumps(spec)})

    return Scenario(source, target, in_background(work))


SCHEDULED = {"COPIER_RUN": "2026-11-29", "COPIER_JOB": "job-1"}  # as the state machine starts it


def start_outage_scenario(steady: LocalCluster, spare: LocalCluster, n: int) -> Scenario:
    """The target fails over just as the schedule starts the run: down for 8 s."""
    admin_execute(steady, f"CREATE DATABASE outage_src_{n}")
    admin_execute(spare, f"CREATE DATABASE outage_tgt_{n}")
    source, target = steady.dsn(f"outage_src_{n}"), spare.dsn(f"outage_tgt_{n}")
    fill_source(source, TABLES[:2])

    def work():
        restart = outage(spare, 8)
        result = run_copier_process(["copier.py", "TABLES=t01,t02"], source, target, SCHEDULED)
        restart.join()
        return result

    return Scenario(source, target, in_background(work))


def spare_cluster(tmp_path_factory, name: str) -> LocalCluster:
    cluster = LocalCluster.create(tmp_path_factory.mktemp(name) / "data")
    cluster.start()
    return cluster


def long_outages_running(tmp_path_factory):
    """The long outages (and the one at the start of a run), started together in the
    background; yields their Scenarios.

    The body of the session fixture `long_outages` (conftest.py), which starts them before the
    first test. The side of each run that stays up lives in a cluster of its own too
    ("steady"), not in the session's: the runs go on while other tests use that one. The
    longest starts first, each with its spare cluster made just before it: the 90 s outage,
    the end of the whole suite, waits for nobody else's clusters."""
    steady = spare_cluster(tmp_path_factory, "steady")
    starts = {
        "source 90 s": lambda spare: source_outage_scenario(steady, spare, 90, 2),
        "source 30 s": lambda spare: source_outage_scenario(steady, spare, 30, 1),
        "target during a load": lambda spare: target_outage_scenario(steady, spare, "load", 3),
        "target during a swap": lambda spare: target_outage_scenario(steady, spare, "swap", 4),
        "target at the start": lambda spare: start_outage_scenario(steady, spare, 5),
    }
    clusters, scenarios = [steady], {}
    try:
        for n, (name, start) in enumerate(starts.items()):
            clusters.append(spare_cluster(tmp_path_factory, f"spare{n}"))
            scenarios[name] = start(clusters[-1])
        yield scenarios
    finally:
        for scenario in scenarios.values():
            scenario.outcome.exception()  # each run (and its restart of a cluster) is over
        for cluster in clusters:
            cluster.stop()


@pytest.mark.parametrize("seconds", [30, 90])
def test_a_source_outage_mid_run_is_waited_out_and_the_snapshot_renewed(long_outages, seconds):
    scenario = long_outages[f"source {seconds} s"]
    result = scenario.outcome.result()

    assert result.code == 0, result.stderr
    assert sorted(e["table"] for e in result.of("table_copied")) == [f"public.{t}" for t in TABLES]
    assert_equal_to_source(scenario.source_dsn, scenario.target_dsn)
    waiting = result.of("waiting")
    assert waiting and {e["database"] for e in waiting} == {"source"}
    assert {e["budget"] for e in waiting} == {600}
    assert "copier: waiting for the source database, unreachable for" in result.stderr
    # The server restarted: the run's snapshot died with it, and a new one was taken.
    (renewed,) = result.of("snapshot_renewed")
    assert renewed["snapshot"] == 2
    copied = {e["table"]: e["snapshot"] for e in result.of("table_copied")}
    assert 2 in copied.values()
    # The summary lists them in the run's order, largest (here: last-named) first.
    first = sorted((t for t, n in copied.items() if n == 1), reverse=True)
    later = sorted((t for t, n in copied.items() if n == 2), reverse=True)
    assert f"snapshot 1: {', '.join(first)}; snapshot 2: {', '.join(later)}" in result.stderr
    (finished,) = result.of("run_finished")
    assert finished["source_waited_seconds"] > 0
    assert finished["target_waited_seconds"] == 0
    assert finished["snapshots"] == 2
    assert f"waited {finished['source_waited_seconds']:.1f}s for the source database (1 outage" \
        in result.stderr


@pytest.mark.parametrize("at", ["load", "swap"])
def test_a_target_outage_mid_table_rolls_back_waits_and_redoes_it(long_outages, at):
    scenario = long_outages[f"target during a {at}"]
    result = scenario.outcome.result()

    assert result.code == 0, result.stderr
    assert [e["at"] for e in result.of("test_outage")] == [at]
    (retry,) = result.of("table_retry")
    assert retry["table"] in ("public.t01", "public.t02")  # the first one, mid-load or mid-swap
    assert retry["error"].startswith("lost the connection to the target database")
    assert result.of("waiting") and {e["database"] for e in result.of("waiting")} == {"target"}
    assert_equal_to_source(scenario.source_dsn, scenario.target_dsn, TABLES[:2])
    assert query(scenario.target_dsn, "SELECT n FROM t01_count") == query(
        scenario.source_dsn, "SELECT count(*) FROM t01")
    assert result.of("run_finished")[0]["target_waited_seconds"] > 0
    assert result.of("snapshot_renewed") == []  # the source never went away


@pytest.fixture
def separate_source(copier_env, tmp_path_factory, monkeypatch):
    """The test's source database in a cluster of its own, which the test may stop."""
    cluster = spare_cluster(tmp_path_factory, "own-source")
    admin_execute(cluster, "CREATE DATABASE source")
    monkeypatch.setenv("SOURCE_DSN", cluster.dsn("source"))
    try:
        yield cluster
    finally:
        cluster.stop()


SHORT_BUDGET = 3  # seconds: the outage outlasts it all the same (it never ends), sooner


def test_an_outage_longer_than_the_budget_fails_each_table_once_and_changes_nothing(
        copier_env, separate_source, run_copier, monkeypatch, at_moment):
    source = separate_source.dsn("source")
    tables = TABLES[:4]
    fill_source(source, tables)
    assert run_copier("TABLES=" + ",".join(tables)).code == 0
    before = {t: copier_env.target_rows(FINGERPRINT.format(t)) for t in tables}
    query(source, ";".join(f"UPDATE {t} SET v = 'changed'" for t in tables))

    at_moment("loading", lambda **_: separate_source.stop(), once=True)
    monkeypatch.setattr(copier, "backoff", lambda attempt, base: 0.01)
    result = run_copier("TABLES=" + ",".join(tables), "--outage-budget", str(SHORT_BUDGET),
                        "--progress-seconds", "0")

    assert result.code == 1
    assert sorted(e["table"] for e in result.of("table_failed")) == [f"public.{t}" for t in tables]
    for t in tables:
        lines = [line for line in result.stderr.splitlines()
                 if line.startswith(f"copier: error: public.{t}:")]
        assert len(lines) == 1
        assert re.search(rf"the source database was unreachable for \d+ s "
                         rf"\(--outage-budget {SHORT_BUDGET}\): cannot connect to the source database",
                         lines[0])
        assert copier_env.target_rows(FINGERPRINT.format(t)) == before[t]
    assert staging_debris(copier_env.target_dsn) == []
    assert "0 of 4 tables copied" in result.stderr
    assert result.of("run_finished")[0]["source_waited_seconds"] >= SHORT_BUDGET


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_lost_snapshot_holder_is_replaced_by_a_new_snapshot(copier_env, jobs):
    fill_source(copier_env.source_dsn)
    terminated = []

    def on_event(event):
        if event["event"] == "table_copied" and not terminated:
            terminated.append(end_snapshot_holder(copier_env.source_dsn))

    result = run_copier_process(["copier.py", "TABLES=" + ",".join(TABLES), "--jobs", jobs],
                                copier_env.source_dsn, copier_env.target_dsn, on_event=on_event)

    assert result.code == 0, result.stderr
    assert_equal_to_source(copier_env.source_dsn, copier_env.target_dsn)
    (renewed,) = result.of("snapshot_renewed")
    assert renewed["snapshot"] == 2
    assert result.of("waiting") == []  # the server never went away, only the connection
    assert "copier: warning: the run's snapshot was lost and renewed 1 time(s)" in result.stderr
    assert "is gone (the source restarted or failed over" in result.of("table_retry")[0]["error"]


def test_strict_snapshot_fails_the_tables_not_yet_read_and_keeps_them(copier_env, run_copier, at_moment):
    tables = TABLES[:3]
    fill_source(copier_env.source_dsn, tables)
    assert run_copier("TABLES=" + ",".join(tables)).code == 0
    copier_env.source(";".join(f"UPDATE {t} SET v = 'changed'" for t in tables))
    at_moment("loading", lambda **_: end_snapshot_holder(copier_env.source_dsn), once=True)
    result = run_copier("TABLES=" + ",".join(tables), "--snapshot", "strict", "--progress-seconds", "0")

    assert result.code == 1
    # The largest table was already reading when the holder went: it is copied.
    assert [e["table"] for e in result.of("table_copied")] == ["public.t03"]
    failed = result.of("table_failed")
    assert sorted(e["table"] for e in failed) == ["public.t01", "public.t02"]
    for event in failed:
        assert "is gone" in event["error"] and "--snapshot strict" in event["error"]
    assert result.of("snapshot_renewed") == []
    assert copier_env.target_rows("SELECT count(*) FROM t01 WHERE v = 'changed'") == [(0,)]


def test_swap_together_restages_tables_read_before_the_snapshot_was_renewed(
        copier_env, run_copier, at_moment):
    tables = TABLES[:3]
    fill_source(copier_env.source_dsn, tables)
    at_moment("loading", lambda **_: end_snapshot_holder(copier_env.source_dsn), once=True)
    result = run_copier("TABLES=" + ",".join(tables), "--swap", "together", "--progress-seconds", "0")

    assert result.code == 0, result.stderr
    staged = result.of("table_staged")
    assert [(e["table"], e["snapshot"]) for e in staged] == [
        ("public.t03", 1), ("public.t02", 2), ("public.t01", 2), ("public.t03", 2)]
    assert "staging 1 table(s) again from snapshot 2" in result.stderr
    assert {e["table"] for e in result.of("table_copied")} == {f"public.{t}" for t in tables}
    assert "the tables copied come from snapshot 2: public.t03, public.t02, public.t01" in result.stderr
    assert_equal_to_source(copier_env.source_dsn, copier_env.target_dsn, tables)


def test_a_scheduled_run_that_starts_during_an_outage_waits_for_it(long_outages, pg_cluster):
    scenario = long_outages["target at the start"]
    result = scenario.outcome.result()

    assert result.code == 0, result.stderr
    waited = result.of("waiting")
    assert waited and {e["database"] for e in waited} == {"target"}
    assert result.of("run_finished")[0]["target_waited_seconds"] >= 5
    assert_equal_to_source(scenario.source_dsn, scenario.target_dsn, TABLES[:2])

    # Settings that are wrong, not a server that is away, fail at once even when scheduled.
    wrong = run_copier_process(["copier.py", "TABLES=t01"], scenario.source_dsn,
                               pg_cluster.dsn("no_such_database"), SCHEDULED)
    assert wrong.code == 1 and wrong.of("waiting") == []
    assert 'database "no_such_database" does not exist' in wrong.stderr
