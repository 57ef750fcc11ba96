"""operations.py under moto: run reports and rebalancing from the copier's log lines.

The nightly state machine is deployed by setup, as a user would. moto cannot run CodeBuild,
so the runs with a Parallel result are executed in moto's engine on a copy whose build tasks
are Pass states holding a canned build (or a failing sns:publish); the copier's JSON lines
are written with put_log_events, one stream per job as CodeBuild does.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import time
from pathlib import Path

import boto3
import pytest
from aws_helpers import (
    MOTO_CONFIG,
    REGION,
    queue_lambda_result,
    run_to_end,
    set_fake_aws_env,
    with_canned_jobs,
    write_config,
)
from moto import mock_aws
from moto.stepfunctions.parser.backend.execution import Execution
from test_timeline import bars, lanes, outcome, parsed, title, total

import deploy
import operations
import setup_aws

ACCOUNT = "123456789012"
MACHINE = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:nightly-copy"
LOG_GROUP = "/aws/codebuild/nightly-copy"

# The split setup makes from write_config's weights (a=10, b=4, the rest 1) over 3 jobs.
SETUP_SPLIT = [["public.a"], ["public.b", "public.g"],
               ["public.c", "public.d", "public.e", "public.f"]]
# Seconds per table in the three successful runs; public.g has no history.
SECONDS = {
    "2026-11-24": {"public.a": 2300, "public.b": 300, "public.c": 900, "public.d": 800,
                   "public.e": 700, "public.f": 600},
    "2026-11-25": {"public.a": 2600, "public.b": 310, "public.c": 880, "public.d": 790,
                   "public.e": 700, "public.f": 620},
    "2026-11-26": {"public.a": 2400, "public.b": 290, "public.c": 950, "public.d": 820,
                   "public.e": 710, "public.f": 590},
}
BYTES = {"public.a": 1_200_000_000, "public.b": 290_000_000, "public.c": 380_000_000,
         "public.d": 656_000_000, "public.e": 71_000_000, "public.f": 1_180_000_000}
ROWS = {"public.a": 5_000_000, "public.b": 290_000, "public.c": 1_000_000,
        "public.d": 2_000_000, "public.e": 10_000, "public.f": 3_000_000}
# Canned builds: job-1 40 minutes, job-2 17m 53s, job-3 50 minutes, then the publish 5 minutes.
BUILD_TIMES = {"job-1": ("2026-11-27T03:00:05Z", "2026-11-27T03:40:05Z"),
               "job-2": ("2026-11-27T03:00:07Z", "2026-11-27T03:18:00Z"),
               "job-3": ("2026-11-27T03:00:09Z", "2026-11-27T03:50:09Z"),
               "publish": ("2026-11-27T03:50:20Z", "2026-11-27T03:55:20Z")}


def moto_with_executions(patch: pytest.MonkeyPatch):
    set_fake_aws_env(patch)
    # moto 5.2 deep-copies the state machine, its finished executions (and their thread
    # locks) included, on every start: a second execution of one machine fails to pickle.
    patch.setattr(Execution, "__deepcopy__", lambda self, memo: self, raising=False)
    return mock_aws(config={**MOTO_CONFIG, "stepfunctions": {"execute_state_machine": True}})


def deployed(directory: Path, prefix: str = "nightly-copy") -> Path:
    """setup_aws.py's deployment of write_config's settings, from that directory."""
    path = write_config(directory / "deploy.toml", prefix=prefix)
    assert setup_aws.main(["--config", str(path)]) == 0
    return path


@pytest.fixture
def config(tmp_path, monkeypatch, capsys):
    """A deployment with no runs yet, in an account of its own."""
    with moto_with_executions(monkeypatch):
        monkeypatch.chdir(tmp_path)  # no deploy.toml from the working tree
        path = deployed(tmp_path, prefix="unmeasured-copy")
        capsys.readouterr()
        yield path


def run(argv, capsys) -> tuple[int, str, str]:
    code = operations.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def definition() -> dict:
    sfn = boto3.client("stepfunctions")
    return json.loads(sfn.describe_state_machine(stateMachineArn=MACHINE)["definition"])


def set_definition(new: dict) -> None:
    boto3.client("stepfunctions").update_state_machine(stateMachineArn=MACHINE,
                                                       definition=json.dumps(new))


def canned_build(job: str) -> dict:
    start, end = BUILD_TIMES[job]
    return {"Build": {"Id": f"nightly-copy:{job}", "BuildStatus": "SUCCEEDED",
                      "Logs": {"DeepLink": f"https://console.example/{job}"},
                      "StartTime": start, "EndTime": end}}


def without_codebuild(deployed: dict, failing: set[str]) -> dict:
    return with_canned_jobs(deployed, failing, canned_build)


def run_nightly(name: str) -> dict:
    queue_lambda_result({"posted": True})
    return run_to_end(boto3.client("stepfunctions"), MACHINE, name, json.dumps({"date": name}))

def run_in_moto(name: str, failing: set[str] = frozenset()) -> dict:
    """One execution of the deployed definition with its builds stood in for."""
    deployed = definition()
    set_definition(without_codebuild(deployed, failing))
    try:
        return run_nightly(name)
    finally:
        set_definition(deployed)


_streams = iter(range(1, 1000))


def put_lines(*lines: dict) -> None:
    """One job's build: its own log stream holding the copier's JSON lines, in order."""
    logs = boto3.client("logs")
    stream = f"nightly-copy/build-{next(_streams)}"
    logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)
    now = int(time.time() * 1000)
    logs.put_log_events(logGroupName=LOG_GROUP, logStreamName=stream, logEvents=[
        {"timestamp": now + i, "message": json.dumps(line)} for i, line in enumerate(lines)])


def copied(run_name: str, job: str, table: str, seconds: float) -> dict:
    return {"event": "table_copied", "table": table, "job": job, "rows": ROWS[table],
            "bytes": BYTES[table], "seconds": seconds, "run": run_name, "steps": steps(seconds)}


def steps(seconds: float) -> dict[str, float]:
    """Where a table's seconds went, as the copier logs them (runlog.STEPS)."""
    return {"stage": 1.0, "load": round(seconds * 0.6, 3), "index": round(seconds * 0.3, 3),
            "analyze": round(seconds * 0.1 - 1.5, 3), "swap": 0.5}


