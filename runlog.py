"""What copier.py and the code around it agree on: where the copier's settings live, how a run's
units are written (``orders``, ``sales."Mixed Case"``, ``events#2/4``) and planned onto jobs, and
the JSON lines a run writes.

Standard library only: the Slack Lambda ships it in its zip, and setup_aws.py, operations.py,
timeline.py and bench/ import it without loading psycopg2 or copier.py.

Sections, in order:
  Settings   the copier's connection settings in Parameter Store
  Errors     the errors of this module, shared with copier.py
  Units      the table list's grammar: parse and write a name, a slice (name#k/n)
  The plan   units onto jobs, largest first; big tables cut into slices
  Events     every JSON line's event and fields (docs/ is generated from EVENTS)
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

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
    names: list[tuple[Parts, Slice | None]] = []
    parts: Parts = []
    current, quoted, in_quotes, suffix, i = "", False, False, None, 0

    def end_part() -> None:
        nonlocal current, quoted
        value = current if quoted else current.strip()
        if not value:
            raise TableListError(f"malformed TABLES value {text!r}: an empty name")
        parts.append((value, quoted))
        current, quoted = "", False

    def end_name() -> None:
        nonlocal parts, suffix
        end_part()
        names.append((parts, parse_slice(text, suffix) if suffix is not None else None))
        parts, suffix = [], None

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
    for name, _ in names:
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


# ---------------------------------------------------------------------------------------------
# Events: one JSON object a line on the copier's stdout. Every line has "event"; on AWS also
# "run" (COPIER_RUN) and, where it names one, "job" (COPIER_JOB). EVENTS is the catalogue:
# docs/ is generated from it, and a test checks every line the copier writes against it.


@dataclass(frozen=True)
class Event:
    name: str
    meaning: str
    fields: dict[str, str]

    def __str__(self) -> str:
        return self.name


# Fields several events share.
UNIT = {"slice": "the slice, k/n, when the unit is one key range of the table",
        "phase": "load or publish, in a run split over machines"}
MEASURED = {"rows": "rows loaded", "bytes": "bytes of the COPY stream", "seconds": "wall time",
            "snapshot": "which of the run's snapshots it was read from (1, then 2 after a renewal)"}
TABLE = {"table": "schema.table, quoted where SQL would need it", "job": "the job (1..N)"}

TABLE_COPIED = Event("table_copied", "the table is live with tonight's rows",
                     {**TABLE, **MEASURED, **UNIT, "slices": "how many slices it was loaded in"})
TABLE_FAILED = Event("table_failed", "the table keeps last night's rows",
                     {**TABLE, **UNIT, "error": "why, in one line", "seconds": "wall time",
                      "attempts": "tries, retries included"})
TABLE_STAGED = Event("table_staged", "staged, to be swapped with the others at the end "
                     "(--swap together, or tied by a partitioned table's foreign key)",
                     {**TABLE, **MEASURED, **UNIT, "slices": "how many slices it was loaded in"})
TABLE_LOADED = Event("table_loaded", "--phase load: the whole table is staged for the publish",
                     {**TABLE, **MEASURED, **UNIT})
SLICE_LOADED = Event("slice_loaded", "one key range of a table is loaded into its staging table",
                     {**TABLE, **MEASURED, **UNIT})
TABLE_RETRY = Event("table_retry", "a try failed on a lost connection or snapshot; the table is "
                    "tried again", {"table": TABLE["table"], "attempt": "the try that failed (1..)",
                                    "error": "why", "wait_seconds": "the pause before the next try"})
TABLE_PROGRESS = Event("table_progress", "a long table's load, every --progress-seconds",
                       {"table": TABLE["table"], "bytes": "bytes so far", "seconds": "since the load began",
                        "mb_per_s": "MB a second so far"})
SWAP_DEFERRED = Event("swap_deferred", "readers held the table through --lock-retries: it stays "
                      "staged and is swapped after the other tables",
                      {**TABLE, **MEASURED, **UNIT, "reason": "who held it", "slices": "slices"})
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
RUN_FINISHED = Event("run_finished", "the run's last line",
                     {"tables": "results (units in a load job)", "failed": "how many failed",
                      "seconds": "the run's wall time", "waited_seconds": "waited for unreachable databases",
                      "source_waited_seconds": "of which the source", "target_waited_seconds": "the target",
                      "snapshots": "snapshots the run read from", "phase": UNIT["phase"]})

EVENTS = {event.name: event for event in (
    TABLE_COPIED, TABLE_FAILED, TABLE_STAGED, TABLE_LOADED, SLICE_LOADED, TABLE_RETRY, TABLE_PROGRESS,
    SWAP_DEFERRED, SESSION_ENDED, INDEX_SKIPPED, STATISTICS_SKIPPED, WAITING, SNAPSHOT_RENEWED,
    SNAPSHOT_SHARED, SNAPSHOT_IMPORTED, SNAPSHOT_RELEASED, WARNING, RUN_FINISHED)}
# Fields any line may carry: set from the environment on AWS.
COMMON_FIELDS = {"event": "the event's name", "run": "the run's name (COPIER_RUN)"}
