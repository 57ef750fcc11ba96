"""Every setting AWS or the nightly run would refuse later is refused before the first AWS
call, in a real run and in --dry-run: one line on stderr, exit 1, nothing created."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from aws_helpers import inventory, set_fake_aws_env, write_config

import deploy
import setup_aws


@pytest.fixture
def aws_calls(monkeypatch) -> list[str]:
    """Every Aws() setup makes: the first AWS call comes with it."""
    made: list[str] = []
    real = setup_aws.Aws

    def recorded(region=""):
        made.append(region)
        return real(region)

    monkeypatch.setattr(setup_aws, "Aws", recorded)
    return made


def count(found: dict[str, list[str]]) -> int:
    return sum(len(names) for names in found.values())


BAD_SETTINGS = [
    ({"schedule": "cron(0 3 * * *)"}, "cron takes six fields"),
    ({"schedule": "every night"}, "schedule 'every night': use cron("),
    ({"schedule": "cron(0 3 * * * *)"}, "exactly one of day-of-month and day-of-week must be '?'"),
    ({"schedule": "cron(0 3 ? * ? *)"}, "exactly one of day-of-month and day-of-week must be '?'"),
    ({"schedule": "cron(0 27 * * ? *)"}, "hours field '27': 27 is outside 0-23"),
    ({"schedule": "rate(1 days)"}, "write rate(1 day)"),
    ({"schedule": "rate(0 hours)"}, "rate takes a positive whole number"),
    ({"schedule": "cron(0 3 30 2 ? *)"}, "fires on no days in the next two years"),
    ({"schedule": "cron(0 3 1 1 ? *)"}, "the missed-night alarm can watch at most 7 days"),
    ({"timezone": "Europe/Berln"}, "timezone 'Europe/Berln' is not an IANA time zone"),
    ({"compute_type": "BUILD_GENERAL1_HUGE"}, "compute_type 'BUILD_GENERAL1_HUGE': use one of"),
    ({"image": "ubuntu:22.04"}, "image 'ubuntu:22.04': buildspec.yml asks for Python 3.11"),
    ({"ecr_image": "nightly-copy:latest"}, "ecr_image 'nightly-copy:latest': use an ECR image URI"),
    ({"lambda_runtime": "python3.9"}, "lambda_runtime 'python3.9': use one of python3.11"),
    ({"lambda_runtime": "nodejs20.x"}, "lambda_runtime 'nodejs20.x'"),
    ({"tables": ["public.orders; DROP TABLE x; --"]},
     "'orders; DROP TABLE x; --' is not a plain SQL name"),
    ({"tables": ["public.a", "public.b,public.c"]}, "holds 2 names; give one table per list item"),
    ({"tables": ['"unclosed']}, "unclosed quote"),
    ({"tables": ["a.b.c"]}, "at most schema.table"),
    ({"tables": ["public.a", "public.${ProjectName}"]},
     "tables: 'public.${ProjectName}' contains '${'"),
    ({"branch": "release-${JobName}"}, "branch: 'release-${JobName}' contains '${'"),
    # a time a spring-forward skips: Scheduler skips that night's run
    ({"schedule": "cron(30 2 * * ? *)", "timezone": "Europe/Berlin"},
     "schedule 'cron(30 2 * * ? *)' in Europe/Berlin: 02:30 does not exist on "),
    ({"schedule": "cron(0 2 ? * SUN *)", "timezone": "America/New_York"},
     "(the clocks jump from 02:00 to 03:00) and EventBridge Scheduler skips that night's run: "
     "use 01:59 instead, the nearest time every night has"),
    ({"schedule": "rate(1 day)", "rate_start_time": "3am"},
     "rate_start_time '3am': write a local time as HH:MM, e.g. 03:00"),
    # names AWS refuses, refused before anything is created
    ({"prefix": "n"}, "prefix 'n' is shorter than 2 characters, the least CodeBuild and ECR take"),
    ({"prefix": "nightly-"}, "prefix 'nightly-' ends in '-' or has '--', which ECR's"),
    ({"prefix": "nightly--copy"}, "prefix 'nightly--copy' ends in '-' or has '--'"),
    ({"prefix": "aws-copy"}, "prefix 'aws-copy' starts with 'aws' or 'ssm', which "
                             "Parameter Store refuses"),
    ({"prefix": "ssm-copy"}, "prefix 'ssm-copy' starts with 'aws' or 'ssm'"),
    ({"prefix": "default"}, "prefix 'default' is the name of EventBridge Scheduler's own "
                            "schedule group"),
    ({"prefix": "Nightly"}, "prefix 'Nightly': use 1-32 lowercase letters"),
]


@pytest.mark.parametrize("dry_run", [False, True], ids=["setup", "dry-run"])
@pytest.mark.parametrize("overrides, message", BAD_SETTINGS,
                         ids=[m for _, m in BAD_SETTINGS])
def test_a_bad_setting_is_one_line_and_nothing_is_created(aws, aws_calls, tmp_path, monkeypatch,
                                                          capsys, overrides, message, dry_run):
    monkeypatch.chdir(tmp_path)
    if "tables" in overrides:  # the weights in the config must name listed tables
        overrides = {**overrides, "tables": overrides["tables"] + ["public.a", "public.b"]}
        overrides["tables"] = list(dict.fromkeys(overrides["tables"]))
    config = write_config(tmp_path / "deploy.toml", **overrides)
    before = inventory("nightly-copy")
    code = setup_aws.main(["--config", str(config), *(["--dry-run"] if dry_run else [])])
    captured = capsys.readouterr()
    assert code == 1 and captured.err.count("\n") == 1, captured.err
    assert message in captured.err and captured.err.startswith("error: ")
    assert aws_calls == []  # refused before the first AWS call
    assert count(inventory("nightly-copy")) == count(before) == 0


def test_a_bad_setting_changes_nothing_in_a_deployment(aws, aws_calls, tmp_path, monkeypatch,
                                                       capsys):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path / "deploy.toml")
    assert setup_aws.main(["--config", str(config)]) == 0
    before = inventory("nightly-copy")
    assert count(before) > 10
    bad = write_config(tmp_path / "bad.toml", compute_type="BUILD_GENERAL1_HUGE")
    capsys.readouterr()
    assert setup_aws.main(["--config", str(bad)]) == 1
    assert "compute_type" in capsys.readouterr().err
    assert inventory("nightly-copy") == before
    assert len(aws_calls) == 1  # the good setup's


def test_start_checks_the_time_zone_before_any_aws_call(aws_calls, tmp_path, capsys):
    config = write_config(tmp_path / "deploy.toml", timezone="Mars/Olympus_Mons")
    assert setup_aws.main(["--config", str(config), "--start"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "timezone 'Mars/Olympus_Mons'" in err
    assert aws_calls == []


@pytest.mark.parametrize("overrides", [
    {"schedule": "cron(0 3 ? * MON-FRI *)", "timezone": "Europe/Berlin"},
    {"schedule": "cron(15 2 ? * 6L *)", "build_timeout_minutes": 30},  # last Friday: 35 days
    {"schedule": "rate(12 hours)", "tables": ['"Mixed Case"', 'sales."a,b"', "public.a",
                                              "public.b"]},
    {"schedule": "cron(*/30 1-5 ? * MON-FRI *)"},
], ids=["weekdays", "monthly-refused", "rate-and-quoted-names", "every-half-hour-at-night"])
def test_good_settings_pass(tmp_path, overrides):
    import argparse

    settings = deploy.load_settings(argparse.Namespace(
        config=write_config(tmp_path / "deploy.toml", **overrides)))
    if "6L" in overrides["schedule"]:  # monthly: longer than an alarm can watch
        with pytest.raises(deploy.SettingsError, match="up to 35 days between runs"):
            settings.validate_for_setup()
        return
    settings.validate_for_setup()
    assert 3600 <= settings.missed_run_window_seconds() <= 7 * 86400


def first_spring_forward(zone: str) -> dt.date:
    """The first day from today on whose night the zone's clocks jump forward."""
    tz = ZoneInfo(zone)
    day = dt.datetime.now(dt.UTC).date()
    while True:
        start = dt.datetime(day.year, day.month, day.day, tzinfo=tz)
        if (start + dt.timedelta(days=1)).utcoffset() > start.utcoffset():
            return day
        day += dt.timedelta(days=1)


