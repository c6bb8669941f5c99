#!/usr/bin/env bash
# Gateway benchmarks over gRPC against the provider emulators:
#   (a) GetOperation throughput and latency, 64 callers           zero-latency emulators
#   (b) Generate-to-SUCCEEDED for 1,000 operations                 zero-latency emulators
#       (with the gateway's fsync/fdatasync calls and CPU time over the run, from perf stat)
#   (c) 10,000 WatchOperation streams on 1,000 live operations     Soundpiece jobs of $FANOUT_PROCESSING_MS
#   (d) Download of a ~200 MB asset                                 cached render in $build/bench-audio
#   fanout100k  100,000 WatchOperation streams on 1,000 live operations, held $FANOUT100K_PROCESSING_MS
#             (default 600000: 10 minutes): every terminal event delivered, gateway RSS < 1 GB,
#             fan-out p99 < 250 ms from done_time, completions slipping < 100 ms past the plan
#   floor_watch the same streams against the floor (floor_server --watch_hold_ms: a snapshot, then
#             the done operation $FLOOR_WATCH_HOLD_MS later): what holding them costs gRPC itself
# and, side by side with the limits the gateway can approach (interleaved A B A B ..., $PAIRS pairs,
# ratios per pair, their median and range):
#   floor     GetOperation, 64 callers, gateway vs the floor (bench/floor_server.cc: a minimal
#             callback server answering the same Operation bytes): calls/s and server CPU per call
#   single    Generate-to-SUCCEEDED at concurrency 1 ($SINGLE_OPS sample operations, zero-latency
#             emulators), vs the same job sent straight to the Soundpiece emulator
#             (bench/direct_generate.cc: PUT, then GET ?wait=true until ready; and the same plus a
#             GET of the output's bytes, which the gateway holds in custody before SUCCEEDED):
#             the milliseconds the gateway adds per operation (p50), and its fsyncs per operation
#   direct    Download of the same asset, served from custody, vs a direct read of the same bytes
#             (curl of the file from the Soundpiece emulator, where the gateway fetched it; a
#             local read of the custody file is recorded beside them): MB/s
#   flood     one tenant's GetOperation p99 (--concurrency=$FLOOD_VICTIM_CONCURRENCY) while another
#             tenant, a client process of its own (grpc_load --mode=flood), sends Generate at
#             $FLOOD_RATE/s, 10x its rate limit ($FLOOD_LIMIT/s), against the same reads
#             without the flood: the ratio of the p99s, interleaved (quiet, flood, quiet, ...)
#             (FLOOD_PROVIDER_NICE=idle, the default: the emulators under SCHED_IDLE, their CPU taken
#             as a remote provider's, which it is in production; =N: reniced to N; =0: as they are;
#             FLOOD_CLIENT_SCHED=idle, the default: the flooding tenant's client process (another
#             tenant's machine in production) under SCHED_IDLE too; =normal: as the reader;
#             FLOOD_GATEWAY_BACKGROUND_NICE=N: the gateway's operations.background_nice for the run;
#             FLOOD_READ_RATE=N: the reads open loop at N/s (default 2000), so they do not saturate
#             the machine themselves and each is timed from when it was due; 0: back to back;
#             FLOOD_RECORD=NAME: the results row (default flood); the flood taken apart:
#             FLOOD_RECORD=flood_refused FLOOD_LIMIT=1 FLOOD_RATE=500 (nearly every call refused)
#             and FLOOD_RECORD=flood_admitted FLOOD_RATE=50 (only what the limit admits))
#   callgrind instructions per GetOperation, gateway and floor each under valgrind's callgrind
#             (counters zeroed after a warm-up, dumped after $CALLGRIND_CALLS calls, minus an idle
#             dump of the same length); the gateway's inclusive profile goes to results/
#   replicas  (a), (b) and (c) on the single-node SQLite stack and on 2 gateway replicas sharing a
#             private PostgreSQL cluster (scripts/sandbox.sh start --postgres), interleaved:
#             per pair the ratio postgres/sqlite ($PAIRS pairs of (a), $REPLICA_GENERATE_PAIRS of
#             (b), $REPLICA_FANOUT_PAIRS of (c); $REPLICA_PARTS picks some of "get generate fanout")
# Each scenario gets a fresh scripts/sandbox.sh (gateway and emulators on free loopback ports,
# so RSS starts clean), its tenant limits lifted, its operation deadline past the planned
# processing and its watch heartbeats at $WATCH_HEARTBEAT_SECONDS (default 15, the gateway's own
# default; the sandbox's demo setting is 5); results go to bench/results/<date>.json and
# bench/RESULTS.md is regenerated.
#
# Usage: bench/run_bench.sh [build-dir (build/release)] [scenario...]
#   scenarios: get generate fanout download floor single direct flood callgrind replicas (default: all;
#   ~12 minutes once the audio is cached); fanout100k and floor_watch run only when named
# The build dir needs musicgw loudly-emulator soundpiece-emulator grpc_load floor_server, from a
# Release build:
#   cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=Release -DMUSICGW_BUILD_BENCH=ON
#   cmake --build build/release -j2 --target musicgw loudly-emulator soundpiece-emulator \
#     grpc_load floor_server direct_generate
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
[[ ${#scenarios[@]} -gt 0 ]] ||
  scenarios=(get generate fanout download floor single direct flood callgrind replicas)

GET_SECONDS="${GET_SECONDS:-10}"
GET_RUNS="${GET_RUNS:-3}"
GENERATE_OPS="${GENERATE_OPS:-1000}"
GENERATE_CONCURRENCY="${GENERATE_CONCURRENCY:-100}"
SINGLE_OPS="${SINGLE_OPS:-200}"
FANOUT_OPS="${FANOUT_OPS:-1000}"
FANOUT_WATCHERS="${FANOUT_WATCHERS:-10}"
FANOUT_PROCESSING_MS="${FANOUT_PROCESSING_MS:-30000}"
FANOUT100K_PROCESSING_MS="${FANOUT100K_PROCESSING_MS:-600000}"
FLOOR_WATCH_HOLD_MS="${FLOOR_WATCH_HOLD_MS:-90000}"
WATCH_HEARTBEAT_SECONDS="${WATCH_HEARTBEAT_SECONDS:-15}"
DOWNLOAD_SOURCE_SECONDS="${DOWNLOAD_SOURCE_SECONDS:-2840}"
PAIRS="${PAIRS:-5}"
FLOOD_LIMIT="${FLOOD_LIMIT:-50}"
FLOOD_RATE="${FLOOD_RATE:-$((FLOOD_LIMIT * 10))}"
FLOOD_VICTIM_CONCURRENCY="${FLOOD_VICTIM_CONCURRENCY:-8}"
FLOOD_PROVIDER_NICE="${FLOOD_PROVIDER_NICE:-idle}"
FLOOD_GATEWAY_BACKGROUND_NICE="${FLOOD_GATEWAY_BACKGROUND_NICE:-}"
FLOOD_CLIENT_SCHED="${FLOOD_CLIENT_SCHED:-idle}"
FLOOD_READ_RATE="${FLOOD_READ_RATE:-2000}"
FLOOD_RECORD="${FLOOD_RECORD:-flood}"
CALLGRIND_WARMUP_CALLS="${CALLGRIND_WARMUP_CALLS:-500}"
CALLGRIND_CALLS="${CALLGRIND_CALLS:-3000}"
REPLICA_GENERATE_PAIRS="${REPLICA_GENERATE_PAIRS:-3}"
REPLICA_FANOUT_PAIRS="${REPLICA_FANOUT_PAIRS:-1}"

for bin in services/gateway/musicgw emulators/loudly-emulator emulators/soundpiece-emulator \
  bench/grpc_load bench/floor_server bench/direct_generate; do
  if [[ ! -x "$build/$bin" ]]; then
    echo "run_bench: $build/$bin is missing; build it first (bench tools need" \
      "-DMUSICGW_BUILD_BENCH=ON):" >&2
    echo "  cmake --build $build -j2 --target musicgw loudly-emulator soundpiece-emulator" \
      "grpc_load floor_server direct_generate" >&2
    exit 1
  fi
done

work="$(mktemp -d "${TMPDIR:-/tmp}/musicgw-bench.XXXXXX")"
audio_cache="$build/bench-audio"  # the 200 MB render survives between runs
mkdir -p "$audio_cache" "$here/results"
sandbox_dir=""
pg_sandbox_dir=""  # the 2-replica PostgreSQL stack of the "replicas" scenario
floor_pid=""
FLOOR_EXTRA_ARGS=()
# wait_gone PID...: until the processes have exited (at most 10 s), so the next run starts quiet.
wait_gone() {
  local pid alive
  for _ in $(seq 1 100); do
    alive=0
    for pid in "$@"; do
      if kill -0 "$pid" 2>/dev/null; then alive=1; fi
    done
    [[ $alive == 1 ]] || return 0
    sleep 0.1
  done
}
# wait_line FILE PATTERN SECONDS: until a process's log shows it is serving.
wait_line() {
  for _ in $(seq 1 $(($3 * 10))); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "run_bench: timed out waiting for '$2' in $1" >&2
  tail -5 "$1" >&2 || true
  return 1
}
stop_floor() {
  if [[ -n "$floor_pid" ]]; then
    kill "$floor_pid" 2>/dev/null || true
    wait_gone "$floor_pid"
    floor_pid=""
  fi
}
# stop_sandbox DIR: one scripts/sandbox.sh stack down (emulators, gateways, PostgreSQL), waited for.
stop_sandbox() {
  local pids
  pids=$(cat "$1"/*.pid 2>/dev/null || true)
  MUSICGW_SANDBOX_DIR="$1" "$repo/scripts/sandbox.sh" stop
  # The next scenario starts on a quiet machine.
  # shellcheck disable=SC2086
  wait_gone $pids
}
stop_stack() {
  stop_floor
  if [[ -n "$sandbox_dir" ]]; then
    stop_sandbox "$sandbox_dir"
    sandbox_dir=""
  fi
  if [[ -n "$pg_sandbox_dir" ]]; then
    stop_sandbox "$pg_sandbox_dir"
    pg_sandbox_dir=""
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
  launch_sandbox "$sandbox_dir" "$2"
  # shellcheck disable=SC1091
  source "$sandbox_dir/sandbox.env"
  export MUSICGW_API_KEY
  GW_PID=$(cat "$sandbox_dir/musicgw.pid")
  SP_URL="$SOUNDPIECE_EMULATOR_URL"
  METRICS_URL="$MUSICGW_METRICS_URL"
  TARGET="$MUSICGW_TARGET"
}

# launch_sandbox DIR SOUNDPIECE_PROCESSING_MS [--postgres]: one scripts/sandbox.sh stack in DIR,
# tuned for the benchmarks (see start_stack); with --postgres, two gateway replicas on a private
# PostgreSQL cluster.
launch_sandbox() {
  local dir="$1" processing_ms="$2"
  shift 2
  MUSICGW_BUILD_DIR="$build" MUSICGW_SANDBOX_DIR="$dir" \
    MUSICGW_SANDBOX_CREDITS=100000000 MUSICGW_SANDBOX_SAMPLE_BUDGET=100000000 \
    MUSICGW_SANDBOX_LOUDLY_FLAGS="--song_delay_ms=0 --sync_latency_ms=0 --threads=512" \
    MUSICGW_SANDBOX_SOUNDPIECE_FLAGS="--processing_ms=$processing_ms --rate_limit_per_second=1000000
      --rate_limit_burst=1000000 --threads=2500 --max_source_seconds=3600
      --data_dir=$audio_cache/${SOUNDPIECE_DATA:-soundpiece}" \
    "$repo/scripts/sandbox.sh" start "$@" >&2
  # The sandbox tenant's rate limits out of the way too: the defaults (e.g. 1,000 new streams/s,
  # bursts of 5,000, per replica) would refuse part of (c)'s 10,000 streams opened within a
  # second, and a 2-replica stack would get twice the allowance of a single node.
  # Custody (on by default) keeps its copies inside the stack's directory, shared by replicas.
  # The operation deadline (the sandbox's is 5 minutes) outlasts the planned processing, so a
  # long hold (fanout100k: 10 minutes) ends at the provider's completion, not at the deadline.
  # Idle watch streams get heartbeats at $WATCH_HEARTBEAT_SECONDS (the gateway's default, 15 s;
  # the sandbox's demo setting is 5 s).
  python3 - "$processing_ms" "$WATCH_HEARTBEAT_SECONDS" "$dir" "$dir"/musicgw*.json <<'PY'
import json, os, sys
processing_s = int(sys.argv.pop(1)) // 1000
heartbeat_s = float(sys.argv.pop(1))
big = 10000000
limits = {f"{kind}_{what}": big for kind in ("generate", "read", "list", "cancel", "stream")
          for what in ("per_second", "burst")}
limits.update(max_open_streams=big, max_live_operations=big)
for path in sys.argv[2:]:
    with open(path) as f:
        config = json.load(f)
    config["ledger"]["assets_path"] = os.path.join(sys.argv[1], "assets")
    operations = config.setdefault("operations", {})
    operations["deadline_seconds"] = max(operations.get("deadline_seconds", 300),
                                         processing_s + 300)
    operations["watch_heartbeat_seconds"] = heartbeat_s
    for tenant in config["tenants"]:
        tenant["limits"] = dict(limits)
    with open(path, "w") as f:
        json.dump(config, f, indent=1)
PY
  restart_gateways "$dir"
}

# restart_gateways DIR: every gateway of the stack in DIR restarted on its (edited) config, one
# after the other (replicas share the ledger).
restart_gateways() {
  local dir="$1" name pid
  for name in musicgw musicgw-2; do
    [[ -f "$dir/$name.pid" ]] || continue
    pid=$(cat "$dir/$name.pid")
    kill "$pid"
    wait_gone "$pid"
    "$build/services/gateway/musicgw" --config="$dir/$name.json" >"$dir/$name.out" \
      2>"$dir/$name.log" &
    echo $! >"$dir/$name.pid"
    wait_line "$dir/$name.out" "musicgw listening" 300
  done
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
  start_syscall_count "$name"
  # Shown on stderr by a plain write: `tee /dev/stderr` reopened (and truncated) a stderr that
  # was redirected to a file, so each scenario overwrote the log of the last.
  out=$("$build/bench/grpc_load" "${args[@]}")
  printf '%s\n' "$out" >&2
  after=$(upstream_snapshot)
  stop_syscall_count
  record "$name" "grpc_load ${args[*]}" "$out" \
    "{\"upstream_before\": $before, \"upstream_after\": $after, \"gateway\": $count_json}"
  stop_stack
}

# For Generate: the gateway's fsyncs and CPU time over the run (perf stat on its threads; {}
# without perf or its permission). Load on the machine changes the throughput, not these.
count_pid=""
count_out=""
count_json="{}"
start_syscall_count() {
  count_pid=""
  [[ $1 == generate || $1 == single ]] && command -v perf >/dev/null || return 0
  count_out="$work/perf-$1.$RANDOM.csv"
  perf stat -x, -o "$count_out" -e task-clock,syscalls:sys_enter_fdatasync,syscalls:sys_enter_fsync \
    -p "$GW_PID" 2>/dev/null &
  count_pid=$!
  sleep 0.5  # perf attaches to the gateway's threads before the load starts
}
# Sets count_json (not a command substitution: perf must be waited for by this shell).
stop_syscall_count() {
  count_json="{}"
  [[ -n $count_pid ]] || return 0
  kill -INT "$count_pid" 2>/dev/null || true
  wait "$count_pid" 2>/dev/null || true
  count_json=$(python3 - "$count_out" <<'PY'
import json, sys
out = {}
try:
    for line in open(sys.argv[1]):
        fields = line.strip().split(",")
        if len(fields) < 3 or not fields[0].replace(".", "").isdigit():
            continue
        name = {"task-clock": "cpu_ms", "syscalls:sys_enter_fdatasync": "fdatasyncs",
                "syscalls:sys_enter_fsync": "fsyncs"}.get(fields[2])
        if name:
            out[name] = float(fields[0])
except OSError:
    pass
print(json.dumps(out))
PY
)
}

grpc_load() { "$build/bench/grpc_load" "$@"; }
json_field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

# start_floor OPERATION_FILE [WRAPPER...]: the floor server on a free port (with the flags in
# FLOOR_EXTRA_ARGS, if any), optionally under a
# wrapper (valgrind). Sets floor_pid and FLOOR_TARGET.
start_floor() {
  local op_file="$1" log="$work/floor.$RANDOM.out"
  shift
  "$@" "$build/bench/floor_server" --operation="$op_file" --listen=127.0.0.1:0 \
    "${FLOOR_EXTRA_ARGS[@]}" >"$log" 2>&1 &
  floor_pid=$!
  wait_line "$log" "floor listening on" 120
  FLOOR_TARGET="127.0.0.1:$(sed -n 's/^floor listening on //p' "$log")"
}

# setup_operation FILE: one real SUCCEEDED Soundpiece sample operation on the gateway, its
# GetOperation answer saved to FILE (the floor answers exactly these bytes). Prints its name.
setup_operation() {
  local out
  out=$(grpc_load --target="$TARGET" --mode=get --task=sample --concurrency=8 --duration_s=1 \
    --warmup_s=0 --save_operation="$1")
  printf 'run_bench: setup: %s\n' "$out" >&2
  json_field "$out" operation
}

# Scenario "floor_watch": 100,000 WatchOperation streams (1,000 x 100) held by the floor, each
# ended $FLOOR_WATCH_HOLD_MS after it opened: RSS per open stream of gRPC and a bare reactor.
run_floor_watch() {
  start_stack floor_watch 0
  local op_file="$work/operation.bin" log="$work/floor-watch.out" args out
  setup_operation "$op_file" >/dev/null
  "$build/bench/floor_server" --operation="$op_file" --listen=127.0.0.1:0 \
    --watch_hold_ms="$FLOOR_WATCH_HOLD_MS" >"$log" 2>&1 &
  floor_pid=$!
  wait_line "$log" "floor listening on" 120
  args=(--mode=watch_fanout --task=sample --ops=1000 --watchers_per_op=100 --concurrency=64
    --channels=10 --watch_cqs=8 --rss_interval_ms=50)
  out=$(grpc_load --target="127.0.0.1:$(sed -n 's/^floor listening on //p' "$log")" "${args[@]}" \
    --pid="$floor_pid")
  printf '%s\n' "$out" >&2
  record floor_watch "grpc_load --target=<floor> ${args[*]} --pid=<floor>" "$out"
  stop_stack
}

# Scenario "floor": GetOperation on the gateway and on the floor, interleaved.
# Scenario "single": Generate-to-SUCCEEDED one at a time through the gateway, against the same
# job sent straight to the emulator with and without fetching its output, interleaved.
run_single() {
  start_stack single 0
  local runs="$work/single-runs.jsonl" out pair sp_key
  sp_key=$(cat "$sandbox_dir/secrets/soundpiece_api_key")
  : >"$runs"
  start_syscall_count single
  for pair in $(seq 1 "$PAIRS"); do
    out=$(grpc_load --target="$TARGET" --mode=generate --task=sample --ops="$SINGLE_OPS" \
      --concurrency=1 --pid="$GW_PID")
    printf 'run_bench: single pair %s gateway: %s\n' "$pair" "$out" >&2
    printf '{"pair": %s, "side": "gateway", "result": %s}\n' "$pair" "$out" >>"$runs"
    out=$(SOUNDPIECE_API_KEY="$sp_key" "$build/bench/direct_generate" --base_url="$SP_URL" \
      --ops="$SINGLE_OPS")
    printf 'run_bench: single pair %s direct: %s\n' "$pair" "$out" >&2
    printf '{"pair": %s, "side": "direct", "result": %s}\n' "$pair" "$out" >>"$runs"
    out=$(SOUNDPIECE_API_KEY="$sp_key" "$build/bench/direct_generate" --base_url="$SP_URL" \
      --ops="$SINGLE_OPS" --fetch_outputs)
    printf 'run_bench: single pair %s direct with the output fetched: %s\n' "$pair" "$out" >&2
    printf '{"pair": %s, "side": "direct_fetch", "result": %s}\n' "$pair" "$out" >>"$runs"
  done
  stop_syscall_count
  record single "grpc_load --mode=generate --task=sample --ops=$SINGLE_OPS --concurrency=1; \
direct_generate --ops=$SINGLE_OPS [--fetch_outputs]" \
    "$(python3 "$here/results_table.py" --pairs single "$runs")" \
    "{\"gateway\": $count_json, \"gateway_ops\": $((SINGLE_OPS * PAIRS))}"
  stop_stack
}

run_floor() {
  start_stack floor 0
  local op_file="$work/operation.bin" name runs="$work/floor-runs.jsonl" args side target pid out
  name=$(setup_operation "$op_file")
  start_floor "$op_file"
  : >"$runs"
  args=(--mode=get --operation="$name" --concurrency=64 --duration_s="$GET_SECONDS" --warmup_s=2)
  for pair in $(seq 1 "$PAIRS"); do
    for side in gateway floor; do
      if [[ $side == gateway ]]; then target=$TARGET pid=$GW_PID; else target=$FLOOR_TARGET pid=$floor_pid; fi
      out=$(grpc_load --target="$target" "${args[@]}" --pid="$pid")
      printf 'run_bench: floor pair %s %s: %s\n' "$pair" "$side" "$out" >&2
      printf '{"pair": %s, "side": "%s", "result": %s}\n' "$pair" "$side" "$out" >>"$runs"
    done
  done
  record floor "grpc_load --target=<gateway|floor> ${args[*]} --pid=<its pid>" \
    "$(python3 "$here/results_table.py" --pairs floor "$runs")"
  stop_stack
}

# The signed URL the gateway downloads the asset from (the newest /cdn/ URL in the ledger).
asset_url() {
  python3 - "$sandbox_dir/ledger.db" <<'PY'
import re, sqlite3, sys
urls = []
for row in sqlite3.connect(sys.argv[1]).execute("SELECT * FROM operations ORDER BY rowid"):
    for column in row:
        text = column.decode("latin-1") if isinstance(column, bytes) else str(column)
        urls += re.findall(r"http://127\.0\.0\.1:\d+/cdn/[A-Za-z0-9_]+\.flac\?[^\"\s\\]+", text)
print(urls[-1] if urls else "")
PY
}

# Scenario "direct": Download served from custody (the gateway's own copy, in $sandbox_dir/assets)
# vs curl of the same file from the emulator (a direct read over one loopback HTTP connection,
# the reference); a local read of the custody file (`cat`, page cache) is recorded beside them.
run_direct() {
  start_stack direct 0
  local out asset url runs="$work/direct-runs.jsonl" args held sha
  # Custody is on (every stack keeps its copies in $sandbox_dir/assets): the asset is copied
  # there when the operation succeeds, and every Download below is served from it.
  # The first download renders the file in the emulator (cached in $audio_cache) and warms both.
  out=$(grpc_load --target="$TARGET" --mode=download --source_seconds="$DOWNLOAD_SOURCE_SECONDS" \
    --repeat=1 --pid="$GW_PID")
  printf 'run_bench: direct: warm-up %s\n' "$out" >&2
  asset=$(json_field "$out" asset)
  url=$(asset_url)
  if [[ -z "$url" ]]; then
    echo "run_bench: direct: no download URL of the asset in the ledger" >&2
    return 1
  fi
  sha=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["runs"][-1]["sha256"])' \
    "$out")
  held="$sandbox_dir/assets/${sha:0:2}/$sha"
  if [[ -z "$sha" || ! -f "$held" ]]; then
    echo "run_bench: direct: the asset is not in custody ($held)" >&2
    return 1
  fi
  curl -sS -o /dev/null "$url"
  cat "$held" >/dev/null
  # The floor of a Download: a bare gRPC server streaming the same custody file in the gateway's
  # custody message size (1 MiB), no ledger, no authentication (floor_server --download_file).
  local op_file="$work/operation.bin"
  setup_operation "$op_file" >/dev/null
  FLOOR_EXTRA_ARGS=(--download_file="$held")
  start_floor "$op_file"
  FLOOR_EXTRA_ARGS=()
  grpc_load --target="$FLOOR_TARGET" --mode=download --asset="$asset" --repeat=1 --no_verify \
    >/dev/null
  : >"$runs"
  # No client-side hashing in the timed runs (curl does none either); the warm-up verified it.
  args=(--mode=download --asset="$asset" --repeat=1 --no_verify --pid="$GW_PID")
  for pair in $(seq 1 "$PAIRS"); do
    out=$(grpc_load --target="$TARGET" "${args[@]}")
    printf 'run_bench: direct pair %s gateway: %s\n' "$pair" "$out" >&2
    printf '{"pair": %s, "side": "gateway", "result": %s}\n' "$pair" "$out" >>"$runs"
    # curl's figures, with its own CPU and the emulator's (the server side of the reference).
    out=$(python3 - "$url" "$(cat "$sandbox_dir/soundpiece.pid")" <<'PY'
import json, os, resource, subprocess, sys
url, pid = sys.argv[1], sys.argv[2]
def server_cpu():
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
def own():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime
s0, c0 = server_cpu(), own()
w = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w",
                    '{"status": %{http_code}, "bytes": %{size_download}, "seconds": %{time_total}}',
                    url], capture_output=True, text=True, check=True).stdout
out = json.loads(w)
out["server_cpu_s"], out["client_cpu_s"] = server_cpu() - s0, own() - c0
print(json.dumps(out))
PY
)
    printf 'run_bench: direct pair %s curl: %s\n' "$pair" "$out" >&2
    printf '{"pair": %s, "side": "direct", "result": %s}\n' "$pair" "$out" >>"$runs"
    out=$(python3 - "$held" <<'PY'
import os, subprocess, sys, time
start = time.monotonic()
subprocess.run(["cat", sys.argv[1]], stdout=subprocess.DEVNULL, check=True)
print('{"bytes": %d, "seconds": %f}' % (os.path.getsize(sys.argv[1]), time.monotonic() - start))
PY
)
    printf 'run_bench: direct pair %s file: %s\n' "$pair" "$out" >&2
    printf '{"pair": %s, "side": "file", "result": %s}\n' "$pair" "$out" >>"$runs"
    out=$(grpc_load --target="$FLOOR_TARGET" "${args[@]/--pid=$GW_PID/--pid=$floor_pid}")
    printf 'run_bench: direct pair %s floor: %s\n' "$pair" "$out" >&2
    printf '{"pair": %s, "side": "floor", "result": %s}\n' "$pair" "$out" >>"$runs"
  done
  record direct "grpc_load --target=$TARGET ${args[*]} (custody on); curl -o /dev/null <the \
asset's emulator URL>; cat <the custody file> >/dev/null; the same grpc_load against \
floor_server --download_file=<the custody file>" \
    "$(python3 "$here/results_table.py" --pairs direct "$runs")"
  stop_stack
}

# callgrind_total FILE: the Ir total of a callgrind dump.
callgrind_total() { sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$1" | head -1; }

# callgrind_measure SIDE PID TARGET OPERATION: warm-up calls, then counters zeroed, N calls and a
# dump, then zeroed again, an idle wait as long as the calls took and a dump (background work
# the gateway does whatever the load: timers, quota refresh). Prints one JSON object.
callgrind_measure() {
  local side="$1" pid="$2" target="$3" name="$4" out start end dump idle calls_ir idle_ir
  local args=(--target="$target" --mode=get --operation="$name" --concurrency=4)
  grpc_load "${args[@]}" --calls="$CALLGRIND_WARMUP_CALLS" >/dev/null
  callgrind_control -z "$pid" >/dev/null
  start=$(date +%s.%N)
  out=$(grpc_load "${args[@]}" --calls="$CALLGRIND_CALLS")
  end=$(date +%s.%N)
  callgrind_control --dump="callgrind-$side-calls" "$pid" >/dev/null
  printf 'run_bench: callgrind %s: %s\n' "$side" "$out" >&2
  callgrind_control -z "$pid" >/dev/null
  sleep "$(python3 -c "print(max(0.0, $end - $start))")"
  callgrind_control --dump="callgrind-$side-idle" "$pid" >/dev/null
  sleep 1  # the dump is written by the valgrind process; wait for both files to be complete
  dump=$(grep -l "callgrind-$side-calls" "$work/cg-$side".* | head -1)
  idle=$(grep -l "callgrind-$side-idle" "$work/cg-$side".* | head -1)
  calls_ir=$(callgrind_total "$dump")
  idle_ir=$(callgrind_total "$idle")
  # Paths of this checkout and of the scratch directory are shortened so the kept profile is
  # the same wherever it was taken.
  callgrind_annotate --inclusive=yes --threshold=100 "$dump" 2>/dev/null | head -200 |
    sed -e "s|$repo/||g" -e "s|$work/|<scratch>/|g" >"$work/callgrind-$side.txt" || true
  python3 - "$out" "$calls_ir" "$idle_ir" "$CALLGRIND_CALLS" "$side" <<'PY'
import json, sys
load, calls_ir, idle_ir, calls, side = sys.argv[1:6]
load = json.loads(load)
# grpc_load reads the operation once before its counted calls.
n = int(calls) + 1
print(json.dumps({"side": side, "calls": n, "ir_calls_window": int(calls_ir),
                  "ir_idle_window": int(idle_ir),
                  "ir_per_call": (int(calls_ir) - int(idle_ir)) / n,
                  "ir_per_call_without_idle_subtraction": int(calls_ir) / n,
                  "load": load}))
PY
}

# restart_gateway [WRAPPER...]: the stack's gateway restarted on the same config, ledger and ports.
restart_gateway() {
  kill "$GW_PID"
  wait_gone "$GW_PID"
  "$@" "$build/services/gateway/musicgw" --config="$sandbox_dir/musicgw.json" \
    >"$sandbox_dir/musicgw.out" 2>"$sandbox_dir/musicgw.log" &
  GW_PID=$!
  echo "$GW_PID" >"$sandbox_dir/musicgw.pid"
  wait_line "$sandbox_dir/musicgw.out" "musicgw listening" 300
}

# Scenario "flood": a second tenant ("flooder", Generate limited to $FLOOD_LIMIT/s) floods at 10x
# its limit while the sandbox tenant reads; quiet and flooded runs interleaved, $PAIRS pairs.
run_flood() {
  start_stack flood 0
  local op_file="$work/operation.bin" name runs="$work/flood-runs.jsonl" flood_key args out pair
  local flood_pid flood_client_sched=()
  if [[ "$FLOOD_CLIENT_SCHED" == idle ]]; then flood_client_sched=(chrt --idle 0); fi
  name=$(setup_operation "$op_file")
  flood_key=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  python3 - "$sandbox_dir/musicgw.json" "$(printf '%s' "$flood_key" | sha256sum | cut -d' ' -f1)" \
    "$FLOOD_LIMIT" "$FLOOD_GATEWAY_BACKGROUND_NICE" <<'PY'
import json, sys
path, digest, limit, background_nice = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
with open(path) as f:
    config = json.load(f)
config["tenants"].append({"name": "flooder", "api_key_sha256": [digest],
                          "limits": {"generate_per_second": limit, "generate_burst": limit}})
if background_nice:
    config.setdefault("operations", {})["background_nice"] = int(background_nice)
with open(path, "w") as f:
    json.dump(config, f, indent=1)
PY
  restart_gateway
  if [[ "$FLOOD_PROVIDER_NICE" != 0 ]]; then
    # The providers are remote in production: their work for the admitted operations runs only
    # when the gateway and the load generator leave a core idle, as if it ran elsewhere. Every
    # thread of each emulator (threads started later inherit it): renice -p sets one thread's.
    # SCHED_IDLE ("idle") yields the core at once to any other thread that wakes; a nice value
    # still lets the emulator finish its time slice first.
    local emulator
    for emulator in "$(cat "$sandbox_dir/soundpiece.pid")" "$(cat "$sandbox_dir/loudly.pid")"; do
      if [[ "$FLOOD_PROVIDER_NICE" == idle ]]; then
        chrt --all-tasks --idle --pid 0 "$emulator" >/dev/null
      else
        renice -n "$FLOOD_PROVIDER_NICE" -p $(ls "/proc/$emulator/task") >/dev/null
      fi
    done
  fi
  : >"$runs"
  args=(--target="$TARGET" --mode=get --task=sample --operation="$name"
    --concurrency="$FLOOD_VICTIM_CONCURRENCY" --duration_s="$GET_SECONDS" --warmup_s=2
    --pid="$GW_PID")
  if [[ "$FLOOD_READ_RATE" != 0 ]]; then args+=(--read_rate="$FLOOD_READ_RATE" --channels=4); fi
  for pair in $(seq 1 "$PAIRS"); do
    echo "run_bench: flood pair $pair: quiet" >&2
    out=$(grpc_load "${args[@]}")
    printf '{"pair": %s, "side": "quiet", "result": %s}\n' "$pair" "$out" >>"$runs"
    printf '%s\n' "$out" >&2
    echo "run_bench: flood pair $pair: flooded at $FLOOD_RATE/s" >&2
    # The flooder is a client process of its own, as another tenant's would be (on its own
    # machine: by default under SCHED_IDLE, like the emulators); it floods for the reader's whole
    # run (warm-up included) and a second beyond.
    MUSICGW_API_KEY="$flood_key" "${flood_client_sched[@]}" "$build/bench/grpc_load" \
      --target="$TARGET" --mode=flood --task=sample --flood_rate="$FLOOD_RATE" \
      --duration_s="$((GET_SECONDS + 3))" >"$work/flood.json" &
    flood_pid=$!
    out=$(grpc_load "${args[@]}")
    wait "$flood_pid"
    out=$(python3 -c 'import json, sys
reads = json.loads(sys.argv[1])
with open(sys.argv[2]) as f:
    reads["flood"] = json.load(f)
print(json.dumps(reads))' "$out" "$work/flood.json")
    printf '{"pair": %s, "side": "flooded", "result": %s}\n' "$pair" "$out" >>"$runs"
    printf '%s\n' "$out" >&2
  done
  record "$FLOOD_RECORD" "grpc_load ${args[*]} [beside grpc_load --mode=flood \
--flood_rate=$FLOOD_RATE, as a tenant limited to $FLOOD_LIMIT Generate/s, its client $FLOOD_CLIENT_SCHED; emulators at \
$FLOOD_PROVIDER_NICE; gateway \
operations.background_nice ${FLOOD_GATEWAY_BACKGROUND_NICE:-10 (default)}]" "$(python3 "$here/results_table.py" --pairs flood "$runs")"
  stop_stack
}

# Scenario "callgrind": instructions per GetOperation, gateway and floor under callgrind.
run_callgrind() {
  start_stack callgrind 0
  local op_file="$work/operation.bin" name gw floor
  name=$(setup_operation "$op_file")
  # The same gateway (config, ledger, ports) restarted under callgrind.
  rm -f "$work"/cg-gateway.* "$work"/cg-floor.*
  restart_gateway valgrind --tool=callgrind --callgrind-out-file="$work/cg-gateway"
  gw=$(callgrind_measure gateway "$GW_PID" "$TARGET" "$name")
  start_floor "$op_file" valgrind --tool=callgrind --callgrind-out-file="$work/cg-floor"
  floor=$(callgrind_measure floor "$floor_pid" "$FLOOR_TARGET" "$name")
  local profile
  profile="$here/results/callgrind-gateway-$(date -u +%Y%m%d).txt"
  cp "$work/callgrind-gateway.txt" "$profile"
  cp "$work/callgrind-floor.txt" "$here/results/callgrind-floor-$(date -u +%Y%m%d).txt"
  record callgrind "valgrind --tool=callgrind <musicgw|floor_server>; grpc_load --mode=get \
--concurrency=4 --calls=$CALLGRIND_WARMUP_CALLS; callgrind_control -z; grpc_load --mode=get \
--concurrency=4 --calls=$CALLGRIND_CALLS; callgrind_control -d" \
    "{\"gateway\": $gw, \"floor\": $floor, \"ratio\": $(python3 -c "import json,sys; \
g=json.loads(sys.argv[1]); f=json.loads(sys.argv[2]); print(g['ir_per_call']/f['ir_per_call'])" \
      "$gw" "$floor"), \"profile\": \"bench/results/$(basename "$profile")\"}"
  stop_stack
}

# Scenario "replicas": (a) GetOperation, (b) Generate->SUCCEEDED x$GENERATE_OPS and (c) watch
# fan-out, each on the single-node SQLite stack and on 2 gateway replicas sharing a private
# PostgreSQL cluster (scripts/sandbox.sh start --postgres), interleaved (sqlite, postgres, ...).
# Both stacks run side by side for (a) and (b) (emulators with zero latency) and again for (c)
# (Soundpiece jobs of $FANOUT_PROCESSING_MS); the load generator spreads its channels over the
# replicas (--target=A,B: a Generate on one replica is watched on both), and CPU and RSS are
# summed over the replicas.
env_of() { sed -n "s/^$2=//p" "$1/sandbox.env"; }
start_replica_stacks() {
  stop_stack
  sandbox_dir="$work/replicas-sqlite-$1"
  pg_sandbox_dir="$work/replicas-postgres-$1"
  launch_sandbox "$sandbox_dir" "$1"
  # Each emulator its own data directory: the two stacks run at the same time.
  SOUNDPIECE_DATA=soundpiece-replicas launch_sandbox "$pg_sandbox_dir" "$1" --postgres
  SQ_TARGET=$(env_of "$sandbox_dir" MUSICGW_TARGET)
  SQ_KEY=$(env_of "$sandbox_dir" MUSICGW_API_KEY)
  SQ_PIDS=$(cat "$sandbox_dir/musicgw.pid")
  PG_TARGETS=$(env_of "$pg_sandbox_dir" MUSICGW_TARGETS)
  PG_KEY=$(env_of "$pg_sandbox_dir" MUSICGW_API_KEY)
  PG_PIDS="$(cat "$pg_sandbox_dir/musicgw.pid"),$(cat "$pg_sandbox_dir/musicgw-2.pid")"
}
# replica_load SIDE ARGS...: grpc_load against one side (sqlite|postgres).
replica_load() {
  local side="$1"
  shift
  if [[ $side == sqlite ]]; then
    MUSICGW_API_KEY="$SQ_KEY" grpc_load --target="$SQ_TARGET" --pid="$SQ_PIDS" "$@"
  else
    MUSICGW_API_KEY="$PG_KEY" grpc_load --target="$PG_TARGETS" --pid="$PG_PIDS" "$@"
  fi
}
# cpu_of PID...: CPU seconds (user + system, with reaped children) of the processes and all their
# descendants so far (PostgreSQL: the postmaster under its launcher, backends, walwriter, ...).
cpu_of() {
  python3 - "$@" <<'PY'
import os, sys
stats = {}
for entry in os.listdir("/proc"):
    if entry.isdigit():
        try:
            stats[entry] = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            pass
children = {}
for pid, fields in stats.items():
    children.setdefault(fields[1], []).append(pid)
total, todo, seen = 0.0, list(sys.argv[1:]), set()
while todo:
    pid = todo.pop()
    if pid in seen or pid not in stats:
        continue
    seen.add(pid)
    total += sum(int(f) for f in stats[pid][11:15]) / os.sysconf("SC_CLK_TCK")
    todo += children.get(pid, [])
print(total)
PY
}
# replica_pairs KIND PAIRS ARGS...: interleaved runs of both sides, recorded as "replicas_KIND".
replica_pairs() {
  local kind="$1" pairs="$2" runs="$work/replicas-$1-runs.jsonl" out pair side
  shift 2
  : >"$runs"
  for pair in $(seq 1 "$pairs"); do
    for side in sqlite postgres; do
      local pids="$SQ_PIDS" pg=""
      if [[ $side == postgres ]]; then
        pids="$PG_PIDS"
        pg=$(cat "$pg_sandbox_dir/postgres.pid")
      fi
      local gw0 pg0 gw1 pg1
      # shellcheck disable=SC2086
      gw0=$(cpu_of ${pids//,/ })
      pg0=0
      [[ -z $pg ]] || pg0=$(cpu_of "$pg")
      out=$(replica_load "$side" "$@") || true
      # shellcheck disable=SC2086
      gw1=$(cpu_of ${pids//,/ })
      pg1=0
      [[ -z $pg ]] || pg1=$(cpu_of "$pg")
      [[ -n "$out" ]] || out='{"error": "grpc_load printed nothing"}'
      out=$(python3 - "$out" "$gw0" "$gw1" "$pg0" "$pg1" <<'PY'
import json, sys
out = json.loads(sys.argv[1])
out["gateways_cpu_s"] = float(sys.argv[3]) - float(sys.argv[2])
out["postgres_cpu_s"] = float(sys.argv[5]) - float(sys.argv[4])
print(json.dumps(out))
PY
)
      printf 'run_bench: replicas %s pair %s %s: %s\n' "$kind" "$pair" "$side" "$out" >&2
      printf '{"pair": %s, "side": "%s", "result": %s}\n' "$pair" "$side" "$out" >>"$runs"
    done
  done
  record "replicas_$kind" "grpc_load --target=<sqlite gateway|replica A,replica B> $* \
--pid=<its pid(s)>" "$(python3 "$here/results_table.py" --pairs "replicas_$kind" "$runs")"
}
run_replicas() {
  local parts=" ${REPLICA_PARTS:-get generate fanout} "
  if [[ $parts == *" get "* || $parts == *" generate "* ]]; then
    start_replica_stacks 0
  fi
  if [[ $parts == *" get "* ]]; then
    replica_pairs get "$PAIRS" --mode=get --task=sample --concurrency=64 --channels=2 \
      --duration_s="$GET_SECONDS" --warmup_s=2
  fi
  if [[ $parts == *" generate "* ]]; then
    replica_pairs generate "$REPLICA_GENERATE_PAIRS" --mode=generate --task=sample \
      --ops="$GENERATE_OPS" --concurrency="$GENERATE_CONCURRENCY" --channels=2
  fi
  [[ $parts == *" fanout "* ]] || return 0
  start_replica_stacks "$FANOUT_PROCESSING_MS"
  replica_pairs fanout "$REPLICA_FANOUT_PAIRS" --mode=watch_fanout --task=sample \
    --ops="$FANOUT_OPS" --watchers_per_op="$FANOUT_WATCHERS" --concurrency=64 --channels=10 \
    --processing_ms="$FANOUT_PROCESSING_MS" --rss_interval_ms=50
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
    fanout100k)
      # The watchers on 8 async completion queues (--watch_cqs): on the callback API's single
      # queue the load generator's own per-event cost grows with the number of streams.
      run_scenario fanout100k "$FANOUT100K_PROCESSING_MS" --mode=watch_fanout --task=sample \
        --ops=1000 --watchers_per_op=100 --concurrency=64 --channels=10 --watch_cqs=8 \
        --processing_ms="$FANOUT100K_PROCESSING_MS" --rss_interval_ms=50
      ;;
    floor_watch) run_floor_watch ;;
    download)
      run_scenario download 0 --mode=download --source_seconds="$DOWNLOAD_SOURCE_SECONDS" \
        --repeat=4 --rss_interval_ms=10
      ;;
    floor) run_floor ;;
    single) run_single ;;
    direct) run_direct ;;
    flood) run_flood ;;
    callgrind) run_callgrind ;;
    replicas) run_replicas ;;
    *)
      echo "run_bench: unknown scenario $scenario (get generate fanout download floor single direct" \
        "flood callgrind replicas fanout100k floor_watch)" >&2
      exit 2
      ;;
  esac
done

json_out="$here/results/$(date -u +%Y%m%d).json"
python3 "$here/results_table.py" --merge "$results" "$json_out" --markdown "$here/RESULTS.md"
echo "run_bench: results in $json_out; table in $here/RESULTS.md" >&2
