"""Issue 11, the cloud side: the state machine's load and publish phases (rendered, and run in
moto's engine with the job tasks stood in for), planning with and without slices, and the
Slack summary and operations.py report/rebalance reading the two phases' copier lines."""

from __future__ import annotations

import json

import boto3
import pytest
import test_state_machine as sm
from aws_helpers import MOTO_CONFIG, REGION, set_fake_aws_env
from moto import mock_aws

import deploy
import notify_lambda
import operations
import runlog
from deploy import plan

TABLES = ["public.events", "public.orders", "public.customers", "public.notes"]
# bytes on the source: events is 80% of the run
SIZES = {"public.events": 8e9, "public.orders": 1e9, "public.customers": 6e8,
         "public.notes": 4e8}


@pytest.fixture
def aws(monkeypatch):
    set_fake_aws_env(monkeypatch)
    with mock_aws(config={**MOTO_CONFIG, "stepfunctions": {"execute_state_machine": True}}):
        yield deploy.Aws(REGION)


def planned(monkeypatch, **overrides) -> tuple[list[list[str]], list[str]]:
    """plan_jobs with the source's sizes and keys as table_weights reads them there."""
    settings = deploy.Settings(tables=list(TABLES), jobs=3, github_url="https://x/y.git",
                               **overrides)
    monkeypatch.setattr(plan, "table_weights", lambda s, out, rules=None: plan.Weights(
        dict(SIZES), plan.SOURCE_SIZES, frozenset({"public.events", "public.orders"})))
    said: list[str] = []
    return plan.plan_jobs(settings, said.append), said


def render(aws, assignment: list[list[str]], **overrides) -> dict:
    settings = deploy.Settings(tables=list(TABLES), jobs=len(assignment),
                               github_url="https://x/y.git", **overrides)
    return deploy.Deployment(settings, aws, deploy.Options(), assignment) \
        .state_machine_definition()


def environment(task: dict) -> dict[str, str]:
    return {v["Name"]: v.get("Value", v.get("Value.$")) for v in
            task["Parameters"]["EnvironmentVariablesOverride"]}


# --- planning


def test_a_table_heavier_than_a_job_is_cut_into_slices_over_the_jobs(monkeypatch):
    assignment, said = planned(monkeypatch)
    units = [u for job in assignment for u in job]
    slices = [u for u in units if u.startswith("public.events#")]
    n = len(slices)
    assert n >= 2 and sorted(slices) == sorted(f"public.events#{k}/{n}" for k in range(1, n + 1))
    assert {u for u in units if "#" not in u} == {"public.orders", "public.customers",
                                                  "public.notes"}
    assert len(assignment) == 3 and all(assignment)
    # no job carries more than about a mean job (the sliced table no longer sets the length)
    loads = [sum(runlog.unit_weight(u, SIZES) for u in job) for job in assignment]
    assert max(loads) <= 1.2 * sum(SIZES.values()) / 3
    assert f"public.events ({n})" in said[0]


def test_without_one_snapshot_no_table_is_split(monkeypatch):
    assignment, said = planned(monkeypatch, one_snapshot=False)
    assert sorted(u for job in assignment for u in job) == sorted(TABLES)
    assert any("one_snapshot = false" in line for line in said)
    assert assignment == runlog.assign_to_jobs(SIZES, 3)


def test_split_false_and_split_larger_than(monkeypatch):
    assignment, _ = planned(monkeypatch, split=False)
    assert not any("#" in u for job in assignment for u in job)
    # orders (1 GB) is sliceable and larger than 900 MB: cut too
    assignment, _ = planned(monkeypatch, split_larger_than_mb=900)
    assert any(u.startswith("public.orders#") for job in assignment for u in job)


def test_a_deployed_split_with_slices_is_read_back(aws, monkeypatch):
    assignment, _ = planned(monkeypatch)
    assert plan.assignment_of(render(aws, assignment)) == assignment
    assert plan.sliced_tables(assignment) == {"public.events": len(
        [u for job in assignment for u in job if "#" in u])}


# --- rendering