@pytest.mark.parametrize("schedule, zone, safe", [
    ("cron(30 2 * * ? *)", "Europe/Berlin", "03:00"),  # 02:00 -> 03:00, nearer after
    ("cron(5 2 * * ? *)", "Europe/Berlin", "01:59"),  # nearer before the jump
    ("cron(15 2 * * ? *)", "Australia/Lord_Howe", "02:30"),  # half an hour: 02:00 -> 02:30
])
def test_a_time_a_spring_forward_skips_names_the_date_and_the_nearest_safe_time(
        tmp_path, schedule, zone, safe):
    import argparse

    settings = deploy.load_settings(argparse.Namespace(config=write_config(
        tmp_path / "deploy.toml", schedule=schedule, timezone=zone)))
    with pytest.raises(deploy.SettingsError) as refused:
        settings.validate_for_setup()
    message = str(refused.value)
    assert f" does not exist on {first_spring_forward(zone).isoformat()} " in message
    assert message.endswith(f"use {safe} instead, the nearest time every night has")


@pytest.mark.parametrize("schedule, zone", [
    ("cron(30 2 * * ? *)", "Asia/Tokyo"),  # no DST
    ("cron(30 2 * * ? *)", "UTC"),
    ("cron(30 2 ? * MON-SAT *)", "Europe/Berlin"),  # Berlin's clocks change on Sundays
    ("cron(30 1 * * ? *)", "Europe/Berlin"),
])
def test_a_time_every_night_has_passes(tmp_path, schedule, zone):
    import argparse

    deploy.load_settings(argparse.Namespace(config=write_config(
        tmp_path / "deploy.toml", schedule=schedule, timezone=zone))).validate_for_setup()


