#!/usr/bin/env bash
# End-to-end test of one example client (python | node | go) against the sandbox: both provider
# emulators and musicgw on free loopback ports (scripts/sandbox.sh).
#   run_client_e2e.sh LANG SOURCE_DIR BUILD_DIR WORK_DIR
# Exits 77 (skipped) only when the language's toolchain is absent.
set -euo pipefail
lang="$1" src="$2" build="$3" work="$4"
skip() { echo "SKIP: $*"; exit 77; }
rm -rf "$work/out" "$work/sandbox"
mkdir -p "$work"

# 1. The toolchain, and the client built or generated into $work.
case "$lang" in
  python)
    py=""
    for candidate in /usr/bin/python3 "$(command -v python3 || true)"; do
      if [[ -x "$candidate" ]] && "$candidate" -c 'import grpc, google.protobuf' 2>/dev/null; then
        py="$candidate"; break
      fi
    done
    [[ -n "$py" ]] || skip "no python3 with grpc and protobuf (Debian: python3-grpcio python3-protobuf)"
    command -v protoc >/dev/null || skip "no protoc"
    [[ -x "$(command -v grpc_python_plugin || echo /usr/bin/grpc_python_plugin)" ]] || skip "no grpc_python_plugin"
    rm -rf "$work/gen"
    "$src/clients/python/generate.sh" "$work/gen"
    run=(env PYTHONPATH="$work/gen:$src/clients/python" PYTHONDONTWRITEBYTECODE=1
         "$py" "$src/clients/python/demo.py" --out-dir "$work/out")
    ;;
  node)
    command -v node >/dev/null || skip "no node"
    command -v npm >/dev/null || skip "no npm"
    # The client runs from a copy so node_modules lands in the build tree, not the source tree.
    mkdir -p "$work/app"
    cp "$src/clients/node/package.json" "$src/clients/node/package-lock.json" \
       "$src/clients/node/"*.js "$work/app/"
    if ! (cd "$work/app" && npm ci --offline --no-audit --no-fund --loglevel=error >/dev/null 2>&1); then
      (cd "$work/app" && npm ci --no-audit --no-fund --loglevel=error)
    fi
    run=(env MUSICGW_PROTO_DIR="$src/proto" node "$work/app/demo.js" --out-dir "$work/out")
    ;;
  go)
    command -v go >/dev/null || skip "no go (Debian: golang-go)"
    [[ -d /usr/share/gocode/src/google.golang.org/grpc ]] || skip "no golang-google-grpc-dev"
    [[ -d /usr/share/gocode/src/google.golang.org/protobuf ]] || skip "no golang-google-protobuf-dev"
    command -v protoc-gen-go-grpc >/dev/null || skip "no protoc-gen-go-grpc"
    "$src/clients/go/build.sh" "$work/go"
    run=("$work/go/bin/musicgw-go-demo" -out-dir "$work/out")
    ;;
  *) echo "unknown client language $lang" >&2; exit 2 ;;
esac

# 2. The sandbox.
for bin in services/gateway/musicgw emulators/loudly-emulator emulators/soundpiece-emulator; do
  [[ -x "$build/$bin" ]] || { echo "FAIL: $build/$bin is not built" >&2; exit 1; }
done
export MUSICGW_BUILD_DIR="$build" MUSICGW_SANDBOX_DIR="$work/sandbox"
stop_sandbox() {
  local rc=$?
  if [[ $rc -ne 0 && -d "$work/sandbox" ]]; then
    echo "--- gateway log (tail)"; tail -n 30 "$work/sandbox/musicgw.log" 2>/dev/null || true
  fi
  "$src/scripts/sandbox.sh" stop || true
  exit $rc
}
trap stop_sandbox EXIT
"$src/scripts/sandbox.sh" start
set -a
# shellcheck disable=SC1091
source "$work/sandbox/sandbox.env"
set +a

# 3. A path that throttles and drops connections, for the client's automatic resumption.
proxy_py="$(command -v python3)"
[[ -x /usr/bin/python3 ]] && proxy_py=/usr/bin/python3
"$proxy_py" "$src/tests/clients/flaky_proxy.py" --upstream "$MUSICGW_TARGET" \
  --port-file "$work/sandbox/proxy.port" --lifetime 150 >"$work/sandbox/proxy.log" 2>&1 &
proxy_pid=$!
# The sandbox and the proxy outlive a script killed with SIGKILL (no EXIT trap then): a
# watchdog stops them once this script is gone, however it went.
(
  while kill -0 $$ 2>/dev/null; do sleep 1; done
  kill "$proxy_pid" 2>/dev/null
  [[ -f "$work/client.pid" ]] && kill "$(cat "$work/client.pid")" 2>/dev/null
  MUSICGW_SANDBOX_DIR="$work/sandbox" "$src/scripts/sandbox.sh" stop >/dev/null 2>&1
) </dev/null >/dev/null 2>&1 &
for _ in $(seq 1 50); do [[ -s "$work/sandbox/proxy.port" ]] && break; sleep 0.1; done
flaky="127.0.0.1:$(cat "$work/sandbox/proxy.port")"

# 4. The client's own walk-through; it exits non-zero on any failed check.
rc=0
timeout 120 "${run[@]}" --flaky-target "$flaky" &
echo $! >"$work/client.pid"
wait $! || rc=$?
kill "$proxy_pid" 2>/dev/null || true
wait "$proxy_pid" 2>/dev/null || true
cat "$work/sandbox/proxy.log"
[[ $rc -eq 0 ]] || exit $rc
# The drops must really have happened for the resumption to count as tested.
grep -q "cut a connection" "$work/sandbox/proxy.log" || { echo "FAIL: the proxy never cut a connection" >&2; exit 1; }
