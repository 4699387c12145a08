#!/usr/bin/env bash
# Install everything with the test extras, then run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
HF_HUB_OFFLINE=1 exec .venv/bin/python -m pytest -q "$@"
