#!/usr/bin/env bash
# Runs the whole test suite (unit, integration, browser), installing what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --browser
exec python3 -m pytest -q -ra "$@"
