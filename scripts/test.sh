#!/usr/bin/env bash
# Runs the whole test suite (unit, integration, browser), installing what it needs first,
# in the project's .venv (or the active virtual environment; see scripts/python-env.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --browser
# shellcheck source=scripts/python-env.sh
source scripts/python-env.sh
# Lint first (seconds): the layer contracts (import-linter) and ruff's bug-finding rules.
echo "checking the import contracts (lint-imports) and ruff"
"$PY" -c "from importlinter.cli import lint_imports_command; lint_imports_command(['--no-cache'])"
"$PY" -m ruff check .
# Two test processes (pytest-xdist), one test file each at a time (--dist loadfile keeps a file's module
# cluster in one process): most of the suite waits on real servers, so two files overlap their waits.
# 760 s instead of 1317 s on the 2-core machine. ELDRIC_TEST_PROCESSES=0 runs everything in this process.
exec "$PY" -m pytest -q -ra -n "${ELDRIC_TEST_PROCESSES:-2}" --dist loadfile "$@"
