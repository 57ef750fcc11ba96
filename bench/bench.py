"""Benchmark: the copier against the tools a data engineer would otherwise use.

    python3 bench/bench.py                      # ~1 GB sample, 3 rounds (the README figures)
    python3 bench/bench.py --mb 50 --rounds 1   # a smoke run: all four tools work (~10 s)

Each tool refreshes an already-populated target: the same source database, one target
database per tool, filled by an untimed first run of that same tool. Then, per round, every
tool runs once, in an order rotated each round (so no tool always follows the same one),
after a CHECKPOINT so nobody pays for the previous tool's dirty buffers:

    pg_dump | psql          pg_dump --clean --if-exists | psql
    pg_dump -Fd + restore   pg_dump -Fd -j 2 -Z0, then pg_restore -j 2 --clean --if-exists
    pgcopydb                pgcopydb clone --table-jobs 2 --index-jobs 2 --drop-if-exists
    copier --jobs 2         copier.py TABLES=<all sample tables> --copy-unchanged --jobs 2

It prints a markdown table: median wall time, ratio to ``pg_dump | psql`` and each launched
process's peak RSS (GNU time's %M, which covers the process and its reaped children, so it is
the largest single process of that tree), and under it the floor (bench/floor.py): the CPU
cost of each step of the work measured alone, which bounds what any tool can reach here.
The cluster (dev/localpg.py, fsync off) lives in bench/results/pgdata; logs and a copy of the
report go to bench/results/ (gitignored).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Run as `python3 bench/bench.py`: make the repository's packages importable.
sys.path.insert(0, str(REPO))

import psycopg2  # noqa: E402
from cpu import busy_cpu_seconds, cluster_cpu_seconds  # noqa: E402  (bench/cpu.py, beside this script)
from floor import floor_table, measure_floor  # noqa: E402  (bench/floor.py)
from psycopg2 import sql  # noqa: E402
from timed import COPY_UNCHANGED  # noqa: E402  (bench/timed.py)

from dev import sample_data  # noqa: E402
from dev.localpg import LocalCluster, LocalPgError  # noqa: E402
from runlog import split_table_list  # noqa: E402  (the copier's own parsing of TABLES names)

RESULTS = REPO / "bench" / "results"
SOURCE_DB = "bench_source"
GNU_TIME = "/usr/bin/time"
JOBS = 2
BASELINE = "pg_dump | psql"
COPIER = "copier --jobs 2"
COPIER_TARGET = "target_copier"
# Debian packages the benchmark installs when their program is missing.
PACKAGES = {"pgcopydb": "pgcopydb", GNU_TIME: "time"}


class BenchError(Exception):
    pass


def say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Prerequisites.

def as_root(argv: list[str]) -> list[str]:
    return argv if os.geteuid() == 0 else ["sudo", *argv]


def ensure_programs() -> None:
    """Install pgcopydb and GNU time from Debian when missing, as dev/install.sh does."""
    missing = [pkg for program, pkg in PACKAGES.items() if shutil.which(program) is None]
    if not missing:
        return
    say(f"installing {' '.join(missing)} (apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(as_root(["apt-get", "update", "-qq"]), check=True, env=env)
    subprocess.run(as_root(["apt-get", "install", "-y", "-qq", *missing]), check=True, env=env,
                   stdout=subprocess.DEVNULL)


# ---------------------------------------------------------------------------------------------
# Running a tool: one or more steps, each a pipeline of processes, timed as a whole.

@dataclass
class Command:
    label: str  # how the process is named in the report
    argv: list[str]
    env: dict[str, str] | None = None


@dataclass
class Measurement:
    tool: str
    seconds: float
    peak_kb: dict[str, int] = field(default_factory=dict)
    client_cpu: float = 0.0  # user + system seconds of the launched processes and their children
    server_cpu: float = 0.0  # the same for the PostgreSQL server's processes
    other_cpu: float = 0.0  # everything else on the machine meanwhile: the noise


def run_pipeline(commands: list[Command], log_dir: Path, usage: Measurement) -> None:
    """Run commands connected stdout to stdin, each under GNU time; add up their usage."""
    processes, peak_files = [], []
    previous_stdout = subprocess.DEVNULL
    for n, command in enumerate(commands):
        name = command.label.replace(" ", "_")
        peak_file = log_dir / f"{name}.peak"
        last = n == len(commands) - 1
        process = subprocess.Popen(
            [GNU_TIME, "-f", "%M %U %S", "-o", str(peak_file), *command.argv],
            stdin=previous_stdout,
            stdout=open(log_dir / f"{name}.out", "wb") if last else subprocess.PIPE,
            stderr=open(log_dir / f"{name}.err", "wb"),
            env=command.env, cwd=REPO,
        )
        if previous_stdout is not subprocess.DEVNULL:
            previous_stdout.close()  # so the writer sees a broken pipe if the reader dies
        previous_stdout = process.stdout
        processes.append(process)
        peak_files.append((command.label, peak_file))
    for command, process in zip(commands, processes, strict=True):
        if process.wait() != 0:
            raise BenchError(f"{command.label} failed (exit {process.returncode}); see {log_dir}")
    for label, peak_file in peak_files:
        # The last line: GNU time puts a note about a signal or exit status before it.
        peak_kb, user, system = peak_file.read_text().splitlines()[-1].split()
        usage.peak_kb[label] = max(usage.peak_kb.get(label, 0), int(peak_kb))
        usage.client_cpu += float(user) + float(system)


@dataclass
class Tool:
    name: str
    target_db: str
    steps: Callable[[Bench], list[list[Command]]]  # built per run, with that run's paths
    prepare: Callable[[Bench], None] | None = None  # untimed, e.g. remove the last dump


@dataclass
class Bench:
    cluster: LocalCluster
    tables: list[str]
    run_dir: Path

    def dsn(self, db: str) -> str:
        return self.cluster.dsn(db)

    def uri(self, db: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.cluster.port}/{db}"

    def measure(self, tool: Tool, label: str) -> Measurement:
        log_dir = self.run_dir / label
        log_dir.mkdir(parents=True, exist_ok=True)
        if tool.prepare:
            tool.prepare(self)
        checkpoint(self.cluster)
        measurement = Measurement(tool.name, 0.0)
        busy_before, server_before = busy_cpu_seconds(), cluster_cpu_seconds(self.cluster)
        started = time.monotonic()
        for pipeline in tool.steps(self):
            run_pipeline(pipeline, log_dir, measurement)
        measurement.seconds = time.monotonic() - started
        measurement.server_cpu = cluster_cpu_seconds(self.cluster) - server_before
        measurement.other_cpu = max(0.0, busy_cpu_seconds() - busy_before
                                    - measurement.server_cpu - measurement.client_cpu)
        verify_target(self, tool)
        return measurement


# ---------------------------------------------------------------------------------------------
# The four tools. Each refreshes its own target database from the same source.

def pg_dump_psql_steps(b: Bench) -> list[list[Command]]:
    return [[
        Command("pg_dump", [b.cluster.bin("pg_dump"), "--clean", "--if-exists", "-d", b.dsn(SOURCE_DB)]),
        Command("psql", [b.cluster.bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                         "-d", b.dsn("target_pg_dump_psql")]),
    ]]


def dump_dir(b: Bench) -> Path:
    return b.run_dir / "dump"


def remove_dump_dir(b: Bench) -> None:
    shutil.rmtree(dump_dir(b), ignore_errors=True)


def pg_dump_restore_steps(b: Bench) -> list[list[Command]]:
    return [
        [Command("pg_dump -Fd", [b.cluster.bin("pg_dump"), "-Fd", "-j", str(JOBS), "-Z0",
                                 "-f", str(dump_dir(b)), "-d", b.dsn(SOURCE_DB)])],
        [Command("pg_restore", [b.cluster.bin("pg_restore"), "-j", str(JOBS), "--clean", "--if-exists",
                                "-d", b.dsn("target_pg_restore"), str(dump_dir(b))])],
    ]


def pgcopydb_work_dir(b: Bench) -> Path:
    return b.run_dir / "pgcopydb-work"


def remove_pgcopydb_work_dir(b: Bench) -> None:
    shutil.rmtree(pgcopydb_work_dir(b), ignore_errors=True)


def pgcopydb_steps(b: Bench) -> list[list[Command]]:
    # pgcopydb runs pg_dump/pg_restore from PATH: point it at the server's own binaries.
    env = {**os.environ, "PATH": f"{b.cluster.bindir}:{os.environ['PATH']}"}
    return [[Command("pgcopydb", [
        "pgcopydb", "clone", "--source", b.uri(SOURCE_DB), "--target", b.uri("target_pgcopydb"),
        "--table-jobs", str(JOBS), "--index-jobs", str(JOBS), "--drop-if-exists",
        "--dir", str(pgcopydb_work_dir(b)),
    ], env)]]


def copier_steps(b: Bench) -> list[list[Command]]:
    """Every round copies every table (--copy-unchanged), as the other tools do: the source does
    not change between rounds, and the copier would otherwise find each table unchanged."""
    env = {**os.environ, "SOURCE_DSN": b.dsn(SOURCE_DB), "TARGET_DSN": b.dsn(COPIER_TARGET)}
    env.pop("TABLES", None)
    env.pop("COPIER_COPY_UNCHANGED", None)
    return [[Command("copier", [sys.executable, str(REPO / "copier.py"), "TABLES=" + ",".join(b.tables),
                                COPY_UNCHANGED, "--jobs", str(JOBS)], env)]]


TOOLS = (
    Tool(BASELINE, "target_pg_dump_psql", pg_dump_psql_steps),
    Tool("pg_dump -Fd -j2 -Z0 + pg_restore -j2", "target_pg_restore", pg_dump_restore_steps,
         remove_dump_dir),
    Tool("pgcopydb --table-jobs 2", "target_pgcopydb", pgcopydb_steps, remove_pgcopydb_work_dir),
    Tool(COPIER, COPIER_TARGET, copier_steps),
)


# ---------------------------------------------------------------------------------------------
# The cluster.

def admin(cluster: LocalCluster, statement, db: str = "postgres", params=None) -> list[tuple]:
    conn = psycopg2.connect(cluster.dsn(db))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def table_identifiers(tables: list[str]) -> list[sql.Identifier]:
    """The sample's table names (as TABLES spells them), schema-qualified identifiers."""
    idents = []
    for parts in split_table_list(",".join(tables)):
        names = [name for name, _ in parts]
        idents.append(sql.Identifier(*(names if len(names) == 2 else ["public", *names])))
    return idents


