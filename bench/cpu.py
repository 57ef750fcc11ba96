"""CPU accounting for the benchmark: the machine's busy time and the PostgreSQL server's.

Other engineers' tests may share these cores, so the bench says how much they took.
"""

from __future__ import annotations

import os
import resource
import time
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


def cluster_cpu_seconds(cluster, patience: float = 5.0) -> float:
    """CPU time of the postmaster, its live children and (via cutime) its exited backends.

    A backend that has exited but is not reaped yet (a zombie) shows no CPU time, and its
    parent's cutime gets it only once reaped: read right after a client disconnects, its whole
    work would be missing (psql's backend, that is the restore). So wait, up to patience seconds,
    until the postmaster has reaped every exited child, and read again if one was reaped while
    the children were being read."""
    postmaster = int((cluster.datadir / "postmaster.pid").read_text().split()[0])
    deadline = time.monotonic() + patience
    while True:
        reaped_before = process_stat(postmaster)[13:15]
        ticks, zombies = children_ticks(postmaster)
        if (zombies and time.monotonic() < deadline) or process_stat(postmaster)[13:15] != reaped_before:
            time.sleep(0.01)
            continue
        utime, stime, cutime, cstime = (int(x) for x in process_stat(postmaster)[11:15])
        return (ticks + utime + stime + cutime + cstime) / CLOCK_TICKS


def children_ticks(parent: int) -> tuple[int, int]:
    """The user + system ticks of parent's live children, and how many have exited unreaped."""
    ticks = zombies = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = process_stat(int(entry.name))
        except OSError:
            continue  # exited meanwhile
        if int(stat[1]) == parent:
            ticks += int(stat[11]) + int(stat[12])
            zombies += stat[0] == "Z"
    return ticks, zombies


def children_cpu_seconds() -> float:
    """CPU time of this process's children that have exited and been waited for (a tool run with
    subprocess, and the processes it waited for in turn: the copier's workers, pg_dump and psql)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