def test_the_load_jobs_get_their_units_and_the_publish_every_table(aws, monkeypatch):
    assignment, _ = planned(monkeypatch)
    definition = render(aws, assignment, swap="together")
    assert definition["States"][deploy.Names.copy_state]["Next"] == deploy.Names.publish_phase
    for number, (branch, units) in enumerate(zip(sm.branches(definition), assignment,
                                                 strict=True), start=1):
        env = environment(sm.copy_task(branch))
        assert env == {"TABLES": ",".join(units), "COPIER_PHASE": "load",
                       "COPIER_RUN": "$$.Execution.Name", "COPIER_JOB": f"job-{number}",
                       "COPIER_LOAD_JOBS": "3",
                       "COPIER_ONE_SNAPSHOT": "hold" if number == 1 else "join"}
        assert sm.copy_task(branch)["ResultSelector"]["tables"] == units
    publish = sm.publish_task(definition)
    assert publish["Resource"] == sm.CODEBUILD_SYNC
    # as many workers as load jobs: the tables' index builds run side by side, as in the loads
    assert environment(publish) == {"TABLES": ",".join(TABLES), "COPIER_PHASE": "publish",
                                    "COPIER_RUN": "$$.Execution.Name", "COPIER_JOB": "publish",
                                    "COPIER_SWAP": "together", "COPIER_JOBS": "3"}
    # in a branch of its own, given only the run's name: a failed publish's Cause (every
    # table of the run) never meets the jobs' results
    phase = definition["States"][deploy.Names.publish_phase]
    assert phase["Parameters"] == {"run.$": "$$.Execution.Name"}
    assert (phase["ResultPath"], phase["Next"]) == ("$.publish", "Count failed jobs")
    (catch,) = publish["Catch"]
    assert publish["End"] is True and catch["ResultPath"] == "$.error"
    for handler in sm.kept_on_failure(sm.publish_branch(definition)["States"], catch["Next"]):
        assert handler["Parameters"]["status"] == "FAILED" and handler["End"] is True
    # the copier reads each job's units back from its TABLES as they were planned
    for branch, units in zip(sm.branches(definition), assignment, strict=True):
        assert runlog.unit_texts(environment(sm.copy_task(branch))["TABLES"]) == units


def test_one_snapshot_off_renders_no_snapshot_role(aws):
    definition = render(aws, [["public.events"], ["public.orders", "public.customers",
                                                  "public.notes"]], one_snapshot=False)
    for branch in sm.branches(definition):
        assert environment(sm.copy_task(branch))["COPIER_ONE_SNAPSHOT"] == ""


def test_the_batch_runner_runs_the_publish_too(aws):
    settings = deploy.Settings(tables=list(TABLES), jobs=2, github_url="https://x/y.git",
                               runner="batch", subnets=["subnet-1"], security_groups=["sg-1"],
                               vpc_id="vpc-1")
    definition = deploy.Deployment(settings, aws, deploy.Options(), [
        ["public.events#1/2", "public.notes"], ["public.events#2/2", "public.orders",
                                                "public.customers"]]).state_machine_definition()
    publish = sm.publish_task(definition)
    assert publish["Resource"] == "arn:aws:states:::batch:submitJob.sync"
    assert publish["Parameters"]["JobName"] == "nightly-copy-publish"
    env = {v["Name"]: v.get("Value") for v in publish["Parameters"]["ContainerOverrides"][
        "Environment"]}
    assert (env["COPIER_PHASE"], env["TABLES"]) == ("publish", ",".join(TABLES))
    assert publish["End"] is True


# --- the two phases in moto's engine


def run(aws, failing: set[str], name: str) -> tuple[dict, list[dict]]:
    sfn = boto3.client("stepfunctions")
    definition = render(aws, [["public.events#1/3", "public.notes"],
                              ["public.events#2/3", "public.customers"],
                              ["public.events#3/3", "public.orders"]])
    machine = sm.create(sfn, "nightly-copy", sm.rewritten_for_moto(definition, failing))
    sm.queue_lambda_result({"posted": True, "failed_jobs": 0})  # ignored: the statuses decide
    described = sm.run_to_end(sfn, machine, name, json.dumps({"date": name}))
    return described, sm.history(sfn, described["executionArn"])


