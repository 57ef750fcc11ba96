"""The nightly copy on AWS: settings, the ordered list of resources, and the walks over it.

setup_aws.py walks the list forwards and makes every resource present; teardown_aws.py walks
it backwards and removes what setup created. Each resource knows how to find, create, update
and remove itself; `--dry-run` runs the same walk without the calls that change anything.
See docs/aws.md for what gets created and why.
"""

from __future__ import annotations

import argparse
import base64
import copy
import dataclasses
import datetime as dt
import functools
import getpass
import hashlib
import io
import json
import os
import random
import re
import sys
import time
import tomllib
import urllib.parse
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

import copier

HERE = Path(__file__).resolve().parent
STATE_MACHINE_TEMPLATE = HERE / "state_machine.json"
# The copy task's runner-specific fields for runner = "batch" (see with_batch_task).
BATCH_TASK_TEMPLATE = HERE / "state_machine_batch.json"
NOTIFY_SOURCE = HERE / "notify_lambda.py"
DEFAULT_CONFIG = Path("deploy.toml")

TAG_KEY = "project"
CODEBUILD_SYNC_RULE = "StepFunctionsGetEventForCodeBuildStartBuildRule"
BATCH_SYNC_RULE = "StepFunctionsGetEventsForBatchJobsRule"  # plural, unlike CodeBuild's
# One per account, used by every Batch compute environment: setup makes sure it exists,
# teardown never removes it.
BATCH_SERVICE_LINKED_ROLE = "AWSServiceRoleForBatch"
RUNNERS = ("codebuild", "batch")
BATCH_COMPUTE_TYPES = ("FARGATE", "EC2")
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096,
                      1827, 2192, 2557, 2922, 3288, 3653)
WEBHOOK_ENV_VAR = "SLACK_WEBHOOK_URL"
# A custom image holds the project at /app with its requirements installed.
ECR_BUILDSPEC = """version: 0.2
phases:
  build:
    commands:
      - cd /app && python copier.py
"""
DURATIONS_QUERY = (
    "fields @timestamp, @logStream, table, rows, bytes, seconds\n"
    '| filter event = "table_copied"\n'
    "| sort seconds desc"
)


class SettingsError(Exception):
    """A setting is missing or invalid: fix the config file or the flag named in the message."""


class AwsError(Exception):
    """An AWS call failed; the message names the resource it concerns."""


# --------------------------------------------------------------------------- settings


@dataclass
class Settings:
    """Everything setup needs besides secrets. Config file keys and flags use these names."""

    prefix: str = field(default="nightly-copy", metadata={"help": "name prefix and tag value"})
    region: str = field(default="", metadata={"help": "AWS region (default: AWS_REGION etc.)"})
    tables: list[str] = field(default_factory=list, metadata={"help": "tables to copy"})
    jobs: int = field(default=5, metadata={"help": "parallel CodeBuild jobs"})
    table_weights: dict[str, float] = field(default_factory=dict, metadata={"file_only": True})
    github_url: str = field(default="", metadata={"help": "GitHub repository URL"})
    branch: str = field(default="main", metadata={"help": "branch the builds check out"})
    image: str = field(default="aws/codebuild/standard:7.0", metadata={"help": "build image"})
    ecr_image: str = field(default="", metadata={"help": "custom ECR image URI (NO_SOURCE)"})
    custom_image: bool = field(default=False, metadata={
        "help": "create the ECR repository <prefix> and run its image (NO_SOURCE, no GitHub)"})
    image_tag: str = field(default="latest",
                           metadata={"help": "tag of the image in that repository"})
    runner: str = field(default="codebuild", metadata={"help": "codebuild or batch"})
    batch_compute: str = field(default="FARGATE", metadata={"help": "FARGATE or EC2"})
    batch_vcpus: int = field(default=1, metadata={"help": "vCPUs per Batch job"})
    batch_memory_mib: int = field(default=2048, metadata={"help": "MiB of memory per Batch job"})
    assign_public_ip: bool = field(default=False, metadata={
        "help": "Fargate jobs get a public IP (a public subnet instead of a NAT gateway)"})
    compute_type: str = field(default="BUILD_GENERAL1_SMALL",
                              metadata={"help": "CodeBuild compute type"})
    build_timeout_minutes: int = field(default=90,
                                       metadata={"help": "minutes before a build is stopped"})
    queued_timeout_minutes: int = field(
        default=60, metadata={"help": "minutes a build may wait in the queue"})
    vpc_id: str = field(default="", metadata={"help": "VPC for the builds (optional)"})
    subnets: list[str] = field(default_factory=list, metadata={"help": "private subnet ids"})
    security_groups: list[str] = field(default_factory=list,
                                       metadata={"help": "security group ids"})
    schedule: str = field(default="cron(0 3 * * ? *)",
                          metadata={"help": "EventBridge Scheduler expression"})
    timezone: str = field(default="UTC", metadata={"help": "IANA time zone of the schedule"})
    log_retention_days: int = field(default=30, metadata={"help": "days logs are kept"})
    lambda_runtime: str = field(default="python3.12", metadata={"help": "Lambda runtime"})
    source: dict[str, str] = field(default_factory=dict, metadata={"file_only": True})
    target: dict[str, str] = field(default_factory=dict, metadata={"file_only": True})

    def validate(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,31}", self.prefix):
            raise SettingsError(
                f"prefix {self.prefix!r}: use 1-32 lowercase letters, digits or '-'")
        if self.log_retention_days not in LOG_RETENTION_DAYS:
            raise SettingsError(f"log_retention_days {self.log_retention_days} is not one of "
                                f"{', '.join(map(str, LOG_RETENTION_DAYS))}")
        for database in copier.DATABASES:
            unknown = set(getattr(self, database)) - set(copier.CONNECTION_SETTINGS)
            if unknown:
                raise SettingsError(f"[{database}] has unknown keys {sorted(unknown)}")
            if set(getattr(self, database)) & copier.SECRET_SETTINGS:
                raise SettingsError(f"[{database}] must not hold secrets; set "
                                    f"{secret_env_var(database, 'password')} instead")

    def validate_for_setup(self) -> None:
        self.validate()
        if not self.tables:
            raise SettingsError("tables: give at least one table (config file or --tables)")
        if len(set(self.tables)) != len(self.tables):
            raise SettingsError("tables: a table is listed twice")
        if self.jobs < 1:
            raise SettingsError("jobs must be at least 1")
        if not self.github_url and not self.runs_an_image:
            raise SettingsError("github_url is required (or custom_image = true, or ecr_image)")
        self.validate_runner()
        if not 5 <= self.build_timeout_minutes <= 2160:
            raise SettingsError("build_timeout_minutes must be between 5 and 2160")
        if not 5 <= self.queued_timeout_minutes <= 480:
            raise SettingsError("queued_timeout_minutes must be between 5 and 480")
        if bool(self.vpc_id) != bool(self.subnets) or bool(self.subnets) != bool(
                self.security_groups):
            raise SettingsError("vpc_id, subnets and security_groups go together")
        unknown = set(self.table_weights) - set(self.tables)
        if unknown:
            raise SettingsError(f"table_weights names tables not in tables: {sorted(unknown)}")

    @property
    def uses_own_repository(self) -> bool:
        """Setup creates the ECR repository: asked for, or Batch needs an image and none is given."""
        return self.custom_image or (self.runner == "batch" and not self.ecr_image)

    @property
    def runs_an_image(self) -> bool:
        return bool(self.ecr_image) or self.uses_own_repository

    def validate_runner(self) -> None:
        if self.runner not in RUNNERS:
            raise SettingsError(f"runner {self.runner!r}: use one of {', '.join(RUNNERS)}")
        if self.custom_image and self.ecr_image:
            raise SettingsError("custom_image and ecr_image exclude each other: pick one image")
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", self.image_tag):
            raise SettingsError(f"image_tag {self.image_tag!r} is not a valid image tag")
        if self.runner != "batch":
            return
        if self.batch_compute not in BATCH_COMPUTE_TYPES:
            raise SettingsError(f"batch_compute {self.batch_compute!r}: use one of "
                                f"{', '.join(BATCH_COMPUTE_TYPES)}")
        if not self.subnets or not self.security_groups:
            raise SettingsError("runner batch needs subnets and security_groups (and vpc_id): "
                                "Batch jobs always run in a VPC")
        if self.batch_vcpus < 1 or self.batch_memory_mib < 512:
            raise SettingsError("batch_vcpus must be at least 1 and batch_memory_mib at least 512")


SETTING_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def secret_env_var(database: str, setting: str) -> str:
    return f"COPIER_{database.upper()}_{setting.upper()}"


def _flag_setting_name(database: str, setting: str) -> str:
    return f"{database}_{setting}"


def add_settings_arguments(parser: argparse.ArgumentParser, names: Iterable[str]) -> None:
    """Add --config and one flag per setting; a flag overrides the config file."""
    parser.add_argument("--config", type=Path, default=None,
                        help=f"TOML settings file (default: {DEFAULT_CONFIG} if it exists)")
    for name in names:
        if name in copier.DATABASES:
            for setting in copier.CONNECTION_SETTINGS:
                if setting not in copier.SECRET_SETTINGS:
                    parser.add_argument(f"--{name}-{setting}",
                                        dest=_flag_setting_name(name, setting),
                                        help=f"{name} database {setting}")
            continue
        f = SETTING_FIELDS[name]
        if f.metadata.get("file_only"):
            continue
        if f.type == "bool":
            parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None,
                                action=argparse.BooleanOptionalAction,
                                help=f.metadata.get("help", name) + f" (default {f.default})")
            continue
        notes = ["comma-separated"] if f.type == "list[str]" else []
        if f.default not in (dataclasses.MISSING, ""):
            notes.append(f"default {f.default}")
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name,
                            type=int if f.type == "int" else str,
                            help=f.metadata.get("help", name)
                            + (f" ({'; '.join(notes)})" if notes else ""))


