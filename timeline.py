"""A picture of the night: the copier's JSON lines as one self-contained HTML page.

    python3 operations.py timeline --html night.html < lines.jsonl   # a local run's stdout
    python3 operations.py report 2026-11-27 --html night.html          # a run on AWS

The page holds an SVG timeline (a lane per job, a bar per table coloured by its outcome, the
run's own work after the tables, a renewed snapshot as a dashed line; hover a bar for its
rows, MB, seconds, MB/s, retries, waits and error), the slowest tables and the run's totals.
Nothing in it is fetched from elsewhere and there is no script: it opens offline.

Where a bar sits. Lines read from CloudWatch Logs carry `@timestamp` (milliseconds since the
epoch, when the line was written; the demo stamps each line as it reads it): the table ended
then and started `seconds` earlier, and the run started `run_finished`'s `seconds` before that
line. The copier's stdout saved to a file carries no clock, but a job copies its tables one
after the other: each bar starts where the job's previous one ended, counted from the run's
start, and the time the run spent outside every table (start-up, a swap of the staged tables
together, foreign key checks) is drawn as one stretch between the last table's end and
`run_finished`.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from dataclasses import dataclass, field

from copier import EVENT_RUN_FINISHED, EVENT_TABLE_COPIED, EVENT_TABLE_FAILED, EVENT_TABLE_STAGED

EVENT_RETRY, EVENT_WAITING, EVENT_SNAPSHOT_RENEWED = "table_retry", "waiting", "snapshot_renewed"
EVENT_SWAP_DEFERRED, EVENT_SESSION_ENDED = "swap_deferred", "session_ended"
NOTE_EVENTS = ("warning", "index_skipped", "statistics_skipped", EVENT_SESSION_ENDED)
# Every event the page uses: what operations.py asks CloudWatch Logs for.
EVENTS = (EVENT_TABLE_COPIED, EVENT_TABLE_FAILED, EVENT_TABLE_STAGED, EVENT_SWAP_DEFERRED,
          EVENT_RUN_FINISHED, EVENT_RETRY, EVENT_WAITING, EVENT_SNAPSHOT_RENEWED, *NOTE_EVENTS)
# A table's end in its job: copied, failed, or staged to be swapped at the end of the run
# (--swap together, or a swap that readers blocked).
TABLE_EVENTS = (EVENT_TABLE_COPIED, EVENT_TABLE_FAILED, EVENT_TABLE_STAGED, EVENT_SWAP_DEFERRED)
LATE_EVENTS = (EVENT_TABLE_STAGED, EVENT_SWAP_DEFERRED)

OUTCOMES = {  # class: what the legend says
    "copied": "copied",
    "failed": "failed (the reporting table kept last night's data)",
    "staged": "staged, then swapped at the end (with the others, or once readers let go)",
    "restaged": "staged, then staged again from a renewed snapshot",
}
SLOWEST = 10


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

    @property
    def end(self) -> float:
        return self.start + self.seconds

    @property
    def ok(self) -> bool:
        return self.outcome == "copied" or (self.outcome == "staged" and self.swapped)

    @property
    def mb(self) -> float | None:
        return self.bytes / 1e6 if self.bytes is not None else None

    @property
    def mb_per_second(self) -> float | None:
        return self.mb / self.seconds if self.mb is not None and self.seconds else None


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
    unplaced: list[dict]  # tables that failed without ever running (a worker died)
    stretches: list[Stretch]
    renewals: list[tuple[float, int]]  # (when, the new snapshot's number)
    finished: list[dict]
    notes: list[str]
    origin: float = 0.0

    @property
    def lanes(self) -> list[str]:
        jobs = sorted({bar.lane for bar in self.bars}, key=natural)
        run = [RUN_LANE] if any(s.lane == RUN_LANE for s in self.stretches) else []
        return jobs + run

    @property
    def end(self) -> float:
        return max([bar.end for bar in self.bars] + [s.end for s in self.stretches] + [self.origin])

    def final(self) -> list[Bar]:
        """Each table's last bar (a table staged twice has two)."""
        last = {bar.table: bar for bar in self.bars}
        return list(last.values())


RUN_LANE = "run"


def natural(lane: str) -> tuple:
    digits = "".join(c for c in lane if c.isdigit())
    return (int(digits) if digits else math.inf, lane)


def lane_name(job) -> str:
    return f"job {job}" if str(job).isdigit() else str(job)


