#!/usr/bin/env bash
# Gateway benchmarks over gRPC against the provider emulators:
#   (a) GetOperation throughput and latency, 64 callers           zero-latency emulators
#   (b) Generate-to-SUCCEEDED for 1,000 operations                 zero-latency emulators
#   (c) 10,000 WatchOperation streams on 1,000 live operations     Soundpiece jobs of $FANOUT_PROCESSING_MS
#   (d) Download of a ~200 MB asset                                 cached render in $build/bench-audio
# Each scenario gets a fresh scripts/sandbox.sh (gateway and emulators on free loopback ports,
# so RSS starts clean); results go to bench/results/<date>.json and bench/RESULTS.md is regenerated.
#
# Usage: bench/run_bench.sh [build-dir (build/release)] [scenario...]
#   scenarios: get generate fanout download (default: all, ~2 minutes once the audio is cached)
# The build dir needs musicgw loudly-emulator soundpiece-emulator grpc_load, from a Release build:
#   cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=Release -DMUSICGW_BUILD_BENCH=ON
#   cmake --build build/release -j2 --target musicgw loudly-emulator soundpiece-emulator grpc_load
set -euo pipefail
invocation="bench/run_bench.sh $*"
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
build="${1:-$repo/build/release}"
if [[ ! -d "$build" ]]; then
  echo "run_bench: no build directory $build (see the usage above for the build commands)" >&2
  exit 1