def load_settings(args: argparse.Namespace) -> Settings:
    """Read the config file, then apply the flags given on the command line."""
    path = args.config
    values: dict[str, Any] = {}
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    if path is not None:
        try:
            values = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise SettingsError(f"config file {path}: {err}") from err
    unknown = set(values) - set(SETTING_FIELDS)
    if unknown:
        raise SettingsError(f"config file {path}: unknown settings {sorted(unknown)}")
    settings = Settings(**values)
    for name in SETTING_FIELDS:
        if name in copier.DATABASES:
            for setting in copier.CONNECTION_SETTINGS:
                value = getattr(args, _flag_setting_name(name, setting), None)
                if value is not None:
                    getattr(settings, name)[setting] = value
            continue
        value = getattr(args, name, None)
        if value is None:
            continue
        setattr(settings, name, value)
    for name, f in SETTING_FIELDS.items():
        if f.type == "list[str]" and isinstance(getattr(settings, name), str):
            items = getattr(settings, name).split(",")
            setattr(settings, name, [item.strip() for item in items if item.strip()])
    for database in copier.DATABASES:  # port = 5432 in TOML is a number; SSM holds text
        setattr(settings, database, {k: str(v) for k, v in getattr(settings, database).items()})
    for name, f in SETTING_FIELDS.items():
        value = getattr(settings, name)
        if f.type == "int" and (not isinstance(value, int) or isinstance(value, bool)):
            raise SettingsError(f"{name} must be a whole number, not {value!r}")
        if f.type == "bool" and not isinstance(value, bool):
            raise SettingsError(f"{name} must be true or false, not {value!r}")
    return settings


# --------------------------------------------------------------------------- AWS calls

THROTTLING_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "TooManyRequestsException",
    "RequestLimitExceeded", "RequestThrottled", "SlowDown",
})
THROTTLE_ATTEMPTS = 8
ROLE_PROPAGATION_ATTEMPTS = 10  # about a minute of backoff in total
_sleep = time.sleep  # tests replace this to record the delays


def is_throttling(err: ClientError) -> bool:
    return err.response.get("Error", {}).get("Code") in THROTTLING_CODES


def is_role_not_yet_usable(err: ClientError) -> bool:
    """The errors a service gives while a role it was just handed is still propagating."""
    code = err.response.get("Error", {}).get("Code", "")
    message = err.response.get("Error", {}).get("Message", "")
    operation = err.operation_name
    if operation in ("CreateFunction", "UpdateFunctionConfiguration"):
        return code == "InvalidParameterValueException" and "cannot be assumed" in message
    if operation in ("CreateProject", "UpdateProject"):
        return code == "InvalidInputException" and "sts:AssumeRole" in message
    if operation in ("CreateStateMachine", "UpdateStateMachine"):
        return code == "AccessDeniedException"
    if operation in ("CreateSchedule", "UpdateSchedule"):
        # Scheduler checks the new role's trust policy and can see an older version of it
        # (aws-sdk-js-v3 issue 6494): the same role passes a few seconds later.
        return code == "ValidationException" and "EventBridge Scheduler to assume" in message
    return False


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter: between half and all of min(cap, base * 2**attempt)."""
    ceiling = min(cap, base * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)


def with_aws_retries(call: Callable) -> Callable:
    """Retry throttling and IAM propagation errors with jittered backoff; raise the rest."""

    @functools.wraps(call)
    def retrying(*args, **kwargs):
        attempt = 0
        while True:
            try:
                return call(*args, **kwargs)
            except ClientError as err:
                attempt += 1
                if is_throttling(err) and attempt < THROTTLE_ATTEMPTS:
                    _sleep(backoff_delay(attempt, base=0.5, cap=20))
                elif is_role_not_yet_usable(err) and attempt < ROLE_PROPAGATION_ATTEMPTS:
                    _sleep(backoff_delay(attempt, base=1.5, cap=12))
                else:
                    raise

    return retrying


class RetryingClient:
    """A boto3 client whose API calls all go through with_aws_retries."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        if name.startswith(("get_paginator", "get_waiter", "can_paginate")) or not callable(attr):
            return attr
        return with_aws_retries(attr)


class Aws:
    """Clients for one account and region; the retry policy lives in with_aws_retries only."""

    def __init__(self, region: str = ""):
        self.session = boto3.Session(region_name=region or None)
        self.region = self.session.region_name
        if not self.region:
            raise SettingsError("no AWS region: set region in the config, --region or AWS_REGION")
        self._clients: dict[str, RetryingClient] = {}
        try:
            self.account = self.client("sts").get_caller_identity()["Account"]
        except (ClientError, BotoCoreError) as err:
            raise AwsError(f"AWS credentials: {describe_error(err)}") from err

    def client(self, service: str) -> RetryingClient:
        if service not in self._clients:
            config = Config(retries={"mode": "standard", "total_max_attempts": 1})
            self._clients[service] = RetryingClient(self.session.client(service, config=config))
        return self._clients[service]

    def arn(self, service: str, resource: str, region: bool = True) -> str:
        return f"arn:aws:{service}:{self.region if region else ''}:{self.account}:{resource}"


def describe_error(err: Exception) -> str:
    """One line: the API operation, the error code and its message."""
    if isinstance(err, ClientError):
        error = err.response.get("Error", {})
        message = " ".join(str(error.get("Message", "")).split())
        if message.startswith("<"):  # an HTML error page, not an AWS error
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            message = f"HTTP {status} without error details"
        return f"{err.operation_name}: {error.get('Code', '?')}: {message[:300]}"
    return " ".join(str(err).split())[:300] or type(err).__name__


def error_code(err: ClientError) -> str:
    return err.response.get("Error", {}).get("Code", "")


def is_server_error(err: BaseException | None) -> bool:
    """A 5xx answer or, with moto in process, an API it does not implement."""
    if isinstance(err, NotImplementedError):
        return True
    if isinstance(err, ClientError):
        return err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500
    return False


# --------------------------------------------------------------------------- names


@dataclass(frozen=True)
class Names:
    """Every name the deployment uses, derived from the prefix: written here and nowhere else."""

    prefix: str

    @property
    def ssm_prefix(self) -> str:
        return f"/{self.prefix}/"

    def parameter(self, database: str, setting: str) -> str:
        return f"{self.ssm_prefix}{database}/{setting}"

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
    """The name of the run for one day: at most one run per name, so one per day."""
    return day.isoformat()


def execution_input(day: dt.date) -> str:
    return json.dumps({"date": day.isoformat()}, separators=(",", ":"))


# --------------------------------------------------------------------------- the plan


def job_name(number: int) -> str:
    return f"job-{number}"


def table_weights(settings: Settings, out: Callable[[str], None]) -> tuple[dict[str, float], str]:
    """Source table sizes when the source is reachable, else the configured weights, else 1."""
    password = os.environ.get(secret_env_var("source", "password"))
    if settings.source.get("host") and password:
        import psycopg2

        params = {**{k: v for k, v in copier.CONNECTION_SETTINGS.items() if v is not None},
                  **settings.source, "password": password}
        try:
            conn = psycopg2.connect(connect_timeout=5, **params)
        except psycopg2.Error as err:
            out(f"source not reachable ({str(err).strip().splitlines()[0]}); "
                "using configured weights")
        else:
            try:
                sizes = copier.source_table_sizes(conn, ",".join(settings.tables))
            except copier.CopierError as err:  # an unknown table: say so before creating
                raise SettingsError(f"tables: {err}") from err
            finally:
                conn.close()
            # keyed by the source's qualified names, in the order of the list given
            return dict(zip(settings.tables, map(float, sizes.values()), strict=True)), (
                "source table sizes")
    if settings.table_weights:
        return ({t: float(settings.table_weights.get(t, 1)) for t in settings.tables},
                "configured table_weights")
    return {t: 1.0 for t in settings.tables}, "equal weights"


def split_tables_value(text: str) -> list[str]:
    """A TABLES value back into the names it was joined from (commas inside quotes stay)."""
    names, current, quoted = [], "", False
    for ch in text:
        if ch == '"':
            quoted = not quoted  # a doubled quote toggles twice: still inside
        if ch == "," and not quoted:
            names.append(current.strip())
            current = ""
        else:
            current += ch
    names.append(current.strip())
    return [name for name in names if name]


def _tables_value(node: Any) -> str | None:
    """The first {"Name": "TABLES", "Value": ...} under node: the same for every runner."""
    if isinstance(node, dict):
        if node.get("Name") == "TABLES" and isinstance(node.get("Value"), str):
            return node["Value"]
        children = list(node.values())
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        found = _tables_value(child)
        if found is not None:
            return found
    return None


def assignment_of(definition: dict) -> list[list[str]] | None:
    """The tables of each job in a rendered nightly definition, or None if it has none."""
    branches = definition.get("States", {}).get("Copy tables", {}).get("Branches") or []
    values = [_tables_value(branch) for branch in branches]
    if not values or None in values:
        return None
    return [split_tables_value(value) for value in values]


def deployed_assignment(aws: Aws, names: Names) -> list[list[str]] | None:
    """The table assignment of the deployed nightly state machine (None: not deployed)."""
    arn = aws.arn("states", f"stateMachine:{names.state_machine}")
    try:
        found = aws.client("stepfunctions").describe_state_machine(stateMachineArn=arn)
    except ClientError as err:
        if error_code(err) == "StateMachineDoesNotExist":
            return None
        raise AwsError(f"state machine {names.state_machine}: {describe_error(err)}") from err
    return assignment_of(json.loads(found["definition"]))


def plan_jobs(settings: Settings, out: Callable[[str], None],
              aws: Aws | None = None) -> list[list[str]]:
    """Split the tables over the jobs by weight, or keep the deployed split when it covers
    the same tables with the same number of jobs: `operations.py rebalance --apply` sets it
    from measured times, and a plain setup must not silently undo that."""
    weights, basis = table_weights(settings, out)  # also checks the list on a reachable source
    jobs = min(settings.jobs, len(settings.tables))
    if jobs < settings.jobs:
        out(f"only {len(settings.tables)} tables: using {jobs} jobs instead of {settings.jobs}")
    deployed = deployed_assignment(aws, Names(settings.prefix)) if aws else None
    if deployed and len(deployed) == jobs and sorted(
            t for job in deployed for t in job) == sorted(settings.tables):
        out("table assignment kept from the deployed state machine (same tables and jobs; "
            "operations.py rebalance changes it):")
        for number, tables in enumerate(deployed, start=1):
            out(f"  {job_name(number)}  {','.join(tables)}")
        return deployed
    assignment = copier.assign_to_jobs(weights, jobs)
    out(f"table assignment ({basis}):")
    for number, tables in enumerate(assignment, start=1):
        load = sum(weights[t] for t in tables)
        out(f"  {job_name(number)}  weight {load:g}  {','.join(tables)}")
    return assignment


def render_state_machine(template: dict, jobs: list[list[str]], values: dict[str, Any]) -> dict:
    """Fill the template: one copy of the branch template per job, then every ${Name}."""

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

    definition = copy.deepcopy(template)
    parallel = definition["States"]["Copy tables"]
    (branch,) = parallel["Branches"]
    parallel["Branches"] = [
        fill(branch, {**values, "JobName": job_name(n), "Tables": ",".join(tables)})
        for n, tables in enumerate(jobs, start=1)
    ]
    return fill(definition, values)


