"""A picture of the night: the copier's JSON lines as one self-contained HTML page.

    python3 operations.py timeline --html night.html < lines.jsonl   # a local run's stdout
    python3 operations.py report 2026-11-27 --html night.html          # a run on AWS

The page holds an SVG timeline (a lane per job, a bar per table coloured by its outcome, the
run's own work after the tables, a renewed snapshot as a dashed line; hover a bar for its
rows, MB, seconds, MB/s, retries, waits and error), the slowest tables and the run's totals.
Nothing in it is fetched from elsewhere and there is no script: it opens offline.

Where the time went. A line that carries its `steps` (runlog.STEPS) draws its bar in them: a
segment per step, in that order, as wide as its share of the bar's seconds, each a shade of
the bar's colour; hover one for its step and seconds. What the steps leave out of the line's
seconds (retries, connecting) stays unshaded at the end. A table staged for the swap at the end
has what that swap added (its lock and swap) on its bar's hover: it ran in the run's own time.

Big tables and the two phases. A table cut into slices has a bar per slice, in the lane of the
job that loaded it ("orders 2/4", `slice_loaded`), and its own bar for the step that finished
it (indexes, row count check, analyze, swap: its `table_copied` line, whose seconds are that
step's only). A run split over machines has a lane per load job, whose bars are the slices and
the tables loaded whole (`table_loaded`), and a `publish` lane where each table is finished.
The pieces of a table take its outcome's colour, lighter; hovering one outlines all of them
(CSS `:has`, no script). A table counts once in the totals and the slowest tables: its rows
and bytes are its finishing line's, its seconds its longest piece's and its finish's (the
pieces load side by side; `operations.py report` counts them so too). Slices read from a
snapshot that was lost were loaded again: the first round is grey.

Where a bar sits. Lines read from CloudWatch Logs carry `@timestamp` (milliseconds since the
epoch, when the line was written; the demo stamps each line as it reads it): the table ended
then and started `seconds` earlier, and the run started `run_finished`'s `seconds` before that
line. The copier's stdout saved to a file carries no clock, but a job copies its tables one
after the other: each bar starts where the job's previous one ended, counted from the run's
start (a table's finishing step after its last slice; the publish after every load job), and
the time the run spent outside every table (start-up, a swap of the staged tables together,
foreign key checks) is drawn as one stretch between the last table's end and `run_finished`.
"""

from __future__ import annotations

import datetime as dt
import html
from dataclasses import dataclass, field

import runlog
from runlog import (
    FINISHING,
    LATE,
    PIECES,
    RUN_FINISHED,
    SESSION_ENDED,
    SNAPSHOT_RENEWED,
    SWAP_DEFERRED,
    TABLE_COPIED,
    TABLE_FAILED,
    TABLE_RETRY,
    WAITING,
)

NOTE_EVENTS = (runlog.WARNING, runlog.INDEX_SKIPPED, runlog.STATISTICS_SKIPPED, SESSION_ENDED)
# The load jobs of a split run sharing one snapshot: what each lane did with it.
SNAPSHOT_EVENTS = (runlog.SNAPSHOT_SHARED, runlog.SNAPSHOT_IMPORTED, runlog.SNAPSHOT_RELEASED)
# Every event the page uses: what operations.py asks CloudWatch Logs for.
EVENTS = (*runlog.TABLE_EVENTS, RUN_FINISHED, TABLE_RETRY, WAITING, SNAPSHOT_RENEWED,
          *NOTE_EVENTS, *SNAPSHOT_EVENTS)

OUTCOMES = {  # class: what the legend says
    "copied": "copied",
    "unchanged": "unchanged (the source's rows are what the reporting table held: nothing written)",
    "failed": "failed (the reporting table kept last night's data)",
    "staged": "staged, then swapped at the end (with the others, or once readers let go)",
    "restaged": "staged, then staged again from a renewed snapshot",
    "reloaded": "slices loaded again: some were read from a snapshot that was lost",
    "loaded": "loaded for the publish, which has not logged the table",
}
SLOWEST = 10
RUN_LANE, PUBLISH_LANE = "run", "publish"


class NoTables(ValueError):
    """The lines hold no table of a copier run."""


@dataclass
class Bar:
    table: str
    lane: str
    outcome: str
    start: float
    seconds: float
    rows: int | None = None
    bytes: int | None = None
    snapshot: int | None = None
    error: str | None = None
    late: bool = False  # staged, to be swapped at the end of the run
    deferred: str | None = None  # why: readers blocked its swap
    sessions: list[str] = field(default_factory=list)  # sessions ended for its swap
    swapped: bool = False
    retries: list[str] = field(default_factory=list)
    waits: dict[str, list[float]] = field(default_factory=dict)  # database: seconds noted
    # A piece of a table: "2/4", one of its slices; "load", the table loaded whole by a load
    # job. None: the table's own bar, the step that finished it (or the whole copy).
    part: str | None = None
    phase: str | None = None  # "load" or "publish" in a run split over machines
    slices: int | None = None  # a finishing step's: the slices its table was loaded in
    pieces: list[Bar] = field(default_factory=list)  # a finishing step's slices or load
    whole: Bar | None = None  # a piece's: the step that finished its table
    superseded: bool = False  # a piece of a round that was loaded again
    steps: dict[str, float] = field(default_factory=dict)  # its line's seconds by step
    end_swap: dict[str, float] = field(default_factory=dict)  # staged: the steps the swap at the end added
    found: str | None = None  # unchanged: before or after loading

    @property
    def end(self) -> float:
        return self.start + self.seconds

    @property
    def ok(self) -> bool:
        return self.outcome in runlog.SUCCEEDED or (self.outcome == "staged" and self.swapped)

    @property
    def mb(self) -> float | None:
        return self.bytes / 1e6 if self.bytes is not None else None

    @property
    def mb_per_second(self) -> float | None:
        return self.mb / self.seconds if self.mb is not None and self.seconds else None

    @property
    def name(self) -> str:
        """Its table, and the slice for a slice: 'public.orders 2/4'."""
        return f"{self.table} {self.part}" if self.part and self.part != "load" else self.table


