#!/usr/bin/env bash
# Regenerates musicgwv1/ (committed, so `go get` and offline builds need no protoc) from
# proto/musicgw/v1/musicgw.proto with protoc-gen-go (built from Debian's
# golang-google-protobuf-dev) and protoc-gen-go-grpc (Debian's protoc-gen-go-grpc).
#   generate.sh [OUT_DIR]    default: this directory; tests generate elsewhere and compare.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$(mkdir -p "${1:-$here}" && cd "${1:-$here}" && pwd)"
tools="$(mktemp -d)"
trap 'rm -rf "$tools"' EXIT
GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS='' GOCACHE="${GOCACHE:-$tools/cache}" \
  go build -o "$tools/protoc-gen-go" google.golang.org/protobuf/cmd/protoc-gen-go
grpc_plugin="$(command -v protoc-gen-go-grpc || echo /usr/bin/protoc-gen-go-grpc)"
# The proto's go_package names no module; M maps the file into this module.
map="Mmusicgw/v1/musicgw.proto=musicgw.dev/go/musicgwv1;musicgwv1"
protoc -I"$here/../../proto" --plugin=protoc-gen-go="$tools/protoc-gen-go" \
  --plugin=protoc-gen-go-grpc="$grpc_plugin" \
  --go_out="$out" --go_opt="$map,module=musicgw.dev/go" \
  --go-grpc_out="$out" --go-grpc_opt="$map,module=musicgw.dev/go" musicgw/v1/musicgw.proto
