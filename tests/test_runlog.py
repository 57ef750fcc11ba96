"""runlog.py, what the copier and its readers share: the lines the real copier writes are the
ones its catalogue describes; the unit grammar read back as written; a table's outcome; and the
readers' imports (no psycopg2, no copier.py, no import circles)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import test_copier_slices
from conftest import FAILING

import runlog

REPO = Path(__file__).resolve().parent.parent


# --- the catalogue: what the copier writes


def off_the_catalogue(lines: list[dict]) -> list[str]:
    """Each line whose event runlog.EVENTS lacks, or with a field its event does not list."""
    found = []
    for line in lines:
        event = runlog.EVENTS.get(line.get("event"))
        if event is None:
            found.append(f"no event {line.get('event')!r} in runlog.EVENTS: {line}")
            continue
        extra = set(line) - set(event.fields) - set(runlog.COMMON_FIELDS)
        if extra:
            found.append(f"{event.name} has no field {sorted(extra)} in runlog.EVENTS: {line}")
    return found


def test_every_line_of_a_local_night_is_in_the_catalogue(night, run_copier, monkeypatch):
    monkeypatch.setenv("COPIER_RUN", "night-1")  # as on AWS: every line names its run
    runs = [night(*FAILING, "--progress-seconds", "0"),  # orders in slices, locked fails
            night(),  # the reader in locked's way is ended, locked swapped after the others
            night("--swap", "together", *FAILING),  # staged together, the swap fails
            run_copier("TABLES=orders,customers,locked", "--jobs", "2", "--dry-run", "--json")]
    lines = [line for run in runs for line in run.events]
    assert [run.code for run in runs] == [1, 0, 1, 0]
    assert off_the_catalogue(lines) == []
    assert {line["event"] for line in lines} >= {
        runlog.TABLE_COPIED, runlog.TABLE_FAILED, runlog.TABLE_STAGED, runlog.SLICE_LOADED,
        runlog.SWAP_DEFERRED, runlog.SESSION_ENDED, runlog.TABLE_PROGRESS, runlog.PLAN,
        runlog.RUN_FINISHED}
    assert {line["run"] for line in lines} == {"night-1"}


def test_every_line_of_a_split_night_is_in_the_catalogue(dbs):
    """The state machine's night: two load jobs sharing a snapshot, then the publish."""
    test_copier_slices.fill_accounts(dbs, rows_a=3000, rows_b=300)
    first = test_copier_slices.load_job(dbs, "night-2", 1, 2, "acc_a#1/2,acc_b")
    first.wait_for_event(runlog.SNAPSHOT_SHARED)
    second = test_copier_slices.load_job(dbs, "night-2", 2, 2, "acc_a#2/2")
    assert [second.finish()[0], first.finish()[0]] == [0, 0]
    publish = test_copier_slices.publish(dbs, "night-2", "acc_a,acc_b")
    assert publish.returncode == 0, publish.stderr
    lines = first.lines + second.lines + test_copier_slices.events(publish.stdout)
    assert off_the_catalogue(lines) == []
    assert {line["event"] for line in lines} >= {
        runlog.SNAPSHOT_SHARED, runlog.SNAPSHOT_IMPORTED, runlog.SNAPSHOT_RELEASED,
        runlog.SLICE_LOADED, runlog.TABLE_LOADED, runlog.TABLE_COPIED, runlog.RUN_FINISHED}


# --- units


def test_units_read_back_as_they_were_written():
    value = 'public.a,"odd.schema"."a,b", "X""y"#2/3,"a#1/2",s."B"#1/2'
    assert runlog.unit_texts(value) == ["public.a", '"odd.schema"."a,b"', '"X""y"#2/3', '"a#1/2"',
                                        's."B"#1/2']
    assert [runlog.split_unit(unit) for unit in runlog.unit_texts(value)] == [
        ("public.a", None), ('"odd.schema"."a,b"', None), ('"X""y"', (2, 3)), ('"a#1/2"', None),
        ('s."B"', (1, 2))]
    plan = runlog.plan_units({'"Big, one"': 9, "x": 1}, 3, {'"Big, one"'})  # a job's TABLES
    assert [runlog.unit_texts(",".join(units)) for units in plan] == plan
    assert {runlog.split_unit(unit)[0] for units in plan for unit in units} == {'"Big, one"', "x"}
    with pytest.raises(runlog.TableListError, match="2 names where one is expected"):
        runlog.split_unit("a,b")


def test_a_slice_weighs_its_part_of_the_table_unless_it_has_its_own():
    weights = {"public.events": 40, '"a#b"': 6, "public.events#3/4": 12}
    assert runlog.unit_weight("public.events#2/4", weights) == 10
    assert runlog.unit_weight("public.events#3/4", weights) == 12
    assert runlog.unit_weight('"a#b"#2/3', weights) == 2
    assert runlog.unit_weight('"a#b"', weights) == 6


# --- reading a run


def test_a_line_without_a_job_belongs_to_its_log_stream_s_job():
    lines = [{"event": "table_staged", "table": "public.a", "job": "job-2", "@stream": "b2"},
             {"event": "run_finished", "@stream": "b2"},
             {"event": "run_finished", "@stream": "b9"},
             {"event": "table_copied", "table": "public.b", "job": 3}]
    streams = runlog.stream_jobs(lines)
    assert [runlog.job_of(line, streams) for line in lines] == ["job-2", "job-2", None, "job 3"]


