#!/usr/bin/env bash
# The contract under buf (npm's @bufbuild/buf, through its linux-x64 package; installed into the
# npm cache by scripts/install-deps.sh, so nothing is downloaded here).
#   buf_check.sh install SOURCE_DIR TOOLS_DIR        npm ci --offline proto/package.json -> TOOLS_DIR
#   buf_check.sh lint SOURCE_DIR TOOLS_DIR           buf lint proto/
#   buf_check.sh breaking SOURCE_DIR TOOLS_DIR       buf breaking proto/ against proto/released.binpb
#   buf_check.sh breaking_detects SOURCE_DIR TOOLS_DIR WORK
#       the check itself: a copy of proto/ with deliberately breaking changes must fail it (with
#       the expected rules), and one with an additive change must pass.
#   buf_check.sh curl SOURCE_DIR TOOLS_DIR BUILD_DIR WORK
#       buf curl against the sandbox through server reflection: every service and method listed,
#       grpc.health.v1.Health/Check and musicgw.v1.MusicGateway/GetOperation called.
set -euo pipefail
mode="$1" src="$2" tools="$3"
buf="$tools/node_modules/@bufbuild/buf-linux-x64/bin/buf"
export BUF_CACHE_DIR="$tools/cache"
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

case "$mode" in
  install)
    command -v npm >/dev/null || fail "no npm (scripts/install-deps.sh installs it)"
    rm -rf "$tools" && mkdir -p "$tools"
    cp "$src/proto/package.json" "$src/proto/package-lock.json" "$tools/"
    (cd "$tools" && npm ci --offline --no-audit --no-fund --loglevel=error) ||
      fail "npm ci --offline failed: run scripts/install-deps.sh to fill the npm cache"
    "$buf" --version
    ;;
  lint)
    cd "$src/proto" && "$buf" lint && ok "buf lint proto/"
    ;;
  breaking)
    cd "$src/proto" && "$buf" breaking --against released.binpb &&
      ok "buf breaking proto/ against released.binpb"
    ;;
  breaking_detects)
    work="$4"
    expect_breaking() {  # description rule-text sed-expression
      rm -rf "$work/proto" && cp -r "$src/proto" "$work/proto"
      sed -i "$3" "$work/proto/musicgw/v1/musicgw.proto"
      ! cmp -s "$src/proto/musicgw/v1/musicgw.proto" "$work/proto/musicgw/v1/musicgw.proto" ||
        fail "$1: the edit did not apply"
      local rc=0
      (cd "$work/proto" && "$buf" breaking --against released.binpb) >"$work/out.txt" 2>&1 || rc=$?
      [[ $rc -ne 0 ]] || fail "$1 passed the breaking check"
      grep -q "$2" "$work/out.txt" || { cat "$work/out.txt"; fail "$1: no '$2' in the report"; }
      ok "$1 fails: $(head -1 "$work/out.txt")"
    }
    mkdir -p "$work"
    expect_breaking "renumbering Operation.sequence" 'field "14" with name "sequence"' \
      's/  int64 sequence = 14;/  int64 sequence = 1014;/'
    expect_breaking "changing DownloadRequest.offset to int32" 'offset' \
      's/  int64 offset = 2;/  int32 offset = 2;/'
    expect_breaking "renaming the Generate method" 'Generate' \
      's/  rpc Generate(GenerateRequest)/  rpc Create(GenerateRequest)/'
    expect_breaking "removing a task kind" 'enum value "10" on enum "TaskKind"' '/  TASK_KIND_CUT_DOWN = 10;/d'
    # An additive change is not breaking: a new optional field.
    rm -rf "$work/proto" && cp -r "$src/proto" "$work/proto"
    sed -i 's/^  google.protobuf.Timestamp deadline = 19;/&\n  string added_for_test = 99;/' \
      "$work/proto/musicgw/v1/musicgw.proto"
    grep -q added_for_test "$work/proto/musicgw/v1/musicgw.proto" || fail "the additive edit did not apply"
    (cd "$work/proto" && "$buf" breaking --against released.binpb) || fail "an added field was reported as breaking"
    ok "adding a field passes"
    ;;
  curl)
    build="$4" work="$5"
    rm -rf "$work/sandbox" && mkdir -p "$work"
    export MUSICGW_BUILD_DIR="$build" MUSICGW_SANDBOX_DIR="$work/sandbox"
    trap '"$src/scripts/sandbox.sh" stop || true' EXIT
    "$src/scripts/sandbox.sh" start
    set -a; source "$work/sandbox/sandbox.env"; set +a
    url="http://$MUSICGW_TARGET"
    bufcurl() { "$buf" curl --protocol grpc --http2-prior-knowledge "$@"; }

    bufcurl --list-services "$url" >"$work/services.txt"
    for service in musicgw.v1.MusicGateway grpc.health.v1.Health; do
      grep -qx "$service" "$work/services.txt" || fail "reflection does not list $service"
    done
    # Every method of every listed service resolves through reflection (this is what failed
    # for grpc.health.v1.Health while its descriptor was not served).
    bufcurl --list-methods "$url" >"$work/methods.txt"
    while read -r service; do
      grep -q "^$service/" "$work/methods.txt" || fail "no methods of $service resolved"
    done <"$work/services.txt"
    expected="$(grep -oE '^  rpc [A-Za-z]+' "$src/proto/musicgw/v1/musicgw.proto" | awk '{print "musicgw.v1.MusicGateway/" $2}' | sort)"
    [[ "$(grep '^musicgw.v1.MusicGateway/' "$work/methods.txt" | sort)" == "$expected" ]] ||
      fail "the methods listed differ from proto/musicgw/v1/musicgw.proto: $(cat "$work/methods.txt")"
    grep -qx 'grpc.health.v1.Health/Check' "$work/methods.txt" || fail "Health/Check not listed"
    ok "reflection lists $(wc -l <"$work/services.txt") services and $(wc -l <"$work/methods.txt") methods"

    bufcurl "$url/grpc.health.v1.Health/Check" >"$work/health.json"
    grep -q '"status": "SERVING"' "$work/health.json" || fail "Health/Check: $(cat "$work/health.json")"
    ok "grpc.health.v1.Health/Check: SERVING"

    auth=(-H "authorization: Bearer $MUSICGW_API_KEY")
    request_id=$(python3 -c 'import uuid; print(uuid.uuid4())')
    bufcurl "${auth[@]}" -d "{\"request_id\": \"$request_id\", \"provider\": \"PROVIDER_SOUNDPIECE\",
      \"sample\": {\"prompt\": \"a drum loop\", \"duration_seconds\": 4}}" \
      "$url/musicgw.v1.MusicGateway/Generate" >"$work/generate.json"
    name=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["name"])' "$work/generate.json")
    bufcurl "${auth[@]}" -d "{\"name\": \"$name\"}" "$url/musicgw.v1.MusicGateway/GetOperation" >"$work/get.json"
    python3 -c 'import json,sys; op=json.load(open(sys.argv[1])); assert op["name"]==sys.argv[2] and op["task"]=="TASK_KIND_SAMPLE", op' \
      "$work/get.json" "$name" || fail "GetOperation returned $(cat "$work/get.json")"
    ok "Generate and GetOperation by reflection: $name"
    rc=0
    bufcurl "${auth[@]}" -d '{"name": "operations/00000000000000000000000000"}' \
      "$url/musicgw.v1.MusicGateway/GetOperation" >"$work/notfound.json" 2>&1 || rc=$?
    [[ $rc -ne 0 ]] && grep -q not_found "$work/notfound.json" || fail "an unknown operation: $(cat "$work/notfound.json")"
    ok "GetOperation of an unknown operation: not_found"
    ;;
  *) echo "unknown mode $mode" >&2; exit 2 ;;
esac
