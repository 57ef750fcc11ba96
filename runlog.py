"""What copier.py and the code around it agree on: where the copier's settings live, how a run's
units are written (``orders``, ``sales."Mixed Case"``, ``events#2/4``) and planned onto jobs, and
the JSON lines a run writes.

Standard library only: the Slack Lambda ships it in its zip, and setup_aws.py, operations.py,
timeline.py and bench/ import it without loading psycopg2 or copier.py.

Sections, in order:
  Settings   the copier's connection settings in Parameter Store
  Errors     the errors of this module, shared with copier.py
  Units      the table list's grammar: parse and write a name, a slice (name#k/n)
  The plan   units onto jobs, largest first; big tables cut into slices; a unit's weight
  Events     every JSON line's event and fields (docs/ is generated from EVENTS)
  Reading    a run's lines: the job of a line, each table's outcome (the Slack summary,
             operations.py's report and rebalance, the timeline page), durations and sizes
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

# ---------------------------------------------------------------------------------------------
# Settings: where the copier reads its connections from, and setup_aws.py writes them.

DEFAULT_SSM_PREFIX = "/nightly-copy/"  # <prefix><database>/<setting>
DATABASES = ("source", "target")
# setting -> default; None means the parameter is required.
CONNECTION_SETTINGS = {
    "host": None,
    "port": "5432",
    "dbname": None,
    "user": None,
    "password": None,
    "sslmode": "require",
    # The CA file that sslmode verify-ca / verify-full checks the server's certificate against;
    # "default" leaves it to libpq (~/.postgresql/root.crt). setup_aws.py sets verify-full and
    # the RDS CA bundle for RDS and Aurora hosts (docs/aws.md, "TLS").
    "sslrootcert": "default",
}
SECRET_SETTINGS = frozenset({"password"})
# The oldest PostgreSQL major the copier accepts on either side (the catalogs it reads:
# pg_trigger.tgparentid, pg_statistic_ext.stxstattarget); the tests' version tier starts there.
OLDEST_MAJOR = 13
# The column and row rules (rules.py) and the salt of their hashes (a SecureString), under the
# prefix too: <prefix>rules, <prefix>hash_salt.
RULES_PARAMETER = "rules"
HASH_SALT_PARAMETER = "hash_salt"
# Beside the connection settings, setup_aws.py writes where the reporting database's free
# storage can be read (<prefix>target/storage): "rds:<DBInstanceIdentifier>" (the instance's
# FreeStorageSpace metric; the job's role may read it), "aurora" (its storage grows on its
# own: nothing to check) or "unknown" (not an RDS endpoint of the account: not checked).
STORAGE_SETTING = "target/storage"
STORAGE_RDS, STORAGE_AURORA, STORAGE_UNKNOWN = "rds:", "aurora", "unknown"
# ... and, in the CodeBuild project's environment, the concurrent-build quota the load jobs
# run under, as text ("1 concurrent build for BUILD_GENERAL1_SMALL (Service Quotas: ...)"):
# a load job that starts too late to join the run's snapshot names it in its failure line.
BUILD_QUOTA_VARIABLE = "COPIER_BUILD_QUOTA"


# ---------------------------------------------------------------------------------------------
# Errors


class CopierError(Exception):
    """A failure explained to the user in one line."""


class TableListError(CopierError):
    """The TABLES list names something that cannot be copied."""


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# ---------------------------------------------------------------------------------------------
# Units: a table (schema.table, quoted where needed) or a slice of one (events#2/4).

Slice = tuple[int, int]  # (k, n): the k-th of n key ranges of a table, 1-based
Parts = list[tuple[str, bool]]  # a name's parts (schema, table), each with whether it was quoted


def display_ident(name: str) -> str:
    """A name part as users write it: quoted only where SQL would need it."""
    plain = name.replace("_", "a").isalnum() and name == name.lower() and not name[0].isdigit()
    return name if plain else '"' + name.replace('"', '""') + '"'


def qualified(schema: str, name: str) -> str:
    """schema.table as the copier's lines write it."""
    return f"{display_ident(schema)}.{display_ident(name)}"


