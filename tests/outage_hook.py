"""copier.py with a real outage at a chosen moment: for tests/test_copier_outages.py.

    OUTAGE='{"at": "load"|"swap", "seconds": 30, "cluster": {...}}' python tests/outage_hook.py ARGS

The first time the copier reaches that moment (a progress line mid-load, or the start of a
swap: copier.MOMENTS "loading", "swapping"), the given cluster is stopped with pg_ctl (its
backends are terminated, the open transaction dies with them) and started again `seconds`
later, while the copy goes on.
"""

import json
import os
import sys
import threading
from pathlib import Path

import copier
import runlog
from dev.localpg import LocalCluster

MOMENT = {"load": "loading", "swap": "swapping"}


def main() -> int:
    spec = json.loads(os.environ["OUTAGE"])
    c = spec["cluster"]
    cluster = LocalCluster(Path(c["datadir"]), c["port"], c["os_user"], Path(c["bindir"]))
    fired = threading.Lock()

    def outage(**context) -> None:
        if fired.acquire(blocking=False):
            cluster.stop()
            copier.log_event(runlog.Event("test_outage", "the test stopped a cluster", {}),
                             at=spec["at"], seconds=spec["seconds"])
            threading.Timer(spec["seconds"], cluster.start).start()

    copier.LISTENERS[MOMENT[spec["at"]]] = [outage]
    return copier.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