def with_batch_task(template: dict, batch_task: dict) -> dict:
    """The template with its copy task run by AWS Batch instead of CodeBuild.

    Only the runner-specific fields change: Resource, Parameters and Retry come from the Batch
    file, and the ResultSelector keeps the template's fixed entries (job, tables) with the
    Batch file's paths. TimeoutSeconds, Catch and End stay, and so do the states after the
    Parallel. The container's environment is the CodeBuild task's EnvironmentVariablesOverride
    without "Type": both runners get the same variables, written once.
    """
    definition = copy.deepcopy(template)
    (branch,) = definition["States"]["Copy tables"]["Branches"]
    task = branch["States"][branch["StartAt"]]
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
    branch["States"][branch["StartAt"]] = {
        **{k: parts.get(k, v) for k, v in task.items()}, **parts}
    return definition


def starter_definition(state_machine_arn: str) -> dict:
    """A two-state workflow that starts the nightly run named after the scheduled date.

    EventBridge Scheduler cannot format a date, but it can pass its scheduled time
    ("2026-11-27T03:00:00Z"); States.StringSplit turns that into "2026-11-27".
    """
    date_of_scheduled_time = "States.ArrayGetItem(States.StringSplit($.scheduled_time, 'T'), 0)"
    return {
        "Comment": "Start the nightly copy once per date: the execution is named after it.",
        "StartAt": "Start nightly copy",
        "States": {
            "Start nightly copy": {
                "Type": "Task",
                "Resource": "arn:aws:states:::states:startExecution",
                "Parameters": {
                    "StateMachineArn": state_machine_arn,
                    "Name.$": date_of_scheduled_time,
                    "Input": {"date.$": date_of_scheduled_time},
                },
                "TimeoutSeconds": 60,
                "Catch": [{
                    "ErrorEquals": ["StepFunctions.ExecutionAlreadyExistsException"],
                    "ResultPath": "$.already_started",
                    "Next": "Already started for this date",
                }],
                "End": True,
            },
            "Already started for this date": {"Type": "Succeed"},
        },
    }


def zip_notify_function() -> bytes:
    """notify_lambda.py alone in a zip with fixed timestamps, so the hash is reproducible."""
    if not NOTIFY_SOURCE.exists():
        raise SettingsError(f"{NOTIFY_SOURCE.name} is missing next to {Path(__file__).name}")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        info = zipfile.ZipInfo(NOTIFY_SOURCE.name, date_time=(1980, 1, 1, 0, 0, 0))
        info.external_attr = 0o644 << 16
        archive.writestr(info, NOTIFY_SOURCE.read_bytes())
    return buffer.getvalue()


# --------------------------------------------------------------------------- resources


def policy(*statements: dict) -> dict:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def allow(actions: list[str], resources: list[str], condition: dict | None = None) -> dict:
    statement = {"Effect": "Allow", "Action": actions, "Resource": resources}
    if condition:
        statement["Condition"] = condition
    return statement


def normalized(document: Any) -> Any:
    return json.loads(json.dumps(document, sort_keys=True))


def as_document(document: str | dict | None) -> dict | None:
    """IAM returns policies as dicts through boto3; some endpoints leave them JSON strings."""
    if isinstance(document, str):
        return json.loads(urllib.parse.unquote(document))
    return document


class Resource:
    """One AWS resource: find it, say how it differs from what we want, create/update/remove it.

    find() returns a view of the current state with the same keys as desired(), or None.
    """

    kind = "resource"
    taggable = True
    # Shared with the rest of the account (the Batch service-linked role): ensured present
    # when needed, never removed.
    shared = False

    def __init__(self, deployment: Deployment, name: str, needed: bool = True):
        self.d = deployment
        self.name = name
        # False for the resources of the runner or image not in use: setup removes them.
        self.needed = needed

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}"

    @property
    def aws(self) -> Aws:
        return self.d.aws

    def prepare(self, dry_run: bool) -> None:
        """Gather what create/update need (for example a secret) before anything changes."""

    def find(self) -> dict | None:
        raise NotImplementedError

    def desired(self) -> dict:
        raise NotImplementedError

    def create(self) -> None:
        raise NotImplementedError

    def update(self, current: dict, changed: list[str]) -> None:
        raise NotImplementedError

    def remove(self, current: dict) -> None:
        raise NotImplementedError

    def differences(self, current: dict) -> list[str]:
        want = self.desired()
        return [key for key, value in want.items() if normalized(current.get(key)) != normalized(
            value)]

    def owned(self, current: dict) -> bool:
        return not self.taggable or current.get("tags", {}).get(TAG_KEY) == self.d.names.prefix

    def kept_on_teardown(self, current: dict) -> str | None:
        return None

    def our_tags(self) -> dict[str, str]:
        return {TAG_KEY: self.d.names.prefix}


def only_our_tag(tags: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if k == TAG_KEY}


class Parameter(Resource):
    kind = "SSM parameter"

    def __init__(self, deployment, name, value: str | None, secret: bool, env_var: str = ""):
        super().__init__(deployment, name)
        self.value = value
        self.secret = secret
        self.env_var = env_var
        self.secret_value: str | None = None

    def prepare(self, dry_run: bool) -> None:
        current = self.find()
        if not self.secret:
            if self.value is None and current is None:
                raise SettingsError(f"{self.name}: no value; set it in the config file or by flag")
            return
        # A secret is read only when it has to be written: missing, stored as plain text,
        # or an overwrite was asked for. A dry run never asks.
        needed = (current is None or current["type"] != "SecureString"
                  or self.d.options.overwrite_secrets)
        if needed and not dry_run:
            self.secret_value = read_secret(self.env_var, self.name)

    def find(self) -> dict | None:
        ssm = self.aws.client("ssm")
        try:
            parameter = ssm.get_parameter(Name=self.name)["Parameter"]
        except ClientError as err:
            if error_code(err) == "ParameterNotFound":
                return None
            raise
        tags = ssm.list_tags_for_resource(ResourceType="Parameter", ResourceId=self.name)
        view = {"type": parameter["Type"],
                "tags": only_our_tag({t["Key"]: t["Value"] for t in tags.get("TagList", [])})}
        if not self.secret:
            view["value"] = parameter["Value"]
        return view

    def desired(self) -> dict:
        want = {"type": "SecureString" if self.secret else "String", "tags": self.our_tags()}
        if not self.secret and self.value is not None:
            want["value"] = self.value
        return want

    def differences(self, current: dict) -> list[str]:
        changed = super().differences(current)
        if self.secret and self.d.options.overwrite_secrets:
            changed.append("value (overwrite asked)")
        return changed

    def _value(self) -> str:
        return self.secret_value if self.secret else self.value

    def create(self) -> None:
        self.aws.client("ssm").put_parameter(
            Name=self.name, Value=self._value(), Type=self.desired()["type"],
            Tags=[{"Key": TAG_KEY, "Value": self.d.names.prefix}])

    def update(self, current: dict, changed: list[str]) -> None:
        ssm = self.aws.client("ssm")
        if any(c != "tags" for c in changed):
            ssm.put_parameter(Name=self.name, Value=self._value(), Type=self.desired()["type"],
                              Overwrite=True)
        ssm.add_tags_to_resource(ResourceType="Parameter", ResourceId=self.name,
                                 Tags=[{"Key": TAG_KEY, "Value": self.d.names.prefix}])

    def remove(self, current: dict) -> None:
        self.aws.client("ssm").delete_parameter(Name=self.name)

    def kept_on_teardown(self, current: dict) -> str | None:
        if self.secret and not self.d.options.remove_secrets:
            return "a secret; pass --remove-secrets to delete it"
        return None


def read_secret(env_var: str, parameter: str) -> str:
    value = os.environ.get(env_var)
    if value:
        return value
    if sys.stdin.isatty():
        value = getpass.getpass(f"{parameter} (input hidden; or set {env_var}): ")
        if value:
            return value
    raise SettingsError(f"{parameter}: set {env_var} or run setup on a terminal to type it")


class LogGroup(Resource):
    kind = "log group"

    def find(self) -> dict | None:
        logs = self.aws.client("logs")
        groups = logs.describe_log_groups(logGroupNamePrefix=self.name)["logGroups"]
        group = next((g for g in groups if g["logGroupName"] == self.name), None)
        if group is None:
            return None
        arn = group["arn"].removesuffix(":*")
        tags = logs.list_tags_for_resource(resourceArn=arn).get("tags", {})
        return {"retention_days": group.get("retentionInDays"), "tags": only_our_tag(tags),
                "arn": arn}

    def desired(self) -> dict:
        return {"retention_days": self.d.settings.log_retention_days, "tags": self.our_tags()}

    def create(self) -> None:
        logs = self.aws.client("logs")
        logs.create_log_group(logGroupName=self.name, tags=self.our_tags())
        logs.put_retention_policy(logGroupName=self.name,
                                  retentionInDays=self.d.settings.log_retention_days)

    def update(self, current: dict, changed: list[str]) -> None:
        logs = self.aws.client("logs")
        if "retention_days" in changed:
            logs.put_retention_policy(logGroupName=self.name,
                                      retentionInDays=self.d.settings.log_retention_days)
        if "tags" in changed:
            logs.tag_resource(resourceArn=current["arn"], tags=self.our_tags())

    def remove(self, current: dict) -> None:
        self.aws.client("logs").delete_log_group(logGroupName=self.name)


