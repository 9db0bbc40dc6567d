#!/usr/bin/env bash
# Runs every test: Rust unit and integration tests (real sockets, mock upstreams), then the
# end-to-end tests that drive the gateway with the official `openai` Python SDK.
#
# One debug build serves both: `cargo test` builds target/debug/switchyard for the integration
# tests, and the Python tests run that same binary.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --all-targets

venv=.venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/e2e/requirements.txt

# The deployment files against the Compose and Kubernetes schemas.
bash deploy/check.sh "$PWD/$venv/bin"

# The real small model (tests/small_model.sh installs it), for the hybrid stage's real-model test.
small=${SWITCHYARD_SMALL_MODEL_DIR:-$HOME/.cache/switchyard/small-model}
if [ -x "$small/venv/bin/python" ] && [ -f "$small/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
  export SWITCHYARD_LLAMA_PYTHON="$small/venv/bin/python"
  export SWITCHYARD_SMALL_MODEL="$small/SmolLM2-135M-Instruct.Q4_1.gguf"
fi

SWITCHYARD_BIN=target/debug/switchyard PYTHONDONTWRITEBYTECODE=1 \
  "$venv/bin/python" -m pytest -p no:cacheprovider -q -rs tests/e2e