def test_a_staged_table_goes_live_or_fails_in_the_swap_at_the_end_of_its_job():
    staged = {"table": "public.a", "job": 2, "rows": 5, "bytes": 50, "seconds": 3.0}
    (swapped,) = runlog.table_outcomes([{"event": "table_staged", **staged},
                                        {"event": "table_copied", "table": "public.a", "rows": 5,
                                         "bytes": 50, "seconds": 3.0}])
    assert (swapped.outcome, swapped.job, swapped.rows, swapped.seconds) == ("copied", "job 2", 5, 3.0)
    (failed,) = runlog.table_outcomes([{"event": "swap_deferred", **staged, "reason": "held"},
                                       {"event": "table_failed", "table": "public.a",
                                        "error": "could not lock"}])
    assert (failed.outcome, failed.where, failed.error) == ("failed", "job 2", "could not lock")
    (waiting,) = runlog.table_outcomes([{"event": "table_staged", **staged}])
    assert waiting.outcome == "staged" and not waiting.copied


def test_slices_loaded_again_count_once_from_their_last_round():
    def piece(part: str, seconds: float, job: str) -> dict:
        return {"event": "slice_loaded", "table": "public.e", "slice": part, "job": job,
                "rows": 10, "bytes": 10**8, "seconds": seconds}

    (table,) = runlog.table_outcomes([
        piece("1/2", 9.0, "job-1"), piece("2/2", 8.0, "job-2"),  # a snapshot lost: again
        piece("2/2", 3.0, "job-1"), piece("1/2", 2.0, "job-2"),
        {"event": "table_copied", "table": "public.e", "job": "publish", "phase": "publish",
         "rows": 20, "bytes": 2 * 10**8, "seconds": 1.0, "slices": 2}])
    assert (table.outcome, table.load_seconds, table.seconds, table.publish_seconds) == (
        "copied", 3.0, 4.0, 1.0)
    assert (table.slices, table.slice_seconds, table.jobs) == (
        2, {"2/2": 3.0, "1/2": 2.0}, ["job-1", "job-2", "publish"])
    assert table.figures() == "2 slices, 200.0 MB, load 3s (longest slice), publish 1s"


def test_a_unit_no_job_got_to_fails_its_table_as_a_slice():
    (table,) = runlog.table_outcomes([
        {"event": "slice_loaded", "table": "public.e", "slice": "1/2", "job": "job-1",
         "rows": 10, "bytes": 100, "seconds": 2.0},
        {"event": "table_failed", "table": "public.e#2/2", "error": "no job reported it"}])
    assert (table.table, table.outcome, table.where, table.error) == (
        "public.e", "failed", "slice 2/2", "no job reported it")
    assert table.load_jobs == ["job-1"] and table.rows is None


# --- imports


def test_the_readers_load_neither_psycopg2_nor_the_copier():
    """setup_aws.py and the rest read the copier's settings and lines from runlog.py: only
    measuring the source's tables (deploy/plan.py) needs the copier, and imports it then."""
    probe = ("import sys\n"
             "for name in ('setup_aws', 'teardown_aws', 'operations', 'timeline', 'notify_lambda'):\n"
             "    __import__(name)\n"
             "    loaded = {'psycopg2', 'copier'} & set(sys.modules)\n"
             "    assert not loaded, f'import {name} loads {sorted(loaded)}'\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def project_modules() -> dict[str, Path]:
    """The project's own modules by name: the top-level files, deploy/ and dev/."""
    modules = {path.stem: path for path in REPO.glob("*.py")}
    for package in ("deploy", "dev"):
        for path in (REPO / package).glob("*.py"):
            modules[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return modules


def imported(tree: ast.Module, modules: dict[str, Path]) -> set[str]:
    """The project modules a module imports, wherever it does (in a function too), except
    under `if TYPE_CHECKING:`, which never runs."""
    found = set()
    skipped = {id(node) for branch in ast.walk(tree) if isinstance(branch, ast.If)
               and "TYPE_CHECKING" in ast.unparse(branch.test) for node in ast.walk(branch)}
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            # from deploy import names: the module deploy.names, else a name of deploy itself
            found |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules
                      else node.module for alias in node.names}
    return found & set(modules)


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle in the graph as the modules along it (the first one again at the end), or None."""
    state: dict[str, str] = {}  # "open" while on the path, then "done"
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = "open"
        path.append(name)
        for other in sorted(graph[name]):
            if state.get(other) == "open":
                return path[path.index(other):] + [other]
            if other not in state and (cycle := visit(other)):
                return cycle
        state[name] = "done"
        path.pop()
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name)):
            return cycle
    return None


def test_no_import_cycle_among_the_project_s_modules():
    modules = project_modules()
    assert {"copier", "runlog", "deploy", "deploy.settings", "deploy.schedule"} <= set(modules)
    graph = {name: imported(ast.parse(path.read_text()), modules) - {name}
             for name, path in modules.items()}
    assert "deploy.schedule" in graph["deploy.settings"]  # hidden imports count too
    cycle = import_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert import_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert import_cycle({"a": {"b"}, "b": set()}) is None
