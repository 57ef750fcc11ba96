"""The nightly state machine, rendered from state_machine.json (and state_machine_batch.json for
Batch), and the starter that names each run after its date."""

from __future__ import annotations

import copy
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
    definition = copy.deepcopy(template)
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
    """The publish task and the Pass state its Catch leads to."""
    task = definition["States"][Names.publish_state]
    return [Names.publish_state, *(catch["Next"] for catch in task.get("Catch", []))]


def job_tasks(definition: dict) -> list[dict]:
    """The template's two job tasks: the copy job (the Parallel's branch) and the publish."""
    (branch,) = definition["States"][Names.copy_state]["Branches"]
    return [branch["States"][branch["StartAt"]], definition["States"][Names.publish_state]]


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
