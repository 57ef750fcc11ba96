"""The night's picture (timeline.py, `operations.py timeline`), drawn from the real copier's
JSON lines: a lane per job, a bar per table with its outcome and figures, a page that opens
offline. `report DATE --html` under moto is in test_operations.py."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import psycopg2
import pytest

import copier
import timeline

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


@pytest.fixture
def night(dbs, run_copier):
    """The contract test's night: two jobs, two tables copied, one whose swap a reader blocks
    (it fails with --no-kill-readers --lock-budget 0; by default the reader is ended)."""
    dbs.source("CREATE TABLE orders (id int PRIMARY KEY, total numeric)")
    dbs.source("INSERT INTO orders SELECT g, g * 1.5 FROM generate_series(1, 3000) g")
    dbs.source("CREATE TABLE customers (id int PRIMARY KEY, name text)")
    dbs.source("INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 200) g")
    dbs.source("CREATE TABLE locked (id int)")
    dbs.target("CREATE TABLE locked (id int)")

    def run(*args: str):
        reader = psycopg2.connect(dbs.target_dsn)  # a report reading the table all night
        try:
            reader.cursor().execute("LOCK TABLE locked IN ACCESS SHARE MODE")
            return run_copier("TABLES=orders,customers,locked", "--jobs", "2",
                              "--lock-timeout", "0.2", "--lock-retries", "0", *args)
        finally:
            reader.close()

    return run


FAILING = ("--no-kill-readers", "--lock-budget", "0")


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
    (failed,) = run.of(copier.EVENT_TABLE_FAILED)
    (deferred,) = run.of("swap_deferred")
    locked = title(found["public.locked"])
    assert f"swap blocked by readers, tried again after the other tables: {deferred['reason']}" in locked
    assert f"error: {failed['error']}" in locked
    assert "could not lock public.locked" in failed["error"]

    assert (total(root, "tables"), total(root, "copied"), total(root, "failed")) == ("3", "2", "1")
    assert total(root, "rows copied") == "3,200"
    (finished,) = run.of(copier.EVENT_RUN_FINISHED)
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
    assert locked.endswith("went live in the swap at the end")
    (stretch,) = groups(root, "stretch")
    assert stretch.get("data-label") == "blocked swaps"
    assert "the swaps readers blocked, tried again (1 table(s))" in title(stretch)
    notes = [li.text for li in root.iter("li")]
    assert f"public.locked: terminated session {ended['pid']}" in " ".join(notes)
    assert total(root, "copied") == "3"


def test_without_a_clock_a_job_runs_its_tables_back_to_back_from_the_start(night):
    run = night(*FAILING)  # orders is cut into slices: they take their jobs' time too
    assert run.of("slice_loaded")
    (finished,) = run.of(copier.EVENT_RUN_FINISHED)
    px = (timeline.WIDTH - timeline.LEFT - timeline.RIGHT) / finished["seconds"]
    root = parsed(timeline.render_html(run.events, "a night"))
    # Every bar, slices included, in the order of the lines that drew them.
    lines = [e for e in run.events if e["event"] in (*timeline.TABLE_EVENTS, *timeline.PIECE_EVENTS)
             and "job" in e]
    drawn = groups(root, "bar")
    assert [(g.get("data-table"), g.get("data-slice")) for g in drawn] == [
        (e["table"], e.get("slice")) for e in lines]
    ends: dict[str, float] = {}  # lane: where its last bar ended
    slices_end: dict[str, float] = {}  # table: where its last slice ended, in any lane
    for g, line in zip(drawn, lines):
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
    assert all("went live in the swap at the end" in title(b) for b in found.values())
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


def test_a_real_retry_is_on_its_bar(dbs, run_copier, monkeypatch):
    dbs.source("CREATE TABLE big (id int PRIMARY KEY, payload text)")
    dbs.source("INSERT INTO big SELECT g, repeat('n', 150) FROM generate_series(1, 200000) g")
    calls = []

    def kill_once(table, nbytes, seconds):
        if not calls:
            calls.append(nbytes)
            conn = psycopg2.connect(dbs.source_dsn)
            conn.autocommit = True
            conn.cursor().execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                "AND query LIKE 'COPY%%' AND pid <> pg_backend_pid()", (dbs.source_name,))
            conn.close()

    monkeypatch.setattr(copier, "report_progress", kill_once)
    monkeypatch.setattr(copier, "backoff", lambda attempt, base: 0.01)
    run = run_copier("TABLES=big", "--progress-seconds", "0", "--retries", "2")
    assert run.code == 0, run.stderr
    (retry,) = run.of("table_retry")
    root = parsed(timeline.render_html(run.events, "retried"))
    bar = bars(root)["public.big"]
    assert "retried" in classes(bar) and outcome(bar) == "copied"
    assert f"retried: {retry['error']}" in title(bar)


# The README's night with a 90-second failover of the source, as CloudWatch Logs hands it
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


NOTHING = ("error: nothing to draw: no table_copied, table_failed, table_staged, swap_deferred, "
           "table_loaded or slice_loaded line among them\n")


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