def unit_name(table: str, part: Slice | None) -> str:
    """A unit as lines and TABLES write it: the table's name, with #k/n for a slice."""
    return f"{table}#{part[0]}/{part[1]}" if part else table


def split_table_list(text: str) -> list[Parts]:
    """'a, s.b, "Mixed, Case"' -> [[("a", False)], [("s", False), ("b", False)], ...]."""
    units = split_units(text)
    for parts, part in units:
        if part is not None:
            raise TableListError(f"malformed TABLES value {text!r}: a slice ({unit_text(parts, part)}) "
                                 f"where only table names are expected")
    return [parts for parts, _ in units]


def split_units(text: str) -> list[tuple[Parts, Slice | None]]:
    """Like split_table_list, where a name may end in #k/n: slice k of n ('events#2/4').

    '#' cannot occur in an unquoted name, and comes after the closing quote of a quoted one.
    """
    return [(parts, part) for parts, part, _ in scan_units(text)]


def unit_texts(text: str) -> list[str]:
    """A TABLES value back into the units it was joined from, each as it was written:
    'a,s."B, c"#2/4' -> ['a', 's."B, c"#2/4']."""
    return [written for _, _, written in scan_units(text)]


def split_unit(unit: str) -> tuple[str, Slice | None]:
    """One unit back into its table, as written, and its slice (unit_name's inverse):
    'public.events#2/4' -> ('public.events', (2, 4)); a whole table -> (its name, None)."""
    units = scan_units(unit)
    if len(units) != 1:
        raise TableListError(f"malformed unit {unit!r}: {len(units)} names where one is expected")
    _, part, written = units[0]
    return (written.rpartition("#")[0].rstrip() if part else written), part


def scan_units(text: str) -> list[tuple[Parts, Slice | None, str]]:
    """Each unit of a TABLES value: its parts, its slice, and its own text."""
    names: list[tuple[Parts, Slice | None, str]] = []
    parts: Parts = []
    current, quoted, in_quotes, suffix, i, start = "", False, False, None, 0, 0

    def end_part() -> None:
        nonlocal current, quoted
        value = current if quoted else current.strip()
        if not value:
            raise TableListError(f"malformed TABLES value {text!r}: an empty name")
        parts.append((value, quoted))
        current, quoted = "", False

    def end_name() -> None:
        nonlocal parts, suffix, start
        end_part()
        names.append((parts, parse_slice(text, suffix) if suffix is not None else None,
                      text[start:i].strip()))
        parts, suffix, start = [], None, i + 1

    while i < len(text):
        ch = text[i]
        if suffix is not None and ch != ",":
            suffix += ch
        elif in_quotes:
            if ch == '"' and text[i + 1:i + 2] == '"':
                current += '"'
                i += 1
            elif ch == '"':
                in_quotes = False
            else:
                current += ch
        elif ch == '"':
            if current.strip():
                raise TableListError(f"malformed TABLES value {text!r}: stray quote")
            current, quoted, in_quotes = "", True, True
        elif ch == ".":
            end_part()
        elif ch == ",":
            end_name()
        elif ch == "#":
            suffix = ""
        elif quoted and not ch.isspace():
            raise TableListError(f"malformed TABLES value {text!r}: text after a quoted name")
        else:
            current += ch
        i += 1
    if in_quotes:
        raise TableListError(f"malformed TABLES value {text!r}: unclosed quote")
    end_name()
    for name, _, _ in names:
        if len(name) > 2:
            written = ".".join(part for part, _ in name)
            raise TableListError(f"malformed table name {written!r}: at most schema.table")
    return names


def parse_slice(text: str, suffix: str) -> Slice:
    match = re.fullmatch(r"\s*(\d+)/(\d+)\s*", suffix)
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise TableListError(f"malformed TABLES value {text!r}: {'#' + suffix.strip()!r} is not a "
                             f"slice (#k/n, 1 <= k <= n)")
    return int(match.group(1)), int(match.group(2))


def unit_text(parts: Parts, part: Slice | None) -> str:
    """A parsed unit written back: quoted parts quoted again, a slice with its #k/n."""
    return unit_name(".".join(display_ident(p) if q else p for p, q in parts), part)


