"""The rendered state machine: its shape, statelint, and its logic run in moto's engine."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from aws_helpers import (
    MOTO_CONFIG,
    REGION,
    TABLES,
    queue_lambda_result,
    run_to_end,
    set_fake_aws_env,
    with_canned_jobs,
)
from moto import mock_aws

import deploy
import notify_lambda
import runlog

CODEBUILD_SYNC = "arn:aws:states:::codebuild:startBuild.sync"


@pytest.fixture
def aws(monkeypatch):
    set_fake_aws_env(monkeypatch)
    with mock_aws(config={**MOTO_CONFIG, "stepfunctions": {"execute_state_machine": True}}):
        yield deploy.Aws(REGION)


def render(aws, jobs: int, prefix: str = "nightly-copy", tables=TABLES) -> dict:
    settings = deploy.Settings(prefix=prefix, tables=list(tables), jobs=jobs,
                                   github_url="https://github.com/example/x.git")
    plan = deploy.plan_jobs(settings, lambda line: None)
    return deploy.Deployment(settings, aws, deploy.Options(), plan) \
        .state_machine_definition()


def branches(definition: dict) -> list[dict]:
    return definition["States"][deploy.Names.copy_state]["Branches"]


def copy_task(branch: dict) -> dict:
    return branch["States"][branch["StartAt"]]


def all_states(definition: dict):
    for name, state in definition["States"].items():
        yield name, state
        for branch in state.get("Branches", []):
            yield from all_states(branch)


def statelint(definition: dict, tmp_path) -> subprocess.CompletedProcess:
    path = tmp_path / "definition.json"
    path.write_text(json.dumps(definition))
    # The project's environment's statelint (requirements-dev.txt), next to the interpreter
    # running the tests: `.venv/bin/python -m pytest` does not put .venv/bin on PATH.
    tool = Path(sys.executable).parent / "statelint"
    return subprocess.run([str(tool), str(path)], capture_output=True, text=True)


# --- shape


@pytest.mark.parametrize("jobs", [1, 3, 5])
def test_rendered_definition_passes_statelint(aws, tmp_path, jobs):
    result = statelint(render(aws, jobs), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_statelint_rejects_a_broken_definition(aws, tmp_path):
    broken = render(aws, 3)
    broken["States"]["Send summary"]["Next"] = "No such state"
    assert statelint(broken, tmp_path).returncode != 0


@pytest.mark.parametrize("jobs", [1, 3, 5])
def test_one_branch_per_job_with_every_table_exactly_once(aws, jobs):
    definition = render(aws, jobs)
    assert len(branches(definition)) == jobs
    assigned = []
    for number, branch in enumerate(branches(definition), start=1):
        task = copy_task(branch)
        assert task["Resource"] == CODEBUILD_SYNC
        assert task["Parameters"]["ProjectName"] == "nightly-copy"
        override, phase, run, job, *_ = task["Parameters"]["EnvironmentVariablesOverride"]
        assert (override["Name"], override["Type"]) == ("TABLES", "PLAINTEXT")
        assert phase == {"Name": "COPIER_PHASE", "Value": "load", "Type": "PLAINTEXT"}
        # the copier's JSON lines carry the run and the job, so a report can find them
        assert run == {"Name": "COPIER_RUN", "Value.$": "$$.Execution.Name",
                       "Type": "PLAINTEXT"}
        assert job == {"Name": "COPIER_JOB", "Value": f"job-{number}", "Type": "PLAINTEXT"}
        assert task["ResultSelector"]["job"] == f"job-{number}"
        assert ",".join(task["ResultSelector"]["tables"]) == override["Value"]
        assigned += task["ResultSelector"]["tables"]
    assert sorted(assigned) == sorted(TABLES)


def test_more_jobs_than_tables_gives_one_job_per_table(aws):
    definition = render(aws, 5, tables=["public.a", "public.b"])
    assert len(branches(definition)) == 2


def test_a_name_with_a_comma_reaches_the_summary_whole(aws):
    """A quoted name may hold a comma. The job's TABLES text is the copier's to parse; the
    summary gets the same units as a list (${TableList}), which the Lambda never splits."""
    names = ['public."Orders, old"', "public.customers"]
    (branch,) = branches(render(aws, 1, tables=names))
    task = copy_task(branch)
    override = task["Parameters"]["EnvironmentVariablesOverride"][0]
    listed = task["ResultSelector"]["tables"]

    assert sorted(listed) == sorted(names)
    assert runlog.split_table_list(override["Value"]) == [runlog.split_table_list(n)[0] for n in listed]
    assert branch["States"][task["Catch"][0]["Next"]]["Parameters"]["tables"] == listed
    job = notify_lambda.job_result(1, {"job": "job-1", "tables": listed, "status": "SUCCEEDED"})
    assert sorted(job.tables) == sorted(names)


def test_every_task_has_a_timeout_and_retries_only_api_errors(aws):
    definition = render(aws, 3)
    tasks = [(name, s) for name, s in all_states(definition) if s["Type"] == "Task"]
    assert len(tasks) == 5  # three jobs, the publish, the summary
    for name, task in tasks:
        assert isinstance(task["TimeoutSeconds"], int) and task["TimeoutSeconds"] > 0, name
        for retry in task.get("Retry", []):
            assert not {"States.ALL", "States.TaskFailed", "States.Timeout"} & set(
                retry["ErrorEquals"]), name
    build_timeout = (90 + 60) * 60  # the default build and queue timeouts, in seconds
    assert copy_task(branches(definition)[0])["TimeoutSeconds"] > build_timeout


def test_every_branch_catches_its_own_failure_into_a_result(aws):
    for branch in branches(render(aws, 3)):
        task = copy_task(branch)
        (catch,) = task["Catch"]
        assert catch["ErrorEquals"] == ["States.ALL"]
        handler = branch["States"][catch["Next"]]
        assert handler["Type"] == "Pass" and handler["End"] is True
        assert handler["Parameters"]["status"] == "FAILED"
        assert handler["Parameters"]["job"] == task["ResultSelector"]["job"]


def test_summary_goes_to_the_function_and_a_failure_ends_in_fail(aws):
    definition = render(aws, 3)
    summary = definition["States"]["Send summary"]
    assert summary["Resource"] == "arn:aws:states:::lambda:invoke"
    assert summary["Parameters"]["FunctionName"] == (
        f"arn:aws:lambda:{REGION}:123456789012:function:nightly-copy-notify")
    retried = {e for r in summary["Retry"] for e in r["ErrorEquals"]}
    assert {"Lambda.ServiceException", "Lambda.AWSLambdaException",
            "Lambda.SdkClientException"} <= retried
    choice = definition["States"]["Any job failed?"]
    assert definition["States"][choice["Choices"][0]["Next"]]["Type"] == "Fail"
    assert definition["States"][choice["Default"]]["Type"] == "Succeed"


def test_a_template_value_left_out_is_an_error():
    template = json.loads(deploy.state_machine.STATE_MACHINE_TEMPLATE.read_text())
    with pytest.raises(deploy.SettingsError, match="NotifyFunctionArn"):
        deploy.state_machine.render_state_machine(template, [["public.a"]], {
            "ProjectName": "p", "JobTimeoutSeconds": 60, "ExecutionTimeoutSeconds": 120,
            "OneSnapshot": True, "Swap": "table"})


# --- logic, in moto's Step Functions engine


def canned_build(job: str) -> dict:
    return {"Build": {"Id": f"nightly-copy:{job}-build", "BuildStatus": "SUCCEEDED",
                      "Logs": {"DeepLink": f"https://console.example/{job}"},
                      "StartTime": "2026-11-27T03:00:05Z", "EndTime": "2026-11-27T03:40:00Z",
                      "Phases": [{"phaseType": "BUILD"}] * 50}}


def rewritten_for_moto(definition: dict, failing: set[str]) -> dict:
    return with_canned_jobs(definition, failing, canned_build)


def history(sfn, execution_arn: str) -> list[dict]:
    return sfn.get_execution_history(executionArn=execution_arn, maxResults=1000)["events"]


def summary_sent(events: list[dict]) -> dict:
    (scheduled,) = [e for e in events if e["type"] == "TaskScheduled"
                    and e["taskScheduledEventDetails"]["resourceType"] == "lambda"]
    parameters = json.loads(scheduled["taskScheduledEventDetails"]["parameters"])
    return parameters["Payload"]


def create(sfn, name: str, definition: dict) -> str:
    return sfn.create_state_machine(
        name=name, definition=json.dumps(definition),
        roleArn="arn:aws:iam::123456789012:role/nightly-copy-states")["stateMachineArn"]


def test_all_jobs_succeed_one_summary_execution_succeeded(aws):
    sfn = boto3.client("stepfunctions")
    definition = render(aws, 3)
    machine = create(sfn, "nightly-copy", rewritten_for_moto(definition, failing=set()))
    # The function's reply is dropped (ResultPath null): the jobs' statuses decide, so a
    # reply counting failures that did not happen changes nothing.
    queue_lambda_result({"posted": True, "failed_jobs": 3})
    described = run_to_end(sfn, machine, "2026-11-27", deploy.names.execution_input(
        dt.date(2026, 11, 27)))
    assert described["status"] == "SUCCEEDED"
    summary = summary_sent(history(sfn, described["executionArn"]))
    assert summary["execution"]["name"] == "2026-11-27"
    assert summary["execution"]["id"] == described["executionArn"]
    jobs = summary["jobs"]
    assert [j["job"] for j in jobs] == ["job-1", "job-2", "job-3"]
    assert [j["tables"] for j in jobs] == [copy_task(b)["ResultSelector"]["tables"]
                                           for b in branches(definition)]
    for job in jobs:
        assert job["status"] == "SUCCEEDED"
        assert job["log_link"] == f"https://console.example/{job['job']}"
        assert job["build_id"] == f"nightly-copy:{job['job']}-build"
        assert (job["start"], job["end"]) == ("2026-11-27T03:00:05Z", "2026-11-27T03:40:00Z")
        assert "Phases" not in job  # the build object is trimmed


def test_one_job_fails_the_others_finish_summary_lists_it_execution_failed(aws):
    sfn = boto3.client("stepfunctions")
    machine = create(sfn, "nightly-copy", rewritten_for_moto(render(aws, 3), failing={"job-2"}))
    queue_lambda_result({"posted": True, "failed_jobs": 0})  # ignored, as above
    described = run_to_end(sfn, machine, "2026-11-28", '{"date":"2026-11-28"}')
    assert described["status"] == "FAILED"
    assert described["error"] == "CopyJobsFailed"
    events = history(sfn, described["executionArn"])
    finished = {e["stateExitedEventDetails"]["name"] for e in events
                if e["type"] == "PassStateExited"}
    assert {"job-1 result", "job-3 result", "job-2 failed"} <= finished
    jobs = {j["job"]: j for j in summary_sent(events)["jobs"]}
    assert [jobs[j]["status"] for j in ("job-1", "job-2", "job-3")] == [
        "SUCCEEDED", "FAILED", "SUCCEEDED"]
    assert jobs["job-2"]["error"] == "SNS.NotFoundException"
    assert jobs["job-2"]["cause"]
    assert jobs["job-2"]["tables"]


def test_a_failing_summary_fails_the_execution(aws):
    sfn = boto3.client("stepfunctions")
    definition = rewritten_for_moto(render(aws, 2), failing=set())
    summary = definition["States"]["Send summary"]
    summary["Resource"] = "arn:aws:states:::sns:publish"
    summary["Parameters"] = {"TopicArn": f"arn:aws:sns:{REGION}:123456789012:missing",
                             "Message": "stands in for a Lambda that keeps failing"}
    machine = create(sfn, "nightly-copy", definition)
    described = run_to_end(sfn, machine, "2026-11-29", "{}")
    assert described["status"] == "FAILED"


# --- the starter: tests/test_run_names.py runs it in moto's engine


def test_starter_definition_passes_statelint(tmp_path):
    starter = deploy.state_machine.starter_definition(
        "arn:aws:states:us-east-1:1:stateMachine:m", "arn:aws:lambda:us-east-1:1:function:f")
    result = statelint(starter, tmp_path)
    assert result.returncode == 0, result.stdout


def test_the_build_retries_name_only_errors_codebuild_defines(aws):
    """Step Functions names a service error ServiceName.ErrorName, with the names of the
    service's API reference (docs/design.md, "Retry error names"); botocore's model is that list."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("codebuild")
    start_build = {shape.name for shape in model.operation_model("StartBuild").error_shapes}
    defined = {name for name in model.shape_names if model.shape_for(name).metadata.get("exception")}
    assert "AccountLimitExceededException" in start_build
    retried = [e for branch in branches(render(aws, 2))
               for retry in copy_task(branch)["Retry"] for e in retry["ErrorEquals"]]
    assert set(retried) == {"CodeBuild.AccountLimitExceededException",
                            "CodeBuild.AWSCodeBuildException"}
    for error in retried:
        service, name = error.split(".")
        assert service == "CodeBuild"
        # the SDK's base exception for the service, or one of the errors its model defines
        assert name == "AWSCodeBuildException" or name in defined & start_build, error