@dataclass
class Stretch:
    """The run's own time outside its tables, in a lane."""

    lane: str
    start: float
    end: float
    label: str
    detail: str


@dataclass
class Night:
    timed: bool
    bars: list[Bar]
    unplaced: list[dict]  # table lines no job drew (a worker died, a join job without a snapshot)
    stretches: list[Stretch]
    renewals: list[tuple[float, int]]  # (when, the new snapshot's number)
    finished: list[dict]
    notes: list[str]
    origin: float = 0.0
    tables: dict[str, runlog.TableOutcome] = field(default_factory=dict)  # in the order first logged
    lane_notes: dict[str, list[str]] = field(default_factory=dict)  # lane: what it did with the snapshot

    @property
    def lanes(self) -> list[str]:
        jobs = sorted({bar.lane for bar in self.bars} | {s.lane for s in self.stretches}
                      - {RUN_LANE}, key=runlog.job_order)
        run = [RUN_LANE] if any(s.lane == RUN_LANE for s in self.stretches) else []
        return jobs + run

    @property
    def jobs(self) -> list[str]:
        return [lane for lane in self.lanes if lane not in (RUN_LANE, PUBLISH_LANE)]

    @property
    def end(self) -> float:
        return max([bar.end for bar in self.bars] + [s.end for s in self.stretches] + [self.origin])


