"""Post the nightly copy's outcome to Slack.

AWS Lambda handler for four kinds of event:

* the run summary the state machine sends after its publish step
  (``{"execution": {...}, "jobs": [...], "publish": {...}}``: the load phase's jobs and the
  publish; with a Transform step, ``"transform": {...}`` too): one message listing every
  job, the failed tables (a failed slice named with its table, its job and its error), the
  slowest, the unchanged (not written) and the sliced ones; the handler returns
  ``{"posted": True, "failed_jobs": N}`` (the publish and the transform counted as jobs);
* an SNS notification wrapping a CloudWatch alarm (the state machine failed, timed out or
  was aborted, or the alarm recovered): one message per record; returns ``{"posted": True}``;
* ``{"name_run": {"scheduled_time": ..., "timezone": ...}}`` from the starter state machine:
  returns the run's name and date, the date being the scheduled time's **local** date in the
  schedule's time zone (``run_date``; ``setup_aws.py --start`` uses the same function);
* ``{"already_started": {"name": ..., "state_machine": ...}}`` from the starter when the run
  for that date exists already: one message saying so; returns ``{"posted": True}``.

The Slack incoming-webhook URL is read once per cold start from the SSM SecureString named by
``WEBHOOK_PARAMETER``; ``SLACK_WEBHOOK_URL`` overrides it (tests, local runs). Only the
standard library, boto3 and runlog.py (the copier's lines: shipped in the same zip) are used,
because the Lambda runtime has no ``requests`` and no psycopg2.
Every failure to post raises, so the Lambda's Errors metric and Step Functions' retry see it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import boto3

import runlog  # shipped next to this file in the Lambda's zip: the copier's lines, read

logger = logging.getLogger(__name__)
logger.setLevel(logging.INFO)

HTTP_TIMEOUT_SECONDS = 10
MAX_POST_ATTEMPTS = 3  # the first try plus two retries after a 429
MAX_RETRY_AFTER_SECONDS = 30
SECTION_TEXT_LIMIT = 3000  # Slack: text of a section block
HEADER_TEXT_LIMIT = 150  # Slack: plain_text of a header block
MAX_BLOCKS = 50  # Slack: blocks in one message
FALLBACK_TEXT_LIMIT = 3000  # kept short: it is what notifications show
CAUSE_LIMIT = 600
TABLES_LIMIT = 800
ERROR_BODY_LIMIT = 500

SUCCEEDED = "SUCCEEDED"
SKIPPED = "SKIPPED"  # the Transform step, after a night that failed

# The per-table part of the summary, read from the copier's JSON lines in CloudWatch Logs.
LOG_GROUP_VARIABLE = "COPIER_LOG_GROUP"  # set by setup_aws.py: where the copier's lines land
LOG_READ_ATTEMPTS = 3  # a build's last lines can reach CloudWatch Logs seconds after it ends
LOG_READ_WAIT_SECONDS = 5
LOG_WINDOW_MARGIN_MS = 5 * 60 * 1000  # read from a little before the execution's start
SLOWEST_SHOWN = 5
SLICED_SECTIONS = 2  # blocks for the sliced tables at most; the rest are counted
FAILED_TABLE_SECTIONS = 6  # blocks for the failed tables at most; the rest are counted
ERROR_LINE_LIMIT = 500  # a late load job's line names the build quota: kept whole

# Sleep between 429 retries; tests replace it to record the wait instead of sleeping.
sleep = time.sleep

# Webhook URL read from SSM, kept for the life of the execution environment (cold start).
_webhook_url: str | None = None


class NotifyError(Exception):
    """Base class of this module's errors."""


class UnknownEventError(NotifyError, ValueError):
    """The event is neither a run summary nor an SNS notification."""


class WebhookConfigError(NotifyError):
    """The webhook URL cannot be found or is not usable."""


class SlackPostError(NotifyError):
    """Slack did not accept the message (non-2xx answer, or no answer at all)."""

    def __init__(self, status: int | None, body: str, attempts: int = 1):
        self.status = status
        self.body = body
        self.attempts = attempts
        what = f"HTTP {status}" if status is not None else "no HTTP response"
        super().__init__(f"Slack webhook refused the message: {what}: {body} "
                         f"(after {attempts} attempt{'s' if attempts != 1 else ''})")


def log_event(event: str, **fields: Any) -> None:
    """One JSON object a line, for Logs Insights. Never pass the webhook URL here."""
    logger.info(json.dumps({"event": event, **fields}, default=str))


# --------------------------------------------------------------------------- entry point


