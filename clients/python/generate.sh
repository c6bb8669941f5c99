#!/usr/bin/env bash
# Generates the Python modules for musicgw.v1 and google.rpc from proto/ into $1 (default: gen/)
# with protoc and grpc_python_plugin (Debian: protobuf-compiler, protobuf-compiler-grpc).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/gen}"
plugin="$(command -v grpc_python_plugin || echo /usr/bin/grpc_python_plugin)"
mkdir -p "$out"
protoc -I"$here/../../proto" --python_out="$out" --grpc_out="$out" \
  --plugin=protoc-gen-grpc="$plugin" \
  musicgw/v1/musicgw.proto google/rpc/status.proto google/rpc/error_details.proto
