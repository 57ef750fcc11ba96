"""notify_lambda against a real HTTP server on 127.0.0.1 standing in for Slack."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

import notify_lambda
from notify_lambda import SlackPostError, UnknownEventError, WebhookConfigError

REPO = Path(__file__).resolve().parent.parent
WEBHOOK_PATH = "/services/T000/B000/secretsecret"
EXECUTION_ARN = "arn:aws:states:eu-west-1:123456789012:execution:copy-nightly:2026-11-27"
NOW = datetime(2026, 11, 27, 3, 45, 31, 123000, tzinfo=UTC)  # 45m 30s after the start below
DEEP_LINK = (
    "https://console.aws.amazon.com/cloudwatch/home?region=eu-west-1"
    "#logEvent:group=/aws/codebuild/copy;stream=4711"
)


# --------------------------------------------------------------------------- fake Slack


class FakeSlack:
    """Records every request; answers from a script of (status, body, headers), then 200 ok."""

    def __init__(self):
        self.requests: list[dict] = []
        self.replies: list[tuple[int, str, dict]] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with fake.lock:
                    fake.requests.append({
                        "path": self.path,
                        "content_type": self.headers.get("Content-Type"),
                        "json": json.loads(raw),
                    })
                    status, body, headers = (
                        fake.replies.pop(0) if fake.replies else (200, "ok", {})
                    )
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body.encode())))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url = self.base + WEBHOOK_PATH
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def reply(self, status: int, body: str, headers: dict | None = None) -> None:
        self.replies.append((status, body, headers or {}))

    @property
    def payloads(self) -> list[dict]:
        return [r["json"] for r in self.requests]

    def close(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
            self.server.server_close()
            self.thread.join()


@pytest.fixture
def slack():
    fake = FakeSlack()
    yield fake
    fake.close()


@pytest.fixture(autouse=True)
def fresh_lambda(monkeypatch):
    """A cold start for every test: no cached webhook, no webhook env, fixed clock, no sleeping."""
    monkeypatch.setattr(notify_lambda, "_webhook_url", None)
    monkeypatch.delenv("SLACK_WEBHOOK_URL", raising=False)
    monkeypatch.delenv("WEBHOOK_PARAMETER", raising=False)
    monkeypatch.setattr(notify_lambda, "now", lambda: NOW)
    waits: list[float] = []
    monkeypatch.setattr(notify_lambda, "sleep", waits.append)
    return waits


@pytest.fixture
def waits(fresh_lambda):
    return fresh_lambda


@pytest.fixture
def webhook_env(slack, monkeypatch):
    monkeypatch.setenv("SLACK_WEBHOOK_URL", slack.url)
    return slack


# --------------------------------------------------------------------------- events


def summary(*jobs: dict) -> dict:
    return {
        "execution": {"name": "2026-11-27", "id": EXECUTION_ARN,
                      "start_time": "2026-11-27T03:00:01.123Z"},
        "jobs": list(jobs),
    }


def ok_job(name: str, tables: str, start, end) -> dict:
    return {"job": name, "tables": tables.split(","), "status": "SUCCEEDED", "build_id": f"copy:{name}",
            "log_link": f"https://console.aws.amazon.com/cloudwatch/{name}",
            "start": start, "end": end}


BUILD_CAUSE = json.dumps({
    "Arn": "arn:aws:codebuild:eu-west-1:123456789012:build/copy:4711",
    "BuildStatus": "FAILED",
    "StartTime": 1795748402000,  # 2026-11-27T03:00:02Z in epoch ms
    "EndTime": 1795748582500,  # 3m 00.5s later
    "Logs": {"DeepLink": DEEP_LINK, "GroupName": "/aws/codebuild/copy"},
    "Phases": [
        {"PhaseType": "SUBMITTED", "PhaseStatus": "SUCCEEDED"},
        {"PhaseType": "BUILD", "PhaseStatus": "FAILED", "Contexts": [
            {"StatusCode": "COMMAND_EXECUTION_ERROR",
             "Message": "Error while executing command: python copier.py. Reason: exit status 1"}
        ]},
    ],
})


def sns_event(message: str, subject: str = "ALARM: \"copy-nightly-failed\"") -> dict:
    return {"Records": [{
        "EventSource": "aws:sns", "EventVersion": "1.0",
        "Sns": {"Type": "Notification", "Subject": subject, "Message": message,
                "TopicArn": "arn:aws:sns:eu-west-1:123456789012:copy-alarms"},
    }]}


def alarm(state: str, old: str, reason: str) -> str:
    return json.dumps({
        "AlarmName": "copy-nightly-failed",
        "AlarmDescription": "The nightly copy did not finish",
        "AlarmArn": "arn:aws:cloudwatch:eu-west-1:123456789012:alarm:copy-nightly-failed",
        "NewStateValue": state, "OldStateValue": old, "NewStateReason": reason,
        "StateChangeTime": "2026-11-27T04:10:00.123+0000",
        "Region": "EU (Ireland)",
        "Trigger": {"Metrics": [{"Id": "m1"}], "Threshold": 1.0},
    })


def section_texts(payload: dict) -> list[str]:
    return [b["text"]["text"] for b in payload["blocks"] if b["type"] == "section"]


def header_text(payload: dict) -> str:
    return payload["blocks"][0]["text"]["text"]


# --------------------------------------------------------------------------- run summaries


def test_all_succeeded_posts_one_summary(webhook_env):
    event = summary(
        ok_job("job-1", "public.orders,public.customers", 1795748401, 1795749124),  # epoch s
        ok_job("job-2", "public.events", 1795748401500, 1795748461500),  # epoch ms
    )

    result = notify_lambda.handler(event, None)

    assert result == {"posted": True, "failed_jobs": 0}
    assert len(webhook_env.requests) == 1
    request = webhook_env.requests[0]
    assert request["path"] == WEBHOOK_PATH
    assert request["content_type"].startswith("application/json")
    payload = request["json"]
    assert header_text(payload) == ":white_check_mark: Nightly copy 2026-11-27: all 2 jobs succeeded"
    text = payload["text"]
    assert text.splitlines()[0] == (
        "Nightly copy 2026-11-27: all 2 jobs succeeded "
        "(started 2026-11-27 03:00:01 UTC, took 45m 30s)"
    )
    assert "job-1 SUCCEEDED (12m 03s): public.orders, public.customers" in text
    assert "job-2 SUCCEEDED (1m 00s): public.events" in text
    run, job1, job2 = section_texts(payload)
    assert "*Started:* 2026-11-27 03:00:01 UTC" in run
    assert "*Total duration:* 45m 30s" in run
    assert f"/v2/executions/details/{EXECUTION_ARN}|2026-11-27>" in run
    assert "https://eu-west-1.console.aws.amazon.com/states/" in run
    assert job1.startswith(":white_check_mark: *job-1* SUCCEEDED · 12m 03s · ")
    assert "<https://console.aws.amazon.com/cloudwatch/job-1|logs>" in job1
    assert "*Tables (2):* `public.orders`, `public.customers`" in job1
    assert "*Error:*" not in job1
    assert "*Tables (1):* `public.events`" in job2


def test_failed_jobs_are_counted_and_explained(webhook_env):
    event = summary(
        ok_job("job-1", "public.orders", "2026-11-27T03:00:02Z", "2026-11-27T03:20:02.400Z"),
        {"job": "job-2", "tables": ["public.events", "public.sessions"], "status": "FAILED",
         "error": "States.TaskFailed", "cause": BUILD_CAUSE},
        {"job": "job-3", "tables": ["public.audit"], "status": "TIMED_OUT",
         "error": "States.Timeout", "cause": "Task timed out after 3600 seconds <build 17>"},
    )

    result = notify_lambda.handler(event, None)

    assert result == {"posted": True, "failed_jobs": 2}
    payload = webhook_env.payloads[0]
    assert header_text(payload) == ":x: Nightly copy 2026-11-27: 2 of 3 jobs failed"
    _, job1, job2, job3 = section_texts(payload)
    assert job1.startswith(":white_check_mark: *job-1* SUCCEEDED · 20m 00s")
    # From the build JSON in the cause: duration, log link, status and the failed phase.
    assert job2.startswith(":x: *job-2* FAILED · 3m 00s · ")
    assert f"<{DEEP_LINK}|logs>" in job2
    assert "*Error:* `States.TaskFailed`" in job2
    assert ("*Cause:* build FAILED in phase BUILD: Error while executing command: "
            "python copier.py. Reason: exit status 1") in job2
    assert '"Phases"' not in job2  # not the raw JSON
    # A plain-text cause is shown as it is, escaped for Slack.
    assert job3.startswith(":x: *job-3* TIMED_OUT · duration unknown")
    assert "*Error:* `States.Timeout`" in job3
    assert "*Cause:* Task timed out after 3600 seconds &lt;build 17&gt;" in job3
    text = payload["text"]
    assert "job-2 FAILED (3m 00s): public.events, public.sessions - States.TaskFailed" in text
    assert "job-3 TIMED_OUT (duration unknown): public.audit - States.Timeout" in text


@pytest.mark.parametrize("status", ["FAILED", "FAULT", "TIMED_OUT", "STOPPED", "", None])
def test_every_status_but_succeeded_is_a_failure(webhook_env, status):
    event = summary(ok_job("job-1", "public.a", None, None),
                    {"job": "job-2", "tables": ["public.b"], "status": status})

    assert notify_lambda.handler(event, None) == {"posted": True, "failed_jobs": 1}
    assert "1 of 2 jobs failed" in webhook_env.payloads[0]["text"]


def test_camel_case_build_cause_and_missing_times(webhook_env):
    cause = json.dumps({"buildStatus": "FAULT", "logs": {"deepLink": DEEP_LINK},
                        "startTime": "2026-11-27T03:00:00Z", "endTime": "2026-11-27T03:00:42Z",
                        "phases": [{"phaseType": "PROVISIONING", "phaseStatus": "FAULT"}]})
    event = {"execution": {"name": "2026-11-27"},  # no id, no start time
             "jobs": [{"job": "job-7", "tables": ["public.big"], "status": "FAULT",
                       "error": "States.TaskFailed", "cause": cause}]}

    assert notify_lambda.handler(event, None) == {"posted": True, "failed_jobs": 1}
    payload = webhook_env.payloads[0]
    run, job = section_texts(payload)
    assert "*Execution:* 2026-11-27" in run and "*Started:* unknown" in run
    assert job.startswith(":x: *job-7* FAULT · 42s · ")
    assert f"<{DEEP_LINK}|logs>" in job
    assert "*Cause:* build FAULT in phase PROVISIONING" in job


@pytest.mark.parametrize(("value", "expected"), [
    (1795748401, "2026-11-27 03:00:01"),  # epoch seconds
    (1795748401.9, "2026-11-27 03:00:01"),
    (1795748401123, "2026-11-27 03:00:01"),  # epoch milliseconds
    (1.795748401123e12, "2026-11-27 03:00:01"),  # as Step Functions serialises them
    ("1795748401123", "2026-11-27 03:00:01"),
    ("2026-11-27T03:00:01.123Z", "2026-11-27 03:00:01"),
    ("2026-11-27T04:00:01+01:00", "2026-11-27 03:00:01"),
    ("2026-11-27T03:00:01.123+0000", "2026-11-27 03:00:01"),  # CloudWatch's format
    ("2026-11-27 03:00:01", "2026-11-27 03:00:01"),  # naive: taken as UTC
])
def test_parse_time_accepts_epoch_and_iso(value, expected):
    assert notify_lambda.parse_time(value).strftime("%Y-%m-%d %H:%M:%S") == expected


@pytest.mark.parametrize("value", [None, "", "soon", True, {}, [], "2026-13-45T99:00:00Z"])
def test_parse_time_gives_none_for_anything_else(value):
    assert notify_lambda.parse_time(value) is None


def test_many_jobs_respect_slack_limits(webhook_env):
    jobs = [ok_job(f"job-{i}", ",".join(f"public.t{i}_{n}" for n in range(300)), 0, 60)
            for i in range(1, 61)]
    for i in (5, 33, 58):
        jobs[i - 1] = {"job": f"job-{i}", "tables": ["public.x"], "status": "FAILED",
                       "error": "States.TaskFailed", "cause": "boom " * 2000}
    event = summary(*jobs)

    assert notify_lambda.handler(event, None) == {"posted": True, "failed_jobs": 3}
    payload = webhook_env.payloads[0]
    assert len(payload["blocks"]) == 50
    assert all(len(t) <= 3000 for t in section_texts(payload))
    assert len(header_text(payload)) <= 150
    assert len(payload["text"]) <= 3000
    sections = section_texts(payload)
    for name in ("job-5", "job-33", "job-58"):  # failures are never the ones folded away
        assert any(t.startswith(f":x: *{name}* FAILED") for t in sections)
    assert sections[-1].startswith("…and 14 more jobs (0 failed): ")
    failed_cause = next(t for t in sections if t.startswith(":x: *job-5*"))
    assert failed_cause.endswith("…") and len(failed_cause) < 1000
    job1 = next(t for t in sections if t.startswith(":white_check_mark: *job-1* "))
    assert "*Tables (300):* `public.t1_0`, `public.t1_1`" in job1
    assert job1.endswith(" more)") and "… (+" in job1  # a long table list is cut with a count


# --------------------------------------------------------------------------- alarms


def test_alarm_state_is_posted(webhook_env):
    reason = "Threshold Crossed: 1 datapoint [1.0 (27/11/26 04:05:00)] was >= 1.0"

    assert notify_lambda.handler(sns_event(alarm("ALARM", "OK", reason)), None) == {"posted": True}

    payload = webhook_env.payloads[0]
    assert header_text(payload) == ":rotating_light: ALARM: copy-nightly-failed"
    assert payload["text"] == f"ALARM: copy-nightly-failed - {reason.replace('>', '&gt;')}"
    details = section_texts(payload)[0]
    assert "*The nightly copy did not finish*" in details
    assert "*Reason:* Threshold Crossed: 1 datapoint" in details
    context = payload["blocks"][-1]["elements"][0]["text"]
    assert "State: OK → ALARM" in context
    assert "Changed: 2026-11-27 04:10:00 UTC" in context
    assert "Region: EU (Ireland)" in context
    assert ("<https://eu-west-1.console.aws.amazon.com/cloudwatch/home?region=eu-west-1"
            "#alarmsV2:alarm/copy-nightly-failed|Open alarm>") in context


def test_ok_state_is_posted_as_recovery(webhook_env):
    reason = "Threshold Crossed: no datapoints were received for 1 period"
    event = sns_event(alarm("OK", "ALARM", reason), subject="OK: copy-nightly-failed")

    assert notify_lambda.handler(event, None) == {"posted": True}

    payload = webhook_env.payloads[0]
    assert header_text(payload) == ":white_check_mark: OK: copy-nightly-failed is back to normal"
    assert payload["text"].startswith("OK: copy-nightly-failed is back to normal - ")
    assert "State: ALARM → OK" in payload["blocks"][-1]["elements"][0]["text"]


def test_non_json_sns_message_is_posted_as_text(webhook_env):
    event = sns_event("Disk <almost> full & rising", subject="Ops notice")

    assert notify_lambda.handler(event, None) == {"posted": True}

    payload = webhook_env.payloads[0]
    assert header_text(payload) == ":warning: Ops notice"
    assert section_texts(payload) == ["Disk &lt;almost&gt; full &amp; rising"]
    assert payload["text"] == "Ops notice: Disk &lt;almost&gt; full &amp; rising"


# --------------------------------------------------------------------------- Slack errors


@pytest.mark.parametrize(("status", "body"), [
    (400, "invalid_payload"), (403, "action_prohibited"), (404, "channel_not_found"),
    (410, "channel_is_archived"), (500, "rollup_error"),
])
def test_slack_error_raises_with_status_and_body(webhook_env, waits, status, body):
    webhook_env.reply(status, body)

    with pytest.raises(SlackPostError) as caught:
        notify_lambda.handler(summary(ok_job("job-1", "public.a", 0, 1)), None)

    assert caught.value.status == status
    assert caught.value.body == body
    assert f"HTTP {status}: {body}" in str(caught.value)
    assert WEBHOOK_PATH not in str(caught.value)  # the URL is a secret
    assert len(webhook_env.requests) == 1 and waits == []


def test_429_waits_retry_after_then_posts(webhook_env, waits):
    webhook_env.reply(429, "rate_limited", {"Retry-After": "1"})

    result = notify_lambda.handler(summary(ok_job("job-1", "public.a", 0, 1)), None)

    assert result == {"posted": True, "failed_jobs": 0}
    assert waits == [1]
    assert len(webhook_env.requests) == 2
    assert webhook_env.payloads[0] == webhook_env.payloads[1]  # the same message, sent again


def test_429_gives_up_after_a_few_attempts_with_capped_waits(webhook_env, waits):
    for _ in range(notify_lambda.MAX_POST_ATTEMPTS):
        webhook_env.reply(429, "rate_limited", {"Retry-After": "120"})

    with pytest.raises(SlackPostError, match=r"HTTP 429: rate_limited \(after 3 attempts\)"):
        notify_lambda.handler(summary(ok_job("job-1", "public.a", 0, 1)), None)

    assert len(webhook_env.requests) == notify_lambda.MAX_POST_ATTEMPTS
    assert waits == [30] * (notify_lambda.MAX_POST_ATTEMPTS - 1)


def test_429_not_retried_when_the_lambda_would_time_out(webhook_env, waits):
    class Context:
        def get_remaining_time_in_millis(self):
            return 5_000

    webhook_env.reply(429, "rate_limited", {"Retry-After": "10"})

    with pytest.raises(SlackPostError, match="Lambda time left is too short"):
        notify_lambda.handler(summary(ok_job("job-1", "public.a", 0, 1)), Context())

    assert len(webhook_env.requests) == 1 and waits == []


def test_redirect_is_an_error_not_a_silent_get(webhook_env):
    webhook_env.reply(302, "", {"Location": webhook_env.base + "/elsewhere"})

    with pytest.raises(SlackPostError, match="HTTP 302"):
        notify_lambda.handler(summary(ok_job("job-1", "public.a", 0, 1)), None)

    assert [r["path"] for r in webhook_env.requests] == [WEBHOOK_PATH]


def test_unreachable_slack_raises(monkeypatch, slack):
    url = slack.url
    slack.close()  # nothing listens on that port any more
    monkeypatch.setenv("SLACK_WEBHOOK_URL", url)

    with pytest.raises(SlackPostError, match="no HTTP response") as caught:
        notify_lambda.handler(summary(ok_job("job-1", "public.a", 0, 1)), None)

    assert caught.value.status is None
    assert WEBHOOK_PATH not in str(caught.value)


# --------------------------------------------------------------------------- webhook from SSM


@pytest.fixture
def aws(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        yield boto3.client("ssm")


def test_webhook_is_read_from_ssm_once_per_cold_start(aws, slack, monkeypatch, caplog):
    aws.put_parameter(Name="/copy/slack-webhook", Value=slack.url, Type="SecureString")
    monkeypatch.setenv("WEBHOOK_PARAMETER", "/copy/slack-webhook")
    reads = []
    real_read = notify_lambda.read_webhook_parameter
    monkeypatch.setattr(notify_lambda, "read_webhook_parameter",
                        lambda name: reads.append(name) or real_read(name))
    caplog.set_level(logging.INFO, logger="notify_lambda")

    notify_lambda.handler(summary(ok_job("job-1", "public.a", 0, 1)), None)
    # A changed parameter is not seen until the next cold start: the first value is cached.
    aws.put_parameter(Name="/copy/slack-webhook", Value=slack.base + "/other",
                      Type="SecureString", Overwrite=True)
    notify_lambda.handler(sns_event(alarm("ALARM", "OK", "x")), None)

    assert reads == ["/copy/slack-webhook"]
    assert [r["path"] for r in slack.requests] == [WEBHOOK_PATH, WEBHOOK_PATH]
    loaded = [json.loads(r.getMessage()) for r in caplog.records
              if '"webhook_loaded"' in r.getMessage()]
    assert loaded == [{"event": "webhook_loaded", "parameter": "/copy/slack-webhook"}]
    assert WEBHOOK_PATH not in caplog.text and "secretsecret" not in caplog.text


def test_env_override_wins_over_ssm(aws, slack, monkeypatch):
    aws.put_parameter(Name="/copy/slack-webhook", Value="https://hooks.invalid/x",
                      Type="SecureString")
    monkeypatch.setenv("WEBHOOK_PARAMETER", "/copy/slack-webhook")
    monkeypatch.setenv("SLACK_WEBHOOK_URL", slack.url)

    notify_lambda.handler(summary(ok_job("job-1", "public.a", 0, 1)), None)

    assert [r["path"] for r in slack.requests] == [WEBHOOK_PATH]


def test_missing_parameter_is_a_clear_error(aws, monkeypatch):
    monkeypatch.setenv("WEBHOOK_PARAMETER", "/copy/absent")

    with pytest.raises(WebhookConfigError, match="SSM parameter /copy/absent .*does not exist"):
        notify_lambda.handler(summary(ok_job("job-1", "public.a", 0, 1)), None)


def test_no_webhook_configured_is_a_clear_error():
    with pytest.raises(WebhookConfigError, match="set WEBHOOK_PARAMETER"):
        notify_lambda.handler(summary(ok_job("job-1", "public.a", 0, 1)), None)


def test_parameter_that_is_not_a_url_is_rejected_without_echoing_it(aws, monkeypatch):
    aws.put_parameter(Name="/copy/slack-webhook", Value="file:///etc/passwd-secret",
                      Type="SecureString")
    monkeypatch.setenv("WEBHOOK_PARAMETER", "/copy/slack-webhook")

    with pytest.raises(WebhookConfigError, match="does not hold an http") as caught:
        notify_lambda.handler(summary(ok_job("job-1", "public.a", 0, 1)), None)

    assert "passwd-secret" not in str(caught.value)


# --------------------------------------------------------------------------- other events


@pytest.mark.parametrize("event", [
    {"foo": 1},
    {"Records": [{"eventSource": "aws:s3", "s3": {}}]},
    {"Records": []},
    {"execution": {"name": "x"}, "jobs": "job-1"},
    "2026-11-27",
    None,
])
def test_unknown_event_raises_without_posting(webhook_env, event):
    with pytest.raises(UnknownEventError, match="unrecognised event: expected a run summary"):
        notify_lambda.handler(event, None)

    assert webhook_env.requests == []


def test_module_imports_without_requests(tmp_path):
    """The Lambda runtime has boto3 but not requests: importing must not need it."""
    script = textwrap.dedent("""
        import importlib.abc, sys

        class NoRequests(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "requests" or name.startswith("requests."):
                    raise ImportError("requests is not installed in the Lambda runtime")
                return None

        sys.meta_path.insert(0, NoRequests())
        import notify_lambda
        assert callable(notify_lambda.handler)
        print(sorted(m for m in sys.modules if m == "requests" or m.startswith("requests.")))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --------------------------------------------------------------------------- run names


def test_a_run_already_started_for_the_date_is_posted(webhook_env):
    machine = "arn:aws:states:eu-west-1:123456789012:stateMachine:copy-nightly"
    answer = notify_lambda.handler(
        {"already_started": {"name": "2026-11-27", "state_machine": machine}}, None)
    assert answer == {"posted": True}
    (payload,) = webhook_env.payloads
    assert "2026-11-27: not started again, the run for this date exists" in header_text(payload)
    (text,) = section_texts(payload)
    assert "Nothing was copied a second time" in text
    assert f"#/v2/executions/details/{EXECUTION_ARN}" in text


def test_naming_a_run_needs_a_scheduled_time(webhook_env):
    with pytest.raises(notify_lambda.NotifyError, match="scheduled_time"):
        notify_lambda.handler({"name_run": {"timezone": "UTC"}}, None)
    assert webhook_env.payloads == []