# ---------------------------------------------------------------------------------------------
# The plan: which unit on which job. The same functions plan a local --jobs run (and its
# --dry-run), setup's split of the nightly run and a rebalance from measured times: only the
# weights differ (bytes or seconds).

MAX_SLICES = 64


def assign_to_jobs(weights: dict[str, float], jobs: int) -> list[list[str]]:
    """Split units over jobs, largest first onto the least-loaded job."""
    if jobs < 1:
        raise ValueError("jobs must be at least 1")
    loads = [0.0] * jobs
    assignment: list[list[str]] = [[] for _ in range(jobs)]
    for name in sorted(weights, key=lambda n: (-weights[n], n)):
        lightest = min(range(jobs), key=lambda j: (loads[j], j))
        assignment[lightest].append(name)
        loads[lightest] += weights[name]
    return assignment


def slice_counts(weights: dict[str, float], jobs: int, sliceable: Iterable[str] = (),
                 split_larger_than: float | None = None) -> dict[str, int]:
    """How many slices each table is cut into: a sliceable table heavier than a job's mean
    load (or than split_larger_than, in the weights' unit) would keep one job busy while the
    others idle, so it becomes slices of at most half a mean job's load each."""
    if jobs < 1:
        raise ValueError("jobs must be at least 1")
    mean = sum(weights.values()) / jobs
    threshold = mean if split_larger_than is None else split_larger_than
    sliceable = set(sliceable)
    return {name: slice_count(weight, mean, threshold) if name in sliceable else 1
            for name, weight in weights.items()}


def slice_count(weight: float, mean: float, threshold: float) -> int:
    if weight <= 0 or weight <= threshold:
        return 1
    return max(2, min(MAX_SLICES, math.ceil(weight / max(mean / 2, 1e-9))))


def plan_units(weights: dict[str, float], jobs: int, sliceable: Iterable[str] = (),
               split_larger_than: float | None = None) -> list[list[str]]:
    """Split tables over jobs as assign_to_jobs does, a big table first cut into slices
    ('name#k/n', see slice_counts)."""
    units: dict[str, float] = {}
    for name, count in slice_counts(weights, jobs, sliceable, split_larger_than).items():
        if count == 1:
            units[name] = weights[name]
        for k in range(1, count + 1) if count > 1 else ():
            units[unit_name(name, (k, count))] = weights[name] / count
    return assign_to_jobs(units, jobs)


def unit_weight(unit: str, weights: dict[str, float]) -> float:
    """A unit's weight: its own when it has one (a slice measured alone), else its share of
    its table's: a slice of n weighs 1/n of it."""
    if unit in weights:
        return weights[unit]
    table, part = split_unit(unit)
    return weights[table] / part[1] if part else weights[table]


# ---------------------------------------------------------------------------------------------
# Events: one JSON object a line on the copier's stdout. Every line has "event"; on AWS also
# "run" (COPIER_RUN) and, where it names one, "job" (COPIER_JOB). EVENTS is the catalogue:
# docs/ is generated from it, and a test checks every line the copier writes against it.


class Event(str):
    """An event: its name (an Event is that string, so a line's "event" compares equal to it),
    what it means, and its fields."""

    meaning: str
    fields: dict[str, str]

    def __new__(cls, name: str, meaning: str, fields: dict[str, str]) -> Event:
        event = super().__new__(cls, name)
        event.meaning, event.fields = meaning, fields
        return event

    def __getnewargs__(self) -> tuple[str, str, dict[str, str]]:
        return self.name, self.meaning, self.fields

    @property
    def name(self) -> str:
        return str.__str__(self)


# Fields several events share.
UNIT = {"slice": "the slice, k/n, when the unit is one key range of the table",
        "phase": "load or publish, in a run split over machines"}
MEASURED = {"rows": "rows loaded", "bytes": "bytes of the COPY stream", "seconds": "wall time",
            "snapshot": "which of the run's snapshots it was read from (1, then 2 after a renewal)"}
