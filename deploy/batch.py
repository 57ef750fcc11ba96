"""The AWS Batch runner, as one unit: its resources, its roles' permissions.

Removing runner = "batch" means removing this module and the lines naming it in
deploy/__init__.py (the resource list), deploy/deployment.py and deploy/permissions.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from deploy import aws, permissions
from deploy.aws import AwsError, error_code
from deploy.names import TAG_KEY
from deploy.permissions import allow, policy
from deploy.resources import Resource, only_our_tag, tag_dict

if TYPE_CHECKING:
    from deploy.deployment import Deployment


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
        return {"roles": [self.deployment.names.role("batch-instance")], "tags": self.our_tags()}

    def create(self) -> None:
        iam = self.aws.client("iam")
        iam.create_instance_profile(InstanceProfileName=self.name,
                                    Tags=[{"Key": TAG_KEY, "Value": self.deployment.names.prefix}])
        iam.add_role_to_instance_profile(InstanceProfileName=self.name,
                                         RoleName=self.deployment.names.role("batch-instance"))

    def update(self, current: dict, changed: list[str]) -> None:
        iam = self.aws.client("iam")
        if "roles" in changed:
            for role in current["roles"]:
                iam.remove_role_from_instance_profile(InstanceProfileName=self.name,
                                                      RoleName=role)
            iam.add_role_to_instance_profile(InstanceProfileName=self.name,
                                             RoleName=self.deployment.names.role("batch-instance"))
        if "tags" in changed:
            iam.tag_instance_profile(InstanceProfileName=self.name,
                                     Tags=[{"Key": TAG_KEY, "Value": self.deployment.names.prefix}])

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
        aws.sleep(min(10.0, 1.0 * attempt))
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
        settings = self.deployment.settings
        jobs = len(self.deployment.jobs or [1])
        resources = {"type": settings.batch_compute, "maxvCpus": settings.batch_vcpus * jobs,
                     "subnets": settings.subnets, "securityGroupIds": settings.security_groups}
        if settings.batch_compute == "EC2":
            # Scales to zero between nights: no instance runs when no job does.
            resources |= {"minvCpus": 0, "desiredvCpus": 0, "instanceTypes": ["optimal"],
                          "allocationStrategy": "BEST_FIT_PROGRESSIVE",
                          "instanceRole": self.deployment.instance_profile_arn()}
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
                "service_role": self.deployment.batch_service_role_arn(), "tags": self.our_tags()}

    def create(self) -> None:
        self.aws.client("batch").create_compute_environment(
            computeEnvironmentName=self.name, type="MANAGED", state="ENABLED",
            computeResources=self.compute_resources(),
            serviceRole=self.deployment.batch_service_role_arn(), tags=self.our_tags())
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
                                             serviceRole=self.deployment.batch_service_role_arn())
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
        return [{"order": 1, "computeEnvironment": self.deployment.compute_environment_arn()}]

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
        settings, names = self.deployment.settings, self.deployment.names
        container = {
            "image": self.deployment.image_uri(),
            "resourceRequirements": [{"type": "VCPU", "value": str(settings.batch_vcpus)},
                                     {"type": "MEMORY", "value": str(settings.batch_memory_mib)}],
            "executionRoleArn": self.deployment.role_arn("batch-execution"),
            "jobRoleArn": self.deployment.role_arn("batch-job"),
            "environment": [{"name": "COPIER_SSM_PREFIX", "value": names.ssm_prefix}],
            "logConfiguration": {"logDriver": "awslogs", "options": {
                "awslogs-group": names.batch_log_group, "awslogs-region": self.aws.region,
                "awslogs-stream-prefix": names.prefix}},
        }
        if settings.batch_compute == "FARGATE":
            container["networkConfiguration"] = {
                "assignPublicIp": "ENABLED" if settings.assign_public_ip else "DISABLED"}
            container["fargatePlatformConfiguration"] = {"platformVersion": "LATEST"}
        return {
            "jobDefinitionName": self.name, "type": "container",
            "platformCapabilities": [settings.batch_compute],
            "containerProperties": container,
            # a failed copy is not re-run blindly, as with CodeBuild
            "retryStrategy": {"attempts": 1},
            "timeout": {"attemptDurationSeconds": settings.build_timeout_minutes * 60},
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


# --------------------------------------------------------------------------- permissions


def execution_permissions(deployment: Deployment) -> dict:
    """What ECS needs to start a job's container: pull the image, write its log."""
    return policy(*permissions.image_pull_statements(deployment),
                  permissions.log_writing_statement(deployment, deployment.names.batch_log_group))


def job_permissions(deployment: Deployment) -> dict:
    """What the copier itself needs inside the container: its settings, and the reporting
    database's free storage where there is a metric to read."""
    return policy(permissions.copier_parameters_statement(deployment),
                  *permissions.storage_statements(deployment))


def instance_permissions(deployment: Deployment) -> dict:
    """EC2 compute only: the ECS agent on the instances (what AWS's managed
    AmazonEC2ContainerServiceforEC2Role grants, as an inline policy we can read)."""
    return policy(
        allow(["ecs:CreateCluster", "ecs:DeregisterContainerInstance",
               "ecs:DiscoverPollEndpoint", "ecs:Poll", "ecs:RegisterContainerInstance",
               "ecs:StartTelemetrySession", "ecs:UpdateContainerInstancesState",
               "ecs:Submit*", "ec2:DescribeTags"], ["*"]),
        *permissions.image_pull_statements(deployment),
        permissions.log_writing_statement(deployment, deployment.names.batch_log_group),
    )