def handler(event: Any, context: Any) -> dict[str, Any]:
    if isinstance(event, dict) and isinstance(event.get("name_run"), dict):
        request = event["name_run"]
        day = run_date(parse_time(request.get("scheduled_time")), request.get("timezone"))
        log_event("run_named", name=run_name(day), scheduled_time=request.get("scheduled_time"),
                  timezone=request.get("timezone"))
        return {"name": run_name(day), "date": day.isoformat()}

    if isinstance(event, dict) and isinstance(event.get("already_started"), dict):
        post_to_slack(webhook_url(), already_started_message(event["already_started"]),
                      seconds_left=_seconds_left(context))
        log_event("already_started_posted", name=event["already_started"].get("name"))
        return {"posted": True}

    if is_sns_event(event):
        records = event["Records"]
        url = webhook_url()
        for record in records:
            payload = alarm_message(record["Sns"])
            post_to_slack(url, payload, seconds_left=_seconds_left(context))
        log_event("alarm_posted", records=len(records))
        return {"posted": True}

    if is_run_summary(event):
        report = table_report(event, _seconds_left(context))
        payload, failed = summary_message(event, report)
        post_to_slack(webhook_url(), payload, seconds_left=_seconds_left(context))
        log_event("summary_posted", execution=either_case(event.get("execution"), "name"),
                  jobs=len(event["jobs"]), failed_jobs=failed)
        return {"posted": True, "failed_jobs": failed}

    keys = sorted(event) if isinstance(event, dict) else type(event).__name__
    raise UnknownEventError(
        "unrecognised event: expected a run summary ({'execution': ..., 'jobs': [...]}) or an "
        f"SNS notification ({{'Records': [{{'EventSource': 'aws:sns', ...}}]}}); got {keys}"
    )


def is_sns_event(event: Any) -> bool:
    if not isinstance(event, dict) or not isinstance(event.get("Records"), list):
        return False
    records = event["Records"]
    return bool(records) and all(
        isinstance(r, dict)
        and (r.get("EventSource") or r.get("eventSource")) == "aws:sns"
        and isinstance(r.get("Sns"), dict)
        for r in records
    )


def is_run_summary(event: Any) -> bool:
    return (
        isinstance(event, dict)
        and isinstance(event.get("jobs"), list)
        and isinstance(event.get("execution", {}), dict | None)
    )


def _seconds_left(context: Any):
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if remaining is None:
        return None
    return lambda: remaining() / 1000


# --------------------------------------------------------------------------- webhook URL


def webhook_url() -> str:
    """SLACK_WEBHOOK_URL if set, else the SSM parameter (read once per cold start)."""
    global _webhook_url
    override = os.environ.get("SLACK_WEBHOOK_URL")
    if override:
        return _checked_url(override, "environment variable SLACK_WEBHOOK_URL")
    if _webhook_url is None:
        name = os.environ.get("WEBHOOK_PARAMETER")
        if not name:
            raise WebhookConfigError(
                "no Slack webhook configured: set WEBHOOK_PARAMETER to the name of the SSM "
                "SecureString holding it (or SLACK_WEBHOOK_URL for local runs)"
            )
        _webhook_url = _checked_url(read_webhook_parameter(name), f"SSM parameter {name}")
    return _webhook_url


def read_webhook_parameter(name: str) -> str:
    ssm = boto3.client("ssm")
    try:
        answer = ssm.get_parameter(Name=name, WithDecryption=True)
    except ssm.exceptions.ParameterNotFound:
        raise WebhookConfigError(
            f"SSM parameter {name} (WEBHOOK_PARAMETER) does not exist; run setup_aws.py to "
            "store the Slack webhook"
        ) from None
    except Exception as err:  # AccessDenied, KMS, throttling: say which parameter
        raise WebhookConfigError(f"cannot read SSM parameter {name}: {err}") from err
    log_event("webhook_loaded", parameter=name)
    return answer["Parameter"]["Value"]


def _checked_url(url: str, source: str) -> str:
    url = url.strip()
    if urllib.parse.urlsplit(url).scheme not in ("https", "http"):
        # Do not echo the value: it is a secret.
        raise WebhookConfigError(f"{source} does not hold an http(s) URL")
    return url


