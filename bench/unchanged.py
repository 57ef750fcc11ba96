"""What a night costs when tables did not change (issue 22): the copier, which skips a table whose
rows the reporting side holds already, against itself copying every table (--copy-unchanged) and
against `pg_dump | psql`, on the same data, night after night.

    python3 bench/unchanged.py                        # ~1 GB sample, 3 rounds
    python3 bench/unchanged.py --mb 300 --rounds 3    # the bench/README figures
    python3 bench/unchanged.py --mb 20 --rounds 1     # smoke run

The sample is dev/sample_data.py's, as bench/bench.py has it. Three tools refresh a target of
their own from the same source: the copier as it runs by default (`--jobs 2`), the copier with
`--copy-unchanged` (every table copied, as before issue 22) and `pg_dump | psql`. A round is six
nights. Before a night, each table it changes gets an UPDATE of about 1% of its rows on the
source (at least one row; then a VACUUM, untimed); then each tool runs once, after a CHECKPOINT,
in an order rotated every night and every round (each tool runs first, second and last on
each night over three rounds):

    all changed, after quiet nights   every table changed; all but the 10% ones had been found
                                      unchanged the night before: the source's counters tell the
                                      writes, so each is copied at once
    all changed, every night          every table changed again: copied at once (the issue's
                                      "changes every night", goal <= 1.03x --copy-unchanged)
    nothing changed, first night      every table had been copied the night before: no row written
                                      since, proved unchanged from the source's row versions, nothing
                                      read or written ("before reading")
    nothing changed, steady           found unchanged the night before: proved unchanged again
                                      ("before reading"; goal about <= 0.25x)
    10% changed, first night          one table in ten changed (the one nearest a tenth of the bytes)
    10% changed, every night          the same tables changed again; the others steady

Each night starts from what the previous run of the same copier left (its fingerprints on the
reporting side), as real nights do. The copier's JSON lines must say, table by table, what the
night promises (copied, or unchanged before reading); the tables changed that night must
equal the source on its target; every target must hold the source's row counts: the bench stops
with an error otherwise. Before the first round, an untimed first copy by every tool and an
untimed 10%-changed night leave the copier where the sixth night leaves it.

It prints markdown tables: per night, each tool's wall time (median over --rounds) and CPU
(client + server, bench/cpu.py), the ratios against --copy-unchanged and `pg_dump | psql`, the
issue's goals, and where the copier's time went (the `steps` of its lines). The cluster lives in
bench/results/pgdata-unchanged; the copier's lines and the report go to
bench/results/unchanged-<timestamp>/ (all gitignored).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


import psycopg2  # noqa: E402
from cpu import busy_cpu_seconds, children_cpu_seconds, cluster_cpu_seconds  # noqa: E402
from psycopg2 import sql  # noqa: E402
from timed import admin, bench_cluster, ensure_database, fresh_database, run_copier, run_dump_restore  # noqa: E402

import runlog  # noqa: E402
from dev import sample_data  # noqa: E402

RESULTS = REPO / "bench" / "results"
DATADIR = RESULTS / "pgdata-unchanged"
JOBS = 2

COPIER = "copier"
EVERY_TABLE = "copier --copy-unchanged"
BASELINE = "pg_dump | psql"
TOOLS = (COPIER, EVERY_TABLE, BASELINE)

CHANGED_SHARE = 0.01  # of a changed table's rows, updated
TENTH = 0.10

# How a night changes a table: a SET that gives the updated rows another value each time.
CHANGES = {
    "public.events": "occurred_at = occurred_at + interval '1 second'",
    "public.orders": "total = total + 1",
    "public.order_lines": "quantity = quantity + 1",
    "public.page_views": "duration_ms = coalesce(duration_ms, 0) + 1",
    "public.customers": "signed_up = signed_up + 1",
    "sales.invoices": "amount = amount + 1",
    "public.products": "price = price + 1",
    '"public"."Mixed Case"': '"Updated At" = "Updated At" + interval \'1 second\'',
    "sales.refunds": "amount = amount + 1",
    "sales.regions": "manager = 'changed at ' || clock_timestamp()",
    "public.currencies": "updated = updated + 1",
    "public.settings": "changed_at = changed_at + interval '1 second'",
}


class BenchError(Exception):
    """The bench cannot go on: a night was not what it promises, or a target is wrong."""


@dataclass(frozen=True)
class Night:
    name: str
    changes: str  # which tables change: "all", "tenth" or "none"


NIGHTS = (
    Night("all changed, after quiet nights", "all"),
    Night("all changed, every night", "all"),
    Night("nothing changed, first night", "none"),
    Night("nothing changed, steady", "none"),
    Night("10% changed, first night", "tenth"),
    Night("10% changed, every night", "tenth"),
)
WARM_UP = Night("10% changed (untimed)", "tenth")
# The goals, as the copier against itself with --copy-unchanged on the same night.
GOALS = (
    ("a table that changes every night: at most 3% more", "all changed, every night", 1.03),
    ("an unchanged table: about a quarter of its full copy at most", "nothing changed, steady", 0.25),
    ("(the same, its first unchanged night)", "nothing changed, first night", 0.25),
)


@dataclass(frozen=True)
class Databases:
    source: str
    copier: str  # the copier's target, skipping unchanged tables
    every_table: str  # the copier's with --copy-unchanged
    dumped: str  # pg_dump | psql's

    def target(self, tool: str) -> str:
        return {COPIER: self.copier, EVERY_TABLE: self.every_table, BASELINE: self.dumped}[tool]


DATABASES = Databases("unchanged_source", "unchanged_copier", "unchanged_every_table", "unchanged_dumped")


@dataclass
class Run:
    night: str
    tool: str
    seconds: float
    cpu: float  # the tool's processes and the server's, CPU seconds
    others: float  # everything else on the machine meanwhile
    lines: list[dict] = field(default_factory=list)  # the copier's JSON lines

    def outcomes(self) -> dict[str, str]:
        """Each table's last word: copied, or unchanged before reading, before or after loading."""
        said = {e["table"]: "copied" for e in self.lines if e.get("event") == runlog.TABLE_COPIED}
        said |= {e["table"]: e["found"] for e in self.lines if e.get("event") == runlog.TABLE_UNCHANGED}
        return said

    def steps(self) -> dict[str, float]:
        """The run's seconds by step, summed over its tables (the run_finished line)."""
        finished = [e for e in self.lines if e.get("event") == runlog.RUN_FINISHED]
        return finished[-1].get("steps", {}) if finished else {}

    def table_lines(self) -> dict[str, dict]:
        return {e["table"]: e for e in self.lines
                if e.get("event") in (runlog.TABLE_COPIED, runlog.TABLE_UNCHANGED)}


