"""The Transform step: another state machine, run after a successful publish and waited for
(states:startExecution.sync:2), given the run's name, date and tables. Its outcome and a link
reach Slack; its failure fails the night. Without the setting the state machine is as before."""

from __future__ import annotations

import argparse
import json

import boto3
import pytest
import test_state_machine as sm
from aws_helpers import (
    MOTO_CONFIG,
    REGION,
    TABLES,
    outcomes,
    set_fake_aws_env,
    with_canned_jobs,
    write_config,
)
from moto import mock_aws

import deploy
import notify_lambda
import setup_aws

ACCOUNT = "123456789012"
CHILD = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:reporting-transform"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/transform"


@pytest.fixture
def engine(monkeypatch):
    set_fake_aws_env(monkeypatch)
    with mock_aws(config={**MOTO_CONFIG, "stepfunctions": {"execute_state_machine": True}}):
        yield deploy.Aws(REGION)


def child(sfn, states: dict) -> str:
    """The user's transform state machine (dbt, a stored procedure, ...), here a stand-in."""
    definition = {"StartAt": next(iter(states)), "States": states}
    return sfn.create_state_machine(name="reporting-transform", roleArn=ROLE,
                                    definition=json.dumps(definition))["stateMachineArn"]


TRANSFORMS = {"Transform": {"Type": "Pass", "Parameters": {"transformed.$": "$.tables"},
                            "End": True}}
BREAKS = {"Transform": {"Type": "Fail", "Error": "DbtTestFailed",
                        "Cause": "3 tests failed in models/orders"}}


def rendered(aws, transform: str = "", jobs: int = 2, tables=TABLES) -> dict:
    settings = deploy.Settings(tables=list(tables), jobs=jobs, github_url="https://x/y.git",
                               transform_state_machine=transform)
    plan = deploy.plan_jobs(settings, lambda line: None)
    return deploy.Deployment(settings, aws, deploy.Options(), plan).state_machine_definition()


def night(aws, transform_states: dict, failing: set[str], name: str) -> tuple[dict, dict]:
    sfn = boto3.client("stepfunctions")
    arn = child(sfn, transform_states)
    definition = with_canned_jobs(rendered(aws, arn), failing, sm.canned_build)
    machine = sm.create(sfn, "nightly-copy", definition)
    described = sm.run_to_end(sfn, machine, name, json.dumps({"date": name}))
    return described, sm.summary_sent(sm.history(sfn, described["executionArn"]))


def transform_runs(sfn) -> list[dict]:
    return sfn.list_executions(stateMachineArn=CHILD)["executions"]


# --- the definition


def test_without_the_setting_the_state_machine_is_as_before(engine):
    definition = rendered(engine)
    assert not [name for name, _ in sm.all_states(definition) if "Transform" in name]
    assert "transform.$" not in definition["States"]["Send summary"]["Parameters"]["Payload"]


def test_with_it_the_transform_runs_after_the_publish_and_before_the_summary(engine, tmp_path):
    definition = rendered(engine, CHILD)
    states = definition["States"]
    assert states["Count failed jobs"]["Next"] == "Transform?"
    (task,) = [s for name, s in sm.all_states(definition) if name == "Transform"]
    assert task["Resource"] == "arn:aws:states:::states:startExecution.sync:2"
    assert task["Parameters"]["StateMachineArn"] == CHILD
    assert task["Parameters"]["Name.$"] == "$.run"  # one transform per run
    assert task["Parameters"]["Input"]["tables"] == TABLES
    assert task["TimeoutSeconds"] == 3600
    result = sm.statelint(definition, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_its_role_may_start_this_state_machine_only_and_follow_its_runs(engine, tmp_path,
                                                                        monkeypatch, capsys):
    child(boto3.client("stepfunctions"), TRANSFORMS)
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path / "deploy.toml", transform_state_machine=CHILD)
    assert setup_aws.main(["--config", str(config)]) == 0, capsys.readouterr().err
    document = boto3.client("iam").get_role_policy(RoleName="nightly-copy-states",
                                                   PolicyName="permissions")["PolicyDocument"]
    granted = {action: statement["Resource"] for statement in document["Statement"]
               for action in statement["Action"]}
    assert granted["states:StartExecution"] == [CHILD]
    executions = [CHILD.replace(":stateMachine:", ":execution:") + ":*"]
    assert granted["states:DescribeExecution"] == granted["states:StopExecution"] == executions
    rule = f"arn:aws:events:{REGION}:{ACCOUNT}:rule/StepFunctionsGetEventsForStepFunctionsExecutionRule"
    assert granted["events:PutRule"] == [rule]
    # the night may take the transform's time longer: the missed-night alarm waits for it
    settings = deploy.load_settings(argparse.Namespace(config=config))
    assert settings.execution_timeout_seconds == 2 * (90 + 60 + 10) * 60 + 3600 + 3600
    capsys.readouterr()
    assert setup_aws.main(["--config", str(config)]) == 0
    assert set(outcomes(capsys.readouterr().out).values()) == {"unchanged"}