TABLE = {"table": "schema.table, quoted where SQL would need it",
         "job": "the job: 1..N in a local run, COPIER_JOB on AWS (job-2, publish)"}

# Where a unit's time went: the seconds of each step, in the order they run (a "steps" object
# on the lines that end a unit; the summary, the report and the timeline show them).
STEPS = {
    "wait": "waiting for an unreachable database",
    "stage": "checking the reporting side, making the types and the empty staging table",
    "load": "reading the source and writing the staging table (or, for a table looked at "
            "first, proving it unchanged from its row versions, or reading and hashing it)",
    "index": "keys, indexes, statistics settings and sequences on the loaded table",
    "verify": "comparing row counts; for an unchanged table, its fingerprint and the reporting table",
    "analyze": "ANALYZE of the new table",
    "lock": "waiting for the swap's locks (readers in the way)",
    "swap": "the swap itself: the old table dropped, the new one renamed, views, materialized "
            "views and the reporting side made again",
}
# A table swapped at the end of the run (LATE: --swap together, or readers in the way) ends with
# a line without "job" whose steps are its whole: what its staged line said, plus the lock and
# the swap at the end.
TIMED = {"steps": "seconds by step: " + ", ".join(STEPS)}

TABLE_COPIED = Event("table_copied", "the table is live with tonight's rows",
                     {**TABLE, **MEASURED, **UNIT, **TIMED, "slices": "how many slices it was loaded in"})
TABLE_UNCHANGED = Event("table_unchanged", "the source's rows are what the reporting table already "
                        "holds: nothing was written, nothing locked",
                        {**TABLE, **MEASURED, **UNIT, **TIMED, "slices": "how many slices it was loaded in",
                         "found": "'before reading' (proved unchanged on the source from its row "
                                  "versions, not read), 'before loading' (read and hashed first, "
                                  "where it cannot be proved) "
                                  "or 'after loading' (its staging dropped before any index)"})
TABLE_FAILED = Event("table_failed", "the table keeps last night's rows",
                     {**TABLE, "table": TABLE["table"] + " (a unit no job reported: its unit name, "
                                        "schema.table#k/n)",
                      **UNIT, **TIMED, "error": "why, in one line", "seconds": "wall time",
                      "attempts": "tries, retries included"})
TABLE_STAGED = Event("table_staged", "staged, to be swapped with the others at the end "
                     "(--swap together, or tied by a partitioned table's foreign key)",
                     {**TABLE, **MEASURED, **UNIT, **TIMED, "slices": "how many slices it was loaded in"})
TABLE_LOADED = Event("table_loaded", "--phase load: the whole table is staged for the publish",
                     {**TABLE, **MEASURED, **UNIT, **TIMED})
SLICE_LOADED = Event("slice_loaded", "one key range of a table is loaded into its staging table",
                     {**TABLE, **MEASURED, **UNIT, **TIMED})
TABLE_RETRY = Event("table_retry", "a try failed on a lost connection or snapshot; the table is "
                    "tried again", {"table": "the unit: schema.table, #k/n for a slice",
                                    "attempt": "the try that failed (1..)",
                                    "error": "why", "wait_seconds": "the pause before the next try"})
TABLE_PROGRESS = Event("table_progress", "a long table's load, every --progress-seconds",
                       {"table": TABLE["table"], "bytes": "bytes so far", "seconds": "since the load began",
                        "mb_per_s": "MB a second so far"})
SWAP_DEFERRED = Event("swap_deferred", "readers held the table through --lock-retries: it stays "
                      "staged and is swapped after the other tables",
                      {**TABLE, **MEASURED, **UNIT, **TIMED, "reason": "who held it",
                       "slices": "how many slices it was loaded in"})
SESSION_ENDED = Event("session_ended", "a session in the way of a swap was ended (--no-kill-readers "
                      "only waits)", {"table": TABLE["table"], "pid": "its process", "user": "its role",
                                      "application": "its application_name", "state": "its state",
                                      "seconds_in_state": "for how long", "query": "its query's first line",
                                      "action": "cancelled the query of, or terminated"})