class Role(Resource):
    kind = "IAM role"
    POLICY_NAME = "permissions"

    def __init__(self, deployment, name, service: str, permissions: Callable[[], dict],
                 source_account: bool = False, needed: bool = True):
        super().__init__(deployment, name, needed)
        self.service = service
        self.permissions = permissions
        self.source_account = source_account

    def trust(self) -> dict:
        statement = {"Effect": "Allow", "Principal": {"Service": self.service},
                     "Action": "sts:AssumeRole"}
        if self.source_account:
            statement["Condition"] = {"StringEquals": {"aws:SourceAccount": self.aws.account}}
        return policy(statement)

    def find(self) -> dict | None:
        iam = self.aws.client("iam")
        try:
            role = iam.get_role(RoleName=self.name)["Role"]
        except ClientError as err:
            if error_code(err) == "NoSuchEntity":
                return None
            raise
        try:
            inline = iam.get_role_policy(RoleName=self.name, PolicyName=self.POLICY_NAME)
            permissions = inline["PolicyDocument"]
        except ClientError as err:
            if error_code(err) != "NoSuchEntity":
                raise
            permissions = None
        tags = iam.list_role_tags(RoleName=self.name)["Tags"]
        return {"trust": as_document(role["AssumeRolePolicyDocument"]),
                "permissions": as_document(permissions),
                "tags": only_our_tag({t["Key"]: t["Value"] for t in tags})}

    def desired(self) -> dict:
        return {"trust": self.trust(), "permissions": self.permissions(), "tags": self.our_tags()}

    def create(self) -> None:
        iam = self.aws.client("iam")
        iam.create_role(RoleName=self.name, AssumeRolePolicyDocument=json.dumps(self.trust()),
                        Description=f"{self.d.names.prefix}: used by {self.service}",
                        Tags=[{"Key": TAG_KEY, "Value": self.d.names.prefix}])
        iam.put_role_policy(RoleName=self.name, PolicyName=self.POLICY_NAME,
                            PolicyDocument=json.dumps(self.permissions()))

    def update(self, current: dict, changed: list[str]) -> None:
        iam = self.aws.client("iam")
        if "trust" in changed:
            iam.update_assume_role_policy(RoleName=self.name,
                                          PolicyDocument=json.dumps(self.trust()))
        if "permissions" in changed:
            iam.put_role_policy(RoleName=self.name, PolicyName=self.POLICY_NAME,
                                PolicyDocument=json.dumps(self.permissions()))
        if "tags" in changed:
            iam.tag_role(RoleName=self.name, Tags=[{"Key": TAG_KEY, "Value": self.d.names.prefix}])

    def remove(self, current: dict) -> None:
        iam = self.aws.client("iam")
        for name in iam.list_role_policies(RoleName=self.name)["PolicyNames"]:
            iam.delete_role_policy(RoleName=self.name, PolicyName=name)
        for attached in iam.list_attached_role_policies(RoleName=self.name)["AttachedPolicies"]:
            iam.detach_role_policy(RoleName=self.name, PolicyArn=attached["PolicyArn"])
        iam.delete_role(RoleName=self.name)


class CodeBuildProject(Resource):
    kind = "CodeBuild project"

    def spec(self) -> dict:
        s, names = self.d.settings, self.d.names
        if s.runs_an_image:
            # The code is in the image: no GitHub at 3 a.m. The role pulls (SERVICE_ROLE), with
            # permissions scoped to the one repository; the repository needs no policy.
            source = {"type": "NO_SOURCE", "buildspec": ECR_BUILDSPEC}
            image, pull = self.d.image_uri(), "SERVICE_ROLE"
        else:
            source = {"type": "GITHUB", "location": s.github_url, "buildspec": "buildspec.yml"}
            image, pull = s.image, "CODEBUILD"
        spec = {
            "name": self.name,
            "description": f"{names.prefix}: copy tables (TABLES set per job by the state machine)",
            "source": source,
            "artifacts": {"type": "NO_ARTIFACTS"},
            "environment": {
                "type": "LINUX_CONTAINER", "image": image, "computeType": s.compute_type,
                "imagePullCredentialsType": pull,
                "environmentVariables": [
                    {"name": "COPIER_SSM_PREFIX", "value": names.ssm_prefix, "type": "PLAINTEXT"},
                ],
            },
            "serviceRole": self.d.role_arn("codebuild"),
            "timeoutInMinutes": s.build_timeout_minutes,
            "queuedTimeoutInMinutes": s.queued_timeout_minutes,
            "logsConfig": {"cloudWatchLogs": {"status": "ENABLED",
                                              "groupName": names.project_log_group}},
            "tags": [{"key": TAG_KEY, "value": names.prefix}],
        }
        if not s.runs_an_image:
            spec["sourceVersion"] = s.branch
        if s.vpc_id:
            spec["vpcConfig"] = {"vpcId": s.vpc_id, "subnets": s.subnets,
                                 "securityGroupIds": s.security_groups}
        return spec

    @staticmethod
    def view(project: dict) -> dict:
        source = project.get("source", {})
        environment = project.get("environment", {})
        vpc = project.get("vpcConfig") or None
        # A NO_SOURCE project has no location; moto insists on one (the tests add a dummy).
        keys = ("type", "buildspec") if source.get("type") == "NO_SOURCE" else (
            "type", "location", "buildspec")
        return {
            "source": {k: source.get(k) for k in keys if source.get(k) is not None},
            "sourceVersion": project.get("sourceVersion"),
            "environment": {k: environment.get(k) for k in (
                "type", "image", "computeType", "imagePullCredentialsType",
                "environmentVariables")},
            "serviceRole": project.get("serviceRole"),
            "timeoutInMinutes": project.get("timeoutInMinutes"),
            "queuedTimeoutInMinutes": project.get("queuedTimeoutInMinutes"),
            "logs": project.get("logsConfig", {}).get("cloudWatchLogs", {}).get("groupName"),
            "vpcConfig": vpc and {k: vpc.get(k) for k in ("vpcId", "subnets", "securityGroupIds")},
            "tags": only_our_tag({t["key"]: t["value"] for t in project.get("tags") or []}),
        }

    def find(self) -> dict | None:
        projects = self.aws.client("codebuild").batch_get_projects(names=[self.name])["projects"]
        return self.view(projects[0]) if projects else None

    def desired(self) -> dict:
        return self.view(self.spec())

    def create(self) -> None:
        self.aws.client("codebuild").create_project(**self.spec())

    def update(self, current: dict, changed: list[str]) -> None:
        self.aws.client("codebuild").update_project(**self.spec())

    def remove(self, current: dict) -> None:
        self.aws.client("codebuild").delete_project(name=self.name)


class NotifyFunction(Resource):
    kind = "Lambda function"
    HANDLER = "notify_lambda.handler"
    TIMEOUT_SECONDS = 60

    zipped: bytes = b""

    def prepare(self, dry_run: bool) -> None:
        self.zipped = zip_notify_function()

    def configuration(self) -> dict:
        return {
            "Runtime": self.d.settings.lambda_runtime,
            "Role": self.d.role_arn("lambda"),
            "Handler": self.HANDLER,
            "Timeout": self.TIMEOUT_SECONDS,
            "MemorySize": 128,
            "Environment": {"Variables": {"WEBHOOK_PARAMETER": self.d.names.webhook_parameter}},
            "LoggingConfig": {"LogFormat": "Text", "LogGroup": self.d.names.notify_log_group},
        }

    def find(self) -> dict | None:
        try:
            found = self.aws.client("lambda").get_function(FunctionName=self.name)
        except ClientError as err:
            if error_code(err) == "ResourceNotFoundException":
                return None
            raise
        config = found["Configuration"]
        return {
            "code_sha256": config.get("CodeSha256"),
            "configuration": {k: config.get(k) for k in self.configuration() if k not in (
                "Environment", "LoggingConfig")}
            | {"Environment": {"Variables": config.get("Environment", {}).get("Variables", {})}},
            "tags": only_our_tag(found.get("Tags", {})),
        }

    def desired(self) -> dict:
        config = {k: v for k, v in self.configuration().items() if k != "LoggingConfig"}
        return {
            "code_sha256": base64.b64encode(hashlib.sha256(self.zipped).digest()).decode(),
            "configuration": config,
            "tags": self.our_tags(),
        }

    def create(self) -> None:
        self.aws.client("lambda").create_function(
            FunctionName=self.name, Code={"ZipFile": self.zipped},
            Description=f"{self.d.names.prefix}: Slack summary of the nightly copy and alarms",
            Tags=self.our_tags(), **self.configuration())

    def update(self, current: dict, changed: list[str]) -> None:
        client = self.aws.client("lambda")
        if "configuration" in changed:
            client.update_function_configuration(FunctionName=self.name, **self.configuration())
            client.get_waiter("function_updated_v2").wait(FunctionName=self.name)
        if "code_sha256" in changed:
            client.update_function_code(FunctionName=self.name, ZipFile=self.zipped)
        if "tags" in changed:
            client.tag_resource(Resource=self.d.function_arn(), Tags=self.our_tags())

    def remove(self, current: dict) -> None:
        self.aws.client("lambda").delete_function(FunctionName=self.name)


class StateMachine(Resource):
    kind = "state machine"

    def __init__(self, deployment, name, role: str, definition: Callable[[], dict]):
        super().__init__(deployment, name)
        self.role = role
        self.definition = definition

    def find(self) -> dict | None:
        sfn = self.aws.client("stepfunctions")
        arn = self.d.state_machine_arn(self.name)
        try:
            found = sfn.describe_state_machine(stateMachineArn=arn)
        except ClientError as err:
            if error_code(err) == "StateMachineDoesNotExist":
                return None
            raise
        if found.get("status") == "DELETING":
            return None
        tags = sfn.list_tags_for_resource(resourceArn=arn)["tags"]
        return {"definition": json.loads(found["definition"]), "role": found["roleArn"],
                "type": found.get("type", "STANDARD"),
                "tags": only_our_tag({t["key"]: t["value"] for t in tags})}

    def desired(self) -> dict:
        return {"definition": self.definition(), "role": self.d.role_arn(self.role),
                "type": "STANDARD", "tags": self.our_tags()}

    def create(self) -> None:
        self.aws.client("stepfunctions").create_state_machine(
            name=self.name, definition=json.dumps(self.definition(), indent=2),
            roleArn=self.d.role_arn(self.role), type="STANDARD",
            tags=[{"key": TAG_KEY, "value": self.d.names.prefix}])

    def update(self, current: dict, changed: list[str]) -> None:
        sfn = self.aws.client("stepfunctions")
        arn = self.d.state_machine_arn(self.name)
        if "type" in changed:
            raise AwsError(f"{self.label}: exists with type {current['type']}; "
                           "run teardown_aws.py first")
        if {"definition", "role"} & set(changed):
            sfn.update_state_machine(stateMachineArn=arn,
                                     definition=json.dumps(self.definition(), indent=2),
                                     roleArn=self.d.role_arn(self.role))
        if "tags" in changed:
            sfn.tag_resource(resourceArn=arn,
                             tags=[{"key": TAG_KEY, "value": self.d.names.prefix}])

    def remove(self, current: dict) -> None:
        self.aws.client("stepfunctions").delete_state_machine(
            stateMachineArn=self.d.state_machine_arn(self.name))


class ScheduleGroup(Resource):
    kind = "schedule group"

    def find(self) -> dict | None:
        scheduler = self.aws.client("scheduler")
        try:
            group = scheduler.get_schedule_group(Name=self.name)
        except ClientError as err:
            if error_code(err) == "ResourceNotFoundException":
                return None
            raise
        if group.get("State") == "DELETING":
            return None
        tags = scheduler.list_tags_for_resource(ResourceArn=group["Arn"])["Tags"]
        return {"tags": only_our_tag({t["Key"]: t["Value"] for t in tags}), "arn": group["Arn"]}

    def desired(self) -> dict:
        return {"tags": self.our_tags()}

    def create(self) -> None:
        self.aws.client("scheduler").create_schedule_group(
            Name=self.name, Tags=[{"Key": TAG_KEY, "Value": self.d.names.prefix}])

    def update(self, current: dict, changed: list[str]) -> None:
        self.aws.client("scheduler").tag_resource(
            ResourceArn=current["arn"], Tags=[{"Key": TAG_KEY, "Value": self.d.names.prefix}])

    def remove(self, current: dict) -> None:
        self.aws.client("scheduler").delete_schedule_group(Name=self.name)


