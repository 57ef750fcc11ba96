"""Settings: deploy.toml and the flags that override it, checked before anything runs."""

from __future__ import annotations

import argparse
import dataclasses
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import runlog
from deploy import schedule

DEFAULT_CONFIG = Path("deploy.toml")
RUNNERS = ("codebuild", "batch")
BATCH_COMPUTE_TYPES = ("FARGATE", "EC2")
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096,
                      1827, 2192, 2557, 2922, 3288, 3653)
WEBHOOK_ENV_VAR = "SLACK_WEBHOOK_URL"
# CodeBuild compute types for LINUX_CONTAINER (the project's environment type)
COMPUTE_TYPES = ("BUILD_GENERAL1_SMALL", "BUILD_GENERAL1_MEDIUM", "BUILD_GENERAL1_LARGE",
                 "BUILD_GENERAL1_XLARGE", "BUILD_GENERAL1_2XLARGE")
# Curated x86 images whose runtime-versions offer buildspec.yml's Python 3.11
CURATED_IMAGES = ("aws/codebuild/standard:7.0", "aws/codebuild/standard:8.0",
                  "aws/codebuild/amazonlinux-x86_64-standard:5.0")
ECR_IMAGE = re.compile(r"\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com/[a-z0-9._/-]+"
                       r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[0-9a-f]{64})?")
OLDEST_LAMBDA_PYTHON = (3, 11)  # notify_lambda.py uses datetime.UTC
PLAIN_IDENTIFIER = re.compile(r"[^\W\d][\w$]*")
# A state machine's ARN; its name: 1-80 characters, none of them whitespace nor any of
# < > { } [ ] ? * " # % \ ^ | ~ ` $ & , ; : / (CreateStateMachine, "name")
TRANSFORM_ARN = re.compile(r"arn:(?P<partition>[a-z-]+):states:(?P<region>[a-z0-9-]+):"
                           r"(?P<account>\d{12}):stateMachine:"
                           r"(?P<name>[^\s<>{}\[\]?*\"#%\\^|~`$&,;:/]{1,80})")
ALARM_WINDOW_LIMIT_SECONDS = 7 * 24 * 3600  # CloudWatch: Period x EvaluationPeriods
# TLS against RDS and Aurora: buildspec.yml fetches AWS's CA bundle into the checkout at build
# time, the Dockerfile into /app; the copier runs in that directory, so libpq finds it by this
# relative path (docs/aws.md, "TLS").
RDS_CA_BUNDLE_URL = "https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem"
RDS_CA_BUNDLE = "rds-global-bundle.pem"
RDS_HOST_SUFFIXES = (".rds.amazonaws.com", ".rds.amazonaws.com.cn")
SWAP_MODES = ("table", "together")  # the copier's --swap
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


class SettingsError(Exception):
    """A setting is missing or invalid: fix the config file or the flag named in the message."""