# --------------------------------------------------------------------------- posting


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect would turn the POST into a GET without body; treat it as an error."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def post_to_slack(url: str, payload: dict[str, Any], seconds_left=None) -> None:
    """POST the message; retry after 429 as Slack asks (bounded); raise on any other failure.

    ``seconds_left``, when given, returns the Lambda's remaining time: a retry that could not
    finish in time is not attempted, so the error says why instead of the Lambda timing out.
    """
    data = json.dumps(payload).encode("utf-8")
    for attempt in range(1, MAX_POST_ATTEMPTS + 1):
        request = urllib.request.Request(
            url, data=data, method="POST",
            headers={"Content-Type": "application/json; charset=utf-8"},
        )
        try:
            with _opener.open(request, timeout=HTTP_TIMEOUT_SECONDS) as response:
                response.read()
                log_event("slack_posted", status=response.status, attempts=attempt)
                return
        except urllib.error.HTTPError as err:
            body = _short(err.read().decode("utf-8", "replace").strip(), ERROR_BODY_LIMIT)
            if err.code != 429 or attempt == MAX_POST_ATTEMPTS:
                raise SlackPostError(err.code, body, attempt) from None
            wait = retry_after_seconds(err.headers.get("Retry-After"))
            if seconds_left is not None and seconds_left() < wait + HTTP_TIMEOUT_SECONDS + 1:
                raise SlackPostError(
                    err.code, f"{body} (not retrying: Lambda time left is too short)", attempt
                ) from None
            log_event("slack_rate_limited", retry_after=wait, attempt=attempt)
            sleep(wait)
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise SlackPostError(None, f"{type(err).__name__}: {reason}", attempt) from None


def retry_after_seconds(header: str | None) -> int:
    """Seconds to wait after a 429: the Retry-After header, at least 1, at most 30."""
    try:
        wait = int(float(header or ""))
    except ValueError:
        wait = 1
    return max(1, min(wait, MAX_RETRY_AFTER_SECONDS))


# --------------------------------------------------------------------------- run summary


@dataclass
class JobResult:
    name: str
    tables: list[str]
    status: str
    seconds: float | None
    log_link: str | None
    error: str | None = None
    cause: str | None = None

    @property
    def failed(self) -> bool:
        return self.status not in (SUCCEEDED, SKIPPED)


def summary_message(event: dict[str, Any],
                    report: TableReport | None = None) -> tuple[dict[str, Any], int]:
    """The Slack payload for a run summary, and the number of failed jobs; with the tables'
    results from the logs (`report`), the failed tables and the slowest ones too."""
    execution = event.get("execution") or {}
    jobs = [job_result(i, job) for i, job in enumerate(event["jobs"], start=1)]
    publish = (job_result(len(jobs) + 1, event["publish"])
               if isinstance(event.get("publish"), dict) else None)
    if publish and not publish.tables:  # every table of the run, listed once: the jobs'
        publish.tables = run_tables(event)
    # the Transform step (a state machine of the user's), when the deployment has one
    transform = (job_result(len(jobs) + 2, event["transform"])
                 if isinstance(event.get("transform"), dict) else None)
    if transform and not transform.tables:  # it was given every table of the run
        transform.tables = run_tables(event)
    steps = [step for step in (publish, transform) if step]
    failed = sum(job.failed for job in jobs) + sum(step.failed for step in steps)
    total = len(jobs)
    name = str(either_case(execution, "name") or "unnamed execution")
    started = parse_time(either_case(execution, "start_time") or either_case(execution, "startTime"))
    finished = now()
    took = (finished - started).total_seconds() if started else _span_of(event["jobs"])

    if total == 0:
        emoji, verdict = ":warning:", "no job results were reported"
    elif failed == 0:
        emoji, verdict = ":white_check_mark:", f"all {total} job{plural(total)} succeeded"
        if transform:
            verdict += ", the transform too"
    elif transform and transform.failed and failed == 1:
        emoji, verdict = ":x:", f"all {total} job{plural(total)} succeeded, the transform failed"
    elif not any(job.failed for job in jobs):
        emoji, verdict = ":x:", f"all {total} job{plural(total)} loaded, the publish failed"
    else:
        broken = sum(job.failed for job in jobs)
        emoji, verdict = ":x:", f"{broken} of {total} job{plural(total)} failed"
        if publish:
            verdict += f", the publish {'failed' if publish.failed else 'succeeded'}"
    headline = f"Nightly copy {name}: {verdict}"

    execution_link = execution_console_url(either_case(execution, "id"))
    run_facts = [
        f"*Execution:* {_link(execution_link, name)}",
        f"*Started:* {format_time(started)}",
        f"*Total duration:* {runlog.format_duration(took)}",
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "header",
         "text": {"type": "plain_text", "emoji": True,
                  "text": _short(f"{emoji} {headline}", HEADER_TEXT_LIMIT)}},
        _section("\n".join(run_facts)),
        *_table_blocks(report, name),
        {"type": "divider"},
    ]
    blocks += _job_blocks(jobs + steps, MAX_BLOCKS - len(blocks))

    text_lines = [f"{headline} (started {format_time(started)}, took {runlog.format_duration(took)})"]
    if report and report.failed:
        text_lines.append(f"Failed tables ({len(report.failed)}): "
                          + ", ".join(t.table for t in report.failed))
    if report and report.unchanged:
        text_lines.append(f"Unchanged tables, not written: {len(report.unchanged)}")
    text_lines += [_job_text_line(job) for job in jobs + steps]
    text = _escape(_short("\n".join(text_lines), FALLBACK_TEXT_LIMIT))
    payload = {"text": text, "blocks": blocks}
    return payload, failed


