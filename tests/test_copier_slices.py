"""Big tables cut into key ranges (slices), and a run split into load jobs and one publish.

Locally, --jobs N cuts a table larger than a job's share into slices loaded side by side. In
the cloud, N copier processes each load their tables and slices into staging tables (one of
them holding the snapshot the others import), and one more process publishes: it builds,
verifies, analyzes and swaps. The tests drive separate copier processes exactly that way,
while a writer moves amounts between rows of two tables on the source, keeping their total.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg2

REPO = Path(__file__).resolve().parent.parent
TOTAL = "SELECT (SELECT sum(amount) FROM acc_a) + (SELECT sum(amount) FROM acc_b)"
CONTENT = "SELECT count(*), md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {} t"


def fill_accounts(dbs, rows_a: int = 60000, rows_b: int = 6000) -> None:
    """Two tables whose amounts add up to a constant; acc_a's keys have gaps (every third)."""
    dbs.source(f"CREATE TABLE acc_a (id bigint PRIMARY KEY, amount numeric NOT NULL, pad text);"
               f"INSERT INTO acc_a SELECT g * 3, 100, md5(g::text) FROM generate_series(1, {rows_a}) g;"
               f"CREATE TABLE acc_b (id int PRIMARY KEY, amount numeric NOT NULL);"
               f"INSERT INTO acc_b SELECT g, 100 FROM generate_series(1, {rows_b}) g;"
               f"ANALYZE acc_a, acc_b")


class Writer(threading.Thread):
    """Moves amounts between random rows of acc_a (far apart: different slices) and acc_b,
    one small transaction at a time: any one snapshot sees the same total."""

    def __init__(self, dsn: str, rows_a: int = 60000, rows_b: int = 6000):
        super().__init__(daemon=True)
        self.dsn, self.rows_a, self.rows_b = dsn, rows_a, rows_b
        self.commits = 0
        self.halt = threading.Event()
        self.conn = psycopg2.connect(dsn)  # here, not in run(): conftest.BackgroundDatabases says why

    def run(self) -> None:
        conn = self.conn
        n = 0
        try:
            with conn.cursor() as cur:
                while not self.halt.is_set():
                    n += 1
                    low, high = 3 * (1 + n % 97), 3 * (self.rows_a - n % 89)
                    cur.execute("UPDATE acc_a SET amount = amount - 7 WHERE id = %s", (low,))
                    cur.execute("UPDATE acc_a SET amount = amount + 3 WHERE id = %s", (high,))
                    cur.execute("UPDATE acc_b SET amount = amount + 4 WHERE id = %s", (1 + n % self.rows_b,))
                    conn.commit()
                    self.commits += 1
        finally:
            conn.close()

    def wait_for(self, commits: int, timeout: float = 60) -> None:
        """Until the writer has committed that many more transactions: a writer that died or
        stalls fails the test instead of hanging it."""
        goal, deadline = self.commits + commits, time.monotonic() + timeout
        while self.commits < goal:
            assert self.is_alive(), "the writer stopped (its error is on stderr)"
            assert time.monotonic() < deadline, f"{self.commits} commits, not {goal}, in {timeout}s"
            time.sleep(0.02)

    def stop(self) -> None:
        self.halt.set()
        self.join(10)