# --- settings


@pytest.mark.parametrize("arn, message", [
    ("reporting-transform", "transform_state_machine 'reporting-transform': use a state "
                            "machine's ARN, arn:aws:states:<region>:<account>:stateMachine:<name>"),
    (f"arn:aws-cn:states:cn-north-1:{ACCOUNT}:stateMachine:t",
     "transform_state_machine is in the aws-cn partition"),
    (f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:nightly-copy",
     "transform_state_machine 'nightly-copy' is this deployment's own state machine"),
])
def test_a_transform_setting_that_cannot_work_is_refused_before_aws(tmp_path, capsys,
                                                                    monkeypatch, arn, message):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path / "deploy.toml", transform_state_machine=arn)
    assert setup_aws.main(["--config", str(config), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize("arn, message", [
    (CHILD, f"transform_state_machine {CHILD} does not exist"),
    (f"arn:aws:states:eu-west-1:{ACCOUNT}:stateMachine:t",
     f"not in this account and region ({ACCOUNT}, {REGION})"),
])
def test_a_transform_that_is_not_there_is_refused_before_anything_is_created(
        engine, tmp_path, capsys, monkeypatch, arn, message):
    from aws_helpers import inventory

    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path / "deploy.toml", transform_state_machine=arn)
    assert setup_aws.main(["--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert sum(len(names) for names in inventory("nightly-copy").values()) == 0


# --- nights, in moto's engine


def test_a_good_night_runs_the_transform_with_the_run_s_name_date_and_tables(engine):
    described, summary = night(engine, TRANSFORMS, set(), "2026-11-27")
    assert described["status"] == "SUCCEEDED"
    (run,) = transform_runs(boto3.client("stepfunctions"))
    assert run["name"] == "2026-11-27" and run["status"] == "SUCCEEDED"
    given = json.loads(boto3.client("stepfunctions").describe_execution(
        executionArn=run["executionArn"])["input"])
    assert given == {"run": "2026-11-27", "date": "2026-11-27", "tables": TABLES,
                     "AWS_STEP_FUNCTIONS_STARTED_BY_EXECUTION_ID": described["executionArn"]}
    transform = summary["transform"]
    assert (transform["job"], transform["status"]) == ("transform", "SUCCEEDED")
    assert transform["execution_arn"] == run["executionArn"]
    assert "Output" not in transform  # the child's output is its own: never in the data
    message, failed = notify_lambda.summary_message(summary)
    assert failed == 0
    assert message["blocks"][0]["text"]["text"].endswith("all 2 jobs succeeded, the transform too")
    assert notify_lambda.execution_console_url(run["executionArn"]) in json.dumps(message)


def test_a_failed_transform_fails_the_night_and_links_to_its_run(engine):
    described, summary = night(engine, BREAKS, set(), "2026-11-28")
    assert (described["status"], described["error"]) == ("FAILED", "CopyJobsFailed")
    (run,) = transform_runs(boto3.client("stepfunctions"))
    transform = summary["transform"]
    assert transform == {"job": "transform", "status": "FAILED", "error": "States.TaskFailed",
                         "execution_arn": run["executionArn"]}
    message, failed = notify_lambda.summary_message(summary)
    assert failed == 1
    assert message["blocks"][0]["text"]["text"].endswith(
        "all 2 jobs succeeded, the transform failed")
    assert notify_lambda.execution_console_url(run["executionArn"]) in json.dumps(message)


def test_a_night_whose_copy_failed_skips_the_transform(engine):
    described, summary = night(engine, TRANSFORMS, {"job-2"}, "2026-11-29")
    assert (described["status"], described["error"]) == ("FAILED", "CopyJobsFailed")
    assert transform_runs(boto3.client("stepfunctions")) == []
    assert summary["transform"] == {"job": "transform", "status": "SKIPPED"}
    message, failed = notify_lambda.summary_message(summary)
    assert failed == 1  # job-2, not the transform it never ran
    assert ":white_check_mark: *transform* SKIPPED" in json.dumps(message)