def read_night(lines: list[dict]) -> Night:
    """Bars, stretches and marks from the copier's lines, in the order they were written."""
    tables = runlog.table_outcomes(lines)
    if not tables:
        raise NoTables("no table_copied, table_unchanged, table_failed, table_staged, "
                       "swap_deferred, table_loaded or slice_loaded line among them")
    timed = all("@timestamp" in line for line in lines)
    streams = runlog.stream_jobs(lines)

    def lane(line: dict) -> str:
        """Its job's, the publish, or the run's own (no job: the parent process)."""
        if line.get("phase") == "publish":
            return PUBLISH_LANE
        return runlog.job_of(line, streams) or RUN_LANE

    bars: list[Bar] = []
    latest: dict[str, Bar] = {}  # each table's last finishing step
    rounds: dict[str, list[Bar]] = {}  # each table's pieces not finished yet
    not_before: dict[str, float] = {}  # without a clock: a table loaded again, after the first round
    lane_end: dict[str, float] = {}
    round_start = 0.0
    retries: dict[str, list[str]] = {}
    waits: dict[tuple[str, str], dict[str, list[float]]] = {}
    segment: list[str] = []  # without a clock: the lanes since the last run_finished
    pending_notes: list[str] = []
    night = Night(timed, bars, [], [], [], [], [], tables={t.table: t for t in tables})

    def note_lane(name: str, text: str) -> None:
        night.lane_notes.setdefault(name, []).append(text)

    def untimed_start(name: str) -> float:
        """Without a clock: where the lane's next bar starts (the publish after every load job)."""
        if name == PUBLISH_LANE and name not in lane_end:
            lane_end[name] = max([*lane_end.values(), *(s.end for s in night.stretches)],
                                 default=0.0)
        return max(lane_end.get(name, 0.0), round_start)

    for line in lines:
        event = line.get("event")
        table, part = runlog.line_unit(line) if line.get("table") else (None, None)
        now = line["@timestamp"] / 1000 if timed else max(lane_end.values(), default=0.0)
        where = lane(line)
        if where != RUN_LANE and event not in SNAPSHOT_EVENTS:
            if not segment or segment[-1] != where:
                segment.append(where)
            for text in pending_notes:
                note_lane(where, text)
            pending_notes.clear()
        piece = event in PIECES or (event == TABLE_FAILED and (
            part is not None or line.get("phase") == "load"))
        if (event in FINISHING or piece) and table:
            bar = latest.get(table)
            if not piece and event not in LATE and line.get("job") is None \
                    and bar is not None and bar.late:
                # The swap of the staged tables: it went live, or it did not.
                bar.swapped, bar.end_swap = event == TABLE_COPIED, steps_after(line, bar.steps)
                if event == TABLE_FAILED:
                    bar.outcome, bar.error = "failed", line.get("error")
                continue
            if line.get("seconds") is None or where == RUN_LANE:
                night.unplaced.append(line)
                continue
            seconds = float(line["seconds"])
            unit = f"{table}#{part}" if part else table
            if piece:
                current = rounds.setdefault(table, [])
                if any(p.part == (part or "load") for p in current):  # loaded again
                    for p in current:
                        p.superseded = True
                    not_before[table] = max(p.end for p in current)
                    current = rounds[table] = []
                start = now - seconds if timed else max(untimed_start(where),
                                                        not_before.get(table, 0.0))
                bar = Bar(table, where, "failed" if event == TABLE_FAILED else "loaded",
                          start, seconds, line.get("rows"), line.get("bytes"), line.get("snapshot"),
                          line.get("error"), retries=retries.pop(unit, []),
                          waits=waits.pop((where, unit), {}), part=part or "load",
                          phase=line.get("phase"), steps=runlog.steps_of(line))
                current.append(bar)
            else:
                pieces = rounds.pop(table, [])
                if bar is not None:  # staged again: a new round of jobs, after the first
                    if bar.outcome == "staged":
                        bar.outcome = "restaged"
                    round_start = max(lane_end.values(), default=0.0)
                start = now - seconds if timed else max(
                    [untimed_start(where)] + [p.end for p in pieces])
                bar = Bar(table, where, runlog.OUTCOME_OF[event],
                          start, seconds, line.get("rows"), line.get("bytes"), line.get("snapshot"),
                          line.get("error"), retries=retries.pop(table, []),
                          waits=waits.pop((where, table), {}), late=event in LATE,
                          deferred=line.get("reason") if event == SWAP_DEFERRED else None,
                          phase=line.get("phase"), slices=line.get("slices"), pieces=pieces,
                          steps=runlog.steps_of(line), found=line.get("found"))
                for p in pieces:
                    p.whole = bar
                latest[table] = bar
            lane_end[where] = bar.end
            bars.append(bar)
        elif event == TABLE_RETRY and line.get("table"):
            retries.setdefault(str(line["table"]), []).append(str(line.get("error", "")))
        elif event == WAITING and line.get("table"):
            noted = waits.setdefault((where, str(line["table"])), {})
            noted.setdefault(str(line.get("database", "?")), []).append(float(line.get("seconds", 0)))
        elif event == SNAPSHOT_RENEWED:
            night.renewals.append((now, line.get("snapshot")))
        elif event in SNAPSHOT_EVENTS:
            text = snapshot_text(line)
            if where != RUN_LANE:
                note_lane(where, text)
            elif event == runlog.SNAPSHOT_RELEASED and segment:
                note_lane(segment[-1], text)
            else:
                pending_notes.append(text)
        elif event in NOTE_EVENTS:
            night.notes.append(note_text(line))
            if event == SESSION_ENDED and table in latest:
                latest[table].sessions.append(note_text(line).split(": ", 1)[1])
        elif event == RUN_FINISHED:
            night.finished.append(line)
            if where == RUN_LANE and line.get("phase") and len(set(segment)) == 1:
                where = segment[0]  # a split run's job, its stdout without a stream
            segment.clear()
            took = float(line.get("seconds") or 0)
            if timed:
                ended = now
            elif where == RUN_LANE or line.get("phase") is None:
                ended = took
            else:
                ended = min([b.start for b in bars if b.lane == where] or [0.0]) + took
            mine = [b for b in bars if where == RUN_LANE or b.lane == where]
            started = ended - took
            if timed and mine and min(b.start for b in mine) > started:
                night.stretches.append(Stretch(
                    where, started, min(b.start for b in mine), "start-up",
                    "start-up: the tables resolved and checked, " + (
                        "the run's snapshot imported" if any(
                            "imported" in n for n in night.lane_notes.get(where, []))
                        else "no snapshot (the publish reads none)" if where == PUBLISH_LANE
                        else "the snapshot exported")))
            last = max((b.end for b in mine), default=started)
            if ended > last:
                night.stretches.append(after_the_tables(
                    where, last, ended, mine, timed,
                    holding=any("held" in n for n in night.lane_notes.get(where, []))))
    for table, outcome in night.tables.items():  # a piece takes its table's colour
        bar = latest.get(table)
        for p in bar.pieces if bar is not None else rounds.get(table, []):
            p.outcome = "failed" if p.error else bar.outcome if bar is not None else outcome.outcome
    for bar in bars:
        if bar.superseded:
            bar.outcome = "reloaded"
    if timed:
        night.origin = min([b.start for b in bars] + [s.start for s in night.stretches])
    return night


def steps_after(line: dict, before: dict[str, float]) -> dict[str, float]:
    """What a line's steps add to those before it: the swap at the end of the run goes on from
    its table's staged line's steps."""
    added = {name: round(seconds - before.get(name, 0.0), 3)
             for name, seconds in runlog.steps_of(line).items()}
    # A step the staged line had not, however short (a swap under a millisecond), ran at the end.
    return {name: seconds for name, seconds in added.items() if seconds > 0 or name not in before}


def snapshot_text(line: dict) -> str:
    if line["event"] == "snapshot_shared":
        return (f"exported the run's snapshot and held it for the {line.get('jobs', '?')} "
                "load jobs (COPIER_ONE_SNAPSHOT=hold)")
    if line["event"] == "snapshot_imported":
        return "imported the run's snapshot from the first load job (COPIER_ONE_SNAPSHOT=join)"
    return (f"released the run's snapshot: {line.get('imported', '?')} of "
            f"{line.get('jobs', '?')} load jobs read it")


