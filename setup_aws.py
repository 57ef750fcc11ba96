"""Create or update everything that runs the nightly copy on AWS; run it again to change nothing.

    python setup_aws.py --config deploy.toml             # create / update, resource by resource
    python setup_aws.py --config deploy.toml --dry-run   # print the plan, change nothing
    python setup_aws.py --config deploy.toml --dry-run --json   # the plan, a JSON object a line
    python setup_aws.py --config deploy.toml --start --date 2026-11-27   # start one run by hand

Secrets come from COPIER_SOURCE_PASSWORD, COPIER_TARGET_PASSWORD and SLACK_WEBHOOK_URL (and,
with a rules_file that hashes, COPIER_HASH_SALT), or from a hidden prompt on a terminal. See
docs/aws.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys

from deploy import (
    SETTING_FIELDS,
    Aws,
    Deployment,
    Options,
    SettingsError,
    add_settings_arguments,
    changes_pending,
    load_settings,
    plan_jobs,
    read_rules_file,
    setup,
    start_run,
    warn_on_stderr,
)
from deploy.cli import EXIT_CHANGES_PENDING, EXIT_DONE, Parser, exit_codes, run_guarded


def parse_date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-11-27") from err


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Settings: a TOML file (see deploy.example.toml); flags override it.\n\n"
               + "\n".join(__doc__.splitlines()[2:6]) + "\n\n" + exit_codes(dry_run=True))
    add_settings_arguments(parser, SETTING_FIELDS)
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would be created or updated; change nothing; exit 2 "
                             "when something would change, 0 when nothing would")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object a line on stdout per resource (name, kind, "
                             "status, changed, detail, dry_run); the rest goes to stderr")
    parser.add_argument("--overwrite-secrets", action="store_true",
                        help="replace existing secret parameters (passwords, webhook URL, the "
                             "rules' hash salt: every hashed value then changes)")
    parser.add_argument("--start", action="store_true",
                        help="only start one run of the deployed state machine")
    parser.add_argument("--date", type=parse_date, default=None,
                        help="with --start: the date the run is for (default: today in the "
                             "schedule's time zone)")
    return parser


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    options = Options(dry_run=args.dry_run, overwrite_secrets=args.overwrite_secrets)
    if args.start:
        if args.dry_run or args.json:
            raise SettingsError("--start goes without --dry-run and --json")
        settings.validate_for_start()
        aws = Aws(settings.region)
        start_run(Deployment(settings, aws, options), args.date)
        return EXIT_DONE
    if args.date:
        raise SettingsError("--date goes with --start")
    settings.validate_for_setup()
    rules = read_rules_file(settings)  # its form, before the first AWS call
    aws = Aws(settings.region)
    # With --json, stdout holds the resources' objects only; people's lines go to stderr.
    say = (lambda line: print(line, file=sys.stderr)) if args.json else print
    notes: list[str] = []  # said at the end: a failure stays one line
    # keeps a rebalanced split (operations.py); checks the rules on a reachable source
    jobs = plan_jobs(settings, say, aws, rules, notes.append)
    say(f"{'dry run: ' if args.dry_run else ''}prefix {settings.prefix}, "
        f"account {aws.account}, region {aws.region}")
    report = (lambda outcome: print(json.dumps(outcome.as_json(args.dry_run)), flush=True)
              ) if args.json else None
    outcomes = setup(Deployment(settings, aws, options, jobs, rules), say, report)
    for note in notes:
        warn_on_stderr(note)
    return EXIT_CHANGES_PENDING if args.dry_run and changes_pending(outcomes) else EXIT_DONE


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
