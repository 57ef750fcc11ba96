"""The resources every runner needs: each finds, creates, updates and removes itself.

Resource.find() returns a view of the current state with the same keys as desired(), or None;
the walks in deploy/__init__.py compare the two."""

from __future__ import annotations

import base64
import datetime as dt
import getpass
import hashlib
import importlib.resources
import io
import json
import os
import sys
import time
import urllib.parse
import zipfile
import zoneinfo
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

import runlog
from deploy import names as naming
from deploy import schedule
from deploy.aws import Aws, AwsError, error_code
from deploy.names import TAG_KEY
from deploy.permissions import policy
from deploy.rules_file import ADVANCED_TIER, RulesFile
from deploy.settings import SettingsError

if TYPE_CHECKING:
    from deploy.deployment import Deployment


HERE = Path(__file__).resolve().parent.parent
# The Slack function, and what it imports besides the standard library and boto3.
NOTIFY_SOURCES = (HERE / "notify_lambda.py", HERE / "runlog.py")
# A custom image holds the project at /app with its requirements installed.
ECR_BUILDSPEC = """version: 0.2
phases:
  build:
    commands:
      - cd /app && python copier.py
"""
DURATIONS_QUERY = (
    "fields @timestamp, @logStream, table, rows, bytes, seconds\n"
    f'| filter event = "{runlog.TABLE_COPIED}"\n'
    "| sort seconds desc"
)



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
        self.deployment = deployment
        self.name = name
        # False for the resources of the runner or image not in use: setup removes them.
        self.needed = needed

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}"

    @property
    def aws(self) -> Aws:
        return self.deployment.aws

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
        return not self.taggable or current.get("tags", {}).get(TAG_KEY) == self.deployment.names.prefix

    def kept_on_teardown(self, current: dict) -> str | None:
        return None

    def find_for_removal(self) -> dict | None:
        """find(), except that a resource AWS is still deleting counts as present."""
        return self.find()

    def before_removal(self, current: dict, dry_run: bool, out: Callable[[str], None]) -> str:
        """Stop what would keep remove() from taking effect (in a dry run: only look), saying
        so on `out`, a line each; return the outcome's detail ('' when there was nothing)."""
        return ""

    def wait_until_removed(self) -> None:
        """Return once remove() has taken effect (AWS deletes some resources asynchronously)."""

    def our_tags(self) -> dict[str, str]:
        return {TAG_KEY: self.deployment.names.prefix}



def only_our_tag(tags: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if k == TAG_KEY}


def normalized(document: Any) -> Any:
    return json.loads(json.dumps(document, sort_keys=True))


def as_document(document: str | dict | None) -> dict | None:
    """IAM returns policies as dicts through boto3; some endpoints leave them JSON strings."""
    if isinstance(document, str):
        return json.loads(urllib.parse.unquote(document))
    return document



def zone_file(key: str) -> bytes:
    """The compiled IANA zone file of `key`, from the system's database or the tzdata package."""
    for directory in zoneinfo.TZPATH:
        candidate = Path(directory, key)
        if candidate.is_file():
            return candidate.read_bytes()
    try:
        return importlib.resources.files("tzdata").joinpath("zoneinfo", *key.split("/")).read_bytes()
    except (ModuleNotFoundError, OSError) as err:
        raise SettingsError(f"timezone {key!r}: no zone file on this machine to bundle with the "
                            "Lambda (install tzdata)") from err


def zip_notify_function(timezone: str = "UTC") -> bytes:
    """notify_lambda.py, the modules it imports (runlog.py) and the schedule's zone file
    (tz/<key>, so the run's local date is computed with the rules setup checked) in a zip with
    fixed timestamps: the hash is reproducible."""
    for source in NOTIFY_SOURCES:
        if not source.exists():
            raise SettingsError(f"{source.name} is missing in {HERE}")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in (*((source.name, source.read_bytes()) for source in NOTIFY_SOURCES),
                              (f"tz/{timezone}", zone_file(timezone))):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            archive.writestr(info, content)
    return buffer.getvalue()



