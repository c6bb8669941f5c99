#!/usr/bin/env bash
# Scenario (b) of several checkouts side by side: each checkout's own bench/run_bench.sh on its
# own Release build (build/release, bench targets built), interleaved (A B C A B C ...), one JSON
# line per run on stdout: ops/s, the gateway's fdatasyncs, fsyncs and CPU per operation, p99,
# load average. Each checkout's bench/results and RESULTS.md are left as they were.
#
# Usage: bench/ab_generate.sh PAIRS CHECKOUT... (e.g. a worktree of the previous commit, then .)
set -euo pipefail
pairs="$1"
shift
for pair in $(seq 1 "$pairs"); do
  for checkout in "$@"; do
    checkout="$(cd "$checkout" && pwd)"
    saved="$(mktemp -d)"
    cp -a "$checkout/bench/results" "$checkout/bench/RESULTS.md" "$saved/"
    (cd "$checkout" && bench/run_bench.sh build/release generate >/dev/null 2>"$saved/log") || {
      echo "ab_generate: $checkout failed; its log:" >&2
      tail -20 "$saved/log" >&2
      exit 1
    }
    latest="$(ls -t "$checkout"/bench/results/2*.json | head -1)"
    python3 - "$checkout" "$pair" "$latest" <<'PY'
import json, sys
checkout, pair, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
run = [o for o in json.load(open(path)) if o["scenario"] == "generate"][0]
g, r = run.get("gateway", {}), run["result"]
ops = r["ops"]
print(json.dumps({"checkout": checkout, "commit": run["machine"]["git_commit"], "pair": pair,
                  "ops_per_s": r["completed_per_second"],
                  "fdatasyncs_per_op": g.get("fdatasyncs", 0) / ops,
                  "fsyncs_per_op": g.get("fsyncs", 0) / ops,
                  "cpu_ms_per_op": g.get("cpu_ms", 0) / ops,
                  "to_done_p99_ms": r["to_done_ms"]["p99"],
                  "load_avg_1m": run["machine"]["load_avg_1m"]}))
PY
    rm -rf "$checkout/bench/results"
    cp -a "$saved/results" "$checkout/bench/results"
    cp -a "$saved/RESULTS.md" "$checkout/bench/RESULTS.md"
    rm -rf "$saved"
  done
done