def unchanged(run_name: str, job: str, table: str, seconds: float) -> dict:
    return {"event": "table_unchanged", "table": table, "job": job, "rows": ROWS[table],
            "bytes": BYTES[table], "seconds": seconds, "snapshot": 1, "found": "before loading",
            "steps": {"stage": 0.5, "load": seconds - 1.0, "verify": 0.5}, "run": run_name}


def log_successful_run(run_name: str, split=SETUP_SPLIT) -> None:
    for number, tables in enumerate(split, start=1):
        job = f"job-{number}"
        put_lines(*[copied(run_name, job, t, SECONDS[run_name][t])
                    for t in tables if t in SECONDS[run_name]],
                  {"event": "run_finished", "tables": len(tables), "failed": 0,
                   "seconds": 1.0, "run": run_name})


@pytest.fixture(scope="module")
def recorded_history(tmp_path_factory):
    """Setup, then three successful runs, one failed run and one that never got past its
    builds: made once for the module (it takes seconds); `history` hands it to each test."""
    directory = tmp_path_factory.mktemp("history")
    with pytest.MonkeyPatch.context() as patch, moto_with_executions(patch):
        patch.chdir(directory)
        path = deployed(directory)
        yield record_runs(path)


def record_runs(path: Path) -> Path:
    for day in SECONDS:
        assert run_in_moto(day)["status"] == "SUCCEEDED"
        log_successful_run(day)
    assert run_in_moto("2026-11-27", failing={"job-2"})["status"] == "FAILED"
    put_lines(copied("2026-11-27", "job-1", "public.a", 9000.0))  # a failed run: not measured
    put_lines(unchanged("2026-11-27", "job-3", "public.e", 30.0),
              {"event": "run_finished", "tables": 4, "failed": 0, "unchanged": 1,
               "seconds": 3000.0, "run": "2026-11-27"})
    # The deployed definition itself: moto cannot run CodeBuild, so the Parallel state never
    # finishes, like a run stopped or timed out on AWS. Only the log lines tell.
    assert run_nightly("2026-11-28")["status"] == "FAILED"
    put_lines(copied("2026-11-28", "job-1", "public.a", 2500.0),
              {"event": "run_finished", "tables": 1, "failed": 0, "seconds": 2510.5,
               "run": "2026-11-28"})
    put_lines(copied("2026-11-28", "job-2", "public.b", 300.0),
              {"event": "table_failed", "table": "public.g", "job": "job-2",
               "error": "value too long for type character varying(20)", "seconds": 12.5,
               "run": "2026-11-28"},
              {"event": "run_finished", "tables": 2, "failed": 1, "seconds": 313.0,
               "run": "2026-11-28"})
    put_lines(copied("2026-11-28", "job-3", "public.c", 900.0),
              copied("2026-11-28", "job-3", "public.d", 800.0),
              unchanged("2026-11-28", "job-3", "public.e", 20.0))
    put_lines({"event": "table_copied", "table": "public.zz", "job": "job-1", "rows": 1,
               "bytes": 1, "seconds": 1.0, "run": "2026-11-14"},  # another run's line
              {"event": "table_progress", "table": "public.a", "job": "job-1",
               "bytes": 5, "seconds": 3.0, "run": "2026-11-26"})
    return path


