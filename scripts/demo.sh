#!/usr/bin/env bash
# Install everything (the "all" extras), then run the main job: index Python's own docstrings with the
# bundled model and answer example queries in every retrieval mode. Extra arguments go to `flagstone demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" exec .venv/bin/flagstone demo "$@"
