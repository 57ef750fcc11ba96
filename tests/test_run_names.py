"""Runs are named after the schedule's local date: the DST nights of March 2027 in New York,
schedules near midnight, days of 23 and 25 hours, the starter in moto's engine, and a manual
--start in the morning in Tokyo."""

from __future__ import annotations

import copy
import datetime as dt
import json
from zoneinfo import ZoneInfo

import boto3
import pytest
from aws_helpers import (
    MOTO_CONFIG,
    REGION,
    queue_lambda_result,
    run_to_end,
    set_fake_aws_env,
    write_config,
)
from moto import mock_aws
from moto.stepfunctions.parser.backend.execution import Execution

import deploy
import notify_lambda
import setup_aws

UTC = dt.UTC
NEW_YORK = "America/New_York"
TOKYO = "Asia/Tokyo"
NIGHTLY = f"arn:aws:states:{REGION}:123456789012:stateMachine:nightly-copy"
FUNCTION = f"arn:aws:lambda:{REGION}:123456789012:function:nightly-copy-notify"


def fire_time(day: dt.date, hour: int, minute: int, timezone: str) -> str:
    """When EventBridge Scheduler fires cron(minute hour * * ? *) in `timezone` on `day`, as
    it passes it to the target: <aws.scheduler.scheduled-time>, in UTC."""
    local = dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=ZoneInfo(timezone))
    return local.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def name_of(scheduled_time: str, timezone: str) -> str:
    """What the starter's Lambda answers for one firing."""
    answer = notify_lambda.handler(
        {"name_run": {"scheduled_time": scheduled_time, "timezone": timezone}}, None)
    assert answer["date"] == answer["name"]
    return answer["name"]


def test_the_dst_nights_of_march_2027_in_new_york_get_their_own_names():
    # cron(30 19 * * ? *) in New York: 19:30 EST is 00:30Z the next day, 19:30 EDT is 23:30Z
    # the same day, so both nights fall on the UTC date 2027-03-14.
    fired = [fire_time(dt.date(2027, 3, d), 19, 30, NEW_YORK) for d in (13, 14)]
    assert fired == ["2027-03-14T00:30:00Z", "2027-03-14T23:30:00Z"]
    assert [name_of(t, NEW_YORK) for t in fired] == ["2027-03-13", "2027-03-14"]


@pytest.mark.parametrize("timezone", [
    NEW_YORK, TOKYO, "Europe/London", "Australia/Lord_Howe", "Pacific/Chatham",
    "Pacific/Kiritimati", "Pacific/Pago_Pago", "America/Santiago", "UTC"])
@pytest.mark.parametrize("hour, minute", [(0, 0), (0, 30), (2, 30), (19, 30), (23, 59)])
def test_every_night_of_a_year_gets_the_local_date_it_fires_on(timezone, hour, minute):
    first = dt.date(2027, 1, 1)
    days = [first + dt.timedelta(days=n) for n in range(365)]
    names = [name_of(fire_time(day, hour, minute, timezone), timezone) for day in days]
    assert names == [day.isoformat() for day in days]  # one per night, none twice, none lost


@pytest.mark.parametrize("day, hours", [(dt.date(2027, 3, 14), 23), (dt.date(2027, 11, 7), 25)])
@pytest.mark.parametrize("hour, minute", [(0, 0), (0, 30), (23, 30), (23, 59)])
def test_days_of_23_and_25_hours_with_a_schedule_near_midnight(day, hours, hour, minute):
    before, on, after = (fire_time(day + dt.timedelta(days=n), hour, minute, NEW_YORK)
                         for n in (-1, 0, 1))
    start_of_day = dt.datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(NEW_YORK))
    next_day = start_of_day + dt.timedelta(days=1)
    assert (next_day.astimezone(UTC) - start_of_day.astimezone(UTC)) == dt.timedelta(hours=hours)
    assert [name_of(t, NEW_YORK) for t in (before, on, after)] == [
        (day + dt.timedelta(days=n)).isoformat() for n in (-1, 0, 1)]


def test_a_time_zone_the_lambda_does_not_know_is_an_error():
    with pytest.raises(notify_lambda.NotifyError, match="Europe/Berln"):
        name_of("2027-03-14T00:30:00Z", "Europe/Berln")
    with pytest.raises(notify_lambda.NotifyError, match="not a time zone name"):
        name_of("2027-03-14T00:30:00Z", "../../etc/passwd")