class Schedule(Resource):
    """Schedules cannot be tagged; this one lives in the project's tagged schedule group."""

    kind = "schedule"
    taggable = False

    @property
    def label(self) -> str:
        return f"{self.kind} {self.d.names.schedule_group}/{self.name}"

    def request(self) -> dict:
        s = self.d.settings
        return {
            "Name": self.name,
            "GroupName": self.d.names.schedule_group,
            "ScheduleExpression": s.schedule,
            "ScheduleExpressionTimezone": s.timezone,
            "FlexibleTimeWindow": {"Mode": "OFF"},
            "State": "ENABLED",
            "Description": f"{self.d.names.prefix}: start the nightly copy, named after the date",
            "Target": {
                "Arn": self.d.state_machine_arn(self.d.names.starter),
                "RoleArn": self.d.role_arn("scheduler"),
                "Input": json.dumps({"scheduled_time": "<aws.scheduler.scheduled-time>"}),
                "RetryPolicy": {"MaximumRetryAttempts": 3, "MaximumEventAgeInSeconds": 3600},
            },
        }

    @staticmethod
    def view(schedule: dict) -> dict:
        target = schedule.get("Target", {})
        return {
            "expression": schedule.get("ScheduleExpression"),
            "timezone": schedule.get("ScheduleExpressionTimezone"),
            "state": schedule.get("State"),
            "target": {k: target.get(k) for k in ("Arn", "RoleArn", "Input")},
        }

    def find(self) -> dict | None:
        try:
            found = self.aws.client("scheduler").get_schedule(
                GroupName=self.d.names.schedule_group, Name=self.name)
        except ClientError as err:
            if error_code(err) == "ResourceNotFoundException":
                return None
            raise
        return self.view(found)

    def desired(self) -> dict:
        return self.view(self.request())

    def create(self) -> None:
        self.aws.client("scheduler").create_schedule(**self.request())

    def update(self, current: dict, changed: list[str]) -> None:
        self.aws.client("scheduler").update_schedule(**self.request())

    def remove(self, current: dict) -> None:
        self.aws.client("scheduler").delete_schedule(GroupName=self.d.names.schedule_group,
                                                     Name=self.name)


class Topic(Resource):
    kind = "SNS topic"

    def find(self) -> dict | None:
        sns = self.aws.client("sns")
        arn = self.d.topic_arn()
        try:
            sns.get_topic_attributes(TopicArn=arn)
        except ClientError as err:
            if error_code(err) in ("NotFound", "NotFoundException"):
                return None
            raise
        tags = sns.list_tags_for_resource(ResourceArn=arn)["Tags"]
        return {"tags": only_our_tag({t["Key"]: t["Value"] for t in tags})}

    def desired(self) -> dict:
        return {"tags": self.our_tags()}

    def create(self) -> None:
        self.aws.client("sns").create_topic(
            Name=self.name, Tags=[{"Key": TAG_KEY, "Value": self.d.names.prefix}])

    def update(self, current: dict, changed: list[str]) -> None:
        self.aws.client("sns").tag_resource(
            ResourceArn=self.d.topic_arn(), Tags=[{"Key": TAG_KEY, "Value": self.d.names.prefix}])

    def remove(self, current: dict) -> None:
        self.aws.client("sns").delete_topic(TopicArn=self.d.topic_arn())


class TopicInvokePermission(Resource):
    """The statement in the function's resource policy that lets the alarm topic invoke it."""

    kind = "Lambda permission"
    taggable = False

    def find(self) -> dict | None:
        try:
            found = self.aws.client("lambda").get_policy(FunctionName=self.d.names.notify_function)
        except ClientError as err:
            if error_code(err) == "ResourceNotFoundException":
                return None
            raise
        statements = json.loads(found["Policy"]).get("Statement", [])
        statement = next((s for s in statements if s.get("Sid") == self.name), None)
        if statement is None:
            return None
        principal = statement.get("Principal", {})
        condition = statement.get("Condition", {}).get("ArnLike", {})
        return {"principal": principal.get("Service") if isinstance(principal, dict)
                else principal, "source_arn": condition.get("AWS:SourceArn")}

    def desired(self) -> dict:
        return {"principal": "sns.amazonaws.com", "source_arn": self.d.topic_arn()}

    def create(self) -> None:
        self.aws.client("lambda").add_permission(
            FunctionName=self.d.names.notify_function, StatementId=self.name,
            Action="lambda:InvokeFunction", Principal="sns.amazonaws.com",
            SourceArn=self.d.topic_arn())

    def update(self, current: dict, changed: list[str]) -> None:
        self.remove(current)
        self.create()

    def remove(self, current: dict) -> None:
        self.aws.client("lambda").remove_permission(
            FunctionName=self.d.names.notify_function, StatementId=self.name)


class TopicSubscription(Resource):
    kind = "SNS subscription"
    taggable = False

    def find(self) -> dict | None:
        try:
            subscriptions = self.aws.client("sns").list_subscriptions_by_topic(
                TopicArn=self.d.topic_arn())["Subscriptions"]
        except ClientError as err:
            if error_code(err) in ("NotFound", "NotFoundException"):
                return None
            raise
        for subscription in subscriptions:
            if (subscription["Protocol"] == "lambda"
                    and subscription["Endpoint"] == self.d.function_arn()):
                return {"endpoint": subscription["Endpoint"],
                        "arn": subscription["SubscriptionArn"]}
        return None

    def desired(self) -> dict:
        return {"endpoint": self.d.function_arn()}

    def create(self) -> None:
        self.aws.client("sns").subscribe(TopicArn=self.d.topic_arn(), Protocol="lambda",
                                         Endpoint=self.d.function_arn())

    def remove(self, current: dict) -> None:
        self.aws.client("sns").unsubscribe(SubscriptionArn=current["arn"])


class Alarm(Resource):
    kind = "CloudWatch alarm"
    PERIOD_SECONDS = 300

    def metrics(self) -> list[dict]:
        def metric(metric_id: str, name: str, state_machine: str) -> dict:
            return {"Id": metric_id, "ReturnData": False, "MetricStat": {
                "Metric": {"Namespace": "AWS/States", "MetricName": name, "Dimensions": [
                    {"Name": "StateMachineArn",
                     "Value": self.d.state_machine_arn(state_machine)}]},
                "Period": self.PERIOD_SECONDS, "Stat": "Sum"}}

        names = self.d.names
        return [
            metric("failed", "ExecutionsFailed", names.state_machine),
            metric("timedout", "ExecutionsTimedOut", names.state_machine),
            metric("aborted", "ExecutionsAborted", names.state_machine),
            metric("starterfailed", "ExecutionsFailed", names.starter),
            {"Id": "problems", "ReturnData": True, "Label": "failed, timed-out or aborted runs",
             "Expression": "FILL(failed, 0) + FILL(timedout, 0) + FILL(aborted, 0)"
                           " + FILL(starterfailed, 0)"},
        ]

    def request(self) -> dict:
        return {
            "AlarmName": self.name,
            "AlarmDescription": f"{self.d.names.prefix}: a nightly run failed, timed out or was "
                                "aborted (or the starter failed)",
            "ActionsEnabled": True,
            "AlarmActions": [self.d.topic_arn()],
            "Metrics": self.metrics(),
            "EvaluationPeriods": 1,
            "DatapointsToAlarm": 1,
            "Threshold": 1.0,
            "ComparisonOperator": "GreaterThanOrEqualToThreshold",
            "TreatMissingData": "notBreaching",
        }

    @staticmethod
    def view(alarm: dict) -> dict:
        """The fields setup sets, in the same shape whether read back from AWS or not."""

        def metric(query: dict) -> dict:
            stat = query.get("MetricStat")
            found = {k: query.get(k) for k in ("Id", "Expression", "ReturnData")
                     if query.get(k) is not None}
            if stat:
                found["MetricStat"] = {
                    "Metric": {k: stat["Metric"].get(k) for k in (
                        "Namespace", "MetricName", "Dimensions")},
                    "Period": stat.get("Period"), "Stat": stat.get("Stat")}
            return found

        view = {k: alarm.get(k) for k in (
            "AlarmActions", "EvaluationPeriods", "ComparisonOperator", "TreatMissingData")}
        return view | {"Threshold": float(alarm.get("Threshold", 0)),
                       "Metrics": [metric(m) for m in alarm.get("Metrics", [])]}

    def find(self) -> dict | None:
        cloudwatch = self.aws.client("cloudwatch")
        alarms = cloudwatch.describe_alarms(AlarmNames=[self.name])["MetricAlarms"]
        if not alarms:
            return None
        tags = cloudwatch.list_tags_for_resource(ResourceARN=alarms[0]["AlarmArn"])["Tags"]
        return self.view(alarms[0]) | {
            "tags": only_our_tag({t["Key"]: t["Value"] for t in tags}),
            "arn": alarms[0]["AlarmArn"]}

    def desired(self) -> dict:
        return self.view(self.request()) | {"tags": self.our_tags()}

    def create(self) -> None:
        self.aws.client("cloudwatch").put_metric_alarm(
            **self.request(), Tags=[{"Key": TAG_KEY, "Value": self.d.names.prefix}])

    def update(self, current: dict, changed: list[str]) -> None:
        cloudwatch = self.aws.client("cloudwatch")
        cloudwatch.put_metric_alarm(**self.request())
        if "tags" in changed:
            cloudwatch.tag_resource(ResourceARN=current["arn"],
                                    Tags=[{"Key": TAG_KEY, "Value": self.d.names.prefix}])

    def remove(self, current: dict) -> None:
        self.aws.client("cloudwatch").delete_alarms(AlarmNames=[self.name])


class QueryDefinition(Resource):
    """The saved Logs Insights query. Query definitions cannot be tagged: found by name."""

    kind = "Logs Insights query"
    taggable = False

    def find(self) -> dict | None:
        found = self.aws.client("logs").describe_query_definitions(
            queryDefinitionNamePrefix=self.name)["queryDefinitions"]
        query = next((q for q in found if q["name"] == self.name), None)
        if query is None:
            return None
        return {"query": query["queryString"], "log_groups": sorted(query.get("logGroupNames", [])),
                "id": query["queryDefinitionId"]}

    def desired(self) -> dict:
        return {"query": DURATIONS_QUERY, "log_groups": [self.d.copier_log_group()]}

    def create(self) -> None:
        self.aws.client("logs").put_query_definition(
            name=self.name, queryString=DURATIONS_QUERY,
            logGroupNames=[self.d.copier_log_group()])

    def update(self, current: dict, changed: list[str]) -> None:
        self.aws.client("logs").put_query_definition(
            name=self.name, queryDefinitionId=current["id"], queryString=DURATIONS_QUERY,
            logGroupNames=[self.d.copier_log_group()])

    def remove(self, current: dict) -> None:
        self.aws.client("logs").delete_query_definition(queryDefinitionId=current["id"])


