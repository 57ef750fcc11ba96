"""The alarms: a missed night (no successful run in a window a little longer than the
schedule's longest gap), failed runs, their recovery messages, and the second channel."""

from __future__ import annotations

import boto3
import pytest
from aws_helpers import REGION, write_config

import setup_aws

ACCOUNT = "123456789012"
TOPIC = f"arn:aws:sns:{REGION}:{ACCOUNT}:nightly-copy-alarms"
MACHINE = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:nightly-copy"


def alarm(name: str) -> dict:
    (found,) = boto3.client("cloudwatch").describe_alarms(AlarmNames=[name])["MetricAlarms"]
    return found


@pytest.mark.parametrize("schedule, timezone, hours", [
    # 24 h between runs, plus the execution timeout: two jobs (the load, then the publish) of
    # (90 + 60 + 10) min each, 60 min more: 6 h 20 min
    ("cron(0 3 * * ? *)", "UTC", 31),
    # 19:30 in New York: 25 h from the night before the autumn change to the next
    ("cron(30 19 * * ? *)", "America/New_York", 32),
    # weekdays only: Friday to Monday is 72 h (73 across a DST change)
    ("cron(0 2 ? * MON-FRI *)", "Europe/Berlin", 80),
])
def test_the_missed_night_alarm_waits_a_little_longer_than_the_schedule(aws, tmp_path, schedule,
                                                                       timezone, hours):
    config = write_config(tmp_path / "deploy.toml", schedule=schedule, timezone=timezone)
    assert setup_aws.main(["--config", str(config)]) == 0
    missed = alarm("nightly-copy-no-successful-run")
    assert (missed["Namespace"], missed["MetricName"], missed["Statistic"]) == (
        "AWS/States", "ExecutionsSucceeded", "Sum")
    assert missed["Dimensions"] == [{"Name": "StateMachineArn", "Value": MACHINE}]
    assert missed["Period"] == hours * 3600 and missed["EvaluationPeriods"] == 1
    assert (missed["ComparisonOperator"], missed["Threshold"]) == ("LessThanThreshold", 1.0)
    assert missed["TreatMissingData"] == "breaching"  # no run at all is no data
    assert missed["AlarmActions"] == missed["OKActions"] == [TOPIC]
    assert f"last {hours} hours" in missed["AlarmDescription"]


def watched(found: dict) -> dict[str, tuple[str, str, str]]:
    """Metric id -> (namespace, metric name, dimension value) of a metric-math alarm."""
    return {m["Id"]: (m["MetricStat"]["Metric"]["Namespace"],
                      m["MetricStat"]["Metric"]["MetricName"],
                      m["MetricStat"]["Metric"]["Dimensions"][0]["Value"])
            for m in found["Metrics"] if "MetricStat" in m}


def test_the_failed_run_alarm_is_back_to_normal_only_once_a_run_succeeded(aws, tmp_path):
    """With 5-minute periods and missing data not breaching, the alarm went back to OK, and
    its OK action said "back to normal", 5 minutes after every failure. Now a period without
    any run has no data point, which keeps the alarm's state (TreatMissingData ignore), and
    only a period with a successful run and no failure has the 0 that makes it OK."""
    assert setup_aws.main(["--config", str(write_config(tmp_path / "deploy.toml"))]) == 0
    failed = alarm("nightly-copy-run-failed")
    assert failed["AlarmActions"] == failed["OKActions"] == [TOPIC]
    assert failed["TreatMissingData"] == "ignore"
    starter = f"{MACHINE}-starter"
    assert watched(failed) == {
        "failed": ("AWS/States", "ExecutionsFailed", MACHINE),
        "timedout": ("AWS/States", "ExecutionsTimedOut", MACHINE),
        "aborted": ("AWS/States", "ExecutionsAborted", MACHINE),
        "starterfailed": ("AWS/States", "ExecutionsFailed", starter),
        "succeeded": ("AWS/States", "ExecutionsSucceeded", MACHINE)}
    (returned,) = [m for m in failed["Metrics"] if m.get("ReturnData")]
    assert returned["Expression"] == (
        "IF(FILL(failed, 0) + FILL(timedout, 0) + FILL(aborted, 0) + FILL(starterfailed, 0)"
        " >= 1, 1, 0 * succeeded)")
    assert (failed["ComparisonOperator"], failed["Threshold"]) == (
        "GreaterThanOrEqualToThreshold", 1.0)
    assert "back to normal only once a run has succeeded since" in failed["AlarmDescription"]

    errors = alarm("nightly-copy-notify-errors")
    assert errors["TreatMissingData"] == "ignore"
    assert watched(errors) == {
        "errors": ("AWS/Lambda", "Errors", "nightly-copy-notify"),
        "invocations": ("AWS/Lambda", "Invocations", "nightly-copy-notify")}
    (returned,) = [m for m in errors["Metrics"] if m.get("ReturnData")]
    assert returned["Expression"] == "IF(FILL(errors, 0) >= 1, 1, 0 * invocations)"


def email_subscriptions() -> list[str]:
    return sorted(s["Endpoint"] for s in boto3.client("sns").list_subscriptions()["Subscriptions"]
                  if s["Protocol"] == "email")


def test_e_mail_is_a_second_channel_listed_in_dry_run_idempotent_and_torn_down(aws, tmp_path,
                                                                               capsys):
    from aws_helpers import inventory, nothing_left, outcomes

    import teardown_aws

    config = write_config(tmp_path / "deploy.toml", alarm_emails=["ops@example.com"])
    flags = ["--config", str(config), "--alarm-emails", "ops@example.com,dba@example.org"]
    assert setup_aws.main([*flags, "--dry-run"]) == 2  # changes pending
    planned = outcomes(capsys.readouterr().out)
    assert planned["SNS e-mail subscription ops@example.com"] == "would be created"
    assert planned["SNS e-mail subscription dba@example.org"] == "would be created"
    assert email_subscriptions() == []

    assert setup_aws.main(flags) == 0
    assert email_subscriptions() == ["dba@example.org", "ops@example.com"]
    capsys.readouterr()
    assert setup_aws.main(flags) == 0
    second = outcomes(capsys.readouterr().out)
    assert second["SNS e-mail subscription ops@example.com"] == "unchanged"
    assert set(second.values()) == {"unchanged"}
    assert email_subscriptions() == ["dba@example.org", "ops@example.com"]

    # the notifier's own failures go to the topic too: e-mail hears when Slack cannot
    errors = alarm("nightly-copy-notify-errors")
    assert watched(errors)["errors"] == ("AWS/Lambda", "Errors", "nightly-copy-notify")
    assert errors["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert errors["AlarmActions"] == errors["OKActions"] == [TOPIC]

    # the address given only by flag goes with the topic
    assert teardown_aws.main(["--config", str(config), "--remove-secrets"]) == 0
    assert email_subscriptions() == []
    assert inventory("nightly-copy") == nothing_left("nightly-copy")


def test_a_bad_e_mail_address_is_refused_before_aws(aws, tmp_path, capsys):
    config = write_config(tmp_path / "deploy.toml", alarm_emails=["ops at example.com"])
    assert setup_aws.main(["--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err == "error: alarm_emails: 'ops at example.com' is not an e-mail address\n"
    assert email_subscriptions() == []