TLS_SETTINGS = [
    ('sslmode = "verify-full"', "[source] sslmode verify-full needs sslrootcert: the CA file"),
    ('sslmode = "verify"',
     "[source] sslmode 'verify' is not one of disable, allow, prefer, require, verify-ca, verify-full"),
]


@pytest.mark.parametrize("line, message", TLS_SETTINGS, ids=[m for _, m in TLS_SETTINGS])
def test_a_source_tls_setting_the_build_cannot_use_is_refused(aws, aws_calls, tmp_path, monkeypatch,
                                                              capsys, line, message):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path / "deploy.toml")
    config.write_text(config.read_text().replace('user = "reader"', f'user = "reader"\n{line}'))
    code = setup_aws.main(["--config", str(config), "--dry-run"])
    captured = capsys.readouterr()
    assert code == 1 and captured.err.count("\n") == 1, captured.err
    assert message in captured.err and captured.err.startswith("error: ")
    assert aws_calls == [] and count(inventory("nightly-copy")) == 0


@pytest.mark.parametrize("host, sslmode, sslrootcert", [
    ("shop.cluster-abc123.eu-west-1.rds.amazonaws.com", "verify-full", "rds-global-bundle.pem"),
    ("shop.abc123.cn-north-1.rds.amazonaws.com.cn", "verify-full", "rds-global-bundle.pem"),
    ("127.0.0.1", "require", "default"),
])
def test_rds_and_aurora_hosts_are_verified_by_default(aws, tmp_path, monkeypatch, capsys,
                                                      host, sslmode, sslrootcert):
    import boto3

    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path / "deploy.toml")
    config.write_text(config.read_text().replace('host = "127.0.0.1"', f'host = "{host}"'))
    assert setup_aws.main(["--config", str(config)]) == 0, capsys.readouterr().err
    ssm = boto3.client("ssm")
    stored = {name: ssm.get_parameter(Name=f"/nightly-copy/source/{name}")["Parameter"]["Value"]
              for name in ("sslmode", "sslrootcert")}
    assert stored == {"sslmode": sslmode, "sslrootcert": sslrootcert}
    assert sslrootcert in ("default", deploy.settings.RDS_CA_BUNDLE)


