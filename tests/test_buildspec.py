"""buildspec.yml: its shape, and its commands run the way CodeBuild runs them, copying real tables.

CodeBuild checks out the repository, runs each phase's commands with /bin/sh in the checkout,
with the project's environment (COPIER_SSM_PREFIX) and the state machine's override (TABLES).
Here the checkout is a fresh directory holding the files the build uses, Python is a fresh
venv, and SOURCE_DSN/TARGET_DSN stand in for Parameter Store.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

import deploy

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def buildspec() -> dict:
    return yaml.safe_load((ROOT / "buildspec.yml").read_text())


def commands(buildspec: dict) -> list[str]:
    return [command for phase in ("install", "pre_build", "build", "post_build")
            for command in buildspec["phases"].get(phase, {}).get("commands", [])]


def test_buildspec_runs_on_a_python_the_project_supports(buildspec):
    """Its commands are run for real below; here only what that run cannot show: the curated
    image's Python it asks for is one the project supports (pyproject's target), and the
    environment (TABLES, COPIER_SSM_PREFIX) is left to the state machine and the project."""
    wanted = tuple(map(int, str(buildspec["phases"]["install"]["runtime-versions"]["python"]).split(".")))
    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]["target-version"]
    assert wanted >= (int(target[2]), int(target[3:]))
    assert "env" not in buildspec


@pytest.fixture(scope="module")
def build_python(tmp_path_factory) -> Path:
    """A fresh venv seeing the packages of the Python running the tests (itself often .venv,
    whose packages --system-site-packages would not see), so pip needs no network."""
    venv = tmp_path_factory.mktemp("codebuild") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "tests_python.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return venv / "bin"


def test_buildspec_commands_copy_the_tables_named_in_TABLES(buildspec, build_python, dbs,
                                                             tmp_path):
    dbs.source("CREATE TABLE orders (id int PRIMARY KEY, customer text NOT NULL, total numeric)")
    dbs.source("INSERT INTO orders SELECT g, 'customer ' || g % 97, g * 1.5 "
               "FROM generate_series(1, 5000) g")
    dbs.source("CREATE SCHEMA sales")
    dbs.source("CREATE TABLE sales.invoices (id bigint PRIMARY KEY, order_id int, paid bool)")
    dbs.source("INSERT INTO sales.invoices SELECT g, g, g % 3 = 0 FROM generate_series(1, 800) g")
    dbs.source("CREATE TABLE not_in_this_job (id int)")
    dbs.source("INSERT INTO not_in_this_job VALUES (1)")

    checkout = tmp_path / "src"
    checkout.mkdir()
    # CodeBuild checks out the repository: every tracked file.
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True,
                             text=True).stdout.split()
    for name in tracked:
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, checkout / name)
    # curl stands in for the download of the RDS CA bundle: nothing here reaches the internet
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    (fakes / "curl").write_text('#!/bin/sh\n'
                                'echo "$@" > "$CODEBUILD_SRC_DIR/curl.args"\n'
                                'while [ "$1" != "-o" ]; do shift; done\n'
                                'echo "-----BEGIN CERTIFICATE-----" > "$2"\n')
    (fakes / "curl").chmod(0o755)
    env = {
        "PATH": f"{fakes}:{build_python}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "CODEBUILD_SRC_DIR": str(checkout),
        "COPIER_SSM_PREFIX": deploy.Names("nightly-copy").ssm_prefix,  # project env
        "TABLES": "public.orders,sales.invoices",  # the state machine's override
        "SOURCE_DSN": dbs.source_dsn,
        "TARGET_DSN": dbs.target_dsn,
        "PIP_NO_INDEX": "1",  # a network-free stand-in for PyPI: all pins are installed
    }
    output = []
    for command in commands(buildspec):
        result = subprocess.run(["/bin/sh", "-c", command], cwd=checkout, env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        output.append(result.stdout)

    assert (checkout / "curl.args").read_text().split()[-1] == deploy.settings.RDS_CA_BUNDLE_URL
    assert (checkout / deploy.settings.RDS_CA_BUNDLE).read_text().startswith("-----BEGIN")
    assert dbs.target_rows("SELECT count(*), sum(id), sum(total) FROM orders") == (
        dbs.source_rows("SELECT count(*), sum(id), sum(total) FROM orders"))
    assert dbs.target_rows("SELECT count(*), count(*) FILTER (WHERE paid) FROM sales.invoices") \
        == [(800, 266)]
    assert dbs.target_rows("SELECT to_regclass('public.not_in_this_job')") == [(None,)]

    # the lines the saved Logs Insights query reads: event, table, rows, seconds
    events = [json.loads(line) for line in output[-1].splitlines() if line.startswith("{")]
    copied = {e["table"]: e for e in events if e.get("event") == "table_copied"}
    assert set(copied) == {"public.orders", "sales.invoices"}
    assert copied["public.orders"]["rows"] == 5000
    assert all(isinstance(e["seconds"], int | float) for e in copied.values())


def test_setup_splits_tables_by_their_size_on_a_reachable_source(dbs, monkeypatch):
    # lives here because it needs the throwaway PostgreSQL, like the buildspec run
    dbs.source("CREATE TABLE big AS SELECT g AS id, repeat('x', 500) AS pad "
               "FROM generate_series(1, 20000) g")
    for name in ("small_1", "small_2", "small_3"):
        dbs.source(f"CREATE TABLE {name} AS SELECT g AS id FROM generate_series(1, 100) g")
    params = dict(item.split("=", 1) for item in dbs.source_dsn.split())
    settings = deploy.Settings(
        tables=["public.big", "public.small_1", "public.small_2", "public.small_3"], jobs=2,
        table_weights={"public.small_1": 1000},  # ignored: the source is reachable
        source={"host": params["host"], "port": params["port"], "dbname": params["dbname"],
                "user": params["user"], "sslmode": "disable"})
    monkeypatch.setenv("COPIER_SOURCE_PASSWORD", "unused-by-a-trust-cluster")
    lines = []
    assert deploy.plan_jobs(settings, lines.append) == [
        ["public.big"], ["public.small_1", "public.small_2", "public.small_3"]]
    assert lines[0] == "table assignment (source table sizes):"


def test_setup_refuses_a_table_the_reachable_source_lacks(dbs, monkeypatch):
    dbs.source("CREATE TABLE orders (id int)")
    params = dict(item.split("=", 1) for item in dbs.source_dsn.split())
    settings = deploy.Settings(
        tables=["orders", "public.ordres"], jobs=2,
        source={"host": params["host"], "port": params["port"], "dbname": params["dbname"],
                "user": params["user"], "sslmode": "disable"})
    monkeypatch.setenv("COPIER_SOURCE_PASSWORD", "unused-by-a-trust-cluster")
    with pytest.raises(deploy.SettingsError, match="ordres"):
        deploy.plan_jobs(settings, lambda line: None)