class Parameter(Resource):
    kind = "SSM parameter"

    def __init__(self, deployment, name, value: str | None, secret: bool, env_var: str = "",
                 needed: bool = True):
        super().__init__(deployment, name, needed)
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
                  or self.deployment.options.overwrite_secrets)
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
        if self.secret and self.deployment.options.overwrite_secrets:
            changed.append("value (overwrite asked)")
        return changed

    def _value(self) -> str:
        return self.secret_value if self.secret else self.value

    def put_options(self, current: dict | None) -> dict:
        """What PutParameter is given besides the name, value and type."""
        return {}

    def create(self) -> None:
        self.aws.client("ssm").put_parameter(
            Name=self.name, Value=self._value(), Type=self.desired()["type"],
            Tags=[{"Key": TAG_KEY, "Value": self.deployment.names.prefix}],
            **self.put_options(None))

    def update(self, current: dict, changed: list[str]) -> None:
        ssm = self.aws.client("ssm")
        if any(c != "tags" for c in changed):
            ssm.put_parameter(Name=self.name, Value=self._value(), Type=self.desired()["type"],
                              Overwrite=True, **self.put_options(current))
        ssm.add_tags_to_resource(ResourceType="Parameter", ResourceId=self.name,
                                 Tags=[{"Key": TAG_KEY, "Value": self.deployment.names.prefix}])

    def remove(self, current: dict) -> None:
        self.aws.client("ssm").delete_parameter(Name=self.name)

    def kept_on_teardown(self, current: dict) -> str | None:
        if self.secret and not self.deployment.options.remove_secrets:
            return "a secret; only teardown_aws.py --remove-secrets deletes it"
        return None


