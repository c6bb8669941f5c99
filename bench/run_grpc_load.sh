#!/usr/bin/env bash
# Drives a running gateway (e.g. the sandbox on the emulators) with grpc_load.
# Usage: MUSICGW_API_KEY=... bench/run_grpc_load.sh [build-dir] [target]
set -euo pipefail
build="${1:-build}"
target="${2:-127.0.0.1:50051}"
here="$(cd "$(dirname "$0")" && pwd)"
: "${MUSICGW_API_KEY:?set MUSICGW_API_KEY to a tenant key of the gateway}"
bin="$build/bench/grpc_load"
mkdir -p "$here/results"
out="$here/results/grpc-$(date -u +%Y%m%d).jsonl"
"$bin" --target="$target" --ops=500 --concurrency=50 | tee -a "$out"
"$bin" --target="$target" --ops=500 --concurrency=50 --wait | tee -a "$out"
# Fan-out: many watchers per operation must not multiply upstream calls (compare the
# gateway's musicgw_upstream metrics before and after).
"$bin" --target="$target" --ops=20 --concurrency=20 --watchers_per_op=100 | tee -a "$out"
echo "recorded in $out" >&2
