"""The Slack summary's failed and slowest tables, read from the copier's real log lines.

The copier runs against the test cluster (as tests/test_copier_contract.py does); its JSON lines
go into moto's CloudWatch Logs, one stream per job as CodeBuild writes them, and the notify
Lambda reads them back. 1 and 12 tables are real runs; 500 repeats the 12 real lines under
distinct table names. Every message stays within Slack's limits."""

from __future__ import annotations

import copy
import io
import json
import subprocess
import sys
import zipfile
from datetime import UTC, datetime

import boto3
import psycopg2
import pytest
from aws_helpers import set_fake_aws_env
from moto import mock_aws

import deploy
import notify_lambda
import runlog

REGION = "eu-west-1"
GROUP = "/aws/codebuild/nightly-copy"
RUN = "2026-11-27"
START = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
EXECUTION = {"name": RUN, "id": f"arn:aws:states:{REGION}:123456789012:execution:nc:{RUN}",
             "start_time": START.isoformat()}


@pytest.fixture
def logs(monkeypatch):
    set_fake_aws_env(monkeypatch)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv(notify_lambda.LOG_GROUP_VARIABLE, GROUP)
    waits: list[float] = []
    monkeypatch.setattr(notify_lambda, "sleep", waits.append)
    with mock_aws():
        client = boto3.client("logs", region_name=REGION)
        client.waits = waits
        yield client


