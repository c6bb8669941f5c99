#!/usr/bin/env bash
# Builds the descriptor set Envoy's gRPC-JSON transcoder loads: musicgw.proto with the REST
# mapping of http_rules.yaml, plus every import and google.rpc's error details (so transcoded
# errors print their details).
#   build_descriptor.sh OUT.pb [PYTHON]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$here/../.."
out="$1"
python="${2:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/musicgw/v1"
"$python" "$here/annotate_proto.py" "$here/http_rules.yaml" \
  "$repo/proto/musicgw/v1/musicgw.proto" "$work/musicgw/v1/musicgw.proto"
# The annotated copy comes first on the include path; google/api from deploy/envoy/proto.
protoc -I"$work" -I"$here/proto" -I"$repo/proto" --include_imports --include_source_info \
  --descriptor_set_out="$out" musicgw/v1/musicgw.proto google/rpc/error_details.proto