@pytest.fixture
def history(recorded_history, capsys):
    """The recorded runs; whatever a test deploys (rebalance --apply, setup) is undone after."""
    capsys.readouterr()
    before = definition()
    yield recorded_history
    set_definition(before)


# --- report: one run's tables


def test_report_of_one_run_lists_its_tables_slowest_first(history, capsys):
    code, out, _ = run(["report", "2026-11-26", "--config", str(history)], capsys)
    assert code == 0
    assert out.splitlines() == [
        "table     job       rows      MB  seconds  MB/s  slices  status",
        "public.a  job-1  5000000  1200.0   2400.0  0.50       -  copied",
        "public.c  job-3  1000000   380.0    950.0  0.40       -  copied",
        "public.d  job-3  2000000   656.0    820.0  0.80       -  copied",
        "public.e  job-3    10000    71.0    710.0  0.10       -  copied",
        "public.f  job-3  3000000  1180.0    590.0  2.00       -  copied",
        "public.b  job-2   290000   290.0    290.0  1.00       -  copied",
        "steps of the 5 slowest:",
        "  public.a   2400.0  stage 1.0s · load 24m 00s · index 12m 00s · analyze 3m 58s · swap 0.5s",
        "  public.c    950.0  stage 1.0s · load 9m 30s · index 4m 45s · analyze 1m 34s · swap 0.5s",
        "  public.d    820.0  stage 1.0s · load 8m 12s · index 4m 06s · analyze 1m 20s · swap 0.5s",
        "  public.e    710.0  stage 1.0s · load 7m 06s · index 3m 33s · analyze 1m 10s · swap 0.5s",
        "  public.f    590.0  stage 1.0s · load 5m 54s · index 2m 57s · analyze 57.5s · swap 0.5s",
    ]


# a one-phase run's lines: no slices, no load or publish of their own
ONE_PHASE = {"slices": None, "load_seconds": None, "publish_seconds": None, "jobs": [],
             "where": None, "found": None}