INDEX_SKIPPED = Event("index_skipped", "an index or key added on the reporting side no longer fits "
                      "the new shape: left out", {"table": TABLE["table"], "index": "its name",
                                                  "error": "why"})
STATISTICS_SKIPPED = Event("statistics_skipped", "a CREATE STATISTICS object added on the reporting "
                           "side no longer fits: left out", {"table": TABLE["table"],
                                                              "statistics": "its name", "error": "why"})
WAITING = Event("waiting", "a database is unreachable: the job waits, within --outage-budget (every 10 s)",
                {"database": "source or target", "seconds": "unreachable for", "budget": "--outage-budget",
                 "error": "the connection's error", "job": TABLE["job"], "table": TABLE["table"]})
SNAPSHOT_RENEWED = Event("snapshot_renewed", "the run's snapshot was lost: tables read from now on come "
                         "from a new one",
                         {"snapshot": "the new snapshot's number", "message": "what happened"})
SNAPSHOT_SHARED = Event("snapshot_shared", "--phase load, the first job: it exports the run's snapshot",
                        {"job": TABLE["job"], "jobs": "load jobs that will import it"})
SNAPSHOT_IMPORTED = Event("snapshot_imported", "--phase load, another job: it imported the run's snapshot",
                          {"job": TABLE["job"]})
SNAPSHOT_RELEASED = Event("snapshot_released", "--phase load, the first job: it let go of the snapshot",
                          {"job": TABLE["job"], "imported": "jobs that imported it", "jobs": "load jobs"})
WARNING = Event("warning", "something worth a look that failed nothing (also on stderr)",
                {"message": "what, and what to do about it", "table": TABLE["table"],
                 "error": "the underlying error"})
PLAN = Event("plan", "--dry-run --json: what the run would do, and nothing else is written",
             {"phase": UNIT["phase"], "swap": "table, together or none (the load phase)",
              "jobs": "how many jobs", "units": "each unit: unit, table, job, bytes, estimated_rows, slice",
              "refused": "the tables the reporting side (or their rules) would refuse tonight: table, error",
              "rules": "each table's rules: table, strict, where, columns (name: action)"})
RUN_FINISHED = Event("run_finished", "the run's last line",
                     {"tables": "results (units in a load job)", "failed": "how many failed",
                      "seconds": "the run's wall time", "waited_seconds": "waited for unreachable databases",
                      "source_waited_seconds": "of which the source", "target_waited_seconds": "the target",
                      "snapshots": "snapshots the run read from", "phase": UNIT["phase"],
                      "unchanged": "tables found unchanged (not written)", **TIMED,
                      "room": "the reporting database's free storage against the most the night "
                              "stages at once, or why it was not checked"})

EVENTS = {event.name: event for event in (
    TABLE_COPIED, TABLE_UNCHANGED, TABLE_FAILED, TABLE_STAGED, TABLE_LOADED, SLICE_LOADED, TABLE_RETRY,
    TABLE_PROGRESS, SWAP_DEFERRED, SESSION_ENDED, INDEX_SKIPPED, STATISTICS_SKIPPED, WAITING,
    SNAPSHOT_RENEWED, SNAPSHOT_SHARED, SNAPSHOT_IMPORTED, SNAPSHOT_RELEASED, WARNING, PLAN, RUN_FINISHED)}
# Fields any line may carry: set from the environment on AWS.
COMMON_FIELDS = {"event": "the event's name", "run": "the run's name (COPIER_RUN)"}


# ---------------------------------------------------------------------------------------------
# Reading a run: the job of a line, and each table's outcome. Lines read from CloudWatch Logs
# also carry "@stream", their log stream (on AWS each job's copier writes one of its own),
# and "@timestamp" (milliseconds since the epoch, when it was written).

STREAM = "@stream"
# A table's last word in a job: copied, found unchanged (not written), failed, or staged to be
# swapped at the end of the run (--swap together, or a swap that readers blocked).
FINISHING = (TABLE_COPIED, TABLE_UNCHANGED, TABLE_FAILED, TABLE_STAGED, SWAP_DEFERRED)
LATE = (TABLE_STAGED, SWAP_DEFERRED)
# What a finishing line says of its table: a staged one's is only known at the end of the run.
OUTCOME_OF = {TABLE_COPIED: "copied", TABLE_UNCHANGED: "unchanged", TABLE_FAILED: "failed",
              TABLE_STAGED: "staged", SWAP_DEFERRED: "staged"}