class RulesParameter(Parameter):
    """<prefix>rules: the column and row rules as text, which the copier reads with its other
    settings, in the tier their size needs (deploy/rules_file.py). Without rules_file, setup
    removes it: no rules."""

    def __init__(self, deployment, name, found: RulesFile | None):
        super().__init__(deployment, name, value=found.text if found else None, secret=False,
                         needed=found is not None)
        self.found = found

    def find(self) -> dict | None:
        view = super().find()
        if view is not None:
            # GetParameter does not say the tier; DescribeParameters does
            described = self.aws.client("ssm").describe_parameters(ParameterFilters=[
                {"Key": "Name", "Option": "Equals", "Values": [self.name]}])["Parameters"]
            view["tier"] = described[0].get("Tier") if described else None
        return view

    def find_for_removal(self) -> dict | None:
        return super().find()  # the tier does not matter to a removal

    def tier(self, current: dict | None) -> str:
        """The tier the rules' size needs; Advanced stays Advanced: Parameter Store cannot
        revert it, and deleting and recreating the parameter would leave a moment without
        rules, in which a job would copy every table unmasked."""
        if current and current.get("tier") == ADVANCED_TIER:
            return ADVANCED_TIER
        return self.found.tier

    def differences(self, current: dict) -> list[str]:
        changed = super().differences(current)
        if current.get("tier") != self.tier(current):
            changed.append("tier")
        return changed

    def put_options(self, current: dict | None) -> dict:
        return {"Tier": self.tier(current)}


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
        return {"retention_days": self.deployment.settings.log_retention_days, "tags": self.our_tags()}

    def create(self) -> None:
        logs = self.aws.client("logs")
        logs.create_log_group(logGroupName=self.name, tags=self.our_tags())
        logs.put_retention_policy(logGroupName=self.name,
                                  retentionInDays=self.deployment.settings.log_retention_days)

    def update(self, current: dict, changed: list[str]) -> None:
        logs = self.aws.client("logs")
        if "retention_days" in changed:
            logs.put_retention_policy(logGroupName=self.name,
                                      retentionInDays=self.deployment.settings.log_retention_days)
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
                        Description=f"{self.deployment.names.prefix}: used by {self.service}",
                        Tags=[{"Key": TAG_KEY, "Value": self.deployment.names.prefix}])
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
            iam.tag_role(RoleName=self.name, Tags=[{"Key": TAG_KEY, "Value": self.deployment.names.prefix}])

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
        settings, names = self.deployment.settings, self.deployment.names
        quota = self.deployment.build_quota
        if settings.runs_an_image:
            # The code is in the image: no GitHub at 3 a.m. The role pulls (SERVICE_ROLE), with
            # permissions scoped to the one repository; the repository needs no policy.
            source = {"type": "NO_SOURCE", "buildspec": ECR_BUILDSPEC}
            image, pull = self.deployment.image_uri(), "SERVICE_ROLE"
        else:
            source = {"type": "GITHUB", "location": settings.github_url, "buildspec": "buildspec.yml"}
            image, pull = settings.image, "CODEBUILD"
        spec = {
            "name": self.name,
            "description": f"{names.prefix}: copy tables (TABLES set per job by the state machine)",
            "source": source,
            "artifacts": {"type": "NO_ARTIFACTS"},
            "environment": {
                "type": "LINUX_CONTAINER", "image": image, "computeType": settings.compute_type,
                "imagePullCredentialsType": pull,
                "environmentVariables": [
                    {"name": "COPIER_SSM_PREFIX", "value": names.ssm_prefix, "type": "PLAINTEXT"},
                    *([{"name": runlog.BUILD_QUOTA_VARIABLE, "value": quota.text(),
                        "type": "PLAINTEXT"}] if quota else []),
                ],
            },
            "serviceRole": self.deployment.role_arn("codebuild"),
            "timeoutInMinutes": settings.build_timeout_minutes,
            "queuedTimeoutInMinutes": settings.queued_timeout_minutes,
            "logsConfig": {"cloudWatchLogs": {"status": "ENABLED",
                                              "groupName": names.project_log_group}},
            "tags": [{"key": TAG_KEY, "value": names.prefix}],
        }
        if not settings.runs_an_image:
            spec["sourceVersion"] = settings.branch
        if settings.vpc_id:
            spec["vpcConfig"] = {"vpcId": settings.vpc_id, "subnets": settings.subnets,
                                 "securityGroupIds": settings.security_groups}
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
        self.zipped = zip_notify_function(self.deployment.settings.timezone)

    def configuration(self) -> dict:
        return {
            "Runtime": self.deployment.settings.lambda_runtime,
            "Role": self.deployment.role_arn("lambda"),
            "Handler": self.HANDLER,
            "Timeout": self.TIMEOUT_SECONDS,
            "MemorySize": 128,
            "Environment": {"Variables": {
                "WEBHOOK_PARAMETER": self.deployment.names.webhook_parameter,
                "COPIER_LOG_GROUP": self.deployment.copier_log_group()}},
            "LoggingConfig": {"LogFormat": "Text", "LogGroup": self.deployment.names.notify_log_group},
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
            Description=f"{self.deployment.names.prefix}: Slack summary of the nightly copy and alarms",
            Tags=self.our_tags(), **self.configuration())

    def update(self, current: dict, changed: list[str]) -> None:
        client = self.aws.client("lambda")
        if "configuration" in changed:
            client.update_function_configuration(FunctionName=self.name, **self.configuration())
            client.get_waiter("function_updated_v2").wait(FunctionName=self.name)
        if "code_sha256" in changed:
            client.update_function_code(FunctionName=self.name, ZipFile=self.zipped)
        if "tags" in changed:
            client.tag_resource(Resource=self.deployment.function_arn(), Tags=self.our_tags())

    def remove(self, current: dict) -> None:
        self.aws.client("lambda").delete_function(FunctionName=self.name)


# Teardown stops the runs in flight with this error, so that their history says who did.
STOP_ERROR = "nightly-copy.Teardown"
DELETE_POLLS = 60
DELETE_POLL_SECONDS = 2.0
sleep = time.sleep  # tests replace this to count the polls