def test_report_of_one_run_as_json_with_a_failed_table(history, capsys):
    code, out, _ = run(["report", "2026-11-28", "--json", "--config", str(history)], capsys)
    assert code == 0
    assert json.loads(out) == {"execution": "2026-11-28", "tables": [
        {"table": "public.a", "job": "job-1", "status": "copied", "rows": 5_000_000,
         "bytes": 1_200_000_000, "mb": 1200.0, "seconds": 2500.0, "mb_per_second": 0.48,
         "error": None, **ONE_PHASE, "steps": steps(2500.0)},
        {"table": "public.c", "job": "job-3", "status": "copied", "rows": 1_000_000,
         "bytes": 380_000_000, "mb": 380.0, "seconds": 900.0, "mb_per_second": 0.422,
         "error": None, **ONE_PHASE, "steps": steps(900.0)},
        {"table": "public.d", "job": "job-3", "status": "copied", "rows": 2_000_000,
         "bytes": 656_000_000, "mb": 656.0, "seconds": 800.0, "mb_per_second": 0.82,
         "error": None, **ONE_PHASE, "steps": steps(800.0)},
        {"table": "public.b", "job": "job-2", "status": "copied", "rows": 290_000,
         "bytes": 290_000_000, "mb": 290.0, "seconds": 300.0, "mb_per_second": 0.967,
         "error": None, **ONE_PHASE, "steps": steps(300.0)},
        {"table": "public.e", "job": "job-3", "status": "unchanged", "rows": 10_000,
         "bytes": 71_000_000, "mb": 71.0, "seconds": 20.0, "mb_per_second": 3.55,
         "error": None, **ONE_PHASE, "found": "before loading",
         "steps": {"stage": 0.5, "load": 19.0, "verify": 0.5}},
        {"table": "public.g", "job": "job-2", "status": "FAILED", "rows": None, "bytes": None,
         "mb": None, "seconds": 12.5, "mb_per_second": None,
         "error": "value too long for type character varying(20)", **ONE_PHASE,
         "where": "job-2", "steps": {}},
    ]}


def test_report_of_an_unknown_run_is_one_line_and_exit_1(history, capsys):
    code, out, err = run(["report", "2026-01-01", "--config", str(history)], capsys)
    assert (code, out) == (1, "")
    assert err == ("error: no copier log lines for run '2026-01-01' and no execution named "
                   "2026-01-01 in /aws/codebuild/nightly-copy: `operations.py report` lists "
                   "the recent runs\n")


def test_report_of_one_run_writes_its_timeline_page(history, capsys, tmp_path):
    page = tmp_path / "night.html"
    _, table, _ = run(["report", "2026-11-28", "--config", str(history)], capsys)
    code, out, err = run(["report", "2026-11-28", "--html", str(page), "--config", str(history)],
                         capsys)
    assert (code, out) == (0, table)  # the tables as without --html
    assert err == f"wrote {page}: the timeline of nightly-copy run 2026-11-28\n"
    root = parsed(page.read_text(encoding="utf-8"))
    assert lanes(root) == ["job-1", "job-2", "job-3"]
    found = bars(root)  # not public.zz: another run's line
    assert {t: (outcome(b), title(b).splitlines()[1].split(",")[0]) for t, b in found.items()} == {
        "public.a": ("copied", "job-1"), "public.b": ("copied", "job-2"),
        "public.g": ("failed", "job-2"), "public.c": ("copied", "job-3"),
        "public.d": ("copied", "job-3"), "public.e": ("unchanged", "job-3")}
    assert "error: value too long for type character varying(20)" in title(found["public.g"])
    assert "5,000,000 rows, 1,200.0 MB in 2500.0 s: 0.48 MB/s" in title(found["public.a"])
    assert (total(root, "tables"), total(root, "failed"), total(root, "unchanged")) == ("6", "1", "1")

    code, out, err = run(["report", "2026-11-28", "--json", "--html", str(page),
                          "--config", str(history)], capsys)
    assert code == 0 and json.loads(out)["execution"] == "2026-11-28"


def test_report_html_needs_a_run(history, capsys, tmp_path):
    code, out, err = run(["report", "--html", str(tmp_path / "x.html"), "--config", str(history)],
                         capsys)
    assert (code, out) == (1, "")
    assert err == ("error: --html draws one run: name it (`operations.py report DATE --html "
                   "FILE`; `operations.py report` lists the recent runs)\n")
    assert list(tmp_path.iterdir()) == []  # no page written


# --- report: the recent runs


def jobs_of(entry: dict) -> list[tuple]:
    return [(j["job"], j["status"], j["seconds"], j["tables"]) for j in entry["jobs"]]


