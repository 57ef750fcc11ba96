"""Copy tables from the operational PostgreSQL database into the reporting one, safely and fast.

    python copier.py TABLES=orders,public.customers,"Mixed Case" [--jobs 5] [--dry-run]

Each table is streamed from ``COPY ... TO STDOUT`` on the source into a staging table on the
target, indexed, verified, analyzed, and swapped into place in one short transaction. Readers
of the reporting table see the old contents until that commit and the complete new contents
after it; a failure anywhere leaves the reporting table exactly as it was.

Settings come from SSM Parameter Store under COPIER_SSM_PREFIX (default /nightly-copy/):
``<prefix>source/host``, ``.../port``, ``.../dbname``, ``.../user``, ``.../password``
(SecureString), ``.../sslmode`` and the same under ``<prefix>target/``. For a local run,
SOURCE_DSN and TARGET_DSN (libpq URLs or key=value strings) replace Parameter Store entirely.

stdout carries one JSON object per line (for CloudWatch Logs Insights; runlog.EVENTS lists
them); stderr carries the human lines: progress notes, the plan, the summary, and errors. Exit
status 1 when anything failed.

The file reads top to bottom as a night runs; its sections, in order:

  Errors                  every exception type, and how an error reads in one line
  Output                  log_event (JSON lines), say and warn (stderr)
  The command line        Options: what the user asked for
  Settings, connections   Parameter Store or DSNs; every session's settings; SQL helpers
  Table list and plan     TABLES resolved into units; the Plan, decided once and frozen
  Reading the source      every table's definition, for all tables at once; the column and
                          row rules (rules.py) checked against the source and applied to it
  Preparing the target    schemas, types and sequences a staging table needs
  One table's copy        TableCopier, then its steps: stage, load, index, verify (and the
                          fingerprints that tell an unchanged table, the proof on the source
                          that tells one without reading it), swap
  The reporting side      what a reporting table has of its own, kept or refused
  Readers in the way      the swaps readers blocked: waited for, then ended
  Run-wide state          outages, the run's snapshot, the run's hold on its tables
  The runner              run(): the units over the jobs, the swaps left for the end
  main                    signals, the error boundary, the exit status

What the copier shares with the code that sets it up and reads its lines (settings layout,
the unit grammar name#k/n, the planner, the event catalogue) lives in runlog.py; the rules'
form, in rules.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import io
import json
import os
import queue
import random
import re
import select
import signal
import sys
import threading
import time
import weakref
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context

import psycopg2
import psycopg2.errorcodes
import psycopg2.errors
import xxhash
from psycopg2 import sql
from psycopg2.extras import Json

import rules
import runlog
from rules import KEEP, RulesError, TableRules
from runlog import (
    CONNECTION_SETTINGS,
    DATABASES,
    DEFAULT_SSM_PREFIX,
    CopierError,
    Slice,
    TableListError,
    assign_to_jobs,
    display_ident,
    first_line,
    qualified,
    slice_counts,
    split_table_list,
    split_units,
    unit_name,
    unit_text,
)

STAGING_PREFIX = "_copier_"

PIPE_CHUNK = 1 << 16

# OIDs below this are built into PostgreSQL and identical in every database.
FIRST_NORMAL_OID = 16384


# ---------------------------------------------------------------------------------------------
# Errors: one type per kind of failure the user can act on (CopierError and TableListError come from
# runlog.py, RulesError from rules.py: shared with setup), and how an error reads in one line.


class ConfigError(CopierError):
    """Settings are missing or unreadable."""


class TableCopyError(CopierError):
    """One table could not be copied; the reporting table is unchanged."""


class SourceStreamError(CopierError):
    """The source stopped sending before the end of the table."""


class ConnectionLost(CopierError):
    """A connection could not be opened or was lost: worth retrying."""

    def __init__(self, message: str, role: str | None = None):
        super().__init__(message)
        self.role = role


class DatabaseUnreachable(CopierError):
    """A database stayed unreachable for longer than the outage budget."""


class SnapshotLost(CopierError):
    """The run's exported snapshot is gone: its holder's connection or server went away."""


class SwapBlocked(TableCopyError):
    """Sessions on the reporting side held what the swap must lock, through every try."""


class Refused(TableCopyError):
    """Something on the reporting side depends on the table and cannot survive its replacement."""


class Unchanged(Exception):  # noqa: N818 - not a failure: how a copy learns it need not write
    """The source's rows are what the reporting table holds: the table's transaction is rolled
    back (its staging with it) and nothing is written."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C so every open transaction is rolled back."""


RETRYABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})  # server shutting down or starting


def is_connection_error(exc: BaseException) -> bool:
    """Errors that a new connection may not repeat; anything else would fail again."""
    if isinstance(exc, ConnectionLost):
        return True
    if isinstance(exc, psycopg2.Error):
        if exc.pgcode:
            return exc.pgcode.startswith("08") or exc.pgcode in RETRYABLE_SQLSTATES
        return isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError)
    return False


# What to do about an error whose own text does not say it (patterns of the error's text).
ERROR_ADVICE = {
    r"query would be affected by row-level security policy":
        "the source user must have BYPASSRLS (or own a table without FORCE ROW LEVEL SECURITY), "
        "so that no rows are left out",
    r"function .* does not exist":
        "the target database needs the functions the table's defaults, checks, generated columns "
        "and indexes use: create them there",
    r'collation ".*" for encoding ".*" does not exist|collation ".*" does not exist':
        "the target database needs the collations the table's columns use: create them there",
    r'type ".*" does not exist':
        "the target database needs every type the source table uses; the copier creates enums, "
        "domains, composite (not a table's row type) and range types, an extension's types need "
        "CREATE EXTENSION on the target",
}


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, psycopg2.Error) and exc.diag.message_primary:
        text = exc.diag.message_primary
        if exc.diag.context:
            text += f" ({exc.diag.context.splitlines()[0]})"
        text += "".join(f": {advice}" for pattern, advice in ERROR_ADVICE.items()
                        if re.match(pattern, text))
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------
# Output: one JSON object a line on stdout for machines (runlog.EVENTS lists them), short lines on stderr
# for people.


def log_event(event: runlog.Event, **fields) -> None:
    # On AWS the state machine names the run and the job, so a report can find their lines.
    if os.environ.get("COPIER_RUN"):
        fields["run"] = os.environ["COPIER_RUN"]
    if os.environ.get("COPIER_JOB") and "job" in fields:
        fields["job"] = os.environ["COPIER_JOB"]
    line = json.dumps({"event": event.name, **fields}, default=str, ensure_ascii=False)
    # One write per line keeps lines from parallel worker processes whole.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def warn(message: str, **fields) -> None:
    """A warning: a JSON line for the logs, a human line on stderr (with its error, if any)."""
    log_event(runlog.WARNING, message=message, **fields)
    say(f"copier: warning: {message}" + (f": {fields['error']}" if fields.get("error") else ""))


# Moments of a run that a test attaches a real fault to (a server stopped mid-load, a table
# dropped between two statements, a row written after the snapshot): a listener is called with
# the moment's context. Nothing listens in a real run. The tests' hooks (tests/*_hook.py) add
# their listeners in the job processes too.
MOMENTS = {
    "tables_checked": "the plan is made and the target checked; nothing is loaded yet (units)",
    "snapshot_taken": "the run exported its snapshot (conn: the connection holding it)",
    "creating_type": "a user-defined type is missing on the target and about to be made (name)",
    "locking": "the swap read which tables to lock, and is about to lock them (table, tables)",
    "loading": "a progress line of a table's load, every --progress-seconds (table, bytes)",
    "swapping": "a staged table's swap begins (table)",
    "unit_done": "a job reported a unit (unit, result)",
    "measuring": "setup_aws.py is about to measure the source's tables (conn)",
}
LISTENERS: dict[str, list] = {}


def moment(at: str, **context) -> None:
    assert at in MOMENTS, at
    for listener in LISTENERS.get(at, ()):
        listener(**context)


# ---------------------------------------------------------------------------------------------
# The command line: the user's options.


@dataclass(frozen=True)
class Options:
    """What the user (or, on AWS, the state machine's environment) asked for. What the run then
    does with it is its Plan."""

    tables_text: str
    jobs: int = 1
    dry_run: bool = False
    swap: str = "table"
    fail_fast: bool = False
    retries: int = 3
    retry_delay: float = 2.0
    lock_timeout: float = 5.0
    lock_retries: int = 5
    progress_seconds: float = 30.0
    maintenance_work_mem: str = "512MB"
    index_workers: int = 0
    outage_budget: float = 600.0
    snapshot: str = "renew"
    lock_budget: float = 300.0
    kill_readers: bool = True
    phase: str = "all"  # "load" and "publish": the two halves of a run split over machines
    split: bool = True  # --jobs N may cut a big table into slices loaded side by side
    split_larger_than: int | None = None  # bytes; None: heavier than a job's mean share
    run: str = ""  # the run's name: the staging tables' notes are matched by it across phases
    one_snapshot: str = ""  # load phase: "hold" exports the run's snapshot, "join" imports it
    load_jobs: int = 1  # load phase: how many jobs import the held snapshot
    snapshot_wait: float = 1800.0
    scheduled: bool = False  # COPIER_RUN is set: the state machine started it, nobody watches
    json: bool = False  # --dry-run --json: the plan as one JSON line on stdout
    copy_unchanged: bool = False  # copy every table, even one the reporting side holds already


