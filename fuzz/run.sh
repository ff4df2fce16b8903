#!/usr/bin/env bash
# Fuzzes the MQTT decoder, or with TARGET=broker the broker's packet handling (stateful
# scripts, see crates/broker/src/fuzz.rs). Usage: [TARGET=broker] fuzz/run.sh [SECONDS]
# (default 300)
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-300}"
target="${TARGET:-decode}"
mkdir -p "corpus/$target"
cargo +nightly fuzz run "$target" "corpus/$target" -- -max_total_time="$secs" -max_len=4096 \
  -rss_limit_mb=2048 -print_final_stats=1
