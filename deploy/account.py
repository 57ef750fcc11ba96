"""What setup reads from the account before it changes anything: how many builds of the jobs'
compute type may run at once (the concurrent-build quota), and where the reporting database's
free storage can be read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from deploy.aws import Aws, describe_error
from deploy.settings import SettingsError, is_rds_host
from runlog import STORAGE_AURORA, STORAGE_RDS, STORAGE_UNKNOWN

if TYPE_CHECKING:
    from deploy.deployment import Deployment

# CodeBuild queues builds beyond the concurrent-build quota of their compute type and does not
# say in which order queued builds start ("It is not possible to predict the order in which
# queued builds start", CodeBuild User Guide, "Builds in AWS CodeBuild"). The quotas are
# per compute type, in Service Quotas under the service code "codebuild", named as on the
# quotas page ("Quotas for AWS CodeBuild"); they are found by name, so no quota code is
# guessed here.
SERVICE_CODE = "codebuild"
QUOTA_NAMES = {
    "BUILD_GENERAL1_SMALL": "Concurrently running builds for Linux/Small environment",
    "BUILD_GENERAL1_MEDIUM": "Concurrently running builds for Linux/Medium environment",
    "BUILD_GENERAL1_LARGE": "Concurrently running builds for Linux/Large environment",
    "BUILD_GENERAL1_XLARGE": "Concurrently running builds for Linux/XLarge environment",
    "BUILD_GENERAL1_2XLARGE": "Concurrently running builds for Linux/2XLarge environment",
}



@dataclass
class BuildQuota:
    """The concurrent-build quota of one compute type; value None when it could not be read
    (`problem` says why)."""

    compute_type: str
    value: int | None
    problem: str = ""

    @property
    def name(self) -> str:
        return QUOTA_NAMES.get(self.compute_type, f"the quota of {self.compute_type}")

    @property
    def where(self) -> str:
        return f"Service Quotas: {SERVICE_CODE}, {self.name}"

    def text(self) -> str:
        """COPIER_BUILD_QUOTA: the copier names it in a late job's failure line."""
        if self.value is None:
            return (f"the concurrent-build quota for {self.compute_type} ({self.where}; setup "
                    "could not read it)")
        return (f"{self.value} concurrent build{'' if self.value == 1 else 's'} for "
                f"{self.compute_type} ({self.where})")


def build_quota(aws: Aws, compute_type: str) -> BuildQuota:
    """The quota applied to the account, else its default: ListServiceQuotas lists only the
    quotas whose applied value is known ("If the applied quota value is not available for a
    quota, the quota is not retrieved", Service Quotas API Reference)."""
    name = QUOTA_NAMES.get(compute_type)
    if name is None:
        return BuildQuota(compute_type, None, f"no quota name known for {compute_type}")
    client = aws.client("service-quotas")
    try:
        for listing in ("list_service_quotas", "list_aws_default_service_quotas"):
            for page in client.get_paginator(listing).paginate(ServiceCode=SERVICE_CODE):
                for quota in page["Quotas"]:
                    if quota.get("QuotaName") == name and quota.get("Value") is not None:
                        return BuildQuota(compute_type, int(quota["Value"]))
    except (ClientError, BotoCoreError) as err:
        return BuildQuota(compute_type, None, describe_error(err))
    return BuildQuota(compute_type, None, f"Service Quotas lists no quota named {name!r}")


def check_build_quota(jobs: int, one_snapshot: bool, quota: BuildQuota,
                      warn: Callable[[str], None]) -> None:
    """Refuse what cannot work before anything is created: no build at all, or one snapshot
    held across more jobs than may run at once (a job queued past the holder's wait fails all
    its tables; a joiner that runs first holds the only slot while it waits). Warn when the
    quota is unknown and it matters."""
    if quota.value == 0:
        raise SettingsError(f"compute_type {quota.compute_type}: the account may run no build of "
                            f"it ({quota.where} is 0): ask AWS for a quota increase")
    if not one_snapshot or jobs < 2:
        return
    if quota.value is None:
        warn(f"could not read how many builds of {quota.compute_type} may run at once "
             f"({quota.problem}): one_snapshot needs all {jobs} jobs running together; if the "
             f"quota ({quota.where}) is lower, the jobs that start late fail their tables")
    elif jobs > quota.value:
        raise SettingsError(
            f"one_snapshot with {jobs} jobs needs {jobs} builds of {quota.compute_type} running "
            f"at once, and the account allows {quota.value} ({quota.where}): set jobs = "
            f"{quota.value}, ask AWS for a quota increase, or set one_snapshot = false")


def target_storage(aws: Aws, host: str | None, warn: Callable[[str], None]) -> str:
    """Where the copier reads the reporting database's free storage, found from its host: the
    RDS instance whose endpoint it is (rds:<id>), an Aurora instance or cluster endpoint
    (aurora), else unknown (and a warning: the night's room will not be checked)."""
    host = (host or "").lower().rstrip(".")
    unchecked = "the copier will not check the room a night needs before it stages anything"
    if not host:  # refused with the other connection settings, before anything is created
        return STORAGE_UNKNOWN
    if not is_rds_host(host):
        warn(f"the reporting database {host} is not an RDS endpoint: {unchecked}")
        return STORAGE_UNKNOWN
    rds = aws.client("rds")
    try:
        for page in rds.get_paginator("describe_db_instances").paginate():
            for instance in page["DBInstances"]:
                if (instance.get("Endpoint") or {}).get("Address", "").lower() == host:
                    if instance.get("Engine", "").startswith("aurora"):
                        return STORAGE_AURORA
                    return STORAGE_RDS + instance["DBInstanceIdentifier"]
        for page in rds.get_paginator("describe_db_clusters").paginate():
            for cluster in page["DBClusters"]:
                endpoints = {str(cluster.get(k, "")).lower() for k in ("Endpoint", "ReaderEndpoint")}
                if host in endpoints and cluster.get("Engine", "").startswith("aurora"):
                    return STORAGE_AURORA
    except (ClientError, BotoCoreError) as err:
        warn(f"could not look up the reporting database {host} in RDS "
             f"({describe_error(err)}): {unchecked}")
        return STORAGE_UNKNOWN
    warn(f"the reporting database {host} is not an RDS instance or Aurora endpoint of this "
         f"account and region: {unchecked}")
    return STORAGE_UNKNOWN


def check_transform(aws: Aws, arn: str) -> None:
    """The Transform step's state machine exists, in this account and region: the nightly
    state machine starts it without a role of another account (its Credentials)."""
    parts = arn.split(":")
    if (parts[3], parts[4]) != (aws.region, aws.account):
        raise SettingsError(f"transform_state_machine {arn}: not in this account and region "
                            f"({aws.account}, {aws.region})")
    try:
        aws.client("stepfunctions").describe_state_machine(stateMachineArn=arn)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") == "StateMachineDoesNotExist":
            raise SettingsError(f"transform_state_machine {arn} does not exist") from None
        raise


def survey(deployment: Deployment, warn: Callable[[str], None]) -> None:
    """Read what setup needs from the account into the deployment, refusing what cannot work:
    before the first resource is created or changed, in a dry run too."""
    settings = deployment.settings
    if settings.transform_state_machine:
        check_transform(deployment.aws, settings.transform_state_machine)
    if settings.runner == "codebuild":
        deployment.build_quota = build_quota(deployment.aws, settings.compute_type)
        check_build_quota(len(deployment.jobs or []), settings.one_snapshot,
                          deployment.build_quota, warn)
    deployment.target_storage = target_storage(deployment.aws, settings.target.get("host"), warn)
