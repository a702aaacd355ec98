#!/usr/bin/env bash
# Lints the unit files with systemd-analyze (no running systemd needed) and
# holds the service's exposure score under a threshold. systemd-analyze
# verify exits 0 on unknown keys and bad values and only prints them, so
# any output at all fails the lint.
#
# verify insists that ExecStart's binary exists on this host, so the units
# are checked from a copy whose /usr/bin/mcpd points at an existing binary.
# Without systemd-analyze the lint is skipped, unless MCPD_REQUIRE_SYSTEMD=1
# (CI sets it after installing the systemd package).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
max_exposure=${MAX_EXPOSURE:-2.0}

if ! command -v systemd-analyze >/dev/null 2>&1; then
  if [ "${MCPD_REQUIRE_SYSTEMD:-}" = 1 ]; then
    echo "verify-units: systemd-analyze not found (Debian package systemd)" >&2
    exit 1
  fi
  echo "verify-units: systemd-analyze not found; unit lint skipped"
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
stand_in=$(command -v true)
for unit in mcpd.service mcpd.socket; do
  sed "s#/usr/bin/mcpd#$stand_in#g" "$here/$unit" >"$tmp/$unit"
done

fail=0
for unit in mcpd.service mcpd.socket; do
  if ! out=$(cd "$tmp" && systemd-analyze verify --man=no "$unit" 2>&1) || [ -n "$out" ]; then
    echo "verify-units: $unit:" >&2
    echo "$out" >&2
    fail=1
  fi
done

# --threshold takes ten times the score shown (2.0 -> 20).
threshold=$(awk -v s="$max_exposure" 'BEGIN { printf "%d", s * 10 }')
if ! report=$(cd "$tmp" && systemd-analyze security --offline=true --threshold="$threshold" mcpd.service 2>&1); then
  echo "$report" | grep -E '✗|Overall' >&2 || echo "$report" >&2
  echo "verify-units: mcpd.service exposure above $max_exposure" >&2
  fail=1
fi
[ "$fail" = 0 ] || exit 1
echo "verify-units: mcpd.service, mcpd.socket ok; $(echo "$report" | grep -o 'Overall exposure level.*' | sed 's/ [^ ]*$//')"
