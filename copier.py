"""Copy tables from the operational PostgreSQL database into the reporting one. (work in progress)"""

from __future__ import annotations

# Where the settings live in SSM Parameter Store: <prefix><database>/<setting>.
DEFAULT_SSM_PREFIX = "/nightly-copy/"
DATABASES = ("source", "target")
# setting -> default; None means the parameter is required.
CONNECTION_SETTINGS = {
    "host": None,
    "port": "5432",
    "dbname": None,
    "user": None,
    "password": None,
    "sslmode": "require",
}
SECRET_SETTINGS = frozenset({"password"})


def assign_to_jobs(weights: dict[str, float], jobs: int) -> list[list[str]]:
    """Split tables over jobs, largest first onto the least-loaded job.

    The same function plans local --jobs runs, setup's split of the nightly run and
    rebalancing from measured times: only the weights differ (bytes or seconds).
    """
    if jobs < 1:
        raise ValueError("jobs must be at least 1")
    loads = [0.0] * jobs
    assignment: list[list[str]] = [[] for _ in range(jobs)]
    for name in sorted(weights, key=lambda n: (-weights[n], n)):
        lightest = min(range(jobs), key=lambda j: (loads[j], j))
        assignment[lightest].append(name)
        loads[lightest] += weights[name]
    return assignment