def job_result(position: int, job: Any) -> JobResult:
    """Normalise one branch result; anything unreadable counts as a failed job."""
    if not isinstance(job, dict):
        return JobResult(f"job-{position}", [], "UNKNOWN", None, None,
                         error="unreadable job result", cause=_short(repr(job), CAUSE_LIMIT))
    error, cause = job.get("error"), job.get("cause")
    if isinstance(error, dict):  # a whole Catch error object: {"Error": ..., "Cause": ...}
        error, cause = error.get("Error"), cause or error.get("Cause")
    if cause is None and job.get("build_status"):  # what the state machine kept of the build
        cause = f"build {job['build_status']}"
    build = parse_build(cause)
    status = str(job.get("status") or (build or {}).get("status") or "UNKNOWN").upper()

    start, end = parse_time(job.get("start")), parse_time(job.get("end"))
    if build and not (start and end):
        start, end = start or build["start"], end or build["end"]
    seconds = (end - start).total_seconds() if start and end else None

    return JobResult(
        name=str(job.get("job") or f"job-{position}"),
        tables=listed_units(job.get("tables")),
        status=status,
        seconds=seconds,
        # the Transform step's link is its execution's page
        log_link=(job.get("log_link") or (build or {}).get("log_link")
                  or execution_console_url(job.get("execution_arn"))),
        error=_short(str(error), 200) if error else None,
        cause=describe_cause(cause, build) if (cause or build) else None,
    )


def listed_units(tables: Any) -> list[str]:
    """A job's units of work, as the state machine lists them (${TableList}). Never split from
    the TABLES text: a quoted name may hold a comma, and only the copier parses that text."""
    if isinstance(tables, list):
        return [str(t) for t in tables]
    return []


def parse_build(cause: Any) -> dict[str, Any] | None:
    """Status, log link, times and failed phase from a cause holding a CodeBuild build.

    Step Functions puts the build object, serialised as JSON, in the Cause of a failed
    ``startBuild.sync``; key case varies (``buildStatus`` / ``BuildStatus``), and the build
    may be wrapped in ``{"Build": ...}``. Returns None when the cause is not such a JSON object.
    """
    if isinstance(cause, str):
        try:
            cause = json.loads(cause)
        except ValueError:
            return None
    if not isinstance(cause, dict):
        return None
    build = either_case(cause, "build")
    if not isinstance(build, dict):
        build = cause
    status = either_case(build, "buildStatus")
    logs = either_case(build, "logs")
    if status is None and logs is None and either_case(build, "phases") is None:
        return None
    failed_phase = None
    for phase in either_case(build, "phases") or []:
        if isinstance(phase, dict) and either_case(phase, "phaseStatus") not in (None, SUCCEEDED):
            messages = [str(either_case(c, "message")) for c in either_case(phase, "contexts") or []
                        if isinstance(c, dict) and either_case(c, "message")]
            phase_status = str(either_case(phase, "phaseStatus")).upper()
            failed_phase = str(either_case(phase, "phaseType") or "?")
            if phase_status not in ("FAILED", str(status).upper()):
                failed_phase += f" ({phase_status})"
            if messages:
                failed_phase += ": " + "; ".join(messages)
            break
    return {
        "status": str(status).upper() if status else None,
        "log_link": either_case(logs, "deepLink") if isinstance(logs, dict) else None,
        "start": parse_time(either_case(build, "startTime")),
        "end": parse_time(either_case(build, "endTime")),
        "failed_phase": failed_phase,
    }


def describe_cause(cause: Any, build: dict[str, Any] | None) -> str:
    """A short, readable cause: the build's status and failed phase, or the text itself."""
    if build:
        parts = []
        if build["status"]:
            parts.append(f"build {build['status']}")
        if build["failed_phase"]:
            parts.append(f"in phase {build['failed_phase']}")
        if parts:
            return _short(" ".join(parts), CAUSE_LIMIT)
    if not isinstance(cause, str):
        cause = json.dumps(cause, default=str)
    return _short(" ".join(cause.split()), CAUSE_LIMIT)


def _job_blocks(jobs: list[JobResult], room: int) -> list[dict[str, Any]]:
    """One section per job; with more jobs than blocks allow, failures first, rest counted."""
    if len(jobs) <= room:
        return [_section(_job_mrkdwn(job)) for job in jobs]
    shown = sorted(jobs, key=lambda job: not job.failed)[: room - 1]
    hidden = [job for job in jobs if job not in shown]
    hidden_failed = sum(job.failed for job in hidden)
    rest = f"…and {len(hidden)} more job{plural(len(hidden))} ({hidden_failed} failed): " + ", ".join(
        _escape(job.name) for job in hidden
    )
    return [_section(_job_mrkdwn(job)) for job in shown] + [_section(rest)]