@pytest.fixture
def copier_run(copier_env, run_copier, monkeypatch):
    """Run the copier on `count` tiny tables, the last one locked by a reader (it fails)."""
    monkeypatch.setenv("COPIER_RUN", RUN)

    def run(count: int, failing: bool):
        dbs = copier_env
        names = [f"t{n:02d}" for n in range(1, count + 1)]
        for n, name in enumerate(names, start=1):
            dbs.source(f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
            dbs.source(f"INSERT INTO {name} SELECT g, repeat('x', {n}) FROM generate_series(1, {n * 200}) g")
        args = ["TABLES=" + ",".join(names), "--jobs", "3" if count > 1 else "1"]
        if not failing:
            return run_copier(*args)
        dbs.target(f"CREATE TABLE {names[-1]} (id int PRIMARY KEY, v text)")
        reader = psycopg2.connect(dbs.target_dsn)
        try:
            reader.cursor().execute(f"LOCK TABLE {names[-1]} IN ACCESS SHARE MODE")
            return run_copier(*args, "--lock-timeout", "0.2", "--lock-retries", "0",
                              "--lock-budget", "0", "--no-kill-readers")
        finally:
            reader.close()

    return run


def store(client, events: list[dict]) -> dict[str, list[str]]:
    """The lines as CodeBuild stores them: one stream per job; returns each job's tables."""
    client.create_log_group(logGroupName=GROUP)
    by_job: dict[str, list[dict]] = {}
    job_of_table: dict[str, str] = {}
    for event in events:
        # a line without a job (a swap readers blocked, failed at the end of the run) is in
        # the log of the build that staged the table: one copier process per job on AWS
        job = str(event.get("job") or job_of_table.get(event.get("table"), 1))
        if event.get("table"):
            job_of_table[event["table"]] = job
        by_job.setdefault(f"job-{job}", []).append(event)
    stamp = int(START.timestamp() * 1000)
    for job, lines in by_job.items():
        client.create_log_stream(logGroupName=GROUP, logStreamName=f"{job}/build")
        for chunk in range(0, len(lines), 200):
            client.put_log_events(logGroupName=GROUP, logStreamName=f"{job}/build", logEvents=[
                {"timestamp": stamp + n, "message": json.dumps(line, ensure_ascii=False)}
                for n, line in enumerate(lines[chunk:chunk + 200], start=chunk)])
    last_job = {line["table"]: job for job, lines in by_job.items() for line in lines
                if line["event"] in (runlog.TABLE_COPIED, runlog.TABLE_FAILED)}
    return {job: [t for t, j in last_job.items() if j == job] for job in by_job}


def summary_event(jobs: dict[str, list[str]], failed_jobs: set[str]) -> dict:
    return {"execution": EXECUTION, "jobs": [
        {"job": job, "tables": list(tables), "status": "FAILED" if job in failed_jobs else "SUCCEEDED",
         "start": START.isoformat(), "end": START.isoformat()} for job, tables in sorted(jobs.items())]}


def within_slack_limits(payload: dict) -> list[str]:
    blocks = payload["blocks"]
    assert len(blocks) <= notify_lambda.MAX_BLOCKS
    texts = [b["text"]["text"] for b in blocks if b["type"] == "section"]
    assert all(len(t) <= notify_lambda.SECTION_TEXT_LIMIT for t in texts)
    assert len(payload["text"]) <= notify_lambda.FALLBACK_TEXT_LIMIT
    return texts


def outcome_lines(events: list[dict]) -> list[dict]:
    return [e for e in events if e["event"] in (runlog.TABLE_COPIED, runlog.TABLE_FAILED)]


def test_one_table_copied_is_the_slowest_and_nothing_failed(logs, copier_run):
    run = copier_run(1, failing=False)
    assert run.code == 0
    jobs = store(logs, run.events)
    event = summary_event(jobs, set())
    report = notify_lambda.table_report(event)
    payload, failed = notify_lambda.summary_message(event, report)
    texts = within_slack_limits(payload)
    assert failed == 0 and report.problem is None and logs.waits == []
    (slowest,) = [t for t in texts if "Slowest tables" in t]
    assert "`public.t01`" in slowest
    assert not any("Failed tables" in t for t in texts)


def test_twelve_tables_name_the_failed_one_with_its_error_and_the_five_slowest(logs, copier_run):
    run = copier_run(12, failing=True)
    assert run.code == 1
    lines = outcome_lines(run.events)
    (failure,) = [e for e in lines if e["event"] == runlog.TABLE_FAILED]
    assert failure["table"] == "public.t12" and "lock" in failure["error"]
    jobs = store(logs, run.events)
    # its job: the one that staged it for the swap at the end (the failed swap's line has none)
    (listed,) = [j for j, tables in jobs.items() if "public.t12" in tables]
    (deferred,) = [e for e in run.events if e["event"] == runlog.SWAP_DEFERRED]
    assert deferred["table"] == "public.t12" and "job" not in failure
    job = runlog.job_name(deferred["job"])
    event = summary_event(jobs, {listed})
    report = notify_lambda.table_report(event)
    payload, _ = notify_lambda.summary_message(event, report)
    texts = within_slack_limits(payload)

    assert report.problem is None and len(report.outcomes) == 12
    (failed,) = [t for t in texts if "Failed tables (1)" in t]
    error_line = " ".join(failure["error"].split())
    assert f"`public.t12` ({job}): {notify_lambda._escape(error_line)}" in failed
    (slowest,) = [t for t in texts if "Slowest tables" in t]
    copied = sorted((e for e in lines if e["event"] == runlog.TABLE_COPIED),
                    key=lambda e: (-e["seconds"], e["table"]))
    shown = [e["table"] for e in copied[:5]]
    positions = [slowest.index(f"`{table}`") for table in shown]
    assert positions == sorted(positions)
    assert not any(f"`{e['table']}`" in slowest for e in copied[5:])
    assert "public.t12" in payload["text"]


def test_five_hundred_tables_stay_within_slack_limits_and_count_the_rest(logs, copier_run):
    run = copier_run(12, failing=True)
    real = outcome_lines(run.events)
    events, failed_names = [], []
    for n in range(500):  # the twelve real lines again and again, each under its own name
        line = copy.deepcopy(real[n % len(real)])
        line["table"] = f"reporting.table_with_a_long_name_{n:03d}"
        line["job"] = str(n // 50 + 1)
        if n % 5 == 0 and line["event"] == runlog.TABLE_COPIED:
            line = {**line, "event": runlog.TABLE_FAILED,
                    "error": next(e["error"] for e in real if "error" in e)}
        if line["event"] == runlog.TABLE_FAILED:
            failed_names.append(line["table"])
        events.append(line)
    jobs = store(logs, events)
    assert len(jobs) == 10
    event = summary_event(jobs, {f"job-{n}" for n in range(1, 11)})
    report = notify_lambda.table_report(event)
    payload, failed = notify_lambda.summary_message(event, report)
    texts = within_slack_limits(payload)

    assert failed == 10 and len(report.outcomes) == 500 and report.problem is None
    failed_sections = [t for t in texts if t.startswith(":x: *Failed tables") or
                       (t.startswith("`reporting.") and "): " in t)]
    assert 1 < len(failed_sections) <= notify_lambda.FAILED_TABLE_SECTIONS
    listed = [name for name in failed_names if any(f"`{name}`" in t for t in failed_sections)]
    more = int(failed_sections[-1].rsplit("…and ", 1)[1].split()[0])
    assert len(listed) + more == len(failed_names) and more > 0
    assert f"Failed tables ({len(failed_names)})" in failed_sections[0]
    assert sum(b["type"] == "section" and "job-" in b["text"]["text"] for b in payload["blocks"]) == 10


def test_lines_not_there_yet_are_read_again_then_said_plainly(logs, copier_run):
    run = copier_run(1, failing=False)
    logs.create_log_group(logGroupName=GROUP)  # the build's lines have not arrived
    event = summary_event({"job-1": ["public.t01"]}, set())
    report = notify_lambda.table_report(event)
    assert len(logs.waits) == notify_lambda.LOG_READ_ATTEMPTS - 1
    assert report.outcomes == [] and report.problem.startswith(f"no table lines for run {RUN}")
    payload, _ = notify_lambda.summary_message(event, report)
    (note,) = [t for t in within_slack_limits(payload) if "Per-table results incomplete" in t]
    assert f"operations.py report {RUN}" in note
    assert run.code == 0


def test_a_missing_log_group_is_said_plainly_and_the_summary_still_goes(logs):
    event = summary_event({"job-1": ["public.orders"]}, set())
    report = notify_lambda.table_report(event)
    assert report.problem == f"log group {GROUP} does not exist yet"
    payload, failed = notify_lambda.summary_message(event, report)
    assert failed == 0 and any(report.problem in t for t in within_slack_limits(payload))


def test_without_a_log_group_setting_there_is_no_table_part(logs, monkeypatch):
    monkeypatch.delenv(notify_lambda.LOG_GROUP_VARIABLE)
    assert notify_lambda.table_report(summary_event({"job-1": ["a"]}, set())) is None


def test_the_lambda_zip_imports_on_its_own(tmp_path):
    """The zip's files are all the function has besides the standard library and boto3: no
    copier.py, no psycopg2 (the Lambda runtime has neither), not this checkout."""
    with zipfile.ZipFile(io.BytesIO(deploy.resources.zip_notify_function("UTC"))) as archive:
        archive.extractall(tmp_path)
    probe = (f"import sys; sys.path.insert(0, {str(tmp_path)!r}); sys.modules['psycopg2'] = None\n"
             "import notify_lambda, runlog\n"
             "assert runlog.__file__.startswith(sys.path[0]), runlog.__file__\n"
             "try:\n    import copier\nexcept ImportError:\n    pass\n"
             "else:\n    raise AssertionError(f'{copier.__file__} is importable')\n"
             "print(notify_lambda.run_tables({'jobs': [{'tables': ['public.\"A#1/2\"#2/4']}]}))")
    # -I: neither the working directory, PYTHONPATH nor the user's site-packages on the path
    done = subprocess.run([sys.executable, "-I", "-c", probe], cwd=tmp_path, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "['public.\"A#1/2\"']\n"


def test_the_lambda_may_read_only_the_copier_s_log_group(monkeypatch):
    set_fake_aws_env(monkeypatch)
    settings = deploy.Settings(tables=["public.a"], github_url="https://x", region=REGION)
    with mock_aws():
        d = deploy.Deployment(settings, deploy.Aws(REGION), deploy.Options())
        statements = deploy.permissions.notify_function(d)["Statement"]
        (function,) = [r for r in deploy.resource_list(d)
                       if isinstance(r, deploy.resources.NotifyFunction)]
        variables = function.configuration()["Environment"]["Variables"]
    (reading,) = [s for s in statements if "logs:FilterLogEvents" in s["Action"]]
    group = d.log_group_arn(d.copier_log_group())
    assert reading["Action"] == ["logs:FilterLogEvents"] and reading["Resource"] == [group, f"{group}:*"]
    assert variables["COPIER_LOG_GROUP"] == d.copier_log_group() == GROUP
