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


def publish_branch(definition: dict) -> dict:
    return deploy.state_machine.publish_branch(definition)


def publish_task(definition: dict) -> dict:
    return publish_branch(definition)["States"][deploy.Names.publish_state]


def kept_on_failure(states: dict, handler: str) -> list[dict]:
    """The Pass states that end a task's failure handling (the Choice its Catch leads to, and
    what follows it): each makes the failed job's result."""
    assert states[handler]["Type"] == "Choice"
    return [state for name, state in states.items() if name.startswith(handler)
            and state["Type"] == "Pass" and (state.get("End") or not state.get(
                "Next", "").startswith(handler))]


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
    for kept in kept_on_failure(branch["States"], task["Catch"][0]["Next"]):
        assert kept["Parameters"]["tables"] == listed
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
        kept = kept_on_failure(branch["States"], catch["Next"])
        assert len(kept) == 3  # the build's fields, a plain message, the error alone
        for handler in kept:
            assert handler["End"] is True and "ResultPath" not in handler
            assert handler["Parameters"]["status"] == "FAILED"
            assert handler["Parameters"]["job"] == task["ResultSelector"]["job"]
            # never the Cause of a build: it is the whole build, TABLES included
            assert handler["Parameters"].get("cause.$") in (None, "$.error.Cause")


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
    # the stand-in's Cause is a plain message (an API error's is): kept as it is
    assert {"job-1 result", "job-3 result", "job-2 failed: its message"} <= finished
    jobs = {j["job"]: j for j in summary_sent(events)["jobs"]}
    assert [jobs[j]["status"] for j in ("job-1", "job-2", "job-3")] == [
        "SUCCEEDED", "FAILED", "SUCCEEDED"]
    assert jobs["job-2"]["error"] == "SNS.NotFoundException"
    assert jobs["job-2"]["cause"]
    assert jobs["job-2"]["tables"]


def with_slack_failing(definition: dict) -> dict:
    """The summary task made to fail as the notifier does when Slack refuses the message."""
    summary = definition["States"]["Send summary"]
    summary["Resource"] = "arn:aws:states:::sns:publish"
    summary["Parameters"] = {"TopicArn": f"arn:aws:sns:{REGION}:123456789012:missing",
                             "Message": "stands in for a Slack webhook that refuses the summary"}
    return definition


def test_a_slack_failure_leaves_a_good_night_succeeded(aws):
    """The summary catches everything after its retries: a webhook that fails says so in the
    execution's output and through the notifier-errors alarm (and e-mail), and the copy that
    worked is not reported as a failed night by the failed-run and missed-night alarms."""
    sfn = boto3.client("stepfunctions")
    definition = with_slack_failing(rewritten_for_moto(render(aws, 2), failing=set()))
    (catch,) = definition["States"]["Send summary"]["Catch"]
    assert catch["ErrorEquals"] == ["States.ALL"] and catch["Next"] == "Any job failed?"
    machine = create(sfn, "nightly-copy", definition)
    described = run_to_end(sfn, machine, "2026-11-29", '{"date":"2026-11-29"}')
    assert described["status"] == "SUCCEEDED"
    output = json.loads(described["output"])
    assert output["summary_error"]["Error"] == "SNS.NotFoundException"
    assert [job["status"] for job in output["jobs"]] == ["SUCCEEDED", "SUCCEEDED"]


def test_a_slack_failure_on_a_failed_night_still_fails_it(aws):
    sfn = boto3.client("stepfunctions")
    definition = with_slack_failing(rewritten_for_moto(render(aws, 2), failing={"job-1"}))
    machine = create(sfn, "nightly-copy", definition)
    described = run_to_end(sfn, machine, "2026-11-30", '{"date":"2026-11-30"}')
    assert (described["status"], described["error"]) == ("FAILED", "CopyJobsFailed")


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


# --- the worst night: every job fails, on a long table list