def _job_mrkdwn(job: JobResult) -> str:
    icon = ":x:" if job.failed else ":white_check_mark:"
    head = [f"{icon} *{_escape(job.name)}* {job.status}", runlog.format_duration(job.seconds)]
    if job.log_link:
        head.append(_link(job.log_link, "logs"))
    lines = [" · ".join(head), f"*Tables ({len(job.tables)}):* {_table_list(job.tables)}"]
    if job.failed:
        if job.error:
            lines.append(f"*Error:* `{_escape(job.error)}`")
        if job.cause:
            lines.append(f"*Cause:* {_escape(job.cause)}")
    return "\n".join(lines)


def _job_text_line(job: JobResult) -> str:
    line = f"{job.name} {job.status} ({runlog.format_duration(job.seconds)}): {', '.join(job.tables)}"
    if job.failed and (job.error or job.cause):
        line += " - " + ": ".join(x for x in (job.error, job.cause) if x)
    return line


def _table_list(tables: list[str]) -> str:
    if not tables:
        return "none listed"
    text = ", ".join(f"`{_escape(t)}`" for t in tables)
    if len(text) <= TABLES_LIMIT:
        return text
    shown: list[str] = []
    for table in tables:
        if len(", ".join(shown + [f"`{_escape(table)}`"])) > TABLES_LIMIT - 20:
            break
        shown.append(f"`{_escape(table)}`")
    return ", ".join(shown) + f" … (+{len(tables) - len(shown)} more)"


def _span_of(jobs: list[Any]) -> float | None:
    """Earliest start to latest end over the jobs: the duration when the run's start is unknown."""
    starts = [parse_time(j.get("start")) for j in jobs if isinstance(j, dict)]
    ends = [parse_time(j.get("end")) for j in jobs if isinstance(j, dict)]
    starts, ends = [s for s in starts if s], [e for e in ends if e]
    if not starts or not ends:
        return None
    return (max(ends) - min(starts)).total_seconds()


def execution_console_url(arn: Any) -> str | None:
    """Step Functions console page of an execution ARN (arn:aws:states:REGION:ACCOUNT:...)."""
    if not isinstance(arn, str) or not arn.startswith("arn:"):
        return None
    parts = arn.split(":")
    if len(parts) < 4 or not parts[3]:
        return None
    region = parts[3]
    return (f"https://{region}.console.aws.amazon.com/states/home?region={region}"
            f"#/v2/executions/details/{arn}")


# --------------------------------------------------------------------------- tables of the run


@dataclass
class TableReport:
    """What the copier's log lines say about each table; ``problem`` says why some or all of
    it is missing (logs not readable, or not there yet)."""

    outcomes: list[runlog.TableOutcome]
    expected: int
    problem: str | None = None

    @property
    def failed(self) -> list[runlog.TableOutcome]:
        return sorted((t for t in self.outcomes if t.outcome == "failed"), key=lambda t: t.table)

    @property
    def slowest(self) -> list[runlog.TableOutcome]:
        """The copied tables that took longest: an unchanged one wrote nothing, so is never slow."""
        copied = [t for t in self.outcomes if t.copied and t.seconds is not None]
        return sorted(copied, key=lambda t: (-t.seconds, t.table))[:SLOWEST_SHOWN]

    @property
    def unchanged(self) -> list[runlog.TableOutcome]:
        return sorted((t for t in self.outcomes if t.outcome == "unchanged"), key=lambda t: t.table)

    @property
    def sliced(self) -> list[runlog.TableOutcome]:
        return sorted((t for t in self.outcomes if t.slices), key=lambda t: t.table)


def table_report(event: dict[str, Any], seconds_left=None) -> TableReport | None:
    """The run's tables from its copier lines in COPIER_LOG_GROUP; None when that is not set.

    Read again (up to LOG_READ_ATTEMPTS times) while fewer tables than the jobs list are found:
    the last lines of a build may not have reached CloudWatch Logs yet."""
    group = os.environ.get(LOG_GROUP_VARIABLE)
    if not group:
        return None
    execution = event.get("execution") or {}
    run = either_case(execution, "name")
    expected = len(run_tables(event))
    if not run:
        return TableReport([], expected, "the summary names no execution, so its log lines "
                                         "cannot be found")
    started = parse_time(either_case(execution, "start_time") or either_case(execution, "startTime"))
    # a line without a job in a stream no line names one of (a job whose copier ended before
    # it wrote one): the job the state machine gave the table
    listed: dict[str, str] = {}
    for n, j in enumerate(event["jobs"], start=1):
        for unit in listed_units(j.get("tables")) if isinstance(j, dict) else []:
            table = runlog.read_unit(unit)[0]
            listed.setdefault(table if "." in table else f"public.{table}",
                              str(j.get("job") or f"job-{n}"))
    report = TableReport([], expected)
    for attempt in range(1, LOG_READ_ATTEMPTS + 1):
        report = read_table_report(group, str(run), started, expected, listed)
        if len(report.outcomes) >= expected or attempt == LOG_READ_ATTEMPTS or (
                report.problem and "may not read" in report.problem):
            break
        if seconds_left is not None and seconds_left() < LOG_READ_WAIT_SECONDS + 2 * HTTP_TIMEOUT_SECONDS:
            break
        sleep(LOG_READ_WAIT_SECONDS)
    log_event("tables_read", log_group=group, run=run, found=len(report.outcomes),
              expected=expected, problem=report.problem)
    return report