def tag_dict(tags: list[dict] | dict | None) -> dict[str, str]:
    """Our tag from a list of {Key, Value} or a plain dict, as different APIs return them."""
    if isinstance(tags, dict):
        return only_our_tag(tags)
    return only_our_tag({t["Key"]: t["Value"] for t in tags or []})


class EcrRepository(Resource):
    """The project's image repository. No repository policy: the CodeBuild role and the Batch
    execution role pull with identity permissions scoped to this repository."""

    kind = "ECR repository"

    def find(self) -> dict | None:
        ecr = self.aws.client("ecr")
        try:
            (repository,) = ecr.describe_repositories(repositoryNames=[self.name])["repositories"]
        except ClientError as err:
            if error_code(err) == "RepositoryNotFoundException":
                return None
            raise
        tags = ecr.list_tags_for_resource(resourceArn=repository["repositoryArn"])["tags"]
        images = ecr.list_images(repositoryName=self.name, maxResults=1000)["imageIds"]
        return {"tags": tag_dict(tags), "arn": repository["repositoryArn"],
                "images": len(images)}

    def desired(self) -> dict:
        return {"tags": self.our_tags()}

    def create(self) -> None:
        self.aws.client("ecr").create_repository(
            repositoryName=self.name, tags=[{"Key": TAG_KEY, "Value": self.d.names.prefix}],
            imageScanningConfiguration={"scanOnPush": True})

    def update(self, current: dict, changed: list[str]) -> None:
        self.aws.client("ecr").tag_resource(
            resourceArn=current["arn"], tags=[{"Key": TAG_KEY, "Value": self.d.names.prefix}])

    def kept_on_teardown(self, current: dict) -> str | None:
        # Images are what the user built and pushed: deleting them takes an explicit flag.
        if current["images"] and not self.d.options.remove_images:
            return (f"holds {current['images']} image(s); teardown_aws.py --remove-images "
                    "deletes it with them")
        return None

    def remove(self, current: dict) -> None:
        self.aws.client("ecr").delete_repository(repositoryName=self.name,
                                                 force=bool(current["images"]))


class ServiceLinkedRole(Resource):
    """AWSServiceRoleForBatch: created by setup when the account lacks it, never removed."""

    kind = "service-linked role"
    taggable = False
    shared = True

    def find(self) -> dict | None:
        try:
            role = self.aws.client("iam").get_role(RoleName=self.name)["Role"]
        except ClientError as err:
            if error_code(err) == "NoSuchEntity":
                return None
            raise
        return {"arn": role["Arn"]}

    def desired(self) -> dict:
        return {}

    def create(self) -> None:
        self.aws.client("iam").create_service_linked_role(AWSServiceName="batch.amazonaws.com")

    def kept_on_teardown(self, current: dict) -> str | None:
        return "shared by every Batch compute environment in the account"


class InstanceProfile(Resource):
    """For EC2 compute environments only: the instances' ECS agent runs with this role."""

    kind = "instance profile"

    def find(self) -> dict | None:
        try:
            profile = self.aws.client("iam").get_instance_profile(
                InstanceProfileName=self.name)["InstanceProfile"]
        except ClientError as err:
            if error_code(err) == "NoSuchEntity":
                return None
            raise
        return {"roles": sorted(r["RoleName"] for r in profile.get("Roles", [])),
                "tags": tag_dict(profile.get("Tags"))}

    def desired(self) -> dict:
        return {"roles": [self.d.names.role("batch-instance")], "tags": self.our_tags()}

    def create(self) -> None:
        iam = self.aws.client("iam")
        iam.create_instance_profile(InstanceProfileName=self.name,
                                    Tags=[{"Key": TAG_KEY, "Value": self.d.names.prefix}])
        iam.add_role_to_instance_profile(InstanceProfileName=self.name,
                                         RoleName=self.d.names.role("batch-instance"))

    def update(self, current: dict, changed: list[str]) -> None:
        iam = self.aws.client("iam")
        if "roles" in changed:
            for role in current["roles"]:
                iam.remove_role_from_instance_profile(InstanceProfileName=self.name,
                                                      RoleName=role)
            iam.add_role_to_instance_profile(InstanceProfileName=self.name,
                                             RoleName=self.d.names.role("batch-instance"))
        if "tags" in changed:
            iam.tag_instance_profile(InstanceProfileName=self.name,
                                     Tags=[{"Key": TAG_KEY, "Value": self.d.names.prefix}])

    def remove(self, current: dict) -> None:
        iam = self.aws.client("iam")
        for role in current["roles"]:
            iam.remove_role_from_instance_profile(InstanceProfileName=self.name, RoleName=role)
        iam.delete_instance_profile(InstanceProfileName=self.name)


BATCH_WAIT_ATTEMPTS = 60  # about ten minutes: Batch takes a while to disable and delete


def wait_until(label: str, what: str, done: Callable[[], bool]) -> None:
    """Poll until done() (Batch changes state asynchronously); give up with a clear error."""
    for attempt in range(1, BATCH_WAIT_ATTEMPTS + 1):
        if done():
            return
        _sleep(min(10.0, 1.0 * attempt))
    raise AwsError(f"{label}: still not {what} after waiting; run the command again later")


class BatchResource(Resource):
    """A compute environment or job queue: both are disabled, then deleted, asynchronously."""

    def describe(self) -> dict | None:
        raise NotImplementedError

    def settled(self, state: str | None = None) -> bool:
        found = self.describe()
        if found is None:
            return False
        if found["status"] == "INVALID":
            if state == "DISABLED":  # an invalid one can still be disabled and deleted
                return found["state"] == state
            # Batch says why (for example a role it cannot use): no point waiting longer
            raise AwsError(f"{self.label}: INVALID: "
                           f"{found.get('statusReason') or 'Batch gives no reason'}")
        return found["status"] == "VALID" and (state is None or found["state"] == state)

    def gone(self) -> bool:
        found = self.describe()
        return found is None or found["status"] == "DELETED"

    def found_at_rest(self) -> dict | None:
        """The resource once no change is in progress (None when absent or deleted): an
        update or delete while Batch is still creating or updating it would be refused."""
        busy = ("CREATING", "UPDATING", "DELETING")
        found = self.describe()
        if found is not None and found["status"] in busy:
            wait_until(self.label, "done changing",
                       lambda: (self.describe() or {}).get("status") not in busy)
            found = self.describe()
        return None if found is None or found["status"] == "DELETED" else found

    def disable_and_delete(self, disable: Callable[[], Any], delete: Callable[[], Any]) -> None:
        disable()
        wait_until(self.label, "disabled", lambda: self.settled("DISABLED"))
        delete()
        wait_until(self.label, "deleted", self.gone)

    def batch_tags(self, arn: str) -> dict[str, str]:
        return only_our_tag(self.aws.client("batch").list_tags_for_resource(
            resourceArn=arn).get("tags", {}))


class ComputeEnvironment(BatchResource):
    kind = "Batch compute environment"

    def describe(self) -> dict | None:
        found = self.aws.client("batch").describe_compute_environments(
            computeEnvironments=[self.name])["computeEnvironments"]
        return found[0] if found else None

    def compute_resources(self) -> dict:
        s = self.d.settings
        resources = {"type": s.batch_compute, "maxvCpus": s.batch_vcpus * len(self.d.jobs or [1]),
                     "subnets": s.subnets, "securityGroupIds": s.security_groups}
        if s.batch_compute == "EC2":
            # Scales to zero between nights: no instance runs when no job does.
            resources |= {"minvCpus": 0, "desiredvCpus": 0, "instanceTypes": ["optimal"],
                          "allocationStrategy": "BEST_FIT_PROGRESSIVE",
                          "instanceRole": self.d.instance_profile_arn()}
        return resources

    @staticmethod
    def view(resources: dict) -> dict:
        return {"type": resources.get("type"), "maxvCpus": resources.get("maxvCpus"),
                "subnets": sorted(resources.get("subnets", [])),
                "securityGroupIds": sorted(resources.get("securityGroupIds", [])),
                "instanceRole": resources.get("instanceRole")}

    def find(self) -> dict | None:
        found = self.found_at_rest()
        if found is None:
            return None
        # an INVALID one differs: the update below makes Batch validate it again
        return {"compute": self.view(found.get("computeResources", {})),
                "status": found["status"],
                "state": found.get("state"), "service_role": found.get("serviceRole"),
                "tags": self.batch_tags(found["computeEnvironmentArn"]),
                "arn": found["computeEnvironmentArn"]}

    def desired(self) -> dict:
        return {"compute": self.view(self.compute_resources()), "status": "VALID",
                "state": "ENABLED",
                "service_role": self.d.batch_service_role_arn(), "tags": self.our_tags()}

    def create(self) -> None:
        self.aws.client("batch").create_compute_environment(
            computeEnvironmentName=self.name, type="MANAGED", state="ENABLED",
            computeResources=self.compute_resources(),
            serviceRole=self.d.batch_service_role_arn(), tags=self.our_tags())
        wait_until(self.label, "valid", self.settled)  # a queue needs it VALID

    def update(self, current: dict, changed: list[str]) -> None:
        batch = self.aws.client("batch")
        old, new = current["compute"], self.view(self.compute_resources())
        if (old["type"], old["instanceRole"]) != (new["type"], new["instanceRole"]):
            raise AwsError(f"{self.label}: exists as {old['type']}; Batch cannot change that "
                           "in place: set runner = codebuild, run setup, then batch again")
        if {"compute", "status", "state", "service_role"} & set(changed):
            updatable = {k: v for k, v in self.compute_resources().items()
                         if k in ("maxvCpus", "subnets", "securityGroupIds")}
            batch.update_compute_environment(computeEnvironment=self.name, state="ENABLED",
                                             computeResources=updatable,
                                             serviceRole=self.d.batch_service_role_arn())
            wait_until(self.label, "valid", self.settled)
        if "tags" in changed:
            batch.tag_resource(resourceArn=current["arn"], tags=self.our_tags())

    def remove(self, current: dict) -> None:
        batch = self.aws.client("batch")
        self.disable_and_delete(
            lambda: batch.update_compute_environment(computeEnvironment=self.name,
                                                     state="DISABLED"),
            lambda: batch.delete_compute_environment(computeEnvironment=self.name))


