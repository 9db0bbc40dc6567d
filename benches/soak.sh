#!/usr/bin/env bash
# The soak run: 10 minutes of mixed load through the release gateway while faults are injected
# into its mock upstreams; see benches/soak/run.py for what it sends, what it breaks and what it
# checks. Prints a Markdown table; exits 1 when a check fails.
#
#   bash benches/soak.sh
#
# Environment:
#   DURATION      seconds of load (default 600)
#   CONCURRENCY   clients at once (default 32)
#   PYTHON        the Python to run it with (default: python3; it needs nothing beyond the standard library)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-python3}

cargo build --release --quiet
ulimit -n 4096 2>/dev/null || true
exec "$PYTHON" benches/soak/run.py --bin target/release/switchyard \
  --duration "${DURATION:-600}" --concurrency "${CONCURRENCY:-32}"
