"""Every name the deployment uses, derived from the prefix: written here and nowhere else."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import ClassVar

import notify_lambda
import runlog

TAG_KEY = "project"
CODEBUILD_SYNC_RULE = "StepFunctionsGetEventForCodeBuildStartBuildRule"
BATCH_SYNC_RULE = "StepFunctionsGetEventsForBatchJobsRule"  # plural, unlike CodeBuild's
# startExecution.sync of another state machine (the Transform step)
EXECUTION_SYNC_RULE = "StepFunctionsGetEventsForStepFunctionsExecutionRule"
# One per account, used by every Batch compute environment: setup makes sure it exists,
# teardown never removes it.
BATCH_SERVICE_LINKED_ROLE = "AWSServiceRoleForBatch"


@dataclass(frozen=True)
class Names:
    """Every name the deployment uses, derived from the prefix: written here and nowhere else."""

    prefix: str
    # The states of state_machine.json: the Parallel state whose branches are the copy jobs
    # (the load phase), and the one task after it that publishes every table (the swap), in
    # the one branch of a Parallel state of its own (the publish phase).
    copy_state: ClassVar[str] = "Load tables"
    publish_phase: ClassVar[str] = "Publish phase"
    publish_state: ClassVar[str] = "Publish"
    # The publish step's job name: its COPIER_JOB, so its log lines say "job": "publish".
    publish_job: ClassVar[str] = "publish"

    @property
    def ssm_prefix(self) -> str:
        return f"/{self.prefix}/"

    def parameter(self, database: str, setting: str) -> str:
        return f"{self.ssm_prefix}{database}/{setting}"

    @property
    def storage_parameter(self) -> str:
        return f"{self.ssm_prefix}{runlog.STORAGE_SETTING}"

    @property
    def rules_parameter(self) -> str:
        return f"{self.ssm_prefix}{runlog.RULES_PARAMETER}"

    @property
    def hash_salt_parameter(self) -> str:
        return f"{self.ssm_prefix}{runlog.HASH_SALT_PARAMETER}"

    @property
    def webhook_parameter(self) -> str:
        # Outside ssm_prefix: the copier reads its whole path recursively, the webhook is not
        # its business.
        return f"/{self.prefix}-notify/slack_webhook_url"

    def role(self, service: str) -> str:
        return f"{self.prefix}-{service}"

    @property
    def project(self) -> str:
        return self.prefix

    @property
    def project_log_group(self) -> str:
        return f"/aws/codebuild/{self.project}"

    @property
    def notify_function(self) -> str:
        return f"{self.prefix}-notify"

    @property
    def notify_log_group(self) -> str:
        return f"/aws/lambda/{self.notify_function}"

    @property
    def state_machine(self) -> str:
        return self.prefix

    @property
    def starter(self) -> str:
        return f"{self.prefix}-starter"

    @property
    def schedule_group(self) -> str:
        return self.prefix

    @property
    def schedule(self) -> str:
        return "nightly"

    @property
    def alarm_topic(self) -> str:
        return f"{self.prefix}-alarms"

    @property
    def alarm(self) -> str:
        return f"{self.prefix}-run-failed"

    @property
    def missed_run_alarm(self) -> str:
        return f"{self.prefix}-no-successful-run"

    @property
    def function_errors_alarm(self) -> str:
        return f"{self.prefix}-notify-errors"

    @property
    def alarm_permission(self) -> str:
        return f"{self.prefix}-alarm-topic"

    @property
    def durations_query(self) -> str:
        return f"{self.prefix}/table-durations"

    @property
    def repository(self) -> str:
        return self.prefix

    @property
    def batch_log_group(self) -> str:
        return f"/aws/batch/{self.prefix}"

    @property
    def compute_environment(self) -> str:
        return self.prefix

    @property
    def job_queue(self) -> str:
        return self.prefix

    @property
    def job_definition(self) -> str:
        return self.prefix

    @property
    def instance_profile(self) -> str:
        return self.role("batch-instance")


def execution_name(day: dt.date) -> str:
    """The name of the run for one day: at most one run per name, so one per day. The starter
    names scheduled runs through the Lambda, with the same function."""
    return notify_lambda.run_name(day)


def run_date(moment: dt.datetime, timezone: str) -> dt.date:
    """The date a run started at `moment` is for: its local date in the schedule's time zone
    (the rule the starter applies to the scheduled time, and --start to now)."""
    return notify_lambda.run_date(moment, timezone)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def execution_input(day: dt.date) -> str:
    return json.dumps({"date": day.isoformat()}, separators=(",", ":"))


def job_name(number: int) -> str:
    return f"job-{number}"
