"""Create or update everything that runs the nightly copy on AWS; run it again to change nothing.

    python setup_aws.py --config deploy.toml             # create / update, resource by resource
    python setup_aws.py --config deploy.toml --dry-run   # print the plan, change nothing
    python setup_aws.py --config deploy.toml --start --date 2026-11-27   # start one run by hand

Secrets come from COPIER_SOURCE_PASSWORD, COPIER_TARGET_PASSWORD and SLACK_WEBHOOK_URL, or
from a hidden prompt on a terminal. See docs/aws.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys

from deploy import (
    SETTING_FIELDS,
    Aws,
    AwsError,
    Deployment,
    Options,
    SettingsError,
    add_settings_arguments,
    load_settings,
    plan_jobs,
    setup,
    start_run,
)


def parse_date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-11-27") from err


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Settings: a TOML file (see deploy.example.toml); flags override it.")
    add_settings_arguments(parser, SETTING_FIELDS)
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would be created or updated; change nothing")
    parser.add_argument("--overwrite-secrets", action="store_true",
                        help="replace existing secret parameters (passwords, webhook URL)")
    parser.add_argument("--start", action="store_true",
                        help="only start one run of the deployed state machine")
    parser.add_argument("--date", type=parse_date, default=None,
                        help="with --start: the date the run is for (default: today in the "
                             "schedule's time zone)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args)
        options = Options(dry_run=args.dry_run, overwrite_secrets=args.overwrite_secrets)
        if args.start:
            settings.validate_for_start()
            aws = Aws(settings.region)
            start_run(Deployment(settings, aws, options), args.date)
            return 0
        if args.date:
            raise SettingsError("--date goes with --start")
        settings.validate_for_setup()
        aws = Aws(settings.region)
        jobs = plan_jobs(settings, print, aws)  # keeps a rebalanced split (operations.py)
        print(f"{'dry run: ' if args.dry_run else ''}prefix {settings.prefix}, "
              f"account {aws.account}, region {aws.region}")
        setup(Deployment(settings, aws, options, jobs))
    except (SettingsError, AwsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
