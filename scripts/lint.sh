#!/usr/bin/env bash
# lint.sh format          : every C++ file is clang-format clean (Google style, .clang-format)
# lint.sh tidy BUILD_DIR  : clang-tidy (.clang-tidy) over every project source in the build
set -euo pipefail
cd "$(dirname "$0")/.."
sources() { git ls-files -co --exclude-standard -- '*.cc' '*.h' | grep -vE '^(build|third_party)/' ; }
case "${1:-}" in
  format)
    bad=$(sources | xargs clang-format --dry-run -Werror 2>&1 | grep -oE '^[^:]+\.(cc|h)' | sort -u || true)
    if [[ -n "$bad" ]]; then echo "clang-format would change:"; echo "$bad"; exit 1; fi
    echo "clang-format: clean"
    ;;
  tidy)
    build=${2:?build dir with compile_commands.json}
    files=$(sources | grep -E '\.cc$' | sed "s|^|$PWD/|")
    run-clang-tidy -quiet -p "$build" -j "${JOBS:-2}" $files >/tmp/musicgw-tidy.log 2>&1 || {
      grep -E "warning:|error:" /tmp/musicgw-tidy.log | sort -u | head -50; exit 1; }
    echo "clang-tidy: clean"
    ;;
  *) echo "usage: lint.sh format | tidy BUILD_DIR" >&2; exit 2 ;;
esac
