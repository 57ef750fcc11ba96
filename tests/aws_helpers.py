"""Helpers for the AWS tests: fake credentials, a config file, moto_server, an inventory."""

from __future__ import annotations

import argparse
import copy
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import requests

import deploy

ROOT = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
}
SECRETS = {
    "COPIER_SOURCE_PASSWORD": "source-pw-5d81c",
    "COPIER_TARGET_PASSWORD": "target-pw-a0e34",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/secret-7f3a",
}
TABLES = ["public.a", "public.b", "public.c", "public.d", "public.e", "public.f", "public.g"]
MOTO_CONFIG = {
    "iam": {"load_aws_managed_policies": False},
    "lambda": {"use_docker": False},
    "batch": {"use_docker": False},
}


def set_fake_aws_env(monkeypatch, endpoint: str | None = None) -> None:
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_CONFIG_FILE",
                 "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    for name, value in {**FAKE_AWS_ENV, **SECRETS}.items():
        monkeypatch.setenv(name, value)
    if endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)


# What setup says on stderr at its end about write_config's reporting database (no RDS endpoint).
ROOM_NOT_CHECKED = ("warning: the reporting database reporting.example.internal is not an RDS "
                    "endpoint: the copier will not check the room a night needs before it "
                    "stages anything\n")


def toml_value(value) -> str:
    return json.dumps(value)  # strings, numbers and lists of strings read the same in TOML


