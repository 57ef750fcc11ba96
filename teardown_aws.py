"""Remove what setup_aws.py created, newest first; safe to run twice.

    python teardown_aws.py --config deploy.toml --dry-run        # what would be removed
    python teardown_aws.py --config deploy.toml                  # remove; keep the secrets
    python teardown_aws.py --config deploy.toml --remove-secrets # remove the secrets too
    python teardown_aws.py --config deploy.toml --remove-images  # and an ECR repository with images

Only resources named after the prefix and tagged project=<prefix> are removed, for either
runner; the EventBridge rules Step Functions manages for .sync tasks and the account's Batch
service-linked role are never touched.
"""

from __future__ import annotations

import argparse
import sys

from deploy import (
    Aws,
    AwsError,
    Deployment,
    Options,
    SettingsError,
    add_settings_arguments,
    load_settings,
    teardown,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_settings_arguments(parser, ["prefix", "region"])
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would be removed; change nothing")
    parser.add_argument("--remove-secrets", action="store_true",
                        help="also delete the passwords and the webhook URL in Parameter Store")
    parser.add_argument("--remove-images", action="store_true",
                        help="also delete the ECR repository when it holds images")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args)
        settings.validate()
        aws = Aws(settings.region)
        print(f"{'dry run: ' if args.dry_run else ''}prefix {settings.prefix}, "
              f"account {aws.account}, region {aws.region}")
        options = Options(dry_run=args.dry_run, remove_secrets=args.remove_secrets,
                          remove_images=args.remove_images)
        teardown(Deployment(settings, aws, options))
    except (SettingsError, AwsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
