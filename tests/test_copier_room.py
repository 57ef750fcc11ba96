"""Room before writing: the most the night stages at once, against the reporting database's free
storage, before anything is written (an RDS instance's FreeStorageSpace, read from CloudWatch:
moto here; the databases are real)."""

from __future__ import annotations

import datetime

import boto3
import pytest
from aws_helpers import MOTO_CONFIG, set_fake_aws_env
from moto import mock_aws

MB = 1_000_000


@pytest.fixture
def reporting_instance(copier_env, monkeypatch):
    """A reporting database on the RDS instance 'reporting' (as setup names it), whose free
    storage a test sets."""
    set_fake_aws_env(monkeypatch)
    with mock_aws(config=MOTO_CONFIG):
        monkeypatch.setenv("COPIER_TARGET_STORAGE", "rds:reporting")
        cloudwatch = boto3.client("cloudwatch")

        def free(megabytes: float) -> None:
            last_minute = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=1)
            cloudwatch.put_metric_data(Namespace="AWS/RDS", MetricData=[{
                "MetricName": "FreeStorageSpace", "Value": megabytes * MB, "Unit": "Bytes",
                "Timestamp": last_minute,
                "Dimensions": [{"Name": "DBInstanceIdentifier", "Value": "reporting"}]}])

        yield free


@pytest.fixture
def three_tables(copier_env):
    """big about 6 MB on the source, medium about 2 MB, small well under one."""
    copier_env.source("CREATE TABLE big (id int PRIMARY KEY, pad text);"
                      "INSERT INTO big SELECT g, repeat('b', 200) FROM generate_series(1, 24000) g;"
                      "CREATE TABLE medium (id int PRIMARY KEY, pad text);"
                      "INSERT INTO medium SELECT g, repeat('m', 200) FROM generate_series(1, 7000) g;"
                      "CREATE TABLE small (id int PRIMARY KEY); INSERT INTO small VALUES (1), (2)")
    copier_env.target("CREATE TABLE big (id int PRIMARY KEY, pad text); INSERT INTO big VALUES (1, 'old')")
    size = "SELECT pg_total_relation_size(%s) / 1e6"
    sizes = {t: float(copier_env.source_rows(size, (t,))[0][0]) for t in ("big", "medium", "small")}
    assert sizes["big"] > 5 and 1 < sizes["medium"] < 3 and sizes["small"] < 0.1, sizes
    return copier_env


def test_a_table_that_cannot_fit_is_refused_before_writing(three_tables, reporting_instance, run_copier):
    reporting_instance(4)
    result = run_copier("TABLES=big,medium,small")

    assert result.code == 1
    (failed,) = result.of("table_failed")
    assert failed["table"] == "public.big"
    assert failed["error"].startswith("public.big needs about ")
    assert "MB staged (its size on the source, indexes and TOAST included) and the reporting database " \
           "has 4 MB free: it keeps last night's rows" in failed["error"]
    assert sorted(e["table"] for e in result.of("table_copied")) == ["public.medium", "public.small"]
    assert three_tables.target_rows("SELECT count(*) FROM big") == [(1,)]
    (finished,) = result.of("run_finished")
    assert finished["room"].startswith("checked: the night stages at most ")
    assert finished["room"].endswith("4 MB free; 1 table(s) refused for want of room")


def test_jobs_that_would_not_fit_side_by_side_run_fewer_at_once(three_tables, reporting_instance,
                                                                 run_copier):
    reporting_instance(7)  # big alone fits, big and medium together do not
    result = run_copier("TABLES=big,medium,small", "--jobs", "3", "--no-split")

    assert result.code == 0, result.stderr
    assert "1 of 3 jobs at once, so that it fits" in result.of("run_finished")[0]["room"]
    assert {e["job"] for e in result.of("table_copied")} == {1}


def test_swap_together_keeps_every_table_staged_and_refuses_the_largest(three_tables, reporting_instance,
                                                                         run_copier):
    reporting_instance(7)
    result = run_copier("TABLES=big,medium,small", "--swap", "together")

    assert result.code == 1
    failed = {e["table"]: e["error"] for e in result.of("table_failed")}
    assert "with the tables staged until the swap at the end (every table)" in failed["public.big"]
    assert three_tables.target_rows("SELECT count(*) FROM big") == [(1,)]
    assert three_tables.target_rows("SELECT to_regclass('medium')") == [(None,)]  # none swapped


def test_plenty_of_room_is_said_and_a_dry_run_shows_it(three_tables, reporting_instance, run_copier):
    reporting_instance(500)
    dry = run_copier("TABLES=big,medium,small", "--dry-run")
    assert dry.code == 0, dry.stderr
    assert "room on the reporting database: checked: the night stages at most" in dry.stderr
    result = run_copier("TABLES=big,medium,small")
    assert result.code == 0, result.stderr
    assert result.of("run_finished")[0]["room"].endswith("500 MB free")


@pytest.mark.parametrize(("storage", "said"), [
    ("aurora", "not needed: Aurora's storage grows on its own"),
    ("rds:silent", "not checked: RDS instance silent reported no FreeStorageSpace in 15 minutes"),
    ("", "not checked: the reporting database's free storage cannot be read here"),
])
def test_where_the_room_cannot_be_known_the_summary_says_so(three_tables, reporting_instance, run_copier,
                                                           monkeypatch, storage, said):
    monkeypatch.setenv("COPIER_TARGET_STORAGE", storage)
    result = run_copier("TABLES=small")
    assert result.code == 0, result.stderr
    assert result.of("run_finished")[0]["room"].startswith(said)
    assert f"room on the reporting database: {said}" in result.stderr
