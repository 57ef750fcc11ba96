"""The nightly copy on AWS: the ordered list of resources, and the two walks over it.

setup_aws.py walks the list forwards and makes every resource present; teardown_aws.py walks
it backwards and removes what setup created. Each resource knows how to find, create, update
and remove itself; `--dry-run` runs the same walk without the calls that change anything.
See docs/aws.md for what gets created and why.

    settings.py       deploy.toml and its flags         names.py          every name, from the prefix
    aws.py            clients, retries, errors          deployment.py     one deployment's ARNs
    plan.py           which tables each job copies      state_machine.py  the rendered definitions
    permissions.py    one IAM policy per role           resources.py      the resources every runner needs
    account.py        what setup reads from the account first: the build quota, the target's storage
    rules_file.py     the column and row rules setup writes to Parameter Store, checked first
    batch.py          the AWS Batch runner, as one unit
    cli.py            the scripts' error boundary and exit codes
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

import rules
import runlog
from deploy import account, batch, permissions
from deploy import names as naming
from deploy.aws import Aws, AwsError, describe_error, error_code
from deploy.batch import ComputeEnvironment, InstanceProfile, JobDefinition, JobQueue, ServiceLinkedRole
from deploy.deployment import Deployment, Options
from deploy.names import (
    BATCH_SERVICE_LINKED_ROLE,
    TAG_KEY,
    Names,
    execution_input,
    execution_name,
)
from deploy.plan import plan_jobs, warn_on_stderr
from deploy.resources import (
    Alarm,
    CodeBuildProject,
    EcrRepository,
    EmailSubscription,
    FunctionErrorsAlarm,
    LogGroup,
    MissedRunAlarm,
    NotifyFunction,
    Parameter,
    QueryDefinition,
    Resource,
    Role,
    RulesParameter,
    Schedule,
    ScheduleGroup,
    StateMachine,
    Topic,
    TopicInvokePermission,
    TopicSubscription,
)
from deploy.rules_file import read_rules_file
from deploy.settings import (
    SETTING_FIELDS,
    WEBHOOK_ENV_VAR,
    Settings,
    SettingsError,
    add_settings_arguments,
    connection_defaults,
    load_settings,
    secret_env_var,
)
from deploy.state_machine import starter_definition

# What the scripts and operations.py use; the rest lives in the modules named above.
__all__ = [
    "SETTING_FIELDS", "Aws", "AwsError", "Deployment", "Names", "Options", "Outcome", "Settings",
    "SettingsError", "add_settings_arguments", "changes_pending", "ensure_absent",
    "ensure_present", "image_status", "load_settings", "plan_jobs", "read_rules_file",
    "resource_list", "setup", "start_run", "teardown", "warn_on_stderr",
]


def resource_list(deployment: Deployment) -> list[Resource]:
    """Every resource, in the order setup creates them (teardown goes backwards)."""
    names, settings = deployment.names, deployment.settings
    parameters: list[Resource] = []
    for database in runlog.DATABASES:
        configured = getattr(settings, database)
        defaults = connection_defaults(configured)  # verify-full for RDS and Aurora hosts
        for setting in runlog.CONNECTION_SETTINGS:
            secret = setting in runlog.SECRET_SETTINGS
            parameters.append(Parameter(
                deployment, names.parameter(database, setting),
                value=None if secret else configured.get(setting, defaults[setting]),
                secret=secret, env_var=secret_env_var(database, setting)))
    # where the copier reads the reporting database's free storage (deploy/account.py)
    parameters.append(Parameter(deployment, names.storage_parameter,
                                value=deployment.target_storage, secret=False))
    # the column and row rules, and their hashes' salt: a secret kept as the passwords are
    # (the same salt gives the same hashes when a rule hashes again)
    parameters.append(RulesParameter(deployment, names.rules_parameter, deployment.rules))
    parameters.append(Parameter(deployment, names.hash_salt_parameter, value=None, secret=True,
                                env_var=rules.SALT_VARIABLE,
                                needed=bool(deployment.rules and deployment.rules.needs_salt)))
    parameters.append(Parameter(deployment, names.webhook_parameter, value=None, secret=True,
                                env_var=WEBHOOK_ENV_VAR))
    codebuild, batch_runner = settings.runner == "codebuild", settings.runner == "batch"
    ec2 = batch_runner and settings.batch_compute == "EC2"
    tasks = "ecs-tasks.amazonaws.com"
    return [
        *parameters,
        LogGroup(deployment, names.project_log_group, needed=codebuild),
        LogGroup(deployment, names.batch_log_group, needed=batch_runner),
        LogGroup(deployment, names.notify_log_group),
        EcrRepository(deployment, names.repository, needed=settings.uses_own_repository),
        Role(deployment, names.role("codebuild"), "codebuild.amazonaws.com",
             partial(permissions.codebuild, deployment), needed=codebuild),
        Role(deployment, names.role("batch-execution"), tasks,
             partial(batch.execution_permissions, deployment), needed=batch_runner),
        Role(deployment, names.role("batch-job"), tasks,
             partial(batch.job_permissions, deployment), needed=batch_runner),
        Role(deployment, names.role("batch-instance"), "ec2.amazonaws.com",
             partial(batch.instance_permissions, deployment), needed=ec2),
        InstanceProfile(deployment, names.instance_profile, needed=ec2),
        ServiceLinkedRole(deployment, BATCH_SERVICE_LINKED_ROLE, needed=batch_runner),
        Role(deployment, names.role("lambda"), "lambda.amazonaws.com",
             partial(permissions.notify_function, deployment)),
        Role(deployment, names.role("states"), "states.amazonaws.com",
             partial(permissions.state_machine, deployment)),
        Role(deployment, names.role("starter"), "states.amazonaws.com",
             partial(permissions.starter, deployment)),
        Role(deployment, names.role("scheduler"), "scheduler.amazonaws.com",
             partial(permissions.scheduler, deployment), source_account=True),
        CodeBuildProject(deployment, names.project, needed=codebuild),
        ComputeEnvironment(deployment, names.compute_environment, needed=batch_runner),
        JobQueue(deployment, names.job_queue, needed=batch_runner),
        JobDefinition(deployment, names.job_definition, needed=batch_runner),
        NotifyFunction(deployment, names.notify_function),
        StateMachine(deployment, names.state_machine, "states", deployment.state_machine_definition),
        StateMachine(deployment, names.starter, "starter",
                     lambda: starter_definition(deployment.state_machine_arn(names.state_machine),
                                                deployment.function_arn())),
        ScheduleGroup(deployment, names.schedule_group),
        Schedule(deployment, names.schedule),
        Topic(deployment, names.alarm_topic),
        TopicInvokePermission(deployment, names.alarm_permission),
        TopicSubscription(deployment, f"{names.alarm_topic} -> {names.notify_function}"),
        Alarm(deployment, names.alarm),
        *[EmailSubscription(deployment, address) for address in settings.alarm_emails],
        MissedRunAlarm(deployment, names.missed_run_alarm),
        FunctionErrorsAlarm(deployment, names.function_errors_alarm),
        QueryDefinition(deployment, names.durations_query),
    ]


Report = Callable[["Outcome"], None]


def setup(deployment: Deployment, out: Callable[[str], None] = print,
          report: Report | None = None,
          warn: Callable[[str], None] = warn_on_stderr) -> dict[str, Outcome]:
    """Read from the account what the resources depend on and refuse what cannot work; make
    every needed resource present, in order; then remove, newest first, those of the runner
    or image no longer in use (the new runner is in place before the old one goes). Each
    outcome goes to `report` as it happens (default: its line to `out`); return them all by
    label."""
    dry_run = deployment.options.dry_run
    report = report or (lambda outcome: out(outcome.line(dry_run)))
    notes: list[str] = []  # said once the walk is done: a failure stays one line
    _aws_step_named("account", lambda: account.survey(deployment, notes.append))
    every = resource_list(deployment)
    needed = [r for r in every if r.needed]
    for resource in needed:
        _aws_step(resource, lambda r=resource: r.prepare(dry_run))
    outcomes = {}
    for resource in needed:
        outcomes[resource.label] = ensure_present(resource, dry_run)
        report(outcomes[resource.label])
    for resource in reversed([r for r in every if not r.needed]):
        outcome = ensure_absent(resource, dry_run, out)
        if _worth_reporting(resource, outcome):
            outcomes[resource.label] = outcome
            report(outcome)
    note = image_status(deployment)
    if note:
        out(note)
    for note in notes:
        warn(note)
    return outcomes


def teardown(deployment: Deployment, out: Callable[[str], None] = print,
             report: Report | None = None) -> dict[str, Outcome]:
    """Remove every resource setup created, in reverse order, whichever runner it was for."""
    dry_run = deployment.options.dry_run
    report = report or (lambda outcome: out(outcome.line(dry_run)))
    outcomes = {}
    for resource in reversed(resource_list(deployment)):
        outcome = ensure_absent(resource, dry_run, out)
        if _worth_reporting(resource, outcome):
            outcomes[resource.label] = outcome
            report(outcome)
    return outcomes


# --------------------------------------------------------------------------- one resource


def _aws_step(resource: Resource, step: Callable[[], Any]) -> Any:
    return _aws_step_named(resource.label, step)


def _aws_step_named(label: str, step: Callable[[], Any]) -> Any:
    try:
        return step()
    except (ClientError, BotoCoreError) as err:
        raise AwsError(f"{label}: {describe_error(err)}") from err


CHANGES = ("created", "updated", "removed")


@dataclass
class Outcome:
    """What happened to one resource (in a dry run: would happen): created, updated,
    unchanged, removed, absent, kept or left alone."""

    status: str
    kind: str
    label: str
    detail: str = ""

    @classmethod
    def of(cls, resource: Resource, status: str, detail: str = "") -> Outcome:
        return cls(status, resource.kind, resource.label, detail)

    @property
    def name(self) -> str:
        """The label without its kind: the resource's name (a schedule's with its group)."""
        return self.label.removeprefix(self.kind).strip()

    @property
    def changed(self) -> bool:
        return self.status in CHANGES

    def line(self, dry_run: bool) -> str:
        status = f"would be {self.status}" if dry_run and self.changed else self.status
        return f"{status:>18}  {self.label}" + (f"  ({self.detail})" if self.detail else "")

    def as_json(self, dry_run: bool) -> dict[str, Any]:
        """One object for --json: in a dry run, status and changed say what would happen."""
        return {"name": self.name, "kind": self.kind, "status": self.status,
                "changed": self.changed, "detail": self.detail, "dry_run": dry_run}


def changes_pending(outcomes: dict[str, Outcome]) -> bool:
    return any(outcome.changed for outcome in outcomes.values())


def ensure_present(resource: Resource, dry_run: bool) -> Outcome:
    """Create or update one resource; return what happened (or, in a dry run, would)."""
    current = _aws_step(resource, resource.find)
    if current is None:
        if not dry_run:
            _aws_step(resource, resource.create)
        return Outcome.of(resource, "created")
    changed = resource.differences(current)
    if not changed:
        return Outcome.of(resource, "unchanged")
    if not dry_run:
        _aws_step(resource, lambda: resource.update(current, changed))
    return Outcome.of(resource, "updated", ", ".join(changed))


def ensure_absent(resource: Resource, dry_run: bool,
                  out: Callable[[str], None] = print) -> Outcome:
    """Remove one resource, once what keeps it (a state machine's running runs) is stopped,
    and return when it is really gone; return what happened (or, in a dry run, would)."""
    current = _aws_step(resource, resource.find_for_removal)
    if current is None:
        return Outcome.of(resource, "absent")
    if not resource.owned(current):
        return Outcome.of(resource, "left alone", f"no tag {TAG_KEY}="
                          f"{resource.deployment.names.prefix}: setup did not create it")
    kept = resource.kept_on_teardown(current)
    if kept:
        return Outcome.of(resource, "kept", kept)
    detail = _aws_step(resource, lambda: resource.before_removal(current, dry_run, out))
    if not dry_run:
        _aws_step(resource, lambda: resource.remove(current))
        _aws_step(resource, resource.wait_until_removed)
    return Outcome.of(resource, "removed", detail)


def image_status(deployment: Deployment) -> str | None:
    """One line about the image the jobs run, if they run one: its URI, and whether the tag
    is in the project's repository yet (a job without its image fails at night)."""
    settings = deployment.settings
    if not settings.runs_an_image:
        return None
    uri = deployment.image_uri()
    if not settings.uses_own_repository:
        return f"image: {uri}"
    try:
        deployment.aws.client("ecr").describe_images(repositoryName=deployment.names.repository,
                                                     imageIds=[{"imageTag": settings.image_tag}])
    except (ClientError, BotoCoreError) as err:
        if not isinstance(err, ClientError) or error_code(err) not in (
                "ImageNotFoundException", "RepositoryNotFoundException"):
            raise AwsError(f"ECR repository {deployment.names.repository}: "
                           f"{describe_error(err)}") from err
        return (f"image: {uri} is not pushed yet: build and push it before the first run "
                "(docs/aws.md, Custom image)")
    return f"image: {uri}"


def _worth_reporting(resource: Resource, outcome: Outcome) -> bool:
    """Resources of the runner or image not in use are named only when something is there."""
    return resource.needed or (outcome.status != "absent" and not resource.shared)


def start_run(deployment: Deployment, day: dt.date | None = None,
              out: Callable[[str], None] = print) -> str:
    """Start the run for one day by hand, named exactly as the schedule names it: by default
    the run for today's date in the schedule's time zone."""
    if day is None:
        day = naming.run_date(naming.now(), deployment.settings.timezone)
        out(f"run for {day.isoformat()}: today in {deployment.settings.timezone}, the "
            "schedule's time zone (--date picks another)")
    sfn = deployment.aws.client("stepfunctions")
    machine = deployment.state_machine_arn(deployment.names.state_machine)
    name = execution_name(day)
    execution = machine.replace(":stateMachine:", ":execution:") + f":{name}"
    label = f"state machine {deployment.names.state_machine}"
    try:
        existing = sfn.describe_execution(executionArn=execution)
    except (ClientError, BotoCoreError) as err:
        if not isinstance(err, ClientError) or error_code(err) not in (
                "ExecutionDoesNotExist", "StateMachineDoesNotExist"):
            raise AwsError(f"{label}: {describe_error(err)}") from err
    else:
        out(f"not started: the run for {name} exists already ({existing['status']}): {execution}")
        return "exists"
    try:
        started = sfn.start_execution(stateMachineArn=machine, name=name,
                                      input=execution_input(day))
    except (ClientError, BotoCoreError) as err:
        if isinstance(err, ClientError) and error_code(err) == "ExecutionAlreadyExists":
            out(f"not started: the run for {name} exists already: {execution}")
            return "exists"
        raise AwsError(f"{label}: {describe_error(err)}") from err
    out(f"started {started['executionArn']}")
    return "started"