class StateMachine(Resource):
    kind = "state machine"

    def __init__(self, deployment, name, role: str, definition: Callable[[], dict]):
        super().__init__(deployment, name)
        self.role = role
        self.definition = definition

    def prepare(self, dry_run: bool) -> None:
        self.definition()  # refuses a definition AWS would refuse, before anything changes

    def find(self) -> dict | None:
        found = self.find_for_removal()
        return None if found is None or found["deleting"] else found

    def find_for_removal(self) -> dict | None:
        """The state machine, also while it is DELETING: Step Functions deletes one only once
        its runs have ended, and the name stays taken until then."""
        sfn = self.aws.client("stepfunctions")
        arn = self.deployment.state_machine_arn(self.name)
        try:
            found = sfn.describe_state_machine(stateMachineArn=arn)
        except ClientError as err:
            if error_code(err) == "StateMachineDoesNotExist":
                return None
            raise
        tags = sfn.list_tags_for_resource(resourceArn=arn)["tags"]
        return {"definition": json.loads(found["definition"]), "role": found["roleArn"],
                "type": found.get("type", "STANDARD"),
                "tags": only_our_tag({t["key"]: t["value"] for t in tags}),
                "deleting": found.get("status") == "DELETING"}

    def desired(self) -> dict:
        return {"definition": self.definition(), "role": self.deployment.role_arn(self.role),
                "type": "STANDARD", "tags": self.our_tags()}

    def running(self) -> list[dict]:
        """The runs in flight, newest first (ListExecutions, every page)."""
        pages = self.aws.client("stepfunctions").get_paginator("list_executions").paginate(
            stateMachineArn=self.deployment.state_machine_arn(self.name), statusFilter="RUNNING")
        return [run for page in pages for run in page["executions"]]

    def before_removal(self, current: dict, dry_run: bool, out: Callable[[str], None]) -> str:
        """Stop the runs in flight: Step Functions only marks a state machine DELETING while
        runs go on (for hours, for a night's copy), and its name stays taken until they end."""
        runs = self.running()
        if not runs:
            return ""
        count = f"{len(runs)} running run{'' if len(runs) == 1 else 's'}"
        names = ", ".join(run["name"] for run in runs)
        if dry_run:
            return f"would stop {count}: {names}"
        out(f"{self.label}: stopping {count} before deleting it (error {STOP_ERROR})")
        sfn = self.aws.client("stepfunctions")
        for run in runs:
            sfn.stop_execution(executionArn=run["executionArn"], error=STOP_ERROR,
                               cause=f"teardown_aws.py removes {self.label}")
            out(f"{'stopped':>18}  run {run['name']}  ({run['executionArn']})")
        return f"stopped {count}: {names}"

    def create(self) -> None:
        current = self.find_for_removal()
        if current is not None and current["deleting"]:
            # An earlier teardown gave up waiting: the name is free only once it is gone.
            self.wait_until_removed()
        self.aws.client("stepfunctions").create_state_machine(
            name=self.name, definition=json.dumps(self.definition(), indent=2),
            roleArn=self.deployment.role_arn(self.role), type="STANDARD",
            tags=[{"key": TAG_KEY, "value": self.deployment.names.prefix}])

    def update(self, current: dict, changed: list[str]) -> None:
        sfn = self.aws.client("stepfunctions")
        arn = self.deployment.state_machine_arn(self.name)
        if "type" in changed:
            raise AwsError(f"{self.label}: exists with type {current['type']}; "
                           "run teardown_aws.py first")
        if {"definition", "role"} & set(changed):
            sfn.update_state_machine(stateMachineArn=arn,
                                     definition=json.dumps(self.definition(), indent=2),
                                     roleArn=self.deployment.role_arn(self.role))
        if "tags" in changed:
            sfn.tag_resource(resourceArn=arn,
                             tags=[{"key": TAG_KEY, "value": self.deployment.names.prefix}])

    def remove(self, current: dict) -> None:
        if not current["deleting"]:  # an earlier teardown asked already
            self.aws.client("stepfunctions").delete_state_machine(
                stateMachineArn=self.deployment.state_machine_arn(self.name))

    def wait_until_removed(self) -> None:
        """Poll until the state machine is gone, so that a setup right after finds its name
        free; at most DELETE_POLLS polls DELETE_POLL_SECONDS apart."""
        sfn = self.aws.client("stepfunctions")
        arn = self.deployment.state_machine_arn(self.name)
        for _ in range(DELETE_POLLS):
            try:
                status = sfn.describe_state_machine(stateMachineArn=arn).get("status")
            except ClientError as err:
                if error_code(err) == "StateMachineDoesNotExist":
                    return
                raise
            sleep(DELETE_POLL_SECONDS)
        raise AwsError(
            f"{self.label}: still {status} after {DELETE_POLLS * DELETE_POLL_SECONDS:g} s; Step "
            "Functions deletes it once its runs have ended: check for runs that ignored the stop "
            "(console, or aws stepfunctions list-executions), then run teardown again")


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
            Name=self.name, Tags=[{"Key": TAG_KEY, "Value": self.deployment.names.prefix}])

    def update(self, current: dict, changed: list[str]) -> None:
        self.aws.client("scheduler").tag_resource(
            ResourceArn=current["arn"], Tags=[{"Key": TAG_KEY, "Value": self.deployment.names.prefix}])

    def remove(self, current: dict) -> None:
        self.aws.client("scheduler").delete_schedule_group(Name=self.name)