def run_tables(event: dict[str, Any]) -> list[str]:
    """The run's tables: the publish's list, else each table the jobs' units name once."""
    publish = event.get("publish")
    if isinstance(publish, dict) and listed_units(publish.get("tables")):
        return listed_units(publish.get("tables"))
    return list(dict.fromkeys(runlog.read_unit(unit)[0] for j in event["jobs"] if isinstance(j, dict)
                              for unit in listed_units(j.get("tables"))))


def read_table_report(group: str, run: str, started: datetime | None, expected: int,
                      listed: dict[str, str] | None = None) -> TableReport:
    events = runlog.TABLE_EVENTS
    either = " || ".join(f'($.event = "{name}")' for name in events)
    request: dict[str, Any] = {"logGroupName": group,
                               "filterPattern": f'{{ ($.run = "{run}") && ({either}) }}'}
    if started:
        request["startTime"] = int(started.timestamp() * 1000) - LOG_WINDOW_MARGIN_MS
    lines: list[dict[str, Any]] = []
    try:
        for page in boto3.client("logs").get_paginator("filter_log_events").paginate(**request):
            for found in page["events"]:
                try:
                    line = json.loads(found.get("message", ""))
                except ValueError:
                    continue
                # the filter pattern does this on AWS; checked again for any other reader
                if isinstance(line, dict) and line.get("run") == run and line.get("event") in events:
                    lines.append({**line, runlog.STREAM: found.get("logStreamName", ""),
                                  "@timestamp": found.get("timestamp", 0)})
    except Exception as err:  # noqa: BLE001 - the summary is sent whatever the logs say
        code = getattr(err, "response", {}).get("Error", {}).get("Code", type(err).__name__)
        if code in ("AccessDeniedException", "AccessDenied"):
            why = f"this function may not read log group {group} ({code})"
        elif code == "ResourceNotFoundException":
            why = f"log group {group} does not exist yet"
        else:
            why = f"reading log group {group} failed: {code}: {_short(str(err), 200)}"
        return TableReport([], expected, why)

    lines.sort(key=lambda line: line["@timestamp"])
    # a table only loaded, or only staged, has no result yet
    outcomes = [t for t in runlog.table_outcomes(lines) if t.ok or t.outcome == "failed"]
    for outcome in outcomes:
        for failure in outcome.failures:
            failure.job = failure.job or (listed or {}).get(outcome.table)
    problem = None
    if not outcomes:
        problem = (f"no table lines for run {run} in log group {group} yet (CloudWatch Logs "
                   "can lag behind a build by a minute)")
    elif len(outcomes) < expected:
        problem = (f"only {len(outcomes)} of {expected} tables have a result line in the logs "
                   "so far")
    return TableReport(outcomes, expected, problem)


def _table_blocks(report: TableReport | None, name: str) -> list[dict[str, Any]]:
    """Failed tables with their error line, then the slowest tables; the fallback note when the
    logs could not (yet) be read; the unchanged tables, named in one section; the sliced tables
    with their load and publish. At most FAILED_TABLE_SECTIONS + SLICED_SECTIONS + 3 blocks."""
    if report is None:
        return []
    blocks: list[dict[str, Any]] = []
    if report.problem:
        blocks.append(_section(
            f":hourglass_flowing_sand: *Per-table results incomplete:* {_escape(report.problem)}. "
            "Each job's logs link below has them; later, "
            f"`python3 operations.py report {_escape(name)}` lists every table."))
    failed = report.failed
    if failed:
        lines = [f"`{_escape(t.table)}` ({_escape(t.where or '?')}): "
                 + _escape(_short(" ".join((t.error or "").split()), ERROR_LINE_LIMIT)) for t in failed]
        blocks += _packed_sections(f":x: *Failed tables ({len(failed)}):*", lines,
                                   FAILED_TABLE_SECTIONS, "failed table")
    slowest = report.slowest
    if slowest:
        blocks.append(_section(":snail: *Slowest tables:* " + ", ".join(
            f"`{_escape(t.table)}` {runlog.format_duration(t.seconds)} ({_escape(','.join(t.loaded_by))})"
            for t in slowest)))
    unchanged = report.unchanged
    if unchanged:
        blocks.append(_section(f":recycle: *Unchanged, not written ({len(unchanged)}):* "
                               + _table_list([t.table for t in unchanged])))
    sliced = report.sliced
    if sliced:
        blocks += _packed_sections(":knife: *Sliced tables:*", [
            f"`{_escape(t.table)}`: {_escape(t.figures())}"
            + ("" if t.copied else " (unchanged)" if t.ok else " (not published)") for t in sliced],
            SLICED_SECTIONS, "sliced table")
    return blocks


