#!/usr/bin/env bash
# Installs what a fresh machine lacks: PostgreSQL server binaries (Debian packages) when no
# initdb is found, and the pinned Python packages. Safe to run again: it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  echo "installing the PostgreSQL server packages" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-client >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check -r requirements-dev.txt