def read_night(lines: list[dict]) -> Night:
    """Bars, stretches and marks from the copier's lines, in the order they were written."""
    table_lines = [line for line in lines if line.get("event") in TABLE_EVENTS]
    if not table_lines:
        raise NoTables("no table_copied, table_failed, table_staged or swap_deferred line "
                       "among them")
    timed = all("@timestamp" in line for line in lines)
    stream_jobs = {line["@stream"]: line["job"] for line in lines
                   if line.get("@stream") and line.get("job") is not None}

    def lane_of(line: dict) -> str:
        job = line["job"] if line.get("job") is not None else stream_jobs.get(line.get("@stream"))
        return lane_name(job) if job is not None else RUN_LANE

    bars: list[Bar] = []
    latest: dict[str, Bar] = {}
    lane_end: dict[str, float] = {}
    round_start = 0.0
    retries: dict[str, list[str]] = {}
    waits: dict[tuple[str, str], dict[str, list[float]]] = {}
    night = Night(timed, bars, [], [], [], [], [])
    for line in lines:
        event, table = line.get("event"), line.get("table")
        now = line["@timestamp"] / 1000 if timed else max(lane_end.values(), default=0.0)
        if event in TABLE_EVENTS and table:
            bar = latest.get(table)
            if event not in LATE_EVENTS and line.get("job") is None and bar is not None \
                    and bar.late:
                # The swap of the staged tables: it went live, or it did not.
                bar.swapped = event == EVENT_TABLE_COPIED
                if event == EVENT_TABLE_FAILED:
                    bar.outcome, bar.error = "failed", line.get("error")
                continue
            if line.get("seconds") is None or lane_of(line) == RUN_LANE:
                night.unplaced.append(line)
                continue
            lane, seconds = lane_of(line), float(line["seconds"])
            if bar is not None:  # staged again: a new round of jobs, after the first
                if bar.outcome == "staged":
                    bar.outcome = "restaged"
                round_start = max(lane_end.values(), default=0.0)
            start = now - seconds if timed else max(lane_end.get(lane, 0.0), round_start)
            bar = Bar(table, lane, "failed" if event == EVENT_TABLE_FAILED else
                      "staged" if event in LATE_EVENTS else "copied",
                      start, seconds, line.get("rows"), line.get("bytes"), line.get("snapshot"),
                      line.get("error"), retries=retries.pop(table, []),
                      waits=waits.pop((lane, table), {}), late=event in LATE_EVENTS,
                      deferred=line.get("reason") if event == EVENT_SWAP_DEFERRED else None)
            lane_end[lane] = bar.end
            latest[table] = bar
            bars.append(bar)
        elif event == EVENT_RETRY and table:
            retries.setdefault(table, []).append(str(line.get("error", "")))
        elif event == EVENT_WAITING and table:
            noted = waits.setdefault((lane_of(line), table), {})
            noted.setdefault(str(line.get("database", "?")), []).append(float(line.get("seconds", 0)))
        elif event == EVENT_SNAPSHOT_RENEWED:
            night.renewals.append((now, line.get("snapshot")))
        elif event in NOTE_EVENTS:
            night.notes.append(note_text(line))
            if event == EVENT_SESSION_ENDED and table in latest:
                latest[table].sessions.append(note_text(line).split(": ", 1)[1])
        elif event == EVENT_RUN_FINISHED:
            night.finished.append(line)
            ended = now if timed else float(line.get("seconds") or 0)
            lane = lane_of(line)
            mine = [b for b in bars if lane == RUN_LANE or b.lane == lane]
            started = ended - float(line.get("seconds") or 0)
            if timed and mine and min(b.start for b in mine) > started:
                night.stretches.append(Stretch(
                    lane, started, min(b.start for b in mine), "start-up",
                    "start-up: the tables resolved and checked, the snapshot exported"))
            last = max((b.end for b in mine), default=started)
            if ended > last:
                night.stretches.append(after_the_tables(lane, last, ended, mine, timed))
    if timed:
        night.origin = min([b.start for b in bars] + [s.start for s in night.stretches])
    return night


def after_the_tables(lane: str, start: float, end: float, bars: list[Bar], timed: bool) -> Stretch:
    deferred = [b for b in bars if b.deferred]
    staged = [b for b in bars if b.late and not b.deferred and b.outcome != "restaged"]
    parts = [] if timed else ["start-up (resolving and checking the tables, exporting the snapshot)"]
    if staged:
        parts.append(f"the swap of {len(staged)} staged table(s) together")
    if deferred:
        parts.append(f"the swaps readers blocked, tried again ({len(deferred)} table(s))")
    parts.append("foreign keys validated again, the locks released")
    label = ("swap together" if staged else "blocked swaps" if deferred
             else "after the tables" if timed else "outside the tables")
    return Stretch(lane, start, end, label, "the run's own time outside its tables: " + ", ".join(parts))


