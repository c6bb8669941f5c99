#!/usr/bin/env bash
# The test command: installs what is missing, builds musicgw twice (Release, and ASan+UBSan)
# and runs the whole CTest suite in each. Lint checks (clang-format, clang-tidy, promtool,
# kubectl) run once, in the Release tree. Then the fuzz targets (fuzz/) are built by clang in a
# third, small tree and each runs MUSICGW_FUZZ_SECONDS (30) under ASan+UBSan.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

jobs="${JOBS:-2}"
# Let ccache share objects between clones and build trees (CI builds a fresh clone).
export CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=1
build_root="${MUSICGW_BUILD_ROOT:-build}"

configure_and_build() {
  local dir=$1; shift
  cmake -S . -B "$dir" -G Ninja "$@" >/dev/null
  cmake --build "$dir" -j"$jobs"
}

echo "== Release build"
configure_and_build "$build_root/release" -DCMAKE_BUILD_TYPE=Release
echo "== Release tests"
ctest --test-dir "$build_root/release" --output-on-failure -j"$jobs" --timeout 600

echo "== ASan+UBSan build"
configure_and_build "$build_root/asan" -DCMAKE_BUILD_TYPE=Debug -DMUSICGW_SANITIZE=ON \
  -DMUSICGW_BUILD_BENCH=OFF
echo "== ASan+UBSan tests"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir "$build_root/asan" --output-on-failure -j"$jobs" --timeout 900 -LE lint

echo "== Fuzz build (clang: libFuzzer, ASan+UBSan; only the parsers' libraries)"
CC=clang CXX=clang++ cmake -S . -B "$build_root/fuzz" -G Ninja -DCMAKE_BUILD_TYPE=Debug \
  -DMUSICGW_FUZZ=ON -DMUSICGW_FUZZ_SECONDS="${MUSICGW_FUZZ_SECONDS:-30}" >/dev/null
cmake --build "$build_root/fuzz" -j"$jobs"
echo "== Fuzz runs"
ctest --test-dir "$build_root/fuzz" --output-on-failure -j"$jobs" -L fuzz
