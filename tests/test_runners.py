"""The runners: the custom image (Dockerfile, ECR repository, NO_SOURCE project) and AWS Batch.

Docker cannot run here, so the Dockerfile is checked by reading it; the AWS side runs under
moto (Batch with use_docker False: resources only, no container ever starts).
"""

from __future__ import annotations

import ast
import json
import re
import shlex
from pathlib import Path

import boto3
import pytest
import test_state_machine as sm  # its helpers run a rewritten definition in moto's engine
from aws_helpers import (
    MOTO_CONFIG,
    REGION,
    ROOT,
    TABLES,
    expected_inventory,
    inventory,
    nothing_left,
    outcomes,
    run_script,
    set_fake_aws_env,
    subprocess_env,
    with_canned_jobs,
    write_config,
)
from moto import mock_aws

import deploy
import setup_aws
import teardown_aws

ACCOUNT = "123456789012"  # moto's default account
BATCH_SYNC = "arn:aws:states:::batch:submitJob.sync"
MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"

# --- the Dockerfile, read statically


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(item.split(None, 1)[0].upper(), item.split(None, 1)[1]) for item in logical]


def test_dockerfile_base_is_a_slim_python_311_pinned_by_tag():
    instructions = dockerfile_instructions()
    assert instructions[0][0] == "FROM"
    froms = [args for op, args in instructions if op == "FROM"]
    assert len(froms) == 1
    image, _, tag = froms[0].partition(":")
    assert image == "python"
    assert tag.startswith("3.11-slim") or tag.startswith("3.11.") and "slim" in tag
    assert tag != "latest"


def test_dockerfile_installs_the_pinned_requirements_without_a_cache():
    instructions = dockerfile_instructions()
    copies = [args for op, args in instructions if op == "COPY"]
    runs = [args for op, args in instructions if op == "RUN"]
    assert any(shlex.split(c)[0] == "requirements.txt" for c in copies)
    (install,) = [r for r in runs if "pip install" in r]
    words = shlex.split(install)
    assert "--no-cache-dir" in words and words[words.index("-r") + 1] == "requirements.txt"
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][\w.]*", line.strip()), line


