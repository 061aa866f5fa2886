#!/usr/bin/env bash
# Installs everything the tests need (venv, Python extras, Debian's prometheus) and runs every check.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]' --config-settings editable_mode=compat
if ! command -v prometheus >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get install -y -q prometheus >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q prometheus >/dev/null; }) \
    || echo "warning: could not install Debian's prometheus package"
fi
.venv/bin/lint-imports  # the contracts in ./pyproject.toml
.venv/bin/ruff check .
.venv/bin/mypy
# one worker per core: most of the suite's wall time is tests waiting out real timeouts and servers
.venv/bin/python -m pytest -n auto "$@"