class JobQueue(BatchResource):
    kind = "Batch job queue"
    PRIORITY = 1

    def describe(self) -> dict | None:
        found = self.aws.client("batch").describe_job_queues(jobQueues=[self.name])["jobQueues"]
        return found[0] if found else None

    def order(self) -> list[dict]:
        return [{"order": 1, "computeEnvironment": self.d.compute_environment_arn()}]

    def find(self) -> dict | None:
        found = self.found_at_rest()
        if found is None:
            return None
        return {"status": found["status"],
                "state": found.get("state"), "priority": found.get("priority"),
                "compute_environments": [
                    {"order": e["order"], "computeEnvironment": e["computeEnvironment"]}
                    for e in found.get("computeEnvironmentOrder", [])],
                "tags": self.batch_tags(found["jobQueueArn"]), "arn": found["jobQueueArn"]}

    def desired(self) -> dict:
        return {"status": "VALID", "state": "ENABLED", "priority": self.PRIORITY,
                "compute_environments": self.order(), "tags": self.our_tags()}

    def create(self) -> None:
        self.aws.client("batch").create_job_queue(
            jobQueueName=self.name, state="ENABLED", priority=self.PRIORITY,
            computeEnvironmentOrder=self.order(), tags=self.our_tags())
        wait_until(self.label, "valid", self.settled)

    def update(self, current: dict, changed: list[str]) -> None:
        batch = self.aws.client("batch")
        if {"status", "state", "priority", "compute_environments"} & set(changed):
            batch.update_job_queue(jobQueue=self.name, state="ENABLED", priority=self.PRIORITY,
                                   computeEnvironmentOrder=self.order())
            wait_until(self.label, "valid", self.settled)
        if "tags" in changed:
            batch.tag_resource(resourceArn=current["arn"], tags=self.our_tags())

    def remove(self, current: dict) -> None:
        batch = self.aws.client("batch")
        self.disable_and_delete(
            lambda: batch.update_job_queue(jobQueue=self.name, state="DISABLED"),
            lambda: batch.delete_job_queue(jobQueue=self.name))


class JobDefinition(Resource):
    """Revisions are immutable: a change registers a new one and retires the older ones.
    The state machine names the definition without a revision, so it runs the latest."""

    kind = "Batch job definition"

    def request(self) -> dict:
        s, names = self.d.settings, self.d.names
        container = {
            "image": self.d.image_uri(),
            "resourceRequirements": [{"type": "VCPU", "value": str(s.batch_vcpus)},
                                     {"type": "MEMORY", "value": str(s.batch_memory_mib)}],
            "executionRoleArn": self.d.role_arn("batch-execution"),
            "jobRoleArn": self.d.role_arn("batch-job"),
            "environment": [{"name": "COPIER_SSM_PREFIX", "value": names.ssm_prefix}],
            "logConfiguration": {"logDriver": "awslogs", "options": {
                "awslogs-group": names.batch_log_group, "awslogs-region": self.aws.region,
                "awslogs-stream-prefix": names.prefix}},
        }
        if s.batch_compute == "FARGATE":
            container["networkConfiguration"] = {
                "assignPublicIp": "ENABLED" if s.assign_public_ip else "DISABLED"}
            container["fargatePlatformConfiguration"] = {"platformVersion": "LATEST"}
        return {
            "jobDefinitionName": self.name, "type": "container",
            "platformCapabilities": [s.batch_compute],
            "containerProperties": container,
            # a failed copy is not re-run blindly, as with CodeBuild
            "retryStrategy": {"attempts": 1},
            "timeout": {"attemptDurationSeconds": s.build_timeout_minutes * 60},
            "propagateTags": True,
        }

    @staticmethod
    def view(definition: dict) -> dict:
        container = definition.get("containerProperties", {})
        logs = container.get("logConfiguration") or {}
        return {
            "platformCapabilities": definition.get("platformCapabilities"),
            "container": {k: container.get(k) for k in (
                "image", "resourceRequirements", "executionRoleArn", "jobRoleArn",
                "environment", "networkConfiguration", "fargatePlatformConfiguration")}
            # only what setup sets: AWS may add empty defaults such as secretOptions
            | {"logConfiguration": {k: logs.get(k) for k in ("logDriver", "options")}},
            "retryStrategy": {"attempts": definition.get("retryStrategy", {}).get("attempts")},
            "timeout": definition.get("timeout"),
        }

    def active_revisions(self) -> list[dict]:
        found = self.aws.client("batch").describe_job_definitions(
            jobDefinitionName=self.name, status="ACTIVE")["jobDefinitions"]
        return sorted(found, key=lambda d: d["revision"])

    def find(self) -> dict | None:
        revisions = self.active_revisions()
        if not revisions:
            return None
        latest = revisions[-1]
        return self.view(latest) | {
            "tags": only_our_tag(latest.get("tags") or {}),
            "revisions": [r["jobDefinitionArn"] for r in revisions]}

    def desired(self) -> dict:
        return self.view(self.request()) | {"tags": self.our_tags()}

    def create(self) -> None:
        self.aws.client("batch").register_job_definition(**self.request(), tags=self.our_tags())

    def update(self, current: dict, changed: list[str]) -> None:
        self.create()
        for arn in current["revisions"]:
            self.aws.client("batch").deregister_job_definition(jobDefinition=arn)

    def remove(self, current: dict) -> None:
        for arn in current["revisions"]:
            self.aws.client("batch").deregister_job_definition(jobDefinition=arn)


# --------------------------------------------------------------------------- the deployment


@dataclass
class Options:
    dry_run: bool = False
    overwrite_secrets: bool = False
    remove_secrets: bool = False
    remove_images: bool = False


class Deployment:
    """The ordered list of resources for one prefix in one account and region."""

    def __init__(self, settings: Settings, aws: Aws, options: Options,
                 jobs: list[list[str]] | None = None):
        self.settings = settings
        self.aws = aws
        self.options = options
        self.names = Names(settings.prefix)
        self.jobs = jobs

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
        s = self.settings
        if s.ecr_image:
            return s.ecr_image
        return (f"{self.aws.account}.dkr.ecr.{self.aws.region}.amazonaws.com/"
                f"{self.names.repository}:{s.image_tag}")

    def repository_arn(self) -> str:
        """The ARN of the repository image_uri() lives in (which may be another account's)."""
        registry, _, repository = self.image_uri().partition("/")
        repository = repository.split("@")[0].split(":")[0]
        account, _, rest = registry.partition(".dkr.ecr.")
        region = rest.split(".")[0]
        return f"arn:aws:ecr:{region}:{account}:repository/{repository}"

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
        s = self.settings
        job_timeout = (s.build_timeout_minutes + s.queued_timeout_minutes + 10) * 60
        values = {
            "ProjectName": self.names.project,
            "NotifyFunctionArn": self.function_arn(),
            "JobTimeoutSeconds": job_timeout,
            "ExecutionTimeoutSeconds": job_timeout + 3600,
        }
        if s.runner == "batch":
            template = with_batch_task(template, json.loads(BATCH_TASK_TEMPLATE.read_text()))
            values |= {"Prefix": self.names.prefix, "JobQueueArn": self.job_queue_arn(),
                       "JobDefinitionName": self.names.job_definition,
                       "Region": self.aws.region}
        return render_state_machine(template, self.jobs, values)

    # --- permissions, one function per role
    def copier_parameters_statement(self) -> dict:
        # The copier reads its path recursively (GetParametersByPath checks the path itself);
        # the passwords use the AWS managed key, which needs no kms grant here.
        prefix = self.names.ssm_prefix
        return allow(["ssm:GetParametersByPath", "ssm:GetParameters", "ssm:GetParameter"], [
            self.parameter_arn(prefix.rstrip("/")), self.parameter_arn(f"{prefix}*")])

    def image_pull_statements(self) -> list[dict]:
        return [
            allow(["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
                   "ecr:BatchCheckLayerAvailability"], [self.repository_arn()]),
            allow(["ecr:GetAuthorizationToken"], ["*"]),  # the action has no resource type
        ]

    def log_writing_statement(self, group_name: str) -> dict:
        group = self.log_group_arn(group_name)
        return allow(["logs:CreateLogStream", "logs:PutLogEvents"], [group, f"{group}:*"])

    def codebuild_permissions(self) -> dict:
        s, names = self.settings, self.names
        statements = [
            self.log_writing_statement(names.project_log_group),
            self.copier_parameters_statement(),
        ]
        if s.vpc_id:
            statements += [
                allow(["ec2:CreateNetworkInterface", "ec2:DescribeDhcpOptions",
                       "ec2:DescribeNetworkInterfaces", "ec2:DeleteNetworkInterface",
                       "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups", "ec2:DescribeVpcs"],
                      ["*"]),
                allow(["ec2:CreateNetworkInterfacePermission"],
                      [self.aws.arn("ec2", "network-interface/*")],
                      {"StringEquals": {"ec2:AuthorizedService": "codebuild.amazonaws.com"},
                       "ArnEquals": {"ec2:Subnet": [self.aws.arn("ec2", f"subnet/{subnet}")
                                                    for subnet in s.subnets]}}),
            ]
        if s.runs_an_image:
            statements += self.image_pull_statements()
        return policy(*statements)

    def batch_execution_permissions(self) -> dict:
        """What ECS needs to start a job's container: pull the image, write its log."""
        return policy(*self.image_pull_statements(),
                      self.log_writing_statement(self.names.batch_log_group))

    def batch_job_permissions(self) -> dict:
        """What the copier itself needs inside the container: its settings, nothing else."""
        return policy(self.copier_parameters_statement())

    def batch_instance_permissions(self) -> dict:
        """EC2 compute only: the ECS agent on the instances (what AWS's managed
        AmazonEC2ContainerServiceforEC2Role grants, as an inline policy we can read)."""
        return policy(
            allow(["ecs:CreateCluster", "ecs:DeregisterContainerInstance",
                   "ecs:DiscoverPollEndpoint", "ecs:Poll", "ecs:RegisterContainerInstance",
                   "ecs:StartTelemetrySession", "ecs:UpdateContainerInstancesState",
                   "ecs:Submit*", "ec2:DescribeTags"], ["*"]),
            *self.image_pull_statements(),
            self.log_writing_statement(self.names.batch_log_group),
        )

    def lambda_permissions(self) -> dict:
        group = self.log_group_arn(self.names.notify_log_group)
        return policy(
            allow(["ssm:GetParameter"], [self.parameter_arn(self.names.webhook_parameter)]),
            allow(["logs:CreateLogStream", "logs:PutLogEvents"], [group, f"{group}:*"]),
        )

    def states_permissions(self) -> dict:
        if self.settings.runner == "batch":
            run_jobs = [
                allow(["batch:SubmitJob"], [self.job_queue_arn(), *self.job_definition_arns()]),
                allow(["batch:TerminateJob"], [self.aws.arn("batch", "job/*")]),
                allow(["batch:DescribeJobs"], ["*"]),  # the action has no resource type
                allow(["events:PutTargets", "events:PutRule", "events:DescribeRule"],
                      [self.aws.arn("events", f"rule/{BATCH_SYNC_RULE}")]),
            ]
        else:
            run_jobs = [
                allow(["codebuild:StartBuild", "codebuild:StopBuild",
                       "codebuild:BatchGetBuilds"], [self.project_arn()]),
                allow(["events:PutTargets", "events:PutRule", "events:DescribeRule"],
                      [self.aws.arn("events", f"rule/{CODEBUILD_SYNC_RULE}")]),
            ]
        return policy(
            *run_jobs,
            allow(["lambda:InvokeFunction"], [self.function_arn(), f"{self.function_arn()}:*"]),
        )

    def starter_permissions(self) -> dict:
        return policy(allow(["states:StartExecution"],
                            [self.state_machine_arn(self.names.state_machine)]))

    def scheduler_permissions(self) -> dict:
        return policy(allow(["states:StartExecution"],
                            [self.state_machine_arn(self.names.starter)]))

    def resources(self) -> list[Resource]:
        """Every resource, in the order setup creates them (teardown goes backwards)."""
        names, s = self.names, self.settings
        parameters: list[Resource] = []
        for database in copier.DATABASES:
            configured = getattr(s, database)
            for setting, default in copier.CONNECTION_SETTINGS.items():
                secret = setting in copier.SECRET_SETTINGS
                parameters.append(Parameter(
                    self, names.parameter(database, setting),
                    value=None if secret else configured.get(setting, default),
                    secret=secret, env_var=secret_env_var(database, setting)))
        parameters.append(Parameter(self, names.webhook_parameter, value=None, secret=True,
                                    env_var=WEBHOOK_ENV_VAR))
        codebuild, batch = s.runner == "codebuild", s.runner == "batch"
        ec2 = batch and s.batch_compute == "EC2"
        tasks = "ecs-tasks.amazonaws.com"
        return [
            *parameters,
            LogGroup(self, names.project_log_group, needed=codebuild),
            LogGroup(self, names.batch_log_group, needed=batch),
            LogGroup(self, names.notify_log_group),
            EcrRepository(self, names.repository, needed=s.uses_own_repository),
            Role(self, names.role("codebuild"), "codebuild.amazonaws.com",
                 self.codebuild_permissions, needed=codebuild),
            Role(self, names.role("batch-execution"), tasks, self.batch_execution_permissions,
                 needed=batch),
            Role(self, names.role("batch-job"), tasks, self.batch_job_permissions,
                 needed=batch),
            Role(self, names.role("batch-instance"), "ec2.amazonaws.com",
                 self.batch_instance_permissions, needed=ec2),
            InstanceProfile(self, names.instance_profile, needed=ec2),
            ServiceLinkedRole(self, BATCH_SERVICE_LINKED_ROLE, needed=batch),
            Role(self, names.role("lambda"), "lambda.amazonaws.com", self.lambda_permissions),
            Role(self, names.role("states"), "states.amazonaws.com", self.states_permissions),
            Role(self, names.role("starter"), "states.amazonaws.com", self.starter_permissions),
            Role(self, names.role("scheduler"), "scheduler.amazonaws.com",
                 self.scheduler_permissions, source_account=True),
            CodeBuildProject(self, names.project, needed=codebuild),
            ComputeEnvironment(self, names.compute_environment, needed=batch),
            JobQueue(self, names.job_queue, needed=batch),
            JobDefinition(self, names.job_definition, needed=batch),
            NotifyFunction(self, names.notify_function),
            StateMachine(self, names.state_machine, "states", self.state_machine_definition),
            StateMachine(self, names.starter, "starter",
                         lambda: starter_definition(self.state_machine_arn(names.state_machine))),
            ScheduleGroup(self, names.schedule_group),
            Schedule(self, names.schedule),
            Topic(self, names.alarm_topic),
            TopicInvokePermission(self, names.alarm_permission),
            TopicSubscription(self, f"{names.alarm_topic} -> {names.notify_function}"),
            Alarm(self, names.alarm),
            QueryDefinition(self, names.durations_query),
        ]