class Schedule(Resource):
    """Schedules cannot be tagged; this one lives in the project's tagged schedule group."""

    kind = "schedule"
    taggable = False

    @property
    def label(self) -> str:
        return f"{self.kind} {self.deployment.names.schedule_group}/{self.name}"

    def request(self) -> dict:
        settings = self.deployment.settings
        start = {}
        if settings.is_rate_schedule:
            start["StartDate"] = schedule.next_start(settings.rate_start_time, settings.timezone,
                                                     naming.now())
        return {
            **start,
            "Name": self.name,
            "GroupName": self.deployment.names.schedule_group,
            "ScheduleExpression": settings.schedule,
            "ScheduleExpressionTimezone": settings.timezone,
            "FlexibleTimeWindow": {"Mode": "OFF"},
            "State": "ENABLED",
            "Description": f"{self.deployment.names.prefix}: start the nightly copy, named after the date",
            "Target": {
                "Arn": self.deployment.state_machine_arn(self.deployment.names.starter),
                "RoleArn": self.deployment.role_arn("scheduler"),
                # UTC; the starter names the run after its local date in this time zone
                "Input": json.dumps({"scheduled_time": "<aws.scheduler.scheduled-time>",
                                     "timezone": settings.timezone}),
                "RetryPolicy": {"MaximumRetryAttempts": 3, "MaximumEventAgeInSeconds": 3600},
            },
        }

    @staticmethod
    def view(found: dict) -> dict:
        """A rate schedule's StartDate is compared by the local time it shows, not the date:
        the next occurrence moves every day, the configured time does not."""
        target = found.get("Target", {})
        start = found.get("StartDate")
        if isinstance(start, int | float):  # epoch seconds, as some endpoints answer
            start = dt.datetime.fromtimestamp(start, dt.UTC)
        local = None
        if start is not None and found.get("ScheduleExpressionTimezone"):
            local = start.astimezone(schedule.time_zone(found["ScheduleExpressionTimezone"]))
        return {
            "expression": found.get("ScheduleExpression"),
            "timezone": found.get("ScheduleExpressionTimezone"),
            "state": found.get("State"),
            "start_time": local and local.strftime("%H:%M"),
            "target": {k: target.get(k) for k in ("Arn", "RoleArn", "Input")},
        }

    def find(self) -> dict | None:
        try:
            found = self.aws.client("scheduler").get_schedule(
                GroupName=self.deployment.names.schedule_group, Name=self.name)
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
        self.aws.client("scheduler").delete_schedule(GroupName=self.deployment.names.schedule_group,
                                                     Name=self.name)


