#!/usr/bin/env bash
# Fills DIR/vendor from Debian's Go packages (/usr/share/gocode) for every module go.mod
# requires, with a vendor/modules.txt matching go.mod, so the module builds in module mode with
# -mod=vendor and no network: vendor-debian.sh DIR (a copy of this module).
set -euo pipefail
dir="$(cd "$1" && pwd)"
src=/usr/share/gocode/src
rm -rf "$dir/vendor"
mkdir -p "$dir/vendor"
# "module version" for every requirement, direct ones first as go.mod lists them.
requirements=$(awk '/^require \($/ {inside=1; next} inside && /^\)/ {inside=0} inside && NF >= 2 {print $1, $2}' "$dir/go.mod")
: >"$dir/vendor/modules.txt"
while read -r module version; do
  [[ -d "$src/$module" ]] || { echo "vendor-debian: $module is not in $src" >&2; exit 1; }
  mkdir -p "$dir/vendor/$(dirname "$module")"
  # A link, not a copy: the packages are read in place (genproto alone is large).
  ln -s "$src/$module" "$dir/vendor/$module"
  # The module's own go version sets the language version its code compiles with.
  go_version=$(awk '$1 == "go" {print $2; exit}' "$src/$module/go.mod" 2>/dev/null || true)
  { echo "# $module $version"; echo "## explicit${go_version:+; go $go_version}"
    (cd "$dir/vendor" && find -L "$module" -name '*.go' ! -name '*_test.go' ! -path '*/testdata/*' \
       -printf '%h\n' | sort -u)
  } >>"$dir/vendor/modules.txt"
done <<<"$requirements"
