#!/usr/bin/env bash
# End-to-end test of one client (python | cli | node | go) against the sandbox: both provider
# emulators and musicgw on free loopback ports (scripts/sandbox.sh).
#   run_client_e2e.sh LANG SOURCE_DIR BUILD_DIR WORK_DIR
# A missing toolchain or package fails the test (scripts/install-deps.sh installs them all).
set -euo pipefail
lang="$1" src="$2" build="$3" work="$4"
rm -rf "$work/out" "$work/sandbox"
mkdir -p "$work"

# 1. The toolchain, and the client built or generated into $work.
case "$lang" in
  python|cli)
    # The package installed as a user would: a fresh venv over Debian's python3 (its grpcio and
    # protobuf come from the system site), pip offline, from a copy of the sources so the build
    # writes nothing into the source tree.
    py=/usr/bin/python3
    "$py" -c 'import grpc, google.protobuf, setuptools, venv' ||
      { echo "FAIL: $py needs python3-grpcio python3-protobuf python3-setuptools python3-venv (scripts/install-deps.sh)" >&2; exit 1; }
    rm -rf "$work/venv" "$work/pkg"
    mkdir -p "$work/pkg/clients"
    cp -r "$src/clients/python" "$work/pkg/clients/python"
    cp -r "$src/proto" "$work/pkg/proto"
    rm -rf "$work/pkg/clients/python/build" "$work/pkg/clients/python/src/"*.egg-info
    "$py" -m venv --system-site-packages "$work/venv"
    "$work/venv/bin/pip" install --quiet --no-index --no-build-isolation --disable-pip-version-check \
      "$work/pkg/clients/python"
    if [[ "$lang" == python ]]; then
      run=(env PYTHONDONTWRITEBYTECODE=1 "$work/venv/bin/python"
           "$src/tests/clients/python_sdk_e2e.py" --out-dir "$work/out")
    else
      run=(bash "$src/tests/clients/cli_e2e.sh" "$work/venv/bin/musicgw-cli" "$work/venv/bin/python"
           --out-dir "$work/out")
    fi
    ;;
  node)
    # The package packed as it would be published, then installed from the tarball into a fresh
    # directory; every npm step is offline, from the cache scripts/install-deps.sh fills.
    command -v node >/dev/null || { echo "FAIL: no node (scripts/install-deps.sh)" >&2; exit 1; }
    command -v npm >/dev/null || { echo "FAIL: no npm (scripts/install-deps.sh)" >&2; exit 1; }
    command -v protoc >/dev/null || { echo "FAIL: no protoc" >&2; exit 1; }
    rm -rf "$work/pkg" "$work/app" "$work/"*.tgz
    mkdir -p "$work/pkg/clients/node" "$work/app"
    (cd "$src/clients/node" && cp -r package.json package-lock.json tsconfig.json README.md src "$work/pkg/clients/node/")
    rm -rf "$work/pkg/clients/node/src/gen"
    cp -r "$src/proto" "$work/pkg/proto"
    npm_quiet=(--offline --no-audit --no-fund --loglevel=error)
    (cd "$work/pkg/clients/node" && npm ci "${npm_quiet[@]}" >/dev/null) ||
      { echo "FAIL: npm ci --offline: run scripts/install-deps.sh to fill the npm cache" >&2; exit 1; }
    (cd "$work/pkg/clients/node" && npm pack --pack-destination "$work" --loglevel=error >/dev/null)
    tarball="$(ls "$work"/musicgw-*.tgz)"
    echo '{"name": "musicgw-e2e-app", "version": "0.0.0", "private": true}' >"$work/app/package.json"
    (cd "$work/app" && npm install "${npm_quiet[@]}" "$tarball" >/dev/null) ||
      { echo "FAIL: npm install of $tarball in a fresh directory" >&2; exit 1; }
    cp "$src/tests/clients/node_e2e/e2e.js" "$src/tests/clients/node_e2e/quickstart.ts" "$work/app/"
    # The README's quick start type-checks against the installed declarations.
    (cd "$work/app" && "$work/pkg/clients/node/node_modules/.bin/tsc" --noEmit --strict \
       --target ES2022 --module commonjs --moduleResolution node10 --skipLibCheck \
       --typeRoots "$work/pkg/clients/node/node_modules/@types" --types node quickstart.ts)
    run=(node "$work/app/e2e.js" --out-dir "$work/out")
    ;;
  go)
    # The module built as a user would offline: a fresh GOPATH holding a copy of it, the test
    # program beside it, Debian's Go packages (/usr/share/gocode) for its dependencies.
    command -v go >/dev/null || { echo "FAIL: no go (scripts/install-deps.sh: golang-go)" >&2; exit 1; }
    for dep in google.golang.org/grpc google.golang.org/protobuf google.golang.org/genproto; do
      [[ -d /usr/share/gocode/src/$dep ]] || { echo "FAIL: no $dep in /usr/share/gocode (scripts/install-deps.sh)" >&2; exit 1; }
    done
    # The committed generated code must match what proto/ generates today.
    rm -rf "$work/regen"
    "$src/clients/go/generate.sh" "$work/regen"
    diff -r "$src/clients/go/musicgwv1" "$work/regen/musicgwv1" ||
      { echo "FAIL: clients/go/musicgwv1 is stale: run clients/go/generate.sh" >&2; exit 1; }
    gopath="$work/gopath"
    rm -rf "$gopath" && mkdir -p "$gopath/src/musicgw.dev" "$gopath/src/musicgw-go-e2e" "$work/bin"
    cp -r "$src/clients/go" "$gopath/src/musicgw.dev/go"
    cp "$src/tests/clients/go_e2e/main.go" "$gopath/src/musicgw-go-e2e/"
    export GO111MODULE=off GOFLAGS='' GOPROXY=off GOPATH="$gopath:/usr/share/gocode"
    [[ -n "${GOCACHE:-}" || ( -n "${HOME:-}" && -w "${HOME:-/nonexistent}" ) ]] || export GOCACHE="$work/gocache"
    go build -o "$work/bin/musicgw-go-e2e" musicgw-go-e2e
    go vet musicgw.dev/go musicgw-go-e2e
    # And in module mode, as go.mod says, offline: vendor/ from the same Debian packages.
    rm -rf "$work/mod" && cp -r "$src/clients/go" "$work/mod"
    "$src/clients/go/vendor-debian.sh" "$work/mod"
    (cd "$work/mod" && GO111MODULE=on GOFLAGS=-mod=vendor GOPATH="$work/modpath" go build ./... &&
       GO111MODULE=on GOFLAGS=-mod=vendor GOPATH="$work/modpath" go vet ./...)
    run=("$work/bin/musicgw-go-e2e" -out-dir "$work/out")
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
for _ in $(seq 1 50); do [[ -s "$work/sandbox/proxy.port" ]] && break; sleep 0.1; done
flaky="127.0.0.1:$(cat "$work/sandbox/proxy.port")"

# 4. The client's own walk-through; it exits non-zero on any failed check.
rc=0
timeout 120 "${run[@]}" --flaky-target "$flaky" || rc=$?
kill "$proxy_pid" 2>/dev/null || true
wait "$proxy_pid" 2>/dev/null || true
cat "$work/sandbox/proxy.log"
[[ $rc -eq 0 ]] || exit $rc
# The drops must really have happened for the resumption to count as tested.
grep -q "cut a connection" "$work/sandbox/proxy.log" || { echo "FAIL: the proxy never cut a connection" >&2; exit 1; }