def test_the_bundled_zone_file_is_the_one_the_lambda_reads(tmp_path, monkeypatch):
    """The function's zip carries the schedule's zone file; the Lambda prefers it."""
    import io
    import zipfile

    archive = zipfile.ZipFile(io.BytesIO(deploy.resources.zip_notify_function(NEW_YORK)))
    assert archive.namelist() == ["notify_lambda.py", "runlog.py", f"tz/{NEW_YORK}"]
    archive.extractall(tmp_path)
    # Tokyo's rules under New York's name: the Lambda must use the bundled file, not the system's
    (tmp_path / "tz" / NEW_YORK).write_bytes(deploy.resources.zone_file(TOKYO))
    monkeypatch.setattr(notify_lambda, "BUNDLED_ZONES", tmp_path / "tz")
    assert name_of("2027-03-14T16:00:00Z", NEW_YORK) == "2027-03-15"  # 01:00 in Tokyo


# --- the starter in moto's engine (its Lambda code does not run there: the answer the real
# handler gives for the payload the engine sent is queued as the Lambda's result)


@pytest.fixture
def engine(monkeypatch):
    set_fake_aws_env(monkeypatch)
    with mock_aws(config={**MOTO_CONFIG, "stepfunctions": {"execute_state_machine": True}}):
        yield boto3.client("stepfunctions")


def starter_for_moto() -> dict:
    """The starter with its startExecution task as a Pass showing the request it would send
    (moto's engine cannot run that integration)."""
    starter = copy.deepcopy(deploy.state_machine.starter_definition(NIGHTLY, FUNCTION))
    start = starter["States"]["Start nightly copy"]
    starter["States"]["Start nightly copy"] = {"Type": "Pass", "Parameters": start["Parameters"],
                                               "End": True}
    return starter


@pytest.mark.parametrize("night", [13, 14])
def test_the_starter_asks_the_lambda_for_the_name_and_starts_the_run_under_it(engine, night):
    starter = engine.create_state_machine(
        name="nightly-copy-starter", definition=json.dumps(starter_for_moto()),
        roleArn="arn:aws:iam::123456789012:role/nightly-copy-starter")["stateMachineArn"]
    fired = fire_time(dt.date(2027, 3, night), 19, 30, NEW_YORK)
    schedule_input = {"scheduled_time": fired, "timezone": NEW_YORK}  # what the schedule sends
    (scheduled_payload,) = [v for k, v in starter_for_moto()["States"]["Name the run"][
        "Parameters"].items() if k == "Payload"]
    assert scheduled_payload == {"name_run": {"scheduled_time.$": "$.scheduled_time",
                                              "timezone.$": "$.timezone"}}
    queue_lambda_result(notify_lambda.handler({"name_run": schedule_input}, None))
    described = run_to_end(engine, starter, f"fire-{night}", json.dumps(schedule_input))
    assert described["status"] == "SUCCEEDED", described
    events = engine.get_execution_history(executionArn=described["executionArn"])["events"]
    (sent,) = [json.loads(e["taskScheduledEventDetails"]["parameters"])["Payload"]
               for e in events if e["type"] == "TaskScheduled"]
    assert sent == {"name_run": schedule_input}
    request = json.loads(described["output"])
    assert request == {"StateMachineArn": NIGHTLY, "Name": f"2027-03-{night}",
                       "Input": {"date": f"2027-03-{night}"}}


