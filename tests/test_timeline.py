"""The night's picture (timeline.py, `operations.py timeline`), drawn from the real copier's
JSON lines: a lane per job, a bar per table with its outcome and figures, a page that opens
offline. `report DATE --html` under moto is in test_operations.py."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import psycopg2
import pytest
import test_copier_slices
from conftest import FAILING

import copier
import runlog
import timeline
from operations import table_runs, tables_table

REPO = Path(__file__).resolve().parent.parent


def parsed(page: str) -> ET.Element:
    """The page as XML: well-formed, and nothing fetched from elsewhere."""
    assert page.startswith("<!DOCTYPE html>\n")
    for reference in ("<script", "http://", "https://", "src=", "href=", "@import", "url(http"):
        assert reference not in page, reference
    return ET.fromstring(page)


def classes(element: ET.Element) -> list[str]:
    return element.get("class", "").split()


def groups(root: ET.Element, kind: str) -> list[ET.Element]:
    return [g for g in root.iter("g") if kind in classes(g)]


def bars(root: ET.Element) -> dict[str, ET.Element]:
    """Each table's own bar: its whole copy, or the step that finished its pieces."""
    found = [g for g in groups(root, "bar") if not {"slice", "load"} & set(classes(g))]
    counted = Counter(g.get("data-table") for g in found)
    assert set(counted.values()) == {1}, f"one bar per table: {counted}"
    return {g.get("data-table"): g for g in found}


def pieces(root: ET.Element) -> list[ET.Element]:
    """The slices and the tables loaded whole, in the order drawn."""
    return [g for g in groups(root, "bar") if {"slice", "load"} & set(classes(g))]


def outcome(bar: ET.Element) -> str:
    (kind,) = set(classes(bar)) & set(timeline.OUTCOMES)
    return kind


def title(element: ET.Element) -> str:
    return element.find("title").text


def lanes(root: ET.Element) -> list[str]:
    return [g.get("data-lane") for g in groups(root, "lane")]


def total(root: ET.Element, name: str) -> str:
    (cell,) = [td for td in root.iter("td") if td.get("data-total") == name]
    return cell.text


def job_lanes(lines: list[dict]) -> set[str]:
    return {f"job {line['job']}" for line in lines if line.get("job") is not None}




def test_a_real_night_is_one_lane_per_job_and_one_bar_per_table(night):
    run = night(*FAILING, "--no-split")  # each table copied whole by one job
    assert run.code == 1
    assert run.of("slice_loaded") == []
    root = parsed(timeline.render_html(run.events, "a night"))

    assert set(lanes(root)) - {"run"} == job_lanes(run.events)
    found = bars(root)
    assert {table: outcome(bar) for table, bar in found.items()} == {
        "public.orders": "copied", "public.customers": "copied", "public.locked": "failed"}
    for table, bar in found.items():
        (job,) = {e["job"] for e in run.events if e.get("table") == table and "job" in e}
        assert f"job {job}" in title(bar)
    orders = title(found["public.orders"])
    assert "3,000 rows" in orders and " MB in " in orders and "MB/s" in orders
    (failed,) = run.of(runlog.TABLE_FAILED)
    (deferred,) = run.of("swap_deferred")
    locked = title(found["public.locked"])
    assert f"swap blocked by readers, tried again after the other tables: {deferred['reason']}" in locked
    assert f"error: {failed['error']}" in locked
    assert "could not lock public.locked" in failed["error"]

    assert (total(root, "tables"), total(root, "copied"), total(root, "failed")) == ("3", "2", "1")
    assert total(root, "rows copied") == "3,200"
    (finished,) = run.of(runlog.RUN_FINISHED)
    assert total(root, "wall time") == f"{finished['seconds']:.1f} s"
    (slowest,) = [t for t in root.iter("table") if "slowest" in classes(t)]
    assert len(slowest.findall("tr")) == 1 + 3  # the header, then every table
    (failures,) = [t for t in root.iter("table") if "failures" in classes(t)]
    assert [td.text for td in failures.find("tr")][0] == "public.locked"


def test_a_reader_ended_for_a_swap_is_on_the_bar_of_its_table(night):
    run = night()
    assert run.code == 0, run.stderr
    (ended,) = run.of("session_ended")
    root = parsed(timeline.render_html(run.events, "a night"))
    found = bars(root)
    assert {table: outcome(bar) for table, bar in found.items()} == {
        "public.orders": "copied", "public.customers": "copied", "public.locked": "staged"}
    locked = title(found["public.locked"])
    assert f"terminated session {ended['pid']} (user {ended['user']}" in locked
    assert locked.splitlines()[-1].startswith("went live in the swap at the end: lock ")
    (stretch,) = groups(root, "stretch")
    assert stretch.get("data-label") == "blocked swaps"
    assert "the swaps readers blocked, tried again (1 table(s))" in title(stretch)
    notes = [li.text for li in root.iter("li")]
    assert f"public.locked: terminated session {ended['pid']}" in " ".join(notes)
    assert total(root, "copied") == "3"