@dataclass
class Measured:
    tables: list[str]  # as the log names them
    sizes: dict[str, int]  # pg_total_relation_size on the source, by the log's name
    tenth: list[str]  # the tables the 10% nights change
    rows: int
    jobs: int
    runs: list[Run] = field(default_factory=list)

    def of(self, night: str, tool: str) -> list[Run]:
        return [r for r in self.runs if r.night == night and r.tool == tool]

    def median(self, night: str, tool: str, value=None) -> float:
        """Of the night's runs of tool: wall seconds, or value(run)."""
        return statistics.median(value(r) if value else r.seconds for r in self.of(night, tool))

    def ratio(self, night: str, tool: str, against: str, value=None) -> float:
        return self.median(night, tool, value) / self.median(night, against, value)


def cpu_of(run: Run) -> float:
    return run.cpu


# ---------------------------------------------------------------------------------------------
# The source: which tables a night changes, and the change.

def log_name(table: sample_data.SampleTable) -> str:
    return runlog.qualified(*table.ident)


def nearest_tenth(sizes: dict[str, int]) -> list[str]:
    """One table in ten (at least one), each the nearest to its part of a tenth of the bytes: on
    the standard sample, page_views (10%)."""
    count = max(1, round(len(sizes) * TENTH))
    total = sum(sizes.values())
    by_distance = sorted(sizes, key=lambda name: abs(sizes[name] / total - TENTH / count))
    return sorted(by_distance[:count])


def changed_tonight(night: Night, measured: Measured) -> list[str]:
    return {"all": measured.tables, "tenth": measured.tenth, "none": []}[night.changes]


def change_tables(cluster, source: str, tables: list[str]) -> None:
    """About 1% of each table's rows updated (at least one), then VACUUM: the next night's source
    has no dead rows to skip, and every tool reads the same pages."""
    by_name = {log_name(t): t for t in sample_data.TABLES}
    conn = psycopg2.connect(cluster.dsn(source))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for name in tables:
                ident = sql.Identifier(*by_name[name].ident)
                cur.execute(sql.SQL(
                    "UPDATE {t} SET " + CHANGES[by_name[name].name] + " WHERE ctid = ANY("
                    "ARRAY(SELECT ctid FROM {t} TABLESAMPLE BERNOULLI (%s)) "
                    "|| ARRAY(SELECT ctid FROM {t} LIMIT 1))").format(t=ident), (CHANGED_SHARE * 100,))
                if cur.rowcount < 1:
                    raise BenchError(f"no row of {name} was changed")
                cur.execute(sql.SQL("VACUUM {}").format(ident))
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# The checks: each night is what it says, and each target what the source is.