def test_report_lists_the_last_runs_newest_first_with_their_jobs(history, capsys):
    code, out, _ = run(["report", "--json", "--config", str(history)], capsys)
    assert code == 0
    runs = json.loads(out)
    assert [(r["execution"], r["status"], r["jobs_from"]) for r in runs] == [
        ("2026-11-28", "FAILED", "logs"), ("2026-11-27", "FAILED", "history"),
        ("2026-11-26", "SUCCEEDED", "history"), ("2026-11-25", "SUCCEEDED", "history"),
        ("2026-11-24", "SUCCEEDED", "history")]
    for entry in runs:
        assert entry["start"].endswith("Z") and entry["stop"].endswith("Z")
    # the publish's result lists no tables: it gets every table of the jobs' units, once
    every_table = ["public.a", "public.b", "public.g", "public.c", "public.d", "public.e",
                   "public.f"]
    success = [("job-1", "SUCCEEDED", 2400.0, ["public.a"]),
               ("job-2", "SUCCEEDED", 1073.0, ["public.b", "public.g"]),
               ("job-3", "SUCCEEDED", 3000.0, ["public.c", "public.d", "public.e", "public.f"]),
               ("publish", "SUCCEEDED", 300.0, every_table)]
    assert jobs_of(runs[2]) == jobs_of(runs[3]) == jobs_of(runs[4]) == success
    assert jobs_of(runs[1])[3] == ("publish", "SUCCEEDED", 300.0, every_table)
    failed = runs[1]["jobs"][1]
    assert (failed["job"], failed["status"], failed["seconds"], failed["tables"],
            failed["error"]) == ("job-2", "FAILED", None, ["public.b", "public.g"],
                                 "SNS.NotFoundException")
    assert jobs_of(runs[0]) == [  # from the log lines: run_finished's seconds, or the sum
        ("job-1", "SUCCEEDED", 2510.5, ["public.a"]),
        ("job-2", "FAILED", 313.0, ["public.b", "public.g"]),
        ("job-3", "UNFINISHED", 1720.0, ["public.c", "public.d", "public.e"])]
    # The tables found unchanged, by job: from the log lines, whichever way the jobs were read.
    assert [(r["unchanged"], [j["unchanged"] for j in r["jobs"]]) for r in runs] == [
        (1, [0, 0, 1]), (1, [0, 0, 1, 0]), (0, [0, 0, 0, 0]), (0, [0, 0, 0, 0]),
        (0, [0, 0, 0, 0])]

    code, out, _ = run(["report", "--last", "2", "--json", "--config", str(history)], capsys)
    assert [r["execution"] for r in json.loads(out)] == ["2026-11-28", "2026-11-27"]


def test_report_of_the_last_runs_for_people(history, capsys):
    code, out, _ = run(["report", "--last", "3", "--config", str(history)], capsys)
    assert code == 0
    # moto starts the executions now and runs them in about a second
    out = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d  \ds ", "YYYY-MM-DD hh:mm:ss  Ns ", out)
    lines = out.splitlines()
    assert lines[:12] == [
        "execution   status     start (UTC)          duration  job      job status"
        "  job duration  unchanged  tables",
        "2026-11-28  FAILED     YYYY-MM-DD hh:mm:ss  Ns        job-1    SUCCEEDED "
        "  41m 50s               0  public.a",
        "                                                      job-2    FAILED    "
        "  5m 13s                0  public.b,public.g",
        "                                                      job-3    UNFINISHED"
        "  28m 40s               1  public.c,public.d,public.e",
        "2026-11-27  FAILED     YYYY-MM-DD hh:mm:ss  Ns        job-1    SUCCEEDED "
        "  40m 00s               0  public.a",
        "                                                      job-2    FAILED      -  "
        "                   0  public.b,public.g",
        "                                                      job-3    SUCCEEDED "
        "  50m 00s               1  public.c,public.d,public.e,public.f",
        "                                                      publish  SUCCEEDED "
        "  5m 00s                0  public.a,public.b,public.g,public.c,public.d,public.e,"
        "public.f",
        "2026-11-26  SUCCEEDED  YYYY-MM-DD hh:mm:ss  Ns        job-1    SUCCEEDED "
        "  40m 00s               0  public.a",
        "                                                      job-2    SUCCEEDED "
        "  17m 53s               0  public.b,public.g",
        "                                                      job-3    SUCCEEDED "
        "  50m 00s               0  public.c,public.d,public.e,public.f",
        "                                                      publish  SUCCEEDED "
        "  5m 00s                0  public.a,public.b,public.g,public.c,public.d,public.e,"
        "public.f",
    ]
    assert lines[12] == ("2026-11-28: per job from the copier's log lines (the Parallel state "
                         "has no result: still running, stopped or timed out)")
    assert lines[13].startswith("2026-11-27 job-2: SNS.NotFoundException: Endpoint does not "
                                "exist")
    assert len(lines) == 14


