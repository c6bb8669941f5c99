#!/usr/bin/env bash
# Installs what musicgw needs from Debian 12's packages, only when something is missing.
# Nothing else is downloaded, at install, configure or build time.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config ccache git
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  libcurl4-openssl-dev prometheus-cpp-dev libsqlite3-dev libpq-dev postgresql libcpp-httplib-dev nlohmann-json3-dev
  libflac++-dev libflac-dev libmp3lame-dev libssl-dev
  libgtest-dev libgmock-dev libbenchmark-dev clang-format clang-tidy
  # The fuzz targets (fuzz/): clang with libFuzzer; -fsanitize=fuzzer links the runtime from
  # libclang-rt-14-dev, libfuzzer-14-dev carries the standalone library and its headers.
  clang libclang-rt-14-dev libfuzzer-14-dev
  sox ffmpeg prometheus curl python3 python3-yaml
  # The Python SDK and musicgw-cli (the run command's demo), installed offline into a venv.
  python3-grpcio python3-protobuf python3-venv python3-pip python3-setuptools python3-wheel
)
if [[ "${MUSICGW_CLIENT_DEPS:-1}" == 1 ]]; then
  # Example clients in other languages and the deployment checks.
  # grpc-go marshals through github.com/golang/protobuf: its 1.3 package crashes on APIv2
  # messages, so the 1.5 one (which grpc-go's dependency accepts too) is asked for by name.
  packages+=(nodejs golang-go golang-google-grpc-dev
             golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev protoc-gen-go-grpc)
  # Debian's kubectl; any kubectl already on the PATH will do (another package may own the file).
  command -v kubectl >/dev/null 2>&1 || packages+=(kubernetes-client)
  # Another nodejs build may bundle npm (and conflict with Debian's npm package).
  command -v npm >/dev/null 2>&1 || packages+=(npm)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "install-deps: installing ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# npm packages go into npm's cache, from the lockfiles (exact versions and integrity hashes):
# buf for the contract checks (proto/) and the Node SDK's dependencies (clients/node). The tests
# then install them with `npm ci --offline` and never reach the network.
if [[ "${MUSICGW_CLIENT_DEPS:-1}" == 1 ]]; then
  cd "$(dirname "$0")/.."
  for dir in proto clients/node; do
    [[ -f "$dir/package-lock.json" ]] || continue
    tmp="$(mktemp -d)"
    cp "$dir/package.json" "$dir/package-lock.json" "$tmp/"
    if ! (cd "$tmp" && npm ci --offline --ignore-scripts --no-audit --no-fund --loglevel=error \
            >/dev/null 2>&1); then
      echo "install-deps: npm packages of $dir into the npm cache"
      (cd "$tmp" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)
    fi
    rm -rf "$tmp"
  done
  # A fresh project installing the Node SDK's packed tarball resolves its dependencies by name,
  # which needs their registry metadata in the cache too (npm ci fetches only tarballs).
  runtime_deps=$(node -e 'const p = require("./clients/node/package.json");
    console.log(Object.entries(p.dependencies).map(([n, v]) => `${n}@${v}`).join(" "))')
  tmp="$(mktemp -d)"
  echo '{"name": "musicgw-deps", "version": "0.0.0", "private": true}' >"$tmp/package.json"
  # shellcheck disable=SC2086
  if ! (cd "$tmp" && npm install --offline --ignore-scripts --no-audit --no-fund --loglevel=error \
          $runtime_deps >/dev/null 2>&1); then
    # shellcheck disable=SC2086
    (cd "$tmp" && npm install --ignore-scripts --no-audit --no-fund --loglevel=error $runtime_deps >/dev/null)
  fi
  rm -rf "$tmp"
fi
