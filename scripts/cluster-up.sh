#!/usr/bin/env bash
# Brings up a single-machine cluster from a fresh clone: Redis, the controller,
# the registry, two inference workers, a cloud, a data and a science worker (Procfile).
set -euo pipefail
cd "$(dirname "$0")/.."
ELDRIC_SKIP_LLAMA_CPP=1 bash scripts/install-deps.sh  # the llama.cpp build is only for a test
mkdir -p .eldric
exec honcho -e deploy/local.env start "$@"
