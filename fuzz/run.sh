#!/usr/bin/env bash
# Fuzzes the MQTT decoder. Usage: fuzz/run.sh [SECONDS]   (default 300)
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-300}"
mkdir -p corpus/decode
cargo +nightly fuzz run decode corpus/decode -- -max_total_time="$secs" -max_len=4096 \
  -rss_limit_mb=2048 -print_final_stats=1