fi
build="$(cd "$build" && pwd)"
shift || true
scenarios=("$@")
[[ ${#scenarios[@]} -gt 0 ]] || scenarios=(get generate fanout download)

GET_SECONDS="${GET_SECONDS:-10}"
GET_RUNS="${GET_RUNS:-3}"
GENERATE_OPS="${GENERATE_OPS:-1000}"
GENERATE_CONCURRENCY="${GENERATE_CONCURRENCY:-100}"
FANOUT_OPS="${FANOUT_OPS:-1000}"
FANOUT_WATCHERS="${FANOUT_WATCHERS:-10}"
FANOUT_PROCESSING_MS="${FANOUT_PROCESSING_MS:-30000}"
DOWNLOAD_SOURCE_SECONDS="${DOWNLOAD_SOURCE_SECONDS:-2840}"

for bin in services/gateway/musicgw emulators/loudly-emulator emulators/soundpiece-emulator \
  bench/grpc_load; do
  if [[ ! -x "$build/$bin" ]]; then
    echo "run_bench: $build/$bin is missing; build it first (bench tools need" \
      "-DMUSICGW_BUILD_BENCH=ON):" >&2
    echo "  cmake --build $build -j2 --target musicgw loudly-emulator soundpiece-emulator grpc_load" >&2
    exit 1
  fi
done

work="$(mktemp -d "${TMPDIR:-/tmp}/musicgw-bench.XXXXXX")"
audio_cache="$build/bench-audio"  # the 200 MB render survives between runs
mkdir -p "$audio_cache" "$here/results"
sandbox_dir=""
stop_stack() {
  if [[ -n "$sandbox_dir" ]]; then
    local pids
    pids=$(cat "$sandbox_dir"/*.pid 2>/dev/null || true)
    MUSICGW_SANDBOX_DIR="$sandbox_dir" "$repo/scripts/sandbox.sh" stop
    sandbox_dir=""
    # The next scenario starts on a quiet machine.
    for _ in $(seq 1 100); do
      # shellcheck disable=SC2086
      kill -0 $pids 2>/dev/null || break
      sleep 0.1
    done
  fi
}
trap 'stop_stack; rm -rf "$work"' EXIT

# start_stack NAME SOUNDPIECE_PROCESSING_MS: scripts/sandbox.sh with zero-latency emulators
# (except Soundpiece's processing time where the scenario needs live operations) and limits out of
# the way, in a fresh directory so every scenario starts with a new gateway and ledger. Sets
# GW_PID, SP_URL, METRICS_URL, TARGET and exports MUSICGW_API_KEY.
start_stack() {
  stop_stack
  sandbox_dir="$work/$1"
  MUSICGW_BUILD_DIR="$build" MUSICGW_SANDBOX_DIR="$sandbox_dir" \
    MUSICGW_SANDBOX_CREDITS=100000000 MUSICGW_SANDBOX_SAMPLE_BUDGET=100000000 \
    MUSICGW_SANDBOX_LOUDLY_FLAGS="--song_delay_ms=0 --sync_latency_ms=0 --threads=512" \
    MUSICGW_SANDBOX_SOUNDPIECE_FLAGS="--processing_ms=$2 --rate_limit_per_second=1000000
      --rate_limit_burst=1000000 --threads=2500 --max_source_seconds=3600
      --data_dir=$audio_cache/soundpiece" \
    "$repo/scripts/sandbox.sh" start >&2
  # shellcheck disable=SC1091
  source "$sandbox_dir/sandbox.env"
  export MUSICGW_API_KEY
  GW_PID=$(cat "$sandbox_dir/musicgw.pid")
  SP_URL="$SOUNDPIECE_EMULATOR_URL"
  METRICS_URL="$MUSICGW_METRICS_URL"
  TARGET="$MUSICGW_TARGET"
}

# Upstream request counters: the Soundpiece emulator's own stats and the gateway's metrics.
upstream_snapshot() {
  python3 - "$SP_URL/_emulator/stats" "$METRICS_URL" <<'PY'
import json, sys, urllib.request
stats = json.load(urllib.request.urlopen(sys.argv[1]))
total = 0.0
for line in urllib.request.urlopen(sys.argv[2]).read().decode().splitlines():
    if line.startswith("musicgw_upstream_requests_total{"):
        total += float(line.rsplit(" ", 1)[1])
print(json.dumps({"emulator_puts": stats["puts"], "emulator_gets": stats["gets"],
                  "emulator_long_polls": stats["polls"],
                  "emulator_webhooks": stats["webhook_attempts"],
                  "gateway_upstream_requests": total}))
PY
}

machine_json() {
  python3 - "$build" "$repo" <<'PY'
import json, os, platform, re, subprocess, sys
build, repo = sys.argv[1], sys.argv[2]
cpu = ""
for line in open("/proc/cpuinfo"):
    if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip(); break
build_type = ""
try:
    for line in open(os.path.join(build, "CMakeCache.txt")):
        if line.startswith("CMAKE_BUILD_TYPE:"):
            build_type = line.split("=", 1)[1].strip()
except OSError:
    pass
commit = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"],
                        capture_output=True, text=True).stdout.strip()
dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                       capture_output=True, text=True).stdout.strip() != ""
mem = 0
for line in open("/proc/meminfo"):
    if line.startswith("MemTotal:"):
        mem = int(line.split()[1]) // 1024
print(json.dumps({"nproc": os.cpu_count(), "cpu_model": cpu, "kernel": platform.release(),
                  "mem_total_mb": mem, "build_type": build_type,
                  "git_commit": commit + ("-dirty" if dirty else ""),
                  "load_avg_1m": os.getloadavg()[0]}))
PY
}

results="$work/results.jsonl"
# record SCENARIO COMMAND-STRING TOOL-JSON [EXTRA-JSON]: one object per scenario.
record() {
  python3 - "$1" "$2" "$3" "${4:-}" "$(machine_json)" "$invocation" >>"$results" <<'PY'
import json, sys
scenario, command, tool, extra, machine, invocation = sys.argv[1:7]
out = {"scenario": scenario, "command": command, "script": invocation,
       "machine": json.loads(machine)}
out.update(json.loads(extra or "{}"))
out["result"] = json.loads(tool)
print(json.dumps(out))
PY
}

# run_scenario NAME SOUNDPIECE_PROCESSING_MS GRPC_LOAD_ARGS...: a fresh stack, the upstream
# counters around the run, one recorded object.
run_scenario() {
  local name="$1" processing_ms="$2"
  shift 2
  start_stack "$name" "$processing_ms"
  local args=(--target="$TARGET" "$@" --pid="$GW_PID") before after out
  echo "run_bench: $name: grpc_load ${args[*]}" >&2
  before=$(upstream_snapshot)
  out=$("$build/bench/grpc_load" "${args[@]}" | tee /dev/stderr)
  after=$(upstream_snapshot)
  record "$name" "grpc_load ${args[*]}" "$out" \
    "{\"upstream_before\": $before, \"upstream_after\": $after}"
  stop_stack
}

for scenario in "${scenarios[@]}"; do
  case "$scenario" in
    get)
      # Short and CPU-bound: repeated, the table shows the median run and the range.
      for _ in $(seq 1 "$GET_RUNS"); do
        run_scenario get 0 --mode=get --task=sample --concurrency=64 --duration_s="$GET_SECONDS" \
          --warmup_s=2
      done
      ;;
    generate)
      run_scenario generate 0 --mode=generate --task=sample --ops="$GENERATE_OPS" \
        --concurrency="$GENERATE_CONCURRENCY"
      ;;
    fanout)
      run_scenario fanout "$FANOUT_PROCESSING_MS" --mode=watch_fanout --task=sample \
        --ops="$FANOUT_OPS" --watchers_per_op="$FANOUT_WATCHERS" --concurrency=64 --channels=10 \
        --processing_ms="$FANOUT_PROCESSING_MS" --rss_interval_ms=50
      ;;
    download)
      run_scenario download 0 --mode=download --source_seconds="$DOWNLOAD_SOURCE_SECONDS" \
        --repeat=4 --rss_interval_ms=10
      ;;
    *)
      echo "run_bench: unknown scenario $scenario (get generate fanout download)" >&2
      exit 2
      ;;
  esac
done

json_out="$here/results/$(date -u +%Y%m%d).json"
python3 "$here/results_table.py" --merge "$results" "$json_out" --markdown "$here/RESULTS.md"
echo "run_bench: results in $json_out; table in $here/RESULTS.md" >&2