def after_the_tables(lane: str, start: float, end: float, bars: list[Bar], timed: bool,
                     holding: bool = False) -> Stretch:
    deferred = [b for b in bars if b.deferred]
    staged = [b for b in bars if b.late and not b.deferred and b.outcome != "restaged"]
    parts = [] if timed else ["start-up (resolving and checking the tables, exporting the snapshot)"]
    if holding:
        parts.append("the run's snapshot held until the other load jobs imported it")
    if staged:
        parts.append(f"the swap of {len(staged)} staged table(s) together")
    if deferred:
        parts.append(f"the swaps readers blocked, tried again ({len(deferred)} table(s))")
    parts.append("foreign keys validated again, the locks released")
    label = ("swap together" if staged else "blocked swaps" if deferred
             else "after the tables" if timed else "outside the tables")
    return Stretch(lane, start, end, label, "the run's own time outside its tables: " + ", ".join(parts))


def note_text(line: dict) -> str:
    if line["event"] == runlog.WARNING:
        return str(line.get("message", ""))
    if line["event"] == SESSION_ENDED:
        return (f"{line.get('table', '?')}: {line.get('action', 'ended')} session {line.get('pid')} "
                f"(user {line.get('user')}, application {line.get('application') or '-'}, "
                f"{line.get('state')} for {line.get('seconds_in_state')} s: {line.get('query')}): "
                "it blocked the swap")
    what = line.get("index") or line.get("statistics") or "?"
    kind = "index" if line["event"] == "index_skipped" else "statistics object"
    return f"{line.get('table', '?')}: {kind} {what} left out: {line.get('error', '')}"


# --------------------------------------------------------------------------- formatting