def write_config(path: Path, **overrides) -> Path:
    """A complete config: setup runs without asking anything. The source is unreachable
    (port 1 on localhost refuses at once), so the weights below decide the split."""
    settings = {
        "region": REGION,
        "tables": TABLES,
        "jobs": 3,
        "github_url": "https://github.com/example/nightly-copy.git",
        "branch": "release",
    }
    settings.update(overrides)
    lines = [f"{key} = {toml_value(value)}" for key, value in settings.items()]
    lines += ["[table_weights]", '"public.a" = 10', '"public.b" = 4',
              "[source]", 'host = "127.0.0.1"', 'port = "1"', 'dbname = "shop"',
              'user = "reader"',
              "[target]", 'host = "reporting.example.internal"', 'dbname = "reporting"',
              'user = "writer"', 'sslmode = "verify-full"',
              'sslrootcert = "reporting-ca.pem"']
    path.write_text("\n".join(lines) + "\n")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MotoServer:
    """moto_server in its own process on a free port of 127.0.0.1."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> MotoServer:
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("moto_gaps.py")),
             "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/moto-api/data.json", timeout=1).close()
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)

    def configure(self, config: dict) -> None:
        request = urllib.request.Request(f"{self.url}/moto-api/config", method="POST",
                                         data=json.dumps(config).encode(),
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=5).close()

    def reset(self) -> None:
        """Forget every resource (moto's reset; the configuration stays)."""
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        urllib.request.urlopen(request, timeout=10).close()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def needed_labels(config: Path) -> list[str]:
    """The label of every resource setup makes present for this config, read off the one
    ordered list itself (no count written down in the tests)."""

    settings = deploy.load_settings(argparse.Namespace(config=config))
    deployment = deploy.Deployment(settings, aws=None, options=deploy.Options(), jobs=[])
    return [resource.label for resource in deploy.resource_list(deployment) if resource.needed]


def run_script(script: str, args: list[str], env: dict[str, str], cwd: Path):
    """Run setup_aws.py or teardown_aws.py the way a user does: a separate process."""
    return subprocess.run([sys.executable, str(ROOT / script), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def outcomes(stdout: str) -> dict[str, str]:
    """Parse the walk's lines ('   created  IAM role x  (detail)') into label -> status."""
    statuses = ("would be created", "would be updated", "would be removed", "created",
                "updated", "unchanged", "removed", "absent", "kept", "left alone")
    found = {}
    for line in stdout.splitlines():
        stripped = line.strip()
        for status in statuses:
            if stripped.startswith(status + "  "):
                label = stripped[len(status):].strip().split("  (")[0]
                found[label] = status
                break
    return found


def inventory(prefix: str) -> dict[str, list[str]]:
    """Everything in the account whose name says it belongs to the deployment `prefix`."""
    ssm = boto3.client("ssm")
    parameters = []
    for page in ssm.get_paginator("get_parameters_by_path").paginate(Path=f"/{prefix}/",
                                                                     Recursive=True):
        parameters += [p["Name"] for p in page["Parameters"]]
    for page in ssm.get_paginator("get_parameters_by_path").paginate(Path=f"/{prefix}-notify/",
                                                                     Recursive=True):
        parameters += [p["Name"] for p in page["Parameters"]]
    roles = [r["RoleName"] for r in boto3.client("iam").list_roles()["Roles"]
             if r["RoleName"].startswith(f"{prefix}-")]
    projects = [p for p in boto3.client("codebuild").list_projects()["projects"]
                if p == prefix or p.startswith(f"{prefix}-")]
    functions = [f["FunctionName"] for f in boto3.client("lambda").list_functions()["Functions"]
                 if f["FunctionName"].startswith(f"{prefix}-")]
    machines = [m["name"] for m in
                boto3.client("stepfunctions").list_state_machines()["stateMachines"]
                if m["name"] == prefix or m["name"].startswith(f"{prefix}-")]
    groups = [g["Name"] for g in boto3.client("scheduler").list_schedule_groups()["ScheduleGroups"]
              if g["Name"] == prefix]
    schedules = [s["Name"] for s in boto3.client("scheduler").list_schedules()["Schedules"]
                 if s.get("GroupName") == prefix]
    topics = [t["TopicArn"].rsplit(":", 1)[1] for t in boto3.client("sns").list_topics()["Topics"]
              if t["TopicArn"].rsplit(":", 1)[1].startswith(f"{prefix}-")]
    subscriptions = [s["Endpoint"].rsplit(":", 1)[1]
                     for s in boto3.client("sns").list_subscriptions()["Subscriptions"]
                     if s["TopicArn"].rsplit(":", 1)[1].startswith(f"{prefix}-")]
    alarms = [a["AlarmName"] for a in
              boto3.client("cloudwatch").describe_alarms(AlarmNamePrefix=prefix)["MetricAlarms"]]
    logs = boto3.client("logs")
    log_groups = [g["logGroupName"] for g in logs.describe_log_groups()["logGroups"]
                  if g["logGroupName"] in (f"/aws/codebuild/{prefix}",
                                           f"/aws/lambda/{prefix}-notify")]
    found = {"parameters": parameters, "roles": roles, "projects": projects,
             "functions": functions, "state machines": machines, "schedule groups": groups,
             "schedules": schedules, "topics": topics, "subscriptions": subscriptions,
             "alarms": alarms, "log groups": log_groups}
    return {kind: sorted(names) for kind, names in found.items()}


def expected_inventory(prefix: str) -> dict[str, list[str]]:
    databases = ("source", "target")
    settings = ("dbname", "host", "password", "port", "sslmode", "sslrootcert", "user")
    return {
        "parameters": sorted([f"/{prefix}/{d}/{s}" for d in databases for s in settings]
                             + [f"/{prefix}/target/storage", f"/{prefix}-notify/slack_webhook_url"]),
        "roles": sorted(f"{prefix}-{r}" for r in
                        ("codebuild", "lambda", "states", "starter", "scheduler")),
        "projects": [prefix],
        "functions": [f"{prefix}-notify"],
        "state machines": sorted([prefix, f"{prefix}-starter"]),
        "schedule groups": [prefix],
        "schedules": ["nightly"],
        "topics": [f"{prefix}-alarms"],
        "subscriptions": [f"{prefix}-notify"],
        "alarms": sorted([f"{prefix}-run-failed", f"{prefix}-no-successful-run",
                          f"{prefix}-notify-errors"]),
        "log groups": sorted([f"/aws/codebuild/{prefix}", f"/aws/lambda/{prefix}-notify"]),
    }


def nothing_left(prefix: str) -> dict[str, list[str]]:
    return {kind: [] for kind in expected_inventory(prefix)}


def subprocess_env(endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AWS_") and k not in SECRETS}
    env.update(FAKE_AWS_ENV, **SECRETS, AWS_ENDPOINT_URL=endpoint,
               AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent")
    return env


def with_canned_jobs(definition: dict, failing: set[str], canned_result,
                     failed_build=None) -> dict:
    """The definition with each job's task replaced, since moto's engine cannot run it: the
    copy jobs (the Parallel's branches) and the publish step (job name "publish").

    A succeeding job becomes a Pass holding canned_result(job) (what the real task returns),
    then the task's own ResultSelector as a Pass; a failing job's task becomes an sns:publish
    to a missing topic, which fails and goes to the task's own Catch. With failed_build, a
    failing job fails as a build does instead: Error "TaskFailed" (moto refuses a Fail state's
    "States.TaskFailed") and the Cause failed_build(job), as JSON text."""
    rewritten = copy.deepcopy(definition)
    states = rewritten["States"]
    tasks = [(branch["States"], branch["StartAt"])
             for branch in states[deploy.Names.copy_state]["Branches"]]
    publish = deploy.state_machine.publish_branch(rewritten)["States"]
    for where, name in [*tasks, (publish, deploy.Names.publish_state)]:
        task = where[name]
        job = task["ResultSelector"]["job"]
        if job in failing and failed_build:
            kept = {k: task[k] for k in ("Catch", "ResultPath", "Next", "End") if k in task}
            where[name] = {"Type": "Parallel", **kept, "Branches": [{"StartAt": "build", "States": {
                "build": {"Type": "Fail", "Error": "TaskFailed",
                          "Cause": json.dumps(failed_build(job), separators=(",", ":"))}}}]}
        elif job in failing:
            task["Resource"] = "arn:aws:states:::sns:publish"
            task["Parameters"] = {"TopicArn": f"arn:aws:sns:{REGION}:123456789012:missing",
                                  "Message": f"stands in for a failed {job}"}
            del task["ResultSelector"]
        else:
            # the task's result, its ResultSelector, then its ResultPath into the input
            ending = {k: task[k] for k in ("End", "Next", "ResultPath") if k in task}
            where[name] = {"Type": "Pass", "Result": canned_result(job),
                           "ResultPath": "$.canned_result", "Next": f"{name} result"}
            where[f"{name} result"] = {"Type": "Pass", "InputPath": "$.canned_result",
                                       "Parameters": task["ResultSelector"], **ending}
    return rewritten


def queue_lambda_result(result: dict) -> None:
    """The next Lambda invocation in moto's engine returns this (its Lambda code never runs).

    Sent with requests, which moto intercepts in-process (urllib it does not)."""
    requests.post("http://motoapi.amazonaws.com/moto-api/static/lambda-simple/response",
                  json={"results": [json.dumps(result)], "region": REGION}, timeout=5)


def run_to_end(sfn, machine_arn: str, name: str, execution_input: str) -> dict:
    """Start an execution in moto's engine and wait until it is no longer RUNNING."""
    execution = sfn.start_execution(stateMachineArn=machine_arn, name=name,
                                    input=execution_input)["executionArn"]
    deadline = time.monotonic() + 30
    while True:
        described = sfn.describe_execution(executionArn=execution)
        if described["status"] != "RUNNING" or time.monotonic() > deadline:
            return described
        time.sleep(0.05)