# The outcomes that went fine: the reporting table holds tonight's rows.
SUCCEEDED = ("copied", "unchanged")
# A piece of a table, loaded for the step that finishes it: a slice, or (--phase load) the
# whole table. A table_failed line with a slice, or in --phase load, is a piece that failed.
PIECES = (SLICE_LOADED, TABLE_LOADED)
TABLE_EVENTS = FINISHING + PIECES  # what a table's outcome is read from


def job_name(job: object) -> str:
    """A job as reports name it: by its COPIER_JOB on AWS ('job-2', 'publish'), 'job 2' for the
    second worker of a local run (numbered)."""
    return f"job {job}" if str(job).isdigit() else str(job)


def job_order(job: str) -> tuple[float, str]:
    """Sorts jobs by their number: job-2 before job-10; those without one (publish) last."""
    digits = "".join(c for c in job if c.isdigit())
    return (int(digits) if digits else math.inf, job)


def stream_jobs(lines: Iterable[dict]) -> dict[str, str]:
    """Each log stream's job, as the lines in it that name one say."""
    return {line[STREAM]: job_name(line["job"]) for line in lines
            if line.get(STREAM) and line.get("job") is not None}


def job_of(line: dict, streams: dict[str, str]) -> str | None:
    """The job a line belongs to: its own "job", else its log stream's (stream_jobs). The lines
    without a job (run_finished, the swap of the staged tables at the end) are written by the
    job's own process; None for a local run's, which has no streams."""
    if line.get("job") is not None:
        return job_name(line["job"])
    return streams.get(line.get(STREAM))


@dataclass
class Failure:
    """A table_failed line: in which job (and slice) the table failed, and why."""

    job: str | None
    error: str
    slice: str | None = None  # "2/4": the slice that failed

    @property
    def where(self) -> str | None:
        """'slice 2/4, job-3', 'publish', 'job-2'; None when no line names its job."""
        if self.slice:
            return f"slice {self.slice}" + (f", {self.job}" if self.job else "")
        return self.job


@dataclass
class TableOutcome:
    """One table in a run. Copied whole by one job, or loaded in pieces (its slices, or the
    whole table in a split run's load job) and then finished by one step (indexes, checks,
    the swap: the publish, in a split run)."""

    table: str
    # copied; unchanged (the source's rows are what the reporting table holds: not written);
    # failed; staged (no line says it went live yet); loaded (no line yet of the step that
    # finishes it). `ok` is copied or unchanged: it went fine.
    outcome: str = "loaded"
    job: str | None = None  # the job of the step that finished it
    load_jobs: list[str] = field(default_factory=list)  # the jobs that loaded its pieces
    rows: int | None = None
    bytes: int | None = None
    seconds: float | None = None  # its longest piece's (they load side by side) and its finish's
    load_seconds: float | None = None  # its longest piece's
    publish_seconds: float | None = None  # its finish's, when a split run's publish copied it
    slices: int | None = None
    slice_seconds: dict[str, float] = field(default_factory=dict)  # "2/4": that slice's load
    failures: list[Failure] = field(default_factory=list)  # in the order they were logged
    # Seconds by step (STEPS order), counted as `seconds` is: its longest piece's steps and its
    # finish's, added step by step (the pieces load side by side: their steps are not added
    # up). A table swapped at the end of the run takes its finish's from that swap's line,
    # which goes on from its staged line's steps with the swap's lock and swap (`seconds`, the
    # staged line's, leaves those out).
    steps: dict[str, float] = field(default_factory=dict)
    found: str | None = None  # unchanged: 'before reading', 'before loading' or 'after loading'

    @property
    def copied(self) -> bool:
        """Written: the reporting table has tonight's rows from this run's load."""
        return self.outcome == "copied"

    @property
    def ok(self) -> bool:
        """Went fine: copied, or found unchanged (its rows are tonight's without a write)."""
        return self.outcome in SUCCEEDED

    @property
    def error(self) -> str | None:
        """Why it failed: its first failure's error."""
        return self.failures[0].error if self.outcome == "failed" and self.failures else None

    @property
    def where(self) -> str | None:
        """Where it failed first: a slice and its job, the publish, a job."""
        return self.failures[0].where if self.outcome == "failed" and self.failures else None

    @property
    def loaded_by(self) -> list[str]:
        """The jobs that loaded it: its pieces', else the job that copied it whole."""
        return self.load_jobs or ([self.job] if self.job else [])

    @property
    def jobs(self) -> list[str]:
        """Every job that worked on it: its pieces', then its finish's."""
        return list(dict.fromkeys(self.load_jobs + ([self.job] if self.job else [])))

    @property
    def mb(self) -> float | None:
        return self.bytes / 1e6 if self.bytes is not None else None

    @property
    def mb_per_second(self) -> float | None:
        return self.bytes / 1e6 / self.seconds if self.bytes is not None and self.seconds else None

    def figures(self) -> str:
        """'4 slices, 12.3 GB, load 5m 12s (longest slice), publish 1m 02s'."""
        parts = [f"{self.slices} slices"] if self.slices else []
        if self.bytes is not None:
            parts.append(format_bytes(self.bytes))
        if self.load_seconds is not None:
            parts.append(f"load {format_duration(self.load_seconds)}"
                         + (" (longest slice)" if self.slices else ""))
        if self.publish_seconds is not None:
            parts.append(f"publish {format_duration(self.publish_seconds)}")
        return ", ".join(parts)