def _packed_sections(title: str, lines: list[str], most: int, noun: str) -> list[dict[str, Any]]:
    """`lines` in at most `most` sections of at most SECTION_TEXT_LIMIT characters each; the
    lines that do not fit are counted in an "…and N more" line."""
    room = SECTION_TEXT_LIMIT - 60  # kept free for the "…and N more" line
    sections: list[list[str]] = [[title]]
    shown = 0
    for line in lines:
        line = _short(line, room - 10)
        if len("\n".join(sections[-1] + [line])) > room:
            if len(sections) == most:
                break
            sections.append([])
        sections[-1].append(line)
        shown += 1
    if shown < len(lines):
        rest = len(lines) - shown
        sections[-1].append(f"…and {rest} more {noun}{plural(rest)}")
    return [_section("\n".join(text)) for text in sections]


# --------------------------------------------------------------------------- run names

# setup_aws.py puts the schedule's zone file here (tz/<key>), so the date is computed with the
# same time zone rules setup checked, whatever the Lambda runtime ships.
BUNDLED_ZONES = Path(__file__).resolve().parent / "tz"


def zone(key: Any) -> ZoneInfo:
    """The IANA time zone `key`: the zone file bundled with the function, else the system's."""
    if not isinstance(key, str) or not key or key.startswith("/") or ".." in key.split("/"):
        raise NotifyError(f"not a time zone name: {key!r}")
    bundled = BUNDLED_ZONES / key
    if bundled.is_file():
        with bundled.open("rb") as tzfile:
            return ZoneInfo.from_file(tzfile, key=key)
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise NotifyError(f"unknown time zone {key!r}") from err


def run_date(moment: datetime | None, timezone: Any) -> date:
    """The date a run is for: the local calendar date of `moment` in the schedule's time zone.

    One run per local date, whatever the UTC offset that night (days of 23 and 25 hours
    included): 19:30 in New York is 00:30Z the next day in winter and 23:30Z in summer, and
    both are the local date they fire on."""
    if moment is None:
        raise NotifyError("name_run needs a scheduled_time such as 2027-03-14T23:30:00Z")
    return moment.astimezone(zone(timezone)).date()


def run_name(day: date) -> str:
    """The execution name of the run for one date: at most one run per name, so per date."""
    return day.isoformat()


def already_started_message(started: dict[str, Any]) -> dict[str, Any]:
    """The schedule fired, but the run for its date exists already: nothing was copied."""
    name = str(started.get("name") or "?")
    machine = started.get("state_machine")
    execution = (machine.replace(":stateMachine:", ":execution:") + f":{name}"
                 if isinstance(machine, str) else None)
    headline = f"Nightly copy {name}: not started again, the run for this date exists"
    detail = ("The schedule fired, but a run with this date's name was already started "
              "(by hand with `setup_aws.py --start`, or by an earlier trigger). Nothing was "
              "copied a second time; that run's own summary says how it went: "
              + _link(execution_console_url(execution), name) + ".")
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "emoji": True,
                                    "text": _short(f":information_source: {headline}",
                                                   HEADER_TEXT_LIMIT)}},
        _section(detail),
    ]
    return {"text": _escape(headline), "blocks": blocks}


# --------------------------------------------------------------------------- alarms


ALARM_ICONS = {"ALARM": ":rotating_light:", "OK": ":white_check_mark:",
               "INSUFFICIENT_DATA": ":grey_question:"}


