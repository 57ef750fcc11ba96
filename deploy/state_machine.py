"""The nightly state machine, rendered from state_machine.json (and state_machine_batch.json for
Batch), and the starter that names each run after its date."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import runlog
from deploy.names import Names, job_name
from deploy.settings import SettingsError

HERE = Path(__file__).resolve().parent.parent
STATE_MACHINE_TEMPLATE = HERE / "state_machine.json"
# The copy task's runner-specific fields for runner = "batch" (see with_batch_task).
BATCH_TASK_TEMPLATE = HERE / "state_machine_batch.json"


def render_state_machine(template: dict, jobs: list[list[str]], values: dict[str, Any],
                         tables: list[str] | None = None) -> dict:
    """Fill the template: one copy of the branch template per job (its units of work in
    TABLES), the publish step with every table of the run (`tables`, by default those the
    jobs' units name), then every ${Name}. ${TableList} is the same names as a JSON list, for
    the summary: a quoted name may hold a comma, and only the copier parses TABLES."""

    def value(names: dict[str, Any], name: str) -> Any:
        if name not in names:
            raise SettingsError(f"state_machine.json: no value for ${{{name}}}")
        return names[name]

    def fill(node, names: dict[str, Any]):
        if isinstance(node, dict):
            return {fill(k, names): fill(v, names) for k, v in node.items()}
        if isinstance(node, list):
            return [fill(v, names) for v in node]
        if isinstance(node, str):
            whole = re.fullmatch(r"\$\{(\w+)\}", node)
            if whole:
                return value(names, whole.group(1))
            return re.sub(r"\$\{(\w+)\}", lambda m: str(value(names, m.group(1))), node)
        return node

    if tables is None:
        tables = list(dict.fromkeys(runlog.split_unit(unit)[0] for job in jobs for unit in job))
    values = {**values, "JobCount": str(len(jobs))}  # an environment value: text
    definition = with_failure_details(template)
    parallel = definition["States"][Names.copy_state]
    (branch,) = parallel["Branches"]
    parallel["Branches"] = [
        fill(branch, {**values, "JobName": job_name(n), "Tables": ",".join(units), "TableList": units,
                      "OneSnapshot": snapshot_role(n, values.get("OneSnapshot"))})
        for n, units in enumerate(jobs, start=1)
    ]
    publish = {**values, "JobName": Names.publish_job, "Tables": ",".join(tables), "TableList": tables}
    for name in publish_states(definition):
        definition["States"][name] = fill(definition["States"][name], publish)
    return fill(definition, values)


def snapshot_role(job: int, one_snapshot: Any) -> str:
    """COPIER_ONE_SNAPSHOT of a copy job: the first job exports the run's snapshot and holds
    it until every job imported it ('hold'), the others import it ('join'); empty: each job
    takes its own snapshot (one_snapshot = false)."""
    if one_snapshot is None:
        raise SettingsError("state_machine.json: no value for ${OneSnapshot}")
    if not one_snapshot:
        return ""
    return "hold" if job == 1 else "join"


def publish_states(definition: dict) -> list[str]:
    """The top-level states the publish's values fill: its phase, the task and its failure
    handling inside."""
    return [Names.publish_phase]


def publish_branch(definition: dict) -> dict:
    """The one branch of the publish phase: the publish task and its failure handling."""
    (branch,) = definition["States"][Names.publish_phase]["Branches"]
    return branch


# --------------------------------------------------------------------------- failed jobs

# A failed startBuild.sync's Cause is the whole build as JSON text, environment overrides (the
# job's TABLES) included. Kept whole in every failed job's result (and the publish's, twice) it
# took the execution past Step Functions' 256 KB payload quota on the night every job failed:
# States.DataLimitExceeded, which no Catch takes ("Handling errors in Step Functions
# workflows"), so no summary. Only what the summary needs is kept: the build's status, id,
# log link and times, parsed with States.StringToJson, and only from a Cause of that shape:
# an intrinsic that fails, or a path that is not there, is an uncatchable States.Runtime error.
# Another JSON Cause (a Batch job's, with its environment) is dropped; a plain message (an API
# error, a timeout) is short and kept.
BUILD_CAUSE = '{"Build":{*}}'  # PascalCase, as the integration's own output ($.Build.Id)
BUILD_DEFAULTS = {"Id": None, "BuildStatus": None, "StartTime": None, "EndTime": None,
                  "Logs": {}}


# What the execution's data holds at its largest: every job's result (its units, listed once,
# and what a failure keeps), or one failed build's Cause, alone in its branch. Step Functions
# holds a state's input and output, and a task's parameters, to 256 KB ("Step Functions
# service quotas", payload size); past it the execution ends in States.DataLimitExceeded,
# which no Catch takes, so no summary. Setup refuses a table list that could come near it.
PAYLOAD_QUOTA_BYTES = 256 * 1024
DATA_BUDGET_BYTES = 160 * 1024  # the rest is room for what no estimate sees
RESULT_BYTES = 2 * 1024  # status, error, build id, log link, times, a short message
BUILD_BYTES = 16 * 1024  # a build as JSON, besides its TABLES: phases, environment, logs
DEFINITION_QUOTA_BYTES = 1024 * 1024  # a state machine's definition ("Step Functions service quotas")


def check_data_sizes(definition: dict) -> None:
    """Raise SettingsError when a night's data could pass the payload quota, or the definition
    the definition quota: both fail on AWS, the first only on a night that fails."""
    *loads, publish = job_tasks(definition)
    results = sum(len(json.dumps(task["ResultSelector"]).encode()) + RESULT_BYTES
                  for task in loads)
    transform = definition["States"].get(TRANSFORM_PHASE)
    everything = max(len(json.dumps(task["Parameters"]).encode()) for task in [publish, *(
        [transform["Branches"][0]["States"]["Transform"]] if transform else [])])
    largest = max(results + 2 * RESULT_BYTES, everything + BUILD_BYTES)
    if largest > DATA_BUDGET_BYTES:
        raise SettingsError(
            f"tables: a night's data would take up to {largest // 1024} KB of Step Functions' "
            f"{PAYLOAD_QUOTA_BYTES // 1024} KB (at most {DATA_BUDGET_BYTES // 1024} KB are "
            "planned for; past the quota a run ends in States.DataLimitExceeded, without a "
            "summary): list fewer tables, or split them over two prefixes")
    size = len(json.dumps(definition).encode())
    if size > DEFINITION_QUOTA_BYTES:
        raise SettingsError(
            f"tables: the state machine's definition would be {size // 1024} KB, more than "
            f"Step Functions takes ({DEFINITION_QUOTA_BYTES // 1024} KB): list fewer tables, or "
            "split them over two prefixes")


def with_failure_details(template: dict) -> dict:
    """The template with each job task's failure handler (the Pass its Catch leads to, which
    lists what any failure keeps) made into the states that add what its Cause tells."""
    definition = copy.deepcopy(template)
    (branch,) = definition["States"][Names.copy_state]["Branches"]
    for states, task in ((branch["States"], branch["StartAt"]),
                         (publish_branch(definition)["States"], Names.publish_state)):
        (catch,) = states[task]["Catch"]
        states.update(failure_states(catch["Next"], states[catch["Next"]], catch["ResultPath"]))
    return definition


def failure_states(name: str, kept: dict, error_at: str) -> dict[str, dict]:
    """The states that replace the Pass `kept`: a Choice on the Cause's shape, then the kept
    fields with the build's (from JSON of a build's shape, defaults filling what a build
    lacks), with a plain message, or alone. Each step writes where the Catch put the error
    (`error_at`), so nothing of the Cause outlives them."""
    fields = {k: v for k, v in kept["Parameters"].items() if k != "error.$"}
    ending = {k: v for k, v in kept.items() if k in ("ResultPath", "Next", "End")}
    error, cause = f"{error_at}.Error", f"{error_at}.Cause"
    step = {"Type": "Pass", "ResultPath": error_at}
    build, message, alone = f"{name}: the build", f"{name}: its message", f"{name}: error only"
    has_cause = {"Variable": cause, "IsPresent": True}
    return {
        name: {"Type": "Choice", "Choices": [
            {"And": [has_cause, {"Variable": cause, "StringMatches": BUILD_CAUSE}],
             "Next": build},
            {"And": [has_cause, {"Not": {"Variable": cause, "StringMatches": "{*"}}],
             "Next": message},
        ], "Default": alone},
        build: {**step, "Parameters": {
            "error.$": error, "cause.$": f"States.StringToJson({cause})",
            "defaults": BUILD_DEFAULTS}, "Next": f"{build}: its fields"},
        f"{build}: its fields": {**step, "Parameters": {
            "error.$": f"{error_at}.error",
            "build.$": f"States.JsonMerge({error_at}.defaults, {error_at}.cause.Build, false)",
            "no_logs": {"DeepLink": None}}, "Next": f"{build}: its logs"},
        f"{build}: its logs": {**step, "Parameters": {
            "error.$": f"{error_at}.error", "build.$": f"{error_at}.build",
            "logs.$": f"States.JsonMerge({error_at}.no_logs, {error_at}.build.Logs, false)"},
            "Next": f"{build}: kept"},
        f"{build}: kept": {"Type": "Pass", "Parameters": {
            **fields, "error.$": f"{error_at}.error",
            "build_status.$": f"{error_at}.build.BuildStatus",
            "build_id.$": f"{error_at}.build.Id",
            "log_link.$": f"{error_at}.logs.DeepLink",
            "start.$": f"{error_at}.build.StartTime", "end.$": f"{error_at}.build.EndTime"},
            **ending},
        message: {"Type": "Pass", "Parameters": {**fields, "error.$": error, "cause.$": cause},
                  **ending},
        alone: {**kept, "Parameters": {**fields, "error.$": error}},
    }


def job_tasks(definition: dict) -> list[dict]:
    """The job tasks: the copy jobs' (one per branch of the load phase; the template has one),
    then the publish."""
    return [*(branch["States"][branch["StartAt"]]
              for branch in definition["States"][Names.copy_state]["Branches"]),
            publish_branch(definition)["States"][Names.publish_state]]


def with_batch_task(template: dict, batch_task: dict) -> dict:
    """The template with its copy and publish tasks run by AWS Batch instead of CodeBuild.

    Only the runner-specific fields change: Resource, Parameters and Retry come from the Batch
    file, and the ResultSelector keeps the template's fixed entries (job, tables) with the
    Batch file's paths. TimeoutSeconds, Catch, ResultPath, Next and End stay, and so do the
    other states. The container's environment is the CodeBuild task's
    EnvironmentVariablesOverride without "Type": both runners get the same variables, written
    once.
    """
    definition = copy.deepcopy(template)
    for task in job_tasks(definition):
        environment = []
        for variable in task["Parameters"]["EnvironmentVariablesOverride"]:
            if variable.get("Type", "PLAINTEXT") != "PLAINTEXT":
                raise SettingsError(f"state_machine.json: {variable['Name']} is "
                                    f"{variable['Type']}; Batch overrides take plain values only")
            environment.append({k: v for k, v in variable.items() if k != "Type"})
        parts = {k: copy.deepcopy(v) for k, v in batch_task.items() if k != "Comment"}
        parts["Parameters"]["ContainerOverrides"]["Environment"] = environment
        parts["ResultSelector"] = {
            **{k: v for k, v in task["ResultSelector"].items() if not k.endswith(".$")},
            **parts["ResultSelector"]}
        replaced = {**{k: parts.get(k, v) for k, v in task.items()}, **parts}
        task.clear()
        task.update(replaced)
    return definition


# --------------------------------------------------------------------------- transform

TRANSFORM_PHASE = "Transform phase"
TRANSFORM_JOB = "transform"  # its result's "job", as the summary names it


def with_transform(definition: dict, state_machine_arn: str, timeout_seconds: int,
                   tables: list[str]) -> dict:
    """The rendered definition with the Transform step: after a publish that succeeded (and
    no job failed), run another state machine and wait for it (states:startExecution.sync:2:
    its output comes back as JSON), given the run's name, date and tables; named after the
    run, so it runs once per run. Its outcome goes to the summary, its failure fails the night
    as a copy's does. Like the publish it runs in a branch of its own, given only the run's
    name and input: a failure's Cause (the child's input, every table) never meets the jobs'
    results. Otherwise (a night that failed) the summary says it was skipped."""
    definition = copy.deepcopy(definition)
    states = definition["States"]
    states["Count failed jobs"]["Next"] = "Transform?"
    execution = state_machine_arn.replace(":stateMachine:", ":execution:")
    failed = {"Type": "Pass", "Parameters": {
        "job": TRANSFORM_JOB, "status": "FAILED", "error.$": "$.error.Error",
        "execution_arn.$": f"States.Format('{execution}:{{}}', $.run)"}, "End": True}
    branch_states = {
        "Transform: the run's date": {"Type": "Choice", "Choices": [
            {"Variable": "$.started_with.date", "IsPresent": True, "Next": "Transform"}],
            "Default": "Transform: no date"},
        "Transform: no date": {"Type": "Pass", "Result": None,
                               "ResultPath": "$.started_with.date", "Next": "Transform"},
        "Transform": {
            "Type": "Task",
            "Resource": "arn:aws:states:::states:startExecution.sync:2",
            "Parameters": {
                "StateMachineArn": state_machine_arn,
                "Name.$": "$.run",
                "Input": {"run.$": "$.run", "date.$": "$.started_with.date", "tables": tables,
                          # links the two executions in the console
                          "AWS_STEP_FUNCTIONS_STARTED_BY_EXECUTION_ID.$": "$$.Execution.Id"},
            },
            "TimeoutSeconds": timeout_seconds,
            "ResultSelector": {"job": TRANSFORM_JOB, "status.$": "$.Status",
                               "execution_arn.$": "$.ExecutionArn", "start.$": "$.StartDate",
                               "end.$": "$.StopDate"},
            # too many executions running in the account: StartExecution's error
            # ExecutionLimitExceeded (its API reference); the starter's Catch spells the
            # integration's errors with "Exception" (StepFunctions.ExecutionAlreadyExists-
            # Exception): both spellings are listed, as neither is documented for this one
            "Retry": [{"ErrorEquals": ["StepFunctions.ExecutionLimitExceeded",
                                       "StepFunctions.ExecutionLimitExceededException"],
                       "IntervalSeconds": 30, "MaxAttempts": 6, "BackoffRate": 2.0,
                       "JitterStrategy": "FULL"}],
            "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error",
                       "Next": "Transform failed"}],
            "End": True,
        },
        "Transform failed": failed,
    }
    branch_states.update(failure_states("Transform failed", failed, "$.error"))
    states.update({
        "Transform?": {"Type": "Choice", "Choices": [{"And": [
            {"Variable": "$.publish.status", "StringEquals": "SUCCEEDED"},
            {"Variable": "$.any_failed", "BooleanEquals": False}], "Next": TRANSFORM_PHASE}],
            "Default": "Transform skipped"},
        "Transform skipped": {"Type": "Pass", "Result": {"job": TRANSFORM_JOB, "status": "SKIPPED"},
            "ResultPath": "$.transform", "Next": "Send summary"},
        TRANSFORM_PHASE: {
            "Type": "Parallel",
            "Parameters": {"run.$": "$$.Execution.Name", "started_with.$": "$$.Execution.Input"},
            "Branches": [{"StartAt": "Transform: the run's date", "States": branch_states}],
            "ResultPath": "$.transform", "Next": "Transform done"},
        # the branch's one result in place of the list of them
        "Transform done": {"Type": "Pass", "InputPath": "$.transform[0]",
                           "ResultPath": "$.transform", "Next": "Send summary"},
    })
    states["Send summary"]["Parameters"]["Payload"]["transform.$"] = "$.transform"
    (rule,) = states["Any job failed?"]["Choices"]
    rule["Or"].append({"Variable": "$.transform.status", "StringEquals": "FAILED"})
    return definition


LAMBDA_RETRY = {
    "ErrorEquals": ["Lambda.ServiceException", "Lambda.AWSLambdaException",
                    "Lambda.SdkClientException", "Lambda.TooManyRequestsException"],
    "IntervalSeconds": 2, "MaxAttempts": 6, "BackoffRate": 2.0,
}


def starter_definition(state_machine_arn: str, function_arn: str) -> dict:
    """The workflow the schedule starts: it starts the nightly run named after its date.

    EventBridge Scheduler passes its scheduled time in UTC ("2027-03-14T23:30:00Z") and the
    schedule's time zone; the notify Lambda turns them into the local date ("2027-03-14"),
    which Step Functions cannot compute (no time zones in its intrinsic functions). When the
    run for that date exists already, the Lambda says so in Slack and the starter succeeds.
    """
    return {
        "Comment": "Start the nightly copy once per local date: the execution is named after it.",
        "StartAt": "Name the run",
        "States": {
            "Name the run": {
                "Type": "Task",
                "Resource": "arn:aws:states:::lambda:invoke",
                "Parameters": {
                    "FunctionName": function_arn,
                    "Payload": {"name_run": {"scheduled_time.$": "$.scheduled_time",
                                             "timezone.$": "$.timezone"}},
                },
                "ResultSelector": {"name.$": "$.Payload.name", "date.$": "$.Payload.date"},
                "ResultPath": "$.run",
                "TimeoutSeconds": 60,
                "Retry": [LAMBDA_RETRY],
                "Next": "Start nightly copy",
            },
            "Start nightly copy": {
                "Type": "Task",
                "Resource": "arn:aws:states:::states:startExecution",
                "Parameters": {
                    "StateMachineArn": state_machine_arn,
                    "Name.$": "$.run.name",
                    "Input": {"date.$": "$.run.date"},
                },
                "TimeoutSeconds": 60,
                "Catch": [{
                    "ErrorEquals": ["StepFunctions.ExecutionAlreadyExistsException"],
                    "ResultPath": "$.already_started",
                    "Next": "Already started for this date",
                }],
                "End": True,
            },
            "Already started for this date": {
                "Type": "Task",
                "Resource": "arn:aws:states:::lambda:invoke",
                "Parameters": {
                    "FunctionName": function_arn,
                    "Payload": {"already_started": {"name.$": "$.run.name",
                                                    "state_machine": state_machine_arn}},
                },
                "ResultPath": None,
                "TimeoutSeconds": 120,
                "Retry": [LAMBDA_RETRY],
                "End": True,
            },
        },
    }
