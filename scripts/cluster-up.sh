#!/usr/bin/env bash
# Brings up a single-machine cluster from a fresh clone: Redis, the controller,
# the registry, two inference workers, a cloud, a data and a science worker, beat and
# Flower (Procfile), in the project's .venv. Settings: deploy/local.env gives defaults;
# a variable already set in the environment wins over it.
set -euo pipefail
cd "$(dirname "$0")/.."
ELDRIC_SKIP_LLAMA_CPP=1 bash scripts/install-deps.sh  # the llama.cpp build is only for a test
# shellcheck source=scripts/python-env.sh
source scripts/python-env.sh
mkdir -p .eldric

# deploy/local.env as defaults only (honcho's -e would override the environment).
while IFS= read -r line || [[ -n "$line" ]]; do
  [[ -z "$line" || "$line" == \#* ]] && continue
  key="${line%%=*}"
  if [[ -z "${!key+set}" ]]; then export "$line"; fi
done < deploy/local.env

# Once everything answers, one summary (in the background: honcho owns the foreground).
workers=$(grep -c " eldric worker " Procfile)
eldric status --wait 180 --expect-workers "$workers" --flower http://127.0.0.1:5555 --upstream "$ELDRIC_OLLAMA_REGISTRY" &
exec honcho -e /dev/null start "$@"