def row_counts(cluster: LocalCluster, db: str, tables: list[str]) -> list[int]:
    return [admin(cluster, sql.SQL("SELECT count(*) FROM {}").format(ident), db)[0][0]
            for ident in table_identifiers(tables)]


def verify_target(bench: Bench, tool: Tool) -> None:
    """Untimed: a tool that 'wins' by copying less than everything must not go unnoticed."""
    expected = row_counts(bench.cluster, SOURCE_DB, bench.tables)
    if row_counts(bench.cluster, tool.target_db, bench.tables) != expected:
        raise BenchError(f"{tool.name} left {tool.target_db} with other row counts than the source")


def checkpoint(cluster: LocalCluster) -> None:
    admin(cluster, "CHECKPOINT")


# Background vacuum/analyze of one tool's fresh tables would land in the next tool's timing.
BENCH_SETTINGS = {"autovacuum": "off"}
# Names of the settings the last run applied: the cluster persists, a --set must not.
APPLIED_SETTINGS_FILE = RESULTS / "pgdata.settings.json"
REPORTED_SETTINGS = ("fsync", "synchronous_commit", "full_page_writes", "wal_level", "shared_buffers",
                     "max_wal_size", "autovacuum")


def start_cluster(extra_settings: dict[str, str]) -> LocalCluster:
    cluster = LocalCluster.create(RESULTS / "pgdata")
    if cluster.is_running():
        raise BenchError(f"a server already runs on {RESULTS / 'pgdata'}: is another bench running? "
                         "If not, stop it with pg_ctl -D bench/results/pgdata stop")
    cluster.start()
    apply_settings(cluster, {**BENCH_SETTINGS, **extra_settings})
    # Some settings (wal_level) need a restart; a restart is cheap.
    cluster.stop()
    cluster.start()
    return cluster