def exited(events: list[dict]) -> list[str]:
    return [e["stateExitedEventDetails"]["name"] for e in events
            if e["type"].endswith("StateExited")]


def test_load_then_publish_then_summary(aws):
    described, events = run(aws, set(), "2026-11-27")
    assert described["status"] == "SUCCEEDED"
    order = exited(events)
    assert order.index(deploy.Names.copy_state) < order.index("Publish result") < order.index(
        "Send summary")
    summary = sm.summary_sent(events)
    assert summary["publish"]["job"] == "publish" and summary["publish"]["status"] == "SUCCEEDED"
    assert "tables" not in summary["publish"]  # the jobs' units name them: listed once
    publish = notify_lambda.summary_message(summary)[0]["blocks"][-1]["text"]["text"]
    assert publish.startswith(":white_check_mark: *publish* SUCCEEDED")
    listed = publish.split(f"*Tables ({len(TABLES)}):* ")[1]
    assert sorted(listed.replace("`", "").split(", ")) == sorted(TABLES)
    assert [j["status"] for j in summary["jobs"]] == ["SUCCEEDED"] * 3


def test_a_failed_load_job_still_publishes_and_fails_the_run(aws):
    """job-2 (a slice of events, and customers) fails: the publish still runs (the tables that
    loaded fully go live), the summary gets both, the execution fails."""
    described, events = run(aws, {"job-2"}, "2026-11-28")
    assert (described["status"], described["error"]) == ("FAILED", "CopyJobsFailed")
    assert {"job-2 failed", "Publish result"} <= set(exited(events))
    summary = sm.summary_sent(events)
    assert [j["status"] for j in summary["jobs"]] == ["SUCCEEDED", "FAILED", "SUCCEEDED"]
    assert summary["jobs"][1]["tables"] == ["public.events#2/3", "public.customers"]
    assert summary["publish"]["status"] == "SUCCEEDED"


def test_a_failed_publish_is_caught_summarised_and_fails_the_run(aws):
    described, events = run(aws, {"publish"}, "2026-11-29")
    assert (described["status"], described["error"]) == ("FAILED", "CopyJobsFailed")
    summary = sm.summary_sent(events)
    assert [j["status"] for j in summary["jobs"]] == ["SUCCEEDED"] * 3
    assert summary["publish"]["status"] == "FAILED"
    assert summary["publish"]["error"] == "SNS.NotFoundException"


# --- the copier's lines of a run with a failed slice, as the contract writes them


def line(event: str, job: str, **fields) -> dict:
    return {"event": event, "run": "2026-11-28", "job": job, **fields}


LINES = [
    line("slice_loaded", "job-1", table="public.events", slice="1/3", rows=1000, bytes=4e9 // 3,
         seconds=300.0, snapshot=1),
    line("slice_loaded", "job-3", table="public.events", slice="3/3", rows=1000, bytes=4e9 // 3,
         seconds=312.0, snapshot=1),
    line("table_failed", "job-2", table="public.events", slice="2/3", phase="load",
         seconds=40.0, error="lost the connection to the source database: server closed"),
    line("table_loaded", "job-1", table="public.notes", rows=10, bytes=4e8, seconds=20.0,
         snapshot=1),
    line("table_loaded", "job-2", table="public.customers", rows=10, bytes=6e8, seconds=30.0,
         snapshot=1),
    line("table_loaded", "job-3", table="public.orders", rows=10, bytes=1e9, seconds=60.0,
         snapshot=1),
    line("table_failed", "publish", table="public.events", phase="publish",
         error="slice 2/3 was not loaded in run 2026-11-28"),
    line("table_copied", "publish", table="public.notes", rows=10, bytes=4e8, seconds=5.0,
         slices=1, phase="publish"),
    line("table_copied", "publish", table="public.customers", rows=10, bytes=6e8, seconds=6.0,
         slices=1, phase="publish"),
    line("table_copied", "publish", table="public.orders", rows=10, bytes=1e9, seconds=9.0,
         slices=1, phase="publish"),
]
SLICED_OK = [
    line("slice_loaded", f"job-{k}", table="public.events", slice=f"{k}/3", rows=1000,
         bytes=4.1e9, seconds=300.0 + k, snapshot=1) for k in (1, 2, 3)
] + [line("table_copied", "publish", table="public.events", rows=3000, bytes=12.3e9,
          seconds=62.0, slices=3, phase="publish")]


