"""A hung test's stacks where CI shows them when the tests run in xdist workers (a plugin:
tests/conftest.py loads it, as does the test of the timeout in tests/test_fresh_machine.py)."""

import faulthandler
import os
import sys
import threading

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item, settings):
    """pytest-timeout's thread method writes the hung test's stacks to stdout, which in an
    xdist worker is /dev/null (execnet's channel took it): this timer writes the same dump to
    stderr, which the worker shares with the run, then ends the worker as that method does
    (--max-worker-restart 0 then stops the run)."""
    if not hasattr(item.config, "workerinput") or settings.method != "thread":
        return None

    def hung():
        item.config.pluginmanager.getplugin("capturemanager").suspend_global_capture(item)
        sys.stderr.write(f"\n+++ Timeout ({settings.timeout:g}s): {item.nodeid} +++\n")
        sys.stderr.flush()
        faulthandler.dump_traceback(sys.stderr)  # every thread's stack
        os._exit(1)

    timer = threading.Timer(settings.timeout, hung)
    timer.daemon = True
    timer.start()
    item.cancel_timeout = timer.cancel
    return True
