#!/usr/bin/env bash
# Builds the Go demo offline, in GOPATH mode against Debian's Go packages (golang-go,
# golang-google-grpc-dev, golang-google-protobuf-dev, protoc-gen-go-grpc): protoc-gen-go is
# built from /usr/share/gocode, the musicgw.v1 code is generated into $1/gopath (default:
# build/), and the binary lands in $1/bin/musicgw-go-demo. Nothing is downloaded.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$(mkdir -p "${1:-$here/build}" && cd "${1:-$here/build}" && pwd)"
export GO111MODULE=off GOFLAGS='' GOPROXY=off
export GOPATH="$out/gopath:/usr/share/gocode"
# Go's default cache (~/.cache/go-build) when there is a home, else one beside the output.
if [[ -z "${GOCACHE:-}" && ( -z "${HOME:-}" || ! -w "${HOME:-/nonexistent}" ) ]]; then
  export GOCACHE="$out/gocache"
fi
mkdir -p "$out/bin" "$out/gopath/src/musicgw"
# grpc-go marshals through github.com/golang/protobuf; its 1.3 package crashes on the APIv2
# messages protoc-gen-go writes.
if [[ -f /usr/share/gocode/src/github.com/golang/protobuf/proto/table_marshal.go ]]; then
  echo "build.sh: github.com/golang/protobuf is 1.3; install golang-github-golang-protobuf-1-5-dev" >&2
  exit 1
fi

[[ -x "$out/bin/protoc-gen-go" ]] ||
  go build -o "$out/bin/protoc-gen-go" google.golang.org/protobuf/cmd/protoc-gen-go
grpc_plugin="$(command -v protoc-gen-go-grpc || echo /usr/bin/protoc-gen-go-grpc)"

# google/rpc maps to Debian's genproto packages through the go_package options in proto/.
rm -rf "$out/gopath/src/musicgw/v1" "$out/gopath/src/musicgw/client" "$out/gopath/src/musicgw/cmd"
protoc -I"$here/../../proto" --plugin=protoc-gen-go="$out/bin/protoc-gen-go" \
  --plugin=protoc-gen-go-grpc="$grpc_plugin" \
  --go_out="$out/gopath/src" --go-grpc_out="$out/gopath/src" musicgw/v1/musicgw.proto
cp -r "$here/client" "$here/cmd" "$out/gopath/src/musicgw/"
go build -o "$out/bin/musicgw-go-demo" musicgw/cmd/musicgw-go-demo
go vet musicgw/client musicgw/cmd/musicgw-go-demo