# --- rebalance

# Medians: a 2400, b 300, c 900, d 800, e 700, f 600; g has none: the median of those, 750.
# Largest first onto the least-loaded job: a | c, e, b | d, g, f.
PROPOSED = [["public.a"], ["public.c", "public.e", "public.b"],
            ["public.d", "public.g", "public.f"]]


def test_rebalance_proposes_from_medians_and_points_out_the_bounding_table(history, capsys):
    code, out, _ = run(["rebalance", "--json", "--config", str(history)], capsys)
    assert code == 0
    result = json.loads(out)
    assert result["runs"] == ["2026-11-26", "2026-11-25", "2026-11-24"]  # successful only
    assert {t: e["seconds"] for t, e in result["estimates"].items()} == {
        "public.a": 2400, "public.b": 300, "public.c": 900, "public.d": 800, "public.e": 700,
        "public.f": 600, "public.g": 750}
    assert result["estimates"]["public.g"]["basis"] == "no history: median of measured tables"
    assert [j["tables"] for j in result["current"]["jobs"]] == SETUP_SPLIT
    assert [j["seconds"] for j in result["current"]["jobs"]] == [2400, 1050, 3000]
    assert result["current"]["longest"] == {"job": "job-3", "seconds": 3000}
    assert [j["tables"] for j in result["proposed"]["jobs"]] == PROPOSED
    assert [j["seconds"] for j in result["proposed"]["jobs"]] == [2400, 1900, 2150]
    assert result["proposed"]["longest"] == {"job": "job-1", "seconds": 2400}
    assert result["bounding"] == [{"table": "public.a", "job": "job-1", "seconds": 2400,
                                   "rest_seconds": 0}]
    assert result["applied"] is None
    assert definition()["States"][deploy.Names.copy_state]["Branches"][1]["States"]["job-2"][
        "Parameters"]["EnvironmentVariablesOverride"][0]["Value"] == "public.b,public.g"


def test_rebalance_for_people(history, capsys):
    code, out, _ = run(["rebalance", "--config", str(history)], capsys)
    assert code == 0
    assert out.splitlines() == [
        "per-table seconds: median over 3 successful run(s) (2026-11-26, 2026-11-25, "
        "2026-11-24)",
        "  public.g: 750 s (no history: median of measured tables)",
        "current (state machine nightly-copy):",
        "  job    predicted  tables",
        "  job-1    40m 00s  public.a",
        "  job-2    17m 30s  public.b,public.g",
        "  job-3    50m 00s  public.c,public.d,public.e,public.f",
        "  longest: job-3, 50m 00s",
        "proposed:",
        "  job    predicted  tables",
        "  job-1    40m 00s  public.a",
        "  job-2    31m 40s  public.c,public.e,public.b",
        "  job-3    35m 50s  public.d,public.g,public.f",
        "  longest: job-1, 40m 00s",
        "warning: public.a alone takes 40m 00s, longer than the rest of job-1 (0s): it bounds "
        "the run; splitting the table or a bigger compute type is what shortens the run, not "
        "rebalancing",
        "not applied: add --apply to update the state machine",
    ]