@dataclass
class Settings:
    """Everything setup needs besides secrets. Config file keys and flags use these names."""

    # The settings' parameters live under /<prefix>/: by default where the copier looks first.
    prefix: str = field(default=runlog.DEFAULT_SSM_PREFIX.strip("/"),
                        metadata={"help": "name prefix and tag value"})
    region: str = field(default="", metadata={"help": "AWS region (default: AWS_REGION etc.)"})
    tables: list[str] = field(default_factory=list, metadata={"help": "tables to copy"})
    jobs: int = field(default=5, metadata={"help": "parallel CodeBuild jobs"})
    table_weights: dict[str, float] = field(default_factory=dict, metadata={"file_only": True})
    one_snapshot: bool = field(default=True, metadata={
        "help": "the copy jobs read one snapshot of the source, exported by job-1 and held "
        "until every job imported it (needed to split tables into slices)"})
    split: bool = field(default=True, metadata={
        "help": "split a large table into slices that several jobs load (needs one_snapshot)"})
    split_larger_than_mb: int = field(default=0, metadata={
        "help": "split tables larger than this many MB (default 0: those heavier than an "
        "average job)"})
    swap: str = field(default="table", metadata={
        "help": "'table': each table goes live when published; 'together': all in one "
        "transaction at the end of the publish, or none"})
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
    rate_start_time: str = field(default="03:00", metadata={
        "help": "with a rate(...) schedule: the local time (HH:MM, in timezone) of its first "
        "run; the rate counts from there"})
    log_retention_days: int = field(default=30, metadata={"help": "days logs are kept"})
    transform_state_machine: str = field(default="", metadata={
        "help": "ARN of a state machine run after a successful publish (the Transform step)"})
    transform_timeout_minutes: int = field(default=60, metadata={
        "help": "minutes the Transform step may take"})
    rules_file: str = field(default="", metadata={
        "help": "a TOML file of column and row rules (in deploy.toml, relative to its folder), "
        "written to Parameter Store"})
    alarm_emails: list[str] = field(default_factory=list, metadata={
        "help": "e-mail addresses the alarms also go to (a second channel besides Slack)"})
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
        for database in runlog.DATABASES:
            unknown = set(getattr(self, database)) - set(runlog.CONNECTION_SETTINGS)
            if unknown:
                raise SettingsError(f"[{database}] has unknown keys {sorted(unknown)}")
            if set(getattr(self, database)) & runlog.SECRET_SETTINGS:
                raise SettingsError(f"[{database}] must not hold secrets; set "
                                    f"{secret_env_var(database, 'password')} instead")
            effective = connection_defaults(getattr(self, database)) | getattr(self, database)
            if effective["sslmode"] not in SSL_MODES:
                raise SettingsError(f"[{database}] sslmode {effective['sslmode']!r} is not one of "
                                    f"{', '.join(SSL_MODES)}")
            if effective["sslmode"].startswith("verify-") and (
                    effective["sslrootcert"] == runlog.CONNECTION_SETTINGS["sslrootcert"]):
                raise SettingsError(f"[{database}] sslmode {effective['sslmode']} needs sslrootcert: "
                                    "the CA file the build checks the server's certificate against")

    def validate_for_start(self) -> None:
        """--start names the run after today's date in the schedule's time zone."""
        self.validate()
        try:
            schedule.time_zone(self.timezone)
        except schedule.ScheduleError as err:
            raise SettingsError(str(err)) from None

    def validate_for_setup(self) -> None:
        """Everything AWS or the nightly run would refuse later, refused now: nothing is
        created with a setting that cannot work."""
        self.validate()
        validate_prefix_for_names(self.prefix)
        if not self.tables:
            raise SettingsError("tables: give at least one table (config file or --tables)")
        self.validate_placeholders()
        for table in self.tables:
            validate_table_name(table)
        if len(set(self.tables)) != len(self.tables):
            raise SettingsError("tables: a table is listed twice")
        if self.jobs < 1:
            raise SettingsError("jobs must be at least 1")
        if self.swap not in SWAP_MODES:
            raise SettingsError(f"swap {self.swap!r}: use one of {', '.join(SWAP_MODES)}")
        if self.split_larger_than_mb < 0:
            raise SettingsError("split_larger_than_mb must not be negative")
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
        self.missed_run_window_seconds()  # checks schedule and timezone
        if self.is_rate_schedule:
            try:
                schedule.parse_start_time(self.rate_start_time)
            except schedule.ScheduleError as err:
                raise SettingsError(str(err)) from None
        if self.runner == "codebuild" and self.compute_type not in COMPUTE_TYPES:
            raise SettingsError(f"compute_type {self.compute_type!r}: use one of "
                                f"{', '.join(COMPUTE_TYPES)}")
        if self.ecr_image and not ECR_IMAGE.fullmatch(self.ecr_image):
            raise SettingsError(f"ecr_image {self.ecr_image!r}: use an ECR image URI, "
                                "<account>.dkr.ecr.<region>.amazonaws.com/<repository>:<tag>")
        if self.runner == "codebuild" and not self.runs_an_image and (
                self.image not in CURATED_IMAGES):
            raise SettingsError(f"image {self.image!r}: buildspec.yml asks for Python 3.11 "
                                f"through runtime-versions, which needs one of "
                                f"{', '.join(CURATED_IMAGES)} (or custom_image / ecr_image)")
        for address in self.alarm_emails:
            if not re.fullmatch(r"[^@\s,]+@[^@\s,]+\.[^@\s,]+", address):
                raise SettingsError(f"alarm_emails: {address!r} is not an e-mail address")
        self.validate_transform()
        runtimes = lambda_python_runtimes()
        if self.lambda_runtime not in runtimes:
            raise SettingsError(f"lambda_runtime {self.lambda_runtime!r}: use one of "
                                f"{', '.join(runtimes)}")

    def validate_transform(self) -> None:
        if not self.transform_state_machine:
            return
        arn = TRANSFORM_ARN.fullmatch(self.transform_state_machine)
        if not arn:
            raise SettingsError(f"transform_state_machine {self.transform_state_machine!r}: use a "
                                "state machine's ARN, arn:aws:states:<region>:<account>:"
                                "stateMachine:<name>")
        if arn["partition"] != "aws":
            raise SettingsError(f"transform_state_machine is in the {arn['partition']} partition: "
                                "this deployment supports the aws partition only")
        if arn["name"] in (self.prefix, f"{self.prefix}-starter"):
            raise SettingsError(f"transform_state_machine {arn['name']!r} is this deployment's own "
                                "state machine: it would start itself")
        if not 1 <= self.transform_timeout_minutes <= 1440:
            raise SettingsError("transform_timeout_minutes must be between 1 and 1440")

    def validate_placeholders(self) -> None:
        """state_machine.json is filled by replacing ${Name}: a setting that holds one would
        be rewritten on the way (a table named ${ProjectName} would copy another table)."""
        for name in SETTING_FIELDS:
            value = getattr(self, name)
            items = (value if isinstance(value, list) else list(value.items())
                     if isinstance(value, dict) else [value])
            for item in items:
                if "${" in str(item):
                    raise SettingsError(f"{name}: {item!r} contains '${{', which the state "
                                        "machine template reserves for its placeholders")

    @property
    def job_timeout_seconds(self) -> int:
        """How long the state machine waits for one job: build, queue and a margin."""
        return (self.build_timeout_minutes + self.queued_timeout_minutes + 10) * 60

    @property
    def transform_timeout_seconds(self) -> int:
        return self.transform_timeout_minutes * 60 if self.transform_state_machine else 0

    @property
    def execution_timeout_seconds(self) -> int:
        """The load phase and the publish one after it, each a job, the Transform step if
        there is one, and an hour's margin."""
        return 2 * self.job_timeout_seconds + self.transform_timeout_seconds + 3600

    @property
    def is_rate_schedule(self) -> bool:
        return self.schedule.strip().startswith("rate(")

    @property
    def splits_tables(self) -> bool:
        """Slices of one table are loaded by several jobs: only inside one snapshot."""
        return self.split and self.one_snapshot

    def missed_run_window_seconds(self) -> int:
        """The missed-night alarm's window: the longest gap between two scheduled runs, plus
        the longest a run may take (a success can end that much later), in whole hours."""
        try:
            gap = schedule.check(self.schedule, self.timezone).total_seconds()
        except schedule.ScheduleError as err:
            raise SettingsError(str(err)) from None
        window = -(-int(gap + self.execution_timeout_seconds) // 3600) * 3600
        if window > ALARM_WINDOW_LIMIT_SECONDS:
            raise SettingsError(
                f"schedule {self.schedule!r}: up to {gap / 86400:g} days between runs; the "
                "missed-night alarm can watch at most 7 days (runs and their timeouts included)")
        return window

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


def validate_prefix_for_names(prefix: str) -> None:
    """The names setup derives from the prefix, as AWS checks them: refused here, before
    anything is created, rather than by the one resource that cannot take it halfway through
    (teardown keeps the looser rule of validate(): it removes what an older setup left)."""
    problem = None
    if len(prefix) < 2:
        # CodeBuild project names: 2-150 characters (CodeBuild quotas, "Build projects");
        # ECR repository names: at least 2 (CreateRepository)
        problem = "is shorter than 2 characters, the least CodeBuild and ECR take for a name"
    elif prefix.endswith("-") or "--" in prefix:
        # ECR repository names: (?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*
        problem = ("ends in '-' or has '--', which ECR's repository names refuse (a '-' goes "
                   "between letters or digits)")
    elif prefix.lower().startswith(("aws", "ssm")):
        # SSM PutParameter: a parameter name can't be prefixed with "aws" or "ssm"
        # (case-insensitive); the copier's parameters are /<prefix>/...
        problem = "starts with 'aws' or 'ssm', which Parameter Store refuses in parameter names"
    elif prefix == "default":
        # EventBridge Scheduler: every account has a schedule group named "default", which
        # can be neither created nor deleted; the schedule group is named after the prefix
        problem = "is the name of EventBridge Scheduler's own schedule group in every account"
    if problem:
        raise SettingsError(f"prefix {prefix!r} {problem}: pick another prefix")


def is_rds_host(host: Any) -> bool:
    return isinstance(host, str) and host.lower().rstrip(".").endswith(RDS_HOST_SUFFIXES)


def connection_defaults(configured: dict[str, str]) -> dict[str, str | None]:
    """The copier's defaults for one database's settings, except that an RDS or Aurora host is
    verified: sslmode verify-full against the AWS RDS CA bundle the build fetches."""
    defaults = dict(runlog.CONNECTION_SETTINGS)
    if is_rds_host(configured.get("host")):
        defaults |= {"sslmode": "verify-full", "sslrootcert": RDS_CA_BUNDLE}
    return defaults


def validate_table_name(table: str) -> None:
    """One table per item, as the copier parses it, each unquoted part a plain SQL identifier:
    anything else is a name the copier would look for and not find, every night."""
    try:
        names = runlog.split_table_list(table)
    except runlog.TableListError as err:
        raise SettingsError(f"tables: {err}") from None
    if len(names) != 1:
        raise SettingsError(f"tables: {table!r} holds {len(names)} names; give one table per "
                            "list item (double-quote a name that contains a comma)")
    for part, quoted in names[0]:
        if not quoted and not PLAIN_IDENTIFIER.fullmatch(part):
            raise SettingsError(f"tables: {table!r}: {part!r} is not a plain SQL name; "
                                "double-quote a name that really contains such characters")


def lambda_python_runtimes() -> list[str]:
    """The Python runtimes Lambda's API knows (botocore's model) that run notify_lambda.py."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("lambda")
    found = []
    for runtime in model.shape_for("Runtime").enum:
        version = re.fullmatch(r"python(\d+)\.(\d+)", runtime)
        if version and tuple(map(int, version.groups())) >= OLDEST_LAMBDA_PYTHON:
            found.append(runtime)
    return found


def secret_env_var(database: str, setting: str) -> str:
    return f"COPIER_{database.upper()}_{setting.upper()}"


def _flag_setting_name(database: str, setting: str) -> str:
    return f"{database}_{setting}"


def add_settings_arguments(parser: argparse.ArgumentParser, names: Iterable[str]) -> None:
    """Add --config and one flag per setting; a flag overrides the config file."""
    parser.add_argument("--config", type=Path, default=None,
                        help=f"TOML settings file (default: {DEFAULT_CONFIG} if it exists)")
    for name in names:
        if name in runlog.DATABASES:
            for setting in runlog.CONNECTION_SETTINGS:
                if setting not in runlog.SECRET_SETTINGS:
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
    if path is not None and isinstance(values.get("rules_file"), str) and values["rules_file"]:
        # a path in the file is the file's: setup finds it from wherever it is run
        values["rules_file"] = str(Path(path).parent / values["rules_file"])
    settings = Settings(**values)
    for name in SETTING_FIELDS:
        if name in runlog.DATABASES:
            for setting in runlog.CONNECTION_SETTINGS:
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
    for database in runlog.DATABASES:  # port = 5432 in TOML is a number; SSM holds text
        setattr(settings, database, {k: str(v) for k, v in getattr(settings, database).items()})
    for name, f in SETTING_FIELDS.items():
        value = getattr(settings, name)
        if f.type == "int" and (not isinstance(value, int) or isinstance(value, bool)):
            raise SettingsError(f"{name} must be a whole number, not {value!r}")
        if f.type == "bool" and not isinstance(value, bool):
            raise SettingsError(f"{name} must be true or false, not {value!r}")
    return settings