def note_text(line: dict) -> str:
    if line["event"] == "warning":
        return str(line.get("message", ""))
    if line["event"] == EVENT_SESSION_ENDED:
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


def bar_title(bar: Bar, origin: float) -> str:
    lines = [f"{bar.table}: {OUTCOMES[bar.outcome].split(' (')[0]}",
             f"{bar.lane}, {duration(bar.start - origin)} to {duration(bar.end - origin)}"]
    if bar.rows is not None or bar.bytes is not None:
        rate = f": {amount(bar.mb_per_second, 2)} MB/s" if bar.mb_per_second is not None else ""
        lines.append(f"{count(bar.rows)} rows, {amount(bar.mb)} MB in {bar.seconds:.1f} s{rate}")
    else:
        lines.append(f"{bar.seconds:.1f} s")
    if bar.snapshot is not None:
        lines.append(f"snapshot {bar.snapshot}")
    if bar.deferred:
        lines.append(f"swap blocked by readers, tried again after the other tables: {bar.deferred}")
    lines += [f"{session}" for session in bar.sessions]
    if bar.outcome == "staged":
        lines.append("went live in the swap at the end" if bar.swapped
                     else "not swapped (no later line)")
    for error in bar.retries:
        lines.append(f"retried: {error}")
    for database, noted in bar.waits.items():
        lines.append(f"waited for the {database} database: unreachable for {min(noted):.0f} s "
                     f"to {max(noted):.0f} s of its outage while this table waited")
    if bar.error:
        lines.append(f"error: {bar.error}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the SVG

WIDTH, LEFT, RIGHT, AXIS, LANE, BAR = 1000, 110, 24, 34, 30, 20
CHAR = 6.3  # px per character of the 11px bar labels, roughly


def svg(night: Night) -> str:
    lanes = night.lanes
    span = max(night.end - night.origin, 1e-3)
    plot = WIDTH - LEFT - RIGHT
    height = AXIS + LANE * len(lanes) + 8

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
        out.append(f'<g class="lane" data-lane="{e(lane)}">'
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
        classes = " ".join(["bar", bar.outcome] + (["waited"] if bar.waits else [])
                           + (["retried"] if bar.retries else []))
        out.append(f'<g class="{classes}" data-table="{e(bar.table)}"><title>'
                   f'{e(bar_title(bar, night.origin))}</title>'
                   f'<rect x="{left:.1f}" y="{top:.1f}" width="{width:.1f}" height="{BAR}" rx="2"/>')
        if bar.waits:
            out.append(f'<rect class="hatch" x="{left:.1f}" y="{top:.1f}" width="{width:.1f}" '
                       f'height="{BAR}" rx="2" fill="url(#hatch)"/>')
        label = bar.table.removeprefix("public.")
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
.bar.copied > rect { fill: #3d8b57; } .bar.failed > rect { fill: #c8372d; }
.bar.staged > rect { fill: #3f6fb5; } .bar.restaged > rect { fill: #b5b5b5; }
.bar.restaged text { fill: #222; }
.bar > rect.hatch { fill: url(#hatch); stroke: none; }
.bar.retried > rect:first-of-type { stroke: #000; stroke-dasharray: 3 2; stroke-width: 1; }
.stretch rect { fill: #e3a33b; } .stretch:hover rect { stroke: #000; }
.stretch text { fill: #222; font-size: 10px; pointer-events: none; }
.renewal line { stroke: #7a3fb5; stroke-width: 1.5; stroke-dasharray: 4 3; }
.renewal text { fill: #7a3fb5; font-size: 10px; }
.legend { margin: 8px 0 0; color: #444; font-size: 12px; }
.legend span { display: inline-block; margin-right: 16px; }
.legend i { display: inline-block; width: 12px; height: 12px; margin-right: 5px; vertical-align: -2px;
  border-radius: 2px; }
i.copied { background: #3d8b57; } i.failed { background: #c8372d; } i.staged { background: #3f6fb5; }
i.restaged { background: #b5b5b5; } i.stretch { background: #e3a33b; }
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
    failed: int
    rows: int
    bytes: int
    wall: float
    table_seconds: float
    jobs: int
    retries: int
    waited: dict[str, float]
    snapshots: int


def totals(night: Night) -> Totals:
    final = night.final()
    ok = [b for b in final if b.ok]
    failed = {b.table for b in final if b.outcome == "failed"} | {
        line["table"] for line in night.unplaced}
    walls = [float(line["seconds"]) for line in night.finished if line.get("seconds") is not None]
    wall = night.end - night.origin if night.timed or not walls else max(walls)
    waited = {}
    for database in ("source", "target"):
        seconds = sum(float(line.get(f"{database}_waited_seconds") or 0) for line in night.finished)
        if seconds:
            waited[database] = seconds
    snapshots = max([int(line.get("snapshots") or 1) for line in night.finished]
                    + [(s or 1) for _, s in night.renewals] + [1])
    return Totals(len({b.table for b in final} | failed), len(ok), len(failed),
                  sum(b.rows or 0 for b in ok), sum(b.bytes or 0 for b in ok), wall,
                  sum(b.seconds for b in night.bars), len([lane for lane in night.lanes
                                                           if lane != RUN_LANE]),
                  sum(len(b.retries) for b in night.bars), waited, snapshots)


def totals_table(t: Totals) -> list[str]:
    rows = [("tables", count(t.tables)), ("copied", count(t.copied)), ("failed", count(t.failed)),
            ("rows copied", count(t.rows)), ("MB copied", amount(t.bytes / 1e6)),
            ("wall time", duration(t.wall)),
            ("MB/s over the wall time", amount(t.bytes / 1e6 / t.wall, 2) if t.wall else "-"),
            ("jobs", count(t.jobs)), ("seconds in tables, all jobs", amount(t.table_seconds)),
            ("retries", count(t.retries))]
    rows += [(f"seconds waited for the {db} database", amount(s)) for db, s in t.waited.items()]
    if t.snapshots > 1:
        rows.append(("snapshots read from", count(t.snapshots)))
    return (['<table class="totals">']
            + [f'<tr><th>{e(name)}</th><td class="n" data-total="{e(name)}">{e(value)}</td></tr>'
               for name, value in rows] + ["</table>"])


def slowest_table(night: Night) -> list[str]:
    final = sorted(night.final(), key=lambda b: (-b.seconds, b.table))[:SLOWEST]
    out = ['<table class="slowest"><tr><th>table</th><th>job</th><th>outcome</th>'
           '<th class="n">rows</th><th class="n">MB</th><th class="n">seconds</th>'
           '<th class="n">MB/s</th></tr>']
    for b in final:
        outcome = "copied" if b.ok else b.outcome
        out.append(f'<tr><td>{e(b.table)}</td><td>{e(b.lane)}</td>'
                   f'<td class="{e(outcome)}">{e(outcome)}</td><td class="n">{count(b.rows)}</td>'
                   f'<td class="n">{amount(b.mb)}</td><td class="n">{b.seconds:.1f}</td>'
                   f'<td class="n">{amount(b.mb_per_second, 2)}</td></tr>')
    out.append("</table>")
    return out


def failures_list(night: Night) -> list[str]:
    failed = [(b.table, b.lane, b.error) for b in night.final() if b.outcome == "failed"]
    failed += [(line["table"], "-", line.get("error")) for line in night.unplaced]
    if not failed:
        return []
    return (["<h2>Failed tables</h2>", '<table class="failures">']
            + [f'<tr><td>{e(table)}</td><td>{e(lane)}</td><td class="error">{e(error or "")}</td></tr>'
               for table, lane, error in failed] + ["</table>"])


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
    summary = (f"{t.tables} table(s): {t.copied} copied, {t.failed} failed; "
               f"{amount(t.bytes / 1e6)} MB, {count(t.rows)} rows in {duration(t.wall)} "
               f"on {t.jobs} job(s)" + (f"; started {started}" if started else ""))
    axis = ("from the first job's start" if night.timed
            else "from the run's start; each job's tables back to back")
    page = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8"/>',
            f"<title>{e(title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
            f"<h1>{e(title)}</h1>", f'<p class="summary">{e(summary)}</p>',
            f"<h2>Timeline <small>({e(axis)})</small></h2>", svg(night), legend(night),
            "<h2>Totals</h2>", *totals_table(t), *failures_list(night),
            "<h2>Slowest tables</h2>", *slowest_table(night), *notes_list(night),
            "</body>", "</html>"]
    return "\n".join(page) + "\n"