def test_dockerfile_bakes_in_the_copier_runs_it_as_a_user_and_needs_only_tables():
    instructions = dockerfile_instructions()
    ops = [op for op, _ in instructions]
    copied = [src for op, args in instructions if op == "COPY" for src in shlex.split(args)[:-1]]
    assert set(copier_modules()) <= set(copied) and not any(src in (".", "./") for src in copied)
    (user,) = [args for op, args in instructions if op == "USER"]
    assert user.strip() not in ("root", "0")
    assert ops.index("USER") > max(i for i, op in enumerate(ops) if op == "RUN")
    (workdir,) = [args for op, args in instructions if op == "WORKDIR"]
    # CodeBuild ignores ENTRYPOINT and runs the inline buildspec, which cds to /app
    assert workdir == "/app" and "cd /app" in deploy.resources.ECR_BUILDSPEC
    (entrypoint,) = [args for op, args in instructions if op == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["python", "copier.py"]
    assert not [op for op in ops if op in ("CMD", "ADD", "EXPOSE")]
    # the RDS CA bundle, where the RDS default sslrootcert (relative to /app) finds it
    (fetch,) = [args for op, args in instructions if op == "RUN" and "truststore" in args]
    assert (f"'{deploy.settings.RDS_CA_BUNDLE_URL}', '{deploy.settings.RDS_CA_BUNDLE}'" in fetch
            and f"chmod 644 {deploy.settings.RDS_CA_BUNDLE}" in fetch)


def test_dockerignore_keeps_the_context_to_what_the_image_needs():
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"
    assert sorted(lines[1:]) == sorted(["!requirements.txt", *(f"!{m}" for m in copier_modules())])


def copier_modules() -> list[str]:
    """copier.py and the project's modules it imports: what the image must hold to run it."""
    tree = ast.parse((ROOT / "copier.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    return ["copier.py", *sorted(f"{m}.py" for m in imported if (ROOT / f"{m}.py").exists())]


# --- setup and teardown under moto


@pytest.fixture
def aws(monkeypatch, tmp_path):
    set_fake_aws_env(monkeypatch)
    monkeypatch.chdir(tmp_path)  # no deploy.toml from the working tree
    monkeypatch.setattr(deploy.aws, "sleep", lambda seconds: None)
    with mock_aws(config=MOTO_CONFIG):
        # The account's Batch service-linked role, as AWS names it (moto's
        # create_service_linked_role would call it "AWSServiceRoleForbatch").
        boto3.client("iam").create_role(
            RoleName=deploy.names.BATCH_SERVICE_LINKED_ROLE,
            Path="/aws-service-role/batch.amazonaws.com/",
            AssumeRolePolicyDocument=json.dumps(deploy.permissions.policy(
                {"Effect": "Allow", "Principal": {"Service": "batch.amazonaws.com"},
                 "Action": "sts:AssumeRole"})))
        yield


@pytest.fixture
def moto_accepts_no_source(monkeypatch):
    """moto rejects a NO_SOURCE project without a source location, which AWS does not need:
    the tests add a dummy one on the way to moto only (the comparison ignores it)."""
    spec = deploy.resources.CodeBuildProject.spec

    def with_dummy_location(self):
        found = spec(self)
        if found["source"]["type"] == "NO_SOURCE":
            found["source"] = {**found["source"], "location": "moto-needs-a-location"}
        return found

    monkeypatch.setattr(deploy.resources.CodeBuildProject, "spec", with_dummy_location)


def network() -> dict:
    ec2 = boto3.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.20.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="copier", Description="copier",
                                      VpcId=vpc)["GroupId"]
    return {"vpc_id": vpc, "subnets": [subnet], "security_groups": [group]}


def config_for(tmp_path: Path, **settings) -> str:
    return str(write_config(tmp_path / "deploy.toml", **settings))


def run(main, argv: list[str], capsys) -> dict[str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == (2 if "--dry-run" in argv else 0), captured.err  # 2: changes pending
    return outcomes(captured.out)


def batch_inventory(prefix: str) -> dict[str, list[str]]:
    """The resources only the runners create (roles are in aws_helpers.inventory)."""
    batch = boto3.client("batch")
    environments = [e["computeEnvironmentName"] for e in
                    batch.describe_compute_environments()["computeEnvironments"]
                    if e["status"] != "DELETED"]
    queues = [q["jobQueueName"] for q in batch.describe_job_queues()["jobQueues"]
              if q["status"] != "DELETED"]
    definitions = [d["jobDefinitionArn"].rsplit("/", 1)[1] for d in
                   batch.describe_job_definitions(status="ACTIVE")["jobDefinitions"]]
    repositories = [r["repositoryName"] for r in
                    boto3.client("ecr").describe_repositories()["repositories"]]
    profiles = [p["InstanceProfileName"] for p in
                boto3.client("iam").list_instance_profiles()["InstanceProfiles"]]
    groups = [g["logGroupName"] for g in boto3.client("logs").describe_log_groups(
        logGroupNamePrefix=f"/aws/batch/{prefix}")["logGroups"]]
    found = {"compute environments": environments, "job queues": queues,
             "job definitions": definitions, "repositories": repositories,
             "instance profiles": profiles, "batch log groups": groups}
    return {kind: sorted(names) for kind, names in found.items()}


def batch_inventory_expected(prefix: str, ec2: bool = False) -> dict[str, list[str]]:
    return {"compute environments": [prefix], "job queues": [prefix],
            "job definitions": [f"{prefix}:1"], "repositories": [prefix],
            "instance profiles": [f"{prefix}-batch-instance"] if ec2 else [],
            "batch log groups": [f"/aws/batch/{prefix}"]}


def no_batch(prefix: str) -> dict[str, list[str]]:
    return {kind: [] for kind in batch_inventory_expected(prefix)}


def codebuild_inventory_for_batch(prefix: str) -> dict[str, list[str]]:
    """expected_inventory with the CodeBuild parts swapped for Batch's roles."""
    expected = expected_inventory(prefix)
    expected["roles"] = sorted([r for r in expected["roles"] if r != f"{prefix}-codebuild"]
                               + [f"{prefix}-batch-execution", f"{prefix}-batch-job"])
    expected["projects"] = []
    expected["log groups"] = [f"/aws/lambda/{prefix}-notify"]
    return expected


def role_policy(role: str) -> dict[str, list[str]]:
    document = boto3.client("iam").get_role_policy(RoleName=role,
                                                   PolicyName="permissions")["PolicyDocument"]
    found: dict[str, list[str]] = {}
    for statement in document["Statement"]:
        for action in statement["Action"]:
            found.setdefault(action, []).extend(statement["Resource"])
    return found


def trusted_service(role: str) -> str:
    (statement,) = boto3.client("iam").get_role(RoleName=role)["Role"][
        "AssumeRolePolicyDocument"]["Statement"]
    return statement["Principal"]["Service"]


REPOSITORY_ARN = f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/nightly-copy"
IMAGE_URI = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/nightly-copy:latest"


def test_custom_image_creates_the_repository_and_a_project_without_source(
        aws, tmp_path, capsys, moto_accepts_no_source):
    config = config_for(tmp_path, custom_image=True)
    code = setup_aws.main(["--config", config])
    out = capsys.readouterr().out
    first = outcomes(out)
    assert code == 0 and first["ECR repository nightly-copy"] == "created"
    # setup says where the image goes, and that it is not there yet
    assert f"image: {IMAGE_URI} is not pushed yet" in out
    (repository,) = boto3.client("ecr").describe_repositories()["repositories"]
    assert repository["repositoryName"] == "nightly-copy"
    assert {"Key": "project", "Value": "nightly-copy"} in boto3.client("ecr").list_tags_for_resource(
        resourceArn=repository["repositoryArn"])["tags"]
    (project,) = boto3.client("codebuild").batch_get_projects(names=["nightly-copy"])["projects"]
    assert project["source"]["type"] == "NO_SOURCE"
    assert project["source"]["buildspec"] == deploy.resources.ECR_BUILDSPEC
    assert "sourceVersion" not in project  # no GitHub involved
    assert (project["environment"]["image"], project["environment"]["imagePullCredentialsType"]) \
        == (IMAGE_URI, "SERVICE_ROLE")
    pulls = role_policy("nightly-copy-codebuild")
    for action in ("ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
                   "ecr:BatchCheckLayerAvailability"):
        assert pulls[action] == [REPOSITORY_ARN]

    second = run(setup_aws.main, ["--config", config], capsys)
    assert set(second.values()) == {"unchanged"}

    # an image was pushed: setup sees it; teardown keeps the repository unless told
    boto3.client("ecr").put_image(repositoryName="nightly-copy", imageTag="latest",
                                  imageManifest=json.dumps({
                                      "schemaVersion": 2, "mediaType": MANIFEST_TYPE}))
    setup_aws.main(["--config", config])
    assert f"image: {IMAGE_URI}\n" in capsys.readouterr().out
    down = run(teardown_aws.main, ["--config", config, "--remove-secrets"], capsys)
    assert down["ECR repository nightly-copy"] == "kept"
    assert batch_inventory("nightly-copy")["repositories"] == ["nightly-copy"]
    down = run(teardown_aws.main, ["--config", config, "--remove-images"], capsys)
    assert down["ECR repository nightly-copy"] == "removed"
    assert batch_inventory("nightly-copy") == no_batch("nightly-copy")
    assert inventory("nightly-copy") == nothing_left("nightly-copy")


def assert_batch_configuration(net: dict, jobs: int = 3, compute: str = "FARGATE") -> None:
    batch = boto3.client("batch")
    (environment,) = batch.describe_compute_environments(
        computeEnvironments=["nightly-copy"])["computeEnvironments"]
    resources = environment["computeResources"]
    assert (environment["type"], environment["state"]) == ("MANAGED", "ENABLED")
    assert environment["serviceRole"] == (f"arn:aws:iam::{ACCOUNT}:role/aws-service-role/"
                                          "batch.amazonaws.com/AWSServiceRoleForBatch")
    assert (resources["type"], resources["maxvCpus"]) == (compute, jobs)
    assert resources["subnets"] == net["subnets"]
    assert resources["securityGroupIds"] == net["security_groups"]
    assert batch.list_tags_for_resource(resourceArn=environment["computeEnvironmentArn"])[
        "tags"] == {"project": "nightly-copy"}

    (queue,) = batch.describe_job_queues(jobQueues=["nightly-copy"])["jobQueues"]
    assert queue["state"] == "ENABLED"
    assert [e["computeEnvironment"] for e in queue["computeEnvironmentOrder"]] == [
        environment["computeEnvironmentArn"]]

    (definition,) = batch.describe_job_definitions(jobDefinitionName="nightly-copy",
                                                   status="ACTIVE")["jobDefinitions"]
    container = definition["containerProperties"]
    assert definition["platformCapabilities"] == [compute]
    assert container["image"] == IMAGE_URI
    assert container["executionRoleArn"] == f"arn:aws:iam::{ACCOUNT}:role/nightly-copy-batch-execution"
    assert container["jobRoleArn"] == f"arn:aws:iam::{ACCOUNT}:role/nightly-copy-batch-job"
    assert container["environment"] == [{"name": "COPIER_SSM_PREFIX", "value": "/nightly-copy/"}]
    assert container["logConfiguration"]["options"]["awslogs-group"] == "/aws/batch/nightly-copy"
    assert definition["timeout"] == {"attemptDurationSeconds": 90 * 60}
    assert definition["retryStrategy"]["attempts"] == 1

    # least privilege: ECS pulls this one repository and writes this one log group; the
    # copier reads its own parameters only
    assert trusted_service("nightly-copy-batch-execution") == "ecs-tasks.amazonaws.com"
    execution = role_policy("nightly-copy-batch-execution")
    assert execution["ecr:BatchGetImage"] == [REPOSITORY_ARN]
    group = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/batch/nightly-copy"
    assert execution["logs:PutLogEvents"] == [group, f"{group}:*"]
    assert role_policy("nightly-copy-batch-job") == {
        action: [f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/nightly-copy",
                 f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/nightly-copy/*"]
        for action in ("ssm:GetParametersByPath", "ssm:GetParameters", "ssm:GetParameter")}

    states = role_policy("nightly-copy-states")
    queue_arn = f"arn:aws:batch:{REGION}:{ACCOUNT}:job-queue/nightly-copy"
    assert queue_arn in states["batch:SubmitJob"]
    assert f"arn:aws:batch:{REGION}:{ACCOUNT}:job-definition/nightly-copy" in states[
        "batch:SubmitJob"]
    assert states["batch:DescribeJobs"] == ["*"]
    assert states["batch:TerminateJob"] == [f"arn:aws:batch:{REGION}:{ACCOUNT}:job/*"]
    rule = f"arn:aws:events:{REGION}:{ACCOUNT}:rule/StepFunctionsGetEventsForBatchJobsRule"
    for action in ("events:PutTargets", "events:PutRule", "events:DescribeRule"):
        assert states[action] == [rule]
    assert not any(action.startswith("codebuild:") for action in states)

    machine = boto3.client("stepfunctions").describe_state_machine(
        stateMachineArn=f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:nightly-copy")
    branches = json.loads(machine["definition"])["States"][deploy.Names.copy_state]["Branches"]
    assert len(branches) == jobs
    for branch in branches:
        task = branch["States"][branch["StartAt"]]
        assert task["Resource"] == BATCH_SYNC
        assert task["Parameters"]["JobQueue"] == queue_arn
        assert task["Parameters"]["JobDefinition"] == "nightly-copy"


def test_batch_runner_setup_twice_then_teardown_leaves_nothing(aws, tmp_path, capsys):
    net = network()
    config = config_for(tmp_path, runner="batch", **net)
    managed_rule = boto3.client("events").put_rule(
        Name="StepFunctionsGetEventsForBatchJobsRule",
        EventPattern=json.dumps({"source": ["aws.batch"]}))["RuleArn"]

    first = run(setup_aws.main, ["--config", config], capsys)
    assert first.pop("service-linked role AWSServiceRoleForBatch") == "unchanged"  # the account's
    assert set(first.values()) == {"created"}, first
    assert "CodeBuild project nightly-copy" not in first
    assert inventory("nightly-copy") == codebuild_inventory_for_batch("nightly-copy")
    assert batch_inventory("nightly-copy") == batch_inventory_expected("nightly-copy")
    assert_batch_configuration(net)

    second = run(setup_aws.main, ["--config", config], capsys)
    second.pop("service-linked role AWSServiceRoleForBatch")
    assert second == dict.fromkeys(first, "unchanged")

    down = run(teardown_aws.main, ["--config", config, "--remove-secrets"], capsys)
    assert down.pop("service-linked role AWSServiceRoleForBatch") == "kept"
    assert set(down.values()) == {"removed"}
    assert inventory("nightly-copy") == nothing_left("nightly-copy")
    assert batch_inventory("nightly-copy") == no_batch("nightly-copy")
    assert [r["Arn"] for r in boto3.client("events").list_rules()["Rules"]] == [managed_rule]
    assert boto3.client("iam").get_role(RoleName="AWSServiceRoleForBatch")


def test_switching_runner_and_back_leaves_no_orphans(aws, tmp_path, capsys):
    net = network()
    codebuild = config_for(tmp_path, **net)
    run(setup_aws.main, ["--config", codebuild], capsys)
    assert inventory("nightly-copy") == expected_inventory("nightly-copy")

    to_batch = run(setup_aws.main, ["--config", codebuild, "--runner", "batch"], capsys)
    for label in ("CodeBuild project nightly-copy", "IAM role nightly-copy-codebuild",
                  "log group /aws/codebuild/nightly-copy"):
        assert to_batch[label] == "removed"
    assert to_batch["state machine nightly-copy"] == "updated"
    assert to_batch["IAM role nightly-copy-states"] == "updated"
    assert inventory("nightly-copy") == codebuild_inventory_for_batch("nightly-copy")
    assert batch_inventory("nightly-copy") == batch_inventory_expected("nightly-copy")

    back = run(setup_aws.main, ["--config", codebuild], capsys)
    for label in ("Batch job definition nightly-copy", "Batch job queue nightly-copy",
                  "Batch compute environment nightly-copy", "ECR repository nightly-copy",
                  "IAM role nightly-copy-batch-execution", "IAM role nightly-copy-batch-job",
                  "log group /aws/batch/nightly-copy"):
        assert back[label] == "removed"
    assert "service-linked role AWSServiceRoleForBatch" not in back  # not ours to remove
    assert back["CodeBuild project nightly-copy"] == "created"
    assert inventory("nightly-copy") == expected_inventory("nightly-copy")
    assert batch_inventory("nightly-copy") == no_batch("nightly-copy")
    definition = json.loads(boto3.client("stepfunctions").describe_state_machine(
        stateMachineArn=f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:nightly-copy")[
        "definition"])
    assert "codebuild:startBuild.sync" in json.dumps(definition)
    assert "batch:" not in json.dumps(definition)

    again = run(setup_aws.main, ["--config", codebuild], capsys)
    assert set(again.values()) == {"unchanged"}  # nothing of Batch is even mentioned
    run(teardown_aws.main, ["--config", codebuild, "--remove-secrets"], capsys)
    assert inventory("nightly-copy") == nothing_left("nightly-copy")


def test_teardown_with_the_other_runner_configured_still_removes_everything(aws, tmp_path,
                                                                           capsys):
    net = network()
    run(setup_aws.main, ["--config", config_for(tmp_path, runner="batch", **net)], capsys)
    # the config file says codebuild now, but setup never ran with it
    down = run(teardown_aws.main, ["--config", config_for(tmp_path, **net), "--remove-secrets"],
               capsys)
    assert down["Batch compute environment nightly-copy"] == "removed"
    assert inventory("nightly-copy") == nothing_left("nightly-copy")
    assert batch_inventory("nightly-copy") == no_batch("nightly-copy")


def test_ec2_compute_gets_an_instance_profile_and_scales_to_zero(aws, tmp_path, capsys):
    net = network()
    config = config_for(tmp_path, runner="batch", batch_compute="EC2", **net)
    first = run(setup_aws.main, ["--config", config], capsys)
    assert first["instance profile nightly-copy-batch-instance"] == "created"
    assert batch_inventory("nightly-copy") == batch_inventory_expected("nightly-copy", ec2=True)
    assert_batch_configuration(net, compute="EC2")
    (environment,) = boto3.client("batch").describe_compute_environments(
        computeEnvironments=["nightly-copy"])["computeEnvironments"]
    resources = environment["computeResources"]
    assert resources["instanceRole"] == (
        f"arn:aws:iam::{ACCOUNT}:instance-profile/nightly-copy-batch-instance")
    assert (resources["minvCpus"], resources["desiredvCpus"]) == (0, 0)
    assert trusted_service("nightly-copy-batch-instance") == "ec2.amazonaws.com"
    assert role_policy("nightly-copy-batch-instance")["ecr:BatchGetImage"] == [REPOSITORY_ARN]

    run(teardown_aws.main, ["--config", config, "--remove-secrets"], capsys)
    assert batch_inventory("nightly-copy") == no_batch("nightly-copy")
    assert inventory("nightly-copy") == nothing_left("nightly-copy")


class Recorder:
    """A client whose calls are noted, in order, with their arguments."""

    def __init__(self, client, calls: list):
        self._client, self._calls = client, calls

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            self._calls.append((name, kwargs))
            return attr(*args, **kwargs)

        return call


def test_teardown_disables_and_deletes_the_queue_before_the_compute_environment(aws, tmp_path,
                                                                                capsys):
    net = network()
    config = config_for(tmp_path, runner="batch", **net)
    run(setup_aws.main, ["--config", config], capsys)
    settings = deploy.load_settings(setup_aws.build_parser().parse_args(["--config", config]))
    d = deploy.Deployment(settings, deploy.Aws(REGION), deploy.Options())
    calls: list = []
    d.aws._clients["batch"] = Recorder(d.aws.client("batch"), calls)
    deploy.teardown(d, out=lambda line: None)
    changes = [(name, kwargs.get("state")) for name, kwargs in calls
               if not name.startswith(("describe", "list"))]
    assert changes == [
        ("deregister_job_definition", None),
        ("update_job_queue", "DISABLED"), ("delete_job_queue", None),
        ("update_compute_environment", "DISABLED"), ("delete_compute_environment", None)]
    # each delete came after a describe that saw the disabled state settled, and was followed
    # by one that saw the resource gone
    names = [name for name, _ in calls]
    queue_delete = names.index("delete_job_queue")
    assert names[queue_delete - 1] == "describe_job_queues"
    assert names[queue_delete + 1] == "describe_job_queues"


def test_waiting_for_batch_polls_until_settled_and_gives_up_with_a_clear_error(monkeypatch):
    delays: list[float] = []
    monkeypatch.setattr(deploy.aws, "sleep", delays.append)
    answers = iter([False, False, True])
    deploy.batch.wait_until("Batch job queue q", "disabled", lambda: next(answers))
    assert len(delays) == 2
    with pytest.raises(deploy.AwsError, match="Batch job queue q: still not deleted"):
        deploy.batch.wait_until("Batch job queue q", "deleted", lambda: False)
    assert len(delays) == 2 + deploy.batch.BATCH_WAIT_ATTEMPTS


@pytest.mark.parametrize("settings, message", [
    ({"runner": "lambda"}, "runner 'lambda'"),
    ({"runner": "batch"}, "runner batch needs subnets and security_groups"),
    ({"custom_image": True, "ecr_image": "1.dkr.ecr.r.amazonaws.com/x:1"}, "exclude each other"),
    ({"image_tag": "no spaces"}, "image_tag"),
    ({"runner": "batch", "batch_compute": "LAMBDA", "vpc_id": "v", "subnets": ["s"],
      "security_groups": ["g"]}, "batch_compute"),
])
def test_bad_runner_settings_are_one_line(tmp_path, capsys, settings, message):
    config = config_for(tmp_path, **settings)
    code = setup_aws.main(["--config", config])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and message in err


def test_batch_needs_no_github_url(tmp_path):
    settings = deploy.Settings(tables=["public.a"], runner="batch", vpc_id="v",
                                   subnets=["s"], security_groups=["g"])
    settings.validate_for_setup()
    assert settings.uses_own_repository
    with pytest.raises(deploy.SettingsError, match="github_url is required"):
        deploy.Settings(tables=["public.a"]).validate_for_setup()


def test_custom_image_flag_overrides_the_file(tmp_path):
    config = config_for(tmp_path, custom_image=True)
    args = setup_aws.build_parser().parse_args(["--config", config, "--no-custom-image"])
    assert deploy.load_settings(args).custom_image is False
    args = setup_aws.build_parser().parse_args(["--config", config])
    assert deploy.load_settings(args).custom_image is True


# --- the Batch-flavoured state machine: shape, statelint, logic in moto's engine


@pytest.fixture
def engine(monkeypatch):
    set_fake_aws_env(monkeypatch)
    with mock_aws(config={**MOTO_CONFIG, "stepfunctions": {"execute_state_machine": True}}):
        yield deploy.Aws(REGION)


def render(aws: deploy.Aws, jobs: int, runner: str = "batch", tables=TABLES) -> dict:
    settings = deploy.Settings(tables=list(tables), jobs=jobs, runner=runner,
                                   github_url="https://github.com/example/x.git")
    plan = deploy.plan_jobs(settings, lambda line: None)
    return deploy.Deployment(settings, aws, deploy.Options(), plan) \
        .state_machine_definition()


@pytest.mark.parametrize("jobs", [1, 3, 5])
def test_batch_definition_passes_statelint(engine, tmp_path, jobs):
    result = sm.statelint(render(engine, jobs), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("jobs", [1, 3, 5])
def test_batch_definition_has_a_valid_job_per_branch_and_every_table_once(engine, jobs):
    definition = render(engine, jobs)
    codebuild = render(engine, jobs, runner="codebuild")
    assert len(sm.branches(definition)) == jobs
    assigned = []
    for number, (branch, twin) in enumerate(zip(sm.branches(definition),
                                                sm.branches(codebuild), strict=True), start=1):
        task, codebuild_task = sm.copy_task(branch), sm.copy_task(twin)
        assert task["Resource"] == BATCH_SYNC
        parameters = task["Parameters"]
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,128}", parameters["JobName"])
        assert parameters["JobName"] == f"nightly-copy-job-{number}"
        assert parameters["JobQueue"] == f"arn:aws:batch:{REGION}:{ACCOUNT}:job-queue/nightly-copy"
        assert parameters["JobDefinition"] == "nightly-copy"
        environment = parameters["ContainerOverrides"]["Environment"]
        # the same variables as the CodeBuild job, TABLES first, without CodeBuild's Type
        assert environment == [{k: v for k, v in variable.items() if k != "Type"} for variable
                               in codebuild_task["Parameters"]["EnvironmentVariablesOverride"]]
        (tables,) = [v["Value"] for v in environment if v["Name"] == "TABLES"]
        assert ",".join(task["ResultSelector"]["tables"]) == tables
        assert task["ResultSelector"]["job"] == f"job-{number}"
        assigned += task["ResultSelector"]["tables"]
        # the same timeout and catch as the CodeBuild job; retries only Batch API errors
        assert task["TimeoutSeconds"] == codebuild_task["TimeoutSeconds"]
        assert task["Catch"] == codebuild_task["Catch"]
        assert branch["States"][task["Catch"][0]["Next"]] == twin["States"][
            codebuild_task["Catch"][0]["Next"]]
        for retry in task["Retry"]:
            assert all(error.startswith("Batch.") for error in retry["ErrorEquals"])
    assert sorted(assigned) == sorted(TABLES)
    # everything besides the job tasks is the CodeBuild version's, to the letter
    tasks = (deploy.Names.copy_state, deploy.Names.publish_phase)
    assert {k: v for k, v in definition["States"].items() if k not in tasks} == {
        k: v for k, v in codebuild["States"].items() if k not in tasks}


def test_a_non_plaintext_override_cannot_go_to_batch():
    template = json.loads(deploy.state_machine.STATE_MACHINE_TEMPLATE.read_text())
    task = sm.copy_task(sm.branches(template)[0])
    task["Parameters"]["EnvironmentVariablesOverride"].append(
        {"Name": "X", "Value": "/p", "Type": "PARAMETER_STORE"})
    batch_task = json.loads(deploy.state_machine.BATCH_TASK_TEMPLATE.read_text())
    with pytest.raises(deploy.SettingsError, match="X is PARAMETER_STORE"):
        deploy.state_machine.with_batch_task(template, batch_task)


def canned_job(job: str) -> dict:
    """What batch:submitJob.sync returns: the DescribeJobs job, times in epoch milliseconds."""
    return {"JobId": f"{job}-0b7e", "JobName": f"nightly-copy-{job}", "Status": "SUCCEEDED",
            "StartedAt": 1795748405000, "StoppedAt": 1795750800000,
            "Container": {"LogStreamName": f"nightly-copy/default/{job}", "ExitCode": 0},
            "Attempts": [{"Container": {"ExitCode": 0}}] * 20}


def rewritten_batch_for_moto(definition: dict, failing: set[str]) -> dict:
    """moto 5.2's engine has a Batch integration, but it hands the task's PascalCase
    Parameters (JobName, JobQueue, ...) straight to boto3, which answers KeyError 'JobName':
    the real definition can only end in States.Runtime there, so its tasks are replaced."""
    return with_canned_jobs(definition, failing, canned_job)


def test_batch_all_jobs_succeed_one_summary_execution_succeeded(engine):
    sfn = boto3.client("stepfunctions")
    definition = render(engine, 3)
    machine = sm.create(sfn, "nightly-copy", rewritten_batch_for_moto(definition, set()))
    # The function's reply is dropped (ResultPath null): the jobs' statuses decide, so a
    # reply counting failures that did not happen changes nothing.
    sm.queue_lambda_result({"posted": True, "failed_jobs": 3})
    described = sm.run_to_end(sfn, machine, "2026-11-27", '{"date":"2026-11-27"}')
    assert described["status"] == "SUCCEEDED"
    summary = sm.summary_sent(sm.history(sfn, described["executionArn"]))
    assert summary["execution"]["name"] == "2026-11-27"
    jobs = summary["jobs"]
    assert [j["job"] for j in jobs] == ["job-1", "job-2", "job-3"]
    assert [j["tables"] for j in jobs] == [sm.copy_task(b)["ResultSelector"]["tables"]
                                           for b in sm.branches(definition)]
    for job in jobs:
        assert job == {
            "job": job["job"], "tables": job["tables"], "status": "SUCCEEDED",
            "build_id": f"{job['job']}-0b7e",
            "log_link": f"https://{REGION}.console.aws.amazon.com/batch/home?region={REGION}"
                        f"#jobs/detail/{job['job']}-0b7e",
            "start": 1795748405000, "end": 1795750800000}  # the job object is trimmed


def test_batch_one_job_fails_the_others_finish_summary_lists_it_execution_failed(engine):
    sfn = boto3.client("stepfunctions")
    machine = sm.create(sfn, "nightly-copy",
                        rewritten_batch_for_moto(render(engine, 3), failing={"job-2"}))
    sm.queue_lambda_result({"posted": True, "failed_jobs": 0})  # ignored, as above
    described = sm.run_to_end(sfn, machine, "2026-11-28", '{"date":"2026-11-28"}')
    assert (described["status"], described["error"]) == ("FAILED", "CopyJobsFailed")
    events = sm.history(sfn, described["executionArn"])
    finished = {e["stateExitedEventDetails"]["name"] for e in events
                if e["type"] == "PassStateExited"}
    assert {"job-1 result", "job-3 result", "job-2 failed: its message"} <= finished
    jobs = {j["job"]: j for j in sm.summary_sent(events)["jobs"]}
    assert [jobs[j]["status"] for j in ("job-1", "job-2", "job-3")] == [
        "SUCCEEDED", "FAILED", "SUCCEEDED"]
    assert jobs["job-2"]["error"] == "SNS.NotFoundException" and jobs["job-2"]["cause"]
    assert jobs["job-2"]["tables"]


def test_a_failed_batch_job_s_cause_is_not_kept(engine):
    """A failed submitJob.sync's Cause is the job as JSON, its environment (TABLES) with it:
    not a build's shape, so the summary keeps the error and the job's tables, not the Cause."""
    sfn = boto3.client("stepfunctions")

    def failed_job(job: str) -> dict:
        return {**canned_job(job), "Status": "FAILED", "StatusReason": "Essential container "
                "in task exited", "Container": {"Environment": [
                    {"Name": "TABLES", "Value": ",".join(TABLES)}], "ExitCode": 1}}

    definition = with_canned_jobs(render(engine, 3), {"job-2"}, canned_job, failed_job)
    machine = sm.create(sfn, "nightly-copy", definition)
    described = sm.run_to_end(sfn, machine, "2026-11-29", '{"date":"2026-11-29"}')
    assert described["status"] == "FAILED"
    jobs = {j["job"]: j for j in sm.summary_sent(sm.history(sfn, described["executionArn"]))[
        "jobs"]}
    assert jobs["job-2"] == {"job": "job-2", "tables": jobs["job-2"]["tables"],
                             "status": "FAILED", "error": "TaskFailed"}


def test_a_dry_run_switch_names_what_would_change_and_changes_nothing(aws, tmp_path, capsys):
    net = network()
    config = config_for(tmp_path, **net)
    run(setup_aws.main, ["--config", config], capsys)
    planned = run(setup_aws.main, ["--config", config, "--runner", "batch", "--dry-run"], capsys)
    assert planned["CodeBuild project nightly-copy"] == "would be removed"
    assert planned["Batch compute environment nightly-copy"] == "would be created"
    assert planned["state machine nightly-copy"] == "would be updated"
    assert inventory("nightly-copy") == expected_inventory("nightly-copy")
    assert batch_inventory("nightly-copy") == no_batch("nightly-copy")


def test_changed_batch_settings_update_in_place_or_register_a_new_revision(aws, tmp_path,
                                                                           capsys):
    net = network()
    config = config_for(tmp_path, runner="batch", **net)
    run(setup_aws.main, ["--config", config], capsys)
    batch = boto3.client("batch")
    (environment,) = batch.describe_compute_environments(
        computeEnvironments=["nightly-copy"])["computeEnvironments"]
    assert environment["computeResources"]["maxvCpus"] == 3  # 3 jobs of 1 vCPU
    arn_before = environment["computeEnvironmentArn"]
    changed = run(setup_aws.main, ["--config", config, "--batch-memory-mib", "4096",
                                   "--jobs", "2"], capsys)
    assert changed["Batch job definition nightly-copy"] == "updated"
    assert changed["Batch compute environment nightly-copy"] == "updated"  # max vCPUs
    assert changed["Batch job queue nightly-copy"] == "unchanged"
    (definition,) = batch.describe_job_definitions(jobDefinitionName="nightly-copy",
                                                   status="ACTIVE")["jobDefinitions"]
    assert definition["revision"] == 2  # the old revision is retired, not left to pile up
    assert {"type": "MEMORY", "value": "4096"} in definition["containerProperties"][
        "resourceRequirements"]
    (environment,) = batch.describe_compute_environments(
        computeEnvironments=["nightly-copy"])["computeEnvironments"]
    assert environment["computeResources"]["maxvCpus"] == 2  # 2 jobs of 1 vCPU, was 3
    assert (environment["state"], environment["status"]) == ("ENABLED", "VALID")
    assert environment["computeEnvironmentArn"] == arn_before  # in place, not made again
    again = run(setup_aws.main, ["--config", config, "--batch-memory-mib", "4096",
                                 "--jobs", "2"], capsys)
    assert set(again.values()) == {"unchanged"}


def test_fargate_and_ec2_cannot_be_swapped_in_place(aws, tmp_path, capsys):
    net = network()
    config = config_for(tmp_path, runner="batch", **net)
    run(setup_aws.main, ["--config", config], capsys)
    code = setup_aws.main(["--config", config, "--batch-compute", "EC2"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert "Batch compute environment nightly-copy: exists as FARGATE" in err


# --- the scripts as separate processes against moto_server


def test_batch_scripts_against_moto_server(moto_server, tmp_path, monkeypatch):
    set_fake_aws_env(monkeypatch, endpoint=moto_server.url)
    env = subprocess_env(moto_server.url)
    boto3.client("iam").create_role(
        RoleName=deploy.names.BATCH_SERVICE_LINKED_ROLE,
        Path="/aws-service-role/batch.amazonaws.com/", AssumeRolePolicyDocument="{}")
    net = network()
    batch = config_for(tmp_path, runner="batch", **net)
    (tmp_path / "codebuild").mkdir()
    codebuild = config_for(tmp_path / "codebuild", **net)  # same settings, default runner

    up = run_script("setup_aws.py", ["--config", batch], env, tmp_path)
    assert up.returncode == 0, up.stderr
    assert batch_inventory("nightly-copy") == batch_inventory_expected("nightly-copy")
    again = outcomes(run_script("setup_aws.py", ["--config", batch], env, tmp_path).stdout)
    assert {s for label, s in again.items() if "Logs Insights" not in label} == {"unchanged"}

    back = run_script("setup_aws.py", ["--config", codebuild], env, tmp_path)
    assert back.returncode == 0, back.stderr
    assert outcomes(back.stdout)["Batch compute environment nightly-copy"] == "removed"
    assert batch_inventory("nightly-copy") == no_batch("nightly-copy")
    assert inventory("nightly-copy") == expected_inventory("nightly-copy")

    down = run_script("teardown_aws.py", ["--config", batch, "--remove-secrets"], env, tmp_path)
    assert down.returncode == 0, down.stderr
    assert inventory("nightly-copy") == nothing_left("nightly-copy")


def test_an_invalid_compute_environment_stops_setup_at_once_with_batch_s_reason(
        aws, tmp_path, capsys, monkeypatch):
    net = network()
    config = config_for(tmp_path, runner="batch", **net)
    reason = "CLIENT_ERROR - not authorized to perform: ecs:DescribeClusters"
    describe = deploy.batch.ComputeEnvironment.describe

    def invalid_once_created(self):  # what Batch says of one whose role it cannot use
        found = describe(self)
        return found and {**found, "status": "INVALID", "statusReason": reason}

    monkeypatch.setattr(deploy.batch.ComputeEnvironment, "describe", invalid_once_created)
    delays: list[float] = []
    monkeypatch.setattr(deploy.aws, "sleep", delays.append)
    code = setup_aws.main(["--config", config])
    captured = capsys.readouterr()
    assert code == 1 and captured.err == (
        f"error: Batch compute environment nightly-copy: INVALID: {reason}\n")
    assert delays == []  # at once: no waiting for a state that will not come
    walked = outcomes(captured.out)
    assert "Batch compute environment nightly-copy" not in walked  # it stopped there
    assert "Batch job queue nightly-copy" not in walked
    assert batch_inventory("nightly-copy")["job queues"] == []
    # an invalid one can still be disabled and removed
    assert run(teardown_aws.main, ["--config", config, "--remove-secrets"], capsys)[
        "Batch compute environment nightly-copy"] == "removed"


def test_an_invalid_compute_environment_is_revalidated_by_the_next_setup(aws, tmp_path,
                                                                        capsys, monkeypatch):
    net = network()
    config = config_for(tmp_path, runner="batch", **net)
    run(setup_aws.main, ["--config", config], capsys)
    describe = deploy.batch.ComputeEnvironment.describe
    states = iter(["UPDATING", "INVALID", "INVALID", "VALID"])  # then whatever moto says

    def invalid_for_a_while(self):
        found = describe(self)
        return found and {**found, "status": next(states, found["status"]),
                          "statusReason": "CLIENT_ERROR - a role was missing"}

    monkeypatch.setattr(deploy.batch.ComputeEnvironment, "describe", invalid_for_a_while)
    again = run(setup_aws.main, ["--config", config], capsys)
    # it waited for the change in progress, saw INVALID, updated it, and waited for VALID
    assert again["Batch compute environment nightly-copy"] == "updated"
    assert again["Batch job queue nightly-copy"] == "unchanged"


def test_public_ip_is_a_choice_for_fargate_only(aws):
    def job_definition(**settings) -> dict:
        base = {"tables": ["public.a"], "runner": "batch", "subnets": ["s"],
                "security_groups": ["g"], "vpc_id": "v"}
        d = deploy.Deployment(deploy.Settings(**base | settings),
                                  deploy.Aws(REGION), deploy.Options(), [["a"]])
        (found,) = [r for r in deploy.resource_list(d) if isinstance(r, deploy.batch.JobDefinition)]
        return found.request()

    container = job_definition()["containerProperties"]
    assert container["networkConfiguration"] == {"assignPublicIp": "DISABLED"}
    container = job_definition(assign_public_ip=True)["containerProperties"]
    assert container["networkConfiguration"] == {"assignPublicIp": "ENABLED"}
    ec2 = job_definition(batch_compute="EC2")
    assert ec2["platformCapabilities"] == ["EC2"]
    assert "networkConfiguration" not in ec2["containerProperties"]
