# Sourced by scripts/run and scripts/test: make ./.venv with the project installed.
# $1: what to install, "." for the daemon or ".[test]" for the test suite too.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  if ! python3 -m venv .venv 2>/dev/null; then
    rm -rf .venv
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "python3 -m venv needs Debian's python3-venv; installing it." >&2
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv .venv
    else
      echo "python3 -m venv failed: install Debian's python3-venv (sudo apt-get install python3-venv)." >&2
      exit 1
    fi
  fi
fi
stamp=".venv/.installed-$(echo "$1" | tr -c 'a-z' '_')"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e "$1"
  touch "$stamp"
fi
