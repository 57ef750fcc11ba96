"""Settings from SSM Parameter Store, the way the copier runs in CodeBuild (moto stands in)."""

import boto3
import pytest
from moto import mock_aws

import copier
import runlog

PREFIX = "/copier-test/"


@pytest.fixture
def ssm(copier_env, monkeypatch):
    for name in ("SOURCE_DSN", "TARGET_DSN"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("COPIER_SSM_PREFIX", PREFIX.rstrip("/"))  # the trailing slash is optional
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        client = boto3.client("ssm")
        cluster = copier_env.cluster
        for db, name in (("source", copier_env.source_name), ("target", copier_env.target_name)):
            values = {"host": "127.0.0.1", "port": str(cluster.port), "dbname": name,
                      "user": "postgres", "password": "s3cret-password", "sslmode": "disable"}
            for setting, value in values.items():
                kind = "SecureString" if setting in runlog.SECRET_SETTINGS else "String"
                client.put_parameter(Name=f"{PREFIX}{db}/{setting}", Value=value, Type=kind)
        yield client


def test_copies_with_settings_from_parameter_store(ssm, copier_env, run_copier):
    copier_env.source("CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2)")
    result = run_copier("TABLES=t")

    assert result.code == 0, result.stderr
    assert copier_env.target_rows("SELECT count(*) FROM t") == [(2,)]
    assert "s3cret-password" not in result.stderr + repr(result.events)


def test_defaults_fill_optional_settings(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    settings = {f"/p/{db}/{name}": "x" for db in runlog.DATABASES
                for name in ("host", "dbname", "user", "password")}
    with mock_aws():
        client = boto3.client("ssm")
        for name, value in settings.items():
            client.put_parameter(Name=name, Value=value, Type="String")
        read = copier.read_ssm_settings("/p/")
    assert read["source"] == {"host": "x", "port": "5432", "dbname": "x", "user": "x",
                              "password": "x", "sslmode": "require", "sslrootcert": "default"}


def test_a_missing_parameter_is_named(ssm, copier_env, run_copier):
    ssm.delete_parameter(Name=f"{PREFIX}target/host")
    copier_env.source("CREATE TABLE t (id int)")
    result = run_copier("TABLES=t")

    assert result.code == 1
    assert result.stderr.strip() == (
        f"copier: error: missing SSM parameter {PREFIX}target/host; "
        "run setup_aws.py, or set SOURCE_DSN and TARGET_DSN for a local run")
    assert copier_env.target_rows("SELECT count(*) FROM pg_class WHERE relname = 't'") == [(0,)]


def test_several_missing_parameters_are_counted(ssm, run_copier):
    for setting in ("host", "user"):
        ssm.delete_parameter(Name=f"{PREFIX}source/{setting}")
    result = run_copier("TABLES=t")
    assert result.code == 1
    assert f"missing SSM parameter {PREFIX}source/host (and 1 more)" in result.stderr