def argument_parser() -> argparse.ArgumentParser:
    """The command line: every option, its default (from the environment where one is read) and
    its help (docs/ lists them from here)."""
    parser = argparse.ArgumentParser(
        prog="copier.py",
        description=(
            "Copy tables from the operational database into the reporting database.\n"
            "Each table is staged, indexed, verified and swapped in one short transaction,\n"
            "so readers never see it empty or half loaded, and a failure changes nothing."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "assignments", nargs="*", metavar="TABLES=a,b",
        help="the tables to copy (or the TABLES environment variable): comma-separated, "
        "optional schema prefix (default public), double quotes for names with commas or dots",
    )
    # String defaults from the environment go through type=: a bad value is a usage error.
    parser.add_argument("--jobs", type=int, default=os.environ.get("COPIER_JOBS", "1"),
                        help="worker processes; each takes the largest table left when it is "
                        "free (default 1)")
    parser.add_argument("--dry-run", action="store_true",
                        help="resolve and check everything, print the plan on stderr (with the job "
                        "each table is expected to land on), change nothing")
    parser.add_argument("--json", action="store_true",
                        help="with --dry-run: the plan as one JSON line on stdout as well")
    parser.add_argument("--swap", choices=("table", "together"),
                        default=os.environ.get("COPIER_SWAP", "table"),
                        help="'table': each table goes live when it is ready (default); "
                        "'together': all tables go live in one transaction at the end, or none")
    parser.add_argument("--fail-fast", action="store_true",
                        help="stop at the first failed table instead of copying the rest")
    parser.add_argument("--retries", type=int, default=os.environ.get("COPIER_RETRIES", "3"),
                        help="retries of a table after a lost connection (default 3)")
    parser.add_argument("--lock-timeout", type=float, default=5.0, metavar="SECONDS",
                        help="how long the swap waits for readers' locks per try (default 5)")
    parser.add_argument("--lock-retries", type=int, default=5,
                        help="tries after the first before the swap gives up (default 5)")
    parser.add_argument("--lock-budget", type=float,
                        default=os.environ.get("COPIER_LOCK_BUDGET", "300"), metavar="SECONDS",
                        help="how long, in all, the run keeps trying the swaps that readers blocked, "
                        "after the other tables (default 300)")
    parser.add_argument("--no-kill-readers", dest="kill_readers", action="store_false",
                        help="only wait for the sessions in a swap's way (by default they are ended, "
                        "as pg_repack does)")
    parser.add_argument("--index-workers", type=int,
                        default=os.environ.get("COPIER_INDEX_WORKERS", "0"),
                        help="parallel workers the target may add to each index build "
                        "(max_parallel_maintenance_workers); raise it when the target has idle cores")
    parser.add_argument("--progress-seconds", type=float, default=30.0, metavar="SECONDS",
                        help="interval of progress lines for long tables (default 30)")
    parser.add_argument("--outage-budget", type=float,
                        default=os.environ.get("COPIER_OUTAGE_BUDGET", "600"), metavar="SECONDS",
                        help="how long the jobs wait for a database that became unreachable "
                        "(a failover, a restart, a network cut) before its tables fail (default "
                        "600: a managed database's failover with margin)")
    parser.add_argument("--snapshot", choices=("renew", "strict"),
                        default=os.environ.get("COPIER_SNAPSHOT", "renew"),
                        help="a lost snapshot (the source restarted or failed over): 'renew' takes a "
                        "new one and says which tables came from which; 'strict' fails the tables not "
                        "yet read")
    parser.add_argument("--split-larger-than", type=size_in_bytes, metavar="SIZE",
                        default=os.environ.get("COPIER_SPLIT_LARGER_THAN") or None,
                        help="with --jobs N, cut tables larger than SIZE (e.g. 10GB) into key ranges "
                        "loaded side by side (default: larger than a job's mean share)")
    parser.add_argument("--copy-unchanged", action="store_true",
                        default=os.environ.get("COPIER_COPY_UNCHANGED", ""),  # any but "", 0, false: on
                        help="copy every table, also one whose source rows are what the reporting "
                        "table already holds (by default such a table is not written)")
    parser.add_argument("--no-split", dest="split", action="store_false",
                        help="never cut a table into slices")
    parser.add_argument("--phase", choices=PHASES, default=os.environ.get("COPIER_PHASE", "all"),
                        help="a run split over machines (both need COPIER_RUN): 'load' stages this "
                        "job's tables and slices; 'publish' finishes and swaps what the load jobs staged")
    return parser


def parse_args(argv: list[str]) -> Options:
    parser = argument_parser()
    args = parser.parse_args(argv)

    tables_text = os.environ.get("TABLES", "")
    for item in args.assignments:
        key, sep, value = item.partition("=")
        if not sep or key != "TABLES":
            parser.error(f"unexpected argument {item!r}: expected TABLES=a,b")
        tables_text = value
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.retries < 0 or args.lock_retries < 0 or args.index_workers < 0:
        parser.error("--retries, --lock-retries and --index-workers must not be negative")
    if args.json and not args.dry_run:
        parser.error("--json goes with --dry-run (a run's stdout is JSON lines already)")
    if args.outage_budget < 0 or args.lock_budget < 0:
        parser.error("--outage-budget and --lock-budget must not be negative")
    phases = phase_settings(args.phase, parser.error)
    return Options(**phases,
        tables_text=tables_text, jobs=args.jobs, dry_run=args.dry_run, json=args.json, swap=args.swap,
        fail_fast=args.fail_fast, retries=args.retries, lock_timeout=args.lock_timeout,
        lock_retries=args.lock_retries, progress_seconds=args.progress_seconds,
        index_workers=args.index_workers, outage_budget=args.outage_budget,
        snapshot=args.snapshot, lock_budget=args.lock_budget, kill_readers=args.kill_readers,
        split=args.split, split_larger_than=args.split_larger_than,
        copy_unchanged=args.copy_unchanged not in ("", "0", "false"),
    )


EXAMPLES = """\
examples:
  python copier.py TABLES=orders,customers
      copy two tables of schema public, settings from SSM Parameter Store

  SOURCE_DSN=postgresql://app@db1/shop TARGET_DSN=postgresql://report@db2/reporting \\
  python copier.py TABLES='sales.orders,"Mixed Case"' --jobs 4
      a local run against two databases, four tables at a time

  TABLES=orders python copier.py --dry-run
      print the plan (table, size, estimated rows, job) and change nothing

  python copier.py TABLES=orders,order_lines --swap together
      both tables go live in one transaction at the end, or neither does

environment:
  TABLES                   the table list, when no TABLES= argument is given
  SOURCE_DSN, TARGET_DSN   connection strings for a local run (replace Parameter Store)
  COPIER_SSM_PREFIX        Parameter Store path of the settings (default /nightly-copy/)
  COPIER_JOBS, COPIER_SWAP, COPIER_RETRIES, COPIER_INDEX_WORKERS, COPIER_OUTAGE_BUDGET,
  COPIER_SNAPSHOT          defaults for --jobs, --swap, --retries, --index-workers,
                           --outage-budget, --snapshot
  COPIER_RUN, COPIER_JOB   added to every JSON line as "run" and "job" (set by the state machine);
                           COPIER_RUN also names the run whose staging --phase publish swaps in
  COPIER_PHASE, COPIER_SPLIT_LARGER_THAN, COPIER_COPY_UNCHANGED, COPIER_LOCK_BUDGET
                           defaults for --phase, --split-larger-than, --copy-unchanged (1),
                           --lock-budget
  COPIER_ONE_SNAPSHOT      --phase load: 'hold' (the first job exports the run's snapshot and holds
                           it until COPIER_LOAD_JOBS jobs imported it) or 'join' (import it); both
                           wait up to COPIER_SNAPSHOT_WAIT seconds (default 1800)
  COPIER_RULES, COPIER_HASH_SALT   the column and row rules' file, and the salt of their hashes
  COPIER_TARGET_STORAGE    rds:<instance>: check the night's room against that RDS instance's
                           free storage (on AWS setup_aws.py sets it in Parameter Store)
  COPIER_BUILD_QUOTA       on AWS, the account's concurrent-build quota, named in a late job's error
"""


PHASES = ("all", "load", "publish")


SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def size_in_bytes(text: str) -> int:
    """'10GB' -> 10_000_000_000 (argparse type: a bad value is a usage error)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?B?)\s*", text.upper())
    if not match or match.group(2) not in SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 500MB, 10GB)")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2)])


def phase_settings(phase: str, error) -> dict:
    """The load and publish phases' settings from the environment the state machine gives."""
    run = os.environ.get("COPIER_RUN", "")
    one_snapshot = os.environ.get("COPIER_ONE_SNAPSHOT", "")
    if phase != "all" and not run:
        error(f"--phase {phase} needs COPIER_RUN: the run's name, the same for every job and the publish")
    if one_snapshot not in ("", "hold", "join"):
        error(f"COPIER_ONE_SNAPSHOT must be 'hold' or 'join', not {one_snapshot!r}")
    if one_snapshot and phase != "load":
        error("COPIER_ONE_SNAPSHOT is for --phase load")
    try:
        load_jobs = int(os.environ.get("COPIER_LOAD_JOBS", "1"))
        wait = float(os.environ.get("COPIER_SNAPSHOT_WAIT", "1800"))
    except ValueError:
        error("COPIER_LOAD_JOBS and COPIER_SNAPSHOT_WAIT must be numbers")
    if load_jobs < 1 or wait < 0:
        error("COPIER_LOAD_JOBS must be at least 1 and COPIER_SNAPSHOT_WAIT not negative")
    # A run of its own for a local run: its staging notes can never match another's.
    token = run if phase != "all" else f"local-{os.getpid()}-{time.time_ns()}"
    return {"phase": phase, "run": token, "one_snapshot": one_snapshot, "load_jobs": load_jobs,
            "snapshot_wait": wait, "scheduled": bool(run)}


# ---------------------------------------------------------------------------------------------
# Settings and connections: where the databases are, how every session is set up, and the small helpers
# every statement uses.


def load_connection_settings() -> dict:
    """Keyword arguments for psycopg2.connect, per database, from the environment or SSM; and
    the rules' document as Parameter Store holds it ("rules": text and where it came from). The
    salt of the rules' hashes is the source's ("hash_salt": connect makes it a setting of every
    source session, never of a target one)."""
    dsns = {db: os.environ.get(f"{db.upper()}_DSN") for db in DATABASES}
    if any(dsns.values()):
        missing = [f"{db.upper()}_DSN" for db, dsn in dsns.items() if not dsn]
        if missing:
            raise ConfigError(f"{missing[0]} is not set (SOURCE_DSN and TARGET_DSN go together)")
        settings = {db: {"dsn": dsn} for db, dsn in dsns.items()}
        settings["rules"] = (None, "")
        settings["storage"] = os.environ.get("COPIER_TARGET_STORAGE", "")
    else:
        prefix = os.environ.get("COPIER_SSM_PREFIX", DEFAULT_SSM_PREFIX)
        settings = read_ssm_settings(prefix if prefix.endswith("/") else prefix + "/")
    if os.environ.get(rules.SALT_VARIABLE):
        settings["source"]["hash_salt"] = os.environ[rules.SALT_VARIABLE]
    return settings


def read_ssm_settings(prefix: str) -> dict[str, dict]:
    import boto3  # only here: a local run needs no AWS libraries loaded
    import botocore.exceptions

    found: dict[str, str] = {}
    try:
        paginator = boto3.client("ssm").get_paginator("get_parameters_by_path")
        for page in paginator.paginate(Path=prefix, Recursive=True, WithDecryption=True):
            for parameter in page["Parameters"]:
                found[parameter["Name"]] = parameter["Value"]
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise ConfigError(f"cannot read settings from SSM Parameter Store at {prefix}: {exc}") from exc

    settings: dict = {"rules": (found.get(prefix + runlog.RULES_PARAMETER), prefix + runlog.RULES_PARAMETER)}
    missing = []
    for db in DATABASES:
        settings[db] = {}
        for name, default in CONNECTION_SETTINGS.items():
            value = found.get(f"{prefix}{db}/{name}", default)
            if value is None:
                missing.append(f"{prefix}{db}/{name}")
            else:
                settings[db][name] = value
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConfigError(
            f"missing SSM parameter {missing[0]}{more}; "
            "run setup_aws.py, or set SOURCE_DSN and TARGET_DSN for a local run"
        )
    settings["storage"] = found.get(prefix + runlog.STORAGE_SETTING, "")
    if found.get(prefix + runlog.HASH_SALT_PARAMETER):
        settings["source"]["hash_salt"] = found[prefix + runlog.HASH_SALT_PARAMETER]
    return settings


# Every connection: keepalives so a long copy notices a dead peer, and a name in pg_stat_activity.
CONNECTION_OPTIONS = {
    "application_name": "nightly-copier",
    "connect_timeout": 15,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 6,
}


# Set on every session, as pg_dump does. search_path: catalog functions then print every name
# schema-qualified, and nothing we run can be captured by an object on the user's search_path.
# Timeouts meant for interactive users must not cut a nightly copy off: its statements are long
# by design, and the connection holding the run's snapshot sits idle in its transaction (the
# swap sets its own lock_timeout). Some of these timeouts exist only from a version on.
SESSION_SETTINGS = (
    ("search_path", "pg_catalog"),
    ("statement_timeout", "0"),
    ("idle_in_transaction_session_timeout", "0"),
)


# On the source only, as pg_dump: a table whose row-level security would hide rows from the
# copier's user raises an error instead of being copied without them (the row counts would
# still agree, so nothing else would notice).
SOURCE_SESSION_SETTINGS = (("row_security", "off"),)


VERSIONED_SESSION_SETTINGS = ((140000, "idle_session_timeout", "0"),
                              (170000, "transaction_timeout", "0"))


OLDEST_SERVER = runlog.OLDEST_MAJOR * 10000  # server_version of its first release


def connect(settings: dict, role: str = "target"):
    """An autocommit connection: every transaction here is opened and closed explicitly."""
    settings = dict(settings)
    dsn = settings.pop("dsn", "")
    salt = settings.pop("hash_salt", None)
    if settings.get("sslrootcert") == CONNECTION_SETTINGS["sslrootcert"]:
        del settings["sslrootcert"]
    conn = psycopg2.connect(dsn, **{**CONNECTION_OPTIONS, **settings})
    conn.autocommit = True
    if conn.server_version < OLDEST_SERVER:
        version = conn.server_version
        conn.close()
        raise ConfigError(f"the {role} server runs PostgreSQL {version // 10000}: "
                          f"the copier needs {OLDEST_SERVER // 10000} or later")
    session = list(SESSION_SETTINGS)
    if role == "source":
        session.extend(SOURCE_SESSION_SETTINGS)
    session += [(name, value) for since, name, value in VERSIONED_SESSION_SETTINGS
                if conn.server_version >= since]
    if salt is not None:
        session.append((SALT_SETTING, salt))
    with conn.cursor() as cur:
        cur.execute("SELECT " + ", ".join(["pg_catalog.set_config(%s, %s, false)"] * len(session)),
                    [value for setting in session for value in setting])
    return conn


def open_connection(settings: dict, role: str):
    try:
        return connect(settings, role)
    except psycopg2.Error as exc:
        raise ConnectionLost(f"cannot connect to the {role} database: {first_line(exc)}",
                             role) from exc


def is_alive(conn) -> bool:
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        return True
    except psycopg2.Error:
        return False


@contextmanager
def transaction(conn):
    """A cursor inside BEGIN ... COMMIT, rolled back on any error (when the connection lives)."""
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        try:
            yield cur
            cur.execute("COMMIT")
        except BaseException:
            if not conn.closed:
                try:
                    cur.execute("ROLLBACK")
                except psycopg2.Error:
                    pass
            raise


# The catalog queries sent for every table are prepared once per connection: on a target with
# a thousand tables, parsing and planning one costs 0.3-1.5 ms, running it a tenth of that.
PREPARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # connection -> names


def prepared_statement(cur, name: str, query: str, *args) -> str:
    """The EXECUTE of a query (parameters $1, $2, ...) with args, as a statement to send alone
    or with others. The first use on a connection PREPAREs it, in a round trip of its own (a
    prepared statement outlives a rolled-back transaction, and dies with its session)."""
    made = PREPARED.setdefault(cur.connection, set())
    if name not in made:
        cur.execute(f"PREPARE {name} AS {query}")
        made.add(name)
    return cur.mogrify(f"EXECUTE {name} ({', '.join(['%s'] * len(args))})", args).decode()


# A relation's comment, as obj_description(oid, 'pg_class') reads it, without the cost of a
# call of a SQL function (a template: the relation's OID).
COMMENT_OF = ("(SELECT description FROM pg_description WHERE objoid = %s "
              "AND classoid = 'pg_class'::regclass AND objsubid = 0)")


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_qualified(schema: str, name: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(name)}"


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def rows(json_rows: list[list]) -> list[tuple]:
    return [tuple(row) for row in json_rows]


CURRENT_USERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # by connection


def current_user(cur) -> str:
    """The copier's user on this connection (asked once: the copier never changes role)."""
    if cur.connection not in CURRENT_USERS:
        cur.execute("SELECT current_user")
        CURRENT_USERS[cur.connection] = cur.fetchone()[0]
    return CURRENT_USERS[cur.connection]


# ---------------------------------------------------------------------------------------------
# The table list and the plan: what TABLES names, cut into units, and what the run will do with them,
# decided before anything is written.


@dataclass(frozen=True)
class TableName:
    schema: str
    name: str

    @property
    def qualified(self) -> str:
        """The name as users write it: schema.table, quoted only where needed."""
        return qualified(self.schema, self.name)

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    def staging_name(self) -> str:
        # Deterministic, so a later run finds and removes what a crashed run left behind.
        digest = hashlib.md5(f"{self.schema}.{self.name}".encode()).hexdigest()[:16]
        return f"{STAGING_PREFIX}{digest}"


@dataclass
class SourceTable:
    table: TableName
    oid: int
    kind: str
    size_bytes: int
    estimated_rows: int
    # Read with every other table's before the jobs start (with_definitions); None: read it.
    definition: TableDefinition | None = dataclasses.field(default=None, repr=False, compare=False)
    # Nothing on the reporting side was tied to it when the run started (with_target_checked):
    # no refusal to look for before its load (the swap still sweeps what is tied by then).
    untied: bool = dataclasses.field(default=False, compare=False)
    # What the last run recorded of it on the reporting side (with_fingerprints); None: copy it.
    fingerprint: Fingerprint | None = dataclasses.field(default=None, compare=False)
    # Its rules (rules.py), checked against the source (check_rules); None: copied as it is.
    masking: Masking | None = dataclasses.field(default=None, compare=False)
    refused: str = dataclasses.field(default="", compare=False)  # why it may not be copied tonight


SOURCE_TABLES_QUERY = """
SELECT n.nspname, c.relname, c.oid, c.relkind,
       CASE c.relkind WHEN 'p' THEN (
           SELECT coalesce(sum(pg_total_relation_size(t.relid)), 0)::bigint
           FROM pg_partition_tree(c.oid) t WHERE t.isleaf)
       ELSE pg_total_relation_size(c.oid) END,
       CASE c.relkind WHEN 'p' THEN (
           SELECT coalesce(sum(greatest(p.reltuples, 0)), 0)::bigint
           FROM pg_partition_tree(c.oid) t JOIN pg_class p ON p.oid = t.relid WHERE t.isleaf)
       ELSE c.reltuples::bigint END
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND c.relname = ANY(%s)
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%%'
"""


def resolve_tables(conn, tables_text: str) -> list[SourceTable]:
    """Turn the TABLES text into source tables, or explain in one line why not."""
    if not tables_text.strip():
        raise TableListError("no tables given: pass TABLES=a,b or set the TABLES variable")
    requested = split_table_list(tables_text)
    by_name = source_tables(conn, requested)
    resolved: list[SourceTable] = []
    seen: set[TableName] = set()
    for parts in requested:
        found = find_table(by_name, parts)
        written = ".".join(part for part, _ in parts)
        if found is None:
            raise TableListError(f"unknown table {written!r}: no such table on the source")
        if found.table in seen:
            raise TableListError(f"table {found.table.qualified} is listed twice")
        seen.add(found.table)
        resolved.append(found)
    return resolved


def source_tables(conn, requested: list[list[tuple[str, bool]]]) -> dict[tuple[str, str], SourceTable]:
    """The source's tables of the names requested (as written, and folded to lower case): only
    theirs, so that an operational database's thousands of other tables are not sized too."""
    names = sorted({form for parts in requested for form in (parts[-1][0], parts[-1][0].lower())})
    with conn.cursor() as cur:
        cur.execute(SOURCE_TABLES_QUERY, (names,))
        rows = cur.fetchall()
    return {(r[0], r[1]): SourceTable(TableName(r[0], r[1]), r[2], r[3], r[4], r[5]) for r in rows}


def find_table(by_name: dict, parts: list[tuple[str, bool]]) -> SourceTable | None:
    """Exact name first; an unquoted name then folds to lower case, as in SQL."""
    if len(parts) == 1:
        parts = [("public", False), *parts]
    (schema, schema_quoted), (name, name_quoted) = parts
    exact = by_name.get((schema, name))
    if exact:
        return exact
    folded = (schema if schema_quoted else schema.lower(), name if name_quoted else name.lower())
    return by_name.get(folded)


def resolve_units(conn, tables_text: str) -> list[Unit]:
    """A load job's TABLES: tables and slices (name#k/n), each listed once."""
    if not tables_text.strip():
        raise TableListError("no tables given: pass TABLES=a,b or set the TABLES variable")
    listed = split_units(tables_text)
    by_name = source_tables(conn, [parts for parts, _ in listed])
    units: list[Unit] = []
    for parts, part in listed:
        found = find_table(by_name, parts)
        if found is None:
            raise TableListError(f"unknown table {unit_text(parts, part)!r}: no such table on the source")
        unit = Unit(found, "slice" if part else "load", part)
        for other in units:
            if other.source.table == found.table and (other.name == unit.name or not (part and other.part)):
                raise TableListError(f"{found.table.qualified} is listed twice ({other.name}, {unit.name})")
        units.append(unit)
    keys = slice_keys(conn, [u.source for u in units if u.part])
    return [dataclasses.replace(u, key=keys.get(u.source.table.qualified)) if u.part else u for u in units]


def source_table_sizes(conn, tables_text: str) -> dict[str, int]:
    """Size in bytes of each listed source table, by qualified name (for planning jobs)."""
    moment("measuring", conn=conn)
    return {t.table.qualified: t.size_bytes for t in resolve_tables(conn, tables_text)}


@dataclass(frozen=True)
class Unit:
    """One piece of a job's work: a step applied to a table, or to one slice of it.

    "copy" stages, loads, builds and swaps a table in one transaction; "load" stages and loads
    it for a later "finish" (the publish phase); "slice" loads one key range of it into the
    run's shared staging table; "finish" builds, verifies, analyzes and swaps what was loaded.
    """

    source: SourceTable
    step: str
    part: Slice | None = None
    key: str | None = None  # the column a slice's range is of
    attempt: int = 0  # a sliced table loaded again gets a staging table of its own

    @property
    def name(self) -> str:
        return unit_name(self.source.table.qualified, self.part)

    @property
    def weight(self) -> float:
        return self.source.size_bytes / (self.part[1] if self.part else 1)


SLICE_KEYS_QUERY = """
SELECT DISTINCT ON (i.indrelid) i.indrelid, a.attname
FROM pg_index i
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
WHERE i.indrelid = ANY(%s) AND i.indisunique AND i.indisvalid AND i.indnkeyatts = 1
  AND i.indexprs IS NULL AND i.indpred IS NULL AND a.attnotnull
  AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)
ORDER BY i.indrelid, i.indisprimary DESC, i.indexrelid
"""


def slice_keys(conn, tables: list[SourceTable]) -> dict[str, str]:
    """The column each table can be cut into key ranges by: a single-column integer primary
    key or unique index on a NOT NULL column (no row falls outside every range, none into two).
    Other keys are left whole: ranges of text or uuid values cannot be cut evenly by arithmetic."""
    with conn.cursor() as cur:
        cur.execute(SLICE_KEYS_QUERY, ([t.oid for t in tables],))
        by_oid = dict(cur.fetchall())
    return {t.table.qualified: by_oid[t.oid] for t in tables if t.oid in by_oid}


def sliceable_tables(conn, tables_text: str) -> set[str]:
    """The listed tables that can be cut into slices (for planning the cloud's jobs)."""
    return set(slice_keys(conn, resolve_tables(conn, tables_text)))


def plan_run(src, options: Options) -> list[Unit]:
    """The run's units: this load job's tables and slices, the tables to publish, or, for a
    whole local run, each table (the big ones cut into slices when there are jobs to share them)."""
    if options.phase == "load":
        return resolve_units(src, options.tables_text)
    tables = resolve_tables(src, options.tables_text)
    if options.phase == "publish":
        return [Unit(t, "finish") for t in tables]
    keys = slice_keys(src, tables) if options.jobs > 1 and options.split else {}
    counts = slice_counts({t.table.qualified: t.size_bytes for t in tables}, options.jobs, keys,
                          options.split_larger_than)
    units = []
    for t in tables:
        count = counts[t.table.qualified]
        if count == 1:
            units.append(Unit(t, "copy"))
        else:
            units += [Unit(t, "slice", (k, count), keys[t.table.qualified]) for k in range(1, count + 1)]
    return units


@dataclass(frozen=True)
class Plan:
    """What the run does, decided once before anything is written, from the Options and what
    the two databases hold: the phase, how its tables go live, where its reads' snapshot comes
    from, and which units each job is expected to take."""

    phase: str  # all, load or publish (--phase)
    # "table": each table goes live once it is ready; "together": all at the end, in one
    # transaction; "none": the load phase leaves them staged for the publish
    swap: str
    # "export": the run exports its own; "hold" / "join": the load jobs of a split run read the
    # first one's; "none": the publish reads no rows
    snapshot: str
    # Tables that go live together at the end of the run rather than each when it is ready:
    # every table with --swap together; in a per-table run, those a partitioned table's foreign
    # key joins (see partitioned_key_ends)
    late_swaps: frozenset[str]
    jobs: tuple[tuple[str, ...], ...]  # the units each job is expected to take, as sizes predict
    # The reporting side has (or the copier may make) its store of fingerprints: unchanged tables
    # can be recognised, and each table copied leaves one.
    fingerprints: bool
    room: Room  # the reporting database's free storage against what the night stages at once
    # The source lets the copier record, and check, what proves a table unchanged without
    # reading it (begin_read): with the fingerprints, unless a DBA revoked a function it needs.
    proof: bool


def make_plan(options: Options, units: list[Unit], src, dst, storage: str) -> Plan:
    tables = list({u.source.table: u.source for u in units}.values())
    swap = "none" if options.phase == "load" else options.swap
    if swap == "together":
        late_swaps = frozenset(t.table.qualified for t in tables)
    else:
        late_swaps = partitioned_key_ends(dst, tables) if swap == "table" else frozenset()
    snapshot = "none" if options.phase == "publish" else options.one_snapshot or "export"
    room = room_for_the_night(storage, options.phase, {t.table.qualified: t.size_bytes for t in tables},
                              late_swaps, options.jobs)
    jobs = assign_to_jobs({u.name: u.weight for u in units}, room.jobs)
    fingerprints = fingerprint_store_usable(dst)
    return Plan(options.phase, swap, snapshot, late_swaps, tuple(map(tuple, jobs)), fingerprints, room,
                fingerprints and source_may_be_proved(src))


# --- room: a night never fills the reporting database's disk. A table is staged beside the live
#     one until its swap; the most the night holds staged at once is compared, before anything is
#     written, with the reporting database's free storage, where it can be read.


@dataclass(frozen=True)
class Room:
    """What the night may stage, as decided before it starts: the tables refused for want of
    room (each with why), how many jobs may stage side by side, and the sentence that says so."""

    said: str
    jobs: int
    refused: dict[str, str] = dataclasses.field(default_factory=dict)


def with_room(units: list[Unit], room: Room) -> list[Unit]:
    """The units, a table refused for want of room failing at its turn, before it is written."""
    return [dataclasses.replace(u, source=dataclasses.replace(u.source, refused=room.refused.get(
        u.source.table.qualified, ""))) for u in units]


def room_for_the_night(storage: str, phase: str, sizes: dict[str, int], late: frozenset[str],
                       jobs: int) -> Room:
    """Each table counts its size on the source (indexes and TOAST included). A per-table run
    holds its late swaps staged until the end, and one table per job beside them; --swap
    together and a load job hold all of theirs until the swap (the publish, on AWS). A table
    that cannot fit is refused before anything is written, keeping last night's rows (of those
    held to the end, the largest first: the fewest go); when the jobs side by side would not
    fit, fewer run at once."""
    if phase == "publish":
        return Room("not checked: the publish stages nothing (its load jobs did)", jobs)
    free, why = free_storage(storage)
    if free is None:
        return Room(why, jobs)
    everything = phase == "load" or late == frozenset(sizes)
    held = sorted((t for t in sizes if phase == "load" or t in late), key=lambda t: -sizes[t])
    refused: dict[str, str] = {}

    def refuse(table: str, because: str) -> None:
        refused[table] = (f"{table} needs about {sizes[table] / 1e6:.0f} MB staged (its size on the "
                          f"source, indexes and TOAST included) and the reporting database has "
                          f"{free / 1e6:.0f} MB free{because}: it keeps last night's rows; make room, "
                          f"or grow its storage")

    while held and sum(sizes[t] for t in held) > free:
        largest = held.pop(0)  # alone too big, or too big beside the others held to the end
        refuse(largest, "" if sizes[largest] > free else ", with the tables staged until the swap at "
               "the end " + ("(every table)" if everything else "(those swapped together)"))
    kept = sum(sizes[t] for t in held)
    others = sorted((t for t in sizes if t not in held and t not in refused), key=lambda t: -sizes[t])
    for table in others:
        if kept + sizes[table] > free:
            refuse(table, f", {kept / 1e6:.0f} MB of it held by the tables swapped at the end"
                   if kept else "")
    fitting = [sizes[t] for t in others if t not in refused]
    side_by_side = max(1, min(jobs, max((k for k in range(len(fitting) + 1)
                                         if kept + sum(fitting[:k]) <= free), default=1)))
    need = kept + sum(fitting[:side_by_side])
    said = (f"checked: the night stages at most {need / 1e6:.0f} MB at once, {free / 1e6:.0f} MB free"
            + (f"; {side_by_side} of {jobs} jobs at once, so that it fits" if side_by_side < jobs else "")
            + (f"; {len(refused)} table(s) refused for want of room" if refused else ""))
    return Room(said, side_by_side, refused)


def free_storage(storage: str) -> tuple[int | None, str]:
    """The reporting database's free storage in bytes, or None and why it is not known. On RDS,
    the instance's FreeStorageSpace metric ("the amount of available storage space", in bytes,
    reported each minute: Amazon RDS User Guide, "Amazon CloudWatch metrics for Amazon RDS"),
    its lowest in the last quarter hour; setup names the instance (runlog.STORAGE_SETTING) and
    lets the job read it. Aurora's storage grows on its own."""
    if storage == runlog.STORAGE_AURORA:
        return None, "not needed: Aurora's storage grows on its own"
    if not storage.startswith(runlog.STORAGE_RDS):
        return None, ("not checked: the reporting database's free storage cannot be read here (an RDS "
                      "instance's can: COPIER_TARGET_STORAGE=rds:<instance>, which setup_aws.py sets on AWS)")
    import boto3  # only here: a local run needs no AWS libraries loaded
    import botocore.exceptions

    instance = storage.removeprefix(runlog.STORAGE_RDS)
    now = datetime.datetime.now(datetime.UTC)
    try:
        points = boto3.client("cloudwatch").get_metric_statistics(
            Namespace="AWS/RDS", MetricName="FreeStorageSpace", Statistics=["Minimum"], Period=60,
            Dimensions=[{"Name": "DBInstanceIdentifier", "Value": instance}],
            StartTime=now - datetime.timedelta(minutes=15), EndTime=now)["Datapoints"]
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        return None, (f"not checked: cannot read the FreeStorageSpace of RDS instance {instance}: "
                      f"{first_line(exc)}")
    if not points:
        return None, f"not checked: RDS instance {instance} reported no FreeStorageSpace in 15 minutes"
    return int(min(point["Minimum"] for point in points)), ""


# Foreign keys of partitioned tables on the target whose two ends are both tables.
PARTITIONED_KEYS_QUERY = """
SELECT rn.nspname, r.relname, fn.nspname, f.relname
FROM pg_constraint c
JOIN pg_class r ON r.oid = c.conrelid JOIN pg_namespace rn ON rn.oid = r.relnamespace
JOIN pg_class f ON f.oid = c.confrelid JOIN pg_namespace fn ON fn.oid = f.relnamespace
WHERE c.contype = 'f' AND c.conparentid = 0 AND 'p' IN (r.relkind, f.relkind)
"""


def partitioned_key_ends(dst, tables: list[SourceTable]) -> frozenset[str]:
    """Before PostgreSQL 18 a foreign key of a partitioned table, or to one, is made again
    validated (see ForeignKey.add), so it is checked when it is made: the tables it joins go live
    together at the end of the run, when both hold the same night's rows, instead of each at its
    own moment."""
    if dst.server_version >= 180000:
        return frozenset()
    names = {(t.table.schema, t.table.name): t.table.qualified for t in tables}
    with dst.cursor() as cur:
        cur.execute(PARTITIONED_KEYS_QUERY)
        ends = [((a, b), (c, d)) for a, b, c, d in cur.fetchall()]
    return frozenset(names[end] for pair in ends if any(e in names for e in pair)
                     for end in pair if end in names)


def show_plan(plan: Plan, units: list[Unit], refused: dict[str, str], as_json: bool) -> None:
    """--dry-run: each unit with the job it is expected to land on, each job's share, and the
    tables the reporting side would refuse; for people on stderr, and with --json as one JSON
    line on stdout."""
    by_name = {u.name: u for u in units}
    placed = [(name, by_name[name], job) for job, names in enumerate(plan.jobs, 1) for name in names]
    rows = [(name, f"{unit.weight / 1e6:.1f}", str(estimated_rows(unit)) if unit.source.estimated_rows >= 0
             else "?", str(job)) for name, unit, job in placed]
    print_table(("table", "MB", "rows (est.)", "job"), rows, left=(0,))
    total = sum(u.weight for u in units) or 1
    for job, names in enumerate(plan.jobs, 1):
        if names:
            share = sum(by_name[name].weight for name in names)
            say(f"job {job}: {len(names)} unit(s), {share / 1e6:.1f} MB, "
                f"{100 * share / total:.0f}% of the run")
    ruled = {u.source.table.qualified: u.source.masking.rules for u in units if u.source.masking}
    for table, its_rules in ruled.items():
        say(f"rules of {table}: {rules_in_words(its_rules)}")
    say(f"room on the reporting database: {plan.room.said}")
    for table, error in refused.items():
        say(f"copier: error: {table}: {error}")
    if as_json:
        log_event(runlog.PLAN, phase=plan.phase, swap=plan.swap, jobs=len(plan.jobs), units=[
            {"unit": name, "table": unit.source.table.qualified, "job": job, "bytes": round(unit.weight),
             "estimated_rows": estimated_rows(unit) if unit.source.estimated_rows >= 0 else None,
             **({"slice": f"{unit.part[0]}/{unit.part[1]}"} if unit.part else {})}
            for name, unit, job in placed], refused=[
            {"table": table, "error": error} for table, error in refused.items()], rules=[
            {"table": table, "strict": r.strict, "where": r.where,
             "columns": {column: rule.action for column, rule in r.columns.items()}}
            for table, r in ruled.items()])


def rules_in_words(its_rules: TableRules) -> str:
    """'keep id, name; hash email; null phone; drop notes; sql birthday; rows where ...; strict'."""
    by_action: dict[str, list[str]] = {}
    for column, rule in its_rules.columns.items():
        by_action.setdefault(rule.action, []).append(column)
    parts = [f"{action} {', '.join(columns)}" for action, columns in by_action.items()]
    parts += [f"rows where {its_rules.where}"] if its_rules.where else []
    parts += ["strict: a column not named refuses the table"] if its_rules.strict else \
        ["the columns not named are kept"]
    return "; ".join(parts)


def estimated_rows(unit: Unit) -> int:
    return unit.source.estimated_rows // (unit.part or (1, 1))[1]


def refusals(dst, tables: list[SourceTable]) -> dict[str, str]:
    """--dry-run: the tables the reporting side would refuse tonight, each with what to do."""
    refused = {}
    with dst.cursor() as cur:
        for t in tables:
            try:
                refuse_what_cannot_survive(cur, t.table)
            except Refused as exc:
                refused[t.table.qualified] = str(exc)
    return refused


# ---------------------------------------------------------------------------------------------
# Reading the source: every table's definition, in the same ten queries for one table or a thousand.


@dataclass
class Column:
    name: str
    type_sql: str
    not_null: bool
    default: str | None
    generated: bool
    identity: str  # '', 'a' (always) or 'd' (by default)
    collation: str | None
    sequence: str | None  # name of the sequence a serial or identity column owns
    sequence_schema: str | None  # where that sequence lives on the source
    text_only: bool  # a value whose binary form carries database-specific type OIDs
    not_null_name: str = ""  # its NOT NULL constraint's name, which PostgreSQL keeps from 18 on
    source_sql: str | None = None  # what the source selects for it, when its rule masks it


@dataclass
class Constraint:
    name: str
    kind: str  # p, u, c, x
    definition: str
    index_definition: str | None  # the CREATE INDEX of a primary key or unique constraint
    validated: bool
    deferrable: bool
    deferred: bool
    columns: list[str] = dataclasses.field(default_factory=list)  # the columns it is on


@dataclass
class ExtendedStatistics:
    """A CREATE STATISTICS object on the table, in the parts needed to make it again."""

    name: str
    schema: str  # its own: not always the table's
    kinds: list[str]  # pg_statistic_ext.stxkind: d, f, m, e
    columns: str  # the columns and expressions it covers, as PostgreSQL prints them
    target: int | None  # its own statistics target, when set
    comment: str | None


@dataclass
class TableDefinition:
    source: SourceTable
    quoted_name: str  # schema.table as PostgreSQL prints it in definitions
    columns: list[Column]
    constraints: list[Constraint]
    indexes: list[tuple[str, str]]  # (name, CREATE INDEX ... statement)
    comment: str | None
    column_comments: dict[str, str]
    user_types: list[int]  # OIDs of the enums, domains, composites and ranges the columns use
    column_statistics: list[tuple[str, int | None, list[str] | None]]  # target, attoptions
    extended_statistics: list[ExtendedStatistics]
    default_sequences: list[tuple[str, str, str | None]]  # schema, name, the table owning it
    partitions: PartitionLayout | None  # the source's, when it is partitioned
    index_columns: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # by index name
    # What the columns' types print beyond their rows (type_closure_query): in the fingerprint
    printed_types: list[str] = dataclasses.field(default_factory=list)
    # The table's state on the source apart from the snapshot, when it can be proved unchanged
    # (with_source_states); not part of the definition's digest
    state_on_source: TableState | None = None
    # What the rules made of it (apply_rules): the rows the source selects, the source's keys and
    # indexes left out, why the rules refuse the table (a strict table's column they do not name)
    where: str | None = None
    left_out: list[str] = dataclasses.field(default_factory=list)
    refused: str = ""
    masked: bool = False  # the rules change what of it reaches the reporting side
    computed: bool = False  # a column is a rule's own SQL: its values may change with no row changing

    @property
    def table(self) -> TableName:
        return self.source.table

    @property
    def schemas(self) -> list[str]:
        """Where its parts live on the target: the table's schema and its statistics' ones."""
        return sorted({self.table.schema} | {s.schema for s in self.extended_statistics})

    @property
    def copied_columns(self) -> list[Column]:
        return [c for c in self.columns if not c.generated]

    @property
    def copy_format(self) -> str:
        return "text" if any(c.text_only for c in self.copied_columns) else "binary"

    @property
    def salted(self) -> bool:
        return any(SALT_SETTING in (c.source_sql or "") for c in self.copied_columns)

    @property
    def provable(self) -> bool:
        """Whether its rows can be proved unchanged on the source without reading them: what it
        copies is each row as stored (kept, emptied or hashed columns), not a rule's SQL or where,
        which may read other tables or the clock."""
        return not (self.where or self.computed)


# The catalog reads below take a list of tables (pg_class OIDs) and return each one's rows
# marked with its OID: a run reads every table's definition in a few queries, not ten a table.
COLUMNS_QUERY = """
SELECT a.attrelid, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid), a.attgenerated <> '', a.attidentity,
       CASE WHEN a.attcollation <> t.typcollation AND a.attcollation <> 0 THEN
           (SELECT quote_ident(cn.nspname) || '.' || quote_ident(co.collname)
            FROM pg_collation co JOIN pg_namespace cn ON cn.oid = co.collnamespace
            WHERE co.oid = a.attcollation) END,
       s.relname, sn.nspname,
       a.atttypid,
       (SELECT conname FROM pg_constraint WHERE conrelid = a.attrelid AND contype = 'n'
        AND conkey = ARRAY[a.attnum])
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
LEFT JOIN pg_depend dep ON dep.classid = 'pg_class'::regclass
     AND dep.refclassid = 'pg_class'::regclass AND dep.refobjid = a.attrelid
     AND dep.refobjsubid = a.attnum AND dep.deptype IN ('a', 'i')
     AND (SELECT relkind FROM pg_class WHERE oid = dep.objid) = 'S'
LEFT JOIN pg_class s ON s.oid = dep.objid
LEFT JOIN pg_namespace sn ON sn.oid = s.relnamespace
WHERE a.attrelid = ANY(%(tables)s) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""


# For every type a column uses (through domains and arrays): whether binary COPY can carry it
# between databases, and which user-defined types the target must have.
def type_closure_query(server_version: int) -> str:
    """Every type the columns use, through domains, arrays, ranges and composite types'
    attributes, each with the column type it was reached from. Multiranges came with
    PostgreSQL 14."""
    multirange = ("UNION ALL SELECT r.rngtypid FROM pg_range r WHERE r.rngmultitypid = t.oid"
                  if server_version >= 140000 else "")
    return f"""
WITH RECURSIVE closure(root, oid) AS (
    SELECT o, o FROM unnest(%s::oid[]) o
    UNION
    SELECT c.root, x.next FROM closure c JOIN pg_type t ON t.oid = c.oid,
    LATERAL (
        SELECT nullif(t.typbasetype, 0) UNION ALL SELECT nullif(t.typelem, 0)
        UNION ALL SELECT r.rngsubtype FROM pg_range r WHERE r.rngtypid = t.oid
        {multirange}
        UNION ALL SELECT a.atttypid FROM pg_attribute a
        WHERE t.typtype = 'c' AND a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
    ) AS x(next)
    WHERE x.next IS NOT NULL
)
SELECT c.root, t.oid, t.typtype, t.typelem, t.typcategory, t.typbasetype
FROM closure c JOIN pg_type t ON t.oid = c.oid
"""


# What user-defined types print as beyond the rows: an enum's labels, a composite's attributes,
# the version of the extension that made it (renaming a label changes what unchanged rows read
# as). A query of its own: joined to the closure's pessimistic estimate, it would be JIT-compiled.
PRINTED_TYPES_QUERY = """
SELECT t.oid, concat_ws(':',
       (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) FROM pg_enum e
        WHERE e.enumtypid = t.oid),
       (SELECT string_agg(a.attname || ' ' || a.atttypid, ',' ORDER BY a.attnum) FROM pg_attribute a
        WHERE t.typtype = 'c' AND a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped),
       (SELECT x.extname || ' ' || x.extversion FROM pg_depend d JOIN pg_extension x ON x.oid = d.refobjid
        WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid
          AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'))
FROM pg_type t WHERE t.oid = ANY(%s::oid[])
"""


CONSTRAINTS_QUERY = """
SELECT con.conrelid, con.conname, con.contype, pg_get_constraintdef(con.oid),
       CASE WHEN con.contype IN ('p', 'u') THEN pg_get_indexdef(con.conindid) END,
       con.convalidated, con.condeferrable, con.condeferred,
       ARRAY(SELECT a.attname FROM pg_attribute a
             WHERE a.attrelid = con.conrelid AND a.attnum = ANY(con.conkey) ORDER BY a.attnum)::text[]
FROM pg_constraint con
WHERE con.conrelid = ANY(%(tables)s) AND con.contype IN ('p', 'u', 'c', 'x')
ORDER BY con.conrelid, con.contype, con.conname
"""


INDEXES_QUERY = """
SELECT i.indrelid, ic.relname, pg_get_indexdef(i.indexrelid),
       -- the columns it is on, in its expressions or in its predicate
       ARRAY(SELECT DISTINCT a.attname FROM pg_depend d
             JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
             WHERE d.classid = 'pg_class'::regclass AND d.objid = i.indexrelid
               AND d.refclassid = 'pg_class'::regclass AND d.refobjid = i.indrelid)::text[]
FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
WHERE i.indrelid = ANY(%(tables)s)
  AND NOT EXISTS (SELECT 1 FROM pg_constraint con WHERE con.conindid = i.indexrelid
                  AND con.conrelid = i.indrelid)
ORDER BY i.indrelid, ic.relname
"""


# Sequences the columns' defaults use that the table does not own (a serial's is owned): a
# shared sequence, or one made by hand without OWNED BY.
DEFAULT_SEQUENCES_QUERY = """
SELECT DISTINCT d.adrelid, sn.nspname, s.relname,
       (SELECT o.refobjid::regclass::text FROM pg_depend o WHERE o.classid = 'pg_class'::regclass
        AND o.objid = s.oid AND o.refclassid = 'pg_class'::regclass AND o.deptype IN ('a', 'i'))
FROM pg_attrdef d
JOIN pg_depend dep ON dep.classid = 'pg_attrdef'::regclass AND dep.objid = d.oid
     AND dep.refclassid = 'pg_class'::regclass
JOIN pg_class s ON s.oid = dep.refobjid AND s.relkind = 'S'
JOIN pg_namespace sn ON sn.oid = s.relnamespace
WHERE d.adrelid = ANY(%(tables)s)
  AND NOT EXISTS (SELECT 1 FROM pg_depend o WHERE o.classid = 'pg_class'::regclass
                  AND o.objid = s.oid AND o.refobjid = d.adrelid AND o.deptype IN ('a', 'i'))
ORDER BY 1, 2, 3
"""


# Per-column planner settings: ALTER COLUMN ... SET STATISTICS n, SET (n_distinct = ...).
COLUMN_STATISTICS_QUERY = """
SELECT attrelid, attname, CASE WHEN attstattarget >= 0 THEN attstattarget END, attoptions
FROM pg_attribute
WHERE attrelid = ANY(%(tables)s) AND attnum > 0 AND NOT attisdropped
  AND (attstattarget >= 0 OR attoptions IS NOT NULL)
ORDER BY attrelid, attnum
"""


def statistics_columns(server_version: int) -> list[str]:
    """An ExtendedStatistics' fields of pg_statistic_ext s (in namespace n), as SQL. Expressions
    came with PostgreSQL 14, and so did the function that prints what an object covers; before
    it, only plain columns exist."""
    columns = "pg_get_statisticsobjdef_columns(s.oid)" if server_version >= 140000 else (
        "(SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY k.n)"
        " FROM unnest(s.stxkeys::int2[]) WITH ORDINALITY k(attnum, n)"
        " JOIN pg_attribute a ON a.attrelid = s.stxrelid AND a.attnum = k.attnum)")
    return ["s.stxname", "n.nspname", "s.stxkind::text[]", columns,
            "CASE WHEN s.stxstattarget >= 0 THEN s.stxstattarget END",
            "obj_description(s.oid, 'pg_statistic_ext')"]


def extended_statistics_query(server_version: int) -> str:
    """The tables' CREATE STATISTICS objects."""
    return (f"SELECT s.stxrelid, {', '.join(statistics_columns(server_version))} "
            "FROM pg_statistic_ext s JOIN pg_namespace n ON n.oid = s.stxnamespace "
            "WHERE s.stxrelid = ANY(%(tables)s) ORDER BY s.stxrelid, n.nspname, s.stxname")


COLUMN_COMMENTS_QUERY = """
SELECT d.objoid, json_object_agg(a.attname, d.description)
FROM pg_description d JOIN pg_attribute a ON a.attrelid = d.objoid AND a.attnum = d.objsubid
WHERE d.objoid = ANY(%(tables)s) AND d.classoid = 'pg_class'::regclass AND d.objsubid > 0
GROUP BY d.objoid
"""


# Each table's comment, and its name quoted the way pg_get_indexdef quotes it (to find the
# table's name in index definitions).
def read_column_comments(cur, oid: int) -> dict[str, str]:
    cur.execute(COLUMN_COMMENTS_QUERY, {"tables": [oid]})
    row = cur.fetchone()
    return row[1] if row else {}


TABLE_NAMES_QUERY = """
SELECT c.oid, obj_description(c.oid, 'pg_class'), quote_ident(n.nspname) || '.' || quote_ident(c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = ANY(%(tables)s)
"""


def read_definition(conn, source: SourceTable) -> TableDefinition:
    definition = read_definitions(conn, [source])[0]
    if definition is None:
        raise TableCopyError(f"{source.table.qualified} no longer exists on the source")
    return definition


def with_definitions(conn, units: list[Unit]) -> list[Unit]:
    """The units, each table carrying its definition, read for all of them at once: the jobs
    then send no catalog query to the source for a table's first try. A retry, and any try after
    the run's snapshot was renewed (the source may be another server then), reads it again."""
    sources = list({u.source.table: u.source for u in units}.values())
    read = {source.table: dataclasses.replace(source, definition=definition)
            for source, definition in zip(sources, read_definitions(conn, sources), strict=True)}
    return [dataclasses.replace(u, source=read[u.source.table]) for u in units]  # None: gone


def read_definitions(conn, sources: list[SourceTable]) -> list[TableDefinition | None]:
    """The tables' definitions on the source, in the same ten queries for one table or a
    thousand: a run reads them all before its jobs start (see with_definitions). None for a
    table that is gone."""
    tables = {"tables": [source.oid for source in sources]}
    with conn.cursor() as cur:

        def rows_by_table(query: str) -> dict[int, list[tuple]]:
            cur.execute(query, tables)
            grouped: dict[int, list[tuple]] = {}
            for oid, *row in cur.fetchall():
                grouped.setdefault(oid, []).append(tuple(row))
            return grouped

        columns = rows_by_table(COLUMNS_QUERY)
        type_oids = sorted({row[9] for rows in columns.values() for row in rows})
        cur.execute(type_closure_query(conn.server_version), (type_oids,))
        closures: dict[int, list[tuple]] = {}  # a column type -> every type it is made of
        for root, *row in cur.fetchall():
            closures.setdefault(root, []).append(tuple(row))
        made_here = sorted({oid for rows in closures.values() for oid, *_ in rows if oid >= FIRST_NORMAL_OID})
        printed: dict[int, str] = {}
        if made_here:
            cur.execute(PRINTED_TYPES_QUERY, (made_here,))
            printed = dict(cur.fetchall())
        constraints = rows_by_table(CONSTRAINTS_QUERY)
        indexes = rows_by_table(INDEXES_QUERY)
        column_comments = {oid: rows[0][0] for oid, rows in rows_by_table(COLUMN_COMMENTS_QUERY).items()}
        column_statistics = rows_by_table(COLUMN_STATISTICS_QUERY)
        default_sequences = rows_by_table(DEFAULT_SEQUENCES_QUERY)
        extended_statistics = rows_by_table(extended_statistics_query(conn.server_version))
        names = {oid: rows[0] for oid, rows in rows_by_table(TABLE_NAMES_QUERY).items()}
        partitions = {source.oid: read_partition_layout(cur, source.oid)
                      for source in sources if source.kind == "p"}
    definitions = []
    for source in sources:
        if source.oid not in names:
            definitions.append(None)
            continue
        comment, quoted_name = names[source.oid]
        column_rows = columns.get(source.oid, [])
        closure = list({row[0]: row for type_oid in {row[9] for row in column_rows}
                        for row in closures.get(type_oid, [])}.values())
        prints = sorted(f"{oid}:{printed[oid]}" for oid, *_ in closure if printed.get(oid))
        its_indexes = indexes.get(source.oid, [])
        definition = table_definition(
            source, quoted_name, column_rows, closure,
            [Constraint(*row) for row in constraints.get(source.oid, [])],
            [(name, statement) for name, statement, _ in its_indexes], comment,
            column_comments.get(source.oid, {}), column_statistics.get(source.oid, []),
            [ExtendedStatistics(*row) for row in extended_statistics.get(source.oid, [])],
            default_sequences.get(source.oid, []), partitions.get(source.oid))
        definition.index_columns = {name: list(on) for name, _, on in its_indexes}
        definition.printed_types = prints
        definitions.append(apply_rules(definition, source.masking) if source.masking else definition)
    return definitions


def table_definition(source: SourceTable, quoted_name: str, column_rows: list[tuple],
                     closure: list[tuple], constraints: list[Constraint], indexes: list[tuple],
                     comment: str | None, column_comments: dict[str, str],
                     column_statistics: list[tuple], extended_statistics: list[ExtendedStatistics],
                     default_sequences: list[tuple], partitions: PartitionLayout | None) -> TableDefinition:
    text_only_types = text_only_type_oids(closure)
    columns = [
        Column(
            name=name, type_sql=type_sql, not_null=not_null, default=default,
            generated=generated, identity=identity, collation=collation,
            sequence=sequence, sequence_schema=sequence_schema,
            text_only=type_oid in text_only_types,
            not_null_name=not_null_name or default_not_null_name(source.table.name, name),
        )
        for (name, type_sql, not_null, default, generated, identity, collation, sequence,
             sequence_schema, type_oid, not_null_name) in column_rows
    ]
    user_types = sorted(oid for oid, typtype, *_ in closure
                        if typtype in USER_TYPE_KINDS and oid >= FIRST_NORMAL_OID)
    return TableDefinition(source, quoted_name, columns, constraints, indexes, comment,
                           column_comments, user_types, column_statistics, extended_statistics,
                           default_sequences, partitions)


def text_only_type_oids(closure: list[tuple]) -> set[int]:
    """Column types whose binary COPY form would not load in another database.

    Binary arrays and composites carry their element types' OIDs, and user-defined types get
    different OIDs in every database; everything else travels fastest as binary.
    """
    kinds = {oid: (typtype, elem, base) for oid, typtype, elem, category, base in closure}
    bad = {oid for oid, typtype, elem, category, _ in closure
           if typtype == "c" or (category == "A" and elem >= FIRST_NORMAL_OID)}
    # A domain over such a type, or an array of one, is no better: spread until stable.
    changed = True
    while changed:
        changed = False
        for oid, (_typtype, elem, base) in kinds.items():
            if oid not in bad and (elem in bad or base in bad):
                bad.add(oid)
                changed = True
    return bad


@dataclass
class Partition:
    """One partition, as it is made under the staged table: its parent is a (schema, name)."""

    schema: str
    name: str
    parent: tuple[str, str]
    bound: str  # FOR VALUES ... or DEFAULT
    key: str | None  # PARTITION BY of a partition that is partitioned in turn
    options: list[str]
    tablespace: str | None = None  # where it is on the reporting side (None: its parent's)


@dataclass
class PartitionLayout:
    key: str  # the table's PARTITION BY
    partitions: list[Partition]  # parents before their children


PARTITIONS_QUERY = """
SELECT n.nspname, c.relname, pn.nspname, p.relname, pg_get_expr(c.relpartbound, c.oid),
       CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END, coalesce(c.reloptions, '{}'),
       -- 0 is the database's default: named, as a partition made without one gets its parent's
       CASE WHEN c.reltablespace <> 0 THEN (SELECT spcname FROM pg_tablespace WHERE oid = c.reltablespace)
            WHEN c.relkind <> 'p' THEN (SELECT s.spcname FROM pg_database d
                                        JOIN pg_tablespace s ON s.oid = d.dattablespace
                                        WHERE d.datname = current_database()) END
FROM pg_partition_tree(%s) t
JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_class p ON p.oid = t.parentrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace
WHERE t.level > 0
ORDER BY t.level, n.nspname, c.relname
"""


def read_partition_layout(cur, oid: int) -> PartitionLayout | None:
    cur.execute("SELECT pg_get_partkeydef(oid) FROM pg_class WHERE oid = %s AND relkind = 'p'", (oid,))
    row = cur.fetchone()
    if row is None:
        return None
    cur.execute(PARTITIONS_QUERY, (oid,))
    return PartitionLayout(row[0], [
        Partition(schema, name, (parent_schema, parent), bound, key, list(options), tablespace)
        for schema, name, parent_schema, parent, bound, key, options, tablespace in cur.fetchall()])


# --- rules: what of a table reaches the reporting side. rules.py reads the document; here it is
#     checked against the source and applied to each table's definition. The source computes
#     every masked value, inside the run's snapshot: a raw value of a masked column never
#     leaves it.

# The source sessions' own setting that holds the hash's salt (connect): the statements name it,
# never the salt, and no target session has it.
SALT_SETTING = "nightly_copy.hash_salt"


@dataclass(frozen=True)
class Masking:
    """One table's rules, checked against the source: with the type each sql rule's expression
    yields there, and where the rules came from (for the errors that name them)."""

    rules: TableRules
    types: dict[str, tuple[str, bool]]  # an sql rule's column -> its type, and binary COPY cannot carry it
    origin: str


def hashed(column_sql: str) -> str:
    """A value's salted hash, as text: deterministic (the same value, in any table and any night,
    gives the same hash: joins on a hashed key still work), NULL for NULL."""
    return (f"encode(sha256(convert_to(current_setting('{SALT_SETTING}') || ({column_sql})::text, "
            f"'UTF8')), 'hex')")


# A table's columns for the rules: their names, which are generated, and the columns each
# generated one is computed from.
RULED_COLUMNS_QUERY = """
SELECT a.attname, a.attgenerated <> '',
       ARRAY(SELECT r.attname FROM pg_attrdef d
             JOIN pg_depend dep ON dep.classid = 'pg_attrdef'::regclass AND dep.objid = d.oid
             JOIN pg_attribute r ON r.attrelid = dep.refobjid AND r.attnum = dep.refobjsubid
             WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum AND dep.refobjsubid > 0)::text[]
FROM pg_attribute a WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum
"""


def check_rules(conn, document: list[TableRules], origin: str, salt: str | None,
                salt_checked_elsewhere: bool = False) -> dict[TableName, Masking]:
    """The whole document against the source, before anything is written: each table and column
    it names exists there, a hash has its salt, a generated column is kept or dropped with what
    it is computed from, and every expression and condition is one the source accepts (tried on
    no rows, in a read-only transaction). RulesError, in one line, for the first that is not."""
    by_name = source_tables(conn, [table.parts for table in document])
    masks: dict[TableName, Masking] = {}
    for table in document:
        place = f'{origin}: [tables."{table.written}"]'
        found = find_table(by_name, table.parts)
        if found is None:
            raise RulesError(f"{place}: no such table on the source")
        if found.table in masks:
            raise RulesError(f"{place}: {found.table.qualified} has rules twice")
        if table.needs_salt and not salt and not salt_checked_elsewhere:
            raise RulesError(f"{place}: a hash needs its salt, in {rules.SALT_VARIABLE} (on AWS the "
                             f"SecureString parameter <prefix>hash_salt, which setup_aws.py writes)")
        with conn.cursor() as cur:
            cur.execute(RULED_COLUMNS_QUERY, (found.oid,))
            columns = {name: (generated, uses) for name, generated, uses in cur.fetchall()}
        check_columns(place, table, columns)
        masks[found.table] = Masking(table, expression_types(conn, found, table, place), origin)
    return masks


def check_columns(place: str, table: TableRules, columns: dict[str, tuple[bool, list[str]]]) -> None:
    for name in table.columns:
        if name not in columns:
            folded = [c for c in columns if c.lower() == name.lower()]
            hint = f" (it has {folded[0]!r}: columns are named exactly)" if folded else ""
            raise RulesError(f"{place}: no column {name!r} in this table on the source{hint}")
    for name, (generated, uses) in columns.items():
        rule = table.of(name) or KEEP
        if generated and rule.action not in ("keep", "drop"):
            raise RulesError(f"{place}: column {name!r} is generated (computed on the reporting side "
                             f"from the copied columns): its rule is keep or drop, not {rule.written}")
        dropped = [c for c in uses if (table.of(c) or KEEP).action == "drop"]
        if generated and rule.action == "keep" and dropped:
            raise RulesError(f"{place}: generated column {name!r} is computed from column "
                             f"{dropped[0]!r}, which the rules drop: drop {name!r} too ({name} = \"drop\")")


# What a type yields to binary COPY: a composite, or an array of a user-defined type, carries
# database-specific type OIDs (see text_only_type_oids); a domain is taken as unsafe too.
EXPRESSION_TYPE_QUERY = """
SELECT t.oid::regtype::text, t.typtype IN ('c', 'd') OR (t.typcategory = 'A' AND t.typelem >= {first})
FROM (SELECT pg_typeof({expression}) AS oid FROM {row}) e JOIN pg_type t ON t.oid = e.oid
"""  # no parameters: an expression may hold a % of its own


def expression_types(conn, source: SourceTable, table: TableRules, place: str) -> dict[str, tuple[str, bool]]:
    """The type each sql rule's expression yields (and whether binary COPY cannot carry it), and
    its where condition's check, asked of the source on a row of NULLs (no rows are read)."""
    expressions = {name: rule.sql for name, rule in table.columns.items() if rule.action == "sql"}
    row = sql.SQL("(SELECT ({}).*) AS {}").format(
        sql.SQL("NULL::{}").format(source.table.ident), sql.Identifier(source.table.name))
    checks = [(f"column {name!r}", sql.SQL(EXPRESSION_TYPE_QUERY).format(
        expression=sql.SQL(text), row=row, first=sql.Literal(FIRST_NORMAL_OID)))
        for name, text in expressions.items()]
    if table.where is not None:
        checks.append(("where", sql.SQL("EXPLAIN SELECT 1 FROM {} WHERE ({})").format(
            source.table.ident, sql.SQL(table.where))))
    types = []
    with conn.cursor() as cur:
        cur.execute("BEGIN READ ONLY")
        try:
            for what, statement in checks:
                try:
                    cur.execute(statement)
                    types.append(cur.fetchone())
                except psycopg2.Error as exc:
                    if is_connection_error(exc):
                        raise
                    raise RulesError(f"{place}: {what}: the source refuses it: {first_line(exc)}") from None
        finally:
            cur.execute("ROLLBACK")
    return dict(zip(expressions, types, strict=False))


def apply_rules(definition: TableDefinition, masking: Masking) -> TableDefinition:
    """The table as its rules let it reach the reporting side: dropped columns gone; an emptied,
    hashed or computed column selected as such by the source (a hash is text; a computed one has
    its expression's type), without the default, identity or sequence of the source's column;
    the source's keys, checks, indexes and statistics left out where they involve a column the
    rules drop or change (a primary key or unique constraint on hashed columns is kept: joins on
    a hashed key stay as fast). A strict table's column the rules do not name refuses the table."""
    table_rules = masking.rules
    unnamed = [c.name for c in definition.columns if table_rules.of(c.name) is None]
    rule = {c.name: table_rules.of(c.name) or KEEP for c in definition.columns}
    columns = []
    for column in definition.columns:
        action = rule[column.name].action
        plain = dict(default=None, identity="", sequence=None, sequence_schema=None)
        if action == "keep":
            columns.append(column)
        elif action == "null":
            columns.append(dataclasses.replace(column, not_null=False, **plain,
                                               source_sql=f"NULL::{column.type_sql}"))
        elif action == "hash":
            columns.append(dataclasses.replace(column, type_sql="text", collation=None, text_only=False,
                                               **plain, source_sql=hashed(quote_ident(column.name))))
        elif action == "sql":
            kind, text_only = masking.types[column.name]
            columns.append(dataclasses.replace(column, type_sql=kind, not_null=False, collation=None,
                                               text_only=text_only, **plain,
                                               source_sql=f"({rule[column.name].sql})::{kind}"))
    kept = {name for name, r in rule.items() if r.action == "keep"}
    keyable = kept | {name for name, r in rule.items() if r.action == "hash"}
    constraints = [c for c in definition.constraints
                   if set(c.columns) <= (keyable if c.kind in ("p", "u") else kept)]
    indexes = [(name, statement) for name, statement in definition.indexes
               if set(definition.index_columns.get(name, [])) <= kept]
    masked = [quote_ident(name) for name in rule if name not in kept]
    statistics = [st for st in definition.extended_statistics if not any(
        re.search(rf"(?<![\w\"]){re.escape(name)}(?![\w\"])", st.columns) for name in masked)]
    refused = ""
    if unnamed:
        refused = (f"column {', '.join(map(repr, unnamed))} of {definition.table.qualified} on the source is "
                   f"not named by its rules, which are strict ({masking.origin}): name each in "
                   f"[tables.\"{table_rules.written}\"] columns, e.g. {unnamed[0]} = \"drop\" (or \"keep\", "
                   f"\"null\", \"hash\"); the table keeps last night's rows until then")
    return dataclasses.replace(
        definition, columns=columns, constraints=constraints, indexes=indexes,
        extended_statistics=statistics,
        column_statistics=[row for row in definition.column_statistics if row[0] in rule
                           and rule[row[0]].action != "drop"],
        column_comments={c: text for c, text in definition.column_comments.items()
                         if rule.get(c, KEEP).action != "drop"},
        where=table_rules.where, refused=refused, masked=table_rules.masks,
        computed=any(r.action == "sql" for r in rule.values()),
        left_out=[c.name for c in definition.constraints if c not in constraints]
        + [name for name, statement in definition.indexes if (name, statement) not in indexes])


def withheld(exc: BaseException, definition: TableDefinition) -> BaseException:
    """An error the source raised while it read a table whose rules mask it, without its text:
    that text can quote a value (invalid input syntax for type date: "..."), and a raw value of a
    masked column must not leave the source, not even in an error. A lost connection is not
    about a value: it stays as it is (and is retried)."""
    if not definition.masked or not isinstance(exc, psycopg2.Error) or is_connection_error(exc):
        return exc
    try:
        condition = psycopg2.errorcodes.lookup(exc.pgcode).lower()
    except KeyError:  # no code, or one newer than this psycopg2
        condition = type(exc).__name__
    return TableCopyError(
        f"the source failed to read {definition.table.qualified} as its rules select it ({condition}, "
        f"SQLSTATE {exc.pgcode}); the message is withheld: it may quote a value the rules mask. "
        f"Check the rules' expressions and where condition against the source's rows")


def with_rules(src, units: list[Unit], settings: dict) -> list[Unit]:
    """The units, each table with its rules (checked against the source), when there are rules."""
    document, origin = load_rules(settings)
    if not document:
        return units
    masks = check_rules(src, document, origin, settings["source"].get("hash_salt"))
    return [dataclasses.replace(u, source=dataclasses.replace(u.source, masking=masks.get(u.source.table)))
            for u in units]


def load_rules(settings: dict) -> tuple[list[TableRules], str]:
    """The rules document, if there is one: a local run's file (COPIER_RULES), else the one
    setup wrote to Parameter Store (read with the connection settings). Its form is checked here;
    what it names, against the source (check_rules)."""
    path = os.environ.get(rules.RULES_VARIABLE)
    if path:
        try:
            with open(path, encoding="utf-8") as file:
                return rules.read_rules(file.read(), path), path
        except OSError as exc:
            raise RulesError(f"{rules.RULES_VARIABLE}: cannot read {path}: {exc.strerror}") from None
    text, origin = settings.get("rules")
    return (rules.read_rules(text, origin), origin) if text else ([], "")


def warn_if_recovery_may_cancel(conn) -> None:
    """A read replica as the source is fine, but without hot_standby_feedback the replica
    cancels a long COPY (and ends the session holding the run's snapshot) when it replays
    the primary's cleanup of rows that COPY may still need."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_is_in_recovery(), current_setting('hot_standby_feedback'), "
                    "current_setting('max_standby_streaming_delay')")
        in_recovery, feedback, delay = cur.fetchone()
    if in_recovery and feedback == "off" and delay != "-1":
        warning = ("the source is a standby with hot_standby_feedback off: a long copy can be "
                   "cancelled by a conflict with recovery; set hot_standby_feedback = on there")
        warn(warning)


# ---------------------------------------------------------------------------------------------
# Preparing the target: the schemas, types and sequences a staging table needs, made in short transactions
# of their own.


def check_target(dst, tables: list[SourceTable]) -> None:
    """Fail before copying anything when the target would refuse every table anyway."""
    with dst.cursor() as cur:
        for schema in sorted({t.table.schema for t in tables}):
            cur.execute(
                "SELECT CASE WHEN n.oid IS NULL THEN has_database_privilege(current_database(), 'CREATE') "
                "ELSE has_schema_privilege(n.oid, 'CREATE') END "
                "FROM (SELECT 1) one LEFT JOIN pg_namespace n ON n.nspname = %s", (schema,))
            if not cur.fetchone()[0]:
                raise CopierError(f"the target user may not create tables in schema {schema!r}")


# The schemas a target connection found or made: looked up once per connection, not per table
# (a schema that holds the run's tables cannot be dropped without CASCADE meanwhile).
SCHEMAS_FOUND: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def prepare_target(src, dst, definition: TableDefinition) -> None:
    """Create what the staging table needs on the target, in its own short transaction.

    Missing user-defined types are created from the source's definition, and labels the source
    added to an enum are added on the target; nothing here changes what readers see.
    """
    for attempt in range(3):
        try:
            found = SCHEMAS_FOUND.setdefault(dst, set())
            with dst.cursor() as cur:
                for schema in definition.schemas:
                    if schema not in found:
                        ensure_schema(cur, schema)
                        found.add(schema)
            for type_oid in definition.user_types:
                ensure_type(src, dst, type_oid)
            for schema, name, owner in definition.default_sequences:
                ensure_sequence(src, dst, schema, name, owner)
            return
        except (psycopg2.errors.UniqueViolation, psycopg2.errors.DuplicateObject,
                psycopg2.errors.DuplicateSchema, psycopg2.errors.DuplicateTable):
            # Another job created the same schema or type a moment ago (IF NOT EXISTS does
            # not cover a concurrent creation): the next look finds it.
            if attempt == 2:
                raise


def ensure_schema(cur, schema: str) -> None:
    """Create the schema when it is missing, and only then: CREATE SCHEMA IF NOT EXISTS needs
    CREATE on the database even when the schema exists, which a reporting user rarely has."""
    cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
    if cur.fetchone() is None:
        cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))


def ensure_sequence(src, dst, schema: str, name: str, owner: str | None) -> None:
    """A sequence a default uses, made on the target when missing, at the source's position.

    One that another table owns (its serial) comes with that table's copy instead.
    """
    ident = sql.Identifier(schema, name)
    with dst.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = %s AND c.relname = %s", (schema, name))
        if cur.fetchone() is not None:
            return
    if owner is not None:
        raise TableCopyError(f"a default uses sequence {quote_qualified(schema, name)}, which belongs "
                             f"to table {owner}: copy {owner} first")
    with src.cursor() as cur:
        cur.execute("SELECT format_type(seqtypid, NULL), seqincrement, seqmin, seqmax, seqstart, "
                    "seqcache, seqcycle FROM pg_sequence WHERE seqrelid = %s::regclass",
                    (ident.as_string(cur),))
        type_sql, increment, minimum, maximum, start, cache, cycle = cur.fetchone()
        cur.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(ident))
        last_value, is_called = cur.fetchone()
    with dst.cursor() as cur:
        ensure_schema(cur, schema)
        cur.execute("BEGIN")  # made and positioned together, or not at all
        try:
            cur.execute(sql.SQL(
                "CREATE SEQUENCE {} AS {} INCREMENT BY {} MINVALUE {} MAXVALUE {} START WITH {} CACHE {} {}"
            ).format(ident, sql.SQL(type_sql),
                     *map(sql.Literal, (increment, minimum, maximum, start, cache)),
                     sql.SQL("CYCLE" if cycle else "NO CYCLE")))
            cur.execute("SELECT setval(%s::regclass, %s, %s)", (ident.as_string(cur), last_value, is_called))
            cur.execute("COMMIT")
        except BaseException:
            if not dst.closed:
                cur.execute("ROLLBACK")
            raise


# Kinds of user-defined types the copier makes on the target when missing: enums, domains,
# composite types and ranges. An extension's base types need the extension there.
USER_TYPE_KINDS = ("e", "d", "c", "r")


SOURCE_TYPE_QUERY = """
SELECT n.nspname, t.typname, t.typtype, format_type(t.typbasetype, t.typtypmod), t.typbasetype,
       t.typnotnull, t.typdefault,
       (SELECT array_agg(enumlabel ORDER BY enumsortorder) FROM pg_enum WHERE enumtypid = t.oid),
       (SELECT array_agg(format('CONSTRAINT %%I %%s', conname, pg_get_constraintdef(oid))
        ORDER BY conname) FROM pg_constraint WHERE contypid = t.oid),
       (SELECT relkind FROM pg_class WHERE oid = t.typrelid)
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.oid = %s
"""


# A composite type's attributes: name, type, collation when not the type's own, type OID.
COMPOSITE_ATTRIBUTES_QUERY = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod),
       CASE WHEN a.attcollation <> t.typcollation AND a.attcollation <> 0 THEN
           (SELECT quote_ident(cn.nspname) || '.' || quote_ident(co.collname)
            FROM pg_collation co JOIN pg_namespace cn ON cn.oid = co.collnamespace
            WHERE co.oid = a.attcollation) END,
       a.atttypid
FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = (SELECT typrelid FROM pg_type WHERE oid = %s) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""


def range_query(server_version: int) -> str:
    """A range type's subtype; its difference and canonical functions, operator class and
    collation when set and not the default; and (PostgreSQL 14 on) its multirange's name."""
    multirange = "(SELECT typname FROM pg_type WHERE oid = r.rngmultitypid)" if server_version >= 140000 \
        else "NULL"
    return f"""
SELECT format_type(r.rngsubtype, NULL), r.rngsubtype,
       nullif(r.rngsubdiff, 0)::regproc::text,
       (SELECT quote_ident(cn.nspname) || '.' || quote_ident(co.collname)
        FROM pg_collation co JOIN pg_namespace cn ON cn.oid = co.collnamespace
        WHERE co.oid = r.rngcollation AND r.rngcollation <> 100),
       {multirange},
       (SELECT quote_ident(on_.nspname) || '.' || quote_ident(opc.opcname)
        FROM pg_opclass opc JOIN pg_namespace on_ ON on_.oid = opc.opcnamespace
        WHERE opc.oid = r.rngsubopc AND NOT opc.opcdefault),
       nullif(r.rngcanonical, 0)::regproc::text
FROM pg_range r WHERE r.rngtypid = %s
"""


@dataclass
class UserType:
    """A user-defined type as the source has it, in the parts needed to make it again."""

    schema: str
    name: str
    kind: str  # pg_type.typtype: e, d, c or r
    base_sql: str | None  # a domain's
    not_null: bool
    default: str | None
    labels: list[str] | None  # an enum's
    checks: list[str] | None  # a domain's constraints
    relkind: str | None  # a composite's: 'c' for a standalone type (not a table's row type)
    attributes: list[tuple]  # a composite's: name, type, collation, the type it needs first
    range: tuple | None  # a range's: subtype, its oid, difference function, collation, multirange

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)


def read_user_type(cur, type_oid: int) -> tuple[UserType, list[int]]:
    """The type, and the user-defined types it is made of (which must exist first)."""
    cur.execute(SOURCE_TYPE_QUERY, (type_oid,))
    (schema, name, kind, base_sql, base_oid, not_null, default, labels, checks,
     relkind) = cur.fetchone()
    attributes, range_row = [], None
    if kind == "c":
        cur.execute(COMPOSITE_ATTRIBUTES_QUERY, (type_oid,))
        attributes = cur.fetchall()
    elif kind == "r":
        cur.execute(range_query(cur.connection.server_version), (type_oid,))
        range_row = cur.fetchone()
    parts = [base_oid] + [row[3] for row in attributes] + ([range_row[1]] if range_row else [])
    # An array's element is what must exist (mood[] needs mood); a domain over an array is a
    # type of its own, made after its element.
    cur.execute("SELECT e.oid FROM pg_type t JOIN pg_type e ON e.oid = CASE WHEN t.typtype = 'b' "
                "AND t.typcategory = 'A' THEN t.typelem ELSE t.oid END "
                "WHERE t.oid = ANY(%s) AND e.oid >= %s AND e.typtype = ANY(%s)",
                (parts, FIRST_NORMAL_OID, list(USER_TYPE_KINDS)))
    user_type = UserType(schema, name, kind, base_sql, not_null, default, labels, checks, relkind,
                         attributes, range_row)
    return user_type, [row[0] for row in cur.fetchall()]


def ensure_type(src, dst, type_oid: int) -> None:
    """Make a user-defined type the table uses on the target, after the types it is made of.

    An enum gets the labels the source added; a domain, composite or range the target already
    has is left as it is.
    """
    with src.cursor() as cur:
        user_type, dependencies = read_user_type(cur, type_oid)
    for dependency in dependencies:
        ensure_type(src, dst, dependency)
    with dst.cursor() as cur:
        ensure_schema(cur, user_type.schema)
        cur.execute(
            "SELECT (SELECT array_agg(enumlabel) FROM pg_enum WHERE enumtypid = t.oid) "
            "FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
            "WHERE n.nspname = %s AND t.typname = %s", (user_type.schema, user_type.name))
        existing = cur.fetchone()
        if user_type.kind == "e" and existing is not None:
            add_enum_labels(cur, user_type, set(existing[0] or []))
        elif existing is None:
            moment("creating_type", name=TableName(user_type.schema, user_type.name).qualified)
            create_type(cur, user_type)


def add_enum_labels(cur, enum: UserType, have: set[str]) -> None:
    for before, label in zip([None, *enum.labels], enum.labels, strict=False):
        if label not in have:
            position = sql.SQL(" AFTER {}").format(sql.Literal(before)) if before else sql.SQL("")
            cur.execute(sql.SQL("ALTER TYPE {} ADD VALUE IF NOT EXISTS {}{}").format(
                enum.ident, sql.Literal(label), position))


def create_type(cur, user_type: UserType) -> None:
    if user_type.kind == "e":
        cur.execute(sql.SQL("CREATE TYPE {} AS ENUM ({})").format(
            user_type.ident, sql.SQL(", ").join(map(sql.Literal, user_type.labels))))
    elif user_type.kind == "d":
        statement = sql.SQL("CREATE DOMAIN {} AS {}").format(user_type.ident, sql.SQL(user_type.base_sql))
        if user_type.default is not None:
            statement += sql.SQL(" DEFAULT {}").format(sql.SQL(user_type.default))
        if user_type.not_null:
            statement += sql.SQL(" NOT NULL")
        for check in user_type.checks or []:
            statement += sql.SQL(" ") + sql.SQL(check)
        cur.execute(statement)
    elif user_type.kind == "c" and user_type.relkind == "c":  # a table's row type needs the table
        cur.execute(sql.SQL("CREATE TYPE {} AS ({})").format(user_type.ident, sql.SQL(", ").join(
            sql.SQL("{} {}{}").format(sql.Identifier(attribute), sql.SQL(type_sql),
                                      sql.SQL(f" COLLATE {collation}" if collation else ""))
            for attribute, type_sql, collation, _ in user_type.attributes)))
    elif user_type.kind == "r":
        subtype_sql, _, difference, collation, multirange, opclass, canonical = user_type.range
        options = [sql.SQL("subtype = {}").format(sql.SQL(subtype_sql))]
        if opclass:
            options.append(sql.SQL("subtype_opclass = {}").format(sql.SQL(opclass)))
        if difference:
            options.append(sql.SQL("subtype_diff = {}").format(sql.SQL(difference)))
        if canonical:
            options.append(sql.SQL("canonical = {}").format(sql.SQL(canonical)))
        if collation:
            options.append(sql.SQL("collation = {}").format(sql.SQL(collation)))
        if multirange and cur.connection.server_version >= 140000:
            options.append(sql.SQL("multirange_type_name = {}").format(
                sql.Identifier(user_type.schema, multirange)))
        cur.execute(sql.SQL("CREATE TYPE {} AS RANGE ({})").format(
            user_type.ident, sql.SQL(", ").join(options)))


# ---------------------------------------------------------------------------------------------
# One table's copy: stage, load, index, verify, analyze, swap. TableCopier runs the steps, with retries
# after a lost connection or snapshot; the functions below it are the steps, in that order.


class TableCopier:
    """One worker's pair of connections and the copy of each of its tables."""

    def __init__(self, settings: dict, options: Options, plan: Plan, shared: RunShared, job: int):
        self.settings, self.options, self.plan, self.shared, self.job = settings, options, plan, shared, job
        self.snapshot: str | None = None  # the name this try imports
        self.src = self.dst = None

    def connect(self, table: str) -> None:
        """Both connections, waiting out an outage of either database (up to the budget)."""
        if self.src is None:
            self.src = connect_waiting(self.settings["source"], "source", self.shared.outages,
                                       job=self.job, table=table)
        if self.dst is None:
            self.dst = connect_waiting(self.settings["target"], "target", self.shared.outages,
                                       job=self.job, table=table)

    def close(self) -> None:
        for conn in (self.src, self.dst):
            if conn is not None:
                try:
                    conn.close()
                except psycopg2.Error:
                    pass
        self.src = self.dst = None

    def lost_connections(self) -> list[str]:
        """Which connections broke (psycopg2 marks them closed=2), whatever error it raised."""
        pairs = (("source", self.src), ("target", self.dst))
        return [role for role, conn in pairs if conn is not None and conn.closed == 2]

    def copy(self, unit: Unit) -> TableResult:
        """One unit, tried again after a lost connection or snapshot: its result and its line."""
        source, name = unit.source, unit.name
        started = time.monotonic()
        self.steps = Steps()
        for attempt in range(self.options.retries + 1):
            self.snapshot, generation = self.shared.snapshot.current()
            try:
                with self.steps.timing("wait"):
                    self.connect(name)
                if attempt or generation > 1:
                    source = self.found_again(source)
                staged = self.step(dataclasses.replace(unit, source=source))
            except KeyboardInterrupt:
                self.close()
                raise
            except Exception as exc:  # noqa: BLE001 - every failure becomes this unit's result
                if INTERRUPTED.is_set():  # psycopg2 turns a signal inside COPY into its own error
                    self.close()
                    raise Interrupted() from None
                lost = self.lost_connections()
                if isinstance(exc, psycopg2.errors.DiskFull) and not lost:
                    exc = TableCopyError(disk_full(self.dst, exc, source))
                # A failed copy can leave a connection mid-COPY: start the next try afresh.
                self.close()
                error = describe_error(exc)
                if lost:
                    error = f"lost the connection to the {' and '.join(lost)} database: {error}"
                if isinstance(exc, SnapshotLost) and self.options.snapshot == "strict":
                    error += " (--snapshot strict: no table may come from a later snapshot)"
                try:
                    if attempt < self.options.retries and self.ready_to_retry(
                            exc, lost, name, attempt, error, generation):
                        continue
                except CopierError as renewal:
                    error = str(renewal)
                seconds = round(time.monotonic() - started, 2)
                log_event(runlog.TABLE_FAILED, table=source.table.qualified, job=self.job, error=error,
                          seconds=seconds, attempts=attempt + 1, **unit_fields(unit, self.plan),
                          steps=self.steps.rounded())
                return TableResult(source.table.qualified, False, seconds=seconds, error=error,
                                   attempts=attempt + 1, unit=name, part=unit.part,
                                   steps=self.steps.rounded())
            seconds = round(time.monotonic() - started, 2)
            result = TableResult(source.table.qualified, True, staged.rows, staged.bytes, seconds,
                                 attempts=attempt + 1, snapshot=generation, unit=name, part=unit.part,
                                 unchanged=bool(staged.unchanged), steps=self.steps.rounded())
            self.report(unit, staged, result)
            return result
        raise AssertionError("unreachable")

    def report(self, unit: Unit, staged: StagedTable, result: TableResult) -> None:
        """The unit's line; a table still to be swapped keeps its staged table in the result."""
        fields = {"table": result.table, "job": self.job, "rows": staged.rows, "bytes": staged.bytes,
                  "seconds": result.seconds, "snapshot": result.snapshot,
                  **unit_fields(unit, self.plan), "steps": result.steps}
        if unit.step == "finish":
            fields["slices"] = staged.slices
        if staged.unchanged:
            log_event(runlog.TABLE_UNCHANGED, found=staged.unchanged, **fields)
        elif unit.step == "load":
            log_event(runlog.TABLE_LOADED, **fields)
        elif unit.step == "slice":
            log_event(runlog.SLICE_LOADED, **fields)
        elif staged.blocked:
            result.staged = staged
            log_event(runlog.SWAP_DEFERRED, reason=staged.blocked, **fields)
        elif result.table in self.plan.late_swaps:
            result.staged = staged
            log_event(runlog.TABLE_STAGED, **fields)
        else:
            log_event(runlog.TABLE_COPIED, **fields)
        result.foreign_keys = staged.foreign_keys

    def found_again(self, source: SourceTable) -> SourceTable:
        """The table looked up by name again: after a lost connection the source may be another
        server (a failover to a logical replica, say), where the OID read at the start is not it."""
        with self.src.cursor() as cur:
            cur.execute("SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
                        (source.table.schema, source.table.name))
            row = cur.fetchone()
        if row is None:
            raise TableCopyError(f"{source.table.qualified} no longer exists on the source")
        return dataclasses.replace(source, oid=row[0], definition=None)

    def ready_to_retry(self, exc: Exception, lost: list[str], name: str, attempt: int,
                       error: str, generation: int) -> bool:
        """Whether another try can succeed where this one failed; waits for what it needs.

        A lost connection is retried after a backoff, and the next try's connect() waits out
        an outage; a lost snapshot is renewed first (unless --snapshot strict).
        """
        if isinstance(exc, SnapshotLost):
            if self.options.snapshot == "strict":
                return False
            log_event(runlog.TABLE_RETRY, table=name, attempt=attempt + 1, error=error, wait_seconds=0)
            self.shared.snapshot.renew(generation)
            return True
        if lost or is_connection_error(exc):
            delay = backoff(attempt, self.options.retry_delay)
            log_event(runlog.TABLE_RETRY, table=name, attempt=attempt + 1,
                      error=error, wait_seconds=round(delay, 1))
            time.sleep(delay)
            return True
        return False

    def step(self, unit: Unit) -> StagedTable:
        return {"copy": self.copy_once, "load": self.load_whole, "slice": self.load_slice,
                "finish": self.finish}[unit.step](unit)

    def copy_once(self, unit: Unit) -> StagedTable:
        """Stage, load, index, verify, analyze and (per-table mode) swap: one transaction.

        A table the last run found unchanged is read and hashed first: if it is still what the
        reporting table holds, that is all. Any other is copied at once; if its rows turn out to
        be what the reporting table holds, its staging is rolled back before any index is built.
        """
        definition = self.prepared(unit.source)
        known = unit.source.fingerprint
        if self.worth_a_look(definition, known) and (same := self.unchanged_before_loading(definition,
                                                                                            known)):
            return self.keep_unchanged(definition, same)
        try:
            with transaction(self.dst) as cur:
                with self.steps.timing("stage"):
                    staged = stage_table(cur, definition)
                staged.tied = not unit.source.untied
                self.load_verified(definition, staged)
                if known and self.holds_already(cur, definition, staged, known):
                    raise Unchanged()
                self.complete(cur, definition, staged)
        except Unchanged:
            staged.unchanged = "after loading"
            return self.keep_unchanged(definition, staged)
        return staged

    def load_whole(self, unit: Unit) -> StagedTable:
        """The load phase: stage and load a table, and leave it for the publish phase. A table the
        last run found unchanged is hashed first; if it still is, only a note says so."""
        definition = self.prepared(unit.source)
        known = unit.source.fingerprint
        look = self.worth_a_look(definition, known)
        same = self.unchanged_before_loading(definition, known) if look else None
        with transaction(self.dst) as cur:
            with self.steps.timing("stage"):
                staged = stage_table(cur, definition)
            if same is None:
                self.load_verified(definition, staged)
            else:
                staged.rows, staged.bytes, staged.digests = same.rows, same.bytes, same.digests
                staged.source_record = same.source_record
            note = StagingNote.new(self.note_run(unit), 1, definition, staged)
            note.loaded["1"] = self.loaded_part(staged, [])
            note.unchanged, note.found = (known.value, same.unchanged) if same else ("", "")
            note.write(cur, staged)
        return staged

    @staticmethod
    def can_prove(definition: TableDefinition, known: Fingerprint) -> bool:
        """The last run recorded its read, and the run read the table's state on the source."""
        return bool(known.source and definition.state_on_source)

    def worth_a_look(self, definition: TableDefinition, known: Fingerprint | None) -> bool:
        """Whether to look for the table unchanged before loading it: when it can be proved and
        no row was written since (with_source_states), or, where it cannot be proved, when the
        last run found it unchanged (it is read and hashed first). Else it is copied at once, and
        compared after loading: a table written every night costs nothing more."""
        if not known:
            return False
        return known.quiet if self.can_prove(definition, known) else known.unchanged_nights > 0

    def unchanged_before_loading(self, definition: TableDefinition,
                                 known: Fingerprint) -> StagedTable | None:
        """Nothing written: the table as found unchanged, or None when it must be copied (its
        source changed, or the reporting table was written to). The source is proved unchanged
        from its row versions when the last run recorded what that needs, else read and hashed."""
        if self.can_prove(definition, known):
            return self.proved_unchanged(definition, known)
        with self.reporting_check(definition, known) as checked, self.steps.timing("load"):
            same = self.hashed_unchanged(definition, known)
        return same if same and checked["same"] else None

    @contextmanager
    def reporting_check(self, definition: TableDefinition, known: Fingerprint):
        """The reporting table's scan (reporting_table_unchanged), run on the target while the
        body works on the source: two servers side by side. Its verdict is checked["same"]."""
        checked: dict = {}

        def check_the_reporting_table() -> None:
            try:
                with self.dst.cursor() as cur:
                    checked["same"] = reporting_table_unchanged(cur, definition.table, known)
            except BaseException as exc:  # noqa: BLE001 - raised below, in this job's thread
                checked["error"] = exc

        checker = threading.Thread(target=check_the_reporting_table, name="unchanged-check", daemon=True)
        checker.start()
        try:
            yield checked
        finally:
            with self.steps.timing("verify"):  # its own seconds: the wait beyond the body's
                checker.join()
        if "error" in checked:
            raise checked["error"]

    def proved_unchanged(self, definition: TableDefinition, known: Fingerprint) -> StagedTable | None:
        """The source's rows proved to be those the last run recorded, without reading them."""
        last = known.source
        if last["rows"] != known.rows or fingerprint_of(definition, last["digests"]) != known.value:
            return None  # the definition changed (or the record does not belong to this fingerprint)
        same = False
        with self.src.cursor() as cur:
            with self.steps.timing("load"):
                now = begin_read(cur, self.snapshot, definition)
                # Locked, as a COPY would be, then its relations looked at again: no table
                # renamed into place nor partition swapped since the run read its state.
                cur.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(definition.table.ident))
                source = definition.source
                cur.execute(RELATIONS_QUERY, {"name": definition.table.qualified, "oid": source.oid,
                                              "tree": source.kind == "p"})
            if cur.fetchone()[0] == definition.state_on_source.relations:
                with self.reporting_check(definition, known) as checked, self.steps.timing("load"):
                    proved = source_rows_unchanged(cur, definition, last, now)
                same = proved and checked["same"]
            cur.execute("COMMIT")
        if not same:
            return None
        return self.found_unchanged(definition, "before reading", last["rows"], last["bytes"],
                                    last["digests"], {**last, "xmin": now.xmin, "writes": now.writes})

    def hashed_unchanged(self, definition: TableDefinition, known: Fingerprint) -> StagedTable | None:
        """The source read and hashed: its fingerprint is the last run's."""
        rows, nbytes, digest, now = hash_rows(self.src, definition, self.snapshot,
                                              self.progress_reporter(definition.table.qualified))
        if fingerprint_of(definition, {"1": digest}) != known.value:
            return None
        return self.found_unchanged(definition, "before loading", rows, nbytes, {"1": digest},
                                    now.recorded(rows, nbytes, {"1": digest}) if now else None)

    @staticmethod
    def found_unchanged(definition: TableDefinition, found: str, rows: int, nbytes: int,
                        digests: dict[str, str], source: dict | None) -> StagedTable:
        table = definition.table
        return StagedTable(table, table.staging_name(), [], None, {}, rows=rows, bytes=nbytes,
                           digests=digests, unchanged=found, source_record=source)

    def holds_already(self, cur, definition: TableDefinition, staged: StagedTable,
                      known: Fingerprint) -> bool:
        """Whether the rows just loaded are what the reporting table holds already."""
        with self.steps.timing("verify"):
            return (fingerprint_of(definition, staged.digests) == known.value
                    and reporting_table_unchanged(cur, definition.table, known))

    def keep_unchanged(self, definition: TableDefinition, staged: StagedTable) -> StagedTable:
        """An unchanged table keeps its rows; its sequences still move to the source's positions
        (a sequence can move while its table does not), and its fingerprint counts one more run."""
        with self.steps.timing("verify"), transaction(self.dst) as cur:
            set_sequences(self.src, cur, definition, definition.table.qualified)
            record_unchanged(cur, staged, self.options.run)
        return staged

    def load_slice(self, unit: Unit) -> StagedTable:
        """One key range of a table, into the staging table the run's slices of it share."""
        definition = self.prepared(unit.source)
        if unit.key is None:
            raise TableCopyError(
                f"{definition.table.qualified} cannot be cut into slices: it has no single-column "
                f"integer key (primary key or unique index on a NOT NULL column); plan it whole "
                f"(setup_aws.py plans again from the source)")
        (k, n), run = unit.part, self.note_run(unit)
        staged = self.shared_staging(definition, n, run)
        with transaction(self.dst) as cur:
            slicer = Slicer(unit.key, unit.part)
            self.load_verified(definition, staged, slicer)
            cur.execute("SELECT pg_advisory_xact_lock(hashtext('nightly-copier-staging'), hashtext(%s))",
                        (definition.table.qualified,))
            note = read_note(cur, definition.table)
            if note is None or note.run != run:
                raise TableCopyError(f"the staging table of {definition.table.qualified} was replaced "
                                     f"by another run while slice {k}/{n} loaded")
            if str(k) in note.loaded:
                raise TableCopyError(f"slice {k}/{n} of {definition.table.qualified} was already "
                                     f"loaded in run {run}: the unit is listed twice")
            note.loaded[str(k)] = self.loaded_part(staged, slicer.bounds)
            note.write(cur, staged)
        return staged

    def shared_staging(self, definition: TableDefinition, slices: int, run: str) -> StagedTable:
        """The run's staging table for a sliced table: made by the first slice to come (in its
        own committed transaction, so the others can load into it), found by the others."""
        with transaction(self.dst) as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext('nightly-copier-staging'), hashtext(%s))",
                        (definition.table.qualified,))
            note = read_note(cur, definition.table)
            if (note is not None and note.run == run and note.slices == slices
                    and note.columns == columns_digest(definition)):
                staged = note.staged_table(definition)
                staged.rows = staged.bytes = 0
                return staged
            staged = stage_table(cur, definition)  # drops what a crashed run left
            StagingNote.new(run, slices, definition, staged).write(cur, staged)
        return staged

    def finish(self, unit: Unit) -> StagedTable:
        """The publish step of a table the run loaded (whole or in slices): index, verify,
        analyze and swap it in, in one transaction, as copy_once does after its load; or, when
        its rows are what the reporting table holds already, drop its staging."""
        definition = unit.source.definition or read_definition(self.src, unit.source)
        known = unit.source.fingerprint
        with transaction(self.dst) as cur:
            staged, note = staged_of_run(cur, definition, self.note_run(unit))
            staged.tied = not unit.source.untied
            if note.unchanged:  # the load job found the source unchanged and loaded nothing
                if not (known and known.value == note.unchanged
                        and self.holds_already(cur, definition, staged, known)):
                    raise TableCopyError(
                        f"the reporting table {definition.table.qualified} was written to (or its "
                        f"fingerprint changed) after the load job found its source unchanged: it keeps "
                        f"its rows tonight, and the next run copies it")
                staged.unchanged = note.found or "before loading"
            elif known and self.holds_already(cur, definition, staged, known):
                staged.unchanged = "after loading"
            if staged.unchanged:
                cur.execute(sql.SQL("DROP TABLE {}").format(staged.ident))
            else:
                cur.execute(sql.SQL("COMMENT ON TABLE {} IS NULL").format(staged.ident))
                self.complete(cur, definition, staged)
        return self.keep_unchanged(definition, staged) if staged.unchanged else staged

    def note_run(self, unit: Unit) -> str:
        # A table loaded again (its slices came from two snapshots) gets a staging of its own.
        return f"{self.options.run}/{unit.attempt}" if unit.attempt else self.options.run

    def loaded_part(self, staged: StagedTable, bounds: list[int]) -> dict:
        return {"rows": staged.rows, "bytes": staged.bytes, "bounds": bounds,
                "snapshot": self.shared.snapshot_identity(),
                "digest": next(iter(staged.digests.values()), None),
                "xid": staged.loaded_by[-1] if staged.loaded_by else None,
                "source": staged.source_record}

    def prepared(self, source: SourceTable) -> TableDefinition:
        """The table's definition, refused or with what its staging table needs on the target."""
        with self.steps.timing("stage"):
            if source.refused:
                raise TableCopyError(source.refused)
            definition = source.definition or read_definition(self.src, source)
            if definition.refused:
                raise TableCopyError(definition.refused)
            if not source.untied:
                with self.dst.cursor() as cur:
                    refuse_what_cannot_survive(cur, definition.table)
            prepare_target(self.src, self.dst, definition)
        return definition

    def load_verified(self, definition: TableDefinition, staged: StagedTable,
                      slicer: Slicer | None = None) -> None:
        """The rows loaded, counted against what the source sent, with the hash of their stream
        and the transaction that wrote them (for the fingerprint)."""
        with self.steps.timing("load"):
            source_rows, loaded, nbytes, digest, source = self.load(definition, staged, slicer)
        with self.steps.timing("verify"), self.dst.cursor() as cur:
            verify_counts(definition.table, source_rows, loaded)
            cur.execute("SELECT pg_current_xact_id()::text::bigint")
            staged.loaded_by = [cur.fetchone()[0]]
        staged.rows, staged.bytes = loaded, nbytes
        staged.digests = {str(slicer.part[0]) if slicer else "1": digest}
        staged.source_record = source.recorded(loaded, nbytes, staged.digests) if source else None

    def complete(self, cur, definition: TableDefinition, staged: StagedTable) -> None:
        """Keys, indexes, statistics, sequences, ANALYZE and (per-table mode) the swap, which
        records the table's fingerprint with it."""
        staged.fingerprint = fingerprint_of(definition, staged.digests)
        with self.steps.timing("index"):
            build_indexes(cur, definition, staged, self.options)
            build_reporting_indexes(cur, definition, staged)
            keep_index_tablespaces(cur, definition, staged)
            keep_identity_and_cluster(cur, definition, staged)
            keep_checks_not_nulls_and_defaults(cur, definition, staged)
            keep_comments_and_toast_options(cur, definition, staged)
            set_statistics(cur, definition, staged)
            set_sequences(self.src, cur, definition, staged.quoted)
            keep_sequences_shared_with_another_table(cur, definition)
        with self.steps.timing("analyze"):
            cur.execute(sql.SQL("ANALYZE {}").format(staged.ident))
        if definition.table.qualified in self.plan.late_swaps:
            return
        try:
            staged.foreign_keys = swap_into_place(cur, staged, self.options, steps=self.steps)
        except SwapBlocked as exc:  # kept staged: swapped after the other tables
            staged.blocked = str(exc)
            return
        if self.plan.fingerprints:
            record_fingerprint(cur, staged, self.options.run)

    def load(self, definition: TableDefinition, staged: StagedTable,
             slicer: Slicer | None = None) -> tuple[int, int, int, str, SourceState | None]:
        try:
            return load_rows(self.src, self.dst, definition, staged, self.snapshot,
                             self.progress_reporter(definition.table.qualified), slicer)
        except psycopg2.errors.CheckViolation as exc:
            if not staged.partitioned or "no partition" not in str(exc):
                raise
            raise TableCopyError(
                f"a row of {definition.table.qualified} fits none of the reporting table's partitions "
                f"({exc.diag.message_detail or first_line(exc)}): add a partition for it on the reporting "
                f"side, or a default one (CREATE TABLE ... PARTITION OF {definition.table.qualified} "
                f"DEFAULT)") from None

    def progress_reporter(self, table: str):
        started = time.monotonic()
        due = started + self.options.progress_seconds

        def on_progress(nbytes: int) -> None:
            nonlocal due
            now = time.monotonic()
            if now >= due:
                due = now + self.options.progress_seconds
                report_progress(table, nbytes, now - started)

        return on_progress