def test_rebalance_over_fewer_runs_takes_their_median(history, capsys):
    code, out, _ = run(["rebalance", "--runs", "2", "--json", "--config", str(history)],
                       capsys)
    result = json.loads(out)
    assert result["runs"] == ["2026-11-26", "2026-11-25"]
    assert result["estimates"]["public.a"]["seconds"] == 2500  # (2400 + 2600) / 2
    assert result["estimates"]["public.b"]["basis"] == "median of 2 run(s)"


def test_a_table_without_history_is_estimated_from_its_size_when_the_source_answers(
        history, capsys, monkeypatch):
    sizes = {**{t: float(b) for t, b in BYTES.items()}, "public.g": 2e9}
    monkeypatch.setattr(operations, "table_weights",
                        lambda settings, out: deploy.plan.Weights(sizes, "source table sizes"))
    code, out, _ = run(["rebalance", "--json", "--config", str(history)], capsys)
    result = json.loads(out)
    rate = 3 * sum(BYTES.values()) / sum(sum(run.values()) for run in SECONDS.values())
    g = result["estimates"]["public.g"]
    assert g["seconds"] == pytest.approx(2e9 / rate)  # 3046.5 s at 0.66 MB/s
    assert g["basis"] == "no history: size at 0.66 MB/s"
    assert [j["tables"] for j in result["proposed"]["jobs"]] == [
        ["public.g"], ["public.a", "public.f"],
        ["public.c", "public.d", "public.e", "public.b"]]


def test_apply_updates_the_state_machine_and_a_later_setup_keeps_it(history, capsys):
    code, out, _ = run(["rebalance", "--apply", "--config", str(history)], capsys)
    assert code == 0
    assert out.splitlines()[-1] == "updated  state machine nightly-copy  (definition)"
    assert deploy.plan.assignment_of(definition()) == PROPOSED
    task = definition()["States"][deploy.Names.copy_state]["Branches"][2]["States"]["job-3"]
    assert task["Parameters"]["EnvironmentVariablesOverride"][0]["Value"] == (
        "public.d,public.g,public.f")

    assert setup_aws.main(["--config", str(history)]) == 0
    out = capsys.readouterr().out
    assert ("table assignment kept from the deployed state machine (same tables and jobs; "
            "operations.py rebalance changes it):") in out
    assert "  job-2  public.c,public.e,public.b" in out.splitlines()
    assert "unchanged  state machine nightly-copy" in out
    assert deploy.plan.assignment_of(definition()) == PROPOSED

    code, out, _ = run(["rebalance", "--json", "--config", str(history)], capsys)
    assert [j["tables"] for j in json.loads(out)["current"]["jobs"]] == PROPOSED