def apply_settings(cluster: LocalCluster, settings: dict[str, str]) -> None:
    previous = json.loads(APPLIED_SETTINGS_FILE.read_text()) if APPLIED_SETTINGS_FILE.exists() else []
    for name in previous:
        if name not in settings:
            admin(cluster, sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(name)))
    for name, value in settings.items():
        admin(cluster, sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
    APPLIED_SETTINGS_FILE.write_text(json.dumps(sorted(settings)))


def parse_setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), value.strip()


def recreate_database(cluster: LocalCluster, name: str) -> None:
    admin(cluster, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin(cluster, f'CREATE DATABASE "{name}"')


def ensure_database(cluster: LocalCluster, name: str) -> None:
    if not admin(cluster, f"SELECT 1 FROM pg_database WHERE datname = '{name}'"):
        admin(cluster, f'CREATE DATABASE "{name}"')


# ---------------------------------------------------------------------------------------------
# The run and the report.

def machine_description(cluster: LocalCluster) -> dict[str, str]:
    meminfo = Path("/proc/meminfo").read_text().split("\n")[0].split()
    pgcopydb = subprocess.run(["pgcopydb", "--version"], capture_output=True, text=True)
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": str(os.cpu_count()),
        "memory": f"{int(meminfo[1]) / 1048576:.1f} GiB",
        "postgresql": admin(cluster, "SHOW server_version")[0][0],
        "pgcopydb": pgcopydb.stdout.split("\n")[0].replace("pgcopydb version ", ""),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "server settings": " ".join(
            f"{name}={value}" for name, value in admin(
                cluster, "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s) "
                "ORDER BY name", params=(list(REPORTED_SETTINGS),))),
    }