def report_progress(table: str, nbytes: int, seconds: float) -> None:
    log_event(runlog.TABLE_PROGRESS, table=table, bytes=nbytes, seconds=round(seconds, 1),
              mb_per_s=round(nbytes / 1e6 / seconds, 1) if seconds else None)
    moment("loading", table=table, bytes=nbytes)


def unit_fields(unit: Unit, plan: Plan) -> dict:
    """What a unit's JSON line says beyond its table: the slice, and the phase of a split run."""
    fields = {"slice": f"{unit.part[0]}/{unit.part[1]}"} if unit.part else {}
    return {**fields, "phase": plan.phase} if plan.phase != "all" else fields


class Steps:
    """Where a unit's time went: seconds by step (runlog.STEPS), summed over its tries."""

    def __init__(self, seconds: dict[str, float] | None = None):
        self.seconds = dict(seconds or {})

    @contextmanager
    def timing(self, step: str):
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[step] = self.seconds.get(step, 0.0) + time.monotonic() - started

    def rounded(self) -> dict[str, float]:
        return {step: round(self.seconds[step], 3) for step in runlog.STEPS if step in self.seconds}


@dataclass
class TableResult:
    table: str
    ok: bool
    rows: int = 0
    bytes: int = 0
    seconds: float = 0.0
    error: str = ""
    attempts: int = 1
    staged: StagedTable | None = None
    foreign_keys: list[ForeignKey] = dataclasses.field(default_factory=list)  # to validate or make
    snapshot: int = 1  # which of the run's snapshots it was read from (a lost one is renewed)
    unit: str = ""  # the unit's name: the table's, or 'table#k/n' for a slice
    part: Slice | None = None
    unchanged: bool = False  # the reporting table held its rows already: nothing was written
    steps: dict[str, float] = dataclasses.field(default_factory=dict)  # seconds by runlog.STEPS


