"""One error boundary per script: every failure a user can act on is one line on stderr that
says what to do, and exit 1; only a bug shows a traceback.

The scripts run as processes, as users meet them, where the failure needs no AWS at all (no
credentials, no region, nothing listening at the endpoint, a broken config, a usage error);
failures in the middle of a walk run in process under moto.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from aws_helpers import (
    ROOT,
    SECRETS,
    free_port,
    inventory,
    nothing_left,
    write_config,
)
from botocore.client import BaseClient
from botocore.exceptions import ClientError, EndpointConnectionError

import deploy
import operations
import runlog
import setup_aws
from deploy.cli import run_guarded
from dev import demo

SCRIPTS = {
    "setup_aws.py": [],
    "teardown_aws.py": [],
    "operations.py": ["report"],
}


def offline_env(**changes: str | None) -> dict[str, str]:
    """Fake credentials and a region, no AWS config files, no instance metadata lookups;
    a value of None removes the variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k not in SECRETS}
    env.update(SECRETS, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1",
               AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
               AWS_EC2_METADATA_DISABLED="true",
               # nothing listens there: a call that got past the failure under test fails too
               AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}")
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


# (failure, environment changes, config overrides, extra argv, what the line must say)
FAILURES = [
    ("no credentials", {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}, {}, [],
     ["Unable to locate credentials", "AWS_PROFILE", "AWS_ACCESS_KEY_ID"]),
    ("unknown profile", {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None,
                         "AWS_PROFILE": "no-such-profile"}, {}, [],
     ["no-such-profile", "could not be found", "AWS_PROFILE"]),
    ("no region", {"AWS_REGION": None, "AWS_DEFAULT_REGION": None}, {"region": ""}, [],
     ["no AWS region", "AWS_REGION"]),
    ("endpoint unreachable", {}, {}, [],
     ["Could not connect to the endpoint URL", "check the network", "AWS_ENDPOINT_URL"]),
    ("broken config", {}, {"jobs": "three"}, [], ["jobs must be a whole number"]),
    ("usage error", {}, {}, ["--no-such-flag"], ["unrecognized arguments: --no-such-flag",
                                                 "--help"]),
]


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("failure, env_changes, settings, argv, says", FAILURES,
                         ids=[f[0] for f in FAILURES])
def test_each_expected_failure_is_one_line_and_exit_1(tmp_path, script, failure, env_changes,
                                                      settings, argv, says):
    config = write_config(tmp_path / "deploy.toml", **settings)
    done = subprocess.run(
        [sys.executable, str(ROOT / script), *SCRIPTS[script], "--config", str(config), *argv],
        env=offline_env(**env_changes), cwd=tmp_path, capture_output=True, text=True,
        timeout=60)
    assert (done.returncode, done.stdout) == (1, ""), done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    for text in says:
        assert text in done.stderr


def test_a_config_file_that_is_not_toml_is_one_line(tmp_path):
    config = tmp_path / "deploy.toml"
    config.write_text("tables = [public.a\n")
    done = subprocess.run([sys.executable, str(ROOT / "setup_aws.py"), "--config", str(config)],
                          env=offline_env(), cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"error: config file {config}: ")


# --- failures in the middle of a walk, in process under moto


def network_drops_on(monkeypatch, *operations_failing: str) -> None:
    """These API operations fail as a dropped network does (EndpointConnectionError)."""
    real = BaseClient._make_api_call

    def call(self, operation_name, api_params):
        if operation_name in operations_failing:
            raise EndpointConnectionError(endpoint_url="https://example.amazonaws.com/")
        return real(self, operation_name, api_params)

    monkeypatch.setattr(BaseClient, "_make_api_call", call)


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_the_network_dropping_while_checking_the_image_is_one_line(aws, tmp_path, capsys,
                                                                    monkeypatch):
    config = write_config(tmp_path / "deploy.toml", custom_image=True)
    network_drops_on(monkeypatch, "DescribeImages")
    assert setup_aws.main(["--config", str(config), "--dry-run"]) == 1
    err = one_line(capsys)
    assert err.startswith("error: ECR repository nightly-copy: Could not connect")
    assert "check the network" in err


@pytest.mark.parametrize("failing", ["DescribeExecution", "StartExecution"])
def test_the_network_dropping_while_starting_a_run_is_one_line(aws, tmp_path, capsys,
                                                               monkeypatch, failing):
    config = write_config(tmp_path / "deploy.toml")
    assert setup_aws.main(["--config", str(config)]) == 0
    capsys.readouterr()
    network_drops_on(monkeypatch, failing)
    assert setup_aws.main(["--config", str(config), "--start", "--date", "2026-11-27"]) == 1
    err = one_line(capsys)
    assert err.startswith("error: state machine nightly-copy: Could not connect")


