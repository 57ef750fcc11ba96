"""One deployment: a prefix in one account and region, its settings, names and ARNs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from deploy.aws import PARTITION, Aws
from deploy.names import BATCH_SERVICE_LINKED_ROLE, Names
from deploy.settings import Settings, SettingsError
from deploy.state_machine import (
    BATCH_TASK_TEMPLATE,
    STATE_MACHINE_TEMPLATE,
    check_data_sizes,
    render_state_machine,
    with_batch_task,
    with_transform,
)

if TYPE_CHECKING:
    from deploy.account import BuildQuota
    from deploy.rules_file import RulesFile


@dataclass
class Options:
    dry_run: bool = False
    overwrite_secrets: bool = False
    remove_secrets: bool = False
    remove_images: bool = False


class Deployment:
    """The ordered list of resources for one prefix in one account and region."""

    def __init__(self, settings: Settings, aws: Aws, options: Options,
                 jobs: list[list[str]] | None = None, rules: RulesFile | None = None):
        self.settings = settings
        self.aws = aws
        self.options = options
        self.names = Names(settings.prefix)
        self.jobs = jobs
        self.rules = rules  # rules_file, read and checked (deploy/rules_file.py)
        # read from the account by setup before it changes anything (deploy/account.py)
        self.build_quota: BuildQuota | None = None
        self.target_storage: str | None = None

    # ARNs are known before anything exists, so a dry run can show complete policies.
    def role_arn(self, service: str) -> str:
        return self.aws.arn("iam", f"role/{self.names.role(service)}", region=False)

    def function_arn(self) -> str:
        return self.aws.arn("lambda", f"function:{self.names.notify_function}")

    def state_machine_arn(self, name: str) -> str:
        return self.aws.arn("states", f"stateMachine:{name}")

    def topic_arn(self) -> str:
        return self.aws.arn("sns", self.names.alarm_topic)

    def project_arn(self) -> str:
        return self.aws.arn("codebuild", f"project/{self.names.project}")

    def parameter_arn(self, path: str) -> str:
        return self.aws.arn("ssm", f"parameter{path}")

    def log_group_arn(self, name: str) -> str:
        return self.aws.arn("logs", f"log-group:{name}")

    def image_uri(self) -> str:
        """The image CodeBuild (NO_SOURCE) or Batch runs: ecr_image, else the project's own."""
        settings = self.settings
        if settings.ecr_image:
            return settings.ecr_image
        return (f"{self.aws.account}.dkr.ecr.{self.aws.region}.amazonaws.com/"
                f"{self.names.repository}:{settings.image_tag}")

    def repository_arn(self) -> str:
        """The ARN of the repository image_uri() lives in (which may be another account's)."""
        registry, _, repository = self.image_uri().partition("/")
        repository = repository.split("@")[0].split(":")[0]
        account, _, rest = registry.partition(".dkr.ecr.")
        region = rest.split(".")[0]
        return f"arn:{PARTITION}:ecr:{region}:{account}:repository/{repository}"

    def copier_log_group(self) -> str:
        """Where the copier's JSON lines land with the runner in use."""
        if self.settings.runner == "batch":
            return self.names.batch_log_group
        return self.names.project_log_group

    def batch_service_role_arn(self) -> str:
        return self.aws.arn(
            "iam", f"role/aws-service-role/batch.amazonaws.com/{BATCH_SERVICE_LINKED_ROLE}",
            region=False)

    def instance_profile_arn(self) -> str:
        return self.aws.arn("iam", f"instance-profile/{self.names.instance_profile}",
                            region=False)

    def compute_environment_arn(self) -> str:
        return self.aws.arn("batch", f"compute-environment/{self.names.compute_environment}")

    def job_queue_arn(self) -> str:
        return self.aws.arn("batch", f"job-queue/{self.names.job_queue}")

    def job_definition_arns(self) -> list[str]:
        # SubmitJob with a bare name is checked against the name, with a revision against it
        arn = self.aws.arn("batch", f"job-definition/{self.names.job_definition}")
        return [arn, f"{arn}:*"]

    def state_machine_definition(self) -> dict:
        if self.jobs is None:
            raise SettingsError("no table assignment: setup plans the jobs first")
        template = json.loads(STATE_MACHINE_TEMPLATE.read_text())
        settings = self.settings
        values = {
            "ProjectName": self.names.project,
            "NotifyFunctionArn": self.function_arn(),
            "JobTimeoutSeconds": settings.job_timeout_seconds,
            "ExecutionTimeoutSeconds": settings.execution_timeout_seconds,
            # the copy jobs read one exported snapshot (docs/aws.md, "Two phases")
            "OneSnapshot": settings.one_snapshot,
            "Swap": settings.swap,
        }
        if settings.runner == "batch":
            template = with_batch_task(template, json.loads(BATCH_TASK_TEMPLATE.read_text()))
            values |= {"Prefix": self.names.prefix, "JobQueueArn": self.job_queue_arn(),
                       "JobDefinitionName": self.names.job_definition,
                       "Region": self.aws.region}
        definition = render_state_machine(template, self.jobs, values, settings.tables)
        if settings.transform_state_machine:
            definition = with_transform(definition, settings.transform_state_machine,
                                        settings.transform_timeout_seconds, settings.tables)
        check_data_sizes(definition)
        return definition