@dataclass
class Rename:
    kind: str  # "index", "constraint", "sequence" or "statistics"
    temporary: str
    final: str
    schema: str | None = None  # where it lives, when not in the table's schema


@dataclass
class StagedTable:
    table: TableName
    staging: str
    renames: list[Rename]
    comment: str | None
    column_comments: dict[str, str]
    rows: int = 0
    bytes: int = 0
    foreign_keys: list = dataclasses.field(default_factory=list)  # ForeignKeys still to validate
    blocked: str = ""  # why its swap waits for the end of the run (readers held the table)
    replaces: bool = True  # a live reporting table was there when it was staged
    tied: bool = True  # False: nothing on the reporting side was tied to it when the run started
    extras: ReportingExtras | None = None  # the live reporting table's own, once read
    partitioned: bool = False
    # (schema, temporary name, final name) of each partition
    partitions: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    slices: int = 1  # how many key ranges it was loaded in
    # What identifies its rows: the hash of each part's COPY stream ("k": hex digest), and the
    # transactions that wrote them (pg_current_xact_id), for the fingerprint its swap records.
    digests: dict[str, str] = dataclasses.field(default_factory=dict)
    loaded_by: list[int] = dataclasses.field(default_factory=list)
    fingerprint: str = ""  # fingerprint_of its definition and digests, once loaded completely
    unchanged: str = ""  # found unchanged: "before reading", "before loading" or "after loading"
    source_record: dict | None = None  # the source as read (SourceState.recorded), for the fingerprint

    def made_as(self, final: str, *kinds: str) -> str | None:
        """The temporary name of the part (of one of kinds) that the swap renames to final."""
        return next((r.temporary for r in self.renames if r.final == final and r.kind in kinds), None)

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.table.schema, self.staging)

    @property
    def quoted(self) -> str:
        return quote_qualified(self.table.schema, self.staging)


# --- stage: an empty table with the source's columns, made as the reporting table is (unlogged,
#     partitioned, in its tablespace)


def stage_table(cur, definition: TableDefinition) -> StagedTable:
    """Create an empty staging table with the source's columns, defaults and checks."""
    table = definition.table
    staged = StagedTable(table, table.staging_name(), [], definition.comment,
                         dict(definition.column_comments))
    sequences = owned_sequences(definition, staged)
    columns = repoint_defaults(definition.columns, sequences, table.schema)
    column_sql = [
        column_definition(c, quote_qualified(table.schema, sequences[c.name])
                          if c.name in sequences else None)
        for c in columns
    ]
    column_sql += [
        sql.SQL("CONSTRAINT {} {}").format(sql.Identifier(c.name), sql.SQL(c.definition))
        for c in definition.constraints if c.kind == "c" and c.validated
    ]
    # One round trip for the usual case: a leftover staging table dropped, the staging table
    # created as a plain one, and what the live reporting table is, which may ask for another.
    create = sql.SQL("CREATE {}TABLE {} ({})")
    cur.execute(sql.SQL("; ").join([
        sql.SQL("DROP TABLE IF EXISTS {}").format(staged.ident),
        *(sql.SQL("CREATE SEQUENCE {}").format(sql.Identifier(table.schema, sequence))
          for sequence in sequences.values()),
        create.format(sql.SQL(""), staged.ident, sql.SQL(", ").join(column_sql)),
        # No parameters: a default or a check may hold a % of its own.
        sql.SQL(prepared_statement(cur, "copier_live_table", LIVE_TABLE_QUERY, table.schema, table.name))]))
    live_oid, unlogged, kind, tablespace, column_storage = cur.fetchone() or (None, False, None, None, [])
    staged.replaces = live_oid is not None
    # Someone made the reporting table UNLOGGED (fast, but emptied by a crash, and rebuilt
    # nightly anyway): the new one stays so, and loads without WAL too.
    persistence = sql.SQL("UNLOGGED " if unlogged else "")
    layout = staged_layout(cur, definition, live_oid if kind == "p" else None)
    statement = create.format(persistence, staged.ident, sql.SQL(", ").join(column_sql))
    # A DBA moved the reporting table to a tablespace of its own: the new one is made there.
    placed = sql.SQL(" TABLESPACE {}").format(sql.Identifier(tablespace)) if tablespace else sql.SQL("")
    if unlogged or tablespace or layout is not None:
        cur.execute(sql.SQL("DROP TABLE {}").format(staged.ident))
    if layout is None:
        if unlogged or tablespace:
            cur.execute(statement + placed)
    else:
        staged.partitioned = True
        try:
            cur.execute(statement + sql.SQL(" PARTITION BY {}").format(sql.SQL(layout.key)) + placed)
            create_partitions(cur, staged, layout)
        except psycopg2.ProgrammingError as exc:
            raise Refused(
                f"the partitioning of the reporting table {table.qualified} (PARTITION BY {layout.key}) "
                f"does not fit the source's columns: {first_line(exc)}; change it on the reporting side, "
                f"or drop the reporting table to get the source's shape") from None
    for column, sequence in sequences.items():
        cur.execute(sql.SQL("ALTER SEQUENCE {} OWNED BY {}.{}").format(
            sql.Identifier(table.schema, sequence), staged.ident, sql.Identifier(column)))
    keep_column_storage(cur, definition, staged, column_storage)
    for column in definition.columns:
        if column.identity and column.sequence:
            cur.execute(
                "SELECT s.relname FROM pg_depend d JOIN pg_class s ON s.oid = d.objid "
                "JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid "
                "WHERE d.refobjid = %s::regclass AND a.attname = %s AND s.relkind = 'S'",
                (quote_qualified(table.schema, staged.staging), column.name))
            staged.renames.append(Rename("sequence", cur.fetchone()[0], column.sequence))
    return staged


# The live reporting table: its OID, whether it is unlogged, its kind, its tablespace (NULL:
# the database's), and the storage and compression set on its columns other than their type's,
# with the type (attcompression: PostgreSQL 14+).
LIVE_TABLE_QUERY = """
SELECT c.oid, c.relpersistence = 'u', c.relkind,
       (SELECT spcname FROM pg_tablespace WHERE oid = c.reltablespace),
       (SELECT coalesce(json_agg(json_build_array(a.attname, nullif(a.attstorage, t.typstorage),
                                                  nullif(to_jsonb(a) ->> 'attcompression', ''),
                                                  format_type(a.atttypid, a.atttypmod))
                                 ORDER BY a.attnum), '[]')
        FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
        WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
          AND (a.attstorage <> t.typstorage OR to_jsonb(a) ->> 'attcompression' <> ''))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
"""


STORAGE = {"p": "PLAIN", "e": "EXTERNAL", "m": "MAIN", "x": "EXTENDED"}  # pg_attribute.attstorage


COMPRESSION = {"p": "pglz", "l": "lz4"}  # pg_attribute.attcompression


def live_table_oid(cur, table: TableName) -> int | None:
    """The reporting table as it is now on the target, if there is one."""
    cur.execute(prepared_statement(cur, "copier_live_table", LIVE_TABLE_QUERY, table.schema, table.name))
    row = cur.fetchone()
    return row[0] if row else None


def keep_column_storage(cur, definition: TableDefinition, staged: StagedTable, settings: list) -> None:
    """The storage and compression set on the reporting table's columns, on the staged table
    before its load, so tonight's rows are stored that way too. On a column whose type the
    source changed it may no longer apply: it is left out with a warning (no savepoint to try
    it in: COPY FREEZE needs the table made in the same subtransaction)."""
    types = {c.name: c.type_sql for c in definition.columns}
    for name, storage, compression, type_sql in settings:
        changes = [f"SET STORAGE {STORAGE[storage]}"] if storage in STORAGE else []
        changes += [f"SET COMPRESSION {COMPRESSION[compression]}"] if compression in COMPRESSION else []
        if name in types and types[name] != type_sql:
            for change in changes:
                warning = (f"{definition.table.qualified}: column {name}: {change} left out, "
                           f"its type is now {types[name]}")
                warn(warning)
        elif name in types:
            for change in changes:
                cur.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} ").format(
                    staged.ident, sql.Identifier(name)) + sql.SQL(change))


def owned_sequences(definition: TableDefinition, staged: StagedTable) -> dict[str, str]:
    """A staging sequence for each serial column (by column), renamed to the source's name at
    the swap; stage_table creates them."""
    sequences = {}
    for n, column in enumerate(definition.columns):
        if column.sequence and not column.identity:
            temporary = f"{staged.staging}_s{n}"
            staged.renames.append(Rename("sequence", temporary, column.sequence))
            sequences[column.name] = temporary
    return sequences


# How a default names its sequence: nextval('public.orders_id_seq'::regclass).
SEQUENCE_IN_DEFAULT = re.compile(r"nextval\(('(?:[^']|'')*'::regclass)\)")


def repoint_defaults(columns: list[Column], sequences: dict[str, str], schema: str) -> list[Column]:
    """Another column whose default uses a serial column's sequence uses its staging sequence
    too: the source's name does not exist on the target, or belongs to the table being replaced."""
    staging = {}
    for column in columns:
        match = SEQUENCE_IN_DEFAULT.search(column.default or "")
        if column.name in sequences and match:
            literal = "'" + quote_qualified(schema, sequences[column.name]).replace("'", "''") + "'"
            staging[match.group(1)] = literal + "::regclass"
    repointed = []
    for column in columns:
        default = column.default
        if column.name not in sequences and default:
            for source_name, staging_name in staging.items():
                default = default.replace(source_name, staging_name)
        repointed.append(dataclasses.replace(column, default=default))
    return repointed


def default_not_null_name(table: str, column: str) -> str:
    """The name PostgreSQL 18 gives a column's NOT NULL constraint (makeObjectName: the table's
    and the column's names cut to fit 63 bytes), for a source older than 18, which has none.
    Named on the staged table, the constraint does not keep the staging table's name."""
    first, second, label = table.encode(), column.encode(), "not_null"
    available = 63 - 1 - len(label) - 1
    first_length, second_length = len(first), len(second)
    while first_length + second_length > available:
        if first_length > second_length:
            first_length -= 1
        else:
            second_length -= 1
    return "_".join([first[:first_length].decode(errors="ignore"),
                     second[:second_length].decode(errors="ignore"), label])


def column_definition(column: Column, staging_sequence: str | None) -> sql.Composable:
    parts = [sql.Identifier(column.name), sql.SQL(column.type_sql)]
    if column.collation:
        parts.append(sql.SQL("COLLATE " + column.collation))
    if column.generated:
        parts.append(sql.SQL("GENERATED ALWAYS AS ({}) STORED").format(sql.SQL(column.default)))
    elif column.identity:
        kind = "ALWAYS" if column.identity == "a" else "BY DEFAULT"
        parts.append(sql.SQL(f"GENERATED {kind} AS IDENTITY"))
    elif staging_sequence:
        parts.append(sql.SQL("DEFAULT nextval({}::regclass)").format(
            sql.Literal(staging_sequence)))
    elif column.default is not None:
        parts.append(sql.SQL("DEFAULT {}").format(sql.SQL(column.default)))
    if column.not_null:  # the name is ignored before PostgreSQL 18
        parts.append(sql.SQL("CONSTRAINT {} NOT NULL").format(sql.Identifier(column.not_null_name)))
    return sql.SQL(" ").join(parts)


def column_list(columns: list[Column]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(c.name) for c in columns)


def staged_layout(cur, definition: TableDefinition, oid: int | None) -> PartitionLayout | None:
    """The reporting table's own partitioning (oid: the live table, when partitioned);
    partitions the source added since (same key, a name the reporting side lacks) join it, so
    a new month appears the same night on both sides."""
    layout = read_partition_layout(cur, oid) if oid is not None else None
    source = definition.partitions
    if layout is None or source is None or source.key != layout.key:
        return layout
    have = {(p.schema, p.name) for p in layout.partitions}
    have.add((definition.table.schema, definition.table.name))
    for partition in source.partitions:
        if (partition.schema, partition.name) not in have and partition.parent in have:
            layout.partitions.append(dataclasses.replace(partition, tablespace=None))  # the source's
            have.add((partition.schema, partition.name))
    return layout


def create_partitions(cur, staged: StagedTable, layout: PartitionLayout) -> None:
    table = staged.table
    made = {(table.schema, table.name): staged.ident}
    for n, partition in enumerate(layout.partitions, 1):
        temporary = sql.Identifier(partition.schema, f"{staged.staging}_p{n}")
        statement = sql.SQL("CREATE TABLE {} PARTITION OF {} {}").format(
            temporary, made[partition.parent], sql.SQL(partition.bound))
        if partition.key:
            statement += sql.SQL(" PARTITION BY {}").format(sql.SQL(partition.key))
        if partition.options:
            statement += sql.SQL(" WITH ({})").format(sql.SQL(", ").join(map(sql.SQL, partition.options)))
        if partition.tablespace:
            statement += sql.SQL(" TABLESPACE {}").format(sql.Identifier(partition.tablespace))
        cur.execute(statement)
        made[(partition.schema, partition.name)] = temporary
        staged.renames.append(Rename("table", f"{staged.staging}_p{n}", partition.name, partition.schema))
        staged.partitions.append((partition.schema, f"{staged.staging}_p{n}", partition.name))


# --- a staging table that outlives its transaction: a run split over machines, a table cut into slices


# A run split over machines (or a table cut into slices) leaves its staging tables committed
# between the steps: each carries a note, as its comment, of what was loaded into it and by which
# run, so the step that finishes the table can tell complete from partial, or from another run's.
STAGING_NOTE = "nightly-copy staging: "


@dataclass
class StagingNote:
    run: str
    slices: int
    columns: str  # fingerprint of the source's columns when it was staged
    staged: dict  # the staged table's parts to rename at the swap
    # "k": rows, bytes, bounds, snapshot, digest (of its COPY stream), xid (that loaded it)
    loaded: dict[str, dict] = dataclasses.field(default_factory=dict)
    unchanged: str = ""  # the load job found the source as the fingerprint says: nothing loaded
    found: str = ""  # how: "before reading" or "before loading"

    @classmethod
    def new(cls, run: str, slices: int, definition: TableDefinition, staged: StagedTable) -> StagingNote:
        parts = {"renames": [dataclasses.asdict(r) for r in staged.renames],
                 "partitioned": staged.partitioned, "partitions": staged.partitions}
        return cls(run, slices, columns_digest(definition), parts)

    def staged_table(self, definition: TableDefinition) -> StagedTable:
        table = definition.table
        staged = StagedTable(table, table.staging_name(), [Rename(**r) for r in self.staged["renames"]],
                             definition.comment, dict(definition.column_comments),
                             partitioned=self.staged["partitioned"],
                             partitions=[tuple(p) for p in self.staged["partitions"]])
        staged.slices = self.slices
        staged.rows = sum(part["rows"] for part in self.loaded.values())
        staged.bytes = sum(part["bytes"] for part in self.loaded.values())
        staged.digests = {k: part["digest"] for k, part in self.loaded.items() if part.get("digest")}
        staged.loaded_by = [part["xid"] for part in self.loaded.values() if part.get("xid")]
        staged.source_record = self.loaded["1"].get("source") if list(self.loaded) == ["1"] else None
        return staged

    def write(self, cur, staged: StagedTable) -> None:
        cur.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(
            staged.ident, sql.Literal(STAGING_NOTE + json.dumps(dataclasses.asdict(self)))))


def read_note(cur, table: TableName) -> StagingNote | None:
    # Plain catalog reads under the statement's snapshot: to_regclass() could resolve the name
    # from a cache that still knows the staging table another job has just replaced.
    cur.execute("SELECT d.description FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "JOIN pg_description d ON d.objoid = c.oid AND d.classoid = 'pg_class'::regclass "
                "AND d.objsubid = 0 WHERE n.nspname = %s AND c.relname = %s",
                (table.schema, table.staging_name()))
    row = cur.fetchone()
    text = row[0] if row else None
    if not text or not text.startswith(STAGING_NOTE):
        return None
    return StagingNote(**json.loads(text[len(STAGING_NOTE):]))


def columns_digest(definition: TableDefinition) -> str:
    shape = [(c.name, c.type_sql, c.generated) for c in definition.columns]
    return hashlib.md5(json.dumps(shape).encode()).hexdigest()


def staged_of_run(cur, definition: TableDefinition, run: str) -> tuple[StagedTable, StagingNote]:
    """The table's staging as the run's loads left it, when complete and consistent: every slice
    loaded, from one snapshot, with the same boundaries, in the source's current shape; and the
    note that says so."""
    table = definition.table.qualified
    note = read_note(cur, definition.table)
    if note is None or note.run != run:
        raise TableCopyError(f"nothing was staged for {table} in run {run}: its load failed or did "
                             f"not run (see the load jobs' lines)")
    missing = [f"{k}/{note.slices}" for k in range(1, note.slices + 1) if str(k) not in note.loaded]
    if missing:
        raise TableCopyError(f"{table} was not loaded completely in run {run}: slice(s) "
                             f"{', '.join(missing)} missing (their load job failed)")
    if note.columns != columns_digest(definition):
        raise TableCopyError(f"the source's columns of {table} changed after it was loaded in run "
                             f"{run}: nothing goes live for it tonight; the next run copies the new shape")
    snapshots = {part["snapshot"] for part in note.loaded.values()}
    bounds = {json.dumps(part["bounds"]) for part in note.loaded.values()}
    if len(snapshots) > 1 or len(bounds) > 1:
        raise TableCopyError(f"the slices of {table} were read from different snapshots of the source "
                             f"({len(snapshots)}), so they may overlap or miss rows: give the load jobs "
                             f"one snapshot (COPIER_ONE_SNAPSHOT) or do not cut the table")
    return note.staged_table(definition), note


# --- load: the source's COPY streamed into the staging table's, through a pipe


def copy_out(cur, definition: TableDefinition, slicer: Slicer | None = None) -> sql.Composable:
    """The source's COPY of the table's rows: of one key range, for a slice; as its rules make
    them (each masked column's expression, the rows its where selects), computed by the source."""
    copied = definition.copied_columns
    # A table with no columns (or only generated ones) still has rows: no column list then.
    listed = sql.SQL(" ({})").format(column_list(copied)) if copied else sql.SQL("")
    options = sql.SQL("FORMAT {}").format(sql.SQL(definition.copy_format))
    # A plain table's inheritance children are tables of their own; a partitioned one's are its rows.
    only = sql.SQL("" if definition.source.kind == "p" else "ONLY ")
    conditions = [slicer.condition(cur, definition.table, only.as_string(cur))] if slicer else []
    conditions += [sql.SQL("({})").format(sql.SQL(definition.where))] if definition.where else []
    masked = any(c.source_sql for c in copied)
    if not (conditions or masked or definition.source.kind == "p"):
        return sql.SQL("COPY {}{} TO STDOUT ({})").format(definition.table.ident, listed, options)
    # The statement's text names the salt's setting, never the salt (see hashed).
    selected = sql.SQL(", ").join(sql.SQL(c.source_sql) if c.source_sql else sql.Identifier(c.name)
                                  for c in copied) if copied else sql.SQL("")
    where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("")
    return sql.SQL("COPY (SELECT {} FROM {}{}{}) TO STDOUT ({})").format(
        selected, only, definition.table.ident, where, options)


def load_rows(src, dst, definition: TableDefinition, staged: StagedTable, snapshot: str | None,
              on_progress, slicer: Slicer | None = None) -> tuple[int, int, int, str, SourceState | None]:
    """Stream the source's rows into the staging table: (source rows, loaded rows, bytes, the
    hash of the stream and, for a whole table when the plan has the proof, the source's state:
    for the table's fingerprint).

    Source and target talk through an OS pipe between two threads, so memory stays at a few
    pipe buffers whatever the table's size, and the per-row loop stays inside libpq.
    """
    columns = column_list(definition.copied_columns)
    listed = sql.SQL(" ({})").format(columns) if definition.copied_columns else sql.SQL("")
    options = sql.SQL("FORMAT {}").format(sql.SQL(definition.copy_format))

    # FREEZE is refused on a partitioned table (its rows are routed to the partitions), and on a
    # table made in another transaction (a slice loads into the run's shared staging table).
    freeze = sql.SQL("" if staged.partitioned or slicer else ", FREEZE")
    copy_in = sql.SQL("COPY {}{} FROM STDIN ({}{})").format(staged.ident, listed, options, freeze)

    read_fd, write_fd = os.pipe()
    reader = PipeReader(read_fd, on_progress)
    writer = os.fdopen(write_fd, "wb", buffering=PIPE_CHUNK)
    outcome: dict = {}

    def pump_source() -> None:
        try:
            with src.cursor() as cur:
                outcome["source"] = begin_read(cur, snapshot, None if slicer else definition)
                cur.copy_expert(copy_out(cur, definition, slicer).as_string(src), writer, size=PIPE_CHUNK)
                outcome["rows"] = cur.rowcount
                writer.flush()
                cur.execute("COMMIT")
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread below
            reader.source_error = exc
            outcome["error"] = exc
        finally:
            try:
                writer.close()
            except OSError:
                pass

    pump = threading.Thread(target=pump_source, name="source-copy", daemon=True)
    pump.start()
    try:
        with dst.cursor() as cur:
            cur.copy_expert(copy_in.as_string(dst), reader, size=PIPE_CHUNK)
            loaded = cur.rowcount
    except BaseException:
        reader.close()  # the source thread then fails on a broken pipe instead of blocking
        pump.join()
        if "error" in outcome and not isinstance(outcome["error"], BrokenPipeError):
            raise withheld(outcome["error"], definition) from None
        raise
    reader.close()
    pump.join()
    if "error" in outcome:
        raise withheld(outcome["error"], definition)
    return outcome["rows"], loaded, reader.bytes, reader.hash.hexdigest(), outcome["source"]


class PipeReader:
    """The target's end of the stream: counts and hashes its bytes, reports progress, notices a
    dead source."""

    def __init__(self, fd: int, on_progress):
        self.file = os.fdopen(fd, "rb", buffering=0)
        self.bytes = 0
        self.hash = stream_hash()
        self.on_progress = on_progress
        self.source_error: BaseException | None = None

    def read(self, size: int = PIPE_CHUNK) -> bytes:
        data = self.file.read(size)
        if data:
            self.bytes += len(data)
            self.hash.update(data)
            self.on_progress(self.bytes)
        elif self.source_error is not None:
            # Without this an early end of the source would look like a complete table.
            raise SourceStreamError(f"source stream failed: {first_line(self.source_error)}")
        return data

    def close(self) -> None:
        self.file.close()


class Slicer:
    """A slice's key range, worked out inside the source's snapshot: every job that reads the
    same snapshot works out the same boundaries, so the slices neither overlap nor leave a gap.

    The ranges cut min..max of the key evenly (balanced for the dense integer keys that serial
    and identity columns give), and the first and last are open-ended: whatever boundaries the
    jobs use, together the n ranges cover every integer exactly once.
    """

    def __init__(self, key: str, part: Slice):
        self.key, self.part = key, part
        self.bounds: list[int] = []

    def condition(self, cur, table: TableName, only: str) -> sql.Composable:
        key = sql.Identifier(self.key)
        cur.execute(sql.SQL("SELECT min({}), max({}) FROM {}{}").format(
            key, key, sql.SQL(only), table.ident))
        self.bounds = slice_bounds(*cur.fetchone(), self.part[1])
        k, n = self.part
        parts = [sql.SQL("{} >= {}").format(key, sql.Literal(self.bounds[k - 2]))] if k > 1 else []
        parts += [sql.SQL("{} < {}").format(key, sql.Literal(self.bounds[k - 1]))] if k < n else []
        return sql.SQL(" AND ").join(parts) if parts else sql.SQL("true")


def slice_bounds(low: int | None, high: int | None, count: int) -> list[int]:
    """The count - 1 boundaries between count even ranges of low..high."""
    if low is None:  # an empty table: any boundaries do
        return [0] * (count - 1)
    span = high - low + 1
    return [low + span * i // count for i in range(1, count)]


# What SET TRANSACTION SNAPSHOT answers when the exported snapshot is gone: no such file
# (invalid_parameter_value "invalid snapshot identifier" up to PostgreSQL 17, undefined_object
# "snapshot does not exist" from 18), or its exporting transaction has ended
# (object_not_in_prerequisite_state "could not import the requested snapshot").
SNAPSHOT_GONE_SQLSTATES = frozenset({"22023", "42704", "55000"})


def begin_snapshot(cur, snapshot: str | None, then: str = "") -> None:
    """Begin a read in the run's snapshot (or a new one); then, a query in the same round trip,
    whose rows cur then holds."""
    begin = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
    then = "; " + then if then else ""
    if not snapshot:
        cur.execute(begin + then)
    else:
        try:
            cur.execute(begin + "; SET TRANSACTION SNAPSHOT %s" + then, (snapshot,))  # one round trip
        except psycopg2.Error as exc:
            if exc.pgcode in SNAPSHOT_GONE_SQLSTATES:
                raise SnapshotLost(
                    f"the run's snapshot {snapshot} is gone (the source restarted or failed "
                    f"over, or the connection holding it was cut): {first_line(exc)}") from exc
            raise


# --- index: keys, indexes, statistics and sequences, built on the loaded table


def keep_sequences_shared_with_another_table(cur, definition: TableDefinition) -> None:
    """A sequence the table's defaults use that the source ties to another table (a table made
    LIKE the old one and renamed into place shares its serial) but that, on the reporting side,
    belongs to the table the swap replaces: it would be dropped with that table, and the new
    table's default with it. It is kept, owned by no table."""
    for schema, name, _owner in definition.default_sequences:
        cur.execute("SELECT 1 FROM pg_depend WHERE classid = 'pg_class'::regclass "
                    "AND objid = to_regclass(%s) AND refclassid = 'pg_class'::regclass "
                    "AND refobjid = to_regclass(%s) AND deptype = 'a'",
                    (quote_qualified(schema, name), definition.table.qualified))
        if cur.fetchone():
            cur.execute(sql.SQL("ALTER SEQUENCE {} OWNED BY NONE").format(sql.Identifier(schema, name)))


def build_indexes(cur, definition: TableDefinition, staged: StagedTable, options: Options) -> None:
    """Keys, indexes and unvalidated checks, built on the loaded table: faster than during COPY.

    Sent together in one round trip with the read of the reporting side's own extras (see
    reporting_extras); a partitioned table's, which may be left out one by one, each on its own.
    """
    batch = [cur.mogrify("SELECT set_config('maintenance_work_mem', %s, true), "
                         "set_config('max_parallel_maintenance_workers', %s, true)",
                         (options.maintenance_work_mem, str(options.index_workers))).decode()]

    def send() -> None:
        if batch:
            cur.execute("; ".join(batch))  # no parameters: an index's predicate may hold a %
            batch.clear()

    def execute(statement) -> None:
        batch.append(statement if isinstance(statement, str) else statement.as_string(cur))
        if staged.partitioned:
            send()

    if staged.partitioned:
        send()
    table_prefix = f" ON {definition.quoted_name} "
    kept_keys = dict(reporting_extras(cur, definition, staged).keys) if staged.partitioned else {}
    n = 0
    for constraint in definition.constraints:
        if constraint.kind == "c" and not constraint.validated:
            execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                staged.ident, sql.Identifier(constraint.name), sql.SQL(constraint.definition)))
            continue
        if constraint.kind not in ("p", "u", "x"):
            continue
        n += 1
        temporary = f"{staged.staging}_k{n}"
        add = sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
            staged.ident, sql.Identifier(temporary),
            sql.SQL(kept_keys.get(constraint.name, constraint.definition)))
        if staged.partitioned:
            # A key of a partitioned table must include the partition key (and cannot take a
            # ready index): the reporting side's own key of that name is kept, as pg_dump made
            # it; a source key that does not fit the partitioning is reported and left out.
            if not built_or_skipped(cur, lambda add=add: cur.execute(add), definition.table,
                                    runlog.INDEX_SKIPPED, index=constraint.name):
                continue
        elif constraint.kind == "x":
            execute(add)
        else:
            index_sql = retarget_index(constraint.index_definition, table_prefix, temporary, staged.quoted)
            execute(index_sql)
            kind = "PRIMARY KEY" if constraint.kind == "p" else "UNIQUE"
            deferrable = (" DEFERRABLE INITIALLY " + ("DEFERRED" if constraint.deferred
                          else "IMMEDIATE")) if constraint.deferrable else ""
            execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {} USING INDEX {}{}").format(
                staged.ident, sql.Identifier(temporary), sql.SQL(kind),
                sql.Identifier(temporary), sql.SQL(deferrable)))
        staged.renames.append(Rename("constraint", temporary, constraint.name))
    for name, definition_sql in definition.indexes:
        n += 1
        temporary = f"{staged.staging}_i{n}"
        statement = retarget_index(definition_sql, table_prefix, temporary, staged.quoted)
        if staged.partitioned:  # a unique index must cover the reporting side's partition key
            if not built_or_skipped(cur, lambda s=statement: cur.execute(s), definition.table,
                                    runlog.INDEX_SKIPPED, index=name):
                continue
        else:
            execute(statement)
        staged.renames.append(Rename("index", temporary, name))
    if staged.extras is None:
        batch.append(reporting_extras_statement(cur, definition, staged))
        send()
        staged.extras = extras_from(cur.fetchone())
    send()


def retarget_index(index_sql: str, table_prefix: str, new_name: str, target: str) -> str:
    """Point a CREATE INDEX statement at a staging table (quoted, qualified), under a temporary name."""
    head, sep, tail = index_sql.partition(table_prefix)
    if not sep:
        head, sep, tail = index_sql.partition(table_prefix.replace(" ON ", " ON ONLY "))
    if not sep:
        raise TableCopyError(f"cannot read index definition {index_sql!r}")
    unique = "UNIQUE " if head.startswith("CREATE UNIQUE INDEX") else ""
    return f"CREATE {unique}INDEX {quote_ident(new_name)} ON {target} {tail}"