@pytest.mark.parametrize("region, message", [
    ("eu-west-9", "AWS region 'eu-west-9' is not a region AWS has (known: eu-central-1,"),
    ("Frankfurt", "AWS region 'Frankfurt' is not a region AWS has"),
    # every ARN here is arn:aws:..., every address amazonaws.com: other partitions are refused
    ("cn-north-1", "error: AWS region cn-north-1 is in the aws-cn partition: this deployment "
                   "supports the aws partition only (arn:aws:, amazonaws.com)\n"),
    ("us-gov-west-1", "AWS region us-gov-west-1 is in the aws-us-gov partition"),
])
def test_a_wrong_region_is_a_region_error_not_a_credential_error(aws, tmp_path, monkeypatch,
                                                                 capsys, region, message):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path / "deploy.toml", region=region)
    code = setup_aws.main(["--config", str(config), "--dry-run"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and message in err, err
    assert "credential" not in err.lower()
    assert count(inventory("nightly-copy")) == 0


def test_credentials_of_another_partition_are_refused_naming_it(aws, tmp_path, monkeypatch,
                                                                capsys):
    import botocore.client

    real = botocore.client.BaseClient._make_api_call

    def identity(self, operation, params):
        if operation == "GetCallerIdentity":
            return {"Account": "123456789012", "UserId": "AIDA",
                    "Arn": "arn:aws-cn:iam::123456789012:user/installer"}
        return real(self, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", identity)
    monkeypatch.chdir(tmp_path)
    code = setup_aws.main(["--config", str(write_config(tmp_path / "deploy.toml"))])
    err = capsys.readouterr().err
    assert code == 1 and err == (
        "error: the AWS account 123456789012 is in the aws-cn partition: this deployment "
        "supports the aws partition only (arn:aws:, amazonaws.com)\n")
    assert count(inventory("nightly-copy")) == 0


def test_teardown_still_takes_a_prefix_setup_now_refuses(aws, tmp_path, monkeypatch, capsys):
    """An older setup may have made part of a deployment under such a prefix before AWS
    refused a name: teardown must still remove it."""
    import boto3

    import teardown_aws

    monkeypatch.chdir(tmp_path)
    boto3.client("ssm").put_parameter(Name="/x/source/host", Value="db", Type="String",
                                      Tags=[{"Key": "project", "Value": "x"}])
    config = write_config(tmp_path / "deploy.toml", prefix="x")
    assert teardown_aws.main(["--config", str(config)]) == 0
    assert "removed  SSM parameter /x/source/host" in capsys.readouterr().out


def test_an_unreachable_region_endpoint_is_a_region_error(tmp_path, monkeypatch, capsys):
    from aws_helpers import free_port

    set_fake_aws_env(monkeypatch, endpoint=f"http://127.0.0.1:{free_port()}")  # nothing listens
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path / "deploy.toml")
    code = setup_aws.main(["--config", str(config), "--dry-run"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert "error: AWS region us-east-1: Could not connect to the endpoint URL" in err, err
    assert "credential" not in err.lower()


def test_a_table_list_too_long_for_a_night_s_data_is_refused_before_anything_is_created(
        aws, tmp_path, monkeypatch, capsys):
    """The jobs' results list every table once: past Step Functions' 256 KB a night ends in
    States.DataLimitExceeded, which no Catch takes. Setup refuses such a list first."""
    monkeypatch.chdir(tmp_path)
    tables = ["public.a", "public.b"] + [f"sales.customer_order_lines_{n:05d}" for n in range(6000)]
    config = write_config(tmp_path / "deploy.toml", tables=tables)
    code = setup_aws.main(["--config", str(config)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith("error: tables: a night's data would take up to ")
    assert "KB of Step Functions' 256 KB" in err and "split them over two prefixes" in err
    assert count(inventory("nightly-copy")) == 0


# Rules (rules_file) AWS or the copier would refuse, refused before the first AWS call: the
# copier's own reader for their form, Parameter Store's size and what it reserves, and a table
# the rules name that is not copied (its name misspelt, the table meant would go unmasked).
BAD_RULES = [
    ('[tables."public.a"\ncolumns = { email = "hash" }\n', "rules.toml: not TOML: "),
    ('[tables."public.a"]\ncolumns = { email = "blur" }\n',
     """[tables."public.a"]: column 'email': unknown action 'blur' (one of keep, null, drop, hash"""),
    ('[tables."public.a"]\nwhere = "true; DELETE FROM a"\n',
     "where: one SQL expression, without ';' or comments"),
    ('[tables."public.custmers"]\ncolumns = { email = "hash" }\n',
     """[tables."public.custmers"] is not one of tables: its rules would apply to nothing"""),
    ('[tables."public.a"]\ncolumns = { email = "hash" }\n# ' + "x" * 8200 + "\n",
     "8252 bytes, more than the 8192 a Parameter Store parameter holds (Advanced tier)"),
    ("[tables.\"public.a\"]\ncolumns = { m = { sql = \"'{{1,2},{3,4}}'::int[]\" } }\n",
     "Parameter Store refuses a value with '{{...}}' in it"),
    ("# nothing yet\n", "rules.toml: no rules in it"),
]


@pytest.mark.parametrize("dry_run", [False, True], ids=["setup", "dry-run"])
@pytest.mark.parametrize("text, message", BAD_RULES, ids=[m[-40:] for _, m in BAD_RULES])
def test_bad_rules_are_one_line_and_nothing_is_created(aws, aws_calls, tmp_path, monkeypatch,
                                                       capsys, text, message, dry_run):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rules.toml").write_text(text)
    config = write_config(tmp_path / "deploy.toml", rules_file="rules.toml")
    code = setup_aws.main(["--config", str(config), *(["--dry-run"] if dry_run else [])])
    captured = capsys.readouterr()
    assert code == 1 and captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith(f"error: rules_file {tmp_path / 'rules.toml'}")
    assert message in captured.err
    assert aws_calls == [] and count(inventory("nightly-copy")) == 0


def test_a_rules_file_that_is_not_there_is_one_line(aws, aws_calls, tmp_path, monkeypatch,
                                                    capsys):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path / "deploy.toml", rules_file="rules/masking.toml")
    assert setup_aws.main(["--config", str(config), "--dry-run"]) == 1
    assert capsys.readouterr().err == (f"error: rules_file {tmp_path / 'rules' / 'masking.toml'}: "
                                       "cannot read it: No such file or directory\n")
    assert aws_calls == []