def rotated(tools: tuple[Tool, ...], round_no: int) -> list[Tool]:
    shift = round_no % len(tools)
    return list(tools[shift:] + tools[:shift])


def run_rounds(bench: Bench, tools: tuple[Tool, ...], rounds: int) -> list[Measurement]:
    for tool in tools:
        say(f"untimed first run of {tool.name} (fills {tool.target_db})")
        bench.measure(tool, f"warmup/{tool.target_db}")
    measurements = []
    for round_no in range(rounds):
        for tool in rotated(tools, round_no):
            m = bench.measure(tool, f"round{round_no + 1}/{tool.target_db}")
            say(f"round {round_no + 1}: {tool.name}: {m.seconds:.1f}s (CPU s: client "
                f"{m.client_cpu:.1f}, server {m.server_cpu:.1f}, others {m.other_cpu:.1f})")
            measurements.append(m)
            with open(bench.run_dir / "runs.jsonl", "a") as log:
                log.write(json.dumps({"round": round_no + 1, **m.__dict__}) + "\n")
    # The dump and pgcopydb's work files are as big as the data: keep only the logs.
    remove_dump_dir(bench)
    remove_pgcopydb_work_dir(bench)
    return measurements


def cell(text: str) -> str:
    """Text for a markdown table cell: a bare | would split the cell, even inside backquotes."""
    return text.replace("|", "\\|")


def format_peaks(peaks: dict[str, int]) -> str:
    return ", ".join(f"{label} {kb / 1024:.0f}" for label, kb in peaks.items())


def results_table(tools: tuple[Tool, ...], measurements: list[Measurement]) -> str:
    medians = {t.name: statistics.median(m.seconds for m in measurements if m.tool == t.name)
               for t in tools}
    baseline = medians.get(BASELINE)
    lines = [
        f"| tool | median s | × `{cell(BASELINE)}` | runs (s) | peak RSS per process (MB) "
        "| client CPU s | server CPU s | others' CPU s |",
        "|---|---:|---:|---|---|---:|---:|---:|",
    ]
    for tool in tools:
        runs = [m for m in measurements if m.tool == tool.name]
        peaks: dict[str, int] = {}
        for m in runs:
            for label, kb in m.peak_kb.items():
                peaks[label] = max(peaks.get(label, 0), kb)
        ratio = f"{medians[tool.name] / baseline:.2f}" if baseline else "-"
        lines.append(f"| `{cell(tool.name)}` | {medians[tool.name]:.1f} | {ratio} | "
                     f"{' / '.join(f'{m.seconds:.1f}' for m in runs)} | {cell(format_peaks(peaks))} | "
                     + " | ".join(f"{statistics.median(getattr(m, f) for m in runs):.1f}"
                                  for f in ("client_cpu", "server_cpu", "other_cpu")) + " |")
    return "\n".join(lines)