def set_statistics(cur, definition: TableDefinition, staged: StagedTable) -> None:
    """The source's per-column statistics settings and CREATE STATISTICS objects, and those
    added on the reporting side, on the staged table before its ANALYZE fills them.

    A reporting-side object that no longer fits the new shape is reported and left out, as a
    reporting-side index is: it only helps the planner.
    """
    for column, target, options in definition.column_statistics:
        if target is not None:
            cur.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET STATISTICS {}").format(
                staged.ident, sql.Identifier(column), sql.Literal(target)))
        if options:
            cur.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET ({})").format(
                staged.ident, sql.Identifier(column), sql.SQL(", ").join(sql.SQL(o) for o in options)))
    for n, statistics in enumerate(definition.extended_statistics, 1):
        create_statistics(cur, statistics, f"{staged.staging}_s{n}", staged)
    keep_column_statistics(cur, definition, staged)
    reporting = reporting_statistics(cur, definition, staged)
    for n, statistics in enumerate(reporting, 1):
        built_or_skipped(cur, lambda s=statistics, n=n: create_statistics(
            cur, s, f"{staged.staging}_rs{n}", staged), definition.table,
            runlog.STATISTICS_SKIPPED, statistics=statistics.name)


# pg_statistic_ext.stxkind -> the kind's name in CREATE STATISTICS ('e' is implied by expressions).
STATISTICS_KINDS = {"d": "ndistinct", "f": "dependencies", "m": "mcv"}


def create_statistics(cur, statistics: ExtendedStatistics, temporary: str, staged: StagedTable) -> None:
    kinds = [STATISTICS_KINDS[k] for k in statistics.kinds if k in STATISTICS_KINDS]
    ident = sql.Identifier(statistics.schema, temporary)
    # A single expression's statistics take no list of kinds.
    listed = sql.SQL(" ({})").format(sql.SQL(", ").join(map(sql.SQL, kinds))) if kinds else sql.SQL("")
    cur.execute(sql.SQL("CREATE STATISTICS {}{} ON {} FROM {}").format(
        ident, listed, sql.SQL(statistics.columns), staged.ident))
    if statistics.target is not None:
        cur.execute(sql.SQL("ALTER STATISTICS {} SET STATISTICS {}").format(
            ident, sql.Literal(statistics.target)))
    if statistics.comment is not None:
        cur.execute(sql.SQL("COMMENT ON STATISTICS {} IS {}").format(ident, sql.Literal(statistics.comment)))
    staged.renames.append(Rename("statistics", temporary, statistics.name, statistics.schema))


def set_sequences(src, dst_cur, definition: TableDefinition, table: str) -> None:
    """Carry each serial and identity sequence's position over from the source to the sequences
    of the target's table (quoted: the staged table, or the live one when it is unchanged)."""
    owned = [c for c in definition.columns if c.sequence]
    if not owned:
        return
    with src.cursor() as cur:
        for column in owned:
            cur.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(
                sql.Identifier(column.sequence_schema, column.sequence)))
            last_value, is_called = cur.fetchone()
            dst_cur.execute(
                "SELECT setval(pg_get_serial_sequence(%s, %s), %s, %s)",
                (table, column.name, last_value, is_called))


# --- verify


def disk_full(dst, exc: psycopg2.Error, source: SourceTable) -> str:
    """A write the reporting database's disk refused (SQLSTATE 53100), in those words: where
    (the tablespace of the file it could not extend: pg_tblspc/<oid>/..., else the database's
    own) and how much the table needed."""
    found = re.search(r'"pg_tblspc/(\d+)/', exc.diag.message_primary or "")
    where = (("SELECT spcname FROM pg_tablespace WHERE oid = %s", (int(found.group(1)),)) if found else
             ("SELECT t.spcname FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace "
              "WHERE d.datname = current_database()", None))
    try:
        with dst.cursor() as cur:
            cur.execute(*where)
            tablespace = cur.fetchone()[0]
    except psycopg2.Error:
        tablespace = "pg_default" if not found else f"OID {found.group(1)}"
    return (f"the reporting database's disk is full (tablespace {tablespace}): staging "
            f"{source.table.qualified} needed about {source.size_bytes / 1e6:.0f} MB (its size on the "
            f"source, indexes and TOAST included); nothing of it went live, the reporting table keeps "
            f"its rows; make room there, or copy fewer tables at once (--jobs, or without --swap together)")


def verify_counts(table: TableName, source_rows: int, loaded: int) -> None:
    if source_rows != loaded:
        raise TableCopyError(
            f"row count mismatch for {table.qualified}: the source sent {source_rows} rows, "
            f"the target loaded {loaded}")


# --- unchanged tables: a table whose source rows are what the reporting table already holds
#     is not written again. Decided by content: a fingerprint of the source's definition and of
#     its COPY stream in the run's snapshot, recorded on the reporting side by the swap that put
#     the rows there, with what tells that the reporting table still holds exactly them.

# The copier's own schema on the reporting side, out of the analysts' way, made when missing.
FINGERPRINT_SCHEMA = "nightly_copy"
FINGERPRINTS = sql.Identifier(FINGERPRINT_SCHEMA, "fingerprints")
FINGERPRINTS_TABLE = sql.SQL("""
CREATE TABLE IF NOT EXISTS {} (
    table_schema name NOT NULL,
    table_name name NOT NULL,
    fingerprint text NOT NULL,  -- the source's definition and rows, hashed (fingerprint_of)
    table_oid oid NOT NULL,  -- the reporting table the swap made
    shape text NOT NULL,  -- its columns and their types, then
    rows bigint NOT NULL,
    loaded_by bigint[] NOT NULL,  -- the transactions that wrote its rows (pg_current_xact_id)
    unchanged_nights integer NOT NULL DEFAULT 0,  -- runs in a row that found it unchanged since
    copied_at timestamptz NOT NULL,
    checked_at timestamptz NOT NULL,
    run text,
    -- what proves the source unchanged without reading it (SourceState.recorded), or NULL: read it
    source jsonb,
    PRIMARY KEY (table_schema, table_name))""").format(FINGERPRINTS)
# Added to a store an older copier made (before the source's proof).
FINGERPRINT_COLUMNS = {"source": "jsonb"}
FINGERPRINT_VERSION = "1"  # a change of what is hashed, or how, makes every stored one stale


@dataclass(frozen=True)
class Fingerprint:
    """What the last run recorded of a table: its fingerprint then, and how to tell that the
    reporting table still holds exactly those rows (the same table, shape and row count, and no
    row written since by any transaction but the ones that loaded it)."""

    value: str
    table_oid: int
    shape: str
    rows: int
    loaded_by: tuple[int, ...]
    unchanged_nights: int
    source: dict | None = None  # the source as it was read then (SourceState.recorded), to prove it unchanged
    quiet: bool = False  # no row written on the source since, as far as its counters tell


def stream_hash():
    """A 128-bit hash of a COPY stream: xxh3 hashes 20+ GB/s a core, so hashing every table's
    stream costs the copy nothing measurable (SHA-1, the fastest in hashlib, 1 GB/s here)."""
    return xxhash.xxh3_128()


def definition_digest(definition: TableDefinition) -> str:
    """Everything the copy makes of the source's definition (columns, keys, indexes, comments,
    statistics settings, partitions, what its types print) and how its rows are streamed: a
    change of any of them changes the fingerprint, so the table is copied again."""
    made = dataclasses.asdict(definition)
    del made["source"], made["state_on_source"]  # its OID, size and counters say nothing of its rows
    made.update(kind=definition.source.kind, format=definition.copy_format,
                version=FINGERPRINT_VERSION)
    return xxhash.xxh3_128(json.dumps(made, sort_keys=True, default=str).encode()).hexdigest()


def fingerprint_of(definition: TableDefinition, digests: dict[str, str]) -> str:
    """The table's fingerprint: its definition's digest and its COPY stream's (each slice's, in
    order: a table cut into slices one night and copied whole the next is copied again)."""
    parts = [definition_digest(definition), *(digests[k] for k in sorted(digests, key=int))]
    return xxhash.xxh3_128("|".join(parts).encode()).hexdigest()


def hash_rows(src, definition: TableDefinition, snapshot: str | None,
              on_progress) -> tuple[int, int, str, SourceState | None]:
    """Read the table's COPY stream in the run's snapshot, only to hash it: (rows, bytes, hash,
    the source's state). It costs the source's read, and the target nothing."""

    class Hashed(io.RawIOBase):
        def __init__(self):
            self.hash, self.bytes = stream_hash(), 0

        def writable(self) -> bool:
            return True

        def write(self, data) -> int:
            self.hash.update(data)
            self.bytes += len(data)
            on_progress(self.bytes)
            return len(data)

    hashed = Hashed()
    # psycopg2 writes the stream a row at a time: a buffer in C hands it on 64 kB at a time,
    # half the client's CPU of a call a row.
    sink = io.BufferedWriter(hashed, PIPE_CHUNK)
    with src.cursor() as cur:
        now = begin_read(cur, snapshot, definition)
        try:
            cur.copy_expert(copy_out(cur, definition).as_string(src), sink, size=PIPE_CHUNK)
        except psycopg2.Error as exc:
            raise withheld(exc, definition) from None
        sink.flush()
        rows = cur.rowcount
        cur.execute("COMMIT")
    return rows, hashed.bytes, hashed.hash.hexdigest(), now


def fingerprint_store_usable(dst) -> bool:
    """Whether the copier may read and write its fingerprints on the reporting side: the table is
    there and the target user may use it, or may make what is missing (asked, not tried: a dry
    run changes nothing)."""
    with dst.cursor() as cur:
        cur.execute(
            "SELECT CASE WHEN c.oid IS NOT NULL THEN has_schema_privilege(n.oid, 'USAGE') "
            "                 AND has_table_privilege(c.oid, 'SELECT, INSERT, UPDATE') "
            "            WHEN n.oid IS NOT NULL THEN has_schema_privilege(n.oid, 'USAGE, CREATE') "
            "            ELSE has_database_privilege(current_database(), 'CREATE') END "
            "FROM (SELECT 1) one LEFT JOIN pg_namespace n ON n.nspname = %s "
            "LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = 'fingerprints'",
            (FINGERPRINT_SCHEMA,))
        return cur.fetchone()[0]


def make_fingerprint_store(dst) -> bool:
    """The copier's schema and table of fingerprints, made when missing (another run may make
    them at the same moment). False, with a warning, when that fails: every table is copied."""
    for _ in range(2):
        try:
            with transaction(dst) as cur:
                cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                    sql.Identifier(FINGERPRINT_SCHEMA)))
                cur.execute(FINGERPRINTS_TABLE)
                cur.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0",
                            (FINGERPRINTS.as_string(cur),))
                have = {name for name, in cur.fetchall()}
                for name, kind in FINGERPRINT_COLUMNS.items():
                    if name not in have:
                        cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                            FINGERPRINTS, sql.Identifier(name), sql.SQL(kind)))
            return True
        except (psycopg2.errors.UniqueViolation, psycopg2.errors.DuplicateObject,
                psycopg2.errors.DuplicateSchema, psycopg2.errors.DuplicateTable):
            continue  # made by another run a moment ago
        except psycopg2.DatabaseError as exc:
            if is_connection_error(exc):
                raise
            warn(f"cannot keep the tables' fingerprints in {FINGERPRINT_SCHEMA} on the reporting side: "
                 f"every table is copied, unchanged or not", error=describe_error(exc))
            return False
    return True


def with_fingerprints(dst, units: list[Unit]) -> list[Unit]:
    """The units, each table with what the last run recorded of it: one query for the run. A
    fingerprint that cannot be read is none: the table is copied."""
    tables = list({u.source.table for u in units})
    try:
        with dst.cursor() as cur:
            cur.execute(sql.SQL(
                "SELECT table_schema, table_name, fingerprint, table_oid, shape, rows, loaded_by, "
                "unchanged_nights, source FROM {} WHERE (table_schema, table_name) IN "
                "(SELECT * FROM unnest(%s::name[], %s::name[]))").format(FINGERPRINTS),
                ([t.schema for t in tables], [t.name for t in tables]))
            found = {TableName(schema, name): Fingerprint(value, oid, shape, rows, tuple(xids or ()), nights,
                                                          source if source_record_whole(source) else None)
                     for schema, name, value, oid, shape, rows, xids, nights, source in cur.fetchall()}
    except psycopg2.DatabaseError as exc:
        if is_connection_error(exc):
            raise
        warn("cannot read the tables' fingerprints: every table is copied", error=describe_error(exc))
        return units
    return [dataclasses.replace(u, source=dataclasses.replace(
        u.source, fingerprint=found.get(u.source.table))) for u in units]


# The reporting table as it is now: its OID and kind, its columns and their types (its shape),
# and the next transaction ID to be assigned (to tell that row xmins cannot have wrapped around).
LIVE_SHAPE_QUERY = """
SELECT c.oid, c.relkind,
       (SELECT string_agg(quote_ident(a.attname) || ' ' || format_type(a.atttypid, a.atttypmod), ', '
                          ORDER BY a.attnum)
        FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
       pg_snapshot_xmax(pg_current_snapshot())::text::bigint
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
"""
XID_WRAP = 2**31  # a 32-bit row xmin names one transaction only within this many of them


def reporting_table_unchanged(cur, table: TableName, known: Fingerprint) -> bool:
    """Whether the reporting table still holds exactly the rows the fingerprint's swap put
    there: the same table (a dropped and remade one has another OID) of the same shape, as
    many rows, and every row written by the transactions that loaded it. A row updated, inserted
    or deleted and inserted again since has another xmin; a deleted one leaves fewer rows; a
    TRUNCATE leaves none. Frozen rows keep their xmin (PostgreSQL 9.4 on). It reads the whole
    table, and takes no lock that readers wait for."""
    cur.execute(LIVE_SHAPE_QUERY, (table.schema, table.name))
    row = cur.fetchone()
    if row is None or (row[0], row[2]) != (known.table_oid, known.shape) or not known.loaded_by:
        return False
    _, kind, _, next_xid = row
    if next_xid - min(known.loaded_by) >= XID_WRAP:
        return False
    only = sql.SQL("" if kind == "p" else "ONLY ")
    cur.execute(sql.SQL("SELECT count(*), count(*) FILTER (WHERE NOT xmin = ANY(%s::text[]::xid[])) "
                        "FROM {}{}").format(only, table.ident),
                ([str(xid % 2**32) for xid in known.loaded_by],))
    return cur.fetchone() == (known.rows, 0)


def record_fingerprint(cur, staged: StagedTable, run: str) -> None:
    """In the swap's transaction, what the next run compares with: committed with the rows, or
    not at all. A failure to write it costs the next run a copy, never this one its swap."""
    try:
        cur.execute(sql.SQL(
            "SAVEPOINT copier_fingerprint; "
            "INSERT INTO {} AS f SELECT n.nspname, c.relname, %(value)s, c.oid, s.shape, %(rows)s, "
            "%(loaded_by)s, 0, now(), now(), %(run)s, %(source)s "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, LATERAL ("
            "  SELECT string_agg(quote_ident(a.attname) || ' ' || format_type(a.atttypid, a.atttypmod),"
            "                    ', ' ORDER BY a.attnum) AS shape"
            "  FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) s "
            "WHERE n.nspname = %(schema)s AND c.relname = %(name)s AND c.relkind IN ('r', 'p') "
            "ON CONFLICT (table_schema, table_name) DO UPDATE SET fingerprint = excluded.fingerprint, "
            "table_oid = excluded.table_oid, shape = excluded.shape, rows = excluded.rows, "
            "loaded_by = excluded.loaded_by, unchanged_nights = 0, copied_at = excluded.copied_at, "
            "checked_at = excluded.checked_at, run = excluded.run, source = excluded.source; "
            "RELEASE SAVEPOINT copier_fingerprint").format(FINGERPRINTS),
            {"value": staged.fingerprint, "rows": staged.rows,
             "loaded_by": staged.loaded_by, "run": run, "schema": staged.table.schema,
             "source": Json(staged.source_record) if staged.source_record else None,
             "name": staged.table.name})
    except psycopg2.DatabaseError as exc:
        if is_connection_error(exc) or isinstance(exc, psycopg2.errors.QueryCanceled):
            raise
        cur.execute("ROLLBACK TO SAVEPOINT copier_fingerprint")
        warn(f"{staged.table.qualified}: its fingerprint was not recorded: the next run copies it",
             error=describe_error(exc))


def record_unchanged(cur, staged: StagedTable, run: str) -> None:
    """One more run that found the table unchanged: the next one proves (or reads) its source
    first. Tonight's source state, when known, replaces the last: the reporting table holds the
    source's rows as of both (an older one still proves, only less often)."""
    cur.execute(sql.SQL("UPDATE {} SET unchanged_nights = unchanged_nights + 1, checked_at = now(), "
                        "run = %s, source = coalesce(%s, source) "
                        "WHERE table_schema = %s AND table_name = %s").format(FINGERPRINTS),
                (run, Json(staged.source_record) if staged.source_record else None,
                 staged.table.schema, staged.table.name))


# --- unchanged on the source, proved without reading its rows. A row is never changed in
#     place: an UPDATE writes a new version of it, whose xmin is the transaction that wrote it.
#     So when every row visible tonight was written by a transaction that had ended before last
#     night's read began (below that snapshot's xmin), tonight's rows are among last night's, and
#     as many of them are all of them. A scan that returns two numbers instead of the rows. It
#     proves nothing across clusters (a logical replica or a restore numbers its transactions
#     anew: another system identifier), across relations (a table renamed into place keeps old
#     row versions), across a change of what the types print (an enum label renamed changes what
#     its rows read as, not the rows: the definition's fingerprint holds it), or across 2^31
#     transactions (xmin is 32 bits): then the table is copied.

# What identifies each table's rows on the source apart from the snapshot, read for all tables
# at once before the run: the relations the copy reads (a partitioned table's whole tree) and
# whether all are heap tables (whose rows have an xmin); the rows written to them so far, as the
# statistics count them (what was tried, committed or not: a hint whether the proof is worth
# trying, never the proof: they lag, a reset loses them, a replica does not count the primary's
# writes); the server's major version, the rules' salt (hashed: a new salt changes every hashed
# value) and whether the source is a replica. The proof reads its table's again under its lock.
TABLE_STATES_QUERY = """
SELECT t.oid, string_agg(c.oid::text, ',' ORDER BY c.oid),
       bool_and(c.relkind = 'p' OR c.relkind = 'r' AND c.relam = (SELECT oid FROM pg_am
                                                                  WHERE amname = 'heap')),
       sum(pg_stat_get_tuples_inserted(c.oid) + pg_stat_get_tuples_updated(c.oid)
           + pg_stat_get_tuples_deleted(c.oid))::bigint,
       current_setting('server_version_num')::int / 10000,
       encode(sha256(convert_to(coalesce(current_setting(%(salt)s, true), ''), 'UTF8')), 'hex'),
       pg_is_in_recovery()
FROM unnest(%(tables)s::oid[], %(trees)s::bool[]) t(oid, tree)
CROSS JOIN LATERAL (SELECT t.oid UNION SELECT relid FROM pg_partition_tree(t.oid) WHERE t.tree) rel(oid)
JOIN pg_class c ON c.oid = rel.oid
GROUP BY t.oid
"""


@dataclass(frozen=True)
class TableState:
    """A table's state on the source apart from the snapshot (TABLE_STATES_QUERY)."""

    relations: str
    major: int
    salt: str | None  # the salt's hash, for a table with hashed columns
    writes: int
    standby: bool


def table_states(src, definitions: list[TableDefinition]) -> dict[int, TableState]:
    """The provable tables' states, by OID, in one query (none of a table that is not heap)."""
    provable = [d for d in definitions if d and d.provable]
    if not provable:
        return {}
    with src.cursor() as cur:
        cur.execute(TABLE_STATES_QUERY, {"tables": [d.source.oid for d in provable],
                                         "trees": [d.source.kind == "p" for d in provable],
                                         "salt": SALT_SETTING})
        found = {oid: row for oid, *row in cur.fetchall()}
    return {d.source.oid: TableState(relations, major, salt if d.salted else None, writes or 0, standby)
            for d in provable if d.source.oid in found
            for relations, heap, writes, major, salt, standby in [found[d.source.oid]] if heap}


# The relations the copy of a table reads now, when its name still names its OID.
RELATIONS_QUERY = """
SELECT string_agg(r.oid::text, ',' ORDER BY r.oid) FILTER (WHERE to_regclass(%(name)s) = %(oid)s)
FROM (SELECT %(oid)s::oid UNION SELECT relid FROM pg_partition_tree(%(oid)s) WHERE %(tree)s) r(oid)
"""


# Where a read stands, asked in the round trip that begins its transaction (begin_snapshot): which
# cluster (a logical replica or a restored copy numbers its transactions anew: another system
# identifier), and the snapshot's xmin and xmax (64-bit).
POSITION_QUERY = ("SELECT (SELECT system_identifier FROM pg_control_system())::text, "
                  "pg_snapshot_xmin(pg_current_snapshot())::text::bigint, "
                  "pg_snapshot_xmax(pg_current_snapshot())::text::bigint")


@dataclass(frozen=True)
class SourceState:
    """What a proof needs of the source as one transaction saw it: its identity (cluster,
    relations, major, salt: a digest), its snapshot's xmin and xmax (xid8: 64 bits), and the
    rows written to the table so far as its statistics count them."""

    identity: str
    xmin: int
    xmax: int
    writes: int

    @classmethod
    def of(cls, table: TableState, position: tuple) -> SourceState:
        system, xmin, xmax = position
        identity = [system, table.relations, table.major, table.salt]
        return cls(xxhash.xxh3_128(json.dumps(identity).encode()).hexdigest(), xmin, xmax, table.writes)

    def recorded(self, rows: int, nbytes: int, digests: dict[str, str]) -> dict:
        """What the fingerprint keeps of a read: the next run proves its rows are still these."""
        return {"identity": self.identity, "xmin": self.xmin, "rows": rows, "bytes": nbytes,
                "digests": digests, "writes": self.writes}


def begin_read(cur, snapshot: str | None, definition: TableDefinition | None) -> SourceState | None:
    """Begin the read's transaction (begin_snapshot) and tell the source's state in it, or None
    when the table cannot be proved unchanged (no state of it: see table_states)."""
    table = definition.state_on_source if definition else None
    if table is None:
        begin_snapshot(cur, snapshot)
        return None
    begin_snapshot(cur, snapshot, then=POSITION_QUERY)
    return SourceState.of(table, cur.fetchone())


# The functions the source's state and its proof call beyond reading the tables: PUBLIC may call
# each unless a DBA revoked it (then nothing is proved: unchanged tables are read and hashed).
PROOF_FUNCTIONS = ("pg_control_system()", "pg_partition_tree(regclass)", "pg_current_snapshot()",
                   "pg_snapshot_xmin(pg_snapshot)", "pg_snapshot_xmax(pg_snapshot)", "age(xid)",
                   "pg_stat_get_tuples_inserted(oid)", "pg_stat_get_tuples_updated(oid)",
                   "pg_stat_get_tuples_deleted(oid)")


def source_may_be_proved(src) -> bool:
    with src.cursor() as cur:
        cur.execute("SELECT bool_and(has_function_privilege(f, 'EXECUTE')) FROM unnest(%s::text[]) f",
                    (list(PROOF_FUNCTIONS),))
        return bool(cur.fetchone()[0])


def with_source_states(src, units: list[Unit]) -> list[Unit]:
    """The units, each provable table's definition with its state on the source (table_states),
    and each fingerprint that can prove its table saying whether the table is quiet since: no
    row written, as its counters tell. They only choose between trying the proof and copying at
    once; on a replica (whose counters miss the primary's writes) a table is tried when the last
    run found it unchanged."""
    sources = {u.source.table: u.source for u in units if u.source.definition}
    states = table_states(src, [s.definition for s in sources.values()])

    def told(source: SourceTable) -> SourceTable:
        state = states.get(source.oid)
        known = source.fingerprint
        if known and known.source and state:
            same_writes = state.writes == known.source.get("writes")
            quiet = known.unchanged_nights > 0 if state.standby else same_writes
            known = dataclasses.replace(known, quiet=quiet)
        definition = dataclasses.replace(source.definition, state_on_source=state)
        return dataclasses.replace(source, definition=definition, fingerprint=known)

    told_sources = {table: told(source) for table, source in sources.items()}
    return [dataclasses.replace(u, source=told_sources[u.source.table]) if u.source.table in told_sources
            else u for u in units]


def source_record_whole(record) -> bool:
    """Whether a fingerprint's record of the source has the form SourceState.recorded gives it
    (a damaged one is none: the table is read, or copied)."""
    return (isinstance(record, dict) and isinstance(record.get("identity"), str)
            and all(type(record.get(k)) is int for k in ("xmin", "rows", "bytes"))
            and isinstance(record.get("digests"), dict))


def source_rows_unchanged(cur, definition: TableDefinition, last: dict, now: SourceState) -> bool:
    """Whether the rows cur's snapshot sees are exactly those of last (a recorded read of the same
    source): as many, and none written by a transaction that had not ended before that read
    began. Row xmins are 32 bits, which name one transaction only within 2^31 of them: age(xmin)
    (how many transactions before this one's horizon it began) tells new rows by a comparison a
    row, a third of the cost of reading xmin as a number. A row is new when its age is no more
    than that of last's xmin. A frozen row keeps its xmin (9.4 on); one frozen before 9.4, or a
    bootstrap row, has an age of 2^31 - 1: old. A frozen row older than 2^31 transactions may
    alias into the window: it counts as new (a copy, never a wrong answer)."""
    if (now.identity != last["identity"] or last["xmin"] > now.xmin
            or now.xmax - last["xmin"] >= XID_WRAP):
        return False
    cur.execute("SELECT age(%s::text::xid)", (str(last["xmin"] % 2**32),))
    span = cur.fetchone()[0]  # stable for the transaction: the rows' ages are counted from the same
    if span < 0:
        return False
    only = sql.SQL("" if definition.source.kind == "p" else "ONLY ")
    cur.execute(sql.SQL("SELECT count(*), count(*) FILTER (WHERE age(xmin) BETWEEN 0 AND %s) "
                        "FROM {}{}").format(only, definition.table.ident), (span,))
    return cur.fetchone() == (last["rows"], 0)


# --- swap: the only moment readers are involved, kept short


# The tables a swap will lock, named in one order (schema, name) with whether it changes them
# (ACCESS EXCLUSIVE) or only reads them (ACCESS SHARE). Changed: the table, the tables its
# foreign keys join (DROP TABLE locks both ends), the tables whose rules, policies, defaults or
# triggers use it. Read: every table under the views and materialized views made again, through
# other views. Views are not locked themselves (LOCK TABLE would lock what a view reads in the
# view's own order; a materialized view cannot be locked): any two swaps that make one again
# both lock every table under it, so they meet there first. Partitions count as their root;
# what the swap's role may not lock is left out.
LOCK_ORDER_QUERY = """
WITH RECURSIVE family AS (
    SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = %(schema)s AND c.relname = %(name)s AND c.relkind IN ('r', 'p')
    UNION SELECT t.relid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
                 pg_partition_tree(c.oid) t
    WHERE n.nspname = %(schema)s AND c.relname = %(name)s AND c.relkind = 'p'
), reached(classid, objid) AS (  -- the family, its row types and sequences, and outwards
    SELECT 'pg_class'::regclass, oid FROM family
    UNION SELECT 'pg_type'::regclass, t.oid FROM pg_class c JOIN pg_type r ON r.oid = c.reltype
          JOIN pg_type t ON t.oid IN (r.oid, r.typarray) WHERE c.oid IN (SELECT oid FROM family)
    UNION SELECT 'pg_class'::regclass, s.objid FROM pg_depend s
          WHERE s.refclassid = 'pg_class'::regclass AND s.refobjid IN (SELECT oid FROM family)
            AND s.classid = 'pg_class'::regclass AND s.deptype IN ('a', 'i')
    UNION
    SELECT step.classid, step.objid  -- the views and routines that use what was reached
    FROM reached r JOIN pg_depend d ON d.refclassid = r.classid AND d.refobjid = r.objid AND d.deptype = 'n'
    CROSS JOIN LATERAL (
        SELECT 'pg_class'::regclass, w.ev_class FROM pg_rewrite w
        WHERE d.classid = 'pg_rewrite'::regclass AND w.oid = d.objid AND w.rulename = '_RETURN'
        UNION ALL
        SELECT 'pg_type'::regclass, v.reltype FROM pg_rewrite w JOIN pg_class v ON v.oid = w.ev_class
        WHERE d.classid = 'pg_rewrite'::regclass AND w.oid = d.objid AND w.rulename = '_RETURN'
        UNION ALL
        SELECT d.classid, d.objid WHERE d.classid = 'pg_proc'::regclass
    ) step(classid, objid)
), changed(oid) AS (
    SELECT objid FROM reached WHERE classid = 'pg_class'::regclass
    UNION SELECT CASE d.classid
               WHEN 'pg_rewrite'::regclass THEN (SELECT ev_class FROM pg_rewrite WHERE oid = d.objid)
               WHEN 'pg_constraint'::regclass THEN (SELECT conrelid FROM pg_constraint WHERE oid = d.objid)
               WHEN 'pg_policy'::regclass THEN (SELECT polrelid FROM pg_policy WHERE oid = d.objid)
               WHEN 'pg_attrdef'::regclass THEN (SELECT adrelid FROM pg_attrdef WHERE oid = d.objid)
               WHEN 'pg_trigger'::regclass THEN (SELECT tgrelid FROM pg_trigger WHERE oid = d.objid) END
          FROM reached r JOIN pg_depend d ON d.refclassid = r.classid AND d.refobjid = r.objid
          WHERE d.deptype = 'n'
    UNION SELECT k.confrelid FROM family f
          CROSS JOIN LATERAL (SELECT confrelid FROM pg_constraint WHERE conrelid = f.oid AND contype = 'f') k
), read(oid) AS (
    SELECT objid FROM reached WHERE classid = 'pg_class'::regclass
    UNION
    SELECT d.refobjid FROM read r JOIN pg_rewrite w ON w.ev_class = r.oid AND w.rulename = '_RETURN'
    JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = w.oid
                    AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> r.oid
)
SELECT quote_ident(c.nspname) || '.' || quote_ident(c.relname), bool_or(l.changes)
FROM (SELECT oid, true FROM changed UNION ALL SELECT oid, false FROM read) l(oid, changes)
CROSS JOIN LATERAL (  -- by OID, one at a time (OFFSET 0), not a scan of a catalog of many relations
    SELECT c.oid, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = (SELECT CASE WHEN p.relispartition THEN pg_partition_root(p.oid) ELSE p.oid END
                   FROM pg_class p WHERE p.oid = l.oid)
      AND c.relkind IN ('r', 'p') OFFSET 0) c
GROUP BY c.nspname, c.relname, c.oid
HAVING has_table_privilege(c.oid, CASE WHEN bool_or(l.changes) THEN 'UPDATE, DELETE, TRUNCATE'
                                       ELSE 'SELECT' END)
ORDER BY c.nspname, c.relname
"""


def lock_in_order(cur, table: TableName, start: str) -> str:
    """Lock every table the swap will lock, in one order that every job follows (after start,
    sent with the query): two jobs swapping tables joined by a foreign key or a view then wait
    for each other instead of deadlocking (which PostgreSQL finds only after deadlock_timeout,
    and which costs the swap one of its tries). A table dropped meanwhile is left to the swap's
    own locks, as before. Returns what the swap's next round trip must send first."""
    # The planner's guess for the recursive walk passes jit_above_cost: compiling it would
    # cost 100 ms, for a query of a few. Off for it alone: the next statement puts it back.
    cur.execute(start + "SET LOCAL jit = off; " + LOCK_ORDER_QUERY,
                {"schema": table.schema, "name": table.name})
    tables = cur.fetchall()
    moment("locking", table=table.qualified, tables=[name for name, _ in tables])
    jit_back = "SET LOCAL jit TO DEFAULT; "
    if len(tables) < 2:
        return jit_back
    locks = "; ".join(f"LOCK TABLE {name} IN {'ACCESS EXCLUSIVE' if changes else 'ACCESS SHARE'} MODE"
                      for name, changes in tables)
    try:
        cur.execute(f"{jit_back}SAVEPOINT copier_order; {locks}; RELEASE SAVEPOINT copier_order")
    except psycopg2.errors.UndefinedTable:
        cur.execute("ROLLBACK TO SAVEPOINT copier_order; RELEASE SAVEPOINT copier_order")
    return ""


def swap_into_place(cur, staged: StagedTable, options: Options, defer_keys: bool = False,
                    tries: int | None = None, steps: Steps | None = None) -> list[ForeignKey]:
    """Replace the reporting table by the staged one; tried again while readers hold locks
    (1 + --lock-retries tries, unless told how many). The time until the table is locked is the
    unit's "lock" step, the rest its "swap".

    Runs inside the caller's transaction: nothing is visible to readers until it commits.
    Returns the foreign keys to validate once both of their tables are in place, or with
    defer_keys, those still to make (once all the tables they join are in place).
    """
    tries = options.lock_retries + 1 if tries is None else tries
    steps = steps or Steps()
    for attempt in range(tries):
        try:
            with steps.timing("lock"):
                start = cur.mogrify(("SAVEPOINT copier_swap; " if attempt == 0 else "")
                                    + "SELECT set_config('lock_timeout', %s, true); ",
                                    (f"{int(options.lock_timeout * 1000)}ms",)).decode()
                if staged.tied:
                    start = lock_in_order(cur, staged.table, start)
                moment("swapping", table=staged.table.qualified)
                old = capture_reporting_side(cur, staged.table, start, staged.replaces)
            with steps.timing("swap"):
                foreign_keys = replace_table(cur, staged, old)
                if not defer_keys:  # inside the retries: a key locks the table at its other end
                    foreign_keys = add_foreign_keys(cur, foreign_keys, staged.table)
                cur.execute("SELECT set_config('lock_timeout', '0', true); RELEASE SAVEPOINT copier_swap")
            return foreign_keys
        except (psycopg2.errors.LockNotAvailable, psycopg2.errors.DeadlockDetected):
            # Readers hold the table, or another job is swapping a table that shares a view
            # with this one: let go of everything, wait, try again.
            with steps.timing("lock"):
                cur.execute("ROLLBACK TO SAVEPOINT copier_swap")
                if attempt == tries - 1:
                    raise SwapBlocked(
                        f"could not lock {staged.table.qualified} for the swap after "
                        f"{attempt + 1} tries of {options.lock_timeout:g}s: long-running readers?"
                    ) from None
                time.sleep(backoff(attempt, 0.5))
    raise AssertionError("unreachable")


def replace_table(cur, staged: StagedTable, old: ReportingSide | None) -> list[ForeignKey]:
    """The swap's statements once the reporting table is locked and read (old; None when there
    is none yet), in as few round trips as the reporting side allows: two for a table nothing
    else is tied to."""
    table = staged.table
    if old:
        for dependent in reversed(old.dependents):
            dependent.drop(cur)
        for key in old.foreign_keys:
            key.drop(cur)
    # The old table dropped, the staged one and its parts renamed: one round trip, which also
    # reads the new table's grants and columns when nothing is to be restored before that.
    statements = [sql.SQL("DROP TABLE {}").format(table.ident)] if old else []
    statements.append(sql.SQL("ALTER TABLE {} RENAME TO {}").format(staged.ident, sql.Identifier(table.name)))
    statements += rename_statements(staged)
    read_new = bool(old) and not restores_before_grants(cur, old)
    if read_new:
        statements.append(sql.SQL(new_table_statement(cur, table)))
    try:
        cur.execute(sql.SQL("; ").join(statements))
    except psycopg2.errors.DependentObjectsStillExist as exc:
        raise TableCopyError(
            f"{table.qualified} cannot be replaced: {first_line(exc)} "
            f"({exc.diag.message_detail or 'other objects depend on it'})") from None
    if not old:
        apply_comments(cur, table.ident, staged.comment, staged.column_comments)
        return []
    restore_reporting_side(cur, table, old, cur.fetchone() if read_new else None)
    for dependent in old.dependents:
        dependent.recreate(cur, table)
    return old.foreign_keys


def rename_statements(staged: StagedTable) -> list[sql.Composable]:
    """The staged table's parts renamed to their final names, once it has the table's name."""
    table = staged.table
    statements: list[sql.Composable] = []
    for rename in staged.renames:
        if rename.kind == "constraint":
            statements.append(sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
                table.ident, sql.Identifier(rename.temporary), sql.Identifier(rename.final)))
        else:
            keyword = {"index": "INDEX", "sequence": "SEQUENCE", "statistics": "STATISTICS",
                       "table": "TABLE"}[rename.kind]
            statements.append(sql.SQL("ALTER {} {} RENAME TO {}").format(
                sql.SQL(keyword), sql.Identifier(rename.schema or table.schema, rename.temporary),
                sql.Identifier(rename.final)))
    return statements


