"""CPU accounting for the benchmark: the machine's busy time and the PostgreSQL server's.

Other engineers' tests may share these cores, so the bench says how much they took.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def busy_cpu_seconds() -> float:
    """CPU time the whole machine spent not idle since boot."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is already in user/nice)
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / CLOCK_TICKS


def process_stat(pid: int) -> list[str]:
    """/proc/PID/stat fields from the 3rd (state) on: the command name may contain spaces."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()


def cluster_cpu_seconds(cluster) -> float:
    """CPU time of the postmaster, its live children and (via cutime) its exited backends."""
    postmaster = int((cluster.datadir / "postmaster.pid").read_text().split()[0])
    utime, stime, cutime, cstime = (int(x) for x in process_stat(postmaster)[11:15])
    ticks = utime + stime + cutime + cstime
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = process_stat(int(entry.name))
        except OSError:
            continue  # exited meanwhile
        if int(stat[1]) == postmaster:
            ticks += int(stat[11]) + int(stat[12])
    return ticks / CLOCK_TICKS


def children_cpu_seconds() -> float:
    """CPU time of this process's children that have exited and been waited for (a tool run with
    subprocess, and the processes it waited for in turn: the copier's workers, pg_dump and psql)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
