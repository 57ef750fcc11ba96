"""The copier's JSON lines, as the AWS side reads them: the real copier's stdout goes through
operations.py's log reader and is checked against the saved Logs Insights query's fields.
A renamed event or field on either side fails here."""

from __future__ import annotations

import re

from conftest import FAILING

import deploy
import operations


def logged_lines(run) -> list[dict]:
    """The copier's lines as CloudWatch Logs hands them to operations.py: one stream per job."""
    return [{**event, "@stream": f"job-{event.get('job', 1)}/build", "@timestamp": n}
            for n, event in enumerate(run.events)]


def query_fields() -> tuple[list[str], str]:
    query = deploy.resources.DURATIONS_QUERY
    fields = re.search(r"^fields (.*)$", query, re.M).group(1)
    (event,) = re.findall(r'filter event = "(\w+)"', query)
    return [f.strip() for f in fields.split(",") if not f.strip().startswith("@")], event


def test_operations_reads_what_the_copier_writes(night):
    run = night(*FAILING)
    assert run.code == 1

    tables = {t.table: t for t in operations.table_runs(logged_lines(run))}
    assert {name: t.outcome for name, t in tables.items()} == {
        "public.orders": "copied", "public.customers": "copied", "public.locked": "failed"}
    assert (tables["public.orders"].rows, tables["public.customers"].rows) == (3000, 200)
    assert tables["public.orders"].bytes > 0 and tables["public.orders"].seconds >= 0
    assert "lock" in tables["public.locked"].error

    jobs = operations.jobs_from_logs(logged_lines(run))
    # orders holds most of the bytes: its slices may land on both jobs, each listing it.
    assert {t for job in jobs for t in job.tables} == set(tables)
    listed = [t for job in jobs for t in job.tables]
    assert listed.count("public.customers") == listed.count("public.locked") == 1
    assert "FAILED" in {job.status for job in jobs}

    fields, event = query_fields()
    copied = run.of(event)
    assert {line["table"] for line in copied} == {"public.orders", "public.customers"}
    for line in copied:
        assert set(fields) <= set(line), f"the saved query reads {fields}; the copier wrote {line}"
