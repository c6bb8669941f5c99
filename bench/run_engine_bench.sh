#!/usr/bin/env bash
# Runs the engine-level benchmarks and appends one JSON line per scenario to
# bench/results/engine-<date>.jsonl. Usage: bench/run_engine_bench.sh [build-dir]
set -euo pipefail
build="${1:-build}"
here="$(cd "$(dirname "$0")" && pwd)"
bin="$build/bench/engine_bench"
if [[ ! -x "$bin" ]]; then
  echo "build it first: cmake --build $build --target engine_bench" >&2
  exit 1
fi
mkdir -p "$here/results"
out="$here/results/engine-$(date -u +%Y%m%d).jsonl"
ledger_dir="$(mktemp -d)"
trap 'rm -rf "$ledger_dir"' EXIT
run() { "$bin" "$@" --ledger="$ledger_dir/ledger.db" | tee -a "$out"; }
run generate --ops=2000 --concurrency=16 --sync=full
run generate --ops=2000 --concurrency=16 --sync=normal
run generate --ops=2000 --concurrency=1 --sync=full
run watchers --watchers=10000
run counts --ops=200000 --days=30
echo "recorded in $out" >&2