def test_without_a_clock_a_job_runs_its_tables_back_to_back_from_the_start(night):
    run = night(*FAILING)  # orders is cut into slices: they take their jobs' time too
    assert run.of("slice_loaded")
    (finished,) = run.of(runlog.RUN_FINISHED)
    px = (timeline.WIDTH - timeline.LEFT - timeline.RIGHT) / finished["seconds"]
    root = parsed(timeline.render_html(run.events, "a night"))
    # Every bar, slices included, in the order of the lines that drew them.
    lines = [e for e in run.events if e["event"] in runlog.TABLE_EVENTS
             and "job" in e]
    drawn = groups(root, "bar")
    assert [(g.get("data-table"), g.get("data-slice")) for g in drawn] == [
        (e["table"], e.get("slice")) for e in lines]
    ends: dict[str, float] = {}  # lane: where its last bar ended
    slices_end: dict[str, float] = {}  # table: where its last slice ended, in any lane
    for g, line in zip(drawn, lines, strict=True):
        lane, (start, _) = f"job {line['job']}", x_span(g)
        if "slice" in line:
            assert start == pytest.approx(ends.get(lane, timeline.LEFT), abs=0.15)
            slices_end[line["table"]] = max(slices_end.get(line["table"], 0), start + line["seconds"] * px)
        else:  # a table's finishing step waits for its last slice, whichever job loaded it
            assert start == pytest.approx(max(ends.get(lane, timeline.LEFT),
                                              slices_end.get(line["table"], 0)), abs=0.15)
        ends[lane] = start + line["seconds"] * px
    # The run's own time outside its tables ends at run_finished: the right end of the axis.
    (stretch,) = groups(root, "stretch")
    rect = stretch.find("rect")
    assert float(rect.get("x")) + float(rect.get("width")) == pytest.approx(
        timeline.WIDTH - timeline.RIGHT, abs=0.15)


def test_swap_together_draws_staged_bars_and_the_swap_at_the_end(dbs, run_copier):
    dbs.source("CREATE TABLE orders (id int PRIMARY KEY); INSERT INTO orders SELECT generate_series(1, 500)")
    dbs.source("CREATE TABLE customers (id int); INSERT INTO customers SELECT generate_series(1, 20)")
    run = run_copier("TABLES=orders,customers", "--jobs", "2", "--swap", "together")
    assert run.code == 0, run.stderr
    root = parsed(timeline.render_html(run.events, "together"))
    found = bars(root)
    assert {t: outcome(b) for t, b in found.items()} == {"public.orders": "staged",
                                                         "public.customers": "staged"}
    for bar in found.values():  # with what the swap at the end took
        went, took = title(bar).splitlines()[-1].split(": ", 1)
        assert went == "went live in the swap at the end"
        assert "swap" in dict(step.split() for step in took.split(" · "))
    (stretch,) = groups(root, "stretch")
    assert stretch.get("data-label") == "swap together"
    assert "the swap of 2 staged table(s) together" in title(stretch)
    assert total(root, "copied") == "2"


def test_a_swap_together_that_fails_turns_every_staged_bar_red(night):
    run = night("--swap", "together", *FAILING)
    assert run.code == 1
    root = parsed(timeline.render_html(run.events, "together"))
    found = bars(root)
    assert {outcome(b) for b in found.values()} == {"failed"}
    assert all("error: swap of all tables failed, none changed" in title(b) for b in found.values())
    assert (total(root, "copied"), total(root, "failed")) == ("0", "3")


def test_a_real_retry_is_on_its_bar(dbs, run_copier, monkeypatch, at_moment):
    dbs.source("CREATE TABLE big (id int PRIMARY KEY, payload text)")
    dbs.source("INSERT INTO big SELECT g, repeat('n', 150) FROM generate_series(1, 200000) g")
    calls = []

    def kill_once(table, bytes):
        if not calls:
            calls.append(bytes)
            conn = psycopg2.connect(dbs.source_dsn)
            conn.autocommit = True
            conn.cursor().execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                "AND query LIKE 'COPY%%' AND pid <> pg_backend_pid()", (dbs.source_name,))
            conn.close()

    at_moment("loading", kill_once)
    monkeypatch.setattr(copier, "backoff", lambda attempt, base: 0.01)
    run = run_copier("TABLES=big", "--progress-seconds", "0", "--retries", "2")
    assert run.code == 0, run.stderr
    (retry,) = run.of("table_retry")
    root = parsed(timeline.render_html(run.events, "retried"))
    bar = bars(root)["public.big"]
    assert "retried" in classes(bar) and outcome(bar) == "copied"
    assert f"retried: {retry['error']}" in title(bar)


def slowest_row(root: ET.Element, table: str) -> dict[str, str]:
    (slowest,) = [t for t in root.iter("table") if "slowest" in classes(t)]
    header = [th.text for th in slowest.find("tr")]
    (row,) = [tr for tr in slowest.findall("tr") if tr.get("data-table") == table]
    return dict(zip(header, [td.text for td in row], strict=True))