def add_foreign_keys(cur, keys: list[ForeignKey], table: TableName) -> list[ForeignKey]:
    """Make the keys again; returns those that were valid and are still to be validated."""
    return [key for key in keys if key.add(cur, table)]


def validate_foreign_keys(cur, keys: list[ForeignKey]) -> None:
    """--swap together: every table holds the same night's rows now, so a key that was valid is
    validated, as pg_restore does; a row that breaks one fails the whole swap."""
    for key in keys:
        try:
            cur.execute(f"ALTER TABLE {key.table} VALIDATE CONSTRAINT {display_ident(key.name)}")
        except psycopg2.errors.ForeignKeyViolation as exc:
            raise TableCopyError(
                f"tonight's rows break {key.what}: {describe_error(exc)}; fix the data on the source, "
                f"or {key.remedy}") from None


def validate_after_run(dst, keys: list[ForeignKey], lock_timeout: float) -> None:
    """Per-table swaps: once every table is in place, a key that was valid before the run is
    validated again (a scan that readers do not wait for). One that tonight's rows break stays
    NOT VALID, with a warning: the data itself is already live."""
    done = set()
    with dst.cursor() as cur:
        for key in keys:
            if (key.table, key.name) in done:
                continue
            done.add((key.table, key.name))
            try:
                cur.execute("BEGIN")
                cur.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(lock_timeout * 1000)}ms",))
                cur.execute(f"ALTER TABLE {key.table} VALIDATE CONSTRAINT {display_ident(key.name)}")
                cur.execute("COMMIT")
            except psycopg2.Error as exc:
                cur.execute("ROLLBACK")
                if is_connection_error(exc):
                    raise
                warning = (f"{key.what} stays NOT VALID: {describe_error(exc)}; once the rows agree, "
                           f"ALTER TABLE {key.table} VALIDATE CONSTRAINT {display_ident(key.name)}")
                warn(warning)


def drop_staged(dst, staged: list[StagedTable]) -> None:
    with dst.cursor() as cur:
        for table in staged:
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table.ident))


# ---------------------------------------------------------------------------------------------
# The reporting side: what a reporting table has of its own is kept across the swap, or the table is
# refused, with the statement that resolves it, before anything is written.


# --- the reporting table's own indexes, keys, statistics, checks and settings, made again on the staged table


@dataclass
class ReportingExtras:
    """What the live reporting table has of its own beside the source's definition: its
    indexes (name, CREATE INDEX, comment), keys (name, definition), CREATE STATISTICS, its
    columns' statistics settings (name, target, options), its replica identity
    (pg_class.relreplident, the index of USING INDEX), the index it is clustered on, and the
    indexes a DBA moved to a tablespace of their own."""

    indexes: list[tuple[str, str, str | None]]
    keys: list[tuple[str, str]]
    statistics: list[ExtendedStatistics]
    column_statistics: list[tuple[str, int | None, list[str] | None]]
    identity: tuple[str, str | None, str | None] = ("d", None, None)
    index_tablespaces: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # index, tablespace
    # Comments on the indexes and constraints named as the source's: ("index" or "constraint",
    # name, comment); and the options of its TOAST table (toast.autovacuum_enabled, ...).
    comments: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    toast_options: list[str] = dataclasses.field(default_factory=list)
    # Its sequences' grants and comments, where it has any: (name, grants, comment).
    sequences: list[tuple[str, list, str | None]] = dataclasses.field(default_factory=list)
    # Its checks not named as the source's (name, definition), and its columns' NOT NULL and
    # defaults (name, not null, default expression).
    checks: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    columns: list[tuple[str, bool, str | None]] = dataclasses.field(default_factory=list)


def reporting_extras_query(server_version: int) -> str:
    """The live reporting table's indexes that belong to no constraint and are not named as
    the source's are ($3), its keys and its statistics objects, in one row (none when there is
    no such table). Comments are read from pg_description directly: obj_description, a SQL
    function, costs more than the rest of the query."""
    return f"""
SELECT (SELECT coalesce(json_agg(json_build_array(ic.relname, pg_get_indexdef(i.indexrelid),
                                                  {COMMENT_OF % "i.indexrelid"})
                                 ORDER BY ic.relname), '[]')
        FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
        WHERE i.indrelid = c.oid AND ic.relname <> ALL($3::name[])
          AND NOT EXISTS (SELECT 1 FROM pg_constraint con WHERE con.conindid = i.indexrelid
                          AND con.conrelid = i.indrelid)),
       (SELECT coalesce(json_agg(json_build_array(con.conname, pg_get_constraintdef(con.oid))
                                 ORDER BY con.contype, con.conname), '[]')
        FROM pg_constraint con WHERE con.conrelid = c.oid AND con.contype IN ('p', 'u', 'x')),
       (SELECT coalesce(json_agg(json_build_array({', '.join(statistics_columns(server_version))})
                                 ORDER BY n.nspname, s.stxname), '[]')
        FROM pg_statistic_ext s JOIN pg_namespace n ON n.oid = s.stxnamespace WHERE s.stxrelid = c.oid),
       (SELECT coalesce(json_agg(json_build_array(a.attname, CASE WHEN a.attstattarget >= 0
                                                                  THEN a.attstattarget END, a.attoptions)
                                 ORDER BY a.attnum), '[]')
        FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
          AND (a.attstattarget >= 0 OR a.attoptions IS NOT NULL)),
       json_build_array(c.relreplident,
           (SELECT ic.relname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
            WHERE i.indrelid = c.oid AND i.indisreplident),
           (SELECT ic.relname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
            WHERE i.indrelid = c.oid AND i.indisclustered)),
       (SELECT coalesce(json_agg(json_build_array(ic.relname, ts.spcname) ORDER BY ic.relname), '[]')
        FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
        JOIN pg_tablespace ts ON ts.oid = ic.reltablespace WHERE i.indrelid = c.oid),
       (SELECT coalesce(json_agg(json_build_array(kind, name, comment) ORDER BY kind, name), '[]') FROM (
            SELECT 'index' AS kind, ic.relname AS name, {COMMENT_OF % "i.indexrelid"} AS comment
            FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
            WHERE i.indrelid = c.oid AND ic.relname = ANY($3::name[])
            UNION ALL
            SELECT 'constraint', con.conname, d.description FROM pg_constraint con
            JOIN pg_description d ON d.objoid = con.oid AND d.classoid = 'pg_constraint'::regclass
            WHERE con.conrelid = c.oid AND con.contype IN ('p', 'u', 'x', 'c')) commented
        WHERE comment IS NOT NULL),
       (SELECT coalesce(t.reloptions, '{{}}') FROM pg_class t WHERE t.oid = c.reltoastrelid),
       (SELECT coalesce(json_agg(json_build_array(s.relname, ({GRANTS_JSON_OF.format(relation="s")}),
                                                  {COMMENT_OF % "s.oid"}) ORDER BY s.relname), '[]')
        FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
        WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
          AND d.refobjid = c.oid AND d.deptype IN ('a', 'i')
          AND (s.relacl IS NOT NULL OR {COMMENT_OF % "s.oid"} IS NOT NULL)),
       (SELECT coalesce(json_agg(json_build_array(con.conname, pg_get_constraintdef(con.oid))
                                 ORDER BY con.conname), '[]')
        FROM pg_constraint con WHERE con.conrelid = c.oid AND con.contype = 'c' AND con.conislocal
          AND con.conname <> ALL($3::name[])),
       (SELECT coalesce(json_agg(json_build_array(a.attname, a.attnotnull, pg_get_expr(d.adbin, d.adrelid))
                                 ORDER BY a.attnum), '[]')
        FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
          AND (a.attnotnull OR d.adbin IS NOT NULL))
FROM pg_class c JOIN pg_namespace cn ON cn.oid = c.relnamespace
WHERE cn.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
"""


def reporting_extras(cur, definition: TableDefinition, staged: StagedTable) -> ReportingExtras:
    """Read once per staged table, after its load: the reporting side as it is then."""
    if staged.extras is None:
        cur.execute(reporting_extras_statement(cur, definition, staged))
        staged.extras = extras_from(cur.fetchone())
    return staged.extras


def reporting_extras_statement(cur, definition: TableDefinition, staged: StagedTable) -> str:
    source_names = sorted({name for name, _ in definition.indexes} | {c.name for c in definition.constraints})
    return prepared_statement(cur, "copier_reporting_extras",
                              reporting_extras_query(cur.connection.server_version),
                              staged.table.schema, staged.table.name, source_names)


def extras_from(row: tuple | None) -> ReportingExtras:
    if row is None:
        return ReportingExtras([], [], [], [])
    (indexes, keys, statistics, column_statistics, identity, index_tablespaces, comments, toast,
     sequences, checks, columns) = row
    return ReportingExtras(rows(indexes), rows(keys), [ExtendedStatistics(*st) for st in statistics],
                           rows(column_statistics), tuple(identity), rows(index_tablespaces),
                           rows(comments), list(toast or []),
                           [(name, rows(grants), comment) for name, grants, comment in sequences],
                           rows(checks), rows(columns))


def build_reporting_indexes(cur, definition: TableDefinition, staged: StagedTable) -> None:
    """Indexes added on the reporting side (not on the source) come back on the new table.

    Built here, before the swap, so readers never wait for them. One that no longer fits the
    new shape (a dropped column, duplicates under a unique index) is reported and left out:
    it must not cost the night's data.
    """
    table = definition.table
    source_names = {name for name, _ in definition.indexes} | {c.name for c in definition.constraints}

    def shape(index_sql: str) -> str:  # the statement without its name
        return retarget_index(index_sql, f" ON {definition.quoted_name} ", "i", "t")

    # Not the source's own index under the name it had at the last copy (renamed since).
    source_shapes = {shape(statement) for _, statement in definition.indexes}
    extra = [row for row in reporting_extras(cur, definition, staged).indexes
             if row[0] not in source_names and shape(row[1]) not in source_shapes]
    for n, (name, index_sql, comment) in enumerate(extra, 1):
        temporary = f"{staged.staging}_r{n}"
        statement = retarget_index(index_sql, f" ON {definition.quoted_name} ", temporary, staged.quoted)
        if not built_or_skipped(cur, lambda statement=statement: cur.execute(statement), table,
                                runlog.INDEX_SKIPPED, index=name):
            continue
        if comment is not None:
            cur.execute(sql.SQL("COMMENT ON INDEX {} IS {}").format(
                sql.Identifier(table.schema, temporary), sql.Literal(comment)))
        staged.renames.append(Rename("index", temporary, name))
    build_reporting_keys(cur, definition, staged, source_names)
    build_partition_indexes(cur, staged)


def build_reporting_keys(cur, definition: TableDefinition, staged: StagedTable,
                         source_names: set[str]) -> None:
    table = definition.table
    # Keys the reporting side has and the source does not (a partitioned table's key that
    # includes the partition key, say). Not the source's own key under the name it had at the
    # last copy (renamed on the source since, or a table renamed into place): the same key, or
    # a second primary key.
    source_keys = {c.definition for c in definition.constraints}
    primary_key = any(c.kind == "p" for c in definition.constraints)
    extra = [(name, key) for name, key in reporting_extras(cur, definition, staged).keys
             if name not in source_names and key not in source_keys
             and not (primary_key and key.startswith("PRIMARY KEY"))]
    for n, (name, definition_sql) in enumerate(extra, 1):
        temporary = f"{staged.staging}_rk{n}"
        add = sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
            staged.ident, sql.Identifier(temporary), sql.SQL(definition_sql))
        if built_or_skipped(cur, lambda add=add: cur.execute(add), table, runlog.INDEX_SKIPPED, index=name):
            staged.renames.append(Rename("constraint", temporary, name))


def keep_identity_and_cluster(cur, definition: TableDefinition, staged: StagedTable) -> None:
    """The reporting table's replica identity (a publication's UPDATEs and DELETEs need it)
    and the index CLUSTER uses, on the new table. One whose index is no longer there (the
    source dropped the key, a reporting index no longer fit) is left out with a warning."""
    table = definition.table
    kind, identity_index, clustered = reporting_extras(cur, definition, staged).identity
    settings = {"f": ("REPLICA IDENTITY FULL", None), "n": ("REPLICA IDENTITY NOTHING", None),
                "i": ("REPLICA IDENTITY USING INDEX", identity_index)}
    wanted = [settings[kind]] if kind in settings else []
    wanted += [("CLUSTER ON", clustered)] if clustered else []
    for setting, index in wanted:
        what = f"{setting} {display_ident(index)}" if index else setting
        made = staged.made_as(index, "index", "constraint") if index else None
        if index and made is None:
            warn(f"{table.qualified}: {what} left out: no index of that name on the new table")
            continue
        statement = sql.SQL("ALTER TABLE {} " + setting).format(staged.ident)
        if made:
            statement += sql.SQL(" {}").format(sql.Identifier(made))
        built_or_skipped(cur, lambda statement=statement: cur.execute(statement), table, runlog.WARNING,
                         message=f"{table.qualified}: {what} left out")


def keep_index_tablespaces(cur, definition: TableDefinition, staged: StagedTable) -> None:
    """An index a DBA moved to a tablespace of its own goes there again: the new table's index
    of that name is moved once built (the index definitions name no tablespace)."""
    for index, tablespace in reporting_extras(cur, definition, staged).index_tablespaces:
        if made := staged.made_as(index, "index", "constraint"):  # a key's index: the key's name
            cur.execute(sql.SQL("ALTER INDEX {} SET TABLESPACE {}").format(
                sql.Identifier(definition.table.schema, made), sql.Identifier(tablespace)))


def keep_comments_and_toast_options(cur, definition: TableDefinition, staged: StagedTable) -> None:
    """The reporting side's comments on the table's keys, checks and indexes (the source's are
    not copied), its TOAST table's options, and its sequences' grants and comments, on the new
    table."""
    extras = reporting_extras(cur, definition, staged)
    checks = {c.name for c in definition.constraints if c.kind == "c" and c.validated}  # not renamed
    for kind, name, comment in extras.comments:
        index = staged.made_as(name, "index", "constraint")  # a key's index: the key's name
        key = staged.made_as(name, "constraint") or (name if name in checks else None)
        if kind == "index" and index:
            cur.execute(sql.SQL("COMMENT ON INDEX {} IS {}").format(
                sql.Identifier(definition.table.schema, index), sql.Literal(comment)))
        elif kind == "constraint" and key:
            cur.execute(sql.SQL("COMMENT ON CONSTRAINT {} ON {} IS {}").format(
                sql.Identifier(key), staged.ident, sql.Literal(comment)))
    if extras.toast_options:
        cur.execute(sql.SQL("ALTER TABLE {} SET ({})").format(staged.ident, sql.SQL(", ").join(
            sql.SQL(f"toast.{option}") for option in extras.toast_options)))
    for name, grants, comment in extras.sequences:
        if made := staged.made_as(name, "sequence"):
            ident = sql.Identifier(definition.table.schema, made)
            apply_grants(cur, "SEQUENCE", ident, grants, table_grants(cur, ident))
            apply_comments(cur, ident, comment, {}, "SEQUENCE")


def keep_checks_not_nulls_and_defaults(cur, definition: TableDefinition, staged: StagedTable) -> None:
    """The checks, NOT NULLs and column defaults added on the reporting side (where the source
    has none) on the new table. One that tonight's rows break, or that no longer fits the new
    shape, is left out with a warning: it must not cost the night's data."""
    extras = reporting_extras(cur, definition, staged)
    table, columns = definition.table, {c.name: c for c in definition.columns}
    changes = [(f"CHECK {name}", sql.SQL("ADD CONSTRAINT {} {}").format(sql.Identifier(name), sql.SQL(check)))
               for name, check in extras.checks]
    for name, not_null, default in extras.columns:
        column = columns.get(name)
        if column is not None and not_null and not column.not_null:
            changes.append((f"NOT NULL on column {name}",
                            sql.SQL("ALTER COLUMN {} SET NOT NULL").format(sql.Identifier(name))))
        if column is not None and default is not None and column.default is None and not column.generated:
            changes.append((f"DEFAULT {default} on column {name}", sql.SQL(
                "ALTER COLUMN {} SET DEFAULT {}").format(sql.Identifier(name), sql.SQL(default))))
    for what, change in changes:
        statement = sql.SQL("ALTER TABLE {} ").format(staged.ident) + change
        built_or_skipped(cur, lambda statement=statement: cur.execute(statement), table, runlog.WARNING,
                         message=f"{table.qualified}: the reporting side's {what} left out")


def keep_column_statistics(cur, definition: TableDefinition, staged: StagedTable) -> None:
    """The statistics target and options set on the reporting table's columns, where the
    source sets none on that column (a setting the source has wins: it may have changed)."""
    source = {column: (target, options) for column, target, options in definition.column_statistics}
    columns = {c.name for c in definition.columns}
    for column, target, options in reporting_extras(cur, definition, staged).column_statistics:
        source_target, source_options = source.get(column, (None, None))
        if column in columns and target is not None and source_target is None:
            cur.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET STATISTICS {}").format(
                staged.ident, sql.Identifier(column), sql.Literal(target)))
        if column in columns and options and not source_options:
            cur.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET ({})").format(
                staged.ident, sql.Identifier(column), sql.SQL(", ").join(sql.SQL(o) for o in options)))


def reporting_statistics(cur, definition: TableDefinition, staged: StagedTable) -> list[ExtendedStatistics]:
    """CREATE STATISTICS objects of the live reporting table that the source does not have."""
    source_names = {(s.schema, s.name) for s in definition.extended_statistics}
    return [s for s in reporting_extras(cur, definition, staged).statistics
            if (s.schema, s.name) not in source_names]


def built_or_skipped(cur, build, table: TableName, event: runlog.Event, **fields) -> bool:
    """Build something of the reporting side's own on the staged table, or, when it no longer
    fits the new shape, report it and leave it out: it must not cost the night's data."""
    cur.execute("SAVEPOINT copier_extra")
    try:
        build()
    except psycopg2.DatabaseError as exc:
        if INTERRUPTED.is_set() or cur.connection.closed or is_connection_error(exc):
            raise
        cur.execute("ROLLBACK TO SAVEPOINT copier_extra")
        if event is runlog.WARNING:
            warn(fields.pop("message"), table=table.qualified, **fields, error=describe_error(exc))
        else:
            log_event(event, table=table.qualified, **fields, error=describe_error(exc))
        return False
    cur.execute("RELEASE SAVEPOINT copier_extra")
    return True


# --- partitions: a partitioned reporting table stays partitioned, with its own partitions


# A partition's own indexes (not its share of an index of the whole table), as the reporting
# side added them.
PARTITION_INDEXES_QUERY = """
SELECT ic.relname, pg_get_indexdef(x.indexrelid), quote_ident(n.nspname) || '.' || quote_ident(c.relname)
FROM pg_index x
JOIN pg_class ic ON ic.oid = x.indexrelid
JOIN pg_class c ON c.oid = x.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s AND NOT ic.relispartition
  AND NOT EXISTS (SELECT 1 FROM pg_constraint con WHERE con.conindid = x.indexrelid)
ORDER BY ic.relname
"""


def build_partition_indexes(cur, staged: StagedTable) -> None:
    for schema, temporary, name in staged.partitions:
        cur.execute(PARTITION_INDEXES_QUERY, (schema, name))
        for n, (index, index_sql, quoted) in enumerate(cur.fetchall(), 1):
            temporary_index = f"{temporary}_r{n}"
            statement = retarget_index(index_sql, f" ON {quoted} ", temporary_index,
                                       sql.Identifier(schema, temporary).as_string(cur))
            if built_or_skipped(cur, lambda statement=statement: cur.execute(statement), staged.table,
                                runlog.INDEX_SKIPPED, index=index):
                staged.renames.append(Rename("index", temporary_index, index, schema))


@dataclass
class PartitionSide:
    """What belongs to a partition beyond its rows, kept across the swap."""

    schema: str
    name: str
    owner: str
    grants: list[tuple[str, str, bool]]
    comment: str | None
    index_names: list[tuple[str, str]]  # (its index's name, the parent index it belongs to)
    triggers: list[str]  # its own (not its share of the table's), as CREATE TRIGGER statements
    row_security: tuple[bool, bool] = (False, False)  # ENABLE and FORCE ROW LEVEL SECURITY
    policies: list = dataclasses.field(default_factory=list)  # as ReportingSide.policies
    rules: list[str] = dataclasses.field(default_factory=list)  # CREATE RULE statements


PARTITION_SIDE_QUERY = """
SELECT n.nspname, c.relname, pg_get_userbyid(c.relowner), obj_description(c.oid, 'pg_class'),
       (SELECT coalesce(json_agg(json_build_array(ic.relname, pi.relname)), '[]')
        FROM pg_index x JOIN pg_class ic ON ic.oid = x.indexrelid
        JOIN pg_inherits i ON i.inhrelid = x.indexrelid JOIN pg_class pi ON pi.oid = i.inhparent
        WHERE x.indrelid = c.oid),
       (SELECT coalesce(json_agg(pg_get_triggerdef(g.oid) ORDER BY g.tgname), '[]') FROM pg_trigger g
        WHERE g.tgrelid = c.oid AND NOT g.tgisinternal AND g.tgparentid = 0),
       c.relrowsecurity, c.relforcerowsecurity,
       (SELECT coalesce(json_agg(json_build_array(p.policyname, p.permissive, p.roles::text[], p.cmd,
                                                  p.qual, p.with_check) ORDER BY p.policyname), '[]')
        FROM pg_policies p WHERE p.schemaname = n.nspname AND p.tablename = c.relname),
       (SELECT coalesce(json_agg(pg_get_ruledef(r.oid) ORDER BY r.rulename), '[]') FROM pg_rewrite r
        WHERE r.ev_class = c.oid AND r.rulename <> '_RETURN')
FROM pg_partition_tree(%s) t JOIN pg_class c ON c.oid = t.relid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE t.level > 0
"""


def capture_partitions(cur, oid: int) -> list[PartitionSide]:
    cur.execute(PARTITION_SIDE_QUERY, (oid,))
    sides = []
    for schema, name, owner, comment, index_names, triggers, enable, force, policies, its_rules \
            in cur.fetchall():
        grants = table_grants(cur, sql.Identifier(schema, name))
        sides.append(PartitionSide(schema, name, owner, grants, comment, [tuple(i) for i in index_names],
                                   triggers, (enable, force), policies, its_rules))
    return sides


def restore_partitions(cur, table: TableName, partitions: list[PartitionSide]) -> None:
    """Each partition that is there again gets its owner, grants, comment, own triggers, rules,
    row-level security and policies back, and its share of the table's indexes gets back the
    name it had. A policy that cannot be made again fails the swap: a partition readable beyond
    its policies would be worse than last night's data."""
    for side in partitions:
        ident = sql.Identifier(side.schema, side.name)
        if live_table_oid(cur, TableName(side.schema, side.name)) is None:
            continue
        partition = TableName(side.schema, side.name).qualified
        for trigger in side.triggers:
            recreate_or_fail(cur, trigger, f"trigger of partition {partition}", table)
        for rule in side.rules:
            recreate_or_fail(cur, rule, f"rule of partition {partition}", table)
        if side.row_security[0]:
            cur.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(ident))
        if side.row_security[1]:
            cur.execute(sql.SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(ident))
        for policy in side.policies:
            recreate_or_fail(cur, policy_statement(ident, policy),
                             f"row-level security policy {policy[0]} of partition {partition}", table)
        if side.owner != current_user(cur):
            cur.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(ident, sql.Identifier(side.owner)))
        apply_grants(cur, "TABLE", ident, side.grants, table_grants(cur, ident))
        apply_comments(cur, ident, side.comment, {})
        for index, parent_index in side.index_names:
            cur.execute("SELECT ic.relname FROM pg_index x JOIN pg_class ic ON ic.oid = x.indexrelid "
                        "JOIN pg_inherits i ON i.inhrelid = x.indexrelid "
                        "JOIN pg_class pi ON pi.oid = i.inhparent "
                        "WHERE x.indrelid = %s::regclass AND pi.relname = %s",
                        (ident.as_string(cur), parent_index))
            row = cur.fetchone()
            if row and row[0] != index:
                cur.execute(sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                    sql.Identifier(side.schema, row[0]), sql.Identifier(index)))


# --- what depends on the table: pg_depend names everything a DROP TABLE would refuse over or take along


@dataclass
class DependentView:
    schema: str
    name: str
    kind: str  # v (view) or m (materialized view)
    definition: str
    options: list[str]
    owner: str
    grants: list[tuple[str, str, bool]]
    comment: str | None
    column_comments: dict[str, str]
    indexes: list[str]
    populated: bool
    extras: list[str]  # the view's own rules and triggers, made again after it

    @property
    def what(self) -> str:
        kind = "materialized view" if self.kind == "m" else "view"
        return f"{kind} {TableName(self.schema, self.name).qualified}"

    def drop(self, cur) -> None:
        keyword = "MATERIALIZED VIEW" if self.kind == "m" else "VIEW"
        cur.execute(sql.SQL("DROP {} {}").format(sql.SQL(keyword), sql.Identifier(self.schema, self.name)))

    def recreate(self, cur, table: TableName) -> None:
        recreate_view(cur, table, self)


@dataclass
class Routine:
    """A function, procedure or aggregate whose arguments, result or SQL-standard body use the
    table or its row type: dropped with it, so made again from its definition."""

    signature: str  # schema.name(argument types), as regprocedure prints it
    kind: str  # pg_proc.prokind: f, p, a, w
    definition: str  # CREATE FUNCTION / PROCEDURE / AGGREGATE
    owner: str
    grants: list[tuple[str, str, bool]]
    comment: str | None

    @property
    def what(self) -> str:
        return f"{ROUTINE_KINDS.get(self.kind, 'function')} {self.signature}"

    def drop(self, cur) -> None:
        cur.execute(f"DROP ROUTINE {self.signature}")

    def recreate(self, cur, table: TableName) -> None:
        # As pg_dump: a body kept as text is checked when it runs (with its caller's or its own
        # search_path), not now under the copier's; an SQL-standard body is checked all the same.
        cur.execute("SELECT set_config('check_function_bodies', 'off', true)")
        recreate_or_fail(cur, sql.SQL(self.definition), self.what, table,
                         f"DROP ROUTINE {self.signature}")
        cur.execute("SELECT set_config('check_function_bodies', 'on', true)")
        ident = sql.SQL(self.signature)
        if self.owner != current_user(cur):
            cur.execute(sql.SQL("ALTER ROUTINE {} OWNER TO {}").format(ident, sql.Identifier(self.owner)))
        cur.execute(ROUTINE_GRANTS_QUERY, (self.signature,))
        apply_grants(cur, "ROUTINE", ident, self.grants, cur.fetchall())
        if self.comment is not None:
            cur.execute(sql.SQL("COMMENT ON ROUTINE {} IS {}").format(ident, sql.Literal(self.comment)))


ROUTINE_KINDS = {"f": "function", "p": "procedure", "a": "aggregate", "w": "window function"}


@dataclass
class ForeignKey:
    """A foreign key of the reporting side, to or from a copied table. Tables are replaced one by
    one, each from the run's snapshot, so a key is made again NOT VALID (no scan under the swap's
    lock, and a reporting database takes no writes it would guard) and validated once both of
    its tables hold the same night's rows."""

    table: str  # the referencing table, schema-qualified and quoted
    name: str
    definition: str  # FOREIGN KEY (...) REFERENCES ..., without NOT VALID
    valid: bool
    comment: str | None
    partitioned: bool  # the referencing table is partitioned
    to_partitioned: bool  # the referenced table is

    @property
    def what(self) -> str:
        return f"foreign key {display_ident(self.name)} of {self.table}"

    @property
    def remedy(self) -> str:
        return f"ALTER TABLE {self.table} DROP CONSTRAINT {display_ident(self.name)}"

    def drop(self, cur) -> None:
        cur.execute(self.remedy)

    def add(self, cur, table: TableName) -> bool:
        """Make the key again; True when it must still be validated.

        Before PostgreSQL 18 a partitioned table takes no NOT VALID key, and a key to a
        partitioned table, once validated, would leave the copies PostgreSQL keeps for each of
        its partitions NOT VALID (a server defect fixed in 18): such a key is made as it was,
        validated or not, and checked now.
        """
        if cur.connection.server_version >= 180000 or not (self.partitioned or self.to_partitioned):
            not_valid = True
        else:
            not_valid = self.to_partitioned and not self.partitioned and not self.valid
        statement = f"ALTER TABLE {self.table} ADD CONSTRAINT {display_ident(self.name)} {self.definition}"
        recreate_or_fail(cur, sql.SQL(statement + (" NOT VALID" if not_valid else "")), self.what,
                         table, self.remedy)
        if self.comment is not None:
            cur.execute(sql.SQL("COMMENT ON CONSTRAINT {} ON {} IS {}").format(
                sql.Identifier(self.name), sql.SQL(self.table), sql.Literal(self.comment)))
        return self.valid and not_valid


@dataclass
class Restatement:
    """Something of another table's that names the copied table (a rule, a policy, a column
    default on its sequence, an inheritance child): taken off before the swap, put back after."""

    what: str
    remove: str
    restore: str
    remedy: str

    def drop(self, cur) -> None:
        cur.execute(self.remove)

    def recreate(self, cur, table: TableName) -> None:
        recreate_or_fail(cur, sql.SQL(self.restore), self.what, table, self.remedy)


# Everything that depends on a relation, a type or a routine in the given list, by the object's
# own catalog; `relation` is the table it belongs to, where it belongs to one.
DEPENDENTS_QUERY = """
SELECT DISTINCT d.classid::regclass::text, d.objid,
       CASE WHEN d.classid = 'pg_class'::regclass THEN d.objsubid ELSE 0 END,
       pg_describe_object(d.classid, d.objid, d.objsubid),
       (pg_identify_object(d.classid, d.objid, d.objsubid)).type,
       (pg_identify_object(d.classid, d.objid, d.objsubid)).identity,
       CASE d.classid
           WHEN 'pg_rewrite'::regclass THEN (SELECT ev_class FROM pg_rewrite WHERE oid = d.objid)
           WHEN 'pg_constraint'::regclass THEN (SELECT conrelid FROM pg_constraint WHERE oid = d.objid)
           WHEN 'pg_policy'::regclass THEN (SELECT polrelid FROM pg_policy WHERE oid = d.objid)
           WHEN 'pg_attrdef'::regclass THEN (SELECT adrelid FROM pg_attrdef WHERE oid = d.objid)
           WHEN 'pg_trigger'::regclass THEN (SELECT tgrelid FROM pg_trigger WHERE oid = d.objid)
           WHEN 'pg_class'::regclass THEN d.objid
       END,
       CASE
           WHEN d.classid = 'pg_rewrite'::regclass THEN (
               SELECT CASE WHEN r.rulename = '_RETURN' AND c.relkind IN ('v', 'm') THEN 'view' ELSE 'rule' END
               FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class WHERE r.oid = d.objid)
           WHEN d.classid = 'pg_proc'::regclass THEN 'routine'
           WHEN d.classid = 'pg_constraint'::regclass THEN (
               SELECT CASE WHEN contype <> 'f' THEN 'other' WHEN conparentid = 0 THEN 'foreign key'
                           ELSE 'partition share of a key' END
               FROM pg_constraint WHERE oid = d.objid)
           WHEN d.classid = 'pg_policy'::regclass THEN 'policy'
           WHEN d.classid = 'pg_attrdef'::regclass THEN 'default'
           WHEN d.classid = 'pg_class'::regclass AND d.objsubid = 0 AND EXISTS (
               SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
               WHERE i.inhrelid = d.objid AND i.inhparent = ANY(%(family)s) AND NOT c.relispartition)
               THEN 'inheritance child'
           ELSE 'other'
       END
FROM pg_depend d
JOIN unnest(%(catalogs)s::regclass[], %(oids)s::oid[]) AS ref(classid, objid)
  ON d.refclassid = ref.classid AND d.refobjid = ref.objid
WHERE d.deptype = 'n'
"""


# A relation as something others depend on: itself, its row type and that type's array type.
RELATION_SEEDS_QUERY = """
SELECT c.oid, c.reltype, t.typarray FROM pg_class c LEFT JOIN pg_type t ON t.oid = c.reltype
WHERE c.oid = ANY(%s)
"""


# The reporting table and its partitions, and the sequences their columns own.
FAMILY_QUERY = """
WITH tree AS (SELECT %(oid)s::oid AS relid UNION SELECT relid FROM pg_partition_tree(%(oid)s))
SELECT relid FROM tree
UNION
SELECT d.objid FROM pg_depend d
WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = ANY(ARRAY(SELECT relid FROM tree))
  AND d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
  AND (SELECT relkind FROM pg_class WHERE oid = d.objid) = 'S'
"""


# Advice for what cannot be carried, by pg_identify_object's type: how to remove it.
DROP_ADVICE = {
    "table column": "give the column another type, e.g. ALTER TABLE {table} ALTER COLUMN {column} "
                    "TYPE jsonb USING to_jsonb({column})",
    "table constraint": "ALTER TABLE {table} DROP CONSTRAINT {name}",
    "domain constraint": "ALTER DOMAIN {table} DROP CONSTRAINT {name}",
    "trigger": "DROP TRIGGER {name} ON {table}",
}


