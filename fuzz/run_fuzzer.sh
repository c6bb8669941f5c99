#!/usr/bin/env bash
# run_fuzzer.sh BINARY SEED_CORPUS WORK_DIR SECONDS
# Runs one libFuzzer target for SECONDS over its seed corpus (read only) plus WORK_DIR/corpus
# (what it finds). A crash, leak, sanitizer report or failed property exits non-zero and leaves
# the input in WORK_DIR as crash-*/leak-*/timeout-*: copy it into the seed corpus with the fix.
set -euo pipefail
binary=$1 seeds=$2 work=$3 seconds=$4
mkdir -p "$work/corpus"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
exec "$binary" -max_total_time="$seconds" -timeout=25 -rss_limit_mb=2560 -max_len=65536 \
  -print_final_stats=1 -artifact_prefix="$work/" "$work/corpus" "$seeds"