def failed_build(definition: dict, status: str = "FAILED"):
    """What a failed startBuild.sync's Cause holds, as the job's stand-in: the whole build, its
    environment overrides (the job's TABLES) and phases included."""
    overrides = {task["ResultSelector"]["job"]: task["Parameters"]["EnvironmentVariablesOverride"]
                 for task in [copy_task(b) for b in branches(definition)]}
    overrides["publish"] = publish_task(definition)["Parameters"]["EnvironmentVariablesOverride"]

    def build(job: str) -> dict:
        return {"Build": {
            "Arn": f"arn:aws:codebuild:{REGION}:123456789012:build/nightly-copy:{job}-5e1f",
            "Id": f"nightly-copy:{job}-5e1f", "BuildStatus": status, "BuildComplete": True,
            "StartTime": "2026-11-27T03:00:05Z", "EndTime": "2026-11-27T03:41:10Z",
            "Environment": {"Image": "aws/codebuild/standard:7.0", "EnvironmentVariables": [
                {"Name": o["Name"], "Value": o.get("Value", "2026-11-27"), "Type": "PLAINTEXT"}
                for o in overrides[job]]},
            "Logs": {"GroupName": "/aws/codebuild/nightly-copy", "StreamName": f"{job}-5e1f",
                     "DeepLink": f"https://console.example/{job}-logs"},
            "Phases": [{"PhaseType": "BUILD", "PhaseStatus": status, "DurationInSeconds": 2460,
                        "Contexts": [{"StatusCode": "COMMAND_EXECUTION_ERROR",
                                      "Message": "Error while executing command: python "
                                                 "copier.py. Reason: exit status 1"}]}] * 12}}

    return build


def largest_payload(events: list[dict]) -> int:
    """The largest state input, state output or task parameters of an execution, in bytes:
    what Step Functions holds to 256 KB (its payload quota; past it, States.DataLimitExceeded,
    which no Catch takes)."""
    sizes = [0]
    for event in events:
        for details in event.values():
            if isinstance(details, dict):
                sizes += [len(str(details[k]).encode()) for k in ("input", "output",
                                                                  "parameters") if k in details]
    return max(sizes)


MANY_TABLES = [f"sales.order_lines_{n:05d}" for n in range(3000)]  # 26-27 bytes each as JSON


def test_the_worst_night_stays_far_below_the_data_quota_and_is_summarised(aws):
    """A rotated password: every load job and the publish fail, each with the whole build in
    its Cause (3000 table names in TABLES). The summary is still sent, and no state's data
    comes near 256 KB: each failure adds its status, error, build id and log link, never its
    Cause, and the publish's Cause never meets the jobs' results."""
    sfn = boto3.client("stepfunctions")
    definition = render(aws, 5, tables=MANY_TABLES)
    table_list = len(json.dumps(MANY_TABLES).encode())
    assert table_list > 80_000
    every = {f"job-{n}" for n in range(1, 6)} | {"publish"}
    machine = create(sfn, "nightly-copy", with_canned_jobs(
        definition, every, canned_build, failed_build(definition)))
    described = run_to_end(sfn, machine, "2026-11-27", '{"date":"2026-11-27"}')
    assert (described["status"], described["error"]) == ("FAILED", "CopyJobsFailed")
    events = history(sfn, described["executionArn"])
    summary = summary_sent(events)

    for job in summary["jobs"]:
        units = [copy_task(b)["ResultSelector"]["tables"] for b in branches(definition)
                 if copy_task(b)["ResultSelector"]["job"] == job["job"]][0]
        assert job == {"job": job["job"], "tables": units, "status": "FAILED",
                       "error": "TaskFailed", "build_status": "FAILED",
                       "build_id": f"nightly-copy:{job['job']}-5e1f",
                       "log_link": f"https://console.example/{job['job']}-logs",
                       "start": "2026-11-27T03:00:05Z", "end": "2026-11-27T03:41:10Z"}
    assert summary["publish"] == {"job": "publish", "status": "FAILED", "error": "TaskFailed",
                                  "build_status": "FAILED",
                                  "build_id": "nightly-copy:publish-5e1f",
                                  "log_link": "https://console.example/publish-logs",
                                  "start": "2026-11-27T03:00:05Z",
                                  "end": "2026-11-27T03:41:10Z"}
    # the table list once (the jobs' units), and little else: the failures' Causes
    # (6 builds, the publish's naming every table) are nowhere in the data
    assert largest_payload(events) < table_list + 10_000 < 128 * 1024


def test_a_timed_out_build_says_so_in_the_summary(aws):
    sfn = boto3.client("stepfunctions")
    definition = render(aws, 2)
    machine = create(sfn, "nightly-copy", with_canned_jobs(
        definition, {"job-1"}, canned_build, failed_build(definition, "TIMED_OUT")))
    described = run_to_end(sfn, machine, "2026-11-28", '{"date":"2026-11-28"}')
    summary = summary_sent(history(sfn, described["executionArn"]))
    job = summary["jobs"][0]
    # still FAILED for the state machine (it counts FAILED), the build's own status beside it
    assert (job["status"], job["build_status"]) == ("FAILED", "TIMED_OUT")
    text = notify_lambda.summary_message(summary)[0]["text"]
    assert "job-1 FAILED (41m 05s)" in text and "TaskFailed: build TIMED_OUT" in text
