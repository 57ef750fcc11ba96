"""Before and after: the copier of another revision against this one, on the bench sample.

    python3 bench/ab.py --base 09fd5bf             # ~300 MB, 5 alternating pairs
    python3 bench/ab.py --base HEAD~3 --mb 50 --rounds 2

Both copiers (the base's copier.py taken from git, and the working tree's) refresh a target of
their own from the same source, `--jobs 2`, in pairs whose order alternates, each after a
CHECKPOINT: machine noise then lands on both alike. Prints each one's median and the ratio.
A change that claims not to slow the plain path shows it here. The cluster lives in
bench/results/pgdata-ab (gitignored).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


from timed import admin, ensure_database, run_copier  # noqa: E402

from dev import sample_data  # noqa: E402
from dev.localpg import LocalCluster  # noqa: E402

DATADIR = REPO / "bench" / "results" / "pgdata-ab"
SOURCE = "ab_source"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the git revision to compare with")
    parser.add_argument("--mb", type=float, default=300, help="sample size in MB (default 300)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating pairs (default 5)")
    args = parser.parse_args(argv)

    base = subprocess.run(["git", "-C", str(REPO), "show", f"{args.base}:copier.py"], check=True,
                          capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as folder:
        base_script = Path(folder) / "copier.py"
        base_script.write_text(base)
        copiers = {args.base: (base_script, "ab_base"), "working tree": (REPO / "copier.py", "ab_head")}
        cluster = LocalCluster.create(DATADIR)
        cluster.start()
        try:
            admin(cluster, "ALTER SYSTEM SET autovacuum = off")
            admin(cluster, "SELECT pg_reload_conf()")
            ensure_database(cluster, SOURCE)
            tables = sample_data.create_sample(cluster.dsn(SOURCE), args.mb)
            for script, target in copiers.values():
                ensure_database(cluster, target)
                run_copier(cluster, SOURCE, target, tables, "--jobs", "2", script=script)  # untimed
            times: dict[str, list[float]] = {name: [] for name in copiers}
            order = list(copiers)
            for _ in range(args.rounds):
                for name in order:
                    admin(cluster, "CHECKPOINT")
                    script, target = copiers[name]
                    times[name].append(run_copier(cluster, SOURCE, target, tables, "--jobs", "2",
                                                  script=script))
                order.reverse()
        finally:
            cluster.stop()
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"{args.mb:g} MB sample, {args.rounds} alternating pairs, copier --jobs 2\n")
    print("| copier | median s | runs |\n|---|---:|---|")
    for name, values in times.items():
        print(f"| {name} | {medians[name]:.2f} | {', '.join(f'{v:.2f}' for v in values)} |")
    print(f"\nworking tree / {args.base}: {medians['working tree'] / medians[args.base]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
