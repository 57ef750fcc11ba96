"""copier.py with a real outage at a chosen moment: for tests/test_copier_outages.py.

    OUTAGE='{"at": "load"|"swap", "seconds": 30, "cluster": {...}}' python tests/outage_hook.py ARGS

The first time the copier reaches that moment (a progress report mid-load, or the start of a
swap), the given cluster is stopped with pg_ctl (its backends are terminated, the open
transaction dies with them) and started again `seconds` later, while the copy goes on.
"""

import json
import os
import sys
import threading
from pathlib import Path

import copier
import runlog
from dev.localpg import LocalCluster

HOOKED = {"load": "report_progress", "swap": "replace_table"}


def main() -> int:
    spec = json.loads(os.environ["OUTAGE"])
    c = spec["cluster"]
    cluster = LocalCluster(Path(c["datadir"]), c["port"], c["os_user"], Path(c["bindir"]))
    original = getattr(copier, HOOKED[spec["at"]])
    fired = threading.Lock()

    def hooked(*args):
        if fired.acquire(blocking=False):
            cluster.stop()
            copier.log_event(runlog.Event("test_outage", "the test stopped a cluster", {}),
                             at=spec["at"], seconds=spec["seconds"])
            threading.Timer(spec["seconds"], cluster.start).start()
        return original(*args)

    setattr(copier, HOOKED[spec["at"]], hooked)
    return copier.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