SAME = "SELECT count(*), sum(hashtext(t::text)) FROM {} t"


def table_idents() -> dict[str, sql.Identifier]:
    return {log_name(t): sql.Identifier(*t.ident) for t in sample_data.TABLES}


def row_counts(cluster, db: str) -> dict[str, int]:
    return {name: admin(cluster, sql.SQL("SELECT count(*) FROM {}").format(ident), db)[0][0]
            for name, ident in table_idents().items()}


def check_copier_night(cluster, dbs: Databases, run: Run, expected: dict[str, str]) -> None:
    """The copier did, table by table, what the night promises, and the tables it changed are on
    its target as on the source (a changed table found 'unchanged' would keep last night's rows)."""
    said = run.outcomes()
    if said != expected:
        wrong = {t: (said.get(t, "no line"), what) for t, what in expected.items() if said.get(t) != what}
        raise BenchError(f"{run.night}: the copier did not do what the night promises "
                         f"(table: did, expected): {wrong}")
    idents = table_idents()
    for name in (t for t, what in expected.items() if what == "copied"):
        query = sql.SQL(SAME).format(idents[name])
        if admin(cluster, query, dbs.copier) != admin(cluster, query, dbs.source):
            raise BenchError(f"{run.night}: {name} on {dbs.copier} is not what the source holds")


def check_counts(cluster, tool: str, target: str, expected: dict[str, int]) -> None:
    """Untimed: a tool that 'wins' by copying less than everything must not go unnoticed."""
    if row_counts(cluster, target) != expected:
        raise BenchError(f"{tool} left {target} with other row counts than the source")


def expected_outcomes(tables: list[str], changed: list[str]) -> dict[str, str]:
    """What the copier must say of each table tonight: a changed table is copied; an unchanged
    one (no row written since the last night read it) is proved so on the source."""
    return {t: "copied" if t in changed else "before reading" for t in tables}


# ---------------------------------------------------------------------------------------------
# The nights.

def run_tool(cluster, dbs: Databases, tool: str, tables: list[str], jobs: int, log: Path) -> float:
    if tool == BASELINE:
        return run_dump_restore(cluster, dbs.source, dbs.dumped)
    return run_copier(cluster, dbs.source, dbs.target(tool), tables, "--jobs", str(jobs), log=log,
                      copy_unchanged=tool == EVERY_TABLE)


def timed_run(cluster, dbs: Databases, night: Night, tool: str, tables: list[str], jobs: int,
              log: Path) -> Run:
    admin(cluster, "CHECKPOINT")
    client, server, busy = children_cpu_seconds(), cluster_cpu_seconds(cluster), busy_cpu_seconds()
    seconds = run_tool(cluster, dbs, tool, tables, jobs, log)
    client, server = children_cpu_seconds() - client, cluster_cpu_seconds(cluster) - server
    others = max(0.0, busy_cpu_seconds() - busy - client - server)
    lines = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return Run(night.name, tool, seconds, client + server, others, lines)


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-")


class Nights:
    """The copier's nights one after another, each checked against the state the last one left."""

    def __init__(self, cluster, dbs: Databases, measured: Measured, names: list[str], jobs: int,
                 log_dir: Path):
        self.cluster, self.dbs, self.measured, self.names, self.jobs = cluster, dbs, measured, names, jobs
        self.log_dir = log_dir
        self.counts = row_counts(cluster, dbs.source)

    def first_copies(self) -> None:
        """Untimed: every tool fills its target; the copier's is empty, so it copies every table."""
        for tool in TOOLS:
            self.run(Night("first copy", "none"), tool, "warm-up", expected={t: "copied" for t in
                                                                             self.measured.tables})

    def night(self, night: Night, label: str, tools=TOOLS, shift: int = 0) -> list[Run]:
        """The night's changes, then each tool once, the order rotated by shift."""
        changed = changed_tonight(night, self.measured)
        change_tables(self.cluster, self.dbs.source, changed)
        expected = expected_outcomes(self.measured.tables, changed)
        shift %= len(tools)
        return [self.run(night, tool, label, expected) for tool in tools[shift:] + tools[:shift]]

    def run(self, night: Night, tool: str, label: str, expected: dict[str, str]) -> Run:
        log = self.log_dir / label / f"{slug(night.name)}.{slug(tool)}.jsonl"
        log.parent.mkdir(parents=True, exist_ok=True)
        run = timed_run(self.cluster, self.dbs, night, tool, self.names, self.jobs, log)
        check_counts(self.cluster, tool, self.dbs.target(tool), self.counts)
        if tool == COPIER:
            check_copier_night(self.cluster, self.dbs, run, expected)
        return run