def alarm_message(sns: dict[str, Any]) -> dict[str, Any]:
    """The Slack payload for one SNS notification, normally a CloudWatch alarm change."""
    raw = sns.get("Message") or ""
    try:
        alarm = json.loads(raw)
    except (TypeError, ValueError):
        alarm = None
    if not isinstance(alarm, dict) or "AlarmName" not in alarm:
        return _plain_sns_message(sns.get("Subject"), raw)

    name = str(alarm["AlarmName"])
    state = str(alarm.get("NewStateValue") or "UNKNOWN")
    icon = ALARM_ICONS.get(state, ":warning:")
    if state == "ALARM":
        headline = f"ALARM: {name}"
        meaning = "The nightly copy's state machine failed, timed out or was aborted."
    elif state == "OK":
        headline = f"OK: {name} is back to normal"
        meaning = "No failed, timed-out or aborted executions in the alarm's period."
    else:
        headline = f"{state}: {name}"
        meaning = ""
    description = alarm.get("AlarmDescription") or meaning
    reason = alarm.get("NewStateReason") or ""
    changed = parse_time(alarm.get("StateChangeTime"))
    link = alarm_console_url(alarm.get("AlarmArn"), name)

    details = [f"*{_escape(description)}*"] if description else []
    if reason:
        details.append(f"*Reason:* {_escape(_short(reason, CAUSE_LIMIT))}")
    facts = [f"State: {alarm.get('OldStateValue') or '?'} → {state}",
             f"Changed: {format_time(changed)}"]
    if alarm.get("Region"):
        facts.append(f"Region: {_escape(str(alarm['Region']))}")
    if link:
        facts.append(_link(link, "Open alarm"))

    blocks = [
        {"type": "header",
         "text": {"type": "plain_text", "emoji": True,
                  "text": _short(f"{icon} {headline}", HEADER_TEXT_LIMIT)}},
    ]
    if details:
        blocks.append(_section("\n".join(details)))
    blocks.append({"type": "context",
                   "elements": [{"type": "mrkdwn", "text": _short(" · ".join(facts), 3000)}]})
    text = f"{headline} - {reason}" if reason else headline
    return {"text": _escape(_short(text, FALLBACK_TEXT_LIMIT)), "blocks": blocks}


def _plain_sns_message(subject: Any, raw: Any) -> dict[str, Any]:
    title = str(subject or "Notification from SNS")
    body = _short(str(raw).strip(), SECTION_TEXT_LIMIT - 100) or "(empty message)"
    blocks = [
        {"type": "header",
         "text": {"type": "plain_text", "emoji": True,
                  "text": _short(f":warning: {title}", HEADER_TEXT_LIMIT)}},
        _section(_escape(body)),
    ]
    return {"text": _escape(_short(f"{title}: {body}", FALLBACK_TEXT_LIMIT)), "blocks": blocks}


def alarm_console_url(arn: Any, name: str) -> str | None:
    """CloudWatch console page of an alarm ARN (arn:aws:cloudwatch:REGION:ACCOUNT:alarm:NAME)."""
    if not isinstance(arn, str) or not arn.startswith("arn:"):
        return None
    region = arn.split(":")[3] if arn.count(":") >= 3 else ""
    if not region:
        return None
    return (f"https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}"
            f"#alarmsV2:alarm/{urllib.parse.quote(name, safe='')}")


# --------------------------------------------------------------------------- formatting


def now() -> datetime:
    return datetime.now(UTC)


_NUMBER = re.compile(r"^-?\d+(\.\d+)?([eE][+-]?\d+)?$")


def parse_time(value: Any) -> datetime | None:
    """A UTC datetime from epoch seconds, epoch milliseconds or an ISO 8601 string.

    Numbers above 1e11 are taken as milliseconds (1e11 seconds is the year 5138).
    Anything unreadable gives None, so a missing or odd time never breaks the message.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        value = float(value)
    try:
        if isinstance(value, int | float):
            seconds = value / 1000 if abs(value) > 1e11 else value
            return datetime.fromtimestamp(seconds, UTC)
        if isinstance(value, str):
            text = value.strip()
            if text.endswith(("Z", "z")):
                text = text[:-1] + "+00:00"
            # CloudWatch writes offsets without a colon: 2026-11-27T03:00:01.123+0000
            text = re.sub(r"([+-]\d\d)(\d\d)$", r"\1:\2", text)
            parsed = datetime.fromisoformat(text)
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            return parsed.astimezone(UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return None


def format_time(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "unknown"


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _short(text, SECTION_TEXT_LIMIT)}}


def _link(url: Any, label: str) -> str:
    """A Slack link, or just the label when the URL is missing or would break the markup."""
    if not isinstance(url, str) or not url.startswith(("https://", "http://")) or any(
        c in url for c in "<>| \n"
    ):
        return _escape(label)
    return f"<{url.replace('&', '&amp;')}|{_escape(label)}>"


def _escape(text: str) -> str:
    """Slack mrkdwn needs only &, < and > escaped."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def either_case(mapping: Any, key: str) -> Any:
    """mapping[key] ignoring the case of its first letter (startTime / StartTime)."""
    if not isinstance(mapping, dict):
        return None
    if key in mapping:
        return mapping[key]
    other = key[0].swapcase() + key[1:]
    return mapping.get(other)


def plural(n: int) -> str:
    return "" if n == 1 else "s"
