# Sourced by the scripts: choose the Python they install into and run with.
# An active virtual environment is used as it is; otherwise the project's own `.venv`
# (created on first use). It sees the system's site-packages, so what the machine already
# has (including a built llama-cpp-python) is reused, while this checkout's editable
# install lives in .venv and never re-points another checkout's.
if [[ -n "${VIRTUAL_ENV:-}" ]]; then
  PY="${VIRTUAL_ENV}/bin/python"
else
  if [[ ! -x .venv/bin/python ]]; then
    echo "creating the project's virtual environment .venv (python3 -m venv --system-site-packages)"
    "${PYTHON:-python3}" -m venv --system-site-packages .venv
  fi
  PY="$PWD/.venv/bin/python"
  export VIRTUAL_ENV="$PWD/.venv"
  export PATH="$PWD/.venv/bin:$PATH"
fi
export PY