def test_a_failed_slice_names_its_table_slice_job_and_error():
    outcomes = {t.table: t for t in runlog.table_outcomes(LINES)}
    events = outcomes["public.events"]
    assert events.outcome == "failed" and events.where == "slice 2/3, job-2"
    assert events.error == "lost the connection to the source database: server closed"
    assert events.load_jobs == ["job-1", "job-2", "job-3"] and events.job == "publish"
    orders = outcomes["public.orders"]
    assert orders.copied and orders.loaded_by == ["job-3"] and orders.job == "publish"
    assert (orders.load_seconds, orders.publish_seconds, orders.seconds) == (60.0, 9.0, 69.0)


def test_the_summary_shows_slices_and_the_failed_slice():
    outcomes = runlog.table_outcomes(LINES + SLICED_OK)
    report = notify_lambda.TableReport(outcomes, 4)
    event = {"execution": {"name": "2026-11-28"},
             "jobs": [{"job": f"job-{k}", "tables": [f"public.events#{k}/3"],
                       "status": "FAILED" if k == 2 else "SUCCEEDED"} for k in (1, 2, 3)],
             "publish": {"job": "publish", "tables": TABLES, "status": "FAILED",
                         "error": "States.TaskFailed"}}
    payload, failed = notify_lambda.summary_message(event, report)
    text = json.dumps(payload["blocks"])
    assert failed == 2  # job-2 and the publish
    assert "1 of 3 jobs failed, the publish failed" in payload["text"]
    # SLICED_OK comes later: events was copied in the end, with its three slices
    assert "`public.events`: 3 slices, 12.3 GB, load 5m 03s (longest slice), publish 1m 02s" \
        in text
    assert "*publish* FAILED" in text


def test_the_summary_names_a_failed_slice():
    outcomes = runlog.table_outcomes(LINES)
    payload, _ = notify_lambda.summary_message(
        {"execution": {"name": "2026-11-28"}, "jobs": []},
        notify_lambda.TableReport(outcomes, 4))
    text = json.dumps(payload["blocks"])
    assert ("`public.events` (slice 2/3, job-2): lost the connection to the source database: "
            "server closed") in text


def stream_lines(lines: list[dict]) -> list[dict]:
    return [{**line, "@stream": line["job"], "@timestamp": n} for n, line in enumerate(lines)]


def test_report_lists_slices_and_the_failed_slice():
    tables = operations.table_runs(stream_lines(LINES))
    text = "\n".join(operations.tables_table(tables))
    assert "public.events (slice 2/3, job-2): lost the connection" in text
    copied = operations.table_runs(stream_lines(SLICED_OK))
    (events,) = copied
    assert (events.slices, events.loaded_by, events.seconds) == (3, ["job-1", "job-2", "job-3"],
                                                                 303.0 + 62.0)
    assert "public.events: 3 slices, 12.3 GB, load 5m 03s (longest slice), publish 1m 02s" in (
        "\n".join(operations.tables_table(copied)))


def test_rebalance_measures_a_sliced_table_by_its_slices_and_adds_the_publish():
    (events,) = operations.table_runs(stream_lines(SLICED_OK))
    assert operations.load_work(events) == 301.0 + 302.0 + 303.0
    estimates = {"public.events": operations.Estimate(906.0, "median"),
                 "public.events#3/3": operations.Estimate(303.0, "slice"),
                 "public.orders": operations.Estimate(60.0, "median")}
    view = operations.assignment_view(
        [["public.events#1/3", "public.orders"], ["public.events#2/3"], ["public.events#3/3"]],
        estimates, publish=62.0)
    assert [j["seconds"] for j in view["jobs"]] == [302.0 + 60.0, 302.0, 303.0]
    assert view["run_seconds"] == 362.0 + 62.0
