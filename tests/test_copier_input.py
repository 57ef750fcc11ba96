"""What users type: the TABLES list, the settings, the plan. Bad input changes nothing."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from aws_helpers import set_fake_aws_env, subprocess_env

import copier
import runlog

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def named_tables(copier_env):
    copier_env.source(
        'CREATE SCHEMA sales; CREATE SCHEMA "Odd.Schema";'
        'CREATE TABLE orders (id int PRIMARY KEY, note text);'
        'CREATE TABLE "Mixed Case" (id int, "Some Column" text);'
        'CREATE TABLE "Comma, Table" (id int);'
        "CREATE TABLE sales.invoices (id bigint PRIMARY KEY, total numeric);"
        'CREATE TABLE "Odd.Schema"."T" (id int);'
        "INSERT INTO orders VALUES (1, 'one'), (2, 'two');"
        "INSERT INTO \"Mixed Case\" VALUES (1, 'x');"
        "INSERT INTO sales.invoices VALUES (10, 99.5);"
        'INSERT INTO "Odd.Schema"."T" VALUES (5);'
    )
    copier_env.target("CREATE TABLE y (id int); INSERT INTO y VALUES (1)")
    return copier_env


def run_cli(args, env_overrides):
    own = ("SOURCE_DSN", "TARGET_DSN", "TABLES")
    env = {**{k: v for k, v in os.environ.items() if k not in own}, **env_overrides}
    return subprocess.run([sys.executable, str(REPO / "copier.py"), *args], env=env,
                          capture_output=True, text=True, timeout=120)


def target_tables(dbs):
    return dbs.target_rows(
        "SELECT schemaname || '.' || tablename FROM pg_tables "
        "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1")


def test_mixed_case_spaces_schemas_and_quotes(named_tables, run_copier):
    result = run_copier('TABLES= orders , Mixed Case,"Comma, Table", sales.invoices,"Odd.Schema".T')

    assert result.code == 0, result.stderr
    assert sorted(e["table"] for e in result.of("table_copied")) == sorted([
        "public.orders", 'public."Mixed Case"', 'public."Comma, Table"', "sales.invoices",
        '"Odd.Schema"."T"'])
    assert named_tables.target_rows('SELECT * FROM "Mixed Case"') == [(1, "x")]
    assert named_tables.target_rows("SELECT * FROM sales.invoices") == [(10, 99.5)]
    assert named_tables.target_rows('SELECT * FROM "Odd.Schema"."T"') == [(5,)]


def test_unquoted_names_fold_to_lower_case_like_sql(named_tables, run_copier):
    result = run_copier("TABLES=ORDERS,Sales.Invoices")
    assert result.code == 0, result.stderr
    assert sorted(e["table"] for e in result.of("table_copied")) == ["public.orders", "sales.invoices"]


def test_tables_from_the_environment(named_tables, run_copier, monkeypatch):
    monkeypatch.setenv("TABLES", "orders")
    result = run_copier()
    assert result.code == 0, result.stderr
    assert [e["table"] for e in result.of("table_copied")] == ["public.orders"]


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ("orders,nope", "unknown table 'nope': no such table on the source"),
        ("x; DROP TABLE y", "unknown table 'x; DROP TABLE y': no such table on the source"),
        ("orders,public.orders", "table public.orders is listed twice"),
        ("orders,,sales.invoices", "an empty name"),
        ("a.b.c", "malformed table name 'a.b.c': at most schema.table"),
        ('"unclosed', "unclosed quote"),
        ("", "no tables given"),
    ],
)
def test_bad_table_lists_fail_with_one_line_and_touch_nothing(named_tables, tables, message):
    env = {"SOURCE_DSN": named_tables.source_dsn, "TARGET_DSN": named_tables.target_dsn,
           "TABLES": ""}
    result = run_cli([f"TABLES={tables}"], env)

    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("copier: error: ")
    assert message in result.stderr
    assert target_tables(named_tables) == [("public.y",)]
    assert named_tables.target_rows("SELECT * FROM y") == [(1,)]


def test_missing_settings_are_named(named_tables, monkeypatch):
    one_sided = run_cli(["TABLES=orders"], {"SOURCE_DSN": named_tables.source_dsn})
    assert one_sided.returncode == 1
    assert one_sided.stderr.strip() == (
        "copier: error: TARGET_DSN is not set (SOURCE_DSN and TARGET_DSN go together)")


def test_unreachable_database_is_one_line_without_secrets(named_tables):
    result = run_cli(["TABLES=orders"], {
        "SOURCE_DSN": named_tables.source_dsn,
        "TARGET_DSN": "host=127.0.0.1 port=1 dbname=x user=u password=hunter2 connect_timeout=2",
    })
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("copier: error: cannot connect to the target database")
    assert "hunter2" not in result.stderr + result.stdout


def test_dry_run_prints_the_plan_and_changes_nothing(named_tables):
    """The plan is for people, on stderr: stdout stays JSON lines only (here: none)."""
    named_tables.source("INSERT INTO orders SELECT g, repeat('x', 500) FROM generate_series(3, 5000) g;"
                        "ANALYZE orders")
    env = {"SOURCE_DSN": named_tables.source_dsn, "TARGET_DSN": named_tables.target_dsn}
    tables = "TABLES=orders,sales.invoices,Mixed Case"
    result = run_cli([tables, "--jobs", "2", "--dry-run", "--no-split"], env)

    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].split() == ["table", "MB", "rows", "(est.)", "job"]
    plan = {line.split()[0]: line.split() for line in lines[1:] if not line.startswith(("job ", "room "))}
    assert plan["public.orders"][2:] == ["5000", "1"]  # the largest table gets job 1 alone
    assert plan["sales.invoices"][-1] == "2"
    assert plan['public."Mixed'][-1] == "2"
    shares = [line for line in lines if line.startswith("job ")]
    assert shares[0].startswith("job 1: 1 unit(s)") and shares[1].startswith("job 2: 2 unit(s)")
    assert lines[-1].startswith("room on the reporting database: not checked: ")

    # Without --no-split, orders (nearly all the bytes, an integer key) is cut in key ranges of
    # at most half a job's mean share each, spread over both jobs; --json gives the same plan as
    # one JSON line on stdout.
    result = run_cli([tables, "--jobs", "2", "--dry-run", "--json"], env)
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    plan = json.loads(line)
    assert plan["event"] == "plan" and plan["jobs"] == 2 and plan["refused"] == []
    units = {u["unit"]: u for u in plan["units"]}
    slices = sorted(name for name in units if name.startswith("public.orders"))
    assert slices == [f"public.orders#{k}/4" for k in range(1, 5)], units
    assert sorted(units[name]["job"] for name in slices) == [1, 1, 2, 2]
    assert [units[name]["estimated_rows"] for name in slices] == [1250] * 4
    assert units['public."Mixed Case"']["table"] == 'public."Mixed Case"'
    people = [line for line in result.stderr.splitlines()[1:] if not line.startswith(("job ", "room "))]
    assert sorted(line.split("  ")[0] for line in people) == sorted(units)
    assert target_tables(named_tables) == [("public.y",)]


def test_assign_to_jobs_puts_largest_first_on_the_least_loaded_job():
    weights = {"a": 100, "b": 60, "c": 50, "d": 10, "e": 5}
    # a=100 | b=60; c onto b (110); d onto a (110); e onto the first of the tied jobs
    assert runlog.assign_to_jobs(weights, 2) == [["a", "d", "e"], ["b", "c"]]
    assert runlog.assign_to_jobs(weights, 5) == [["a"], ["b"], ["c"], ["d"], ["e"]]
    assert runlog.assign_to_jobs({"x": 1}, 3) == [["x"], [], []]


def help_examples() -> list[str]:
    """The commands under "examples:" in copier.py --help, continuation lines joined."""
    text = run_cli(["--help"], {}).stdout
    section = text.split("examples:\n", 1)[1].split("\nenvironment:", 1)[0]
    commands, current = [], ""
    for line in section.splitlines():
        if not line.strip() or line.startswith("      "):  # a gap, or what the example does
            continue
        current += line.strip()
        if current.endswith("\\"):
            current = current[:-1]
            continue
        commands.append(current)
        current = ""
    return commands


def as_run_here(command: str, dbs) -> str:
    """The example with this Python and copier.py, and the test databases for its DSNs."""
    command = command.replace("python copier.py",
                              f"{shlex.quote(sys.executable)} {shlex.quote(str(REPO / 'copier.py'))}")
    dsns = {"SOURCE_DSN": dbs.source_dsn, "TARGET_DSN": dbs.target_dsn}
    return re.sub(r"\b(SOURCE_DSN|TARGET_DSN)=\S+",
                  lambda m: f"{m.group(1)}={shlex.quote(dsns[m.group(1)])}", command)


def test_every_help_example_runs(copier_env, moto_server, monkeypatch):
    """Each example of copier.py --help, run by the shell as typed; the ones without DSNs read
    their settings from Parameter Store (moto_server), as on AWS."""
    dbs = copier_env
    dbs.source("CREATE SCHEMA sales")
    for table in ("orders", "customers", "order_lines", "sales.orders", '"Mixed Case"'):
        dbs.source(f"CREATE TABLE {table} (id int PRIMARY KEY)")
        dbs.source(f"INSERT INTO {table} SELECT generate_series(1, {len(table)})")
    for name in ("SOURCE_DSN", "TARGET_DSN"):
        monkeypatch.delenv(name)
    set_fake_aws_env(monkeypatch, endpoint=moto_server.url)
    ssm = boto3.client("ssm")
    for database, dbname in (("source", dbs.source_name), ("target", dbs.target_name)):
        for setting, value in {"host": "127.0.0.1", "port": str(dbs.cluster.port),
                               "dbname": dbname, "user": "postgres", "password": "unused",
                               "sslmode": "disable"}.items():
            ssm.put_parameter(Name=f"{runlog.DEFAULT_SSM_PREFIX}{database}/{setting}",
                              Value=value, Type="String")
    env = subprocess_env(moto_server.url)

    def counts(rows) -> dict[str, int]:
        """Rows per user table, by the name the copier logs (quoted where needed)."""
        names = rows("SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) "
                     "FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')")
        return {name: rows(f"SELECT count(*) FROM {name}")[0][0] for (name,) in names}

    examples = help_examples()
    assert len(examples) == 4, examples
    for example in examples:
        before = counts(dbs.target_rows)
        done = subprocess.run(["/bin/sh", "-c", as_run_here(example, dbs)], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{example}\n{done.stderr}"
        copied = {e["table"]: e["rows"] for e in map(json.loads, (
            line for line in done.stdout.splitlines() if line.startswith("{")))
                  if e["event"] in ("table_copied", "table_unchanged")}  # the same data each time
        if "--dry-run" in example:
            assert done.stdout == "" and "orders" in done.stderr
            assert counts(dbs.target_rows) == before
            continue
        (tables,) = [word.removeprefix("TABLES=") for word in shlex.split(example)
                     if word.startswith("TABLES=")]
        assert len(copied) == len(runlog.split_table_list(tables)), (example, copied)
        source, target = counts(dbs.source_rows), counts(dbs.target_rows)
        for table, rows in copied.items():
            assert source[table] == target[table] == rows, (example, table)


def test_json_lines_carry_the_run_and_job_the_state_machine_names(named_tables, run_copier, monkeypatch):
    monkeypatch.setenv("COPIER_RUN", "2026-11-27")
    monkeypatch.setenv("COPIER_JOB", "job-3")
    result = run_copier("TABLES=orders")
    assert result.code == 0, result.stderr
    (copied,) = result.of("table_copied")
    assert (copied["run"], copied["job"]) == ("2026-11-27", "job-3")
    assert result.of("run_finished")[0]["run"] == "2026-11-27"


def test_a_bad_number_in_the_environment_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setenv("COPIER_JOBS", "four")
    with pytest.raises(SystemExit) as exit_info:
        copier.parse_args(["TABLES=t"])
    assert exit_info.value.code == 2
    assert "--jobs: invalid int value: 'four'" in capsys.readouterr().err


def test_a_server_older_than_the_copier_supports_is_named(named_tables, run_copier, monkeypatch):
    monkeypatch.setattr(copier, "OLDEST_SERVER", 990000)

    result = run_copier("TABLES=orders")

    assert result.code == 1
    assert "the source server runs PostgreSQL" in result.stderr
    assert "the copier needs 99 or later" in result.stderr
