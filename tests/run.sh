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
SWITCHYARD_BIN=target/debug/switchyard PYTHONDONTWRITEBYTECODE=1 \
  "$venv/bin/python" -m pytest -p no:cacheprovider -q tests/e2e