def events(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


class Job:
    """A copier process started as the state machine starts one (env overrides)."""

    def __init__(self, dbs, tables: str, **env: str):
        own = ("SOURCE_DSN", "TARGET_DSN", "TABLES")
        self.env = {**{k: v for k, v in os.environ.items() if k not in own and not k.startswith("COPIER_")},
                    "SOURCE_DSN": dbs.source_dsn, "TARGET_DSN": dbs.target_dsn, "TABLES": tables, **env}
        self.lines: list[dict] = []
        self.process = subprocess.Popen([sys.executable, str(REPO / "copier.py")], env=self.env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.reader = threading.Thread(target=self.read, daemon=True)
        self.reader.start()

    def read(self) -> None:
        for line in self.process.stdout:
            if line.startswith("{"):
                self.lines.append(json.loads(line))

    def wait_for_event(self, event: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e["event"] == event for e in self.lines):
            assert self.process.poll() is None or self.reader.is_alive(), (event, self.finish())
            assert time.monotonic() < deadline, f"no {event} line"
            time.sleep(0.05)

    def finish(self) -> tuple[int, str]:
        stderr = self.process.stderr.read()
        code = self.process.wait(120)
        self.reader.join(10)
        return code, stderr

    def of(self, event: str) -> list[dict]:
        return [e for e in self.lines if e["event"] == event]


def load_job(dbs, run: str, number: int, count: int, tables: str, one_snapshot: bool = True,
             **env: str) -> Job:
    """Load job number of count, as the state machine's branch starts it."""
    hold = {"COPIER_ONE_SNAPSHOT": "hold" if number == 1 else "join"} if one_snapshot else {}
    return Job(dbs, tables, COPIER_PHASE="load", COPIER_RUN=run, COPIER_JOB=f"job-{number}",
               COPIER_LOAD_JOBS=str(count), **hold, **env)


def publish(dbs, run: str, tables: str, *args: str, **more_env: str) -> subprocess.CompletedProcess:
    own = ("SOURCE_DSN", "TARGET_DSN", "TABLES")
    env = {**{k: v for k, v in os.environ.items() if k not in own and not k.startswith("COPIER_")},
           "SOURCE_DSN": dbs.source_dsn, "TARGET_DSN": dbs.target_dsn, "TABLES": tables,
           "COPIER_PHASE": "publish", "COPIER_RUN": run, **more_env}
    return subprocess.run([sys.executable, str(REPO / "copier.py"), *args], env=env,
                          capture_output=True, text=True, timeout=300)


def staging_debris(dbs) -> list:
    return dbs.target_rows("SELECT relname FROM pg_class WHERE relname LIKE '\\_copier\\_%'")


# ---------------------------------------------------------------------------------------------
# Local: --jobs N cuts the big table


def test_sliced_local_copy_is_exact_with_gaps_negative_and_extreme_keys(copier_env, run_copier):
    dbs = copier_env
    dbs.source("CREATE TABLE wide (id bigint PRIMARY KEY, v text, n int);"
               "CREATE INDEX wide_n ON wide (n);"
               "INSERT INTO wide SELECT g * 7, md5(g::text), g % 11 FROM generate_series(1, 40000) g;"
               "INSERT INTO wide VALUES (-9223372036854775808, 'min', 1), (9223372036854775807, 'max', 2),"
               " (-5, 'neg', 3), (0, 'zero', 4);"
               "CREATE TABLE small (code text PRIMARY KEY, v int);"
               "INSERT INTO small SELECT 'c' || g, g FROM generate_series(1, 3000) g")

    result = run_copier("TABLES=wide,small", "--jobs", "3", "--split-larger-than", "1")

    assert result.code == 0, result.stderr
    slices = result.of("slice_loaded")
    # small's key is text: it cannot be cut evenly by arithmetic and is copied whole.
    assert sorted(e["slice"] for e in slices) == ["1/6", "2/6", "3/6", "4/6", "5/6", "6/6"]
    assert {e["table"] for e in slices} == {"public.wide"}
    assert sum(e["rows"] for e in slices) == 40004
    # Which job takes which slice is the queue's business: a job whose process started late may
    # find them all taken, so no assertion on the jobs here.
    copied = {e["table"]: e for e in result.of("table_copied")}
    assert copied["public.wide"]["slices"] == 6 and copied["public.wide"]["rows"] == 40004
    assert "slices" not in copied["public.small"]
    for table in ("wide", "small"):
        assert dbs.target_rows(CONTENT.format(table)) == dbs.source_rows(CONTENT.format(table))
    assert dbs.target_rows("SELECT indexname FROM pg_indexes WHERE tablename = 'wide' ORDER BY 1") == [
        ("wide_n",), ("wide_pkey",)]
    assert staging_debris(dbs) == []


def test_no_split_and_a_single_job_copy_whole(copier_env, run_copier):
    dbs = copier_env
    fill_accounts(dbs, rows_a=3000, rows_b=300)
    assert run_copier("TABLES=acc_a,acc_b", "--jobs", "2", "--no-split").of("slice_loaded") == []
    single = run_copier("TABLES=acc_a,acc_b", "--jobs", "1", "--split-larger-than", "1")
    assert single.code == 0 and single.of("slice_loaded") == []
    default = run_copier("TABLES=acc_a,acc_b", "--jobs", "2")  # acc_a is most of the bytes
    assert default.code == 0, default.stderr
    assert {e["table"] for e in default.of("slice_loaded")} == {"public.acc_a"}


def test_local_jobs_read_one_moment_while_a_writer_moves_amounts(copier_env, run_copier):
    dbs = copier_env
    fill_accounts(dbs)
    total = dbs.source_rows(TOTAL)
    writer = Writer(dbs.source_dsn)
    writer.start()
    try:
        writer.wait_for(20)
        before = writer.commits
        result = run_copier("TABLES=acc_a,acc_b", "--jobs", "3", "--split-larger-than", "100kB")
        during = writer.commits - before
    finally:
        writer.stop()
    assert result.code == 0, result.stderr
    assert len(result.of("slice_loaded")) > 1
    assert during > 0  # the writer kept committing while the tables were read
    assert dbs.target_rows(TOTAL) == total
    assert dbs.target_rows("SELECT count(*) FROM acc_a") == [(60000,)]


def test_sliced_tables_with_swap_together(copier_env, run_copier):
    dbs = copier_env
    fill_accounts(dbs, rows_a=20000, rows_b=2000)
    result = run_copier("TABLES=acc_a,acc_b", "--jobs", "2", "--swap", "together",
                        "--split-larger-than", "100kB")
    assert result.code == 0, result.stderr
    assert result.of("slice_loaded") and result.of("table_staged")
    for table in ("acc_a", "acc_b"):
        assert dbs.target_rows(CONTENT.format(table)) == dbs.source_rows(CONTENT.format(table))
    assert staging_debris(dbs) == []


# ---------------------------------------------------------------------------------------------
# Cloud: load jobs as separate processes, then one publish


def test_cloud_jobs_share_one_snapshot_and_one_publish(dbs):
    fill_accounts(dbs)
    total = dbs.source_rows(TOTAL)
    units = ["acc_a#1/3,acc_b", "acc_a#2/3", "acc_a#3/3"]
    writer = Writer(dbs.source_dsn)
    writer.start()
    try:
        writer.wait_for(10)
        jobs = [load_job(dbs, "night-1", 1, 3, units[0])]
        jobs[0].wait_for_event("snapshot_shared")
        # The source moves on before the other jobs even start: they must still read the
        # moment the first job exported.
        writer.wait_for(50)
        jobs += [load_job(dbs, "night-1", n, 3, units[n - 1]) for n in (2, 3)]
        outcomes = [job.finish() for job in jobs]
    finally:
        writer.stop()
    assert [code for code, _ in outcomes] == [0, 0, 0], outcomes
    assert all(job.of("snapshot_imported") for job in jobs[1:])
    assert jobs[0].of("snapshot_released")[0]["imported"] == 3
    loaded = [e for job in jobs for e in job.of("slice_loaded")]
    assert sorted(e["slice"] for e in loaded) == ["1/3", "2/3", "3/3"]
    assert all(e["phase"] == "load" for e in loaded)
    assert jobs[0].of("table_loaded")[0]["table"] == "public.acc_b"

    published = publish(dbs, "night-1", "acc_a,acc_b")
    assert published.returncode == 0, published.stderr
    assert dbs.target_rows(TOTAL) == total
    # The source moved on after the snapshot: the target holds the snapshot's moment, not now's.
    assert dbs.source_rows(CONTENT.format("acc_b")) != dbs.target_rows(CONTENT.format("acc_b"))
    copied = {e["table"]: e for e in events(published.stdout) if e["event"] == "table_copied"}
    assert copied["public.acc_a"]["slices"] == 3 and copied["public.acc_a"]["rows"] == 60000
    assert copied["public.acc_b"]["slices"] == 1 and copied["public.acc_a"]["phase"] == "publish"
    assert dbs.target_rows("SELECT indexname FROM pg_indexes WHERE tablename = 'acc_a'") == [("acc_a_pkey",)]
    assert staging_debris(dbs) == []


def test_without_one_snapshot_jobs_read_different_moments(dbs):
    """The control: the same jobs without a shared snapshot break the total, and slices read
    at different moments are refused by the publish instead of going live."""
    fill_accounts(dbs, rows_a=6000, rows_b=600)
    total = dbs.source_rows(TOTAL)
    previous = publish_night(dbs, "night-0", ["acc_a,acc_b"])
    assert previous.returncode == 0, previous.stderr
    before = dbs.target_rows(CONTENT.format("acc_a"))
    writer = Writer(dbs.source_dsn, rows_a=6000, rows_b=600)
    writer.start()
    try:
        first = load_job(dbs, "night-1", 1, 2, "acc_a#1/2,acc_b", one_snapshot=False)
        assert first.finish()[0] == 0
        writer.wait_for(50)
        second = load_job(dbs, "night-1", 2, 2, "acc_a#2/2", one_snapshot=False)
        assert second.finish()[0] == 0
    finally:
        writer.stop()
    published = publish(dbs, "night-1", "acc_a,acc_b")
    assert published.returncode == 1
    assert "slices of public.acc_a were read from different snapshots" in published.stderr
    assert dbs.target_rows(CONTENT.format("acc_a")) == before  # last night's stays
    # acc_b alone went live, from job 1's moment: the cross-table total no longer holds.
    assert dbs.target_rows("SELECT (SELECT sum(amount) FROM acc_b)") != \
        dbs.source_rows("SELECT (SELECT sum(amount) FROM acc_b)")
    assert total == dbs.source_rows(TOTAL)


def publish_night(dbs, run: str, units: list[str]) -> subprocess.CompletedProcess:
    """A whole night the cloud way: the load jobs, then the publish of every table."""
    jobs = [load_job(dbs, run, n, len(units), tables) for n, tables in enumerate(units, 1)]
    for job in jobs:
        code, stderr = job.finish()
        assert code == 0, stderr
    tables = sorted({name.split("#")[0] for unit in units for name in unit.split(",")})
    return publish(dbs, run, ",".join(tables))


def test_a_failed_slice_fails_its_table_and_the_rest_goes_live(dbs):
    fill_accounts(dbs, rows_a=6000, rows_b=600)
    assert publish_night(dbs, "night-0", ["acc_a,acc_b"]).returncode == 0
    before = dbs.target_rows(CONTENT.format("acc_a"))
    dbs.source("UPDATE acc_a SET amount = amount + 1; UPDATE acc_b SET amount = amount + 1")

    jobs = [load_job(dbs, "night-1", 1, 3, "acc_a#1/3,acc_b", COPIER_SNAPSHOT_WAIT="6"),
            load_job(dbs, "night-1", 2, 3, "acc_a#2/3")]
    # Job 3 dies before it imports anything: its target refuses connections.
    broken = load_job(dbs, "night-1", 3, 3, "acc_a#3/3", COPIER_OUTAGE_BUDGET="1",
                      TARGET_DSN="host=127.0.0.1 port=1 dbname=x user=u connect_timeout=2")
    assert [job.finish()[0] for job in jobs] == [0, 0]
    assert broken.finish()[0] == 1
    assert "only 1 of the 2 other load jobs imported" in jobs[0].of("warning")[0]["message"]

    published = publish(dbs, "night-1", "acc_a,acc_b")
    assert published.returncode == 1
    failed = [e for e in events(published.stdout) if e["event"] == "table_failed"]
    assert [(e["table"], e["phase"]) for e in failed] == [("public.acc_a", "publish")]
    assert "slice(s) 3/3 missing" in failed[0]["error"]
    assert dbs.target_rows(CONTENT.format("acc_a")) == before
    assert dbs.target_rows(CONTENT.format("acc_b")) == dbs.source_rows(CONTENT.format("acc_b"))

    # The next night starts over: what night-1 left staged is replaced, nothing is left behind.
    assert publish_night(dbs, "night-2", ["acc_a#1/2,acc_b", "acc_a#2/2"]).returncode == 0
    assert dbs.target_rows(CONTENT.format("acc_a")) == dbs.source_rows(CONTENT.format("acc_a"))
    assert staging_debris(dbs) == []


def test_a_join_job_without_a_holder_fails_its_units_clearly(dbs):
    fill_accounts(dbs, rows_a=300, rows_b=30)
    job = load_job(dbs, "night-1", 2, 2, "acc_a#2/2,acc_b", COPIER_SNAPSHOT_WAIT="1")
    code, stderr = job.finish()
    assert code == 1
    assert stderr.strip().splitlines()[-1].startswith("copier: error: no snapshot was shared for run night-1")
    assert sorted(e.get("slice", "") for e in job.of("table_failed")) == ["", "2/2"]
    assert "quota" not in stderr  # a local run has none to name
    assert staging_debris(dbs) == []


def test_a_job_queued_past_the_holder_names_the_build_quota(dbs):
    """On AWS a load job queued behind the account's concurrent-build quota starts after the
    first job let go of the snapshot: its failure line (the one Slack shows) says so."""
    fill_accounts(dbs, rows_a=300, rows_b=30)
    quota = ("1 concurrent build for BUILD_GENERAL1_SMALL (Service Quotas: codebuild, Concurrently "
             "running builds for Linux/Small environment)")
    job = load_job(dbs, "night-1", 2, 2, "acc_a#2/2,acc_b", COPIER_SNAPSHOT_WAIT="1",
                   COPIER_BUILD_QUOTA=quota)
    code, _ = job.finish()
    assert code == 1
    for failed in job.of("table_failed"):
        assert failed["error"].startswith("no snapshot was shared for run night-1 within 1s: ")
        assert f"builds beyond the account's concurrent-build quota queue ({quota})" in failed["error"]
        assert "fewer jobs, a quota increase, or one_snapshot = false" in failed["error"]


def test_a_slice_of_a_table_without_an_integer_key_fails_with_advice(dbs):
    dbs.source("CREATE TABLE coded (code text PRIMARY KEY); INSERT INTO coded VALUES ('a'), ('b')")
    job = load_job(dbs, "night-1", 1, 1, "coded#1/2", one_snapshot=False)
    code, _ = job.finish()
    assert code == 1
    (failed,) = job.of("table_failed")
    assert "cannot be cut into slices: it has no single-column integer key" in failed["error"]


def test_phases_need_a_run_name(dbs):
    result = subprocess.run([sys.executable, str(REPO / "copier.py"), "--phase", "publish", "TABLES=x"],
                            env={k: v for k, v in os.environ.items() if not k.startswith("COPIER_")},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2  # a usage error, as every bad option
    assert "--phase publish needs COPIER_RUN" in result.stderr.strip().splitlines()[-1]


def test_a_table_whose_slices_straddle_a_renewed_snapshot_is_loaded_again(copier_env, tmp_path):
    from tests.test_copier_outages import run_copier_process

    dbs = copier_env
    fill_accounts(dbs, rows_a=360000, rows_b=600)  # six slices of 60k rows, three jobs
    # The first slice is in: the snapshot goes before that job takes its next slice (the hook).
    result = run_copier_process(["tests/holder_hook.py", "TABLES=acc_a,acc_b", "--jobs", "3",
                                 "--split-larger-than", "100kB"],
                                dbs.source_dsn, dbs.target_dsn,
                                extra_env={"HOLDER_ENDED": str(tmp_path / "ended")})

    assert result.code == 0, result.stderr
    assert result.of("snapshot_renewed")
    (again,) = [e for e in result.of("table_retry") if "two snapshots" in e["error"]]
    assert again["table"] == "public.acc_a"
    # Every slice of the copy that went live came from the renewed snapshot.
    slices = result.of("slice_loaded")
    count = len({e["slice"] for e in slices})
    assert {e["snapshot"] for e in slices[-count:]} == {2}
    assert [e["slices"] for e in result.of("table_copied") if e["table"] == "public.acc_a"] == [count]
    for table in ("acc_a", "acc_b"):
        assert dbs.target_rows(CONTENT.format(table)) == dbs.source_rows(CONTENT.format(table))
    assert staging_debris(dbs) == []


def test_the_rendered_state_machine_drives_real_load_jobs_and_publish(dbs, monkeypatch):
    """The nightly run end to end but for AWS itself: setup's plan read from the real source,
    the state machine rendered by deploy, and each of its tasks' environment given to a real
    copier process: the load jobs side by side while a writer moves amounts, then the publish."""
    import boto3  # noqa: F401 - moto patches it
    from aws_helpers import MOTO_CONFIG, REGION, set_fake_aws_env
    from moto import mock_aws
    from test_cloud_phases import environment
    from test_state_machine import branches, copy_task

    import deploy
    from deploy.settings import secret_env_var

    fill_accounts(dbs)
    dbs.source("CREATE TABLE notes (id int PRIMARY KEY, body text);"
               "INSERT INTO notes SELECT g, 'n' || g FROM generate_series(1, 2000) g")
    tables = ["acc_a", "acc_b", "notes"]
    source = {"host": "127.0.0.1", "port": str(dbs.cluster.port), "dbname": dbs.source_name,
              "user": "postgres", "sslmode": "disable"}
    monkeypatch.setenv(secret_env_var("source", "password"), "unused (trust)")
    settings = deploy.Settings(tables=tables, jobs=3, github_url="https://x/y.git", source=source)
    said: list[str] = []
    assignment = deploy.plan_jobs(settings, said.append)
    assert any("#" in unit for job in assignment for unit in job), (assignment, said)

    set_fake_aws_env(monkeypatch)
    with mock_aws(config=MOTO_CONFIG):
        definition = deploy.Deployment(settings, deploy.Aws(REGION), deploy.Options(),
                                       assignment).state_machine_definition()
    night = {"$$.Execution.Name": "2026-11-29"}
    loads = [{k: night.get(v, v) for k, v in environment(copy_task(b)).items()}
             for b in branches(definition)]
    publish_env = {k: night.get(v, v) for k, v in
                   environment(deploy.state_machine.job_tasks(definition)[-1]).items()}

    total = dbs.source_rows(TOTAL)
    writer = Writer(dbs.source_dsn)
    writer.start()
    try:
        writer.wait_for(10)
        jobs = [Job(dbs, env["TABLES"], **{k: v for k, v in env.items() if k != "TABLES"})
                for env in loads]
        outcomes = [job.finish() for job in jobs]
        writer.wait_for(10)
    finally:
        writer.stop()
    assert [code for code, _ in outcomes] == [0] * len(jobs), outcomes
    published = Job(dbs, publish_env.pop("TABLES"), **publish_env)
    code, stderr = published.finish()
    assert code == 0, stderr

    assert dbs.target_rows(TOTAL) == total
    for table in tables:
        count = f"SELECT count(*) FROM {table}"
        assert dbs.target_rows(count) == dbs.source_rows(count)
    copied = {e["table"]: e for e in published.of("table_copied")}
    assert set(copied) == {f"public.{t}" for t in tables}
    assert copied["public.acc_a"]["slices"] > 1
    assert staging_debris(dbs) == []

    # What operations.py report (and the Slack summary, through the same reader) make of the
    # night's real lines, one log stream per build.
    import operations

    logged = [{**line, "@stream": f"{stream}/build", "@timestamp": n} for n, (stream, line) in
              enumerate((job.env["COPIER_JOB"], line) for job in [*jobs, published] for line in job.lines)]
    runs = {t.table: t for t in operations.table_runs(logged)}
    assert {name: t.outcome for name, t in runs.items()} == {f"public.{t}": "copied" for t in tables}
    assert runs["public.acc_a"].slices == copied["public.acc_a"]["slices"]
    assert runs["public.acc_a"].rows == 60000


def test_a_publish_together_with_a_slice_missing_changes_no_table(dbs):
    """swap = together: the publish swaps every table in one transaction or none; a table with
    a slice missing fails, so last night's copy of every table stays."""
    fill_accounts(dbs, rows_a=6000, rows_b=600)
    assert publish_night(dbs, "night-0", ["acc_a,acc_b"]).returncode == 0
    before = {t: dbs.target_rows(CONTENT.format(t)) for t in ("acc_a", "acc_b")}
    dbs.source("UPDATE acc_a SET amount = amount + 1; UPDATE acc_b SET amount = amount + 1")

    job = load_job(dbs, "night-1", 1, 1, "acc_a#1/2,acc_b")  # slice 2/2 was never loaded
    assert job.finish()[0] == 0
    published = publish(dbs, "night-1", "acc_a,acc_b", "--swap", "together")

    assert published.returncode == 1
    assert "slice(s) 2/2 missing" in published.stderr
    assert {t: dbs.target_rows(CONTENT.format(t)) for t in ("acc_a", "acc_b")} == before

    # The next night, complete, goes live whole, and night-1's leftovers are gone.
    jobs = [load_job(dbs, "night-2", n, 2, units)
            for n, units in enumerate(["acc_a#1/2,acc_b", "acc_a#2/2"], 1)]
    assert [job.finish()[0] for job in jobs] == [0, 0]
    again = publish(dbs, "night-2", "acc_a,acc_b", "--swap", "together")
    assert again.returncode == 0, again.stderr
    for table in ("acc_a", "acc_b"):
        assert dbs.target_rows(CONTENT.format(table)) == dbs.source_rows(CONTENT.format(table))
    assert staging_debris(dbs) == []
