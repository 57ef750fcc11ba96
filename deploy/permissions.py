"""IAM permissions: one least-privilege policy per role, complete before anything exists."""

from __future__ import annotations

from typing import TYPE_CHECKING

import runlog
from deploy.names import BATCH_SYNC_RULE, CODEBUILD_SYNC_RULE, EXECUTION_SYNC_RULE

if TYPE_CHECKING:
    from deploy.deployment import Deployment


def policy(*statements: dict) -> dict:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def allow(actions: list[str], resources: list[str], condition: dict | None = None) -> dict:
    statement = {"Effect": "Allow", "Action": actions, "Resource": resources}
    if condition:
        statement["Condition"] = condition
    return statement


def copier_parameters_statement(deployment: Deployment) -> dict:
    # The copier reads its path recursively (GetParametersByPath checks the path itself);
    # the passwords use the AWS managed key, which needs no kms grant here.
    prefix = deployment.names.ssm_prefix
    return allow(["ssm:GetParametersByPath", "ssm:GetParameters", "ssm:GetParameter"], [
        deployment.parameter_arn(prefix.rstrip("/")), deployment.parameter_arn(f"{prefix}*")])


def storage_statements(deployment: Deployment) -> list[dict]:
    """The copier reads the reporting instance's FreeStorageSpace before it stages anything,
    where setup found it to be an RDS instance. cloudwatch:GetMetricStatistics has no
    resource type: "*" ("Actions, resources, and condition keys for Amazon CloudWatch",
    Service Authorization Reference)."""
    if not (deployment.target_storage or "").startswith(runlog.STORAGE_RDS):
        return []
    return [allow(["cloudwatch:GetMetricStatistics"], ["*"])]


def image_pull_statements(deployment: Deployment) -> list[dict]:
    return [
        allow(["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
               "ecr:BatchCheckLayerAvailability"], [deployment.repository_arn()]),
        allow(["ecr:GetAuthorizationToken"], ["*"]),  # the action has no resource type
    ]


def log_writing_statement(deployment: Deployment, group_name: str) -> dict:
    group = deployment.log_group_arn(group_name)
    return allow(["logs:CreateLogStream", "logs:PutLogEvents"], [group, f"{group}:*"])


def codebuild(deployment: Deployment) -> dict:
    settings, names = deployment.settings, deployment.names
    statements = [
        log_writing_statement(deployment, names.project_log_group),
        copier_parameters_statement(deployment),
        *storage_statements(deployment),
    ]
    if settings.vpc_id:
        statements += [
            allow(["ec2:CreateNetworkInterface", "ec2:DescribeDhcpOptions",
                   "ec2:DescribeNetworkInterfaces", "ec2:DeleteNetworkInterface",
                   "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups", "ec2:DescribeVpcs"],
                  ["*"]),
            allow(["ec2:CreateNetworkInterfacePermission"],
                  [deployment.aws.arn("ec2", "network-interface/*")],
                  {"StringEquals": {"ec2:AuthorizedService": "codebuild.amazonaws.com"},
                   "ArnEquals": {"ec2:Subnet": [deployment.aws.arn("ec2", f"subnet/{subnet}")
                                                for subnet in settings.subnets]}}),
        ]
    if settings.runs_an_image:
        statements += image_pull_statements(deployment)
    return policy(*statements)


def notify_function(deployment: Deployment) -> dict:
    group = deployment.log_group_arn(deployment.names.notify_log_group)
    copier_logs = deployment.log_group_arn(deployment.copier_log_group())
    return policy(
        allow(["ssm:GetParameter"], [deployment.parameter_arn(deployment.names.webhook_parameter)]),
        allow(["logs:CreateLogStream", "logs:PutLogEvents"], [group, f"{group}:*"]),
        # the summary's failed and slowest tables: the copier's lines, and nothing else
        allow(["logs:FilterLogEvents"], [copier_logs, f"{copier_logs}:*"]),
    )


def state_machine(deployment: Deployment) -> dict:
    if deployment.settings.runner == "batch":
        run_jobs = [
            allow(["batch:SubmitJob"], [deployment.job_queue_arn(), *deployment.job_definition_arns()]),
            allow(["batch:TerminateJob"], [deployment.aws.arn("batch", "job/*")]),
            allow(["batch:DescribeJobs"], ["*"]),  # the action has no resource type
            allow(["events:PutTargets", "events:PutRule", "events:DescribeRule"],
                  [deployment.aws.arn("events", f"rule/{BATCH_SYNC_RULE}")]),
        ]
    else:
        run_jobs = [
            allow(["codebuild:StartBuild", "codebuild:StopBuild",
                   "codebuild:BatchGetBuilds"], [deployment.project_arn()]),
            allow(["events:PutTargets", "events:PutRule", "events:DescribeRule"],
                  [deployment.aws.arn("events", f"rule/{CODEBUILD_SYNC_RULE}")]),
        ]
    return policy(
        *run_jobs,
        *transform_statements(deployment),
        allow(["lambda:InvokeFunction"], [deployment.function_arn(), f"{deployment.function_arn()}:*"]),
    )


def transform_statements(deployment: Deployment) -> list[dict]:
    """The Transform step: start the one state machine, follow and (on a timeout or stop) stop
    its executions, and the managed rule .sync uses ("IAM policies for nested workflows",
    Step Functions Developer Guide)."""
    arn = deployment.settings.transform_state_machine
    if not arn:
        return []
    return [
        allow(["states:StartExecution"], [arn]),
        allow(["states:DescribeExecution", "states:StopExecution"],
              [arn.replace(":stateMachine:", ":execution:") + ":*"]),
        allow(["events:PutTargets", "events:PutRule", "events:DescribeRule"],
              [deployment.aws.arn("events", f"rule/{EXECUTION_SYNC_RULE}")]),
    ]


def starter(deployment: Deployment) -> dict:
    # the notify Lambda names the run after its local date, and says when it exists already
    return policy(allow(["states:StartExecution"],
                        [deployment.state_machine_arn(deployment.names.state_machine)]),
                  allow(["lambda:InvokeFunction"],
                        [deployment.function_arn(), f"{deployment.function_arn()}:*"]))


def scheduler(deployment: Deployment) -> dict:
    return policy(allow(["states:StartExecution"],
                        [deployment.state_machine_arn(deployment.names.starter)]))
