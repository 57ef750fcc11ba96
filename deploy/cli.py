"""The top of setup_aws.py, teardown_aws.py and operations.py: their exit codes and one error
boundary. Every failure a user can act on is one line on stderr saying what to do, and exit 1;
only a bug in the code shows a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from botocore.exceptions import BotoCoreError, ClientError

import runlog
from deploy.aws import AwsError, describe_error
from deploy.plan import SourceError
from deploy.settings import SettingsError

EXIT_DONE, EXIT_ERROR, EXIT_CHANGES_PENDING, EXIT_INTERRUPTED = 0, 1, 2, 130


def exit_codes(dry_run: bool) -> str:
    """The exit codes, for a script's --help."""
    lines = ["exit status:",
             f"  {EXIT_DONE}    done" + (" (with --dry-run: nothing would change)" if dry_run else ""),
             f"  {EXIT_ERROR}    an error, explained in one line on stderr: settings, usage,",
             "       AWS (credentials, region, network, an API error), the source database"]
    if dry_run:
        lines.append(f"  {EXIT_CHANGES_PENDING}    with --dry-run: changes are pending "
                     "(terraform plan -detailed-exitcode)")
    lines.append(f"  {EXIT_INTERRUPTED}  interrupted (Ctrl-C): run it again to finish")
    return "\n".join(lines)


class Parser(argparse.ArgumentParser):
    """argparse with a usage error as one line and exit 1: exit 2 means "changes pending"."""

    def error(self, message: str):
        self.exit(EXIT_ERROR, f"error: {message} (see {self.prog} --help)\n")


# What a user can act on; anything else is a bug and keeps its traceback.
EXPECTED_FAILURES = (SettingsError, AwsError, ClientError, BotoCoreError, SourceError,
                     runlog.CopierError)


def failure_line(err: BaseException) -> str:
    """One line: what failed and what to do about it."""
    text = describe_error(err) if isinstance(err, ClientError | BotoCoreError) else str(err)
    return " ".join(text.split()) or type(err).__name__


def run_guarded(body: Callable[[], int],
                also: tuple[type[Exception], ...] = ()) -> int:
    """Run a script's body inside the error boundary (the expected failures, and the script's
    own in `also`); return its exit code."""
    try:
        return body()
    except (*EXPECTED_FAILURES, *also) as err:
        print(f"error: {failure_line(err)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted: run the command again to finish (each step checks what is there)",
              file=sys.stderr)
        return EXIT_INTERRUPTED