def clock(seconds: float) -> str:
    """An axis label: 45s, 2m, 2m30s, 1h05."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}" + (f"m{secs:02d}s" if secs else "")
    if minutes:
        return f"{minutes}m" + (f"{secs:02d}s" if secs else "")
    return f"{seconds:g}s" if seconds < 10 and seconds != whole else f"{whole}s"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    return clock(seconds)


def tick_step(span: float) -> float:
    for step in (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200,
                 10800, 21600):
        if span / step <= 10:
            return step
    return 43200


def amount(value: float | None, digits: int = 1) -> str:
    return f"{value:,.{digits}f}" if value is not None else "-"


def count(value: int | None) -> str:
    return f"{value:,}" if value is not None else "-"


def e(text) -> str:
    return html.escape(str(text), quote=True)


def figures(rows: int | None, nbytes: int | None, seconds: float, rate: float | None) -> str:
    """'3,000 rows, 0.1 MB in 0.4 s: 0.19 MB/s'."""
    if rows is None and nbytes is None:
        return f"{seconds:.1f} s"
    per_second = f": {amount(rate, 2)} MB/s" if rate is not None else ""
    mb = nbytes / 1e6 if nbytes is not None else None
    return f"{count(rows)} rows, {amount(mb)} MB in {seconds:.1f} s{per_second}"


def finishing_step(bar: Bar) -> str:
    """What the step that finished a loaded table did."""
    if bar.outcome == "unchanged":
        return "compared with the reporting table: nothing written"
    return "indexes, row count check, analyze" + (", staged for the swap" if bar.late else ", swap")


def outcome_word(outcome: str) -> str:
    return OUTCOMES[outcome].split(" (")[0]


def bar_title(bar: Bar, origin: float) -> str:
    if bar.part is not None:
        return piece_title(bar, origin)
    lines = [f"{bar.table}: {outcome_word(bar.outcome)}",
             f"{bar.lane}, {duration(bar.start - origin)} to {duration(bar.end - origin)}"]
    if bar.pieces:
        seconds = bar.seconds + max(p.seconds for p in bar.pieces)
        rate = bar.bytes / 1e6 / seconds if bar.bytes is not None and seconds else None
        longest = "longest slice" if any(p.part != "load" for p in bar.pieces) else "load"
        lines.append(figures(bar.rows, bar.bytes, seconds, rate) + f" (its {longest} and this step)")
        loaded_by = ", ".join(sorted({p.lane for p in bar.pieces}, key=runlog.job_order))
        loading = sum(p.seconds for p in bar.pieces)
        if any(p.part != "load" for p in bar.pieces):
            lines.append(f"{bar.slices or len(bar.pieces)} slices, loaded by {loaded_by} in "
                         f"{loading:.1f} s of work")
        else:
            lines.append(f"loaded whole by {loaded_by} in {loading:.1f} s")
        lines.append(f"then {finishing_step(bar)}: {bar.seconds:.1f} s")
        first = min(p.start for p in bar.pieces)
        lines.append(f"from its first load's start to this step's end: {duration(bar.end - first)}")
    else:
        lines.append(figures(bar.rows, bar.bytes, bar.seconds, bar.mb_per_second))
    lines += steps_lines(bar)
    if bar.snapshot is not None:
        lines.append(f"snapshot {bar.snapshot}")
    if bar.deferred:
        lines.append(f"swap blocked by readers, tried again after the other tables: {bar.deferred}")
    lines += [f"{session}" for session in bar.sessions]
    took = f": {runlog.format_steps(bar.end_swap)}" if bar.end_swap else ""
    if bar.outcome == "staged":
        lines.append(f"went live in the swap at the end{took}" if bar.swapped
                     else "not swapped (no later line)")
    elif took:
        lines.append(f"the swap at the end{took}")
    lines += details(bar)
    return "\n".join(lines)


def steps_lines(bar: Bar) -> list[str]:
    """Where its seconds went; for an unchanged table, when it was found so."""
    lines = [f"steps: {runlog.format_steps(bar.steps)}"] if bar.steps else []
    if bar.found:
        lines.append(f"found unchanged {bar.found}: nothing written, nothing locked")
    return lines


def piece_title(bar: Bar, origin: float) -> str:
    """A slice's or a load's: its own figures, and where its table went from there."""
    whole = "the whole table" if bar.part == "load" else f"slice {bar.part.replace('/', ' of ')}"
    lines = [f"{bar.name}: {outcome_word(bar.outcome)}",
             f"{bar.lane}, {duration(bar.start - origin)} to {duration(bar.end - origin)}",
             f"{whole} loaded: " + figures(bar.rows, bar.bytes, bar.seconds, bar.mb_per_second)]
    lines += steps_lines(bar)
    if bar.snapshot is not None:
        lines.append(f"snapshot {bar.snapshot}")
    if bar.superseded:
        lines.append("its table's slices were read from two snapshots (one was lost): "
                     "loaded again, this one did not go live")
    elif bar.whole is not None:
        lines.append(f"{bar.table}: {outcome_word(bar.whole.outcome)}, finished by "
                     f"{bar.whole.lane} ({finishing_step(bar.whole)})")
    elif bar.outcome == "loaded":
        lines.append(f"{bar.table}: no later line (not published yet)")
    lines += details(bar)
    return "\n".join(lines)


def details(bar: Bar) -> list[str]:
    lines = [f"retried: {error}" for error in bar.retries]
    for database, noted in bar.waits.items():
        lines.append(f"waited for the {database} database: unreachable for {min(noted):.0f} s "
                     f"to {max(noted):.0f} s of its outage while this table waited")
    if bar.error:
        lines.append(f"error: {bar.error}")
    return lines


# --------------------------------------------------------------------------- the SVG

WIDTH, LEFT, RIGHT, AXIS, LANE, BAR = 1000, 110, 24, 34, 30, 20
CHAR = 6.3  # px per character of the 11px bar labels, roughly
# The shade of black over a bar's colour that marks each step: neighbours always differ.
STEP_SHADES = {"wait": 0.4, "stage": 0.0, "load": 0.16, "index": 0.3, "verify": 0.06,
               "analyze": 0.22, "lock": 0.45, "swap": 0.1}
OTHER_SHADE = 0.12  # a step this page does not know yet
NARROWEST_STEP = 0.5  # px: a narrower step is not drawn (its bar's hover still names it)


def table_keys(night: Night) -> dict[str, str]:
    """A short key for each table drawn as more than one bar: hovering one outlines them all."""
    counted: dict[str, int] = {}
    for bar in night.bars:
        counted[bar.table] = counted.get(bar.table, 0) + 1
    return {table: f"t{n}" for n, table in enumerate(t for t, k in counted.items() if k > 1)}


def svg(night: Night) -> str:
    lanes = night.lanes
    span = max(night.end - night.origin, 1e-3)
    plot = WIDTH - LEFT - RIGHT
    height = AXIS + LANE * len(lanes) + 8
    keys = table_keys(night)

    def x(t: float) -> float:
        return LEFT + (t - night.origin) / span * plot

    def y(lane: str) -> float:
        return AXIS + LANE * lanes.index(lane)

    out = [f'<svg class="timeline" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" '
           f'height="{height}" role="img" aria-label="timeline of the run">',
           '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
           'patternTransform="rotate(45)"><rect width="2.5" height="6" fill="#000" '
           'fill-opacity="0.35"/></pattern></defs>']
    for n, lane in enumerate(lanes):
        top = y(lane)
        notes = night.lane_notes.get(lane, [])
        hover = f"<title>{e(chr(10).join([lane + ':', *notes]))}</title>" if notes else ""
        out.append(f'<g class="lane" data-lane="{e(lane)}">{hover}'
                   f'<rect class="lane-bg{" odd" if n % 2 else ""}" x="0" y="{top:.1f}" '
                   f'width="{WIDTH}" height="{LANE}"/>'
                   f'<text class="lane-label" x="8" y="{top + LANE / 2 + 4:.1f}">{e(lane)}</text></g>')
    step = tick_step(span)
    for k in range(int(span / step + 1e-9) + 1):
        t = night.origin + k * step
        out.append(f'<g class="tick"><line x1="{x(t):.1f}" y1="{AXIS - 6}" x2="{x(t):.1f}" '
                   f'y2="{height - 8}"/><text x="{x(t):.1f}" y="{AXIS - 10}">'
                   f'{e(clock(k * step))}</text></g>')
    for bar in night.bars:
        left, top = x(bar.start), y(bar.lane) + (LANE - BAR) / 2
        width = max(x(bar.end) - left, 1.5)
        kind = [] if bar.part is None else ["load"] if bar.part == "load" else ["slice"]
        classes = " ".join(["bar", bar.outcome, *kind] + (["culprit"] if bar.part and bar.error
                                                           else [])
                           + (["waited"] if bar.waits else []) + (["retried"] if bar.retries else []))
        attributes = f' data-table="{e(bar.table)}"'
        if bar.part and bar.part != "load":
            attributes += f' data-slice="{e(bar.part)}"'
        if bar.table in keys:
            attributes += f' data-key="{keys[bar.table]}"'
        out.append(f'<g class="{classes}"{attributes}><title>'
                   f'{e(bar_title(bar, night.origin))}</title>'
                   f'<rect x="{left:.1f}" y="{top:.1f}" width="{width:.1f}" height="{BAR}" rx="2"/>')
        if bar.waits:
            out.append(f'<rect class="hatch" x="{left:.1f}" y="{top:.1f}" width="{width:.1f}" '
                       f'height="{BAR}" rx="2" fill="url(#hatch)"/>')
        out += step_segments(bar, left, top, width, night.origin)
        label = bar.name.removeprefix("public.")
        if width >= len(label) * CHAR + 8:
            out.append(f'<text x="{left + 4:.1f}" y="{top + BAR / 2 + 4:.1f}">{e(label)}</text>')
        out.append("</g>")
    for stretch in night.stretches:
        left, top = x(stretch.start), y(stretch.lane) + (LANE - BAR) / 2 + 3
        width = max(x(stretch.end) - left, 1.5)
        out.append(f'<g class="stretch" data-label="{e(stretch.label)}"><title>{e(stretch.label)}: '
                   f'{e(duration(stretch.end - stretch.start))}\n{e(stretch.detail)}</title>'
                   f'<rect x="{left:.1f}" y="{top:.1f}" width="{width:.1f}" height="{BAR - 6}" '
                   'rx="2"/>')
        if width >= len(stretch.label) * CHAR + 8:
            out.append(f'<text x="{left + 4:.1f}" y="{top + BAR / 2 + 1:.1f}">{e(stretch.label)}</text>')
        out.append("</g>")
    for when, snapshot in night.renewals:
        out.append(f'<g class="renewal"><title>snapshot {e(snapshot)} from here on: the run\'s '
                   f'snapshot was lost and renewed{"" if night.timed else " (at the latest)"}'
                   f'</title><line x1="{x(when):.1f}" y1="{AXIS - 4}" x2="{x(when):.1f}" '
                   f'y2="{height - 8}"/><text x="{x(when) + 3:.1f}" y="{AXIS + 9}">'
                   f'snapshot {e(snapshot)}</text></g>')
    out.append("</svg>")
    return "\n".join(out)


def step_segments(bar: Bar, left: float, top: float, width: float, origin: float) -> list[str]:
    """The bar cut into its steps, in STEPS order, each as wide as its share of the bar's
    seconds (of the steps' sum, if the line's rounding makes that larger); hovering one names
    its step above the bar's own figures."""
    whole = max(bar.seconds, sum(bar.steps.values()))
    if whole <= 0:
        return []
    out, x = [], left
    for name, seconds in bar.steps.items():
        share = width * seconds / whole
        if share >= NARROWEST_STEP:
            what = runlog.STEPS.get(name, "a step of a newer copier")
            hover = (f"{bar.name}: {name} {seconds:.2f} s, {seconds / whole:.0%} of its bar: {what}"
                     f"\n\n{bar_title(bar, origin)}")
            out.append(f'<g class="step" data-step="{e(name)}" data-seconds="{seconds:g}">'
                       f'<title>{e(hover)}</title><rect x="{x:.2f}" y="{top:.1f}" '
                       f'width="{share:.2f}" height="{BAR}" fill-opacity="'
                       f'{STEP_SHADES.get(name, OTHER_SHADE)}"/></g>')
        x += share
    return out