def sweep_dependents(cur, table: TableName, table_oid: int,
                     capture: bool = True) -> tuple[list, list[ForeignKey]]:
    """Everything outside the table that depends on it, its partitions, its row type or its
    sequences, and, in turn, on the views and routines among them: (what is made again, in
    dependency order; the other tables' foreign keys to it). Raises Refused for what cannot be.

    Other jobs may replace views meanwhile: what is gone by the time it is read is passed over.
    Without capture, only the refusals: reading a view's definition locks what it reads.
    """
    cur.execute(FAMILY_QUERY, {"oid": table_oid})
    family = sorted(row[0] for row in cur.fetchall())
    found: dict[tuple, tuple[int, tuple]] = {}  # (catalog, oid, column) -> (depth, row)
    seeds = relation_seeds(cur, family)
    depth = 0
    while seeds and depth < 50:
        depth += 1
        cur.execute(DEPENDENTS_QUERY, {"catalogs": [c for c, _ in seeds], "oids": [o for _, o in seeds],
                                       "family": family})
        views, routines = [], []
        for row in cur.fetchall():
            catalog, oid, column, _description, _type, _identity, relation, role = row
            if relation in family or role is None:
                continue  # the table's own (carried with it), or gone meanwhile
            found[(catalog, oid, column)] = (depth, row)
            if role == "view":
                views.append(relation)
            elif role == "routine":
                routines.append(("pg_proc", oid))
        seeds = relation_seeds(cur, views) + routines
    ordered = [row for _, row in sorted(found.values(), key=lambda item: item[0])]
    recreated_views = {row[6] for row in ordered if row[7] == "view"}
    refused = [row for row in ordered if row[7] == "other"]
    if refused:
        raise refusal(cur, table, refused)
    dependents, foreign_keys = [], []
    for _catalog, oid, _column, description, _kind, _identity, relation, role in ordered:
        if not capture:
            break
        if role == "view":
            dependents.append(capture_view(cur, relation))
        elif role == "rule" and relation not in recreated_views:  # a view's own come with it
            dependents.append(capture_rule(cur, oid, description))
        elif role == "routine":
            dependents.append(capture_routine(cur, oid))
        elif role == "foreign key":
            foreign_keys.append(capture_foreign_key(cur, oid))
        elif role == "policy":
            dependents.append(capture_policy(cur, oid, description))
        elif role == "default":
            dependents.append(capture_default(cur, oid, description))
        elif role == "inheritance child":
            dependents.append(capture_child(cur, oid, family))
    # Views reached along several paths: the deepest place is the one that counts.
    seen, unique = set(), []
    for dependent in reversed(dependents):
        if dependent is not None and dependent.what not in seen:
            seen.add(dependent.what)
            unique.append(dependent)
    return list(reversed(unique)), [key for key in foreign_keys if key is not None]


def relation_seeds(cur, relations: list[int]) -> list[tuple[str, int]]:
    if not relations:
        return []
    cur.execute(RELATION_SEEDS_QUERY, (relations,))
    seeds = []
    for oid, row_type, array_type in cur.fetchall():
        seeds += [("pg_class", oid)] + [("pg_type", t) for t in (row_type, array_type) if t]
    return seeds


def capture_child(cur, oid: int, family: list[int]) -> Restatement | None:
    cur.execute("SELECT i.inhrelid::regclass::text, i.inhparent::regclass::text FROM pg_inherits i "
                "WHERE i.inhrelid = %s AND i.inhparent = ANY(%s)", (oid, family))
    row = cur.fetchone()
    if row is None:
        return None
    child, parent = row
    return Restatement(f"inheritance child {child}", f"ALTER TABLE {child} NO INHERIT {parent}",
                       f"ALTER TABLE {child} INHERIT {parent}", f"ALTER TABLE {child} NO INHERIT {parent}")


def refusal(cur, table: TableName, refused: list[tuple]) -> Refused:
    """What to say about dependents the copier cannot keep: which objects, and how to resolve
    the first (an object before its own constraints: dropping a domain drops its checks)."""
    refused = sorted(refused, key=lambda row: row[4].endswith("constraint"))
    _catalog, oid, _column, description, kind, identity, _relation, _role = refused[0]
    if kind == "type":
        cur.execute("SELECT typtype = 'd' FROM pg_type WHERE oid = %s", (oid,))
        kind = "domain" if (cur.fetchone() or [False])[0] else kind
    name, _, owner = identity.rpartition(" on ")
    fields = {"table": owner, "name": name, "column": identity.rpartition(".")[2]}
    if kind == "table column":
        fields["table"] = identity.rpartition(".")[0]
    advice = DROP_ADVICE.get(kind, f"DROP {kind.upper()} {identity}").format(**fields)
    others = [row[3] for row in refused[1:]]
    more = f" (and {len(others)} more: {', '.join(others)})" if others else ""
    return Refused(f"{table.qualified} cannot be replaced: {description} depends on it and would "
                   f"not survive the refresh{more}; resolve it on the reporting side ({advice}), "
                   f"or stop copying {table.qualified}")


VIEW_EXTRAS_QUERY = """
SELECT pg_get_ruledef(oid) FROM pg_rewrite WHERE ev_class = %(oid)s AND rulename <> '_RETURN'
UNION ALL
SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = %(oid)s AND NOT tgisinternal
"""


def capture_view(cur, oid: int) -> DependentView | None:
    cur.execute(
        "SELECT n.nspname, c.relname, c.relkind, pg_get_viewdef(c.oid), coalesce(c.reloptions, '{}'), "
        "pg_get_userbyid(c.relowner), c.relispopulated, obj_description(c.oid, 'pg_class') "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s", (oid,))
    row = cur.fetchone()
    if row is None:
        return None
    schema, name, kind, definition, options, owner, populated, comment = row
    cur.execute(GRANTS_QUERY, (oid,))
    grants = cur.fetchall()
    column_comments = read_column_comments(cur, oid)
    cur.execute("SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = %s", (oid,))
    indexes = [r[0] for r in cur.fetchall()]
    cur.execute(VIEW_EXTRAS_QUERY, {"oid": oid})
    extras = [r[0] for r in cur.fetchall()]
    return DependentView(schema, name, kind, definition, list(options), owner, grants, comment,
                         column_comments, indexes, populated, extras)


ROUTINE_QUERY = """
SELECT p.oid::regprocedure::text, p.prokind, pg_get_userbyid(p.proowner),
       obj_description(p.oid, 'pg_proc'),
       CASE WHEN p.prokind <> 'a' THEN pg_get_functiondef(p.oid) END
FROM pg_proc p WHERE p.oid = %s
"""


# Grants of a routine to others, PUBLIC's default EXECUTE included.
ROUTINE_GRANTS_QUERY = """
SELECT CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
       a.privilege_type, a.is_grantable
FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
WHERE p.oid = %s::regprocedure AND a.grantee <> p.proowner
ORDER BY 1, 2
"""


def capture_routine(cur, oid: int) -> Routine | None:
    cur.execute(ROUTINE_QUERY, (oid,))
    row = cur.fetchone()
    if row is None:
        return None
    signature, kind, owner, comment, definition = row
    if kind == "a":
        definition = aggregate_definition(cur, oid, signature)
    cur.execute(ROUTINE_GRANTS_QUERY, (signature,))
    return Routine(signature, kind, definition, owner, cur.fetchall(), comment)


AGGREGATE_QUERY = """
SELECT a.aggkind, a.aggmtransfn <> 0 OR a.aggsortop <> 0,
       quote_ident(n.nspname) || '.' || quote_ident(p.proname), pg_get_function_arguments(p.oid),
       a.aggtransfn::regproc::text, format_type(a.aggtranstype, NULL), a.aggtransspace,
       nullif(a.aggfinalfn, 0)::regproc::text, a.aggfinalextra, a.aggfinalmodify,
       nullif(a.aggcombinefn, 0)::regproc::text, nullif(a.aggserialfn, 0)::regproc::text,
       nullif(a.aggdeserialfn, 0)::regproc::text, a.agginitval, p.proparallel
FROM pg_aggregate a JOIN pg_proc p ON p.oid = a.aggfnoid JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE a.aggfnoid = %s
"""


FINAL_MODIFY = {"r": "READ_ONLY", "s": "SHAREABLE", "w": "READ_WRITE"}


PARALLEL = {"s": "SAFE", "r": "RESTRICTED", "u": "UNSAFE"}


def aggregate_definition(cur, oid: int, signature: str) -> str:
    """CREATE AGGREGATE for an ordinary aggregate (pg_get_functiondef does not print them)."""
    cur.execute(AGGREGATE_QUERY, (oid,))
    (kind, unusual, name, arguments, transition, state_type, state_space, final, final_extra,
     final_modify, combine, serialize, deserialize, initial, parallel) = cur.fetchone()
    if kind != "n" or unusual:
        raise Refused(f"aggregate {signature} depends on the copied table and is of a kind the "
                      f"copier does not make again (ordered-set, moving or with a sort operator): "
                      f"DROP AGGREGATE {signature} before the copy, and make it again after")
    parts = [f"SFUNC = {transition}", f"STYPE = {state_type}"]
    parts += [f"SSPACE = {state_space}"] if state_space else []
    parts += [f"FINALFUNC = {final}", f"FINALFUNC_MODIFY = {FINAL_MODIFY[final_modify]}"] if final else []
    parts += ["FINALFUNC_EXTRA"] if final_extra else []
    parts += [f"COMBINEFUNC = {combine}"] if combine else []
    parts += [f"SERIALFUNC = {serialize}", f"DESERIALFUNC = {deserialize}"] if serialize else []
    parts += [f"INITCOND = {quote_literal(initial)}"] if initial is not None else []
    parts.append(f"PARALLEL = {PARALLEL[parallel]}")
    return f"CREATE AGGREGATE {name}({arguments}) ({', '.join(parts)})"


FOREIGN_KEY_QUERY = """
SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid), c.convalidated,
       obj_description(c.oid, 'pg_constraint'), r.relkind = 'p', f.relkind = 'p'
FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid JOIN pg_class f ON f.oid = c.confrelid
WHERE {}
ORDER BY 1, 2
"""


def capture_foreign_key(cur, oid: int) -> ForeignKey | None:
    cur.execute(FOREIGN_KEY_QUERY.format("c.oid = %s"), (oid,))
    row = cur.fetchone()
    return foreign_key(*row) if row else None


def foreign_key(table, name, definition, valid, comment, partitioned, to_partitioned) -> ForeignKey:
    definition = definition.removesuffix(" NOT VALID")
    return ForeignKey(table, name, definition, valid, comment, partitioned, to_partitioned)


def capture_rule(cur, oid: int, description: str) -> Restatement | None:
    cur.execute("SELECT quote_ident(rulename), ev_class::regclass::text, pg_get_ruledef(oid) "
                "FROM pg_rewrite WHERE oid = %s", (oid,))
    row = cur.fetchone()
    if row is None:
        return None
    name, relation, definition = row
    drop = f"DROP RULE {name} ON {relation}"
    return Restatement(description, drop, definition, drop)


def capture_policy(cur, oid: int, description: str) -> Restatement | None:
    cur.execute(
        "SELECT p.policyname, p.permissive, p.roles::text[], p.cmd, p.qual, p.with_check, "
        "pol.polrelid::regclass::text FROM pg_policy pol JOIN pg_class c ON c.oid = pol.polrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_policies p ON p.schemaname = n.nspname "
        "AND p.tablename = c.relname AND p.policyname = pol.polname WHERE pol.oid = %s", (oid,))
    row = cur.fetchone()
    if row is None:
        return None
    *policy, relation = row
    drop = f"DROP POLICY {quote_ident(policy[0])} ON {relation}"
    return Restatement(description, drop, policy_statement(sql.SQL(relation), policy).as_string(cur), drop)


def capture_default(cur, oid: int, description: str) -> Restatement | None:
    cur.execute("SELECT d.adrelid::regclass::text, quote_ident(a.attname), pg_get_expr(d.adbin, d.adrelid) "
                "FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum "
                "WHERE d.oid = %s", (oid,))
    row = cur.fetchone()
    if row is None:
        return None
    relation, column, expression = row
    alter = f"ALTER TABLE {relation} ALTER COLUMN {column}"
    return Restatement(description, f"{alter} DROP DEFAULT", f"{alter} SET DEFAULT {expression}",
                       f"{alter} DROP DEFAULT")


# The table's own rules, inheritance parents and publications: they go with the old table.
OWN_RULES_QUERY = """
SELECT quote_ident(rulename), pg_get_ruledef(oid) FROM pg_rewrite
WHERE ev_class = %s AND rulename <> '_RETURN' ORDER BY rulename
"""


OWN_PARENTS_QUERY = """
SELECT inhparent::regclass::text FROM pg_inherits WHERE inhrelid = %s ORDER BY inhseqno
"""


def publications_query(server_version: int) -> str:
    """Publications the table is in; row filters and column lists came with PostgreSQL 15."""
    extra = ("pg_get_expr(pr.prqual, pr.prrelid), (SELECT string_agg(quote_ident(attname), ', ' "
             "ORDER BY attnum) FROM pg_attribute WHERE attrelid = pr.prrelid AND attnum = ANY(pr.prattrs))"
             if server_version >= 150000 else "NULL, NULL")
    return (f"SELECT quote_ident(p.pubname), {extra} FROM pg_publication_rel pr "
            "JOIN pg_publication p ON p.oid = pr.prpubid WHERE pr.prrelid = %s ORDER BY 1")


def capture_own(cur, table: TableName, oid: int) -> list[Restatement]:
    ident = table.ident.as_string(cur)
    own = []
    cur.execute(OWN_RULES_QUERY, (oid,))
    for name, definition in cur.fetchall():
        own.append(Restatement(f"rule {name} on {ident}", "", definition, f"DROP RULE {name} ON {ident}"))
    cur.execute(OWN_PARENTS_QUERY, (oid,))
    for (parent,) in cur.fetchall():
        own.append(Restatement(f"inheritance from {parent}", "", f"ALTER TABLE {ident} INHERIT {parent}",
                               f"ALTER TABLE {ident} NO INHERIT {parent}"))
    cur.execute(publications_query(cur.connection.server_version), (oid,))
    for publication, row_filter, columns in cur.fetchall():
        listed = f" ({columns})" if columns else ""
        where = f" WHERE ({row_filter})" if row_filter else ""
        own.append(Restatement(f"publication {publication}", "",
                               f"ALTER PUBLICATION {publication} ADD TABLE {ident}{listed}{where}",
                               f"ALTER PUBLICATION {publication} DROP TABLE {ident}"))
    return own


# Whether anything but the table's own indexes, constraints, triggers, policies and statistics
# is tied to it: most reporting tables have nothing else, and their swap needs no sweep (a
# table's own default on its own sequence does not count). Partitions of the table say so too.
TIED = """
c.relkind = 'p' OR c.relispartition
    OR EXISTS (SELECT 1 FROM pg_depend d
               WHERE d.deptype = 'n' AND (d.refclassid, d.refobjid) IN (
                     ('pg_class'::regclass, c.oid), ('pg_type'::regclass, c.reltype),
                     ('pg_type'::regclass, t.typarray)))
    OR EXISTS (SELECT 1 FROM pg_depend s JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass
                    AND d.refobjid = s.objid AND d.deptype = 'n'
               WHERE s.refclassid = 'pg_class'::regclass AND s.refobjid = c.oid
                 AND s.classid = 'pg_class'::regclass AND s.deptype IN ('a', 'i')
                 AND NOT (d.classid = 'pg_attrdef'::regclass
                          AND (SELECT adrelid FROM pg_attrdef WHERE oid = d.objid) = c.oid))
    OR EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = c.oid AND contype = 'f')
    OR EXISTS (SELECT 1 FROM pg_rewrite WHERE ev_class = c.oid AND rulename <> '_RETURN')
    OR EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = c.oid OR inhparent = c.oid)
    OR EXISTS (SELECT 1 FROM pg_publication_rel WHERE prrelid = c.oid)
"""  # an expression on pg_class c and pg_type t, the table's row type


TIED_QUERY = f"""
SELECT c.oid, {TIED} FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_type t ON t.oid = c.reltype WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
"""


TIED_TABLES_QUERY = f"""
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_type t ON t.oid = c.reltype
WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
  AND c.relkind IN ('r', 'p') AND ({TIED})
"""


def with_target_checked(dst, units: list[Unit]) -> list[Unit]:
    """The units, each table marked untied when nothing on the reporting side is tied to it
    now (most tables; absent ones too): one query for the run instead of one per table."""
    tables = list({u.source.table for u in units})
    with dst.cursor() as cur:
        cur.execute(TIED_TABLES_QUERY,
                    ([t.schema for t in tables], [t.name for t in tables]))
        tied = {TableName(schema, name) for schema, name in cur.fetchall()}
    return [dataclasses.replace(u, source=dataclasses.replace(u.source, untied=u.source.table not in tied))
            for u in units]


def refuse_what_cannot_survive(cur, table: TableName) -> None:
    """Before anything is written: a table that is itself a partition of another reporting
    table, or with a dependent that cannot be made again, is refused with what to do."""
    cur.execute(prepared_statement(cur, "copier_live_tied", TIED_QUERY, table.schema, table.name))
    oid, tied = cur.fetchone() or (None, False)
    if not tied:
        return
    cur.execute("SELECT inhparent::regclass::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhrelid = %s AND c.relispartition", (oid,))
    row = cur.fetchone()
    if row:
        raise Refused(f"{table.qualified} is a partition of {row[0]} on the reporting side: copy {row[0]} "
                      f"instead (its partitions come along), or ALTER TABLE {row[0]} DETACH PARTITION "
                      f"{table.qualified}")
    sweep_dependents(cur, table, oid, capture=False)


# --- captured under the swap's lock, restored on the new table


@dataclass
class ReportingSide:
    """What belongs to the reporting table rather than to its data: kept across the swap."""

    oid: int
    owner: str
    grants: list[tuple[str, str, bool]]
    column_grants: list[tuple[str, str, str, bool]]
    comment: str | None
    column_comments: dict[str, str]
    options: list[str]  # reloptions such as autovacuum or fillfactor settings
    row_security: tuple[bool, bool]  # ENABLE and FORCE ROW LEVEL SECURITY
    policies: list[tuple]  # pg_policies rows: name, permissive, roles, cmd, qual, with_check
    triggers: list[tuple[str, str, str]]  # name, CREATE TRIGGER statement, pg_trigger.tgenabled
    # What only a table tied to others has (see TIED): read by a sweep of pg_depend.
    own: list[Restatement] = dataclasses.field(default_factory=list)  # rules, parents, publications
    foreign_keys: list[ForeignKey] = dataclasses.field(default_factory=list)  # its own and others' to it
    dependents: list = dataclasses.field(default_factory=list)  # views, routines, Restatements, in order
    partitions: list[PartitionSide] = dataclasses.field(default_factory=list)


GRANTS_QUERY = """
SELECT CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
       a.privilege_type, a.is_grantable
FROM pg_class c, aclexplode(c.relacl) a
WHERE c.oid = %s::regclass AND a.grantee <> c.relowner
ORDER BY 1, 2
"""


# The table's own triggers (in REPORTING_SIDE_QUERY) are not those PostgreSQL made for
# constraints, nor partitions' clones.
# pg_trigger.tgenabled -> how to set it after CREATE TRIGGER (which leaves it 'O': enabled).
TRIGGER_STATES = {"D": "DISABLE", "R": "ENABLE REPLICA", "A": "ENABLE ALWAYS"}


# A relation's grants as GRANTS_QUERY has them, as JSON, for its pg_class row named {relation}.
GRANTS_JSON_OF = """
SELECT coalesce(json_agg(json_build_array(grantee, privilege, grantable) ORDER BY grantee, privilege), '[]')
FROM (SELECT CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
             a.privilege_type, a.is_grantable
      FROM aclexplode({relation}.relacl) a WHERE a.grantee <> {relation}.relowner)
     AS g(grantee, privilege, grantable)
"""


GRANTS_JSON = GRANTS_JSON_OF.format(relation="c")  # c: the table's pg_class row


# The new table's grants (given by default privileges, say) and its columns.
NEW_TABLE_QUERY = f"""
SELECT ({GRANTS_JSON}), array(SELECT attname FROM pg_attribute WHERE attrelid = c.oid
                              AND attnum > 0 AND NOT attisdropped)
FROM pg_class c WHERE c.oid = $1::regclass
"""


def new_table_statement(cur, table: TableName) -> str:
    return prepared_statement(cur, "copier_new_table", NEW_TABLE_QUERY,
                              quote_qualified(table.schema, table.name))


# Everything of the live reporting table's own that a swap keeps, in one row (see ReportingSide),
# and whether anything else is tied to it.
REPORTING_SIDE_QUERY = f"""
SELECT c.oid, pg_get_userbyid(c.relowner), {COMMENT_OF % "c.oid"}, coalesce(c.reloptions, '{{}}'),
       c.relrowsecurity, c.relforcerowsecurity,
       (SELECT coalesce(json_agg(json_build_array(p.policyname, p.permissive, p.roles::text[], p.cmd,
                                                  p.qual, p.with_check) ORDER BY p.policyname), '[]')
        FROM pg_policies p WHERE p.schemaname = n.nspname AND p.tablename = c.relname),
       (SELECT coalesce(json_agg(json_build_array(g.tgname, pg_get_triggerdef(g.oid), g.tgenabled)
                                 ORDER BY g.tgname), '[]')
        FROM pg_trigger g WHERE g.tgrelid = c.oid AND NOT g.tgisinternal AND g.tgparentid = 0),
       ({GRANTS_JSON}),
       (SELECT coalesce(json_agg(json_build_array(attname, grantee, privilege, grantable)
                                 ORDER BY attname, grantee, privilege), '[]')
        FROM (SELECT a.attname, CASE g.grantee WHEN 0 THEN 'PUBLIC' ELSE pg_get_userbyid(g.grantee) END,
                     g.privilege_type, g.is_grantable
              FROM pg_attribute a, aclexplode(a.attacl) g
              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)
             AS g(attname, grantee, privilege, grantable)),
       (SELECT coalesce(json_object_agg(a.attname, d.description), '{{}}')
        FROM pg_description d JOIN pg_attribute a ON a.attrelid = d.objoid AND a.attnum = d.objsubid
        WHERE d.objoid = c.oid AND d.classoid = 'pg_class'::regclass AND d.objsubid > 0),
       {TIED}
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_type t ON t.oid = c.reltype
WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
"""


def capture_reporting_side(cur, table: TableName, prefix: str = "",
                           exists: bool = True) -> ReportingSide | None:
    """Lock the live reporting table and note what must survive its replacement.

    prefix: statements to send first, in the same round trip. When the table is expected to
    exist (staging found it), it is locked and read in that one round trip: the lock, then (a
    statement of its own, so that it sees what the lock waited for) the table as it is; a
    table gone meanwhile is found missing from the lock's error instead.
    """
    lock_and_read = (sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE; ").format(table.ident).as_string(cur)
                     + prepared_statement(cur, "copier_reporting_side", REPORTING_SIDE_QUERY,
                                          table.schema, table.name))
    if exists:
        try:
            cur.execute(prefix + "SAVEPOINT copier_capture; " + lock_and_read)
        except psycopg2.errors.UndefinedTable:
            cur.execute("ROLLBACK TO SAVEPOINT copier_capture")
            return None
    else:
        cur.execute(prefix + prepared_statement(cur, "copier_live_table", LIVE_TABLE_QUERY,
                                                table.schema, table.name))
        if cur.fetchone() is None:
            return None
        cur.execute(lock_and_read)
    row = cur.fetchone()
    if row is None:
        return None  # not a table: the rename says what is in the way
    (oid, owner, comment, table_options, enable, force, policies, triggers, grants, column_grants,
     column_comments, tied) = row
    side = ReportingSide(oid=oid, owner=owner, grants=rows(grants), column_grants=rows(column_grants),
                         comment=comment, column_comments=column_comments, options=list(table_options),
                         row_security=(enable, force), policies=rows(policies), triggers=rows(triggers))
    if tied:
        side.dependents, foreign_keys = sweep_dependents(cur, table, oid)
        cur.execute(FOREIGN_KEY_QUERY.format(
            "c.conrelid IN (SELECT %(oid)s::oid UNION SELECT relid FROM pg_partition_tree(%(oid)s)) "
            "AND c.contype = 'f' AND c.conparentid = 0"), {"oid": oid})
        side.foreign_keys = [foreign_key(*row) for row in cur.fetchall()] + foreign_keys
        side.own = capture_own(cur, table, oid)
        side.partitions = capture_partitions(cur, oid)
    return side


def restores_before_grants(cur, old: ReportingSide) -> bool:
    """Whether restore_reporting_side changes the new table before it reads its grants."""
    return bool(any(old.row_security) or old.policies or old.triggers or old.own
                or old.owner != current_user(cur))


def restore_reporting_side(cur, table: TableName, old: ReportingSide,
                           new_table: tuple | None = None) -> None:
    """new_table: the new table's grants and columns, when the swap read them already."""
    # Policies, triggers and rules first, while the copier's user still owns the new table.
    apply_row_security(cur, table, old)
    recreate_triggers(cur, table, old)
    for own in old.own:
        own.recreate(cur, table)
    if old.owner != current_user(cur):
        cur.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(
            table.ident, sql.Identifier(old.owner)))
    if new_table is None:
        cur.execute(new_table_statement(cur, table))
        new_table = cur.fetchone()
    grants, column_list = new_table
    apply_grants(cur, "TABLE", table.ident, old.grants, rows(grants))
    if old.options:
        cur.execute(sql.SQL("ALTER TABLE {} SET ({})").format(
            table.ident, sql.SQL(", ").join(sql.SQL(o) for o in old.options)))
    columns = set(column_list)
    for column, grantee, privilege, grantable in old.column_grants:
        if column in columns:
            cur.execute(sql.SQL("GRANT {} ({}) ON TABLE {} TO {}{}").format(
                sql.SQL(privilege), sql.Identifier(column), table.ident, grantee_sql(grantee),
                sql.SQL(" WITH GRANT OPTION" if grantable else "")))
    apply_comments(cur, table.ident, old.comment,
                   {c: text for c, text in old.column_comments.items() if c in columns})
    restore_partitions(cur, table, old.partitions)


def apply_row_security(cur, table: TableName, old: ReportingSide) -> None:
    """Row-level security and its policies come back, or the table is not swapped at all:
    a reporting table readable beyond its policies would be worse than last night's data."""
    enable, force = old.row_security
    if enable:
        cur.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(table.ident))
    if force:
        cur.execute(sql.SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(table.ident))
    for policy in old.policies:
        recreate_or_fail(cur, policy_statement(table.ident, policy),
                         f"row-level security policy {policy[0]}", table)


def policy_statement(relation: sql.Composable, policy) -> sql.Composable:
    name, permissive, roles, command, using, check = policy
    statement = sql.SQL("CREATE POLICY {} ON {} AS {} FOR {} TO {}").format(
        sql.Identifier(name), relation, sql.SQL(permissive), sql.SQL(command),
        sql.SQL(", ").join(grantee_sql("PUBLIC" if role == "public" else role) for role in roles))
    if using is not None:
        statement += sql.SQL(" USING ({})").format(sql.SQL(using))
    if check is not None:
        statement += sql.SQL(" WITH CHECK ({})").format(sql.SQL(check))
    return statement


def recreate_triggers(cur, table: TableName, old: ReportingSide) -> None:
    """The old table's own triggers, recreated on the new one in the state they were in."""
    for name, definition, state in old.triggers:
        recreate_or_fail(cur, definition, f"trigger {name}", table)
        if state in TRIGGER_STATES:
            cur.execute(sql.SQL("ALTER TABLE {} {} TRIGGER {}").format(
                table.ident, sql.SQL(TRIGGER_STATES[state]), sql.Identifier(name)))


def recreate_or_fail(cur, statement, what: str, table: TableName, remedy: str | None = None) -> None:
    """Recreate something of the reporting side on the new table, or fail this table's copy:
    what the reporting side relies on must not silently disappear with last night's table."""
    cur.execute("SAVEPOINT copier_recreate")
    try:
        cur.execute(statement)
    except (psycopg2.errors.LockNotAvailable, psycopg2.errors.DeadlockDetected):
        raise
    except psycopg2.Error as exc:
        cur.execute("ROLLBACK TO SAVEPOINT copier_recreate")
        if isinstance(exc, psycopg2.errors.InsufficientPrivilege):
            raise TableCopyError(
                f"{what} cannot be recreated on the new {table.qualified}: {describe_error(exc)}") from None
        way_out = f"; change it, or remove it on the reporting side: {remedy}" if remedy else ""
        raise TableCopyError(
            f"{what} does not fit the new shape of {table.qualified}: {first_line(exc)}{way_out}") from None
    cur.execute("RELEASE SAVEPOINT copier_recreate")


def recreate_view(cur, table: TableName, view: DependentView) -> None:
    ident = sql.Identifier(view.schema, view.name)
    with_options = sql.SQL(" WITH ({})").format(sql.SQL(", ").join(
        sql.SQL(o) for o in view.options)) if view.options else sql.SQL("")
    body = sql.SQL(view.definition.rstrip().rstrip(";"))
    if view.kind == "m":
        statement = sql.SQL("CREATE MATERIALIZED VIEW {}{} AS {} WITH NO DATA").format(
            ident, with_options, body)
    else:
        statement = sql.SQL("CREATE VIEW {}{} AS {}").format(ident, with_options, body)
    keyword = "MATERIALIZED VIEW" if view.kind == "m" else "VIEW"
    remedy = f"DROP {keyword} {TableName(view.schema, view.name).qualified}"
    recreate_or_fail(cur, statement, view.what, table, remedy)
    for index_sql in view.indexes:
        cur.execute(index_sql)
    for extra in view.extras:  # its own rules and INSTEAD OF triggers
        recreate_or_fail(cur, extra, view.what, table, remedy)
    if view.owner != current_user(cur):
        cur.execute(sql.SQL("ALTER {} {} OWNER TO {}").format(
            sql.SQL(keyword), ident, sql.Identifier(view.owner)))
    apply_grants(cur, "TABLE", ident, view.grants, table_grants(cur, ident))
    apply_comments(cur, ident, view.comment, view.column_comments, keyword)
    if view.kind == "m" and view.populated:
        # Filled once it has its owner: REFRESH runs the query as the owner, so it holds the
        # rows the owner may see (row-level security), not those the copier's user may see.
        recreate_or_fail(cur, sql.SQL("REFRESH MATERIALIZED VIEW {}").format(ident), view.what, table)


def table_grants(cur, ident: sql.Composable) -> list[tuple[str, str, bool]]:
    cur.execute(GRANTS_QUERY, (ident.as_string(cur),))
    return cur.fetchall()


def apply_grants(cur, kind: str, ident: sql.Composable, grants, current) -> None:
    """Exactly the old object's grants: the new one (current) may have been given more by
    default privileges (ALTER DEFAULT PRIVILEGES), which someone may have revoked on the old one."""
    if sorted(map(tuple, current)) == sorted(map(tuple, grants)):
        return  # an ACL left at its default stays so
    for grantee in sorted({row[0] for row in current}):
        cur.execute(sql.SQL("REVOKE ALL ON {} {} FROM {}").format(
            sql.SQL(kind), ident, grantee_sql(grantee)))
    for grantee, privilege, grantable in grants:
        cur.execute(sql.SQL("GRANT {} ON {} {} TO {}{}").format(
            sql.SQL(privilege), sql.SQL(kind), ident, grantee_sql(grantee),
            sql.SQL(" WITH GRANT OPTION" if grantable else "")))


def grantee_sql(grantee: str) -> sql.Composable:
    return sql.SQL("PUBLIC") if grantee == "PUBLIC" else sql.Identifier(grantee)


def apply_comments(cur, ident: sql.Identifier, comment: str | None,
                   column_comments: dict[str, str], keyword: str = "TABLE") -> None:
    if comment is not None:
        cur.execute(sql.SQL("COMMENT ON {} {} IS {}").format(
            sql.SQL(keyword), ident, sql.Literal(comment)))
    for column, text in column_comments.items():
        cur.execute(sql.SQL("COMMENT ON COLUMN {}.{} IS {}").format(
            ident, sql.Identifier(column), sql.Literal(text)))


# ---------------------------------------------------------------------------------------------
# Readers in the way of a swap: waited for, then ended as pg_repack does.


def swap_past_readers(dst, settings: dict, results: list[TableResult], options: Options,
                      plan: Plan) -> None:
    """The swaps that readers blocked, after every other table: each is tried again and, unless
    --no-kill-readers, the sessions in its way are ended (idle-in-transaction ones and running
    queries at the first blocked try, any other at the next), within --lock-budget in all."""
    deadline = time.monotonic() + options.lock_budget
    watcher = open_connection(settings["target"], "target")
    try:
        for result in results:
            swap_one_past_readers(dst, watcher, result, options, plan, deadline)
    finally:
        watcher.close()


def swap_one_past_readers(dst, watcher, result: TableResult, options: Options, plan: Plan,
                          deadline: float) -> None:
    staged, steps = result.staged, Steps(result.steps)
    with dst.cursor() as cur:
        cur.execute("BEGIN")
        try:
            result.foreign_keys = swap_past(cur, watcher, staged, options, deadline, steps=steps)
            if plan.fingerprints:
                record_fingerprint(cur, staged, options.run)
            cur.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 - the table's result says what went wrong
            if not is_connection_error(exc):
                cur.execute("ROLLBACK")
                drop_staged(dst, [staged])  # a lost target's are dropped by the next run
            result.ok, result.error, result.steps = False, describe_error(exc), steps.rounded()
            log_event(runlog.TABLE_FAILED, table=result.table, error=result.error, steps=result.steps)
            return
    result.steps = steps.rounded()
    log_event(runlog.TABLE_COPIED, table=result.table, rows=result.rows, bytes=result.bytes,
              seconds=result.seconds, steps=result.steps)


def swap_or_past(cur, watcher: ReadersWatcher, staged: StagedTable, options: Options,
                 deadline: float, steps: Steps) -> list[ForeignKey]:
    try:
        return swap_into_place(cur, staged, options, defer_keys=True, steps=steps)
    except SwapBlocked:
        return swap_past(cur, watcher.get(), staged, options, deadline, defer_keys=True, steps=steps)


def swap_past(cur, watcher, staged: StagedTable, options: Options, deadline: float,
              defer_keys: bool = False, steps: Steps | None = None) -> list[ForeignKey]:
    """swap_into_place, one try at a time until the deadline, ending the sessions in the way
    between tries (unless --no-kill-readers); the error names them."""
    seen: dict[int, str] = {}  # blocking sessions, as the error will name them
    for attempt in range(1_000_000):
        try:
            with BlockerWatch(watcher, cur.connection.get_backend_pid()) as watch:
                return swap_into_place(cur, staged, options, defer_keys, tries=1, steps=steps)
        except SwapBlocked:
            seen.update(describe_sessions(watcher, watch.blockers))
            if time.monotonic() >= deadline:
                raise SwapBlocked(blocked_error(staged.table, seen, options)) from None
            if options.kill_readers:
                end_sessions(watcher, watch.blockers, attempt, staged.table)
            time.sleep(min(backoff(attempt, 0.2), max(0.0, deadline - time.monotonic())))
    raise AssertionError("unreachable")


class BlockerWatch:
    """While a swap waits for its locks, another connection notes who blocks it."""

    def __init__(self, watcher, pid: int):
        self.watcher, self.pid, self.blockers = watcher, pid, set()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.watch, name="blocker-watch", daemon=True)

    def watch(self) -> None:
        with self.watcher.cursor() as cur:
            while not self.done.wait(0.1):
                cur.execute("SELECT pg_blocking_pids(%s)", (self.pid,))
                self.blockers.update(cur.fetchone()[0])

    def __enter__(self) -> BlockerWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()


BLOCKERS_QUERY = """
SELECT pid, usename, application_name, state,
       round(extract(epoch FROM now() - coalesce(state_change, backend_start)))::int,
       left(split_part(query, E'\n', 1), 120)
FROM pg_stat_activity WHERE pid = ANY(%s) ORDER BY pid
"""


class ReadersWatcher:
    """A second target connection for BlockerWatch, opened only when a swap is blocked."""

    def __init__(self, settings: dict):
        self.settings, self.conn = settings, None

    def get(self):
        if self.conn is None:
            self.conn = open_connection(self.settings["target"], "target")
        return self.conn

    def __enter__(self) -> ReadersWatcher:
        return self

    def __exit__(self, *exc) -> None:
        if self.conn is not None:
            self.conn.close()


def describe_sessions(watcher, pids) -> dict[int, str]:
    with watcher.cursor() as cur:
        cur.execute(BLOCKERS_QUERY, (sorted(pids),))
        return {pid: f"{pid} (user {user}, application {app or '-'}, " + (
                    f"{state} for {idle} s: {query})" if state
                    else "its state hidden from the copier's user)")
                for pid, user, app, state, idle, query in cur.fetchall()}


