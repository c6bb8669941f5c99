#!/usr/bin/env bash
# Installs what musicgw needs from Debian 12's packages, only when something is missing.
# Nothing else is downloaded, at install, configure or build time.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config ccache git
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  libcurl4-openssl-dev prometheus-cpp-dev libsqlite3-dev libcpp-httplib-dev nlohmann-json3-dev
  libflac++-dev libflac-dev libmp3lame-dev libssl-dev
  libgtest-dev libgmock-dev libbenchmark-dev clang-format clang-tidy
  # The fuzz targets (fuzz/): clang with libFuzzer; -fsanitize=fuzzer links the runtime from
  # libclang-rt-14-dev, libfuzzer-14-dev carries the standalone library and its headers.
  clang libclang-rt-14-dev libfuzzer-14-dev
  sox ffmpeg prometheus curl python3
)
if [[ "${MUSICGW_CLIENT_DEPS:-1}" == 1 ]]; then
  # Example clients in other languages and the deployment checks.
  # grpc-go marshals through github.com/golang/protobuf: its 1.3 package crashes on APIv2
  # messages, so the 1.5 one (which grpc-go's dependency accepts too) is asked for by name.
  packages+=(python3-grpcio python3-protobuf nodejs golang-go golang-google-grpc-dev
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
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
sudo_cmd=()
[[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