# --------------------------------------------------------------------------- the walks


def _aws_step(resource: Resource, step: Callable[[], Any]) -> Any:
    try:
        return step()
    except (ClientError, BotoCoreError) as err:
        raise AwsError(f"{resource.label}: {describe_error(err)}") from err
    except NotImplementedError as err:  # moto, in process, for APIs it lacks
        raise AwsError(f"{resource.label}: not implemented by this endpoint: {err}") from err


@dataclass
class Outcome:
    """What happened to one resource: created, updated, unchanged, removed, absent, ..."""

    status: str
    detail: str = ""

    def line(self, label: str, dry_run: bool) -> str:
        status = f"would be {self.status}" if dry_run and self.status in (
            "created", "updated", "removed") else self.status
        return f"{status:>18}  {label}" + (f"  ({self.detail})" if self.detail else "")


def _unavailable(resource: Resource, err: AwsError, status: str) -> Outcome | None:
    """The saved query is a convenience (and an API moto lacks): a server error there is
    reported, not fatal. Any other error, or an error on any other resource, stops the walk."""
    if isinstance(resource, QueryDefinition) and is_server_error(err.__cause__):
        return Outcome(status, f"{describe_error(err.__cause__)}; docs/aws.md has the query")
    return None


def ensure_present(resource: Resource, dry_run: bool) -> Outcome:
    """Create or update one resource; return what happened (or, in a dry run, would)."""
    try:
        current = _aws_step(resource, resource.find)
        if current is None:
            if not dry_run:
                _aws_step(resource, resource.create)
            return Outcome("created")
        changed = resource.differences(current)
        if not changed:
            return Outcome("unchanged")
        if not dry_run:
            _aws_step(resource, lambda: resource.update(current, changed))
        return Outcome("updated", ", ".join(changed))
    except AwsError as err:
        unavailable = _unavailable(resource, err, "not saved")
        if unavailable is None:
            raise
        return unavailable


def ensure_absent(resource: Resource, dry_run: bool) -> Outcome:
    try:
        current = _aws_step(resource, resource.find)
    except AwsError as err:
        unavailable = _unavailable(resource, err, "not checked")
        if unavailable is None:
            raise
        return unavailable
    if current is None:
        return Outcome("absent")
    if not resource.owned(current):
        return Outcome("left alone",
                       f"no tag {TAG_KEY}={resource.d.names.prefix}: setup did not create it")
    kept = resource.kept_on_teardown(current)
    if kept:
        return Outcome("kept", kept)
    if not dry_run:
        _aws_step(resource, lambda: resource.remove(current))
    return Outcome("removed")


def image_status(deployment: Deployment) -> str | None:
    """One line about the image the jobs run, if they run one: its URI, and whether the tag
    is in the project's repository yet (a job without its image fails at night)."""
    s = deployment.settings
    if not s.runs_an_image:
        return None
    uri = deployment.image_uri()
    if not s.uses_own_repository:
        return f"image: {uri}"
    try:
        deployment.aws.client("ecr").describe_images(repositoryName=deployment.names.repository,
                                                     imageIds=[{"imageTag": s.image_tag}])
    except ClientError as err:
        if error_code(err) not in ("ImageNotFoundException", "RepositoryNotFoundException"):
            raise AwsError(f"ECR repository {deployment.names.repository}: "
                           f"{describe_error(err)}") from err
        return (f"image: {uri} is not pushed yet: build and push it before the first run "
                "(docs/aws.md, Custom image)")
    return f"image: {uri}"


def _worth_reporting(resource: Resource, outcome: Outcome) -> bool:
    """Resources of the runner or image not in use are named only when something is there."""
    return resource.needed or (outcome.status != "absent" and not resource.shared)


def setup(deployment: Deployment, out: Callable[[str], None] = print) -> dict[str, Outcome]:
    """Make every needed resource present, in order; then remove, newest first, those of the
    runner or image no longer in use (the new runner is in place before the old one goes).
    Return each resource's outcome by label."""
    dry_run = deployment.options.dry_run
    resources = deployment.resources()
    needed = [r for r in resources if r.needed]
    for resource in needed:
        _aws_step(resource, lambda r=resource: r.prepare(dry_run))
    outcomes = {}
    for resource in needed:
        outcomes[resource.label] = ensure_present(resource, dry_run)
        out(outcomes[resource.label].line(resource.label, dry_run))
    for resource in reversed([r for r in resources if not r.needed]):
        outcome = ensure_absent(resource, dry_run)
        if _worth_reporting(resource, outcome):
            outcomes[resource.label] = outcome
            out(outcome.line(resource.label, dry_run))
    note = image_status(deployment)
    if note:
        out(note)
    return outcomes


def teardown(deployment: Deployment, out: Callable[[str], None] = print) -> dict[str, Outcome]:
    """Remove every resource setup created, in reverse order, whichever runner it was for."""
    dry_run = deployment.options.dry_run
    outcomes = {}
    for resource in reversed(deployment.resources()):
        outcome = ensure_absent(resource, dry_run)
        if _worth_reporting(resource, outcome):
            outcomes[resource.label] = outcome
            out(outcome.line(resource.label, dry_run))
    return outcomes


def start_run(deployment: Deployment, day: dt.date, out: Callable[[str], None] = print) -> str:
    """Start the run for one day by hand, named exactly as the schedule names it."""
    sfn = deployment.aws.client("stepfunctions")
    machine = deployment.state_machine_arn(deployment.names.state_machine)
    name = execution_name(day)
    execution = machine.replace(":stateMachine:", ":execution:") + f":{name}"
    label = f"state machine {deployment.names.state_machine}"
    try:
        existing = sfn.describe_execution(executionArn=execution)
    except ClientError as err:
        if error_code(err) not in ("ExecutionDoesNotExist", "StateMachineDoesNotExist"):
            raise AwsError(f"{label}: {describe_error(err)}") from err
    else:
        out(f"not started: the run for {name} exists already ({existing['status']}): {execution}")
        return "exists"
    try:
        started = sfn.start_execution(stateMachineArn=machine, name=name,
                                      input=execution_input(day))
    except ClientError as err:
        if error_code(err) == "ExecutionAlreadyExists":
            out(f"not started: the run for {name} exists already: {execution}")
            return "exists"
        raise AwsError(f"{label}: {describe_error(err)}") from err
    out(f"started {started['executionArn']}")
    return "started"