def test_setup_plans_again_when_the_jobs_or_tables_change(history, capsys):
    run(["rebalance", "--apply", "--config", str(history)], capsys)
    assert setup_aws.main(["--config", str(history), "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    assert "table assignment (configured table_weights):" in out
    assert len(deploy.plan.assignment_of(definition())) == 2

    assert setup_aws.main(["--config", str(history), "--jobs", "3", "--tables",
                           "public.a,public.b,public.c"]) == 0
    assert "table assignment (configured table_weights):" in capsys.readouterr().out
    assert deploy.plan.assignment_of(definition()) == [["public.a"], ["public.b"], ["public.c"]]


def test_rebalance_without_measured_runs_says_so(config, capsys):
    code, out, err = run(["rebalance", "--config", str(config)], capsys)
    assert (code, out) == (1, "")
    assert err == ("error: no successful run with copier log lines among the last 7: nothing "
                   "measured to rebalance from (setup's size-based split stands)\n")


def test_an_unchanged_table_is_measured_by_its_night_s_seconds_but_not_in_the_copy_rate():
    lines = [copied("n", "job-1", "public.a", 100.0), unchanged("n", "job-1", "public.e", 30.0),
             {"event": "table_failed", "table": "public.g", "job": "job-2", "seconds": 5.0,
              "error": "x", "run": "n"}]
    history = operations.History()
    assert history.measure("n", operations.table_runs(lines))
    assert (history.runs, history.seconds) == (["n"], {"public.a": [100.0], "public.e": [30.0]})
    assert history.bytes_per_second == BYTES["public.a"] / 100.0  # public.e's bytes: not written
    assert not history.measure("m", operations.table_runs(lines[2:])) and history.runs == ["n"]


def test_the_log_group_follows_the_runner():
    settings = deploy.Settings(tables=["public.a"])
    assert operations.Nightly.of(settings, None).log_group == "/aws/codebuild/nightly-copy"
    settings.runner = "batch"
    assert operations.Nightly.of(settings, None).log_group == "/aws/batch/nightly-copy"


def test_a_failed_build_gets_its_duration_from_the_build_in_the_cause():
    cause = json.dumps({"build": {"buildStatus": "FAILED", "startTime": "2026-11-27T03:00:00Z",
                                  "endTime": "2026-11-27T03:12:41Z", "phases": []}})
    job = operations.job_from_result(2, {"job": "job-2", "tables": ["public.b", "public.g"],
                                         "status": "FAILED", "error": "States.TaskFailed",
                                         "cause": cause})
    assert (job.job, job.status, job.seconds, job.tables, job.error) == (
        "job-2", "FAILED", 761.0, ["public.b", "public.g"], "States.TaskFailed")


def test_a_run_recorded_with_the_tables_text_gets_its_units_from_the_copiers_parser():
    """Results of runs before ${TableList} carry the TABLES text, where a quoted name may hold
    a comma."""
    job = operations.job_from_result(1, {"job": "job-1", "status": "SUCCEEDED",
                                         "tables": 'public.b,public."Orders, old"#2/3'})
    assert job.tables == ["public.b", 'public."Orders, old"#2/3']


def test_only_a_table_beyond_an_even_share_bounds_the_run():
    estimates = {t: operations.Estimate(s, "median of 3 run(s)")
                 for t, s in {"big": 100, "mid": 60, "small": 10, "x": 50, "y": 40}.items()}
    # 260 s over 3 jobs: an even share is 86.7 s. "small" alone in its job is not flagged,
    # nor "mid", longer than the rest of its job but under the share.
    assignment = [["big"], ["mid", "small"], ["x", "y"]]
    assert operations.bounding_tables(assignment, estimates) == [
        {"table": "big", "job": "job-1", "seconds": 100, "rest_seconds": 0}]
    assert operations.bounding_tables([["big", "x"], ["mid"], ["small"]], estimates) == [
        {"table": "big", "job": "job-1", "seconds": 100, "rest_seconds": 50}]


def test_every_help_example_runs(history, capsys, monkeypatch, tmp_path):
    """The examples of operations.py --help, in the order shown, on the runs above (the
    timeline's `< lines` is a local run's stdout)."""
    monkeypatch.chdir(tmp_path)  # the pages they write
    with pytest.raises(SystemExit):
        operations.main(["--help"])
    shown = capsys.readouterr().out
    examples = [shlex.split(line.split("#")[0])[2:] for line in shown.splitlines()
                if line.strip().startswith("python operations.py ")]
    assert [e[0] for e in examples] == [
        "report", "report", "report", "rebalance", "rebalance", "report", "timeline"]
    local_run = "".join(json.dumps(line) + "\n" for line in (
        copied("local", "1", "public.a", 12.5), copied("local", "2", "public.b", 3.0),
        {"event": "run_finished", "tables": 2, "failed": 0, "seconds": 13.0, "run": "local"}))
    for example in examples:
        if example[0] == "timeline":
            example = example[:example.index("<")]
            monkeypatch.setattr("sys.stdin", io.StringIO(local_run))
        else:
            example = [*example, "--config", str(history)]
        code, out, err = run(example, capsys)
        assert (code, err.count("error")) == (0, 0), (example, err)
        if "--json" in example:
            assert [r["execution"] for r in json.loads(out)][:2] == ["2026-11-28", "2026-11-27"]
        if "--apply" in example:
            assert out.splitlines()[-1] == "updated  state machine nightly-copy  (definition)"
            assert deploy.plan.assignment_of(definition()) == PROPOSED
        if "--html" in example:
            page = tmp_path / example[example.index("--html") + 1]
            assert "public.a" in page.read_text()
            page.unlink()