def measure(cluster, dbs: Databases, mb: float, rounds: int, log_dir: Path, jobs: int = JOBS) -> Measured:
    """The sample in dbs.source (made when missing), the first copies, then the rounds of nights.
    The target databases must exist; the copier's must hold no fingerprints yet (a fresh one)."""
    names = sample_data.create_sample(cluster.dsn(dbs.source), mb)
    missing = set(names) - set(CHANGES)
    if missing:
        raise BenchError(f"bench/unchanged.py cannot change {sorted(missing)}: add them to CHANGES")
    by_name = {t.name: log_name(t) for t in sample_data.TABLES}
    sizes = {by_name[name]: size for name, _, size in sample_data.sample_sizes(cluster.dsn(dbs.source))}
    tables = [by_name[name] for name in names]
    measured = Measured(tables, sizes, nearest_tenth(sizes), 0, jobs)
    nights = Nights(cluster, dbs, measured, names, jobs, log_dir)
    measured.rows = sum(nights.counts.values())
    nights.first_copies()
    nights.night(WARM_UP, "warm-up", tools=(COPIER,))
    for round_no in range(1, rounds + 1):
        for number, night in enumerate(NIGHTS):
            # Rotated by night and by round: over three rounds each tool runs first, second and
            # last on each night (whoever follows another tool pays for what it left behind).
            runs = nights.night(night, f"round{round_no}", shift=number + round_no)
            measured.runs += runs
            say(f"round {round_no}, {night.name}: " + ", ".join(
                f"{r.tool} {r.seconds:.2f}s ({r.cpu:.1f} CPU-s)" for r in runs))
    return measured


