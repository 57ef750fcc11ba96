"""setup_aws.py and teardown_aws.py under moto: in process, and as processes against moto_server."""

from __future__ import annotations

import base64
import io
import json
import shlex
import zipfile

import boto3
import botocore.client
import pytest
from aws_helpers import (
    REGION,
    ROOM_NOT_CHECKED,
    ROOT,
    SECRETS,
    expected_inventory,
    inventory,
    needed_labels,
    nothing_left,
    outcomes,
    run_script,
    set_fake_aws_env,
    subprocess_env,
    write_config,
)
from botocore.exceptions import ClientError
from botocore.stub import Stubber

import deploy
import setup_aws
import teardown_aws

ACCOUNT = "123456789012"  # moto's default account


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no deploy.toml from the working tree
    return write_config(tmp_path / "deploy.toml")


def run(main, argv, capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def policy_of(role: str) -> dict:
    return boto3.client("iam").get_role_policy(RoleName=role, PolicyName="permissions")[
        "PolicyDocument"]


def statements_by_action(document: dict) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for statement in document["Statement"]:
        for action in statement["Action"]:
            found.setdefault(action, []).extend(statement["Resource"])
    return found


def assert_deployed_configuration(prefix: str = "nightly-copy") -> None:
    """What setup must have created, checked against the settings in write_config."""
    ssm = boto3.client("ssm")
    assert ssm.get_parameter(Name=f"/{prefix}/source/host")["Parameter"]["Value"] == "127.0.0.1"
    assert ssm.get_parameter(Name=f"/{prefix}/source/port")["Parameter"]["Value"] == "1"
    assert ssm.get_parameter(Name=f"/{prefix}/target/port")["Parameter"]["Value"] == "5432"
    assert ssm.get_parameter(Name=f"/{prefix}/target/sslmode")["Parameter"]["Value"] == (
        "verify-full")
    for name, env_var in ((f"/{prefix}/source/password", "COPIER_SOURCE_PASSWORD"),
                          (f"/{prefix}/target/password", "COPIER_TARGET_PASSWORD"),
                          (f"/{prefix}-notify/slack_webhook_url", "SLACK_WEBHOOK_URL")):
        parameter = ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]
        assert parameter["Type"] == "SecureString"
        assert parameter["Value"] == SECRETS[env_var]
    tags = ssm.list_tags_for_resource(ResourceType="Parameter",
                                      ResourceId=f"/{prefix}/target/host")["TagList"]
    assert {"Key": "project", "Value": prefix} in tags

    iam = boto3.client("iam")
    services = {"codebuild": "codebuild.amazonaws.com", "lambda": "lambda.amazonaws.com",
                "states": "states.amazonaws.com", "starter": "states.amazonaws.com",
                "scheduler": "scheduler.amazonaws.com"}
    for role, service in services.items():
        found = iam.get_role(RoleName=f"{prefix}-{role}")["Role"]
        (trust,) = found["AssumeRolePolicyDocument"]["Statement"]
        assert trust["Principal"] == {"Service": service}
        assert {"Key": "project", "Value": prefix} in iam.list_role_tags(
            RoleName=f"{prefix}-{role}")["Tags"]
        resources = [r for s in policy_of(f"{prefix}-{role}")["Statement"] for r in s["Resource"]]
        assert "*" not in resources, role  # no VPC and no ECR image: everything is scoped

    project_arn = f"arn:aws:codebuild:{REGION}:{ACCOUNT}:project/{prefix}"
    states = statements_by_action(policy_of(f"{prefix}-states"))
    for action in ("codebuild:StartBuild", "codebuild:StopBuild", "codebuild:BatchGetBuilds"):
        assert states[action] == [project_arn]
    rule = f"arn:aws:events:{REGION}:{ACCOUNT}:rule/StepFunctionsGetEventForCodeBuildStartBuildRule"
    for action in ("events:PutTargets", "events:PutRule", "events:DescribeRule"):
        assert states[action] == [rule]
    function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{prefix}-notify"
    assert function_arn in states["lambda:InvokeFunction"]
    machine_arn = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{prefix}"
    starter_arn = f"{machine_arn}-starter"
    assert statements_by_action(policy_of(f"{prefix}-starter")) == {
        "states:StartExecution": [machine_arn],  # and its Lambda names the run after the date
        "lambda:InvokeFunction": [function_arn, f"{function_arn}:*"]}
    assert statements_by_action(policy_of(f"{prefix}-scheduler")) == {
        "states:StartExecution": [starter_arn]}
    lambda_policy = statements_by_action(policy_of(f"{prefix}-lambda"))
    assert lambda_policy["ssm:GetParameter"] == [
        f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/{prefix}-notify/slack_webhook_url"]
    # the copier reads its whole path recursively: the webhook must lie outside that path
    codebuild_ssm = statements_by_action(policy_of(f"{prefix}-codebuild"))
    assert sorted(codebuild_ssm["ssm:GetParametersByPath"]) == [
        f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/{prefix}",
        f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/{prefix}/*"]
    webhook = ssm.get_parameter(Name=f"/{prefix}-notify/slack_webhook_url")["Parameter"]
    assert not webhook["Name"].startswith(f"/{prefix}/")

    (project,) = boto3.client("codebuild").batch_get_projects(names=[prefix])["projects"]
    assert project["source"]["type"] == "GITHUB"
    assert project["source"]["location"] == "https://github.com/example/nightly-copy.git"
    assert project["sourceVersion"] == "release"
    assert project["environment"]["image"] == "aws/codebuild/standard:7.0"
    assert project["environment"]["environmentVariables"] == [
        {"name": "COPIER_SSM_PREFIX", "value": f"/{prefix}/", "type": "PLAINTEXT"},
        # what a load job that starts too late for the run's snapshot names (moto_gaps'
        # default quota)
        {"name": "COPIER_BUILD_QUOTA", "type": "PLAINTEXT",
         "value": "20 concurrent builds for BUILD_GENERAL1_SMALL (Service Quotas: codebuild, "
                  "Concurrently running builds for Linux/Small environment)"}]
    assert ssm.get_parameter(Name=f"/{prefix}/target/storage")["Parameter"]["Value"] == "unknown"
    assert project["serviceRole"] == f"arn:aws:iam::{ACCOUNT}:role/{prefix}-codebuild"
    assert project["timeoutInMinutes"] == 90
    assert project["logsConfig"]["cloudWatchLogs"]["groupName"] == f"/aws/codebuild/{prefix}"
    assert {"key": "project", "value": prefix} in project["tags"]

    function = boto3.client("lambda").get_function(FunctionName=f"{prefix}-notify")
    configuration = function["Configuration"]
    assert configuration["Handler"] == "notify_lambda.handler"
    assert configuration["Runtime"] == "python3.12"
    assert configuration["Environment"]["Variables"] == {
        "WEBHOOK_PARAMETER": f"/{prefix}-notify/slack_webhook_url",
        "COPIER_LOG_GROUP": f"/aws/codebuild/{prefix}"}
    assert function["Tags"]["project"] == prefix
    zipped = deploy.resources.zip_notify_function("UTC")
    assert zipfile.ZipFile(io.BytesIO(zipped)).namelist() == ["notify_lambda.py", "runlog.py",
                                                              "tz/UTC"]
    assert configuration["CodeSha256"] == base64.b64encode(
        __import__("hashlib").sha256(zipped).digest()).decode()

    sfn = boto3.client("stepfunctions")
    machine = sfn.describe_state_machine(stateMachineArn=machine_arn)
    definition = json.loads(machine["definition"])
    branches = definition["States"][deploy.Names.copy_state]["Branches"]
    assert len(branches) == 3
    assert sorted(t for b in branches for t in b["States"][b["StartAt"]]["Parameters"][
        "EnvironmentVariablesOverride"][0]["Value"].split(",")) == sorted(
        ["public.a", "public.b", "public.c", "public.d", "public.e", "public.f", "public.g"])
    assert definition["States"]["Send summary"]["Parameters"]["FunctionName"] == function_arn
    assert machine["roleArn"] == f"arn:aws:iam::{ACCOUNT}:role/{prefix}-states"
    starter = json.loads(sfn.describe_state_machine(stateMachineArn=starter_arn)["definition"])
    assert starter["States"]["Start nightly copy"]["Parameters"]["StateMachineArn"] == machine_arn

    schedule = boto3.client("scheduler").get_schedule(GroupName=prefix, Name="nightly")
    assert schedule["ScheduleExpression"] == "cron(0 3 * * ? *)"
    assert schedule["ScheduleExpressionTimezone"] == "UTC"
    assert schedule["Target"]["Arn"] == starter_arn
    assert schedule["Target"]["RoleArn"] == f"arn:aws:iam::{ACCOUNT}:role/{prefix}-scheduler"
    assert json.loads(schedule["Target"]["Input"]) == {
        "scheduled_time": "<aws.scheduler.scheduled-time>", "timezone": "UTC"}

    topic_arn = f"arn:aws:sns:{REGION}:{ACCOUNT}:{prefix}-alarms"
    (alarm,) = boto3.client("cloudwatch").describe_alarms(
        AlarmNames=[f"{prefix}-run-failed"])["MetricAlarms"]
    assert alarm["AlarmActions"] == [topic_arn]
    assert alarm["TreatMissingData"] == "ignore"  # tests/test_alarms.py says why
    returned = [m for m in alarm["Metrics"] if m.get("ReturnData")]
    assert len(returned) == 1 and "FILL(failed, 0)" in returned[0]["Expression"]
    watched = {(m["MetricStat"]["Metric"]["MetricName"],
                m["MetricStat"]["Metric"]["Dimensions"][0]["Value"])
               for m in alarm["Metrics"] if "MetricStat" in m}
    assert {("ExecutionsFailed", machine_arn), ("ExecutionsTimedOut", machine_arn),
            ("ExecutionsAborted", machine_arn)} <= watched
    (subscription,) = boto3.client("sns").list_subscriptions_by_topic(
        TopicArn=topic_arn)["Subscriptions"]
    assert (subscription["Protocol"], subscription["Endpoint"]) == ("lambda", function_arn)
    permission = json.loads(boto3.client("lambda").get_policy(
        FunctionName=f"{prefix}-notify")["Policy"])["Statement"]
    assert [s["Condition"]["ArnLike"]["AWS:SourceArn"] for s in permission] == [topic_arn]

    logs = boto3.client("logs")
    for group in (f"/aws/codebuild/{prefix}", f"/aws/lambda/{prefix}-notify"):
        (found,) = logs.describe_log_groups(logGroupNamePrefix=group)["logGroups"]
        assert found["retentionInDays"] == 30


def test_setup_twice_then_teardown_twice_in_process(aws, config, capsys):
    managed_rule = boto3.client("events").put_rule(
        Name="StepFunctionsGetEventForCodeBuildStartBuildRule",
        EventPattern=json.dumps({"source": ["aws.codebuild"]}))["RuleArn"]

    code, out, err = run(setup_aws.main, ["--config", str(config)], capsys)
    assert (code, err) == (0, ROOM_NOT_CHECKED)
    first = outcomes(out)
    assert first == dict.fromkeys(needed_labels(config), "created")
    (query,) = boto3.client("logs").describe_query_definitions()["queryDefinitions"]
    assert (query["name"], query["logGroupNames"]) == (
        "nightly-copy/table-durations", ["/aws/codebuild/nightly-copy"])
    assert inventory("nightly-copy") == expected_inventory("nightly-copy")
    assert_deployed_configuration()
    assert "job-1" in out and "configured table_weights" in out
    for secret in SECRETS.values():
        assert secret not in out

    code, out, _ = run(setup_aws.main, ["--config", str(config)], capsys)
    second = outcomes(out)
    assert code == 0 and second == dict.fromkeys(first, "unchanged")

    code, out, _ = run(teardown_aws.main, ["--config", str(config), "--remove-secrets"], capsys)
    removed = outcomes(out)
    assert code == 0 and removed == dict.fromkeys(first, "removed")
    assert inventory("nightly-copy") == nothing_left("nightly-copy")
    rules = boto3.client("events").list_rules()["Rules"]
    assert [r["Arn"] for r in rules] == [managed_rule]  # shared with other state machines

    code, out, _ = run(teardown_aws.main, ["--config", str(config), "--remove-secrets"], capsys)
    again = outcomes(out)
    assert code == 0 and again == dict.fromkeys(first, "absent")


def test_dry_run_prints_the_plan_and_changes_nothing(aws, config, capsys):
    code, out, _ = run(setup_aws.main, ["--config", str(config), "--dry-run"], capsys)
    planned = outcomes(out)
    assert code == 2  # changes pending
    assert planned == dict.fromkeys(needed_labels(config), "would be created")
    assert inventory("nightly-copy") == nothing_left("nightly-copy")

    run(setup_aws.main, ["--config", str(config)], capsys)
    code, out, _ = run(setup_aws.main, ["--config", str(config), "--dry-run",
                                        "--schedule", "cron(30 4 * * ? *)"], capsys)
    planned = outcomes(out)
    assert code == 2
    assert planned.pop("schedule nightly-copy/nightly") == "would be updated"
    assert set(planned.values()) == {"unchanged"}
    schedule = boto3.client("scheduler").get_schedule(GroupName="nightly-copy", Name="nightly")
    assert schedule["ScheduleExpression"] == "cron(0 3 * * ? *)"

    code, out, _ = run(teardown_aws.main, ["--config", str(config), "--dry-run"], capsys)
    planned = outcomes(out)
    assert code == 2
    assert planned["IAM role nightly-copy-states"] == "would be removed"
    assert planned["SSM parameter /nightly-copy/source/password"] == "kept"
    assert inventory("nightly-copy") == expected_inventory("nightly-copy")


def test_a_changed_setting_updates_only_what_it_touches(aws, config, capsys):
    run(setup_aws.main, ["--config", str(config)], capsys)
    code, out, _ = run(setup_aws.main, ["--config", str(config), "--schedule",
                                        "cron(30 4 * * ? *)", "--timezone", "Europe/Berlin",
                                        "--log-retention-days", "14",
                                        "--source-host", "db.example.internal"], capsys)
    changed = {label: status for label, status in outcomes(out).items()
               if status != "unchanged"}
    assert code == 0 and changed == {
        "schedule nightly-copy/nightly": "updated",
        "log group /aws/codebuild/nightly-copy": "updated",
        "log group /aws/lambda/nightly-copy-notify": "updated",
        "SSM parameter /nightly-copy/source/host": "updated",
        "Lambda function nightly-copy-notify": "updated",  # it bundles the zone file
        # Berlin has a night of 25 hours: the window grows from 28 to 29 hours
        "CloudWatch alarm nightly-copy-no-successful-run": "updated",
    }
    schedule = boto3.client("scheduler").get_schedule(GroupName="nightly-copy", Name="nightly")
    assert (schedule["ScheduleExpression"], schedule["ScheduleExpressionTimezone"]) == (
        "cron(30 4 * * ? *)", "Europe/Berlin")
    (group,) = boto3.client("logs").describe_log_groups(
        logGroupNamePrefix="/aws/codebuild/nightly-copy")["logGroups"]
    assert group["retentionInDays"] == 14
    assert boto3.client("ssm").get_parameter(Name="/nightly-copy/source/host")["Parameter"][
        "Value"] == "db.example.internal"


def test_a_changed_split_updates_the_state_machine(aws, config, capsys):
    run(setup_aws.main, ["--config", str(config)], capsys)
    code, out, _ = run(setup_aws.main, ["--config", str(config), "--jobs", "2"], capsys)
    assert outcomes(out)["state machine nightly-copy"] == "updated"
    machine = boto3.client("stepfunctions").describe_state_machine(
        stateMachineArn=f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:nightly-copy")
    assert len(json.loads(machine["definition"])["States"][deploy.Names.copy_state]["Branches"]) == 2


def test_existing_secrets_are_left_alone_unless_overwrite_is_asked(aws, config, capsys):
    ssm = boto3.client("ssm")
    ssm.put_parameter(Name="/nightly-copy/source/password", Value="set-by-hand",
                      Type="SecureString")
    run(setup_aws.main, ["--config", str(config)], capsys)
    value = ssm.get_parameter(Name="/nightly-copy/source/password", WithDecryption=True)
    assert value["Parameter"]["Value"] == "set-by-hand"

    code, out, _ = run(setup_aws.main, ["--config", str(config), "--overwrite-secrets"], capsys)
    assert outcomes(out)["SSM parameter /nightly-copy/source/password"] == "updated"
    value = ssm.get_parameter(Name="/nightly-copy/source/password", WithDecryption=True)
    assert value["Parameter"]["Value"] == SECRETS["COPIER_SOURCE_PASSWORD"]
    assert SECRETS["COPIER_SOURCE_PASSWORD"] not in out


def test_a_missing_secret_without_a_terminal_is_one_clear_error(aws, config, capsys,
                                                                monkeypatch):
    monkeypatch.delenv("SLACK_WEBHOOK_URL")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    code, out, err = run(setup_aws.main, ["--config", str(config)], capsys)
    assert code == 1
    assert err.count("\n") == 1 and "/nightly-copy-notify/slack_webhook_url" in err
    assert "SLACK_WEBHOOK_URL" in err
    assert inventory("nightly-copy") == nothing_left("nightly-copy")  # asked before changing


def test_an_aws_error_is_one_line_naming_the_resource(aws, config, capsys, monkeypatch):
    # a bad compute type is refused before AWS now (tests/test_settings_checked.py): AWS
    # refusing something setup cannot check stands in for it
    def refused(self):
        raise ClientError({"Error": {"Code": "InvalidInputException",
                                     "Message": "Unknown account limit\n for this project"}},
                          "CreateProject")

    monkeypatch.setattr(deploy.resources.CodeBuildProject, "create", refused)
    code, _, err = run(setup_aws.main, ["--config", str(config)], capsys)
    assert code == 1
    assert err.count("\n") == 1
    assert err.startswith("error: CodeBuild project nightly-copy: CreateProject: "
                          "InvalidInputException")


def test_teardown_keeps_secrets_and_leaves_untagged_resources_alone(aws, config, capsys):
    run(setup_aws.main, ["--config", str(config)], capsys)
    iam = boto3.client("iam")
    iam.untag_role(RoleName="nightly-copy-states", TagKeys=["project"])  # as if made by hand

    code, out, _ = run(teardown_aws.main, ["--config", str(config)], capsys)
    result = outcomes(out)
    assert code == 0
    assert result["IAM role nightly-copy-states"] == "left alone"
    assert iam.get_role(RoleName="nightly-copy-states")["Role"]["RoleName"]
    left = inventory("nightly-copy")
    assert left["roles"] == ["nightly-copy-states"]
    assert left["parameters"] == ["/nightly-copy-notify/slack_webhook_url",
                                  "/nightly-copy/source/password",
                                  "/nightly-copy/target/password"]
    assert {kind: names for kind, names in left.items()
            if kind not in ("roles", "parameters")} == {
        kind: [] for kind in left if kind not in ("roles", "parameters")}


def test_two_prefixes_live_side_by_side(aws, config, capsys):
    run(setup_aws.main, ["--config", str(config)], capsys)
    code, _, _ = run(setup_aws.main, ["--config", str(config), "--prefix", "staging-copy"],
                     capsys)
    assert code == 0
    assert inventory("staging-copy") == expected_inventory("staging-copy")
    run(teardown_aws.main, ["--config", str(config), "--prefix", "staging-copy",
                            "--remove-secrets"], capsys)
    assert inventory("staging-copy") == nothing_left("staging-copy")
    assert inventory("nightly-copy") == expected_inventory("nightly-copy")


def test_manual_start_is_named_after_the_date_and_runs_once(aws, config, capsys):
    run(setup_aws.main, ["--config", str(config)], capsys)
    code, out, _ = run(setup_aws.main, ["--config", str(config), "--start", "--date",
                                        "2026-11-27"], capsys)
    assert code == 0 and out.startswith("started ")
    machine = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:nightly-copy"
    (execution,) = boto3.client("stepfunctions").list_executions(
        stateMachineArn=machine)["executions"]
    assert execution["name"] == "2026-11-27"
    described = boto3.client("stepfunctions").describe_execution(
        executionArn=execution["executionArn"])
    assert json.loads(described["input"]) == {"date": "2026-11-27"}

    code, out, _ = run(setup_aws.main, ["--config", str(config), "--start", "--date",
                                        "2026-11-27"], capsys)
    assert code == 0 and out.startswith("not started: the run for 2026-11-27 exists already")
    assert len(boto3.client("stepfunctions").list_executions(
        stateMachineArn=machine)["executions"]) == 1


# --- the retry decorator


def client_error(code: str, operation: str, message: str = "") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, operation)


class Flaky:
    """A call that fails with the given errors, then returns 'done'."""

    def __init__(self, *errors: ClientError):
        self.errors = list(errors)
        self.calls = 0

    def __call__(self):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


@pytest.fixture
def delays(monkeypatch) -> list[float]:
    recorded: list[float] = []
    monkeypatch.setattr(deploy.aws, "sleep", recorded.append)
    return recorded


def test_throttling_is_retried_with_growing_jittered_delays(delays):
    call = Flaky(*[client_error("ThrottlingException", "ListRoles")] * 4)
    assert deploy.aws.with_aws_retries(call)() == "done"
    assert call.calls == 5 and len(delays) == 4
    for attempt, delay in enumerate(delays, start=1):
        ceiling = min(20, 0.5 * 2 ** (attempt - 1))
        assert ceiling / 2 <= delay <= ceiling


@pytest.mark.parametrize("error", [
    client_error("InvalidParameterValueException", "CreateFunction",
                 "The role defined for the function cannot be assumed by Lambda."),
    client_error("InvalidInputException", "CreateProject",
                 "CodeBuild is not authorized to perform: sts:AssumeRole on arn:aws:iam::1:role/x"),
    # with vpcConfig, CodeBuild checks the role's EC2 permissions at once
    client_error("InvalidInputException", "CreateProject",
                 "Not authorized to perform DescribeSecurityGroups"),
    client_error("InvalidInputException", "UpdateProject",
                 "Not authorized to perform DescribeSecurityGroups"),
    client_error("AccessDeniedException", "CreateStateMachine", "Neither the global service "
                 "principal states.amazonaws.com, nor the regional one is authorized"),
    client_error("ValidationException", "CreateSchedule", "The execution role you provide must "
                 "allow AWS EventBridge Scheduler to assume the role."),
])
def test_a_role_still_propagating_is_retried(delays, error):
    call = Flaky(error, error)
    assert deploy.aws.with_aws_retries(call)() == "done"
    assert call.calls == 3


PASS_ROLE_DENIED = ("User: arn:aws:sts::123456789012:assumed-role/installer/me is not authorized "
                    "to perform: iam:PassRole on resource: "
                    "arn:aws:iam::123456789012:role/nightly-copy-states because no "
                    "identity-based policy allows the iam:PassRole action")


@pytest.mark.parametrize("error", [
    client_error("AccessDeniedException", "CreateRole", "not allowed"),
    client_error("InvalidParameterValueException", "CreateFunction", "Runtime not supported"),
    client_error("ResourceAlreadyExistsException", "CreateProject", "exists"),
    client_error("ValidationException", "CreateSchedule", "Invalid Schedule Expression"),
    # the installer's own missing permission: no wait grants it
    client_error("AccessDeniedException", "CreateStateMachine", PASS_ROLE_DENIED),
    client_error("AccessDeniedException", "UpdateStateMachine", PASS_ROLE_DENIED),
    client_error("InvalidInputException", "CreateProject", PASS_ROLE_DENIED),
])
def test_other_errors_are_not_retried(delays, error):
    call = Flaky(error)
    with pytest.raises(ClientError):
        deploy.aws.with_aws_retries(call)()
    assert call.calls == 1 and delays == []


def test_a_missing_pass_role_fails_at_once_naming_the_permission(aws, config, capsys, delays,
                                                                 monkeypatch):
    real = botocore.client.BaseClient._make_api_call

    def denied(self, operation, params):  # AWS's answer, through the retrying client
        if operation == "CreateStateMachine":
            raise client_error("AccessDeniedException", operation, PASS_ROLE_DENIED)
        return real(self, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", denied)
    code, _, err = run(setup_aws.main, ["--config", str(config)], capsys)
    assert code == 1 and delays == []
    assert err.count("\n") == 1
    line = err.rstrip("\n")
    assert line.startswith("error: state machine nightly-copy: CreateStateMachine: "
                           "AccessDeniedException: ")
    assert line.endswith("the AWS credentials running this "
                         "(arn:aws:sts::123456789012:assumed-role/installer/me) lack iam:PassRole "
                         "on arn:aws:iam::123456789012:role/nightly-copy-states: docs/aws.md, "
                         "Permissions for the person running setup")


def test_iam_propagation_is_waited_for_two_minutes_then_given_up(delays):
    error = client_error("InvalidInputException", "CreateProject",
                         "Not authorized to perform DescribeSecurityGroups")
    call = Flaky(*[error] * 500)
    with pytest.raises(ClientError):
        deploy.aws.with_aws_retries(call)()
    # two minutes of waiting in all (the Terraform AWS provider's propagation timeout), in
    # growing jittered steps, none longer than 16 s
    assert sum(delays) == pytest.approx(deploy.aws.PROPAGATION_SECONDS)
    assert max(delays) <= 16 and len(delays) == call.calls - 1 >= 8
    for attempt, delay in enumerate(delays[:3], start=1):
        assert 2 ** (attempt - 1) <= delay <= 2 ** attempt


def test_throttling_gives_up_after_a_bounded_number_of_attempts(delays):
    call = Flaky(*[client_error("ThrottlingException", "ListRoles")] * 50)
    with pytest.raises(ClientError):
        deploy.aws.with_aws_retries(call)()
    assert call.calls == deploy.aws.THROTTLE_ATTEMPTS


# --- the saved Logs Insights query, call by call against a stub of the Logs API


def test_saved_query_is_created_once_and_then_left_unchanged(aws, config):
    settings = deploy.Settings(tables=["public.a"], github_url="https://x", region=REGION)
    d = deploy.Deployment(settings, deploy.Aws(REGION), deploy.Options())
    (query,) = [r for r in deploy.resource_list(d) if isinstance(r, deploy.resources.QueryDefinition)]
    logs = boto3.client("logs", region_name=REGION)
    d.aws._clients["logs"] = deploy.aws.RetryingClient(logs)
    expected_query = {"name": "nightly-copy/table-durations",
                      "queryString": deploy.resources.DURATIONS_QUERY,
                      "logGroupNames": ["/aws/codebuild/nightly-copy"]}
    with Stubber(logs) as stub:
        stub.add_response("describe_query_definitions", {"queryDefinitions": []},
                          {"queryDefinitionNamePrefix": "nightly-copy/table-durations"})
        stub.add_response("put_query_definition", {"queryDefinitionId": "q-1"}, expected_query)
        assert deploy.ensure_present(query, dry_run=False).status == "created"
        stub.add_response("describe_query_definitions", {"queryDefinitions": [
            {**expected_query, "queryDefinitionId": "q-1"}]},
            {"queryDefinitionNamePrefix": "nightly-copy/table-durations"})
        assert deploy.ensure_present(query, dry_run=False).status == "unchanged"
        stub.assert_no_pending_responses()


# --- the scripts as separate processes against moto_server


SECRET_PARAMETERS = ["SSM parameter /nightly-copy/source/password",
                     "SSM parameter /nightly-copy/target/password",
                     "SSM parameter /nightly-copy-notify/slack_webhook_url"]


def walked(result) -> dict[str, dict]:
    """--json output: every stdout line one object per resource, by its label."""
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    for found in objects:
        assert set(found) == {"name", "kind", "status", "changed", "detail", "dry_run"}, found
    return {f"{o['kind']} {o['name']}": o for o in objects}


def statuses(objects: dict[str, dict]) -> dict[str, tuple[str, bool, bool]]:
    return {label: (o["status"], o["changed"], o["dry_run"]) for label, o in objects.items()}


def help_examples(script: str, env: dict[str, str]) -> list[list[str]]:
    """The arguments of each `python <script> ...` example in the script's --help."""
    shown = run_script(script, ["--help"], env, ROOT).stdout
    return [shlex.split(line.split("#")[0])[2:] for line in shown.splitlines()
            if line.strip().startswith(f"python {script} ")]


def test_the_help_examples_run_against_moto_server(moto_server, tmp_path, monkeypatch):
    """Every example of setup_aws.py --help, then of teardown_aws.py --help, in the order
    shown, as processes. --dry-run exits 2 while changes are pending and 0 when there are
    none (terraform plan -detailed-exitcode); --json prints one object per resource."""
    set_fake_aws_env(monkeypatch, endpoint=moto_server.url)
    env = subprocess_env(moto_server.url)
    config = str(write_config(tmp_path / "deploy.toml"))  # the examples' --config deploy.toml
    labels = needed_labels(config)

    plan = run_script("setup_aws.py", ["--config", config, "--dry-run", "--json"], env, tmp_path)
    assert plan.returncode == 2, plan.stderr  # everything to create
    assert statuses(walked(plan)) == dict.fromkeys(labels, ("created", True, True))
    assert "table assignment" in plan.stderr  # the people's lines, off stdout
    assert inventory("nightly-copy") == nothing_left("nightly-copy")

    create, plan, plan_json, start = help_examples("setup_aws.py", env)
    first = run_script("setup_aws.py", create, env, tmp_path)
    assert first.returncode == 0, first.stderr
    assert outcomes(first.stdout) == dict.fromkeys(labels, "created")
    assert inventory("nightly-copy") == expected_inventory("nightly-copy")
    assert_deployed_configuration()

    done = run_script("setup_aws.py", plan, env, tmp_path)
    assert done.returncode == 0, done.stderr  # nothing pending after setup
    assert outcomes(done.stdout) == dict.fromkeys(labels, "unchanged")
    done = run_script("setup_aws.py", plan_json, env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert statuses(walked(done)) == dict.fromkeys(labels, ("unchanged", False, True))
    done = run_script("setup_aws.py", start, env, tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("started "), done.stderr
    assert done.stdout.rstrip().endswith(":2026-11-27")

    plan, plan_json, remove, remove_secrets, remove_images = help_examples("teardown_aws.py", env)
    done = run_script("teardown_aws.py", plan, env, tmp_path)
    assert done.returncode == 2, done.stderr
    assert outcomes(done.stdout) == {label: "kept" if label in SECRET_PARAMETERS
                                     else "would be removed" for label in labels}
    done = run_script("teardown_aws.py", plan_json, env, tmp_path)
    assert done.returncode == 2, done.stderr
    planned = walked(done)
    assert statuses(planned) == {label: ("kept", False, True) if label in SECRET_PARAMETERS
                                 else ("removed", True, True) for label in labels}
    assert "--remove-secrets" in planned[SECRET_PARAMETERS[0]]["detail"]
    # the run --start began is still running (moto_server's engine is off)
    assert planned["state machine nightly-copy"]["detail"] == (
        "would stop 1 running run: 2026-11-27")
    assert inventory("nightly-copy") == expected_inventory("nightly-copy")

    done = run_script("teardown_aws.py", remove, env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "           stopped  run 2026-11-27  (arn:aws:states:" in done.stdout.splitlines()[
        done.stdout.splitlines().index("state machine nightly-copy: stopping 1 running run "
                                       "before deleting it (error nightly-copy.Teardown)") + 1]
    assert outcomes(done.stdout) == {label: "kept" if label in SECRET_PARAMETERS
                                     else "removed" for label in labels}
    done = run_script("teardown_aws.py", remove_secrets, env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert outcomes(done.stdout) == {label: "removed" if label in SECRET_PARAMETERS
                                     else "absent" for label in labels}
    assert inventory("nightly-copy") == nothing_left("nightly-copy")
    done = run_script("teardown_aws.py", remove_images, env, tmp_path)
    assert done.returncode == 0, done.stderr  # safe to run again: nothing left to remove
    assert outcomes(done.stdout) == dict.fromkeys(labels, "absent")

    plan = run_script("teardown_aws.py", ["--config", config, "--dry-run"], env, tmp_path)
    assert plan.returncode == 0, plan.stderr  # nothing pending


def test_flags_override_the_config_file(tmp_path):
    config = write_config(tmp_path / "deploy.toml", jobs=4, tables="public.x, public.y")
    config.write_text(config.read_text().replace('port = "1"', "port = 6543"))
    args = setup_aws.build_parser().parse_args([
        "--config", str(config), "--jobs", "2", "--target-host", "other.internal",
        "--subnets", "subnet-1,subnet-2"])
    settings = deploy.load_settings(args)
    assert settings.jobs == 2
    assert settings.tables == ["public.x", "public.y"]
    assert settings.subnets == ["subnet-1", "subnet-2"]
    assert settings.target == {"host": "other.internal", "dbname": "reporting",
                               "user": "writer", "sslmode": "verify-full",
                               "sslrootcert": "reporting-ca.pem"}
    assert settings.branch == "release"
    assert settings.source["port"] == "6543"


@pytest.mark.parametrize("argv, message", [
    (["--jobs", "0"], "jobs must be at least 1"),
    (["--log-retention-days", "10"], "log_retention_days 10 is not one of"),
    (["--prefix", "Nightly Copy"], "prefix 'Nightly Copy'"),
    (["--vpc-id", "vpc-1"], "vpc_id, subnets and security_groups go together"),
])
def test_bad_settings_are_one_line_before_any_aws_call(tmp_path, capsys, argv, message):
    config = write_config(tmp_path / "deploy.toml")
    code, _, err = run(setup_aws.main, ["--config", str(config), *argv], capsys)
    assert code == 1 and err.count("\n") == 1 and message in err


def test_dry_run_shows_which_part_of_the_project_and_role_would_change(aws, config, capsys):
    # moto lacks CodeBuild UpdateProject, so the project's comparison is checked in a dry run
    run(setup_aws.main, ["--config", str(config)], capsys)
    code, out, _ = run(setup_aws.main, [
        "--config", str(config), "--dry-run", "--branch", "develop", "--vpc-id", "vpc-1",
        "--subnets", "subnet-1", "--security-groups", "sg-1"], capsys)
    assert code == 2
    project = next(line for line in out.splitlines() if "CodeBuild project" in line)
    assert "would be updated" in project and "sourceVersion" in project and "vpcConfig" in project
    role = next(line for line in out.splitlines() if "IAM role nightly-copy-codebuild" in line)
    assert "would be updated" in role and "(permissions)" in role
    changed = {label for label, status in outcomes(out).items()
               if status != "unchanged"}
    assert changed == {"CodeBuild project nightly-copy", "IAM role nightly-copy-codebuild"}


def test_a_new_lambda_runtime_updates_the_function_configuration(aws, config, capsys):
    run(setup_aws.main, ["--config", str(config)], capsys)
    code, out, _ = run(setup_aws.main, ["--config", str(config), "--lambda-runtime",
                                        "python3.13"], capsys)
    assert code == 0
    assert outcomes(out)["Lambda function nightly-copy-notify"] == "updated"
    configuration = boto3.client("lambda").get_function_configuration(
        FunctionName="nightly-copy-notify")
    assert configuration["Runtime"] == "python3.13"
    code, out, _ = run(setup_aws.main, ["--config", str(config), "--lambda-runtime",
                                        "python3.13"], capsys)
    assert outcomes(out)["Lambda function nightly-copy-notify"] == "unchanged"


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_a_required_connection_setting_missing_is_an_error(aws, tmp_path, capsys, dry_run):
    config = write_config(tmp_path / "deploy.toml")
    config.write_text(config.read_text().replace('host = "reporting.example.internal"\n', ""))
    code, _, err = run(setup_aws.main, ["--config", str(config), *dry_run], capsys)
    assert code == 1 and err.count("\n") == 1 and "/nightly-copy/target/host" in err
    assert inventory("nightly-copy") == nothing_left("nightly-copy")


def test_a_password_stored_as_plain_text_is_rewritten_as_securestring(aws, config, capsys):
    boto3.client("ssm").put_parameter(Name="/nightly-copy/target/password", Value="plain",
                                      Type="String")
    code, out, _ = run(setup_aws.main, ["--config", str(config)], capsys)
    assert code == 0
    assert outcomes(out)["SSM parameter /nightly-copy/target/password"] == "updated"
    parameter = boto3.client("ssm").get_parameter(Name="/nightly-copy/target/password",
                                                  WithDecryption=True)["Parameter"]
    assert (parameter["Type"], parameter["Value"]) == (
        "SecureString", SECRETS["COPIER_TARGET_PASSWORD"])


def test_builds_in_a_vpc_get_network_interface_permissions(aws, tmp_path, capsys,
                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path / "deploy.toml", vpc_id="vpc-1", subnets=["subnet-a"],
                          security_groups=["sg-1"])
    code, _, err = run(setup_aws.main, ["--config", str(config)], capsys)
    assert code == 0, err
    (project,) = boto3.client("codebuild").batch_get_projects(names=["nightly-copy"])["projects"]
    assert project["vpcConfig"] == {"vpcId": "vpc-1", "subnets": ["subnet-a"],
                                    "securityGroupIds": ["sg-1"]}
    statements = policy_of("nightly-copy-codebuild")["Statement"]
    (eni,) = [s for s in statements if "ec2:CreateNetworkInterfacePermission" in s["Action"]]
    assert eni["Condition"] == {
        "StringEquals": {"ec2:AuthorizedService": "codebuild.amazonaws.com"},
        "ArnEquals": {"ec2:Subnet": [f"arn:aws:ec2:{REGION}:{ACCOUNT}:subnet/subnet-a"]}}
    unscoped = {a for s in statements if s["Resource"] == ["*"] for a in s["Action"]}
    assert unscoped and all(a.startswith("ec2:Describe") or a in (
        "ec2:CreateNetworkInterface", "ec2:DeleteNetworkInterface") for a in unscoped)


def test_a_custom_ecr_image_runs_without_source_and_may_pull_only_its_repository(aws):
    image = "210987654321.dkr.ecr.eu-west-1.amazonaws.com/nightly-copy:2026-11"
    settings = deploy.Settings(tables=["public.a"], ecr_image=image, region=REGION)
    settings.validate_for_setup()
    d = deploy.Deployment(settings, deploy.Aws(REGION), deploy.Options(), [["a"]])
    (project,) = [r for r in deploy.resource_list(d) if isinstance(r, deploy.resources.CodeBuildProject)]
    spec = project.spec()
    assert spec["source"] == {"type": "NO_SOURCE", "buildspec": deploy.resources.ECR_BUILDSPEC}
    assert "sourceVersion" not in spec
    assert (spec["environment"]["image"], spec["environment"]["imagePullCredentialsType"]) == (
        image, "SERVICE_ROLE")
    pulls = statements_by_action(deploy.permissions.codebuild(d))
    assert pulls["ecr:BatchGetImage"] == [
        "arn:aws:ecr:eu-west-1:210987654321:repository/nightly-copy"]
    assert pulls["ecr:GetAuthorizationToken"] == ["*"]  # the action has no resource type


# --- teardown with runs in flight


def start_runs(machine: str, names: list[str]) -> list[str]:
    sfn = boto3.client("stepfunctions")
    arn = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{machine}"
    return [sfn.start_execution(stateMachineArn=arn, name=name, input="{}")["executionArn"]
            for name in names]


def test_teardown_stops_the_running_runs_then_the_state_machines_are_gone(aws, config, capsys,
                                                                          monkeypatch):
    """moto keeps a run RUNNING (its engine is off here) and deletes a state machine at once."""
    run(setup_aws.main, ["--config", str(config)], capsys)
    sfn = boto3.client("stepfunctions")
    nightly = start_runs("nightly-copy", ["2026-11-26", "2026-11-27"])
    starter = start_runs("nightly-copy-starter", ["manual"])
    finished = start_runs("nightly-copy", ["2026-11-25"])[0]
    sfn.stop_execution(executionArn=finished)  # over already: nothing to stop

    code, out, _ = run(teardown_aws.main, ["--config", str(config), "--dry-run"], capsys)
    planned = outcomes(out)
    assert code == 2
    assert planned["state machine nightly-copy"] == "would be removed"
    assert ("would be removed  state machine nightly-copy  "
            "(would stop 2 running runs: 2026-11-27, 2026-11-26)") in out
    assert ("would be removed  state machine nightly-copy-starter  "
            "(would stop 1 running run: manual)") in out
    code, out, err = run(teardown_aws.main, ["--config", str(config), "--dry-run", "--json"],
                         capsys)
    objects = {(o["kind"], o["name"]): o for o in map(json.loads, out.splitlines())}
    assert objects["state machine", "nightly-copy"] == {
        "name": "nightly-copy", "kind": "state machine", "status": "removed", "changed": True,
        "detail": "would stop 2 running runs: 2026-11-27, 2026-11-26", "dry_run": True}
    for arn in nightly + starter:  # a dry run stops nothing
        assert sfn.describe_execution(executionArn=arn)["status"] == "RUNNING"

    at_delete: dict[str, dict] = {}  # each run as the delete of its state machine finds it
    remove = deploy.resources.StateMachine.remove

    def recording_remove(machine, current):
        for arn in nightly + starter + [finished]:
            if f":{machine.name}:" in arn:
                at_delete[arn] = sfn.describe_execution(executionArn=arn)
        remove(machine, current)

    monkeypatch.setattr(deploy.resources.StateMachine, "remove", recording_remove)
    stops: list[dict] = []  # moto keeps no error or cause of a stopped run: the calls say them
    call = botocore.client.BaseClient._make_api_call

    def recording_call(client, operation, params):
        if operation == "StopExecution":
            stops.append(params)
        return call(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", recording_call)
    code, out, _ = run(teardown_aws.main, ["--config", str(config), "--remove-secrets"], capsys)
    assert code == 0
    removed = outcomes(out)
    assert set(removed.values()) == {"removed"}
    lines = out.splitlines()
    said = lines.index("state machine nightly-copy: stopping 2 running runs before deleting it "
                       "(error nightly-copy.Teardown)")
    assert lines[said + 1:said + 4] == [
        f"           stopped  run 2026-11-27  ({nightly[1]})",
        f"           stopped  run 2026-11-26  ({nightly[0]})",
        "           removed  state machine nightly-copy  "
        "(stopped 2 running runs: 2026-11-27, 2026-11-26)"]
    assert ("           removed  state machine nightly-copy-starter  "
            "(stopped 1 running run: manual)") in lines
    assert set(at_delete) == {*nightly, *starter, finished}
    for arn in nightly + starter:
        assert at_delete[arn]["status"] == "ABORTED"
    assert sorted(stops, key=lambda p: p["executionArn"]) == [  # not the run over before
        {"executionArn": arn, "error": "nightly-copy.Teardown",
         "cause": f"teardown_aws.py removes state machine {machine}"}
        for arn, machine in sorted([(nightly[0], "nightly-copy"), (nightly[1], "nightly-copy"),
                                    (starter[0], "nightly-copy-starter")])]
    assert sfn.list_state_machines()["stateMachines"] == []
    assert inventory("nightly-copy") == nothing_left("nightly-copy")

    code, out, _ = run(teardown_aws.main, ["--config", str(config), "--remove-secrets"], capsys)
    assert code == 0 and set(outcomes(out).values()) == {"absent"}
    assert "stop" not in out
    code, out, _ = run(setup_aws.main, ["--config", str(config)], capsys)  # the names are free
    assert code == 0 and set(outcomes(out).values()) == {"created"}


def test_teardown_stops_every_page_of_running_runs(aws, config, capsys, monkeypatch):
    run(setup_aws.main, ["--config", str(config)], capsys)
    started = start_runs("nightly-copy", [f"run-{n:03}" for n in range(105)])  # pages of 100
    sfn = boto3.client("stepfunctions")
    statuses_at_delete: set[str] = set()
    remove = deploy.resources.StateMachine.remove

    def recording_remove(machine, current):
        if machine.name == "nightly-copy":
            statuses_at_delete.update(sfn.describe_execution(executionArn=arn)["status"]
                                      for arn in started)
        remove(machine, current)

    monkeypatch.setattr(deploy.resources.StateMachine, "remove", recording_remove)
    code, out, _ = run(teardown_aws.main, ["--config", str(config)], capsys)
    assert code == 0
    assert sum(line.strip().startswith("stopped  run ") for line in out.splitlines()) == 105
    assert "(stopped 105 running runs: run-104, run-103, " in out
    assert statuses_at_delete == {"ABORTED"}


class DeletingFor:
    """The Step Functions client, except that describe_state_machine answers DELETING for
    `polls` calls after the delete of `machine` (AWS while the runs end), or forever (None)."""

    def __init__(self, client, machine: str, polls: int | None):
        self._client, self.machine, self.polls = client, machine, polls
        self.deleted = False
        self.answered_deleting = 0

    def __getattr__(self, name):
        return getattr(self._client, name)

    def delete_state_machine(self, **kwargs):
        if kwargs["stateMachineArn"].endswith(f":{self.machine}"):
            self.deleted = True
            self._saved = self._client.describe_state_machine(**kwargs)
        return self._client.delete_state_machine(**kwargs)

    def describe_state_machine(self, **kwargs):
        if self.deleted and (self.polls is None or self.answered_deleting < self.polls):
            self.answered_deleting += 1
            return {**self._saved, "status": "DELETING"}
        return self._client.describe_state_machine(**kwargs)


def deployment_for(config) -> deploy.Deployment:
    settings = deploy.load_settings(teardown_aws.build_parser().parse_args(["--config",
                                                                           str(config)]))
    return deploy.Deployment(settings, deploy.Aws(REGION), deploy.Options())


def test_teardown_waits_while_the_state_machine_is_deleting(aws, config, capsys, monkeypatch):
    run(setup_aws.main, ["--config", str(config)], capsys)
    slept: list[float] = []
    monkeypatch.setattr(deploy.resources, "sleep", slept.append)
    d = deployment_for(config)
    stub = DeletingFor(d.aws.client("stepfunctions"), "nightly-copy", polls=3)
    d.aws._clients["stepfunctions"] = stub
    lines: list[str] = []
    found = deploy.teardown(d, out=lines.append)
    assert found["state machine nightly-copy"].status == "removed"
    assert stub.answered_deleting == 3
    assert slept == [deploy.resources.DELETE_POLL_SECONDS] * 3  # then it was gone
    assert lines.index("           removed  state machine nightly-copy") > 0


def test_teardown_gives_up_on_a_state_machine_that_stays_deleting(aws, config, capsys,
                                                                  monkeypatch):
    run(setup_aws.main, ["--config", str(config)], capsys)
    slept: list[float] = []
    monkeypatch.setattr(deploy.resources, "sleep", slept.append)
    d = deployment_for(config)
    d.aws._clients["stepfunctions"] = DeletingFor(d.aws.client("stepfunctions"), "nightly-copy",
                                                  polls=None)
    lines: list[str] = []
    with pytest.raises(deploy.AwsError) as raised:
        deploy.teardown(d, out=lines.append)
    assert str(raised.value).startswith(
        "state machine nightly-copy: still DELETING after 120 s; Step Functions deletes it once "
        "its runs have ended")
    assert len(slept) == deploy.resources.DELETE_POLLS
    assert "           removed  state machine nightly-copy" not in lines
    assert "removed  state machine nightly-copy-starter" in lines[-1]  # the walk stopped there


class DeletingAlready:
    """The Step Functions client while an earlier teardown's delete of `machine` is pending
    (interrupted while it waited): DELETING for `polls` answers, then gone."""

    def __init__(self, client, machine: str, polls: int):
        self._client, self.machine, self.polls = client, machine, polls
        self.deletes = 0

    def __getattr__(self, name):
        return getattr(self._client, name)

    def delete_state_machine(self, **kwargs):
        self.deletes += 1
        return self._client.delete_state_machine(**kwargs)

    def describe_state_machine(self, **kwargs):
        found = self._client.describe_state_machine(**kwargs)
        if not kwargs["stateMachineArn"].endswith(f":{self.machine}"):
            return found
        if self.polls == 0:  # the runs have ended: Step Functions deletes it
            self._client.delete_state_machine(**kwargs)
            return self._client.describe_state_machine(**kwargs)
        self.polls -= 1
        return {**found, "status": "DELETING"}


def test_teardown_finishes_a_delete_an_earlier_teardown_asked_for(aws, config, capsys,
                                                                  monkeypatch):
    run(setup_aws.main, ["--config", str(config)], capsys)
    (started,) = start_runs("nightly-copy", ["2026-11-27"])
    monkeypatch.setattr(deploy.resources, "sleep", lambda seconds: None)
    d = deployment_for(config)
    stub = DeletingAlready(d.aws.client("stepfunctions"), "nightly-copy", polls=4)
    d.aws._clients["stepfunctions"] = stub
    lines: list[str] = []
    found = deploy.teardown(d, out=lines.append)
    assert found["state machine nightly-copy"].status == "removed"  # not "absent": it was there
    assert found["state machine nightly-copy"].detail == "stopped 1 running run: 2026-11-27"
    assert f"           stopped  run 2026-11-27  ({started})" in lines
    assert stub.deletes == 1  # the starter's only: the nightly one was asked for already
    assert stub.polls == 0  # it waited through every DELETING answer


def test_setup_waits_for_a_state_machine_an_earlier_teardown_left_deleting(aws, config, capsys,
                                                                          monkeypatch):
    """A teardown that gave up waiting leaves the state machine DELETING, its name still taken:
    the next setup waits until it is gone, then creates it again, instead of failing."""
    run(setup_aws.main, ["--config", str(config)], capsys)
    slept: list[float] = []
    monkeypatch.setattr(deploy.resources, "sleep", slept.append)
    planned = deployment_for(config)
    assignment = deploy.plan_jobs(planned.settings, lambda line: None, planned.aws)
    d = deploy.Deployment(planned.settings, planned.aws, deploy.Options(), assignment)
    stub = DeletingAlready(d.aws.client("stepfunctions"), "nightly-copy", polls=3)
    d.aws._clients["stepfunctions"] = stub
    found = deploy.setup(d, out=lambda line: None)
    assert found["state machine nightly-copy"].status == "created"
    assert stub.polls == 0 and slept  # it waited through every DELETING answer
    arn = d.state_machine_arn("nightly-copy")
    assert stub._client.describe_state_machine(stateMachineArn=arn)["status"] == "ACTIVE"


# --- the schedule's first run


def test_a_rate_schedule_starts_at_the_configured_local_time_not_at_setup(aws, config, capsys,
                                                                        monkeypatch):
    """Without a StartDate EventBridge Scheduler invokes a rate schedule at once: a copy in
    the working day, while setup runs. The first run is the next 03:00 in the zone instead."""
    import datetime as dt

    def scheduled() -> dict:
        return boto3.client("scheduler").get_schedule(GroupName="nightly-copy", Name="nightly")

    flags = ["--config", str(config), "--schedule", "rate(1 day)", "--timezone", "Europe/Berlin"]
    # the day before the spring-forward of 2027: 03:00 CEST on 28 March is 01:00 UTC
    monkeypatch.setattr(deploy.names, "now",
                        lambda: dt.datetime(2027, 3, 27, 10, 0, tzinfo=dt.UTC))
    code, out, _ = run(setup_aws.main, flags, capsys)
    assert code == 0
    assert scheduled()["StartDate"] == dt.datetime(2027, 3, 28, 1, 0, tzinfo=dt.UTC)

    # a day later the next 03:00 is another date, but the same time: nothing to change
    monkeypatch.setattr(deploy.names, "now",
                        lambda: dt.datetime(2027, 3, 28, 10, 0, tzinfo=dt.UTC))
    code, out, _ = run(setup_aws.main, flags, capsys)
    assert code == 0 and outcomes(out)["schedule nightly-copy/nightly"] == "unchanged"

    # 02:30 does not exist on 28 March (02:00 -> 03:00): the first run is 29 March, 02:30 CEST
    monkeypatch.setattr(deploy.names, "now",
                        lambda: dt.datetime(2027, 3, 27, 10, 0, tzinfo=dt.UTC))
    code, out, _ = run(setup_aws.main, [*flags, "--rate-start-time", "02:30"], capsys)
    assert code == 0 and outcomes(out)["schedule nightly-copy/nightly"] == "updated"
    assert scheduled()["StartDate"] == dt.datetime(2027, 3, 29, 0, 30, tzinfo=dt.UTC)


def test_a_cron_schedule_has_no_start_date(aws, config, capsys):
    run(setup_aws.main, ["--config", str(config)], capsys)
    schedule = boto3.client("scheduler").get_schedule(GroupName="nightly-copy", Name="nightly")
    assert schedule.get("StartDate") is None