def end_sessions(watcher, pids, attempt: int, table: TableName) -> None:
    """pg_repack's policy: cancel the queries in the way, end idle-in-transaction sessions (a
    cancel does nothing to them), and at the next blocked try end whoever is still there.
    Another copier run is waited for, never ended."""
    with watcher.cursor() as cur:
        cur.execute(BLOCKERS_QUERY, (sorted(pids),))
        for pid, user, app, state, idle, query in cur.fetchall():
            if app == CONNECTION_OPTIONS["application_name"]:
                continue
            idle_in_transaction = (state or "").startswith("idle in transaction")
            action = "terminate" if idle_in_transaction or attempt > 0 else "cancel"
            try:
                cur.execute(f"SELECT pg_{action}_backend(%s)", (pid,))
                ended = cur.fetchone()[0]
            except psycopg2.errors.InsufficientPrivilege as exc:
                say(f"copier: warning: session {pid} (user {user}) blocks the swap of {table.qualified} "
                    f"and may not be ended: {first_line(exc)}; grant pg_signal_backend to the copier's user")
                continue
            if ended:
                log_event(runlog.SESSION_ENDED, table=table.qualified, pid=pid, user=user, application=app,
                          state=state, seconds_in_state=idle, query=query, action=ENDED[action])
                say(f"copier: warning: {ENDED[action]} session {pid} (user {user}, application {app or '-'}, "
                    f"{state} for {idle} s: {query}): it blocked the swap of {table.qualified}")


ENDED = {"cancel": "cancelled the query of", "terminate": "terminated"}


def blocked_error(table: TableName, sessions: dict[int, str], options: Options) -> str:
    who = "; ".join(sessions.values()) or "sessions that had gone by the time they were looked up"
    why = " (--no-kill-readers)" if not options.kill_readers else ""
    return (f"could not lock {table.qualified} for the swap within --lock-budget {options.lock_budget:g} s"
            f"{why}; in the way: {who}")


# ---------------------------------------------------------------------------------------------
# Run-wide state, shared by every job of the run: outages, the run's snapshot, the run's hold on its tables.


WAIT_STEP_MAX = 5.0  # the longest pause between two tries to reach a database that is down


WAITING_NOTE_SECONDS = 10.0  # how often a job waiting for a database says so


class OutageClock:
    """Since when each database has been unreachable, and how long the run has waited for it.

    Shared by the jobs (processes) of a run: an outage is the run's state, not one table's.
    The budget counts from the moment the first job found the database down, and the summary
    counts each outage once, however many jobs waited through it.
    """

    def __init__(self, context, budget: float):
        self.budget = budget
        self.lock = context.Lock()
        # time.monotonic() is one clock for every process of the machine (CLOCK_MONOTONIC).
        self.since = context.Array("d", len(DATABASES), lock=False)  # 0: reachable
        self.waited = context.Array("d", len(DATABASES), lock=False)
        self.outages = context.Array("i", len(DATABASES), lock=False)

    def down(self, role: str) -> float:
        """Seconds the database has been unreachable, counted from the first job that noticed."""
        i, now = DATABASES.index(role), time.monotonic()
        with self.lock:
            if not self.since[i]:
                self.since[i] = now
                self.outages[i] += 1
            return now - self.since[i]

    def up(self, role: str) -> None:
        i = DATABASES.index(role)
        with self.lock:
            if self.since[i]:
                self.waited[i] += time.monotonic() - self.since[i]
                self.since[i] = 0.0

    def waited_seconds(self) -> dict[str, tuple[int, float]]:
        """Per database: (outages, seconds unreachable), an outage still going included."""
        now = time.monotonic()
        with self.lock:
            return {role: (self.outages[i],
                           self.waited[i] + (now - self.since[i] if self.since[i] else 0.0))
                    for i, role in enumerate(DATABASES)}


# What a connection attempt answers when the settings are wrong rather than the server away.
# (Not "SSL" alone: "SSL SYSCALL error" and "SSL connection has been closed" are network cuts.)
NOT_AN_OUTAGE = re.compile(r"password authentication failed|no pg_hba\.conf entry|does not exist|"
                           r"certificate verify failed|server does not support SSL|"
                           r"permission denied for database|is not permitted to log in", re.I)


def connect_waiting(settings: dict, role: str, outages: OutageClock, **context):
    """A connection to the database, waiting out an outage up to the run's outage budget."""
    delay, noted = 0.5, None
    while True:
        try:
            conn = open_connection(settings, role)
        except ConnectionLost as exc:
            if NOT_AN_OUTAGE.search(str(exc)):
                raise  # the settings are wrong (or were changed): waiting would not help
            down = outages.down(role)
            if down >= outages.budget:
                raise DatabaseUnreachable(
                    f"the {role} database was unreachable for {down:.0f} s "
                    f"(--outage-budget {outages.budget:g}): {exc}") from None
            if noted is None or down - noted >= WAITING_NOTE_SECONDS:
                noted = down
                log_event(runlog.WAITING, database=role, seconds=round(down, 1),
                          budget=outages.budget, error=str(exc), **context)
                say(f"copier: waiting for the {role} database, unreachable for {down:.0f} s "
                    f"(budget {outages.budget:g} s): {exc}")
            time.sleep(max(0.0, min(delay, outages.budget - down)))
            delay = min(2 * delay, WAIT_STEP_MAX)
        else:
            outages.up(role)
            return conn


def connect_at_start(settings: dict, role: str, outages: OutageClock, options: Options):
    """The run's first connection. A scheduled run (COPIER_RUN set) that starts during a
    failover or a restart waits for the database as the jobs do later, within the outage
    budget; a run by hand fails at once, where a wrong host or port looks the same as an outage."""
    if not options.scheduled:
        return open_connection(settings[role], role)
    return connect_waiting(settings[role], role, outages)


def backoff(attempt: int, base: float) -> float:
    return min(60.0, base * 2 ** attempt) * random.uniform(0.5, 1.0)


class SharedSnapshot:
    """The name of the run's exported snapshot, as every job imports it now, and its generation.

    A job that finds it gone asks for a new one (one request per generation, however many jobs
    notice) and waits; the SnapshotHolder in the run's process exports it and bumps the
    generation. Nothing assumes the source that comes back is the same server.
    """

    def __init__(self, context, name: str):
        self.lock = context.Lock()
        self.name = context.Array("c", 256, lock=False)
        self.generation = context.Value("i", 1, lock=False)
        self.wanted = context.Value("i", 0, lock=False)  # the generation a job found gone
        self.failure = context.Array("c", 1024, lock=False)  # why the holder could not renew
        self.name.value = name.encode()

    def current(self) -> tuple[str, int]:
        with self.lock:
            return self.name.value.decode(), self.generation.value

    def renew(self, lost_generation: int) -> None:
        """Ask for a snapshot newer than lost_generation and wait for it (SnapshotLost if not)."""
        with self.lock:
            if self.generation.value == lost_generation and self.wanted.value != lost_generation:
                self.wanted.value, self.failure.value = lost_generation, b""
        while True:
            with self.lock:
                if self.generation.value > lost_generation:
                    return
                if self.wanted.value != lost_generation:
                    raise SnapshotLost(f"the run's snapshot was lost and no new one could be "
                                       f"taken: {self.failure.value.decode(errors='replace')}")
            time.sleep(0.1)

    def renewal_wanted(self) -> bool:
        with self.lock:
            return self.wanted.value == self.generation.value

    def renewed(self, name: str) -> int:
        with self.lock:
            self.name.value = name.encode()
            self.generation.value += 1
            return self.generation.value

    def renewal_failed(self, error: str) -> None:
        with self.lock:
            self.failure.value = error.encode()[:1000]
            self.wanted.value = 0


@dataclass
class RunShared:
    """What every job of the run shares: the outage clock and the snapshot's name."""

    outages: OutageClock
    snapshot: SharedSnapshot
    origin: str = ""  # the snapshot a load job imported from the run's first job, if any

    @classmethod
    def create(cls, outages: OutageClock, snapshot: str, origin: str = "") -> RunShared:
        return cls(outages, SharedSnapshot(get_context("spawn"), snapshot), origin)

    def snapshot_identity(self) -> str:
        """The same for every unit read from the same moment, in any job of the run: slices
        of one table must all have it."""
        name, generation = self.snapshot.current()
        return f"{self.origin}@{generation}" if self.origin else name


class SnapshotHolder:
    """The run's process keeps the exported snapshot's transaction open, and exports a new one
    when a job finds the old one gone (the connection holding it was cut, the source restarted
    or failed over). A thread, so it answers while the run's own process copies (--jobs 1)."""

    def __init__(self, settings: dict, shared: RunShared, conn):
        self.settings, self.shared, self.conn = settings, shared, conn
        self.renewals: list[str] = []  # when each new snapshot was taken (UTC, ISO)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.serve, name="snapshot-holder", daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.done.wait(0.1):
            if self.shared.snapshot.renewal_wanted():
                try:
                    self.renew()
                except Exception as exc:  # noqa: BLE001 - the waiting jobs report it
                    self.shared.snapshot.renewal_failed(describe_error(exc))

    def renew(self) -> None:
        self.close()
        self.conn = connect_waiting(self.settings["source"], "source", self.shared.outages)
        generation = self.shared.snapshot.renewed(export_snapshot(self.conn))
        self.renewals.append(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        message = (f"the run's snapshot was lost (the source restarted or failed over, or the "
                   f"connection holding it was cut): tables read from now on come from "
                   f"snapshot {generation}, a later moment than the tables read before")
        log_event(runlog.SNAPSHOT_RENEWED, snapshot=generation, message=message)
        say(f"copier: warning: {message}")

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except psycopg2.Error:
                pass
            self.conn = None

    def stop(self) -> None:
        self.done.set()
        self.thread.join(5)  # not through a renewal's wait for the source (Ctrl-C during it)
        self.close()


def export_snapshot(conn) -> str:
    """One snapshot for the whole run, so every table reflects the same moment (as pg_dump -j)."""
    with conn.cursor() as cur:
        cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        cur.execute("SELECT pg_export_snapshot()")
        return cur.fetchone()[0]


def take_snapshot(src, dst, units: list[Unit], plan: Plan, options: Options,
                  outages: OutageClock) -> RunShared:
    """The moment the run reads: its own exported snapshot, none for the publish phase, or,
    for load jobs with one snapshot, the one the run's first job exports and the others import.

    The jobs meet on the source: the holding job names the snapshot in its session's
    application_name, where every job can read it (pg_stat_activity shows it to every user);
    each job that imported it says so with a NOTIFY on the target, so the holder knows when it
    may let go (the source may be a standby, where NOTIFY is refused).
    """
    if plan.snapshot == "none":
        return RunShared.create(outages, "")
    if plan.snapshot == "hold":
        with dst.cursor() as cur:
            cur.execute(sql.SQL("LISTEN {}").format(sql.Identifier(snapshot_channel(options.run))))
        name = export_snapshot(src)
        with src.cursor() as cur:
            cur.execute("SELECT set_config('application_name', %s, false)",
                        (snapshot_marker(options.run) + name,))
        log_event(runlog.SNAPSHOT_SHARED, job=1, jobs=options.load_jobs)
        return RunShared.create(outages, name, origin=name)
    if plan.snapshot == "join":
        try:
            origin = find_shared_snapshot(src, options)
            with src.cursor() as cur:
                begin_snapshot(cur, origin)
                cur.execute("SELECT pg_export_snapshot()")
                local = cur.fetchone()[0]
        except CopierError as exc:
            for unit in units:
                log_event(runlog.TABLE_FAILED, table=unit.source.table.qualified, job=1, error=str(exc),
                          seconds=0, **unit_fields(unit, plan))
            raise
        with dst.cursor() as cur:
            cur.execute("SELECT pg_notify(%s, %s)",
                        (snapshot_channel(options.run), os.environ.get("COPIER_JOB") or str(os.getpid())))
        log_event(runlog.SNAPSHOT_IMPORTED, job=1)
        return RunShared.create(outages, local, origin=origin)
    shared = RunShared.create(outages, export_snapshot(src))
    moment("snapshot_taken", conn=src)
    return shared


def snapshot_marker(run: str) -> str:
    return f"nightly-copy {hashlib.md5(run.encode()).hexdigest()[:12]} "


def snapshot_channel(run: str) -> str:
    return f"nightly_copy_{hashlib.md5(run.encode()).hexdigest()[:16]}"


def find_shared_snapshot(src, options: Options) -> str:
    deadline = time.monotonic() + options.snapshot_wait
    marker = snapshot_marker(options.run)
    with src.cursor() as cur:
        while True:
            cur.execute("SELECT application_name FROM pg_stat_activity WHERE application_name LIKE %s",
                        (marker + "%",))
            row = cur.fetchone()
            if row:
                return row[0][len(marker):]
            if time.monotonic() >= deadline:
                raise SnapshotLost(
                    f"no snapshot was shared for run {options.run} within {options.snapshot_wait:g}s: "
                    f"the run's first load job (COPIER_ONE_SNAPSHOT=hold) did not start, or failed"
                    f"{queued_too_long()}; nothing of this job was loaded")
            time.sleep(0.25)  # one cheap catalog read; the jobs start within seconds


def queued_too_long() -> str:
    """Why a load job of a split run can miss the run's snapshot on AWS: CodeBuild queues the
    builds beyond the account's concurrent-build quota, and does not say in which order queued
    builds start (CodeBuild User Guide, "Builds in AWS CodeBuild": builds are queued when the
    quota is reached). setup_aws.py puts the quota it read into the jobs' environment."""
    quota = os.environ.get(runlog.BUILD_QUOTA_VARIABLE)
    return (f", or this job started after it had stopped waiting for the others: builds beyond the "
            f"account's concurrent-build quota queue ({quota}), and with one_snapshot every load job "
            f"must run at once (fewer jobs, a quota increase, or one_snapshot = false)") if quota else ""


def wait_for_joiners(dst, options: Options, started: float) -> None:
    """The holding job keeps the run's snapshot until every other load job has imported it
    (a job that imported re-exports it for its own workers), or until COPIER_SNAPSHOT_WAIT."""
    needed, imported = options.load_jobs - 1, set()
    deadline = started + options.snapshot_wait
    try:
        while len(imported) < needed and time.monotonic() < deadline:
            select.select([dst], [], [], 1.0)
            dst.poll()
            imported |= {note.payload for note in dst.notifies}
            dst.notifies.clear()
    except psycopg2.Error as exc:
        say(f"copier: warning: lost the target while waiting for the load jobs to import the "
            f"run's snapshot: {first_line(exc)}")
    if len(imported) < needed:
        quota = os.environ.get(runlog.BUILD_QUOTA_VARIABLE)
        message = (f"only {len(imported)} of the {needed} other load jobs imported the run's snapshot "
                   f"within {options.snapshot_wait:g}s: the others fail their tables"
                   + (f" (those still queued behind the account's concurrent-build quota, {quota}, "
                      f"start too late)" if quota else ""))
        warn(message)
    log_event(runlog.SNAPSHOT_RELEASED, job=1, imported=len(imported) + 1, jobs=options.load_jobs)


def lock_tables(dst, tables: list[SourceTable], shared: bool = False) -> None:
    """Hold an advisory lock per table for the run, so two runs never copy the same table
    (shared between the load jobs of one run, which load slices of the same tables)."""
    lock = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
    keys = [f"{t.table.schema}.{t.table.name}" for t in tables]
    with dst.cursor() as cur:  # one statement for all of them, each tried in the list's order
        cur.execute(f"SELECT coalesce(array_agg(n ORDER BY n), '{{}}') FROM unnest(%s::text[]) "
                    "WITH ORDINALITY AS t(key, n) "
                    f"WHERE NOT {lock}(hashtext('nightly-copier'), hashtext(key))", (keys,))
        held = cur.fetchone()[0]
    if held:
        raise CopierError(f"another copier run is copying {tables[held[0] - 1].table.qualified} right now")


def unlock_tables(dst) -> None:
    """Let go of the run's table locks before its connection closes: a closed session's locks
    go only once its server process has exited, and a run started right after (the publish
    after the load jobs, a run by hand after the scheduled one) could still find them held."""
    try:
        with dst.cursor() as cur:
            cur.execute("ROLLBACK; SELECT pg_advisory_unlock_all()")
    except psycopg2.Error:
        pass  # the connection is gone, and its locks with it


# ---------------------------------------------------------------------------------------------
# The runner: the units over the jobs, then the swaps that wait for the end of the run.


def run(options: Options, settings: dict) -> int:
    """A night, top to bottom: connect, plan, hold the tables, take the snapshot, copy the units
    over the jobs, make live what waited for the end of the run, and report."""
    started = time.monotonic()
    outages = OutageClock(get_context("spawn"), options.outage_budget)
    src = connect_at_start(settings, "source", outages, options)
    dst = holder = None
    try:
        units = with_rules(src, plan_run(src, options), settings)
        tables = list({u.source.table: u.source for u in units}.values())
        warn_if_recovery_may_cancel(src)
        dst = connect_at_start(settings, "target", outages, options)
        check_target(dst, tables)
        plan = make_plan(options, units, src, dst, settings.get("storage", ""))
        if options.dry_run:
            return dry_run(src, dst, plan, units, options)
        # The load jobs of one run share their tables; anything else copying them is refused.
        lock_tables(dst, tables, shared=plan.phase == "load")
        units = with_room(with_target_checked(dst, with_definitions(src, units)), plan.room)
        units = with_last_fingerprints(src, dst, units, plan, options)
        moment("tables_checked", units=units)
        shared = take_snapshot(src, dst, units, plan, options, outages)
        if plan.snapshot != "none":
            holder, src = SnapshotHolder(settings, shared, src), None  # it holds the snapshot now
        results, abandoned = run_units(units, settings, options, plan, shared)
        if plan.snapshot == "hold":
            wait_for_joiners(dst, options, started)
        drop_staged(dst, [StagedTable(t.table, t.table.staging_name(), [], None, {}) for t in abandoned])
        results, dst = swap_the_rest(dst, tables, units, results, settings, options, plan, shared)
    finally:
        if holder is not None:
            holder.stop()
        if dst is not None:
            unlock_tables(dst)
        for conn in (src, dst):
            if conn is not None:
                conn.close()
    seconds = time.monotonic() - started
    failed = [r for r in results if not r.ok]
    steps = print_summary(results, seconds)
    say(f"room on the reporting database: {plan.room.said}")
    waited = report_outages(results, shared, holder)
    log_event(runlog.RUN_FINISHED, tables=len(results), failed=len(failed), seconds=round(seconds, 2),
              waited_seconds=round(sum(waited.values()), 1),
              source_waited_seconds=waited["source"], target_waited_seconds=waited["target"],
              snapshots=shared.snapshot.current()[1], unchanged=sum(r.unchanged for r in results),
              steps=steps, room=plan.room.said, **({"phase": plan.phase} if plan.phase != "all" else {}))
    for r in failed:
        say(f"copier: error: {r.unit or r.table}: {r.error}")
    return 1 if failed else 0


def dry_run(src, dst, plan: Plan, units: list[Unit], options: Options) -> int:
    """--dry-run: the plan, and every table the night would refuse (the reporting side's
    dependents, a strict table's rules, the room), exit 1 when there is one; nothing written."""
    tables = list({u.source.table: u.source for u in units}.values())
    refused = refusals(dst, tables)
    ruled = [t for t in tables if t.masking]
    refused |= {d.table.qualified: d.refused for d in read_definitions(src, ruled) if d and d.refused}
    refused |= plan.room.refused
    show_plan(plan, units, refused, options.json)
    return 1 if refused else 0


def with_last_fingerprints(src, dst, units: list[Unit], plan: Plan, options: Options) -> list[Unit]:
    """The units with what the last run recorded of their tables (none with --copy-unchanged),
    and whether their source is quiet since; the copier's store of fingerprints made when
    missing; without it, every table is copied."""
    if not plan.fingerprints:
        warn(f"the target user may not keep the tables' fingerprints in schema {FINGERPRINT_SCHEMA}: "
             f"every table is copied, unchanged or not; grant it CREATE on the database, or make "
             f"the schema and grant it CREATE and USAGE there")
        return units
    if not make_fingerprint_store(dst):
        return units
    if not options.copy_unchanged:
        units = with_fingerprints(dst, units)
    return with_source_states(src, units) if plan.proof else units


def swap_the_rest(dst, tables: list[SourceTable], units: list[Unit], results: list[TableResult],
                  settings: dict, options: Options, plan: Plan, shared: RunShared):
    """What goes live at the end of the run: nothing in the load phase (the publish swaps);
    every table in one transaction with --swap together; in a per-table run, the tables a
    partitioned table's key joins, then those readers blocked, and then the foreign keys made
    NOT VALID in the swaps are validated. Returns the results and the target connection (a new
    one when the run's was lost: its table locks are taken again)."""
    if plan.swap == "none":
        return results, dst
    if plan.swap == "together":
        results = restage_from_one_snapshot(units, results, settings, options, plan, shared)
        return swap_together_through_outages(dst, tables, results, settings, options, plan, shared)
    late = [r for r in results if r.table in plan.late_swaps]
    blocked = [r for r in results if r.ok and r.staged and r.staged.blocked]
    keys = [key for r in results if r.ok for key in r.foreign_keys]
    if (late or blocked or keys) and not is_alive(dst):  # the target went away: its locks with it
        dst.close()
        dst = connect_waiting(settings["target"], "target", shared.outages)
        lock_tables(dst, tables)
    if late:
        swap_together(dst, late, options, plan, settings,
                      "tables joined by a partitioned table's foreign key")
    if blocked:
        swap_past_readers(dst, settings, blocked, options, plan)
    keys += [key for r in blocked if r.ok for key in r.foreign_keys]
    validate_after_run(dst, keys, options.lock_timeout)
    return results, dst


class WorkList:
    """The run's units in the order the jobs take them, and what follows from each result.

    Largest first, each taken by whichever job is free next: sizes only predict times, and a
    job that finishes early picks up the next unit instead of idling while another still has
    a list. When the last slice of a table is loaded, its finish comes next, before any other
    unit, so that its indexes are built while the other jobs still load. A table whose slices
    came from two snapshots (one was lost and renewed) is loaded again, into a staging of its own.
    """

    def __init__(self, units: list[Unit], options: Options, plan: Plan):
        self.options, self.plan = options, plan
        self.waiting = deque(sorted(units, key=lambda u: (-u.weight, u.name)))
        self.first: deque[Unit] = deque()
        self.order = list(dict.fromkeys(self.result_name(u) for u in self.waiting))
        self.results: dict[str, TableResult] = {}
        self.slices: dict[str, list[TableResult]] = {}
        self.read_from: dict[str, int] = {}  # the snapshot a sliced table's slices came from
        self.abandoned: list[SourceTable] = []  # sliced tables that failed: their staging goes

    def result_name(self, unit: Unit) -> str:
        """Locally a sliced table has one result (its finish's); a load job has one per unit."""
        return unit.source.table.qualified if self.plan.phase == "all" else unit.name

    def next(self) -> Unit | None:
        if self.first:
            return self.first.popleft()
        return self.waiting.popleft() if self.waiting else None

    def done(self, unit: Unit, result: TableResult) -> None:
        if unit.step != "slice" or self.plan.phase != "all":
            if unit.step == "finish" and unit.source.table.qualified in self.read_from:
                result.snapshot = self.read_from[unit.source.table.qualified]  # its slices' moment
            self.results[self.result_name(unit)] = result
            return
        table, (_, count) = unit.source.table.qualified, unit.part
        loaded = self.slices.setdefault(f"{table}/{unit.attempt}", [])
        loaded.append(result)
        if len(loaded) < count:
            return
        failed = [r for r in loaded if not r.ok]
        if failed:
            self.results[table] = TableResult(table, False, seconds=max(r.seconds for r in loaded),
                                              error=f"slice {failed[0].unit}: {failed[0].error}")
            self.abandoned.append(unit.source)
        elif len({r.snapshot for r in loaded}) > 1 and unit.attempt < self.options.retries:
            log_event(runlog.TABLE_RETRY, table=table, attempt=unit.attempt + 1, wait_seconds=0,
                      error="its slices were read from two snapshots (one was lost): loading it again")
            self.first.extend(dataclasses.replace(u, attempt=unit.attempt + 1)
                              for u in self.units_of(unit, count))
        else:
            self.read_from[table] = loaded[0].snapshot
            self.first.append(Unit(unit.source, "finish", attempt=unit.attempt))

    @staticmethod
    def units_of(unit: Unit, count: int) -> list[Unit]:
        return [dataclasses.replace(unit, part=(k, count)) for k in range(1, count + 1)]

    def outcome(self, failure: str) -> list[TableResult]:
        """Every unit's result, in order; those no job reported fail with the given reason."""
        for name in self.order:
            if name not in self.results:
                log_event(runlog.TABLE_FAILED, table=name, error=failure)
                self.results[name] = TableResult(name, False, error=failure)
        return [self.results[name] for name in self.order]


def run_units(units: list[Unit], settings: dict, options: Options, plan: Plan,
              shared: RunShared) -> tuple[list[TableResult], list[SourceTable]]:
    """Copy the units over options.jobs jobs: the results, and the sliced tables abandoned."""
    work = WorkList(units, options, plan)
    jobs = min(plan.room.jobs, len(units))  # fewer than --jobs when the room is short
    if jobs <= 1:
        run_job(1, settings, options, plan, shared, work.next, work.done, threading.Event())
        return work.outcome("not copied"), work.abandoned
    context = get_context("spawn")
    todo, done, stop = context.SimpleQueue(), context.Queue(), context.Event()
    processes = [
        context.Process(target=job_process, name=f"copier-job-{n}",
                        args=(n, settings, options, plan, shared, todo, done, stop))
        for n in range(1, jobs + 1)
    ]
    for process in processes:
        process.start()
    busy = 0

    def hand_out() -> None:  # one unit per free job: a finish can still come first
        nonlocal busy
        while busy < jobs and (unit := work.next()) is not None:
            todo.put(unit)
            busy += 1

    try:
        hand_out()
        while busy:
            try:
                unit, result = done.get(timeout=0.5)
            except queue.Empty:
                if any(p.exitcode is not None for p in processes):
                    break  # a worker died (no unit told it to stop): the others finish theirs
                continue
            busy -= 1
            work.done(unit, result)
            hand_out()
        for _ in processes:
            todo.put(None)
        # Normally every result is in: this only waits for the workers to close their
        # connections and exit (a few ms), in short steps, or drains a crashed run's results.
        while any(p.is_alive() for p in processes) or not done.empty():
            try:
                work.done(*done.get(timeout=0.02))
            except queue.Empty:
                pass
    except KeyboardInterrupt:
        for process in processes:
            process.terminate()  # each worker rolls back its open transaction
        for process in processes:
            process.join(10)
        raise
    for process in processes:
        process.join()
    codes = ", ".join(str(p.exitcode) for p in processes)
    return work.outcome(f"a worker process died before copying it (exit codes {codes})"), work.abandoned


def run_job(job: int, settings: dict, options: Options, plan: Plan, shared: RunShared,
            next_unit, report, stop) -> None:
    """Copy units until next_unit() says there are none left (returns None)."""
    copier = TableCopier(settings, options, plan, shared, job)
    try:
        while (unit := next_unit()) is not None:
            if stop.is_set():
                report(unit, TableResult(unit.source.table.qualified, False, unit=unit.name,
                                         error="not copied: an earlier table failed (--fail-fast)"))
                continue
            result = copier.copy(unit)
            moment("unit_done", unit=unit, result=result)
            report(unit, result)
            if not result.ok and options.fail_fast:
                stop.set()
    finally:
        copier.close()


def job_process(job, settings, options, plan, shared, todo, results, stop) -> None:
    handle_signals()
    try:
        run_job(job, settings, options, plan, shared, todo.get,
                lambda unit, result: results.put((unit, result)), stop)
    except KeyboardInterrupt:
        sys.exit(1)


def swap_together(dst, results: list[TableResult], options: Options, plan: Plan, settings: dict,
                  why: str = "--swap together") -> list[TableResult]:
    """--swap together: every staged table goes live in one transaction, or none does (a table
    found unchanged has nothing staged: it holds tonight's rows already). A table whose readers
    hold it through --lock-retries is swapped past them, as after a per-table run."""
    swapped = [r for r in results if not r.unchanged]
    staged = [r.staged for r in swapped if r.ok]
    if len(staged) == len(swapped):
        with dst.cursor() as cur, ReadersWatcher(settings) as watcher:
            cur.execute("BEGIN")
            try:
                # Keys between the tables are made again once all of them are in place, then
                # validated: they see one night's rows on both sides.
                deadline = time.monotonic() + options.lock_budget
                keys = []
                for r in swapped:
                    steps = Steps(r.steps)
                    keys += [(r.staged, key) for key in swap_or_past(cur, watcher, r.staged, options,
                                                                     deadline, steps)]
                    r.steps = steps.rounded()
                validate_foreign_keys(cur, [key for table, key in keys if key.add(cur, table.table)])
                for table in staged if plan.fingerprints else ():
                    record_fingerprint(cur, table, options.run)
                cur.execute("COMMIT")
            except BaseException as exc:
                cur.execute("ROLLBACK")
                drop_staged(dst, staged)
                if isinstance(exc, Exception):
                    error = f"swap of all tables failed, none changed: {describe_error(exc)}"
                    for r in swapped:
                        r.ok, r.error = False, error
                        log_event(runlog.TABLE_FAILED, table=r.table, error=error, steps=r.steps)
                    return results
                raise
        for r in swapped:
            log_event(runlog.TABLE_COPIED, table=r.table, rows=r.rows, bytes=r.bytes, seconds=r.seconds,
                      steps=r.steps)
        return results
    drop_staged(dst, staged)
    for r in swapped:
        if r.ok:
            r.ok, r.error = False, f"not swapped: another table of the run failed ({why})"
            log_event(runlog.TABLE_FAILED, table=r.table, error=r.error)
    return results


def restage_from_one_snapshot(units: list[Unit], results: list[TableResult], settings: dict,
                              options: Options, plan: Plan, shared: RunShared) -> list[TableResult]:
    """--swap together promises one moment for every table: a table staged from a snapshot that
    was lost since is staged again from the current one before anything is swapped."""
    if not all(r.ok for r in results):
        return results  # nothing will be swapped
    for _ in range(options.retries + 1):
        generation = shared.snapshot.current()[1]
        stale = [r.table for r in results if r.snapshot != generation]
        if not stale:
            return results
        message = (f"staging {len(stale)} table(s) again from snapshot {generation}, so that all "
                   f"go live from one moment (--swap together): {', '.join(stale)}")
        warn(message)
        again, _ = run_units([u for u in units if u.source.table.qualified in stale],
                             settings, options, plan, shared)
        redone = {r.table: r for r in again}
        results = [redone.get(r.table, r) for r in results]
        if not all(r.ok for r in results):
            return results
    stale = [r for r in results if r.snapshot != shared.snapshot.current()[1]]
    for r in stale:
        r.ok, r.error = False, "the run's snapshot kept being lost: not staged from one moment"
        log_event(runlog.TABLE_FAILED, table=r.table, error=r.error)
    return results


def swap_together_through_outages(dst, tables: list[SourceTable], results: list[TableResult],
                                  settings: dict, options: Options, plan: Plan, shared: RunShared):
    """swap_together, on a new target connection when the run's was lost (its advisory locks
    with it: they are taken again), and redone when the target goes away during the swap
    (its transaction is rolled back by the server; the staged tables are committed and stay)."""
    for attempt in range(options.retries + 1):
        if dst is None or not is_alive(dst):
            if dst is not None:
                dst.close()
            dst = None
            dst = connect_waiting(settings["target"], "target", shared.outages)
            lock_tables(dst, tables)
        try:
            return swap_together(dst, results, options, plan, settings), dst
        except Exception as exc:
            if attempt == options.retries or not (dst.closed or is_connection_error(exc)):
                raise
            warn(f"the target went away during the swap of all tables, none changed; "
                 f"swapping again: {describe_error(exc)}")
    raise AssertionError("unreachable")


def print_summary(results: list[TableResult], seconds: float) -> dict[str, float]:
    """The run's table of tables, its totals, and a line per step of where the time went (summed
    over the tables: jobs work side by side, so the sum can pass the run's wall time). Returns
    those seconds by step."""
    rows = [(r.unit or r.table, str(r.rows), f"{r.bytes / 1e6:.1f}", f"{r.seconds:.1f}",
             f"{r.bytes / 1e6 / r.seconds:.1f}" if r.seconds else "-",
             "unchanged" if r.unchanged else "ok" if r.ok else "FAILED") for r in results]
    print_table(("table", "rows", "MB", "seconds", "MB/s", ""), rows, left=(0, 5))
    copied = [r for r in results if r.ok]
    unchanged = sum(r.unchanged for r in results)
    total = sum(r.bytes for r in copied if not r.unchanged)
    say(f"{len(copied)} of {len(results)} tables copied"
        + (f" ({unchanged} unchanged: not written)" if unchanged else "")
        + f", {total / 1e6:.1f} MB in {seconds:.1f}s")
    steps = {step: round(sum(r.steps.get(step, 0.0) for r in results), 2)
             for step in runlog.STEPS if any(step in r.steps for r in results)}
    spent = sum(steps.values()) or 1
    print_table(("step", "seconds", "share"), [(step, f"{spent_on:.1f}", f"{100 * spent_on / spent:.0f}%")
                                               for step, spent_on in steps.items()], left=(0,))
    return steps


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]], left: tuple[int, ...]) -> None:
    """Columns for people, on stderr: those in left aligned left, the others right."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        say("  ".join(cell.ljust(w) if i in left else cell.rjust(w)
                      for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip())


def report_outages(results: list[TableResult], shared: RunShared,
                   holder: SnapshotHolder) -> dict[str, float]:
    """The summary's lines on waiting and snapshots; the seconds waited per database."""
    waited = shared.outages.waited_seconds()
    for role, (outages, seconds) in waited.items():
        if outages:
            say(f"waited {seconds:.1f}s for the {role} database ({outages} outage"
                f"{'s' if outages != 1 else ''}, budget {shared.outages.budget:g}s)")
    if holder is not None and holder.renewals:
        by_snapshot: dict[int, list[str]] = {}
        for r in results:
            if r.ok:
                by_snapshot.setdefault(r.snapshot, []).append(r.table)
        parts = "; ".join(f"snapshot {n}: {', '.join(names)}"
                          for n, names in sorted(by_snapshot.items()))
        say(f"copier: warning: the run's snapshot was lost and renewed {len(holder.renewals)} "
            f"time(s) (at {', '.join(holder.renewals)}); the tables copied come from "
            f"{parts or 'none'}")
    return {role: round(seconds, 1) for role, (_, seconds) in waited.items()}


# ---------------------------------------------------------------------------------------------
# main


INTERRUPTED = threading.Event()


def raise_interrupted(signum, frame) -> None:
    INTERRUPTED.set()
    raise Interrupted()


def handle_signals() -> None:
    signal.signal(signal.SIGTERM, raise_interrupted)
    signal.signal(signal.SIGINT, raise_interrupted)


def main(argv: list[str] | None = None) -> int:
    handle_signals()
    try:
        options = parse_args(sys.argv[1:] if argv is None else argv)
        return run(options, load_connection_settings())
    except CopierError as exc:
        say(f"copier: error: {exc}")
        return 1
    except KeyboardInterrupt:
        say("copier: interrupted; every table not yet swapped in is unchanged")
        return 1


if __name__ == "__main__":
    sys.exit(main())