def table_outcomes(lines: Iterable[dict]) -> list[TableOutcome]:
    """Each table's outcome in a run, in the order the tables were first logged, from the run's
    lines in the order they were written (other events are passed over)."""
    lines = list(lines)
    streams = stream_jobs(lines)
    by_table: dict[str, list[tuple[dict, str | None, str | None]]] = {}
    for line in lines:
        if line.get("event") in TABLE_EVENTS and line.get("table"):
            table, part = line_unit(line)
            by_table.setdefault(table, []).append((line, part, job_of(line, streams)))
    return [table_outcome(table, its_lines) for table, its_lines in by_table.items()]


def line_unit(line: dict) -> tuple[str, str | None]:
    """The table a line is about, and its slice ('2/4'): a line names the slice in its own
    field, or a load job the unit it never got to ('public.events#2/4')."""
    table, part = read_unit(str(line["table"]))
    return table, line.get("slice") or (f"{part[0]}/{part[1]}" if part else None)


def read_unit(unit: str) -> tuple[str, Slice | None]:
    """split_unit, for reading what others wrote: a name outside the grammar is taken whole."""
    try:
        return split_unit(unit)
    except TableListError:
        return unit, None


def table_outcome(table: str, lines: list[tuple[dict, str | None, str | None]]) -> TableOutcome:
    """One table's outcome from its lines (each with its slice and its job), oldest first: its
    last finishing line decides, with the pieces loaded for it; a piece loaded again (from a
    renewed snapshot) starts a new round. A staged table goes live, or fails, in the swap at
    the end of its job's run: a line without a job."""
    result = TableOutcome(table)
    finish: dict | None = None  # its last finishing line
    swapped: bool | None = None  # staged: whether the swap at the end put it live
    end_swap: dict = {}  # staged: the line of that swap
    pieces: dict[str, tuple[dict, str | None]] = {}  # this round's, by slice ("": the whole table)
    finished: dict[str, tuple[dict, str | None]] = {}  # the round its finishing line finished
    for line, part, job in lines:
        event = line["event"]
        piece = event in PIECES or (event == TABLE_FAILED and bool(part or line.get("phase") == "load"))
        swap = (not piece and event in (TABLE_COPIED, TABLE_FAILED) and line.get("job") is None
                and finish is not None and finish["event"] in LATE)
        if swap:
            job = job or result.job  # a local run's: the job that staged it
        if event == TABLE_FAILED:
            result.failures.append(Failure(job, str(line.get("error") or "no error logged"), part))
        if piece:
            if (part or "") in pieces:  # loaded again: a new round
                pieces = {}
            pieces[part or ""] = (line, job)
        elif swap:
            swapped, end_swap = event == TABLE_COPIED, line
        else:
            finish, result.job, finished, pieces, swapped, end_swap = line, job, pieces, {}, None, {}
    if finish is None:
        result.outcome = "failed" if result.failures else "loaded"
    elif swapped is not None:
        result.outcome = "copied" if swapped else "failed"
    else:
        result.outcome = OUTCOME_OF[finish["event"]]
    measure(result, finish or {}, finished if finish else pieces, end_swap)
    return result