def test_the_network_dropping_mid_walk_names_the_resource(aws, tmp_path, capsys, monkeypatch):
    config = write_config(tmp_path / "deploy.toml")
    network_drops_on(monkeypatch, "CreateStateMachine")
    assert setup_aws.main(["--config", str(config)]) == 1
    assert one_line(capsys).startswith("error: state machine nightly-copy: Could not connect")


def test_a_report_whose_calls_fail_is_one_line(aws, tmp_path, capsys, monkeypatch):
    config = write_config(tmp_path / "deploy.toml")
    network_drops_on(monkeypatch, "ListExecutions")
    assert operations.main(["report", "--config", str(config)]) == 1
    assert "Could not connect" in one_line(capsys)


def test_expired_credentials_say_to_renew_them(aws, tmp_path, capsys, monkeypatch):
    config = write_config(tmp_path / "deploy.toml")
    real = BaseClient._make_api_call

    def expired(self, operation_name, api_params):
        if operation_name == "GetCallerIdentity":
            raise ClientError({"Error": {"Code": "ExpiredToken", "Message":
                                         "The security token included in the request is expired"}},
                              operation_name)
        return real(self, operation_name, api_params)

    monkeypatch.setattr(BaseClient, "_make_api_call", expired)
    assert setup_aws.main(["--config", str(config)]) == 1
    assert one_line(capsys) == (
        "error: AWS account: GetCallerIdentity: ExpiredToken: The security token included in "
        "the request is expired; the AWS credentials have expired: renew them (aws sso login) "
        "and run again\n")


def test_the_source_failing_while_measuring_tables_is_one_line(aws, dbs, tmp_path, capsys,
                                                               at_moment):
    """The source answers, then its server ends the session (a restart, a failover)."""
    params = dict(item.split("=", 1) for item in dbs.source_dsn.split())
    config = write_config(tmp_path / "deploy.toml")
    config.write_text(config.read_text().replace('port = "1"', f'port = "{params["port"]}"')
                      .replace('dbname = "shop"', f'dbname = "{params["dbname"]}"')
                      .replace('user = "reader"', f'user = "{params["user"]}"'))
    config.write_text(config.read_text().replace("[source]", '[source]\nsslmode = "disable"'))

    def terminated(conn):  # its server ends the session, as a restart would
        with conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    at_moment("measuring", terminated)
    assert setup_aws.main(["--config", str(config)]) == 1
    err = one_line(capsys)
    assert err.startswith("error: source database: server closed the connection "
                          "unexpectedly: run again when it answers")
    assert inventory("nightly-copy") == nothing_left("nightly-copy")


# --- the boundary itself, and the demo's


@pytest.mark.parametrize("failure", [
    deploy.SettingsError("tables: give at least one table"),
    deploy.AwsError("IAM role x: CreateRole: AccessDenied: no"),
    ClientError({"Error": {"Code": "Throttling", "Message": "Rate\nexceeded"}}, "ListRoles"),
    EndpointConnectionError(endpoint_url="https://sts.amazonaws.com/"),
    deploy.plan.SourceError("source database: server closed the connection unexpectedly: run "
                            "again when it answers"),
    runlog.CopierError("the source server runs PostgreSQL 12; the copier needs 13 or later"),
], ids=type)
def test_every_expected_failure_class_is_one_line_and_exit_1(capsys, failure):
    def body() -> int:
        raise failure

    assert run_guarded(body) == 1
    assert one_line(capsys).startswith("error: ")


def test_a_bug_keeps_its_traceback():
    def body() -> int:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run_guarded(body)


def test_ctrl_c_is_one_line_and_exit_130(capsys):
    def body() -> int:
        raise KeyboardInterrupt

    assert run_guarded(body) == 130
    assert one_line(capsys).startswith("interrupted: run the command again")


class Unreachable:
    """A cluster nobody listens for: what the demo meets when its server went away."""

    port = free_port()

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user=postgres connect_timeout=5"


def test_the_demo_s_errors_are_one_line(monkeypatch, capsys):
    monkeypatch.setattr(demo, "ensure_cluster", Unreachable)
    assert demo.main([]) == 1
    err = one_line(capsys)
    assert err.startswith("demo: error: connection to server at \"127.0.0.1\"")
