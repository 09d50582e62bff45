#!/usr/bin/env bash
# Installs what Eldric needs on a Debian machine, only where missing: apt packages
# (redis-server, docker-registry, skopeo; chromium with --browser) and the Python package.
set -euo pipefail
cd "$(dirname "$0")/.."

want_browser=0
[[ "${1:-}" == "--browser" ]] && want_browser=1

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-sentinel >/dev/null || missing+=(redis-sentinel)
command -v docker-registry >/dev/null || missing+=(docker-registry)
command -v skopeo >/dev/null || missing+=(skopeo)  # an independent OCI client for the registry mirror's tests
command -v curl >/dev/null || missing+=(curl)
if (( want_browser )) && ! [ -x /usr/bin/chromium ]; then missing+=(chromium); fi
if (( ${#missing[@]} )); then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "installing apt packages: ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi

# shellcheck source=scripts/python-env.sh
source scripts/python-env.sh
# Always: pip is quick when everything is there, and a dependency added since the last
# install must not go missing (an import check of a few packages would not notice).
echo "installing the eldric Python package and its test dependencies"
"$PY" -m pip install -q -e ".[test]"

# llama-cpp-python lets a test load a distributed GGUF for real, and its server (the [server]
# extra) is the real llama.cpp server a pull's readiness check asks. It builds from
# source (8-11 min on 2 cores, then pip's wheel cache makes it instant); a failed
# build only makes that one test skip.
if [[ "${ELDRIC_SKIP_LLAMA_CPP:-0}" != 1 ]] && ! "$PY" -c "import llama_cpp.server.app" 2>/dev/null; then
  echo "building llama-cpp-python (optional, once: 8-11 minutes on 2 cores; ELDRIC_SKIP_LLAMA_CPP=1 skips it)"
  CMAKE_ARGS="-DGGML_NATIVE=OFF" "$PY" -m pip install -q "llama-cpp-python[server]==0.3.36" &
  build=$! started=$SECONDS
  next=30
  while kill -0 "$build" 2>/dev/null; do  # a heartbeat, so a long silent build does not look hung
    sleep 1
    if (( SECONDS - started >= next )); then echo "  still building llama-cpp-python: $((SECONDS - started)) s"; next=$((next + 30)); fi
  done
  wait "$build" || echo "llama-cpp-python did not build; the llama.cpp load test will skip"
fi

# The official `ollama` npm client for the front-end contract test (tests/js/, pinned by package-lock.json).
# `npm ci` only when node_modules was not installed from this very lock (its sha256 is kept beside it), so a
# second run (or an offline machine that has it already) does nothing; without node/npm that one test skips.
if command -v npm >/dev/null; then
  lock_sum=$(sha256sum tests/js/package-lock.json | cut -d' ' -f1)
  if [[ "$(cat tests/js/node_modules/.eldric-lock-sha256 2>/dev/null)" != "$lock_sum" ]]; then
    echo "installing the ollama npm client for tests/js (npm ci)"
    if (cd tests/js && npm ci --no-audit --no-fund --loglevel=error); then
      echo "$lock_sum" > tests/js/node_modules/.eldric-lock-sha256
    else
      echo "npm ci failed; the ollama-js test will skip"
    fi
  fi
else
  echo "node/npm not found: the ollama-js contract test will skip (apt-get install nodejs npm)"
fi
