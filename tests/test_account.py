"""What setup reads from the account before it changes anything: the concurrent-build quota of
the jobs' compute type (one snapshot needs every load job running at once), and where the
reporting database's free storage can be read (the copier checks the room a night needs)."""

from __future__ import annotations

import json
import re

import boto3
import botocore.client
import moto_gaps
import pytest
from aws_helpers import ROOM_NOT_CHECKED, inventory, outcomes, write_config
from botocore.exceptions import ClientError

import deploy
import notify_lambda
import runlog
import setup_aws

SMALL = "Concurrently running builds for Linux/Small environment"
MEDIUM = "Concurrently running builds for Linux/Medium environment"


@pytest.fixture
def config(aws, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return write_config(tmp_path / "deploy.toml")  # 3 jobs, one snapshot, BUILD_GENERAL1_SMALL


def setup(capsys, config, *flags: str) -> tuple[int, str, str]:
    code = setup_aws.main(["--config", str(config), *flags])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def project_environment() -> dict[str, str]:
    (project,) = boto3.client("codebuild").batch_get_projects(names=["nightly-copy"])["projects"]
    return {v["name"]: v["value"] for v in project["environment"]["environmentVariables"]}


def created() -> int:
    return sum(len(names) for names in inventory("nightly-copy").values())


# --- the concurrent-build quota


@pytest.mark.parametrize("dry_run", [False, True], ids=["setup", "dry-run"])
def test_one_snapshot_over_more_jobs_than_may_run_at_once_is_refused_first(config, capsys,
                                                                         dry_run):
    """A new account's quota of 1: the jobs would queue, job-1 would give up holding the
    snapshot before the others start (or a joiner would hold the only slot), and every night
    some jobs would fail all their tables."""
    moto_gaps.applied_codebuild_quotas()[SMALL] = 1
    code, _, err = setup(capsys, config, *(["--dry-run"] if dry_run else []))
    assert code == 1
    assert err == (
        "error: one_snapshot with 3 jobs needs 3 builds of BUILD_GENERAL1_SMALL running at "
        "once, and the account allows 1 (Service Quotas: codebuild, Concurrently running builds "
        "for Linux/Small environment): set jobs = 1, ask AWS for a quota increase, or set "
        "one_snapshot = false\n")
    assert created() == 0


@pytest.mark.parametrize("flags, quota, expected", [
    # the account's applied value wins over the default (moto_gaps: 20)
    ([], 3, "3 concurrent builds for BUILD_GENERAL1_SMALL"),
    # without one snapshot the jobs may queue: each reads its own snapshot when it starts
    (["--no-one-snapshot"], 1, "1 concurrent build for BUILD_GENERAL1_SMALL"),
    # one job holds no snapshot for anyone
    (["--jobs", "1"], 1, "1 concurrent build for BUILD_GENERAL1_SMALL"),
])
def test_what_the_quota_allows_is_set_up_and_the_jobs_are_told_the_quota(config, capsys,
                                                                         flags, quota, expected):
    moto_gaps.applied_codebuild_quotas()[SMALL] = quota
    code, _, err = setup(capsys, config, *flags)
    assert (code, err) == (0, ROOM_NOT_CHECKED)
    assert project_environment()["COPIER_BUILD_QUOTA"] == (
        f"{expected} (Service Quotas: codebuild, {SMALL})")


def test_the_quota_of_the_compute_type_in_use_counts(config, capsys):
    moto_gaps.applied_codebuild_quotas()[SMALL] = 1  # not the medium builds'
    moto_gaps.applied_codebuild_quotas()[MEDIUM] = 4
    code, _, _ = setup(capsys, config, "--compute-type", "BUILD_GENERAL1_MEDIUM")
    assert code == 0
    assert project_environment()["COPIER_BUILD_QUOTA"] == (
        f"4 concurrent builds for BUILD_GENERAL1_MEDIUM (Service Quotas: codebuild, {MEDIUM})")


def test_a_quota_of_no_build_at_all_is_refused_whatever_the_snapshot(config, capsys):
    moto_gaps.applied_codebuild_quotas()[SMALL] = 0
    code, _, err = setup(capsys, config, "--no-one-snapshot")
    assert code == 1 and err == (
        "error: compute_type BUILD_GENERAL1_SMALL: the account may run no build of it "
        f"(Service Quotas: codebuild, {SMALL} is 0): ask AWS for a quota increase\n")
    assert created() == 0


def test_a_quota_that_cannot_be_read_is_a_warning_and_setup_goes_on(config, capsys,
                                                                    monkeypatch):
    real = botocore.client.BaseClient._make_api_call

    def denied(self, operation, params):
        if operation == "ListServiceQuotas":
            raise ClientError({"Error": {"Code": "AccessDeniedException", "Message":
                               "User: arn:aws:sts::123456789012:assumed-role/installer/me is "
                               "not authorized to perform: servicequotas:ListServiceQuotas"}},
                              operation)
        return real(self, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", denied)
    code, out, err = setup(capsys, config)
    assert code == 0 and "created  CodeBuild project nightly-copy" in out
    quota_warning, storage_warning = err.splitlines(keepends=True)
    assert storage_warning == ROOM_NOT_CHECKED
    assert quota_warning.startswith("warning: could not read how many builds of "
                                    "BUILD_GENERAL1_SMALL may run at once (ListServiceQuotas: "
                                    "AccessDeniedException: ")
    assert "lack servicequotas:ListServiceQuotas" in quota_warning
    assert quota_warning.endswith(
        f"one_snapshot needs all 3 jobs running together; if the quota (Service Quotas: "
        f"codebuild, {SMALL}) is lower, the jobs that start late fail their tables\n")
    assert project_environment()["COPIER_BUILD_QUOTA"] == (
        f"the concurrent-build quota for BUILD_GENERAL1_SMALL (Service Quotas: codebuild, "
        f"{SMALL}; setup could not read it)")


def test_a_late_job_s_failure_line_naming_the_quota_reaches_slack_whole():
    """The copier (COPIER_BUILD_QUOTA) names the quota in the failure line of a job that
    started too late to join the run's snapshot; the summary shows that line, not cut."""
    quota = deploy.account.BuildQuota("BUILD_GENERAL1_SMALL", 1).text()
    error = (f"job-3 started after job-1 gave up holding the run's snapshot (it waited 1800 s): "
             f"the account runs {quota}, and CodeBuild queued this job behind the others; "
             "nothing of this job was loaded: lower jobs, raise the quota or set "
             "one_snapshot = false")
    lines = [{"event": "table_failed", "run": "2026-11-27", "job": "job-3",
              "table": f"public.t{n}", "phase": "load", "seconds": 0, "error": error}
             for n in range(3)]
    report = notify_lambda.TableReport(runlog.table_outcomes(lines), expected=3)
    event = {"execution": {"name": "2026-11-27"},
             "jobs": [{"job": "job-3", "tables": ["public.t0", "public.t1", "public.t2"],
                       "status": "FAILED", "error": "States.TaskFailed",
                       "build_status": "FAILED"}]}
    payload, failed = notify_lambda.summary_message(event, report)
    shown = json.dumps(payload["blocks"])
    assert failed == 1 and shown.count(json.dumps(error)[1:-1]) == 3


# --- the reporting database's storage


def rds_instance(identifier: str, engine: str = "postgres", cluster: str | None = None) -> str:
    rds = boto3.client("rds")
    extra = {"DBClusterIdentifier": cluster} if cluster else {"AllocatedStorage": 100}
    instance = rds.create_db_instance(DBInstanceIdentifier=identifier, Engine=engine,
                                      DBInstanceClass="db.t3.medium", **extra)["DBInstance"]
    found = rds.describe_db_instances(DBInstanceIdentifier=identifier)["DBInstances"][0]
    return (found.get("Endpoint") or instance.get("Endpoint"))["Address"]


def with_target_host(config, host: str):
    source, target = config.read_text().split("[target]")
    target = re.sub(r'host = "[^"]*"', f'host = "{host}"', target)
    config.write_text(f"{source}[target]{target}")
    return config


def storage() -> str:
    return boto3.client("ssm").get_parameter(Name="/nightly-copy/target/storage")["Parameter"][
        "Value"]


def codebuild_actions() -> dict[str, list[str]]:
    document = boto3.client("iam").get_role_policy(RoleName="nightly-copy-codebuild",
                                                   PolicyName="permissions")["PolicyDocument"]
    return {action: statement["Resource"] for statement in document["Statement"]
            for action in statement["Action"]}


def test_an_rds_target_is_watched_by_its_instance_s_metric(config, capsys):
    host = rds_instance("reporting-db")
    code, _, err = setup(capsys, with_target_host(config, host))
    assert (code, err) == (0, "")
    assert storage() == "rds:reporting-db"
    # the action has no resource type: "*" is the only resource it takes
    assert codebuild_actions()["cloudwatch:GetMetricStatistics"] == ["*"]
    code, out, _ = setup(capsys, config)
    assert code == 0 and set(outcomes(out).values()) == {"unchanged"}


@pytest.mark.parametrize("endpoint", ["cluster", "instance"])
def test_an_aurora_target_needs_no_check_and_no_grant(config, capsys, endpoint):
    rds = boto3.client("rds")
    cluster = rds.create_db_cluster(DBClusterIdentifier="reporting", Engine="aurora-postgresql",
                                    MasterUsername="admin", MasterUserPassword="secret-pw-1")
    host = (cluster["DBCluster"]["Endpoint"] if endpoint == "cluster" else
            rds_instance("reporting-1", "aurora-postgresql", "reporting"))
    code, _, err = setup(capsys, with_target_host(config, host))
    assert (code, err) == (0, "")
    assert storage() == "aurora"
    assert "cloudwatch:GetMetricStatistics" not in codebuild_actions()


def test_an_rds_name_not_in_this_account_is_unknown_and_said_on_stderr(config, capsys):
    rds_instance("another-db")
    host = "reporting.abcdefghijkl.us-east-1.rds.amazonaws.com"
    code, _, err = setup(capsys, with_target_host(config, host))
    assert code == 0 and err == (
        f"warning: the reporting database {host} is not an RDS instance or Aurora endpoint of "
        "this account and region: the copier will not check the room a night needs before it "
        "stages anything\n")
    assert storage() == "unknown"
    assert "cloudwatch:GetMetricStatistics" not in codebuild_actions()


def test_a_target_moved_off_rds_loses_the_grant(config, capsys):
    setup(capsys, with_target_host(config, rds_instance("reporting-db")))
    code, out, err = setup(capsys, with_target_host(config, "reporting.example.internal"))
    assert (code, err) == (0, ROOM_NOT_CHECKED)
    changed = {label for label, status in outcomes(out).items() if status != "unchanged"}
    assert changed == {"SSM parameter /nightly-copy/target/host",
                       "SSM parameter /nightly-copy/target/storage",
                       "IAM role nightly-copy-codebuild"}
    assert storage() == "unknown"
    assert "cloudwatch:GetMetricStatistics" not in codebuild_actions()


def test_the_batch_job_role_may_read_the_metric_too(aws):
    settings = deploy.Settings(runner="batch", tables=["public.a"])
    deployment = deploy.Deployment(settings, deploy.Aws("us-east-1"), deploy.Options())
    for storage_kind, granted in (("rds:reporting-db", True), ("aurora", False),
                                  ("unknown", False)):
        deployment.target_storage = storage_kind
        actions = {a for s in deploy.batch.job_permissions(deployment)["Statement"]
                   for a in s["Action"]}
        assert ("cloudwatch:GetMetricStatistics" in actions) is granted
