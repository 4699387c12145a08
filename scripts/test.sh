#!/usr/bin/env bash
# Install everything with the test extras (the "all" extras plus the test tools), then run the test suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
# the search-page test drives Debian's chromium through Playwright; without it that test skips
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "Installing chromium (Debian) for the browser test..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q chromium >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } \
    || echo "chromium could not be installed: the browser test will be skipped" >&2
fi
export HF_HUB_OFFLINE=1
# two pytest-xdist workers, each file on one worker (module fixtures and the README's ordered commands stay
# together); the workers compute on one thread each (tests/conftest.py). 10 min instead of 20 on 2 cores.
exec .venv/bin/python -m pytest -q -n 2 --dist loadfile "$@"