def say(text: str) -> None:
    print(f"unchanged: {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The report.

ESCAPED_BAR = "\\|"  # a bar inside a markdown table's cell


def cell(text: str) -> str:
    return text.replace("|", ESCAPED_BAR)


def what_it_did(run: Run) -> str:
    said = list(run.outcomes().values())
    parts = [(said.count("copied"), "copied"), (said.count("after loading"), "unchanged after loading"),
             (said.count("before reading"), "unchanged before reading")]
    return ", ".join(f"{n} {what}" for n, what in parts if n)


def nights_table(m: Measured) -> str:
    rows = ["| night | the copier | copier s (CPU s) | `--copy-unchanged` s (CPU s) "
            f"| `{cell(BASELINE)}` s (CPU s) | × `--copy-unchanged`, wall | × `--copy-unchanged`, CPU "
            f"| × `{cell(BASELINE)}`, wall | others' CPU s |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for night in (n.name for n in NIGHTS):
        times = " | ".join(f"{m.median(night, tool):.2f} ({m.median(night, tool, cpu_of):.1f})"
                           for tool in TOOLS)
        others = statistics.median(r.others for r in m.runs if r.night == night)
        rows.append(f"| {night} | {what_it_did(m.of(night, COPIER)[-1])} | {times} "
                    f"| **{m.ratio(night, COPIER, EVERY_TABLE):.2f}** "
                    f"| {m.ratio(night, COPIER, EVERY_TABLE, cpu_of):.2f} "
                    f"| {m.ratio(night, COPIER, BASELINE):.2f} | {others:.1f} |")
    return "\n".join(rows)


def runs_table(m: Measured) -> str:
    rows = ["| night | tool | runs (s) | CPU s |", "|---|---|---|---|"]
    for night in NIGHTS:
        for tool in TOOLS:
            runs = m.of(night.name, tool)
            rows.append(f"| {night.name} | `{cell(tool)}` | {' / '.join(f'{r.seconds:.2f}' for r in runs)} "
                        f"| {' / '.join(f'{r.cpu:.1f}' for r in runs)} |")
    return "\n".join(rows)


def goals_table(m: Measured) -> str:
    rows = ["| goal | night | × `--copy-unchanged`, wall | CPU | |", "|---|---|---:|---:|---|"]
    for goal, night, limit in GOALS:
        wall = m.ratio(night, COPIER, EVERY_TABLE)
        verdict = "met" if wall <= limit else f"not met: {wall - limit:+.2f} over {limit:.2f}"
        rows.append(f"| {goal} | {night} | {wall:.2f} | {m.ratio(night, COPIER, EVERY_TABLE, cpu_of):.2f} "
                    f"| {verdict} |")
    return "\n".join(rows)


def steps_table(m: Measured) -> str:
    """Seconds by step, summed over the tables (so over both jobs), median over the rounds."""
    shown = [s for s in runlog.STEPS if any(s in r.steps() for r in m.runs)]
    rows = ["| night | tool | " + " | ".join(shown) + " | sum |", "|---|---|" + "---:|" * (len(shown) + 1)]
    for night in (n.name for n in NIGHTS):
        for tool in (COPIER, EVERY_TABLE):
            medians = [m.median(night, tool, lambda r, s=s: r.steps().get(s, 0.0)) for s in shown]
            rows.append(f"| {night} | `{tool}` | " + " | ".join(f"{s:.2f}" for s in medians)
                        + f" | {sum(medians):.2f} |")
    return "\n".join(rows)


def per_table(m: Measured, night: str = "nothing changed, steady") -> str:
    """An unchanged table against its full copy, table by table (medians over the rounds)."""
    def median(tool: str, table: str, step: str | None = None) -> float:
        lines = [r.table_lines()[table] for r in m.of(night, tool)]
        return statistics.median(line["steps"].get(step, 0.0) if step else line["seconds"] for line in lines)

    rows = ["| table | MB (source) | copier s | of which load: the proof | verify | stage "
            "| `--copy-unchanged` s | ratio |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for table in sorted(m.tables, key=lambda t: -m.sizes[t]):
        copier, full = median(COPIER, table), median(EVERY_TABLE, table)
        steps = " | ".join(f"{median(COPIER, table, step):.2f}" for step in ("load", "verify", "stage"))
        rows.append(f"| `{cell(table)}` | {m.sizes[table] / 2**20:.1f} | {copier:.2f} | {steps} "
                    f"| {full:.2f} | {copier / full if full else 0:.2f} |")
    return "\n".join(rows)


def report(m: Measured, command: str, rounds: int, loads: tuple[str, str]) -> str:
    total = sum(m.sizes.values())
    tenth = ", ".join(f"{t} ({m.sizes[t] / total:.0%} of the bytes)" for t in m.tenth)
    return "\n".join([
        f"Command: `{command}` — {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()} CPUs, load average (1/5/15 min) before {loads[0]}, after {loads[1]}",
        "",
        f"Sample: {total / 2**20:.1f} MiB in {len(m.tables)} tables, {m.rows} rows; a changed table has "
        f"about {CHANGED_SHARE:.0%} of its rows updated; the 10% nights change {tenth}. Both copiers "
        f"`--jobs {m.jobs}`. Medians of {rounds} rounds; CPU is the tool's processes and the server's "
        "(client + server CPU-s).",
        "", nights_table(m),
        "", "The issue's goals (the copier against itself with `--copy-unchanged`, same night):",
        "", goals_table(m),
        "", "Where the copier's time went: seconds by step summed over the tables (both jobs' "
            "work, so more than the wall time), medians over the rounds:",
        "", steps_table(m),
        "", "Table by table, a steady unchanged night against the full copy (the lines' seconds and steps):",
        "", per_table(m),
        "", "Every run:",
        "", runs_table(m),
    ]) + "\n"


def load() -> str:
    return " / ".join(f"{n:.2f}" for n in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=1000,
                        help="sample size in MB (default 1000, as bench.py's)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of six nights (default 3)")
    args = parser.parse_args(argv)
    if args.mb <= 0 or args.rounds < 1:
        parser.error("--mb must be positive and --rounds at least 1")

    before = load()
    log_dir = RESULTS / f"unchanged-{datetime.datetime.now(datetime.UTC):%Y%m%dT%H%M%S}"
    cluster = bench_cluster(DATADIR)
    try:
        ensure_database(cluster, DATABASES.source)
        for target in (DATABASES.copier, DATABASES.every_table, DATABASES.dumped):
            fresh_database(cluster, target)
        measured = measure(cluster, DATABASES, args.mb, args.rounds, log_dir)
    finally:
        cluster.stop()
    text = report(measured, " ".join(["python3 bench/unchanged.py", *argv]), args.rounds, (before, load()))
    (log_dir / "report.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"unchanged.py: {exc}", file=sys.stderr)
        sys.exit(1)
