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
exec "$PY" -m pytest -q -ra "$@"
