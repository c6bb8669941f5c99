#!/usr/bin/env bash
# End-to-end test of musicgw-cli (installed from the Python package) against the sandbox:
# generate -> watch -> download -> verify with --json output parsed, a watch through a proxy
# that cuts the connection, a download resumed from a partial file, and the exit codes.
#   MUSICGW_TARGET=... MUSICGW_API_KEY=... cli_e2e.sh CLI PYTHON --out-dir DIR --flaky-target HOST:PORT
set -euo pipefail
cli="$1" py="$2"; shift 2
out="" flaky=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out-dir) out="$2"; shift 2 ;;
    --flaky-target) flaky="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
fail() { echo "FAILED: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }
# jq-like access with the package's own Python: json_get FILE EXPR (EXPR over `d`, the last line).
json_get() { "$py" -c 'import json,sys; d=json.loads(open(sys.argv[1]).read().splitlines()[-1]); print(eval(sys.argv[2]))' "$1" "$2"; }

# generate -> name
"$cli" --json generate sample --prompt "dusty vinyl drum loop" --duration 6 --provider soundpiece >"$out/gen.json"
name=$(json_get "$out/gen.json" 'd["name"]')
[[ "$name" == operations/* ]] || fail "generate printed no operation name"
ok "generate -> $name ($(json_get "$out/gen.json" 'd["state"]'))"

# watch -> JSON lines, the last one done and SUCCEEDED
"$cli" --json watch "$name" >"$out/watch.json" || fail "watch exited $?"
[[ $(json_get "$out/watch.json" 'd["event"]["operation"]["state"]') == OPERATION_STATE_SUCCEEDED ]] ||
  fail "watch did not end SUCCEEDED"
ok "watch: $(wc -l <"$out/watch.json") events, ended SUCCEEDED"

# download -> file, verified, and its sha256 is the file's
"$cli" --json download "$name" -o "$out/audio/" >"$out/download.json"
path=$(json_get "$out/download.json" 'd["download"]["path"]')
[[ $(json_get "$out/download.json" 'd["download"]["verified"]') == True ]] || fail "download not verified"
[[ "$(sha256sum "$path" | cut -d' ' -f1)" == "$(json_get "$out/download.json" 'd["download"]["sha256"]')" ]] ||
  fail "the reported sha256 is not the file's"
ok "download: $path, $(stat -c %s "$path") bytes, sha256 verified"

# download resumed from a partial file
asset=$(json_get "$out/download.json" 'd["download"]["asset"]')
full_sha=$(sha256sum "$path" | cut -d' ' -f1)
half=$(( $(stat -c %s "$path") / 2 ))
truncate -s "$half" "$path"
"$cli" --json download "$asset" -o "$path" >"$out/resume.json"
[[ $(json_get "$out/resume.json" 'd["download"]["started_at"]') == "$half" ]] || fail "download did not resume at $half"
[[ $(json_get "$out/resume.json" 'd["download"]["verified"]') == True ]] || fail "resumed download not verified"
[[ "$(sha256sum "$path" | cut -d' ' -f1)" == "$full_sha" ]] || fail "resumed file differs"
ok "download resumed at byte $half and verified"

# generate --watch through a proxy that cuts connections: the CLI reconnects by itself
"$cli" --json --target "$flaky" --plaintext generate parametric --genre House --duration 30 \
  --provider loudly --watch >"$out/flaky.json" || fail "generate --watch through the proxy exited $?"
grep -q '"reconnect"' "$out/flaky.json" || fail "the watch was never cut and resumed"
[[ $(json_get "$out/flaky.json" 'd["event"]["operation"]["state"]') == OPERATION_STATE_SUCCEEDED ]] ||
  fail "the watch through the proxy did not end SUCCEEDED"
ok "watch through the proxy: $(grep -c '"reconnect"' "$out/flaky.json") reconnection(s), SUCCEEDED"

# list, quota, providers parse as JSON
"$cli" --json list --limit 5 >"$out/list.json"
[[ $(json_get "$out/list.json" 'len(d["operations"]) >= 2') == True ]] || fail "list shows fewer than 2 operations"
"$cli" --json quota >"$out/quota.json"
[[ $(json_get "$out/quota.json" 'len(d["provider_quotas"]) > 0') == True ]] || fail "quota is empty"
"$cli" --json providers >"$out/providers.json"
[[ $(json_get "$out/providers.json" 'sorted(p["provider"] for p in d["providers"])') == "['PROVIDER_LOUDLY', 'PROVIDER_SOUNDPIECE']" ]] ||
  fail "providers does not list both providers"
ok "list, quota and providers"

# exit codes, with the error as JSON
expect_exit() {  # code description args...
  local want=$1 what=$2; shift 2
  local rc=0
  "$cli" --json "$@" >"$out/err.json" 2>/dev/null || rc=$?
  [[ $rc -eq $want ]] || fail "$what: exit $rc, expected $want"
}
expect_exit 3 "invalid argument" generate sample --prompt x --duration 999
[[ $(json_get "$out/err.json" 'list(d["error"]["field_violations"])') == "['sample.duration_seconds']" ]] ||
  fail "the invalid-argument error does not name sample.duration_seconds"
expect_exit 5 "unknown operation" get operations/00000000000000000000000000
expect_exit 4 "bad API key" --api-key mgw_wrong providers
[[ $(json_get "$out/err.json" 'd["error"]["code"]') == UNAUTHENTICATED ]] || fail "bad key is not UNAUTHENTICATED"
expect_exit 3 "cancel a done operation" cancel "$name"
rc=0; env -u MUSICGW_API_KEY MUSICGW_CONFIG=/nonexistent "$cli" providers 2>/dev/null || rc=$?
[[ $rc -eq 2 ]] || fail "no API key: exit $rc, expected 2"
ok "exit codes 2, 3, 4, 5 with JSON errors"
echo "musicgw-cli: all checks passed"