def test_a_sliced_night_draws_each_slice_in_the_lane_of_the_job_that_loaded_it(night):
    run = night(*FAILING)  # orders holds most of the bytes: cut into slices over the 2 jobs
    assert run.code == 1
    slices = run.of("slice_loaded")
    assert {e["table"] for e in slices} == {"public.orders"}
    (finish,) = [e for e in run.of(runlog.TABLE_COPIED) if e["table"] == "public.orders"]
    assert finish["slices"] == len(slices) > 1
    root = parsed(timeline.render_html(run.events, "a sliced night"))

    assert set(lanes(root)) - {"run"} == job_lanes(run.events)
    drawn = pieces(root)
    assert [(g.get("data-table"), g.get("data-slice")) for g in drawn] == [
        ("public.orders", e["slice"]) for e in slices]
    for g, line in zip(drawn, slices, strict=True):
        assert "slice" in classes(g) and outcome(g) == "copied"  # its table's outcome
        hover = title(g).splitlines()
        assert hover[0] == f"public.orders {line['slice']}: copied"
        assert hover[1].startswith(f"job {line['job']}, ")
        assert hover[2].startswith(f"slice {line['slice'].replace('/', ' of ')} loaded: "
                                   f"{line['rows']:,} rows, ")
        assert hover[-1] == (f"public.orders: copied, finished by job {finish['job']} "
                             "(indexes, row count check, analyze, swap)")
    # The table's own bar: the step that finished it, in its job's lane, after every slice.
    found = bars(root)
    assert {table: outcome(bar) for table, bar in found.items()} == {
        "public.orders": "copied", "public.customers": "copied", "public.locked": "failed"}
    orders = title(found["public.orders"]).splitlines()
    loaded_by = ", ".join(sorted({f"job {e['job']}" for e in slices}))
    assert orders[1].startswith(f"job {finish['job']}, ")
    assert orders[2].startswith("3,000 rows, ") and orders[2].endswith(
        " (its longest slice and this step)")
    assert orders[3].startswith(f"{len(slices)} slices, loaded by {loaded_by} in ")
    assert orders[4] == f"then indexes, row count check, analyze, swap: {finish['seconds']:.1f} s"
    assert x_span(found["public.orders"])[0] >= max(x_span(g)[0] for g in drawn)
    # Hovering any of them outlines them all: one key, one rule.
    (key,) = {g.get("data-key") for g in [*drawn, found["public.orders"]]}
    assert key and f'svg.timeline:has(g[data-key="{key}"]:hover)' in root.find("head/style").text
    assert found["public.customers"].get("data-key") is None

    # A sliced table counts once: its finishing line's rows; its longest slice's seconds and
    # its finish's (the slices load side by side), as operations.py report counts them.
    assert (total(root, "tables"), total(root, "copied"), total(root, "failed")) == ("3", "2", "1")
    assert (total(root, "rows copied"), total(root, "cut into slices")) == ("3,200", "1")
    drawn_seconds = [e["seconds"] for e in run.events if e.get("job") is not None
                     and e["event"] in runlog.TABLE_EVENTS]
    assert float(total(root, "seconds in tables, all jobs")) == pytest.approx(
        sum(drawn_seconds), abs=0.051)
    row = slowest_row(root, "public.orders")
    assert (row["rows"], row["slices"], row["outcome"]) == ("3,000", str(len(slices)), "copied")
    assert float(row["seconds"]) == pytest.approx(
        finish["seconds"] + max(e["seconds"] for e in slices), abs=0.051)
    assert slowest_row(root, "public.customers")["slices"] == "-"


class Logged(test_copier_slices.Job):
    """A copier process whose lines come back as CloudWatch Logs hands them over: in the job's
    own stream, stamped when written (here: when read, as the demo does)."""

    def read(self) -> None:
        for line in self.process.stdout:
            if line.startswith("{"):
                self.lines.append({**json.loads(line), "@stream": self.env.get("COPIER_JOB", "?"),
                                   "@timestamp": time.time() * 1000})


def cloud_night(dbs, monkeypatch, units: list[str], tables: str,
                env: dict[int, dict[str, str]] | None = None) -> list[dict]:
    """The state machine's night: a load job per units (job n with env[n] added), the first
    holding the snapshot the others import, then the publish of every table; their lines, as
    CloudWatch Logs has them."""
    monkeypatch.setattr(test_copier_slices, "Job", Logged)
    env = env or {}

    def load(n: int) -> Logged:
        return test_copier_slices.load_job(dbs, "night-1", n, len(units), units[n - 1],
                                           **env.get(n, {}))

    jobs = [load(1)]
    jobs[0].wait_for_event("snapshot_shared")
    jobs += [load(n) for n in range(2, len(units) + 1)]
    for job in jobs:
        job.finish()
    publish = Logged(dbs, tables, COPIER_PHASE="publish", COPIER_RUN="night-1",
                     COPIER_JOB="publish")
    publish.finish()
    lines = [line for job in [*jobs, publish] for line in job.lines]
    return sorted(lines, key=lambda line: line["@timestamp"])


def lane_of_bar(bar: ET.Element) -> str:
    return title(bar).splitlines()[1].split(",")[0]