class Topic(Resource):
    kind = "SNS topic"

    def find(self) -> dict | None:
        sns = self.aws.client("sns")
        arn = self.deployment.topic_arn()
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
            Name=self.name, Tags=[{"Key": TAG_KEY, "Value": self.deployment.names.prefix}])

    def update(self, current: dict, changed: list[str]) -> None:
        self.aws.client("sns").tag_resource(
            ResourceArn=self.deployment.topic_arn(),
            Tags=[{"Key": TAG_KEY, "Value": self.deployment.names.prefix}])

    def remove(self, current: dict) -> None:
        self.aws.client("sns").delete_topic(TopicArn=self.deployment.topic_arn())


class TopicInvokePermission(Resource):
    """The statement in the function's resource policy that lets the alarm topic invoke it."""

    kind = "Lambda permission"
    taggable = False

    def find(self) -> dict | None:
        try:
            found = self.aws.client("lambda").get_policy(FunctionName=self.deployment.names.notify_function)
        except ClientError as err:
            if error_code(err) == "ResourceNotFoundException":
                return None
            raise
        statements = json.loads(found["Policy"]).get("Statement", [])
        statement = next((found for found in statements if found.get("Sid") == self.name), None)
        if statement is None:
            return None
        principal = statement.get("Principal", {})
        condition = statement.get("Condition", {}).get("ArnLike", {})
        return {"principal": principal.get("Service") if isinstance(principal, dict)
                else principal, "source_arn": condition.get("AWS:SourceArn")}

    def desired(self) -> dict:
        return {"principal": "sns.amazonaws.com", "source_arn": self.deployment.topic_arn()}

    def create(self) -> None:
        self.aws.client("lambda").add_permission(
            FunctionName=self.deployment.names.notify_function, StatementId=self.name,
            Action="lambda:InvokeFunction", Principal="sns.amazonaws.com",
            SourceArn=self.deployment.topic_arn())

    def update(self, current: dict, changed: list[str]) -> None:
        self.remove(current)
        self.create()

    def remove(self, current: dict) -> None:
        self.aws.client("lambda").remove_permission(
            FunctionName=self.deployment.names.notify_function, StatementId=self.name)


def topic_subscriptions(resource: Resource) -> list[dict]:
    """The alarm topic's subscriptions; none while the topic does not exist."""
    try:
        return resource.aws.client("sns").list_subscriptions_by_topic(
            TopicArn=resource.deployment.topic_arn())["Subscriptions"]
    except ClientError as err:
        if error_code(err) in ("NotFound", "NotFoundException"):
            return []
        raise


class TopicSubscription(Resource):
    kind = "SNS subscription"
    taggable = False

    def find(self) -> dict | None:
        for subscription in topic_subscriptions(self):
            if (subscription["Protocol"] == "lambda"
                    and subscription["Endpoint"] == self.deployment.function_arn()):
                return {"endpoint": subscription["Endpoint"],
                        "arn": subscription["SubscriptionArn"]}
        return None

    def desired(self) -> dict:
        return {"endpoint": self.deployment.function_arn()}

    def create(self) -> None:
        self.aws.client("sns").subscribe(TopicArn=self.deployment.topic_arn(), Protocol="lambda",
                                         Endpoint=self.deployment.function_arn())

    def remove(self, current: dict) -> None:
        self.aws.client("sns").unsubscribe(SubscriptionArn=current["arn"])


class EmailSubscription(Resource):
    """One address the alarm topic also mails: it works when Slack does not. SNS mails a
    confirmation link first; until it is clicked the subscription is pending. Teardown's
    deletion of the topic removes every subscription with it."""

    kind = "SNS e-mail subscription"
    taggable = False

    def find(self) -> dict | None:
        for subscription in topic_subscriptions(self):
            if subscription["Protocol"] == "email" and subscription["Endpoint"] == self.name:
                return {"endpoint": self.name, "arn": subscription["SubscriptionArn"]}
        return None

    def desired(self) -> dict:
        return {"endpoint": self.name}

    def create(self) -> None:
        self.aws.client("sns").subscribe(TopicArn=self.deployment.topic_arn(), Protocol="email",
                                         Endpoint=self.name)

    def remove(self, current: dict) -> None:
        if current["arn"].startswith("arn:"):  # a pending one goes with the topic
            self.aws.client("sns").unsubscribe(SubscriptionArn=current["arn"])


