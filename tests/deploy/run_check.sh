#!/usr/bin/env bash
# Runs one of the offline deployment checks with a python3 that has PyYAML and protobuf
# (Debian's). A missing tool is a failure, never a skip: scripts/install-deps.sh installs them.
#   run_check.sh manifests SOURCE_DIR [MUSICGW_BINARY]
#   run_check.sh envoy SOURCE_DIR WORK_DIR
#   run_check.sh dockerfile SOURCE_DIR [--gateway-binaries ... --sandbox-binaries ...]
set -euo pipefail
what="$1" src="$2"
py=""
for candidate in /usr/bin/python3 "$(command -v python3 || true)"; do
  if [[ -x "$candidate" ]] && "$candidate" -c 'import yaml, google.protobuf' 2>/dev/null; then
    py="$candidate"; break
  fi
done
[[ -n "$py" ]] || { echo "FAIL: no python3 with yaml and protobuf (python3-yaml python3-protobuf)" >&2; exit 1; }
here="$(cd "$(dirname "$0")" && pwd)"
case "$what" in
  manifests)
    command -v kubectl >/dev/null || { echo "FAIL: no kubectl" >&2; exit 1; }
    extra=()
    if [[ -n "${3:-}" ]]; then
      [[ -x "$3" ]] || { echo "FAIL: $3 is not built" >&2; exit 1; }
      extra=(--musicgw "$3")
    fi
    exec "$py" "$here/check_manifests.py" --kubectl kubectl --deploy-dir "$src/deploy/kubernetes" \
      --self-test "${extra[@]}"
    ;;
  envoy)
    command -v protoc >/dev/null || { echo "FAIL: no protoc" >&2; exit 1; }
    rm -rf "$3"
    exec "$py" "$here/check_envoy.py" --envoy-dir "$src/deploy/envoy" --work "$3"
    ;;
  dockerfile)
    # Optional: "--gateway-binaries A B --sandbox-binaries C D" of the built tree.
    exec "$py" "$here/check_dockerfile.py" --source-dir "$src" "${@:3}"
    ;;
  *) echo "unknown check $what" >&2; exit 2 ;;
esac