def lane_at(root: ET.Element, element: ET.Element) -> str:
    """The lane a bar or stretch is drawn in, by its height on the page."""
    top = float(element.find("rect").get("y"))
    return lanes(root)[int((top - timeline.AXIS) // timeline.LANE)]


def test_a_two_phase_night_has_a_lane_per_load_job_and_the_publish(dbs, monkeypatch):
    test_copier_slices.fill_accounts(dbs, rows_a=6000, rows_b=600)
    lines = cloud_night(dbs, monkeypatch, ["acc_a#1/3,acc_b", "acc_a#2/3", "acc_a#3/3"],
                        "acc_a,acc_b")
    assert [e["event"] for e in lines if e["event"] == "table_failed"] == []
    root = parsed(timeline.render_html(lines, "a two-phase night"))

    assert lanes(root) == ["job-1", "job-2", "job-3", "publish"]
    drawn = pieces(root)
    assert sorted((g.get("data-table"), g.get("data-slice"), lane_of_bar(g), outcome(g))
                  for g in drawn) == [
        ("public.acc_a", "1/3", "job-1", "copied"), ("public.acc_a", "2/3", "job-2", "copied"),
        ("public.acc_a", "3/3", "job-3", "copied"), ("public.acc_b", None, "job-1", "copied")]
    (acc_b_load,) = [g for g in drawn if g.get("data-table") == "public.acc_b"]
    assert "load" in classes(acc_b_load)
    assert title(acc_b_load).splitlines()[2].startswith("the whole table loaded: 600 rows, ")
    found = bars(root)
    assert {t: (outcome(b), lane_of_bar(b)) for t, b in found.items()} == {
        "public.acc_a": ("copied", "publish"), "public.acc_b": ("copied", "publish")}
    assert "3 slices, loaded by job-1, job-2, job-3 in " in title(found["public.acc_a"])
    assert "loaded whole by job-1 in " in title(found["public.acc_b"])
    # With the clock of the logs, the publish starts after the last load job ended (to the
    # hundredth of a second each line's seconds are rounded to).
    (slice_1,) = [g for g in drawn if g.get("data-slice") == "1/3"]
    (slice_1_line,) = [e for e in lines if e.get("slice") == "1/3"]
    px = (x_span(slice_1)[1] - x_span(slice_1)[0]) / slice_1_line["seconds"]
    assert min(x_span(b)[0] for b in found.values()) >= max(
        x_span(g)[1] for g in drawn) - 0.01 * px - 0.15
    # What each load job did with the run's one snapshot, on its lane.
    notes = {g.get("data-lane"): g.find("title") for g in groups(root, "lane")}
    assert "exported the run's snapshot and held it for the 3 load jobs" in notes["job-1"].text
    assert "released the run's snapshot: 3 of 3 load jobs read it" in notes["job-1"].text
    assert all("imported the run's snapshot" in notes[lane].text for lane in ("job-2", "job-3"))
    assert notes["publish"] is None

    assert (total(root, "tables"), total(root, "copied"), total(root, "rows copied")) == (
        "2", "2", "6,600")
    assert (total(root, "jobs"), total(root, "cut into slices")) == ("3 and the publish", "1")
    row = slowest_row(root, "public.acc_a")
    assert (row["job"], row["slices"], row["rows"]) == ("job-1, job-2, job-3, publish", "3", "6,000")
    assert slowest_row(root, "public.acc_b")["job"] == "job-1, publish"
    for reported in table_runs(lines):  # the same seconds as the report's
        assert float(slowest_row(root, reported.table)["seconds"]) == pytest.approx(
            reported.seconds, abs=0.051)

    # The same lines without a clock (the jobs' stdouts one after the other): each load job
    # from the start, the publish after all of them.
    bare = [{k: v for k, v in line.items() if not k.startswith("@")}
            for job in ("job-1", "job-2", "job-3", "publish")
            for line in lines if line["@stream"] == job]
    root = parsed(timeline.render_html(bare, "a two-phase night, from its stdouts"))
    assert lanes(root) == ["job-1", "job-2", "job-3", "publish"]
    drawn, found = pieces(root), bars(root)
    assert {x_span(g)[0] for g in drawn if g.get("data-slice")} == {timeline.LEFT}
    assert {lane_at(root, g) for g in drawn} == {"job-1", "job-2", "job-3"}
    assert {lane_at(root, b) for b in found.values()} == {"publish"}
    loads_end = max(x_span(g)[1] for g in [*drawn, *groups(root, "stretch")]
                    if lane_at(root, g) != "publish")
    assert min(x_span(b)[0] for b in found.values()) >= loads_end - 0.15
    assert total(root, "rows copied") == "6,600"


def test_a_slice_no_job_loaded_fails_its_table_in_the_publish_and_colours_its_pieces(
        dbs, monkeypatch):
    test_copier_slices.fill_accounts(dbs, rows_a=3000, rows_b=300)
    # Job 2's target refuses connections: its slice never loads.
    lines = cloud_night(dbs, monkeypatch, ["acc_a#1/2,acc_b", "acc_a#2/2"], "acc_a,acc_b", {
        1: {"COPIER_SNAPSHOT_WAIT": "2"},
        2: {"TARGET_DSN": "host=127.0.0.1 port=1 dbname=x user=u connect_timeout=2",
            "COPIER_OUTAGE_BUDGET": "1"}})  # a scheduled run waits out an outage: not long
    root = parsed(timeline.render_html(lines, "a slice missing"))
    (failed,) = [e for e in lines if e["event"] == "table_failed" and e.get("phase") == "publish"]
    assert failed["table"] == "public.acc_a" and "slice(s) 2/2 missing" in failed["error"]
    found = bars(root)
    assert {t: outcome(b) for t, b in found.items()} == {"public.acc_a": "failed",
                                                         "public.acc_b": "copied"}
    assert f"error: {failed['error']}" in title(found["public.acc_a"])
    (slice_1,) = [g for g in pieces(root) if g.get("data-slice") == "1/2"]
    assert outcome(slice_1) == "failed" and "culprit" not in classes(slice_1)
    assert title(slice_1).splitlines()[-1].startswith("public.acc_a: failed, finished by publish")
    (failures,) = [t for t in root.iter("table") if "failures" in classes(t)]
    assert [[td.text for td in tr] for tr in failures.findall("tr")] == [
        ["public.acc_a", "publish", failed["error"]]]
    assert (total(root, "copied"), total(root, "failed"), total(root, "rows copied")) == (
        "1", "1", "300")


# A local night, in the copier's words: orders' two slices straddled a renewed snapshot, so
# they were loaded again; then a slice failed, after a retry of its own.
RELOADED = [
    {"event": "slice_loaded", "table": "public.orders", "job": 1, "rows": 500, "bytes": 9000,
     "seconds": 2.0, "snapshot": 1, "slice": "1/2"},
    {"event": "snapshot_renewed", "snapshot": 2, "message": "lost"},
    {"event": "slice_loaded", "table": "public.orders", "job": 2, "rows": 500, "bytes": 9000,
     "seconds": 3.0, "snapshot": 2, "slice": "2/2"},
    {"event": "table_retry", "table": "public.orders", "attempt": 1, "wait_seconds": 0,
     "error": "its slices were read from two snapshots (one was lost): loading it again"},
    {"event": "slice_loaded", "table": "public.orders", "job": 1, "rows": 500, "bytes": 9000,
     "seconds": 2.5, "snapshot": 2, "slice": "1/2"},
    {"event": "table_retry", "table": "public.orders#2/2", "attempt": 1, "wait_seconds": 0.5,
     "error": "lost the connection to the target database: gone"},
    {"event": "table_failed", "table": "public.orders", "job": 2, "seconds": 4.0, "attempts": 2,
     "error": "value too long for type character varying(5)", "slice": "2/2"},
    {"event": "table_copied", "table": "public.customers", "job": 1, "rows": 20, "bytes": 400,
     "seconds": 1.0, "snapshot": 2},
    {"event": "run_finished", "tables": 2, "failed": 1, "seconds": 12.0, "snapshots": 2},
]


def test_slices_loaded_again_are_grey_and_a_failed_slice_fails_its_table():
    root = parsed(timeline.render_html(RELOADED, "reloaded"))
    drawn = pieces(root)
    assert [(g.get("data-slice"), outcome(g), "culprit" in classes(g)) for g in drawn] == [
        ("1/2", "reloaded", False), ("2/2", "reloaded", False),  # the first round, lost
        ("1/2", "failed", False), ("2/2", "failed", True)]
    assert "loaded again, this one did not go live" in title(drawn[0])
    # Without a clock, the second round starts once the first is in (the retry waits for it).
    assert x_span(drawn[2])[0] == pytest.approx(x_span(drawn[1])[1], abs=0.15)
    culprit = title(drawn[3])
    assert "retried: lost the connection to the target database: gone" in culprit
    assert culprit.endswith("error: value too long for type character varying(5)")
    assert set(bars(root)) == {"public.customers"}  # orders never reached its finishing step
    (failures,) = [t for t in root.iter("table") if "failures" in classes(t)]
    assert [[td.text for td in tr] for tr in failures.findall("tr")] == [
        ["public.orders", "slice 2/2, job 2", "value too long for type character varying(5)"]]
    row = slowest_row(root, "public.orders")
    assert (row["outcome"], row["rows"], row["slices"], row["seconds"]) == ("failed", "-", "2", "4.0")
    assert (total(root, "tables"), total(root, "failed"), total(root, "rows copied")) == (
        "2", "1", "20")
    assert total(root, "seconds in tables, all jobs") == "12.5"


def test_a_load_job_alone_draws_what_it_loaded_for_the_publish():
    lines = [{"event": "slice_loaded", "table": "public.events", "job": "job-2", "rows": 10,
              "bytes": 100, "seconds": 1.0, "snapshot": 1, "slice": "2/4", "phase": "load"},
             {"event": "table_loaded", "table": "public.small", "job": "job-2", "rows": 5,
              "bytes": 50, "seconds": 0.5, "snapshot": 1, "phase": "load"}]
    root = parsed(timeline.render_html(lines, "a load job"))
    assert [(g.get("data-table"), outcome(g)) for g in pieces(root)] == [
        ("public.events", "loaded"), ("public.small", "loaded")]
    assert title(pieces(root)[0]).endswith("public.events: no later line (not published yet)")
    assert len(groups(root, "bar")) == 2  # no table's own bar: the publish has not run
    assert (total(root, "tables"), total(root, "copied"), total(root, "loaded, not published")) == (
        "2", "0", "2")


# docs/events.md's night with a 90-second failover of the source, as CloudWatch Logs hands it
# over: each build's stream, a clock on every line. Job 2 started 60 s after job 1.
def logged(stream: str, at: float, line: dict) -> dict:
    return {**line, "@stream": stream, "@timestamp": at * 1000}


FAILOVER = [
    logged("b1", 100.0, {"event": "table_copied", "table": "public.t12", "job": "job-1",
                         "rows": 85000, "bytes": 12_000_000, "seconds": 90.0, "snapshot": 1}),
    logged("b2", 130.0, {"event": "table_retry", "table": "public.t11", "attempt": 1,
                         "error": "lost the connection to the source database: gone"}),
    logged("b2", 131.0, {"event": "waiting", "database": "source", "seconds": 0.0,
                         "budget": 600.0, "error": "cannot connect", "job": "job-2",
                         "table": "public.t11"}),
    logged("b2", 141.0, {"event": "waiting", "database": "source", "seconds": 10.2,
                         "budget": 600.0, "error": "cannot connect", "job": "job-2",
                         "table": "public.t11"}),
    logged("b1", 150.0, {"event": "run_finished", "tables": 1, "failed": 0, "seconds": 145.0,
                         "waited_seconds": 0.0, "snapshots": 1}),
    logged("b2", 221.0, {"event": "snapshot_renewed", "snapshot": 2, "message": "lost"}),
    logged("b2", 260.0, {"event": "table_copied", "table": "public.t11", "job": "job-2",
                         "rows": 10, "bytes": 1000, "seconds": 190.0, "snapshot": 2}),
    logged("b2", 261.0, {"event": "warning", "message": "key x left NOT VALID"}),
    logged("b2", 262.0, {"event": "run_finished", "tables": 1, "failed": 0, "seconds": 200.0,
                         "waited_seconds": 93.1, "source_waited_seconds": 93.1,
                         "target_waited_seconds": 0.0, "snapshots": 2}),
]


def x_span(element: ET.Element) -> tuple[float, float]:
    rect = element.find("rect")
    return float(rect.get("x")), float(rect.get("x")) + float(rect.get("width"))


def test_with_a_clock_bars_sit_where_they_ran_with_waits_retries_and_renewals():
    root = parsed(timeline.render_html(FAILOVER, "failover"))
    assert root.find("body/p").text.endswith("; started 1970-01-01 00:00:05 UTC")
    assert lanes(root) == ["job-1", "job-2"]
    found = bars(root)
    t11, t12 = found["public.t11"], found["public.t12"]
    assert {"waited", "retried"} <= set(classes(t11)) and outcome(t11) == "copied"
    assert "waited for the source database: unreachable for 0 s to 10 s" in title(t11)
    assert "snapshot 2" in title(t11)
    # The axis runs from job 1's start (150 - 145 = 5 s) to job 2's end (262 s).
    scale = (timeline.WIDTH - timeline.LEFT - timeline.RIGHT) / (262 - 5)

    def at(seconds: float) -> float:
        return timeline.LEFT + (seconds - 5) * scale

    assert x_span(t12) == pytest.approx((at(10), at(100)), abs=0.15)
    assert x_span(t11) == pytest.approx((at(70), at(260)), abs=0.15)
    stretches = sorted((x_span(s), s.get("data-label")) for s in groups(root, "stretch"))
    assert [label for _, label in stretches] == ["start-up", "start-up", "after the tables",
                                                 "after the tables"]
    assert [span for span, _ in stretches] == [
        pytest.approx((at(a), at(b)), abs=0.15) for a, b in ((5, 10), (62, 70), (100, 150),
                                                              (260, 262))]
    (renewal,) = groups(root, "renewal")
    assert float(renewal.find("line").get("x1")) == pytest.approx(at(221), abs=0.15)
    assert total(root, "seconds waited for the source database") == "93.1"
    assert total(root, "snapshots read from") == "2"
    assert "key x left NOT VALID" in [li.text for li in root.iter("li")]


# A local night in the copier's words, with where each unit's time went: regions and events
# (in slices) found unchanged, orders copied, accounts staged and swapped at the end.
def timed(event: str, table: str, job: int | None, seconds: float, steps: dict, **more) -> dict:
    line = {"event": event, "table": table, "job": job, "rows": 100, "bytes": 10**6,
            "seconds": seconds, "snapshot": 1, "steps": steps, **more}
    return line if job is not None else {k: v for k, v in line.items() if k not in ("job", "snapshot")}


STEPPED = [
    timed("table_copied", "public.orders", 1, 10.0,
          {"stage": 1.0, "load": 5.0, "index": 2.0, "verify": 0.5, "analyze": 1.0, "swap": 0.5}),
    timed("table_unchanged", "public.regions", 2, 2.0, {"stage": 0.5, "load": 1.2, "verify": 0.3},
          found="before loading"),
    timed("slice_loaded", "public.events", 1, 4.0, {"stage": 0.5, "load": 3.5}, slice="1/2"),
    timed("slice_loaded", "public.events", 2, 6.0, {"wait": 2.0, "stage": 0.5, "load": 3.5},
          slice="2/2"),
    timed("table_unchanged", "public.events", 2, 1.0, {"verify": 1.0}, slices=2,
          found="after loading"),
    timed("table_staged", "public.accounts", 2, 3.0, {"stage": 0.5, "load": 2.0, "analyze": 0.5}),
    timed("table_copied", "public.accounts", None, 3.0,  # its steps go on from the staged line's
          {"stage": 0.5, "load": 2.0, "analyze": 0.5, "lock": 0.4, "swap": 0.1}),
    {"event": "run_finished", "tables": 4, "failed": 0, "unchanged": 2, "seconds": 25.0,
     "steps": {"wait": 2.0, "stage": 3.0, "load": 15.2, "index": 2.0, "verify": 1.8,
               "analyze": 1.5, "lock": 0.4, "swap": 0.6}, "room": "enough"},
]


def steps_drawn(bar: ET.Element) -> list[tuple[str, float]]:
    """Each step segment of a bar: its step and its width's share of the bar's."""
    whole = float(bar.find("rect").get("width"))
    return [(g.get("data-step"), float(g.find("rect").get("width")) / whole)
            for g in bar.findall("g") if "step" in classes(g)]


def test_unchanged_tables_have_their_colour_and_every_bar_is_drawn_in_its_steps():
    from test_runlog import off_the_catalogue
    assert off_the_catalogue(STEPPED) == []
    root = parsed(timeline.render_html(STEPPED, "steps"))
    found = bars(root)
    assert {t: outcome(b) for t, b in found.items()} == {
        "public.orders": "copied", "public.regions": "unchanged", "public.events": "unchanged",
        "public.accounts": "staged"}
    assert [outcome(g) for g in pieces(root)] == ["unchanged", "unchanged"]  # its table's colour
    legend = root.find("body/p[@class='legend']")
    assert [i.get("class") for i in legend.iter("i")][:4] == ["copied", "unchanged", "staged",
                                                             "piece"]
    assert "unchanged (the source's rows are what the reporting table held: nothing written)" in (
        "".join(legend.itertext()))
    style = root.find("head/style").text
    assert ".bar.unchanged > rect { fill: #2b9ca0; }" in style
    assert "i.unchanged { background: #2b9ca0; }" in style and style.count("#2b9ca0") == 2

    # In STEPS order, each as wide as its share of the bar's seconds.
    assert steps_drawn(found["public.orders"]) == [
        ("stage", pytest.approx(0.1, abs=0.01)), ("load", pytest.approx(0.5, abs=0.01)),
        ("index", pytest.approx(0.2, abs=0.01)), ("verify", pytest.approx(0.05, abs=0.01)),
        ("analyze", pytest.approx(0.1, abs=0.01)), ("swap", pytest.approx(0.05, abs=0.01))]
    load = next(g for g in found["public.orders"].findall("g") if g.get("data-step") == "load")
    hover = title(load)
    assert hover.startswith("public.orders: load 5.00 s, 50% of its bar: reading the source")
    assert hover.endswith(title(found["public.orders"]))  # and the bar's own figures under it
    assert "steps: stage 1.0s · load 5.0s · index 2.0s · verify 0.5s · analyze 1.0s · swap 0.5s" in (
        title(found["public.orders"]))
    (slice_2,) = [g for g in pieces(root) if g.get("data-slice") == "2/2"]
    assert [name for name, _ in steps_drawn(slice_2)] == ["wait", "stage", "load"]
    opacity = {g.get("data-step"): g.find("rect").get("fill-opacity") for g in slice_2.findall("g")}
    assert len(set(opacity.values())) == 3  # neighbours are told apart by their shade

    regions = title(found["public.regions"])
    assert regions.splitlines()[0] == "public.regions: unchanged"
    assert "found unchanged before loading: nothing written, nothing locked" in regions
    events = title(found["public.events"]).splitlines()
    assert "then compared with the reporting table: nothing written: 1.0 s" in events
    assert title(slice_2).splitlines()[-1] == (
        "public.events: unchanged, finished by job 2 (compared with the reporting table: "
        "nothing written)")
    accounts = title(found["public.accounts"])
    assert [name for name, _ in steps_drawn(found["public.accounts"])] == ["stage", "load", "analyze"]
    assert accounts.endswith("went live in the swap at the end: lock 0.4s · swap 0.1s")

    assert (total(root, "tables"), total(root, "copied"), total(root, "unchanged")) == ("4", "2", "2")
    assert total(root, "rows copied") == "200"  # the unchanged tables' rows were not written
    assert total(root, "seconds by step, all jobs") == (
        "wait 2.0s · stage 3.0s · load 15.2s · index 2.0s · verify 1.8s · analyze 1.5s · "
        "lock 0.4s · swap 0.6s")  # the bars' and the swap's at the end: run_finished's too
    assert root.find("body/p").text.startswith("4 table(s): 2 copied, 2 unchanged, 0 failed;")
    assert slowest_row(root, "public.events")["steps"] == (
        "wait 2.0s · stage 0.5s · load 3.5s · verify 1.0s")  # its longest slice's and its finish's
    assert slowest_row(root, "public.events")["outcome"] == "unchanged"
    assert slowest_row(root, "public.accounts")["steps"] == (  # its swap's line: all of them
        "stage 0.5s · load 2.0s · analyze 0.5s · lock 0.4s · swap 0.1s")


def test_a_real_night_run_again_draws_its_unchanged_tables_in_their_steps(night, monkeypatch):
    monkeypatch.delenv("COPIER_COPY_UNCHANGED")  # as a night runs: unchanged tables are skipped
    first = night()  # locked: its reader is ended, it is swapped after the others
    assert first.code == 0, first.stderr
    (deferred,) = first.of(runlog.SWAP_DEFERRED)
    (swap,) = [e for e in first.of(runlog.TABLE_COPIED) if "job" not in e]
    root = parsed(timeline.render_html(first.events, "the first night"))
    locked = title(bars(root)["public.locked"])
    added = {name: seconds - deferred["steps"].get(name, 0.0) for name, seconds in swap["steps"].items()}
    assert "swap" in swap["steps"] and added["swap"] > 0
    assert locked.endswith("went live in the swap at the end: "
                           + runlog.format_steps(timeline.steps_after(swap, deferred["steps"])))
    (outcome_of_locked,) = [t for t in table_runs(first.events) if t.table == "public.locked"]
    assert outcome_of_locked.steps == runlog.steps_of(swap)  # the swap's line goes on from the staged one

    again = night()
    assert again.code == 0, again.stderr
    unchanged = {e["table"]: e for e in again.of(runlog.TABLE_UNCHANGED)}
    assert set(unchanged) == {"public.orders", "public.customers", "public.locked"}
    assert {table: e["found"] for table, e in unchanged.items()} == {  # orders is cut in slices
        "public.orders": "after loading", "public.customers": "before reading",
        "public.locked": "before reading"}
    assert again.of(runlog.RUN_FINISHED)[0]["unchanged"] == 3
    root = parsed(timeline.render_html(again.events, "the same night again"))
    found = bars(root)
    assert {table: outcome(bar) for table, bar in found.items()} == dict.fromkeys(unchanged, "unchanged")
    drawn = [*found.values(), *pieces(root)]
    assert {outcome(g) for g in pieces(root)} == {"unchanged"} and pieces(root)  # orders' slices
    assert all(steps_drawn(bar) for bar in drawn)
    lines = {(e["table"], e.get("slice")): e for e in again.events
             if e["event"] in runlog.TABLE_EVENTS and "job" in e}
    for bar in drawn:
        line = lines[bar.get("data-table"), bar.get("data-slice")]
        shown = [name for name, share in steps_drawn(bar)]
        whole = max(line["seconds"], sum(line["steps"].values()))
        wide_enough = [name for name, seconds in line["steps"].items()
                       if float(bar.find("rect").get("width")) * seconds / whole >= timeline.NARROWEST_STEP]
        assert shown == wide_enough and list(line["steps"]) == [s for s in runlog.STEPS if s in line["steps"]]
        for name, share in steps_drawn(bar):
            assert share == pytest.approx(line["steps"][name] / whole, abs=0.01)
    assert (total(root, "copied"), total(root, "unchanged")) == ("0", "3")
    assert total(root, "rows copied") == "0"
    report = tables_table(table_runs(again.events))
    assert [row.split()[-1] for row in report[1:4]] == ["unchanged"] * 3
    assert report[4] == "public.orders: " + next(
        t for t in table_runs(again.events) if t.table == "public.orders").figures() + ", unchanged"
    assert report[5] == "steps of the 3 slowest:"


def test_every_step_has_a_shade():
    assert set(timeline.STEP_SHADES) == set(runlog.STEPS)


def test_a_bar_without_steps_is_drawn_whole():
    (line, *_) = STEPPED
    root = parsed(timeline.render_html([{k: v for k, v in line.items() if k != "steps"}], "old"))
    assert steps_drawn(bars(root)["public.orders"]) == []
    assert "shades" not in "".join(root.find("body/p[@class='legend']").itertext())


def test_names_and_errors_are_text_not_markup():
    lines = [{"event": "table_failed", "table": 'public."<b>&x"', "job": 1, "seconds": 1.0,
              "error": "value <script>alert(1)</script> & more"}]
    page = timeline.render_html(lines, "<night>")
    root = parsed(page)
    assert "error: value <script>alert(1)</script> & more" in title(bars(root)['public."<b>&x"'])
    assert root.find("head/title").text == "<night>"


def test_lines_without_a_table_are_refused():
    with pytest.raises(timeline.NoTables):
        timeline.render_html([{"event": "run_finished", "seconds": 1.0}], "nothing")


# --- operations.py timeline, as a user runs it


def operations(*args: str, stdin: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "operations.py"), *args], input=stdin,
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def test_operations_timeline_writes_the_page_of_a_run_piped_in(night, tmp_path):
    run = night(*FAILING)
    stdout = "".join(json.dumps(e) + "\n" for e in run.events)
    page = tmp_path / "night.html"
    done = operations("timeline", "--html", str(page), stdin="copier: a stray line\n" + stdout)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"wrote {page}: the timeline of nightly-copy: a local run\n"
    root = parsed(page.read_text(encoding="utf-8"))
    assert set(bars(root)) == {"public.orders", "public.customers", "public.locked"}
    assert set(lanes(root)) - {"run"} == job_lanes(run.events)


NOTHING = ("error: nothing to draw: no table_copied, table_unchanged, table_failed, table_staged, "
           "swap_deferred, table_loaded or slice_loaded line among them\n")


@pytest.mark.parametrize("stdin, path, error", [
    ("", "night.html", NOTHING),
    ('{"event": "run_finished", "seconds": 1}\nnot json\n', "night.html", NOTHING),
    ('{"event": "table_copied", "table": "public.a", "job": 1, "seconds": 1}\n',
     "missing/night.html", "error: cannot write {tmp}/missing/night.html: No such file or "
                           "directory\n"),
])
def test_operations_timeline_bad_input_is_one_line_and_exit_1(tmp_path, stdin, path, error):
    done = operations("timeline", "--html", str(tmp_path / path), stdin=stdin)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == error.format(tmp=tmp_path)
    assert list(tmp_path.iterdir()) == []