class Alarm(Resource):
    kind = "CloudWatch alarm"
    PERIOD_SECONDS = 300

    def metric(self, metric_id: str, namespace: str, name: str, dimension: dict) -> dict:
        return {"Id": metric_id, "ReturnData": False, "MetricStat": {
            "Metric": {"Namespace": namespace, "MetricName": name, "Dimensions": [dimension]},
            "Period": self.PERIOD_SECONDS, "Stat": "Sum"}}

    def machine_metric(self, metric_id: str, name: str, state_machine: str) -> dict:
        return self.metric(metric_id, "AWS/States", name, {
            "Name": "StateMachineArn", "Value": self.deployment.state_machine_arn(state_machine)})

    def metrics(self) -> list[dict]:
        names = self.deployment.names
        return [
            self.machine_metric("failed", "ExecutionsFailed", names.state_machine),
            self.machine_metric("timedout", "ExecutionsTimedOut", names.state_machine),
            self.machine_metric("aborted", "ExecutionsAborted", names.state_machine),
            self.machine_metric("starterfailed", "ExecutionsFailed", names.starter),
            self.machine_metric("succeeded", "ExecutionsSucceeded", names.state_machine),
            until_recovered("problems", "failed, timed-out or aborted runs (1), until a run "
                            "succeeds (0)", ["failed", "timedout", "aborted", "starterfailed"],
                            "succeeded"),
        ]

    def request(self) -> dict:
        return self.alarm(
            f"{self.deployment.names.prefix}: a nightly run failed, timed out or was aborted (or "
            "the starter failed); it is back to normal only once a run has succeeded since",
            "GreaterThanOrEqualToThreshold", "ignore", Metrics=self.metrics())

    def alarm(self, description: str, comparison: str, missing_data: str, **metric) -> dict:
        """What every alarm of the deployment says: one period over a threshold of 1, to the
        topic, with OK actions (the "back to normal" message); `metric` names what it watches."""
        return {
            "AlarmName": self.name,
            "AlarmDescription": description,
            "ActionsEnabled": True,
            "AlarmActions": [self.deployment.topic_arn()],
            "OKActions": [self.deployment.topic_arn()],
            **metric,
            "EvaluationPeriods": 1,
            "DatapointsToAlarm": 1,
            "Threshold": 1.0,
            "ComparisonOperator": comparison,
            "TreatMissingData": missing_data,
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

        # A metric-math alarm reads back with empty single-metric fields ([] or None)
        view = {k: alarm.get(k) or None for k in (
            "AlarmActions", "OKActions", "EvaluationPeriods", "ComparisonOperator",
            "TreatMissingData", "Namespace", "MetricName", "Dimensions", "Period", "Statistic")}
        return view | {"Threshold": float(alarm.get("Threshold", 0)),
                       "Metrics": [metric(m) for m in alarm.get("Metrics") or []]}

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
            **self.request(), Tags=[{"Key": TAG_KEY, "Value": self.deployment.names.prefix}])

    def update(self, current: dict, changed: list[str]) -> None:
        cloudwatch = self.aws.client("cloudwatch")
        cloudwatch.put_metric_alarm(**self.request())
        if "tags" in changed:
            cloudwatch.tag_resource(ResourceARN=current["arn"],
                                    Tags=[{"Key": TAG_KEY, "Value": self.deployment.names.prefix}])

    def remove(self, current: dict) -> None:
        self.aws.client("cloudwatch").delete_alarms(AlarmNames=[self.name])


