"""How did last night go, why so long: run reports and rebalancing for the nightly copy.

    python operations.py report                     # the last 7 runs: status, duration, jobs
    python operations.py report 2026-11-27          # that run's tables, slowest first
    python operations.py report --last 30 --json    # the same for scripts
    python operations.py rebalance                  # current and proposed split, from run times
    python operations.py rebalance --apply          # update the state machine with the proposal
    python operations.py report 2026-11-27 --html night.html    # and a page: that run's timeline
    python operations.py timeline --html night.html < lines     # a local run's, from its stdout

Settings as for setup_aws.py (--config deploy.toml and flags). See docs/operations.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

from botocore.exceptions import ClientError

import notify_lambda
import runlog
import timeline
from deploy import (
    SETTING_FIELDS,
    Aws,
    Deployment,
    Names,
    Options,
    Settings,
    add_settings_arguments,
    ensure_present,
    load_settings,
    resource_list,
)
from deploy.aws import error_code
from deploy.cli import EXIT_DONE, Parser, exit_codes, run_guarded
from deploy.names import job_name
from deploy.plan import SOURCE_SIZES, deployed_assignment, sliced_tables, table_weights
from deploy.resources import StateMachine

# Log lines are written while the builds run, inside the execution's start and stop; the
# margin covers clock skew and a build still flushing its last lines.
LOG_WINDOW_MARGIN = dt.timedelta(minutes=15)
SLOWEST_STEPS = 5  # one run's report: the steps of this many of its slowest tables


class OperationsError(Exception):
    """Nothing to report or rebalance from; the message says what to do."""


# --------------------------------------------------------------------------- reading runs


@dataclass
class JobRun:
    job: str
    status: str
    seconds: float | None
    tables: list[str]
    error: str | None = None
    cause: str | None = None
    unchanged: int | None = None  # its tables found unchanged (not written); None: no lines read


@dataclass
class ExecutionRun:
    name: str
    status: str
    start: dt.datetime
    stop: dt.datetime | None
    jobs: list[JobRun] = field(default_factory=list)
    jobs_from: str = "none"  # "history" (the Parallel state's result), "logs" or "none"

    @property
    def seconds(self) -> float | None:
        return (self.stop - self.start).total_seconds() if self.stop else None

    @property
    def unchanged(self) -> int | None:
        counted = [job.unchanged for job in self.jobs if job.unchanged is not None]
        return sum(counted) if counted else None


@dataclass
class Nightly:
    """The deployed nightly run: its state machine and the log group its copiers write to."""

    aws: Aws
    names: Names
    log_group: str

    @classmethod
    def of(cls, settings: Settings, aws: Aws) -> Nightly:
        # The runner decides the log group: CodeBuild's project group or the Batch jobs' one.
        return cls(aws, Names(settings.prefix),
                   Deployment(settings, aws, Options()).copier_log_group())

    @property
    def arn(self) -> str:
        return self.aws.arn("states", f"stateMachine:{self.names.state_machine}")

    def execution_arn(self, name: str) -> str:
        return self.arn.replace(":stateMachine:", ":execution:") + f":{name}"


def recent_executions(nightly: Nightly, last: int, status: str | None = None) -> list[dict]:
    """The newest `last` executions of the nightly state machine, newest first."""
    request = {"stateMachineArn": nightly.arn}
    if status:
        request["statusFilter"] = status
    found = []
    paginator = nightly.aws.client("stepfunctions").get_paginator("list_executions")
    for page in paginator.paginate(**request):
        found += page["executions"]
    # Names are dates: they break ties between executions started in the same instant.
    found.sort(key=lambda e: (e["startDate"], e["name"]), reverse=True)
    return found[:last]


def find_execution(nightly: Nightly, name: str) -> dict | None:
    sfn = nightly.aws.client("stepfunctions")
    try:
        return sfn.describe_execution(executionArn=nightly.execution_arn(name))
    except ClientError as err:
        if error_code(err) in ("ExecutionDoesNotExist", "StateMachineDoesNotExist"):
            return None
        raise


def parallel_results(nightly: Nightly, execution_arn: str) -> list[dict] | None:
    """The job results the Parallel state handed on, then the publish step's result when it
    ended, from the history; None if the load phase never finished (the execution still
    runs, was stopped or timed out). The publish's result lists no tables (the state machine
    keeps the run's table list once, in the jobs' units): it gets the jobs' tables, as the
    Slack summary gives it (notify_lambda.run_tables)."""
    jobs, publish = read_phase_results(nightly, execution_arn)
    if jobs is None:
        return None
    jobs = [with_listed_units(job) for job in jobs]
    if publish is not None:
        publish = dict(with_listed_units(publish))
        if not notify_lambda.listed_units(publish.get("tables")):
            publish["tables"] = notify_lambda.run_tables({"jobs": jobs, "publish": publish})
    return jobs + ([publish] if publish else [])


def read_phase_results(nightly: Nightly, execution_arn: str) -> tuple[list | None, dict | None]:
    """The load phase's job results and the publish's result, wherever they are in the history:
    newest first on AWS (reverseOrder, so a finished run's are read from its last page), but
    not relied on (moto's engine gives the oldest first)."""
    paginator = nightly.aws.client("stepfunctions").get_paginator("get_execution_history")
    jobs, publish = None, None
    for page in paginator.paginate(executionArn=execution_arn, reverseOrder=True):
        for event in page["events"]:
            details = event.get("stateExitedEventDetails") or {}
            output = json.loads(details.get("output") or "{}") if details else {}
            if not isinstance(output, dict):
                continue
            found = output.get("publish")
            if isinstance(found, list) and len(found) == 1:  # the Publish phase's one branch
                found = found[0]
            if publish is None and isinstance(found, dict):
                publish = found  # the publish task's, or its Catch's, result
            if event["type"] == "ParallelStateExited" and details.get("name") == Names.copy_state:
                jobs = output.get("jobs", [])
            if jobs is not None and publish is not None:
                return jobs, publish
    return jobs, publish


def with_listed_units(result: dict) -> dict:
    """A run recorded before the results listed their units (${TableList}) has the TABLES
    text: the copier's to parse."""
    if isinstance(result, dict) and isinstance(result.get("tables"), str):
        return {**result, "tables": runlog.unit_texts(result["tables"])}
    return result


def job_from_result(position: int, result: dict) -> JobRun:
    # The Slack function reads the same results, failed builds' causes included.
    job = notify_lambda.job_result(position, with_listed_units(result))
    return JobRun(job.name, job.status, job.seconds, job.tables, job.error, job.cause)


def log_lines(nightly: Nightly, run: str, events: Iterable[str],
              start: dt.datetime | None = None, stop: dt.datetime | None = None) -> list[dict]:
    """The copier's JSON lines of one run, oldest first, each with its @stream.

    The JSON filter pattern does the work on AWS. moto (5.x) treats any `{...}` pattern as
    matching everything, and any copier may log odd lines: the same test is made here too.
    """
    events = set(events)
    # Fully parenthesised, the form the AWS CDK's FilterPattern.all/any generate.
    either = " || ".join(f'($.event = "{event}")' for event in sorted(events))
    request = {"logGroupName": nightly.log_group,
               "filterPattern": f'{{ ($.run = "{run}") && ({either}) }}'}
    if start:
        request["startTime"] = int((start - LOG_WINDOW_MARGIN).timestamp() * 1000)
    if stop:
        request["endTime"] = int((stop + LOG_WINDOW_MARGIN).timestamp() * 1000)
    lines = []
    paginator = nightly.aws.client("logs").get_paginator("filter_log_events")
    try:
        for page in paginator.paginate(**request):
            for event in page["events"]:
                line = parse_line(event["message"])
                if line and line.get("run") == run and line.get("event") in events:
                    lines.append({**line, "@stream": event.get("logStreamName", ""),
                                  "@timestamp": event.get("timestamp", 0)})
    except ClientError as err:
        if error_code(err) == "ResourceNotFoundException":
            return []  # no log group: nothing was ever logged
        raise
    lines.sort(key=lambda line: line["@timestamp"])
    return lines


def parse_line(message: str) -> dict | None:
    try:
        line = json.loads(message)
    except ValueError:
        return None
    return line if isinstance(line, dict) else None


def table_runs(lines: list[dict]) -> list[runlog.TableOutcome]:
    """Each table's outcome in the run (runlog.table_outcomes), slowest first."""
    return sorted(runlog.table_outcomes(lines),
                  key=lambda t: (t.seconds is None, -(t.seconds or 0), t.table))


def jobs_from_logs(lines: list[dict]) -> list[JobRun]:
    """Per job from the log lines alone: for runs whose Parallel state never finished."""
    streams = runlog.stream_jobs(lines)
    tables = table_runs(lines)
    finished = {runlog.job_of(line, streams): line for line in lines
                if line["event"] == runlog.RUN_FINISHED}
    result = []
    for job in sorted({j for t in tables for j in t.loaded_by} | set(finished) - {None}):
        mine = [t for t in tables if job in t.loaded_by]
        if any(t.failures[0].job == job for t in mine if t.error) or finished.get(
                job, {}).get("failed"):
            status = "FAILED"
        else:
            status = "SUCCEEDED" if job in finished else "UNFINISHED"
        seconds = finished[job].get("seconds") if job in finished else sum(
            t.seconds or 0 for t in mine)
        result.append(JobRun(job, status, seconds, sorted(t.table for t in mine)))
    return result


def execution_run(nightly: Nightly, execution: dict) -> ExecutionRun:
    run = ExecutionRun(execution["name"], execution["status"], execution["startDate"],
                       execution.get("stopDate"))
    results = parallel_results(nightly, execution["executionArn"])
    if results is not None:
        run.jobs = [job_from_result(n, r) for n, r in enumerate(results, start=1)]
        run.jobs_from = "history"
        lines = log_lines(nightly, run.name, (runlog.TABLE_UNCHANGED, runlog.RUN_FINISHED),
                          run.start, run.stop)
    else:
        lines = log_lines(nightly, run.name, (*runlog.TABLE_EVENTS, runlog.RUN_FINISHED),
                          run.start, run.stop)
        if lines:
            run.jobs = jobs_from_logs(lines)
            run.jobs_from = "logs"
    count_unchanged(run.jobs, lines)
    return run


def count_unchanged(jobs: list[JobRun], lines: list[dict]) -> None:
    """Each job's tables found unchanged, by the job that finished them (the publish, in two
    phases); unknown without any line of the run (logs expired, or none written yet)."""
    if not lines:
        return
    counted = Counter(t.job for t in runlog.table_outcomes(lines) if t.outcome == "unchanged")
    for job in jobs:
        job.unchanged = counted[job.job]


# --------------------------------------------------------------------------- report


def report_runs(nightly: Nightly, last: int) -> list[ExecutionRun]:
    return [execution_run(nightly, e) for e in recent_executions(nightly, last)]


def run_lines(nightly: Nightly, name: str, events: Iterable[str]) -> list[dict]:
    """One run's copier lines of these events; an error when no table was logged."""
    execution = find_execution(nightly, name)
    start = execution["startDate"] if execution else None
    stop = execution.get("stopDate") if execution else None
    lines = log_lines(nightly, name, events, start, stop)
    if not any(line["event"] in runlog.FINISHING for line in lines):
        known = "" if execution else f" and no execution named {name}"
        raise OperationsError(
            f"no copier log lines for run {name!r}{known} in {nightly.log_group}: "
            "`operations.py report` lists the recent runs")
    return lines


def report_tables(nightly: Nightly, name: str) -> list[runlog.TableOutcome]:
    return table_runs(run_lines(nightly, name, runlog.TABLE_EVENTS))


def write_timeline(lines: list[dict], path: str, title: str) -> str:
    """The night's page (timeline.py) written to path; the line that says so."""
    try:
        page = timeline.render_html(lines, title)
    except timeline.NoTables as err:
        raise OperationsError(f"nothing to draw: {err}") from None
    try:
        with open(path, "w", encoding="utf-8") as out:
            out.write(page)
    except OSError as err:
        raise OperationsError(f"cannot write {path}: {err.strerror or err}") from None
    return f"wrote {path}: the timeline of {title}"


def duration(seconds: float | None) -> str:
    return runlog.format_duration(seconds) if seconds is not None else "-"


def utc(moment: dt.datetime | None) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def iso(moment: dt.datetime | None) -> str | None:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z") if moment else None


def number(value: float | None, digits: int) -> str:
    return f"{value:.{digits}f}" if value is not None else "-"


def count(value: int | None) -> str:
    return str(value) if value is not None else "-"


def aligned(headers: list[str], rows: list[list[str]], right: Iterable[int] = ()) -> list[str]:
    """Columns padded to their widest cell; numbers (the `right` columns) right-aligned."""
    right = set(right)
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return [line(headers), *map(line, rows)]


def runs_table(runs: list[ExecutionRun]) -> list[str]:
    rows = []
    for run in runs:
        cells = [run.name, run.status, utc(run.start), duration(run.seconds)]
        for job in run.jobs or [None]:
            job_cells = ([job.job, job.status, duration(job.seconds), count(job.unchanged),
                          ",".join(job.tables)] if job else ["-", "-", "-", "-", "-"])
            rows.append(cells + job_cells)
            cells = [""] * 4  # the execution's cells only on its first job
    lines = aligned(["execution", "status", "start (UTC)", "duration", "job", "job status",
                     "job duration", "unchanged", "tables"], rows, right={7})
    lines += [f"{run.name}: per job from the copier's log lines (the Parallel state has no "
              "result: still running, stopped or timed out)" for run in runs
              if run.jobs_from == "logs"]
    for run in runs:
        for job in run.jobs:
            if job.error or job.cause:
                lines.append(f"{run.name} {job.job}: {job.error or ''}"
                             + (f": {job.cause}" if job.cause else ""))
    return lines


def runs_json(runs: list[ExecutionRun]) -> list[dict]:
    return [{"execution": r.name, "status": r.status, "start": iso(r.start), "stop": iso(r.stop),
             "seconds": r.seconds, "jobs_from": r.jobs_from, "unchanged": r.unchanged,
             "jobs": [asdict(job) for job in r.jobs]} for r in runs]


def status(table: runlog.TableOutcome) -> str:
    return "FAILED" if table.outcome == "failed" else table.outcome


def tables_table(tables: list[runlog.TableOutcome]) -> list[str]:
    """The tables as given (slowest first), the sliced ones' figures, where the time of the
    slowest went, and the errors."""
    rows = [[t.table, ",".join(t.loaded_by) or "-", count(t.rows), number(t.mb, 1),
             number(t.seconds, 1), number(t.mb_per_second, 2), str(t.slices or "-"), status(t)]
            for t in tables]
    lines = aligned(["table", "job", "rows", "MB", "seconds", "MB/s", "slices", "status"], rows,
                    right={2, 3, 4, 5, 6})
    lines += [f"{t.table}: {t.figures()}" + ("" if t.copied else ", unchanged" if t.ok
                                             else ", not published") for t in tables if t.slices]
    timed = [t for t in tables if t.steps][:SLOWEST_STEPS]
    if timed:
        lines.append(f"steps of the {len(timed)} slowest:")
        lines += ["  " + line for line in aligned(
            ["table", "seconds", "steps"],
            [[t.table, number(t.seconds, 1), runlog.format_steps(t.steps)] for t in timed],
            right={1})[1:]]
    lines += [f"{t.table} ({t.where or '-'}): {t.error}" for t in tables if t.error]
    return lines


def tables_json(name: str, tables: list[runlog.TableOutcome]) -> dict:
    return {"execution": name, "tables": [
        {"table": t.table, "job": ",".join(t.loaded_by) or None, "status": status(t),
         "rows": t.rows, "bytes": t.bytes, "mb": round(t.mb, 3) if t.mb is not None else None,
         "seconds": t.seconds,
         "mb_per_second": round(t.mb_per_second, 3) if t.mb_per_second is not None else None,
         "slices": t.slices, "load_seconds": t.load_seconds, "publish_seconds": t.publish_seconds,
         "jobs": t.load_jobs, "where": t.where, "error": t.error, "steps": t.steps,
         "found": t.found} for t in tables]}


# --------------------------------------------------------------------------- rebalance


@dataclass
class Estimate:
    seconds: float
    basis: str


@dataclass
class History:
    runs: list[str] = field(default_factory=list)  # the successful runs measured, newest first
    # per logged table name: its load's work (a job's time)
    seconds: dict[str, list[float]] = field(default_factory=dict)
    # per logged slice name ("public.events#2/4"): that slice's own load seconds
    slice_seconds: dict[str, list[float]] = field(default_factory=dict)
    # per run, the publish step's seconds over every table (it runs after the jobs)
    publish_seconds: list[float] = field(default_factory=list)
    # the tables copied (written): their bytes and seconds, the rate of a table never measured
    copied_bytes: int = 0
    copied_seconds: float = 0.0

    @property
    def bytes_per_second(self) -> float | None:
        return self.copied_bytes / self.copied_seconds if self.copied_bytes and self.copied_seconds else None

    def measure(self, run: str, tables: list[runlog.TableOutcome]) -> bool:
        """One successful run's tables that went fine; False when it has none. A table found
        unchanged counts with the seconds that cost its job that night (its source read and
        hashed, or loaded and compared): a median over nights follows what most nights cost.
        Its bytes were not written, so they stay out of the copy's rate."""
        done = [t for t in tables if t.ok and t.seconds is not None]
        if not done:
            return False
        self.runs.append(run)
        for table in done:
            work = load_work(table)
            if work is None:
                continue
            self.seconds.setdefault(table.table, []).append(float(work))
            for piece, piece_seconds in table.slice_seconds.items():
                self.slice_seconds.setdefault(f"{table.table}#{piece}", []).append(piece_seconds)
            if table.bytes and table.copied:
                self.copied_bytes += table.bytes
                self.copied_seconds += work
        if any(t.publish_seconds is not None for t in done):
            self.publish_seconds.append(sum(t.publish_seconds or 0.0 for t in done))
        return True


def load_work(line_table: runlog.TableOutcome) -> float | None:
    """The seconds a table costs the copy jobs: its load in the two phases (a sliced table's
    slices added up: the work its jobs share), else the whole copy of a one-phase run."""
    if line_table.slices and line_table.slice_seconds:
        return sum(line_table.slice_seconds.values())
    if line_table.publish_seconds is not None:
        return line_table.load_seconds
    return line_table.seconds


def measured_history(nightly: Nightly, runs: int, out: Callable[[str], None]) -> History:
    """Per-table seconds of the last `runs` successful runs, from their table_copied and
    table_unchanged lines and, for the two phases, their table_loaded and slice_loaded lines."""
    history = History()
    for execution in recent_executions(nightly, runs, status="SUCCEEDED"):
        lines = log_lines(nightly, execution["name"], runlog.TABLE_EVENTS,
                          execution["startDate"], execution.get("stopDate"))
        if not history.measure(execution["name"], table_runs(lines)):
            out(f"{execution['name']}: no table_copied or table_unchanged lines (older than the "
                "log retention?)")
    if not history.runs:
        raise OperationsError(
            f"no successful run with copier log lines among the last {runs}: nothing measured "
            "to rebalance from (setup's size-based split stands)")
    return history


def logged_name(table: str, logged: Iterable[str]) -> str:
    """The name the copier logs for a configured table: schema-qualified, quoted only where
    needed; an unquoted name the source has only in lower case is logged folded."""
    try:
        (parts,) = runlog.split_table_list(table)
    except (runlog.CopierError, ValueError):
        return table
    if len(parts) == 1:
        parts = [("public", False), *parts]
    (schema, schema_quoted), (name, name_quoted) = parts
    exact = runlog.qualified(schema, name)
    folded = runlog.qualified(schema if schema_quoted else schema.lower(),
                              name if name_quoted else name.lower())
    return exact if exact in logged or folded not in logged else folded


def source_sizes(settings: Settings, out: Callable[[str], None]
                 ) -> tuple[dict[str, float] | None, frozenset[str]]:
    """Bytes per configured table when the source is reachable (as setup measures them), and
    the tables it could cut into slices."""
    found = table_weights(settings, out)
    return (found.weights, found.sliceable) if found.basis == SOURCE_SIZES else (None,
                                                                                frozenset())


def estimate_seconds(tables: list[str], history: History,
                     sizes: dict[str, float] | None) -> dict[str, Estimate]:
    """Median measured seconds per table; a table never measured gets its size at the runs'
    overall MB/s when the source was reachable, else the median of the measured tables."""
    estimates, missing = {}, []
    for table in tables:
        measured = history.seconds.get(logged_name(table, history.seconds))
        if measured:
            estimates[table] = Estimate(statistics.median(measured),
                                        f"median of {len(measured)} run(s)")
        else:
            missing.append(table)
    known = [e.seconds for e in estimates.values()] or [
        statistics.median(s) for s in history.seconds.values()]
    for table in missing:
        if sizes and table in sizes and history.bytes_per_second:
            estimates[table] = Estimate(sizes[table] / history.bytes_per_second,
                                        f"no history: size at {history.bytes_per_second / 1e6:.2f}"
                                        " MB/s")
        else:
            estimates[table] = Estimate(statistics.median(known),
                                        "no history: median of measured tables")
    return estimates


def unit_seconds(unit: str, estimates: dict[str, Estimate]) -> float:
    """A unit's predicted seconds: a slice's own measured ones, else its share of its table's."""
    return runlog.unit_weight(unit, {name: e.seconds for name, e in estimates.items()})


def job_seconds(assignment: list[list[str]], estimates: dict[str, Estimate]) -> list[float]:
    return [sum(unit_seconds(unit, estimates) for unit in units) for units in assignment]


def bounding_tables(assignment: list[list[str]],
                    estimates: dict[str, Estimate]) -> list[dict]:
    """Tables that alone take longer than the rest of their job's tables together and than
    an even share of the whole (total / jobs): no split finishes the run before them."""
    loads = job_seconds(assignment, estimates)
    share = sum(loads) / len(loads) if loads else 0
    found = []
    for number, (tables, load) in enumerate(zip(assignment, loads, strict=True), start=1):
        for table in tables:
            alone = unit_seconds(table, estimates)
            if alone > load - alone and alone >= share:
                found.append({"table": table, "job": job_name(number), "seconds": alone,
                              "rest_seconds": load - alone})
    return found


def assignment_view(assignment: list[list[str]], estimates: dict[str, Estimate],
                    publish: float | None = None) -> dict:
    """Each job's predicted seconds; the longest job, and the run: it plus the publish."""
    loads = job_seconds(assignment, estimates)
    longest = max(range(len(loads)), key=lambda i: (loads[i], -i))
    return {"jobs": [{"job": job_name(n), "seconds": load, "tables": tables}
                     for n, (tables, load) in enumerate(zip(assignment, loads, strict=True),
                                                        start=1)],
            "longest": {"job": job_name(longest + 1), "seconds": loads[longest]},
            "run_seconds": loads[longest] + (publish or 0.0)}


def apply_assignment(settings: Settings, aws: Aws, assignment: list[list[str]]) -> str:
    """Re-render the nightly state machine with this assignment and update it, as setup does."""
    deployment = Deployment(settings, aws, Options(), assignment)
    (machine,) = [r for r in resource_list(deployment) if isinstance(r, StateMachine)
                  and r.name == deployment.names.state_machine]
    return ensure_present(machine, dry_run=False).line(dry_run=False)


def rebalance(settings: Settings, aws: Aws, runs: int, apply: bool,
              out: Callable[[str], None]) -> dict:
    nightly = Nightly.of(settings, aws)
    names = nightly.names
    current = deployed_assignment(aws, names)
    if current is None:
        raise OperationsError(f"state machine {names.state_machine} is not deployed (or names no "
                              "TABLES per job): run setup_aws.py first")
    history = measured_history(nightly, runs, out)
    sizes, sliceable = None, frozenset()
    if any(logged_name(t, history.seconds) not in history.seconds for t in settings.tables):
        sizes, sliceable = source_sizes(settings, out)
    tables = list(dict.fromkeys([*settings.tables,
                                 *(runlog.split_unit(unit)[0] for job in current for unit in job)]))
    estimates = estimate_seconds(tables, history, sizes)
    for unit in (unit for job in current for unit in job):
        table, piece = runlog.split_unit(unit)
        measured = history.slice_seconds.get(
            f"{logged_name(table, history.seconds)}#{piece[0]}/{piece[1]}") if piece else None
        if measured:  # a slice of the current split: its own measured seconds
            estimates[unit] = Estimate(statistics.median(measured),
                                       f"median of {len(measured)} run(s) of the slice")
    # Cut what was cut before (its key allows it), and what the source says can be.
    if settings.splits_tables:
        measured_sliced = {key.rpartition("#")[0] for key in history.slice_seconds}
        sliceable = frozenset(sliceable) | {
            t for t in settings.tables
            if t in sliced_tables(current) or logged_name(t, history.seconds) in measured_sliced}
    else:
        sliceable = frozenset()
    threshold = None
    if settings.split_larger_than_mb and history.bytes_per_second:
        threshold = settings.split_larger_than_mb * 1e6 / history.bytes_per_second
    jobs = settings.jobs if sliceable else min(settings.jobs, len(settings.tables))
    proposed = [units for units in runlog.plan_units(
        {t: estimates[t].seconds for t in settings.tables}, jobs, sliceable, threshold) if units]
    publish = statistics.median(history.publish_seconds) if history.publish_seconds else None
    result = {
        "runs": history.runs,
        "estimates": {t: asdict(e) for t, e in estimates.items()},
        "publish_seconds": publish,
        "current": assignment_view(current, estimates, publish),
        "proposed": assignment_view(proposed, estimates, publish),
        "bounding": bounding_tables(proposed, estimates),
        "applied": None,
    }
    if apply:
        result["applied"] = apply_assignment(settings, aws, proposed).strip()
    return result


def rebalance_lines(result: dict, names: Names) -> list[str]:
    lines = [f"per-table seconds: median over {len(result['runs'])} successful run(s) "
             f"({', '.join(result['runs'])})"]
    lines += [f"  {table}: {e['seconds']:.0f} s ({e['basis']})"
              for table, e in result["estimates"].items() if not e["basis"].startswith("median")]
    for title, view in ((f"current (state machine {names.state_machine})", result["current"]),
                        ("proposed", result["proposed"])):
        lines.append(f"{title}:")
        lines += ["  " + line for line in aligned(
            ["job", "predicted", "tables"],
            [[j["job"], duration(j["seconds"]), ",".join(j["tables"])] for j in view["jobs"]],
            right={1})]
        lines.append(f"  longest: {view['longest']['job']}, {duration(view['longest']['seconds'])}"
                     + (f"; with the publish after it ({duration(result['publish_seconds'])}): "
                        f"{duration(view['run_seconds'])}" if result["publish_seconds"] else ""))
    lines += [f"warning: {b['table']} alone takes {duration(b['seconds'])}, longer than the rest "
              f"of {b['job']} ({duration(b['rest_seconds'])}): it bounds the run; splitting the "
              "table or a bigger compute type is what shortens the run, not rebalancing"
              for b in result["bounding"]]
    lines.append(result["applied"] or "not applied: add --apply to update the state machine")
    return lines


# --------------------------------------------------------------------------- command line


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    settings = argparse.ArgumentParser(add_help=False)
    add_settings_arguments(settings, SETTING_FIELDS)
    settings.add_argument("--json", action="store_true", help="JSON on stdout, for scripts")
    parser = Parser(description=__doc__.splitlines()[0],
                    formatter_class=argparse.RawDescriptionHelpFormatter,
                    epilog="\n".join(__doc__.splitlines()[2:10]) + "\n\n"
                    + exit_codes(dry_run=False))
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser("report", parents=[settings],
                                 help="recent runs, or one run's tables slowest first")
    report.add_argument("execution", nargs="?", help="a run's name (its date): per-table figures")
    report.add_argument("--last", type=positive, default=7, help="how many runs (default 7)")
    report.add_argument("--html", metavar="FILE",
                        help="with a run's name: also write its timeline page to FILE")
    picture = commands.add_parser("timeline", help="a local run's timeline page: the copier's "
                                  "JSON lines on stdin")
    picture.add_argument("--html", metavar="FILE", required=True, help="the page to write")
    balance = commands.add_parser("rebalance", parents=[settings],
                                  help="split the tables over the jobs by measured times")
    balance.add_argument("--runs", type=positive, default=7,
                         help="successful runs to take the median over (default 7)")
    balance.add_argument("--apply", action="store_true",
                         help="update the state machine with the proposed assignment")
    return parser


def report_command(settings: Settings, args: argparse.Namespace) -> list[str]:
    settings.validate()
    nightly = Nightly.of(settings, Aws(settings.region))
    if args.html and not args.execution:
        raise OperationsError("--html draws one run: name it (`operations.py report DATE --html "
                              "FILE`; `operations.py report` lists the recent runs)")
    if args.execution:
        if args.html:
            lines = run_lines(nightly, args.execution, timeline.EVENTS)
            print(write_timeline(lines, args.html, f"nightly-copy run {args.execution}"),
                  file=sys.stderr)
            tables = table_runs(lines)
        else:
            tables = report_tables(nightly, args.execution)
        return ([json.dumps(tables_json(args.execution, tables), indent=2)] if args.json
                else tables_table(tables))
    runs = report_runs(nightly, args.last)
    if args.json:
        return [json.dumps(runs_json(runs), indent=2)]
    if not runs:
        raise OperationsError(f"no executions of state machine {nightly.names.state_machine} "
                              "yet: `setup_aws.py --start` starts one")
    return runs_table(runs)


def rebalance_command(settings: Settings, args: argparse.Namespace) -> list[str]:
    settings.validate_for_setup()  # applying renders the whole definition, as setup does
    result = rebalance(settings, Aws(settings.region), args.runs, args.apply,
                       lambda line: print(line, file=sys.stderr))
    if args.json:
        return [json.dumps(result, indent=2)]
    return rebalance_lines(result, Names(settings.prefix))


def timeline_command(args: argparse.Namespace) -> list[str]:
    lines = [line for line in map(parse_line, sys.stdin) if line and line.get("event")]
    return [write_timeline(lines, args.html, "nightly-copy: a local run")]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = rebalance_command if args.command == "rebalance" else report_command

    def run() -> int:
        if args.command == "timeline":  # a local run's lines on stdin: no settings, no AWS
            print("\n".join(timeline_command(args)))
        else:
            print("\n".join(command(load_settings(args), args)))
        return EXIT_DONE

    return run_guarded(run, also=(OperationsError,))


if __name__ == "__main__":
    sys.exit(main())