def measure(outcome: TableOutcome, finish: dict, pieces: dict[str, tuple[dict, str | None]],
            end_swap: dict) -> None:
    """Rows, bytes, seconds and slices: the finishing line's; the pieces' where it has none.
    Steps: the longest piece's and the finish's (the swap's at the end, which has the staged
    line's in it, when it says)."""
    loaded = [line for line, _ in pieces.values()]
    outcome.load_jobs = sorted({job for _, job in pieces.values() if job}, key=job_order)
    longest = max(loaded, key=lambda line: number(line.get("seconds")) or 0.0, default={})
    outcome.load_seconds = (number(longest.get("seconds")) or 0.0) if loaded else None
    outcome.slice_seconds = {part: number(line.get("seconds")) or 0.0 for part, (line, _) in pieces.items()
                             if line["event"] == SLICE_LOADED}
    finished = number(finish.get("seconds"))
    outcome.seconds = finished if outcome.load_seconds is None else outcome.load_seconds + (finished or 0.0)
    if finish.get("phase") == "publish" and outcome.ok:
        outcome.publish_seconds = finished
    outcome.steps = steps_of(longest, end_swap if steps_of(end_swap) else finish)
    if finish.get("event") == TABLE_UNCHANGED:
        outcome.found = str(finish.get("found") or "") or None
    for name in ("rows", "bytes"):
        values = [number(line.get(name)) for line in loaded]
        own = number(finish.get(name))
        setattr(outcome, name, own if own is not None or not values or None in values else sum(values))
    parts = [part for part in pieces if part]
    slices = number(finish.get("slices")) or (int(parts[0].split("/")[1]) if parts else None)
    outcome.slices = int(slices) if slices and slices > 1 else None


def number(value: object) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def steps_of(*lines: dict) -> dict[str, float]:
    """A line's seconds by step, or those of lines that ran one after the other, added."""
    return added_steps(*(line.get("steps") for line in lines))


def added_steps(*steps: object) -> dict[str, float]:
    """Seconds by step added step by step, in STEPS order (a step the catalogue does not know
    yet after them); what is not a number is passed over."""
    total: dict[str, float] = {}
    for each in steps:
        for name, seconds in each.items() if isinstance(each, dict) else ():
            if number(seconds) is not None:
                total[str(name)] = total.get(str(name), 0.0) + seconds
    known = [name for name in STEPS if name in total] + [name for name in total if name not in STEPS]
    return {name: round(total[name], 3) for name in known}


def format_steps(steps: dict[str, float]) -> str:
    """'load 41.2s · index 12.0s · analyze 3.1s · swap 0.4s': where a unit's time went."""
    return " · ".join(f"{name} {step_seconds(seconds)}" for name, seconds in steps.items())


def step_seconds(seconds: float) -> str:
    """41.2s, 0.04s (a short step keeps its hundredths), 5m 12s."""
    if seconds >= 60:
        return format_duration(seconds)
    return f"{seconds:.1f}s" if seconds >= 0.1 else f"{seconds:.2f}s"


def format_bytes(count: float) -> str:
    """12.3 GB, 45.6 MB, 789 kB (decimal units, as the copier's MB)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count / 1e3:.0f} kB"


def format_duration(seconds: float | None) -> str:
    """1h 02m 03s, 5m 03s, 45s."""
    if seconds is None or seconds < 0:
        return "duration unknown"
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"
