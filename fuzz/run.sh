#!/usr/bin/env bash
# Runs every fuzz target for a bounded time with cargo fuzz (libFuzzer; needs a nightly
# toolchain, which cargo fuzz asks for by `+nightly`).
#
#   bash fuzz/run.sh            # 120 s per target
#   SECONDS_EACH=600 bash fuzz/run.sh
#   bash fuzz/run.sh sse        # one target
#
# A crash is written to fuzz/artifacts/<target>/. Once fixed, copy the input to
# fuzz/regressions/<target>/: `cargo test --test fuzz_regressions` replays it from then on.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SECONDS_EACH=${SECONDS_EACH:-120}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
targets=("$@")
((${#targets[@]})) || targets=(request cache_key sse ollama config)
status=0
mkdir -p fuzz/logs
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  echo "== $t: ${SECONDS_EACH}s (log: fuzz/logs/$t.log)"
  if ! cargo +nightly fuzz run "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
      -max_total_time="$SECONDS_EACH" -max_len=65536 -timeout=10 -rss_limit_mb=4096 \
      -print_final_stats=1 >"fuzz/logs/$t.log" 2>&1; then
    echo "   FAILED: see fuzz/logs/$t.log and fuzz/artifacts/$t/"
    status=1
  fi
  grep -E "^Done [0-9]+ runs|^stat::(number_of_executed_units|peak_rss_mb|new_units_added)" "fuzz/logs/$t.log" | sed 's/^/   /' || true
done
exit $status