def until_recovered(expression_id: str, label: str, problems: list[str], recovery: str) -> dict:
    """1 in a period with a problem, 0 in a period with a recovery and no problem, and no data
    point otherwise; with TreatMissingData "ignore" (the alarm keeps its state while data is
    missing: "Configuring how CloudWatch alarms treat missing data", CloudWatch User Guide) the
    alarm stays in ALARM until the recovery, and its OK action says "back to normal" only
    then. With notBreaching and 5-minute periods it went back to OK 5 minutes after every
    failure, nothing fixed.

    FILL(m, 0) gives each problem metric a value in every period (Step Functions and Lambda
    publish these metrics only when something happens); the recovery metric is not filled,
    so 0 * recovery has no value in a period without one, and IF takes it there ("Metric math
    syntax and functions": IF(condition, trueValue, falseValue), CloudWatch User Guide)."""
    any_problem = " + ".join(f"FILL({metric_id}, 0)" for metric_id in problems)
    return {"Id": expression_id, "ReturnData": True, "Label": label,
            "Expression": f"IF({any_problem} >= 1, 1, 0 * {recovery})"}


class MissedRunAlarm(Alarm):
    """No successful nightly run for a little longer than the schedule's longest gap.

    Step Functions publishes ExecutionsSucceeded only when a run succeeds, so a night without
    any run (a broken schedule or starter role, a deleted starter, a start refused) is missing
    data: treated as breaching. The window is the longest gap between two scheduled runs plus
    the execution timeout (a run may succeed that much later), in whole hours."""

    def request(self) -> dict:
        deployment = self.deployment
        window = deployment.settings.missed_run_window_seconds()
        machine = deployment.state_machine_arn(deployment.names.state_machine)
        return self.alarm(
            f"{deployment.names.prefix}: no successful nightly run in the last {window // 3600} "
            "hours (a night was missed, or failed)", "LessThanThreshold", "breaching",
            Namespace="AWS/States", MetricName="ExecutionsSucceeded",
            Dimensions=[{"Name": "StateMachineArn", "Value": machine}],
            Statistic="Sum", Period=window)


class FunctionErrorsAlarm(Alarm):
    """The notify Lambda failed (Slack refused a message, the webhook was revoked): the topic
    mails it to alarm_emails, since the Lambda cannot tell Slack about itself."""

    def request(self) -> dict:
        names = self.deployment.names
        function = {"Name": "FunctionName", "Value": names.notify_function}
        return self.alarm(
            f"{names.prefix}: the Slack notifier failed; Slack may not have heard about the "
            f"nightly copy (see its log group {names.notify_log_group}); back to normal once it "
            "has run without an error since", "GreaterThanOrEqualToThreshold", "ignore",
            Metrics=[self.metric("errors", "AWS/Lambda", "Errors", function),
                     self.metric("invocations", "AWS/Lambda", "Invocations", function),
                     until_recovered("notifierfailed", "failed invocations (1), until one "
                                     "succeeds (0)", ["errors"], "invocations")])


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
        return {"query": DURATIONS_QUERY, "log_groups": [self.deployment.copier_log_group()]}

    def create(self) -> None:
        self.aws.client("logs").put_query_definition(
            name=self.name, queryString=DURATIONS_QUERY,
            logGroupNames=[self.deployment.copier_log_group()])

    def update(self, current: dict, changed: list[str]) -> None:
        self.aws.client("logs").put_query_definition(
            name=self.name, queryDefinitionId=current["id"], queryString=DURATIONS_QUERY,
            logGroupNames=[self.deployment.copier_log_group()])

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
        if len(self.name) < 2:  # ECR takes no shorter name (a prefix older setups allowed)
            return None
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
            repositoryName=self.name, tags=[{"Key": TAG_KEY, "Value": self.deployment.names.prefix}],
            imageScanningConfiguration={"scanOnPush": True})

    def update(self, current: dict, changed: list[str]) -> None:
        self.aws.client("ecr").tag_resource(
            resourceArn=current["arn"], tags=[{"Key": TAG_KEY, "Value": self.deployment.names.prefix}])

    def kept_on_teardown(self, current: dict) -> str | None:
        # Images are what the user built and pushed: deleting them takes an explicit flag.
        if current["images"] and not self.deployment.options.remove_images:
            return (f"holds {current['images']} image(s); teardown_aws.py --remove-images "
                    "deletes it with them")
        return None

    def remove(self, current: dict) -> None:
        self.aws.client("ecr").delete_repository(repositoryName=self.name,
                                                 force=bool(current["images"]))