def copier_jobs_table(log_file: Path) -> str:
    """Per-job busy time of one copier run: shows whether the largest table is the critical path."""
    jobs: dict[int, list[tuple[str, float]]] = {}
    for line in log_file.read_text().splitlines():
        event = json.loads(line)
        if event.get("event") == "table_copied":
            jobs.setdefault(event["job"], []).append((event["table"], event["seconds"]))
    lines = ["| copier job | busy s | tables (s) |", "|---:|---:|---|"]
    for job in sorted(jobs):
        tables = jobs[job]
        lines.append(f"| {job} | {sum(s for _, s in tables):.1f} | "
                     + ", ".join(f"{name} {s:.1f}" for name, s in tables) + " |")
    return "\n".join(lines)


def sample_table(bench: Bench) -> str:
    sizes = sample_data.sample_sizes(bench.dsn(SOURCE_DB))
    total = sum(size for _, _, size in sizes)
    lines = ["| table | rows | MB | share |", "|---|---:|---:|---:|"]
    lines += [f"| `{name}` | {rows} | {size / 1048576:.1f} | {size / total:.0%} |"
              for name, rows, size in sizes]
    lines.append(f"| total | {sum(r for _, r, _ in sizes)} | {total / 1048576:.1f} | |")
    return "\n".join(lines)


def measure_the_floor(bench: Bench):
    """Untimed by the rounds: each step of the work, alone (bench/floor.py)."""
    say("measuring the floor: each step of the work alone")
    checkpoint(bench.cluster)
    return measure_floor(bench.dsn(SOURCE_DB), bench.dsn(COPIER_TARGET), table_identifiers(bench.tables),
                         bench.run_dir / "floor", lambda: cluster_cpu_seconds(bench.cluster))


def median_of(measurements: list[Measurement], tool: str, value: Callable[[Measurement], float]):
    values = [value(m) for m in measurements if m.tool == tool]
    return statistics.median(values) if values else None


def report(bench: Bench, tools, measurements, machine, command, rounds, floor) -> str:
    last_copier = bench.run_dir / f"round{rounds}" / COPIER_TARGET / "copier.out"
    parts = [
        f"Command: `{command}`",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()),
        "", results_table(tools, measurements),
        "", "The floor: each step of the work alone (bench/floor.py), CPU seconds summed over the tables:",
        "", floor_table(floor, median_of(measurements, BASELINE, lambda m: m.seconds),
                        median_of(measurements, COPIER, lambda m: m.client_cpu + m.server_cpu)),
        "", "Sample (pg_total_relation_size on the source):", "", sample_table(bench),
    ]
    if last_copier.exists():
        parts += ["", f"Copier jobs in round {rounds}:", "", copier_jobs_table(last_copier)]
    return "\n".join(parts) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark the copier against pg_dump, pg_restore "
                                     "and pgcopydb on the same sample, interleaved.")
    parser.add_argument("--mb", type=float, default=1000, help="sample size in MB (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--keep", action="store_true", help="leave the cluster running afterwards")
    parser.add_argument("--set", dest="settings", action="append", type=parse_setting, default=[],
                        metavar="NAME=VALUE", help="a server setting for this run (ALTER SYSTEM), "
                        "e.g. --set wal_level=minimal --set max_wal_senders=0")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    command = "python3 bench/bench.py " + " ".join(argv)
    cluster = None
    try:
        ensure_programs()
        RESULTS.mkdir(parents=True, exist_ok=True)
        cluster = start_cluster(dict(args.settings))
        ensure_database(cluster, SOURCE_DB)
        for tool in TOOLS:
            recreate_database(cluster, tool.target_db)
        say(f"generating the ~{args.mb:g} MB sample in {SOURCE_DB} (skipped if already there)")
        tables = sample_data.create_sample(cluster.dsn(SOURCE_DB), args.mb)
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
        bench = Bench(cluster, tables, RESULTS / f"run-{stamp}")
        machine = machine_description(cluster)
        measurements = run_rounds(bench, TOOLS, args.rounds)
        floor = measure_the_floor(bench)
        text = report(bench, TOOLS, measurements, machine, command.strip(), args.rounds, floor)
        (bench.run_dir / "report.md").write_text(text)
        print(text)
        return 0
    except (BenchError, LocalPgError, psycopg2.Error, subprocess.CalledProcessError) as exc:
        say(f"error: {str(exc).strip()}")
        return 1
    finally:
        if cluster is not None and not args.keep:
            cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