def test_the_starter_says_so_when_the_run_for_the_date_exists(engine, monkeypatch):
    """The whole starter, its startExecution task included (tests/moto_gaps.py lets moto's
    engine run it): a second firing for the same date is caught, says so through the Lambda,
    and succeeds without a second run."""
    # moto 5.2 deep-copies a state machine with its executions (and their thread locks) on
    # every start: a second start of one machine fails to pickle.
    monkeypatch.setattr(Execution, "__deepcopy__", lambda self, memo: self, raising=False)
    role = "arn:aws:iam::123456789012:role/nightly-copy-states"
    assert engine.create_state_machine(name="nightly-copy", roleArn=role, definition=json.dumps(
        {"StartAt": "Copy", "States": {"Copy": {"Type": "Pass", "End": True}}}))[
        "stateMachineArn"] == NIGHTLY
    starter = engine.create_state_machine(
        name="nightly-copy-starter", roleArn=role,
        definition=json.dumps(deploy.state_machine.starter_definition(NIGHTLY, FUNCTION)))[
        "stateMachineArn"]
    schedule_input = {"scheduled_time": fire_time(dt.date(2027, 3, 14), 19, 30, NEW_YORK),
                      "timezone": NEW_YORK}
    sent = []
    for firing in (1, 2):  # the schedule's firing, then a retried one
        queue_lambda_result(notify_lambda.handler({"name_run": schedule_input}, None))
        if firing == 2:
            queue_lambda_result({"posted": True})  # its "already started" message
        described = run_to_end(engine, starter, f"fire-{firing}", json.dumps(schedule_input))
        assert described["status"] == "SUCCEEDED", described
        events = engine.get_execution_history(executionArn=described["executionArn"])["events"]
        sent.append([json.loads(e["taskScheduledEventDetails"]["parameters"])["Payload"]
                     for e in events if e["type"] == "TaskScheduled"
                     and e["taskScheduledEventDetails"]["resourceType"] == "lambda"])
    assert sent == [[{"name_run": schedule_input}],
                    [{"name_run": schedule_input},
                     {"already_started": {"name": "2027-03-14", "state_machine": NIGHTLY}}]]
    assert executions() == ["2027-03-14"]
    (run,) = engine.list_executions(stateMachineArn=NIGHTLY)["executions"]
    assert json.loads(engine.describe_execution(executionArn=run["executionArn"])["input"]) == {
        "date": "2027-03-14"}


# --- a manual start: the same rule, applied to now


def executions() -> list[str]:
    found = boto3.client("stepfunctions").list_executions(stateMachineArn=NIGHTLY)["executions"]
    return sorted(e["name"] for e in found)


def test_a_morning_start_in_tokyo_takes_its_own_date_not_the_coming_night_s(
        aws, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path / "deploy.toml", timezone=TOKYO, schedule="cron(0 3 * * ? *)")
    assert setup_aws.main(["--config", str(config)]) == 0
    capsys.readouterr()

    # 09:30 in Tokyo on 15 March is 00:30Z: the UTC date is 15 March too, but the run
    # scheduled for 03:00 in Tokyo on the 16th fires at 18:00Z on the 15th.
    monkeypatch.setattr(deploy.names, "now",
                        lambda: dt.datetime(2027, 3, 15, 0, 30, tzinfo=UTC))
    assert setup_aws.main(["--config", str(config), "--start"]) == 0
    out = capsys.readouterr().out
    assert "run for 2027-03-15: today in Asia/Tokyo" in out and "started " in out
    coming_night = name_of(fire_time(dt.date(2027, 3, 16), 3, 0, TOKYO), TOKYO)
    assert fire_time(dt.date(2027, 3, 16), 3, 0, TOKYO) == "2027-03-15T18:00:00Z"
    assert executions() == ["2027-03-15"] and coming_night == "2027-03-16"

    # That morning's scheduled run (03:00 in Tokyo, 18:00Z the day before) had the same date:
    # a second start says so and starts nothing.
    assert name_of(fire_time(dt.date(2027, 3, 15), 3, 0, TOKYO), TOKYO) == "2027-03-15"
    assert setup_aws.main(["--config", str(config), "--start"]) == 0
    out = capsys.readouterr().out
    assert "not started: the run for 2027-03-15 exists already (RUNNING)" in out
    assert executions() == ["2027-03-15"]


def test_an_evening_start_in_new_york_is_not_the_next_night_s_run(aws, tmp_path, monkeypatch,
                                                                   capsys):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path / "deploy.toml", timezone=NEW_YORK,
                          schedule="cron(30 19 * * ? *)")
    assert setup_aws.main(["--config", str(config)]) == 0
    # 21:00 EST on 13 March is 02:00Z on the 14th
    monkeypatch.setattr(deploy.names, "now", lambda: dt.datetime(2027, 3, 14, 2, 0, tzinfo=UTC))
    assert setup_aws.main(["--config", str(config), "--start"]) == 0
    assert setup_aws.main(["--config", str(config), "--start", "--date", "2027-03-14"]) == 0
    assert executions() == ["2027-03-13", "2027-03-14"]
    assert "started " in capsys.readouterr().out
