"""Before and after: the copier of another revision against this one, on the bench sample.

    python3 bench/ab.py --base 09fd5bf             # ~300 MB, 5 alternating pairs
    python3 bench/ab.py --base HEAD~3 --mb 50 --rounds 2

Both copiers (the base's copier.py taken from git with the project's modules it imports, such
as runlog.py, and the working tree's) refresh a target of their own from the same source,
`--jobs 2`, in pairs whose order alternates, each after a CHECKPOINT: machine noise then lands on
both alike. Each copies every table (`--copy-unchanged`, given to a copier that has the option;
an older one always does). Prints each one's median and the ratio. A change that claims not to
slow the plain path shows it here. The cluster lives in bench/results/pgdata-ab (gitignored).
"""

from __future__ import annotations

import argparse
import ast
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


from timed import COPY_UNCHANGED, admin, ensure_database, run_copier  # noqa: E402

from dev import sample_data  # noqa: E402
from dev.localpg import LocalCluster  # noqa: E402

DATADIR = REPO / "bench" / "results" / "pgdata-ab"
SOURCE = "ab_source"


def git_files(revision: str, name: str) -> dict[str, str]:
    """The project's module or package called name at revision, as {path: text}; none when the
    name is not the project's (the standard library, psycopg2, boto3)."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-tree", "-r", "--name-only", revision, "--",
                             f"{name}.py", f"{name}/"], check=True, capture_output=True, text=True)
    return {path: subprocess.run(["git", "-C", str(REPO), "show", f"{revision}:{path}"], check=True,
                                 capture_output=True, text=True).stdout
            for path in listed.stdout.splitlines() if path.endswith(".py")}


def imported_names(text: str) -> set[str]:
    """The top-level names a module imports, wherever in it (a function's import too)."""
    names = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def checkout_copier(revision: str, folder: Path) -> Path:
    """The revision's copier.py in folder with every project module it imports (runlog.py once it
    existed), from the same revision: run from there, it imports those before the working tree's."""
    todo, seen = ["copier"], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for path, text in git_files(revision, name).items():
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            (folder / path).write_text(text)
            todo += sorted(imported_names(text))
    if not (folder / "copier.py").exists():
        raise SystemExit(f"ab.py: {revision} has no copier.py")
    return folder / "copier.py"


def copies_unchanged_on_request(script: Path) -> bool:
    """Whether this copier has --copy-unchanged (it skips unchanged tables unless given it); one
    older than the option copies every table anyway."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    shown = subprocess.run([sys.executable, str(script), "--help"], env=env, check=True,
                           capture_output=True, text=True)
    return COPY_UNCHANGED in shown.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the git revision to compare with")
    parser.add_argument("--mb", type=float, default=300, help="sample size in MB (default 300)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating pairs (default 5)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as folder:
        base_script = checkout_copier(args.base, Path(folder))
        copiers = {args.base: (base_script, "ab_base"), "working tree": (REPO / "copier.py", "ab_head")}
        every_table = {name: copies_unchanged_on_request(script) for name, (script, _) in copiers.items()}
        cluster = LocalCluster.create(DATADIR)
        cluster.start()
        try:
            admin(cluster, "ALTER SYSTEM SET autovacuum = off")
            admin(cluster, "SELECT pg_reload_conf()")
            ensure_database(cluster, SOURCE)
            tables = sample_data.create_sample(cluster.dsn(SOURCE), args.mb)
            for name, (script, target) in copiers.items():
                ensure_database(cluster, target)
                run_copier(cluster, SOURCE, target, tables, "--jobs", "2", script=script,  # untimed
                           copy_unchanged=every_table[name])
            times: dict[str, list[float]] = {name: [] for name in copiers}
            order = list(copiers)
            for _ in range(args.rounds):
                for name in order:
                    admin(cluster, "CHECKPOINT")
                    script, target = copiers[name]
                    times[name].append(run_copier(cluster, SOURCE, target, tables, "--jobs", "2",
                                                  script=script, copy_unchanged=every_table[name]))
                order.reverse()
        finally:
            cluster.stop()
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"{args.mb:g} MB sample, {args.rounds} alternating pairs, copier --jobs 2 (with "
          f"{COPY_UNCHANGED}: {', '.join(name for name, given in every_table.items() if given) or 'none'})\n")
    print("| copier | median s | runs |\n|---|---:|---|")
    for name, values in times.items():
        print(f"| {name} | {medians[name]:.2f} | {', '.join(f'{v:.2f}' for v in values)} |")
    print(f"\nworking tree / {args.base}: {medians['working tree'] / medians[args.base]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
