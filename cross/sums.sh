#!/usr/bin/env bash
# Writes DIR/SHA256SUMS for the files matching the globs (relative to DIR),
# sorted by name so the file is the same for the same bytes.
# Usage: cross/sums.sh DIR GLOB...
set -euo pipefail
dir=$1
shift
cd "$dir"
shopt -s nullglob
files=()
for g in "$@"; do
	for f in $g; do files+=("$f"); done
done
[ ${#files[@]} -gt 0 ] || { echo "sums: nothing matches $* in $dir" >&2; exit 1; }
printf '%s\n' "${files[@]}" | LC_ALL=C sort -u | xargs sha256sum >SHA256SUMS
echo "sums: $dir/SHA256SUMS"
cat SHA256SUMS