def linked_style(night: Night) -> str:
    """Hovering one bar of a table drawn as several outlines every one of them (CSS :has)."""
    return "".join(f'\nsvg.timeline:has(g[data-key="{key}"]:hover) g[data-key="{key}"] > rect'
                   ':first-of-type { stroke: #000; stroke-width: 1.5; }'
                   for key in table_keys(night).values())


# --------------------------------------------------------------------------- the page

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 28px 0 8px; }
.summary { margin: 0 0 16px; color: #444; }
svg.timeline { display: block; max-width: 100%; height: auto; font-size: 11px; }
.lane-bg { fill: #fafafa; } .lane-bg.odd { fill: #f0f0f0; }
.lane-label { fill: #333; font-size: 12px; font-weight: 600; }
.tick line { stroke: #000; stroke-opacity: 0.12; } .tick text { fill: #666; text-anchor: middle; }
.bar rect { stroke: #fff; stroke-width: 0.5; } .bar:hover rect { stroke: #000; stroke-width: 1.5; }
.bar text { fill: #fff; pointer-events: none; }
.bar.copied > rect { fill: #3d8b57; } .bar.unchanged > rect { fill: #2b9ca0; }
.bar.failed > rect { fill: #c8372d; }
.bar.staged > rect { fill: #3f6fb5; } .bar.restaged > rect, .bar.reloaded > rect { fill: #b5b5b5; }
.bar.loaded > rect { fill: #7a6a9e; }
.bar.restaged text, .bar.reloaded text { fill: #222; }
.bar.slice > rect:first-of-type, .bar.load > rect:first-of-type { fill-opacity: 0.55; }
.bar.slice text, .bar.load text { fill: #111; }
.bar.culprit > rect:first-of-type { fill-opacity: 1; stroke: #4a0b06; stroke-width: 2; }
.bar > rect.hatch { fill: url(#hatch); stroke: none; }
.bar g.step > rect { fill: #000; stroke: #fff; stroke-width: 0.4; stroke-opacity: 0.6; }
.bar g.step:hover > rect { stroke: #000; stroke-width: 1; stroke-opacity: 1; }
.bar.retried > rect:first-of-type { stroke: #000; stroke-dasharray: 3 2; stroke-width: 1; }
.stretch rect { fill: #e3a33b; } .stretch:hover rect { stroke: #000; }
.stretch text { fill: #222; font-size: 10px; pointer-events: none; }
.renewal line { stroke: #7a3fb5; stroke-width: 1.5; stroke-dasharray: 4 3; }
.renewal text { fill: #7a3fb5; font-size: 10px; }
.legend { margin: 8px 0 0; color: #444; font-size: 12px; }
.legend span { display: inline-block; margin-right: 16px; }
.legend i { display: inline-block; width: 12px; height: 12px; margin-right: 5px; vertical-align: -2px;
  border-radius: 2px; }
i.copied { background: #3d8b57; } i.unchanged { background: #2b9ca0; }
i.steps { background: linear-gradient(90deg, #3d8b57 0 30%, #335f45 30% 62%, #2b4a37 62%); }
i.failed { background: #c8372d; } i.staged { background: #3f6fb5; }
i.restaged, i.reloaded { background: #b5b5b5; } i.loaded { background: #7a6a9e; }
i.stretch { background: #e3a33b; }
i.piece { background: #3d8b57; opacity: 0.55; }
i.culprit { background: #c8372d; outline: 2px solid #4a0b06; outline-offset: -2px; }
i.waited { background: repeating-linear-gradient(45deg, #3d8b57 0 3px, #24573a 3px 5px); }
i.renewal { border-left: 2px dashed #7a3fb5; border-radius: 0; width: 6px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { padding: 3px 10px; border-bottom: 1px solid #e4e4e4; text-align: left; vertical-align: top; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
td.failed { color: #c8372d; font-weight: 600; }
.error { color: #8a1f18; max-width: 640px; }
ul.notes { padding-left: 20px; } ul.notes li { margin: 2px 0; }
"""


@dataclass
class Totals:
    tables: int
    copied: int
    unchanged: int  # found unchanged: not written
    failed: int
    loaded: int  # loaded for a publish that has not logged them
    sliced: int
    rows: int
    bytes: int
    wall: float
    table_seconds: float
    jobs: int
    publish: bool
    retries: int
    waited: dict[str, float]
    snapshots: int
    steps: dict[str, float]  # every bar's, and the swaps' at the end


def totals(night: Night) -> Totals:
    tables = list(night.tables.values())
    ok = [t for t in tables if t.copied]
    walls = [float(line["seconds"]) for line in night.finished if line.get("seconds") is not None]
    split = any(line.get("phase") for line in night.finished) or PUBLISH_LANE in night.lanes
    wall = night.end - night.origin if night.timed or split or not walls else max(walls)
    waited = {}
    for database in ("source", "target"):
        seconds = sum(float(line.get(f"{database}_waited_seconds") or 0) for line in night.finished)
        if seconds:
            waited[database] = seconds
    snapshots = max([int(line.get("snapshots") or 1) for line in night.finished]
                    + [(s or 1) for _, s in night.renewals] + [1])
    return Totals(len(tables), len(ok), len([t for t in tables if t.outcome == "unchanged"]),
                  len([t for t in tables if t.outcome == "failed"]),
                  len([t for t in tables if t.outcome == "loaded"]),
                  len([t for t in tables if t.slices]),
                  sum(t.rows or 0 for t in ok), sum(t.bytes or 0 for t in ok), wall,
                  sum(b.seconds for b in night.bars), len(night.jobs),
                  PUBLISH_LANE in night.lanes, sum(len(b.retries) for b in night.bars), waited,
                  snapshots, runlog.added_steps(*(b.steps for b in night.bars),
                                                *(b.end_swap for b in night.bars)))


def totals_table(t: Totals) -> list[str]:
    rows = [("tables", count(t.tables)), ("copied", count(t.copied)),
            ("unchanged", count(t.unchanged)), ("failed", count(t.failed))]
    if t.loaded:
        rows.append(("loaded, not published", count(t.loaded)))
    if t.sliced:
        rows.append(("cut into slices", count(t.sliced)))
    rows += [("rows copied", count(t.rows)), ("MB copied", amount(t.bytes / 1e6)),
             ("wall time", duration(t.wall)),
             ("MB/s over the wall time", amount(t.bytes / 1e6 / t.wall, 2) if t.wall else "-"),
             ("jobs", count(t.jobs) + (" and the publish" if t.publish else "")),
             ("seconds in tables, all jobs", amount(t.table_seconds))]
    if t.steps:
        rows.append(("seconds by step, all jobs", runlog.format_steps(t.steps)))
    rows += [("retries", count(t.retries))]
    rows += [(f"seconds waited for the {db} database", amount(s)) for db, s in t.waited.items()]
    if t.snapshots > 1:
        rows.append(("snapshots read from", count(t.snapshots)))
    return (['<table class="totals">']
            + [f'<tr><th>{e(name)}</th><td class="n" data-total="{e(name)}">{e(value)}</td></tr>'
               for name, value in rows] + ["</table>"])


def slowest_table(night: Night) -> list[str]:
    tables = sorted(night.tables.values(), key=lambda t: (-(t.seconds or 0), t.table))[:SLOWEST]
    out = ['<table class="slowest"><tr><th>table</th><th>job</th><th>outcome</th>'
           '<th class="n">slices</th><th class="n">rows</th><th class="n">MB</th>'
           '<th class="n" title="a table loaded in pieces: its longest piece\'s seconds and its '
           'finishing step\'s (the pieces load side by side)">seconds</th>'
           '<th class="n">MB/s</th><th title="its longest piece\'s steps and its finishing '
           'step\'s, as its seconds">steps</th></tr>']
    for t in tables:
        out.append(f'<tr data-table="{e(t.table)}"><td>{e(t.table)}</td>'
                   f'<td>{e(", ".join(t.jobs) or "-")}</td>'
                   f'<td class="{e(t.outcome)}">{e(t.outcome)}</td><td class="n">{count(t.slices)}</td>'
                   f'<td class="n">{count(t.rows)}</td><td class="n">{amount(t.mb)}</td>'
                   f'<td class="n">{amount(t.seconds)}</td>'
                   f'<td class="n">{amount(t.mb_per_second, 2)}</td>'
                   f'<td>{e(runlog.format_steps(t.steps) or "-")}</td></tr>')
    out.append("</table>")
    return out


def failures_list(night: Night) -> list[str]:
    """Each failed table once: where it failed first, and its error (then the last one)."""
    failed = []
    for t in night.tables.values():
        if t.outcome != "failed":
            continue
        first, last = t.failures[0], t.failures[-1]
        error = first.error
        if last.error != first.error:
            error += f"; then {last.where or '-'}: {last.error}"
        failed.append((t.table, first.where or "-", error))
    if not failed:
        return []
    return (["<h2>Failed tables</h2>", '<table class="failures">']
            + [f'<tr><td>{e(table)}</td><td>{e(where)}</td><td class="error">{e(error)}</td></tr>'
               for table, where, error in failed] + ["</table>"])


def notes_list(night: Night) -> list[str]:
    notes = list(dict.fromkeys(night.notes))
    if not notes:
        return []
    return (["<h2>Warnings</h2>", '<ul class="notes">']
            + [f"<li>{e(note)}</li>" for note in notes] + ["</ul>"])


def legend(night: Night) -> str:
    shown = {b.outcome for b in night.bars} | ({"failed"} if night.unplaced else set())
    items = [f'<span><i class="{name}"></i>{e(text)}</span>' for name, text in OUTCOMES.items()
             if name in shown]
    if any(b.part for b in night.bars):
        items.append('<span><i class="piece"></i>lighter: a slice ("orders 2/4") or a table loaded '
                     'whole, in the lane of the job that loaded it and the colour of its table\'s '
                     'outcome; the table\'s own bar is the step that finished it</span>')
    if any(b.part and b.error for b in night.bars):
        items.append('<span><i class="culprit"></i>the slice or load that failed</span>')
    if any(b.steps for b in night.bars):
        items.append('<span><i class="steps"></i>shades: a bar\'s steps (' + e(", ".join(runlog.STEPS))
                     + '), in that order, each as wide as its seconds; hover one for it</span>')
    if night.stretches:
        items.append('<span><i class="stretch"></i>the run\'s own time outside its tables</span>')
    if any(b.waits for b in night.bars):
        items.append('<span><i class="waited"></i>waited for a database during this table</span>')
    if any(b.retries for b in night.bars):
        items.append('<span>dashed outline: retried</span>')
    if night.renewals:
        items.append('<span><i class="renewal"></i>snapshot renewed</span>')
    return f'<p class="legend">{"".join(items)} Hover a bar for its figures.</p>'


def render_html(lines: list[dict], title: str) -> str:
    """The page for one run's JSON lines (dicts, in the order they were written)."""
    night = read_night(lines)
    t = totals(night)
    started = (dt.datetime.fromtimestamp(night.origin, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
               if night.timed else None)
    summary = (f"{t.tables} table(s): {t.copied} copied, "
               + (f"{t.unchanged} unchanged, " if t.unchanged else "") + f"{t.failed} failed"
               + (f", {t.loaded} loaded, not published" if t.loaded else "")
               + f"; {amount(t.bytes / 1e6)} MB, {count(t.rows)} rows in {duration(t.wall)} "
               f"on {t.jobs} job(s)" + (" and the publish" if t.publish else "")
               + (f"; {t.sliced} cut into slices" if t.sliced else "")
               + (f"; started {started}" if started else ""))
    axis = ("from the first job's start" if night.timed
            else "from the run's start; each job's tables back to back")
    page = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8"/>',
            f"<title>{e(title)}</title>", f"<style>{STYLE}{linked_style(night)}</style>", "</head>",
            "<body>",
            f"<h1>{e(title)}</h1>", f'<p class="summary">{e(summary)}</p>',
            f"<h2>Timeline <small>({e(axis)})</small></h2>", svg(night), legend(night),
            "<h2>Totals</h2>", *totals_table(t), *failures_list(night),
            "<h2>Slowest tables</h2>", *slowest_table(night), *notes_list(night),
            "</body>", "</html>"]
    return "\n".join(page) + "\n"
