"""Remove what setup_aws.py created, newest first; safe to run twice.

    python teardown_aws.py --config deploy.toml --dry-run        # what would be removed
    python teardown_aws.py --config deploy.toml --dry-run --json # the same, a JSON object a line
    python teardown_aws.py --config deploy.toml                  # remove; keep the secrets
    python teardown_aws.py --config deploy.toml --remove-secrets # remove the secrets too
    python teardown_aws.py --config deploy.toml --remove-images  # and an ECR repository with images

Only resources named after the prefix and tagged project=<prefix> are removed, for either
runner; the EventBridge rules Step Functions manages for .sync tasks and the account's Batch
service-linked role are never touched.
"""

from __future__ import annotations

import argparse
import json
import sys

from deploy import (
    Aws,
    Deployment,
    Options,
    add_settings_arguments,
    changes_pending,
    load_settings,
    teardown,
)
from deploy.cli import EXIT_CHANGES_PENDING, EXIT_DONE, Parser, exit_codes, run_guarded


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(description=__doc__.splitlines()[0],
                    formatter_class=argparse.RawDescriptionHelpFormatter,
                    epilog="\n".join(__doc__.splitlines()[2:7]) + "\n\n"
                    + exit_codes(dry_run=True))
    add_settings_arguments(parser, ["prefix", "region"])
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would be removed; change nothing; exit 2 when "
                             "something would be removed, 0 when nothing would")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object a line on stdout per resource (name, kind, "
                             "status, changed, detail, dry_run); the rest goes to stderr")
    parser.add_argument("--remove-secrets", action="store_true",
                        help="also delete the passwords, the webhook URL and the rules' hash "
                             "salt in Parameter Store")
    parser.add_argument("--remove-images", action="store_true",
                        help="also delete the ECR repository when it holds images")
    return parser


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    settings.validate()
    aws = Aws(settings.region)
    say = (lambda line: print(line, file=sys.stderr)) if args.json else print
    say(f"{'dry run: ' if args.dry_run else ''}prefix {settings.prefix}, "
        f"account {aws.account}, region {aws.region}")
    options = Options(dry_run=args.dry_run, remove_secrets=args.remove_secrets,
                      remove_images=args.remove_images)
    report = (lambda outcome: print(json.dumps(outcome.as_json(args.dry_run)), flush=True)
              ) if args.json else None
    outcomes = teardown(Deployment(settings, aws, options), say, report)
    return EXIT_CHANGES_PENDING if args.dry_run and changes_pending(outcomes) else EXIT_DONE


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
