#!/usr/bin/env bash
# Runs the whole test suite (unit, integration, browser), installing what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --browser
# Lint first (seconds): the layer contracts (import-linter) and ruff's bug-finding rules.
echo "checking the import contracts (lint-imports) and ruff"
python3 -c "from importlinter.cli import lint_imports_command; lint_imports_command(['--no-cache'])"
python3 -m ruff check .
exec python3 -m pytest -q -ra "$@"
