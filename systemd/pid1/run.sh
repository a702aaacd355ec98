#!/usr/bin/env bash
# make test-systemd: mcpd's .deb under real systemd as PID 1.
#
# Boots Debian 12 (minbase + systemd) in a systemd-nspawn container, installs
# the given amd64 .deb with dpkg -i there, and runs systemd/pid1/checks.sh
# inside as a oneshot unit; the results come back through a bind mount
# and are printed here. The debootstrapped rootfs is cached in $PID1_DIR
# (git-ignored) and booted with --volatile=overlay: every run starts from
# the same pristine tree and writes nothing back into it, so a rerun skips
# the 1-3 min debootstrap. --private-network keeps the container's
# 127.0.0.1:7700/7701 off the host's.
#
# Needs root (sudo is used otherwise), systemd-nspawn (systemd-container)
# and debootstrap; .ci/run installs them.
# Usage: systemd/pid1/run.sh PATH/mcpd_VERSION_amd64.deb
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
. cross/targets.sh

deb=$(realpath "$1")
work=$(realpath -m "${PID1_DIR:-bin/systemd-test}")
suite=bookworm
mirror=${DEBOOTSTRAP_MIRROR:-http://deb.debian.org/debian}
# adduser and libstdc++6 are the package's Depends that minbase lacks
# (dpkg -i does not fetch dependencies); dbus lets systemctl and
# systemd-analyze talk to PID 1 as on a real system.
include=systemd,systemd-sysv,dbus,adduser,libstdc++6
rootfs=$work/rootfs-$suite
timeout_s=${PID1_TIMEOUT:-900}

as_root=()
[ "$(id -u)" -eq 0 ] || as_root=(sudo)
for tool in systemd-nspawn debootstrap; do
	command -v "$tool" >/dev/null || {
		echo "test-systemd: $tool not found (apt-get install systemd-container debootstrap)" >&2
		exit 1
	}
done
mkdir -p "$work"
start=$(date +%s)

# The rootfs, cached: the stamp records how it was made; a different recipe
# or a half-made tree (no stamp) makes a new one, built aside and renamed
# into place so an interrupted debootstrap never passes for a cache.
recipe="debootstrap --variant=minbase --include=$include $suite"
if [ "$(cat "$rootfs.stamp" 2>/dev/null)" != "$recipe" ]; then
	echo "== test-systemd: $recipe (cached in $rootfs)"
	"${as_root[@]}" rm -rf "$rootfs" "$rootfs.new" "$rootfs.stamp"
	"${as_root[@]}" debootstrap --variant=minbase --include="$include" "$suite" "$rootfs.new" "$mirror" >"$work/debootstrap.log" 2>&1 || {
		tail -20 "$work/debootstrap.log" >&2
		exit 1
	}
	"${as_root[@]}" mv "$rootfs.new" "$rootfs"
	echo "$recipe" >"$rootfs.stamp"
	echo "== test-systemd: rootfs made in $(($(date +%s) - start)) s"
else
	echo "== test-systemd: cached rootfs $rootfs"
fi

# What goes into the container, read-only at /mcpd-test: the package, a
# newer version of it for the upgrade check, a fault build of mcpd (its
# engine hangs or slows down on marked prompts: cmd/mcpd/fault_on.go), the
# probe, and the checks.
share=$work/share
out=$work/out
"${as_root[@]}" rm -rf "$share" "$out" # the container writes $out as root
mkdir -p "$share" "$out"
built=$(date +%s)
version=$(dpkg-deb -f "$deb" Version)
cp "$deb" "$share/mcpd.deb"
upgrade=$version+pid1upgrade
pkg=$(mktemp -d)
trap 'rm -rf "$pkg"' EXIT
dpkg-deb -R "$deb" "$pkg/mcpd"
sed -i "s/^Version: .*/Version: $upgrade/" "$pkg/mcpd/DEBIAN/control"
dpkg-deb --root-owner-group -Zgzip --build "$pkg/mcpd" "$share/mcpd-upgrade.deb" >/dev/null
# The same flags as the package's build (cross/build.sh), so llama.cpp
# comes from Go's build cache.
(
	target_env amd64
	export_target_env
	go build -tags mcpdfault -trimpath -buildvcs=false \
		-ldflags "-s -w -X main.version=$version-fault" -o "$share/mcpd-fault" ./cmd/mcpd
)
CGO_ENABLED=0 go build -trimpath -o "$share/probe" ./systemd/pid1/probe
install -m 0755 "$here/checks.sh" "$share/checks.sh"
printf 'VERSION=%q\nUPGRADE_VERSION=%q\n' "$version" "$upgrade" >"$share/env"
echo "== test-systemd: upgrade package, fault build and probe in $(($(date +%s) - built)) s"

# The unit that runs the checks once the container is up, then powers off.
unit=$(
	cat <<'UNIT'
[Unit]
Description=mcpd PID-1 checks (make test-systemd)
After=multi-user.target
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=oneshot
ExecStart=/mcpd-test/checks.sh
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
UNIT
)
"${as_root[@]}" sh -c "cat >'$rootfs/etc/systemd/system/mcpd-pid1.service'" <<<"$unit"
"${as_root[@]}" ln -sf /etc/systemd/system/mcpd-pid1.service "$rootfs/etc/systemd/system/multi-user.target.wants/mcpd-pid1.service"

echo "== test-systemd: booting $suite with systemd as PID 1; installing mcpd $version"
boot=$(date +%s)
touch "$out/results"
tail -n +1 -f "$out/results" &
tailer=$!
rc=0
"${as_root[@]}" timeout -k 30 "$timeout_s" systemd-nspawn -q -D "$rootfs" --boot --register=no --keep-unit \
	--volatile=overlay --private-network --console=passive \
	--bind-ro="$share:/mcpd-test" --bind="$out:/mcpd-out" </dev/null >"$work/console.log" 2>&1 || rc=$?
sleep 0.5
kill "$tailer" 2>/dev/null || true
wait "$tailer" 2>/dev/null || true

pass=$(grep -c '^PASS' "$out/results" || true)
skip=$(grep -c '^SKIP' "$out/results" || true)
fail=$(grep -c '^FAIL' "$out/results" || true)
echo "== test-systemd: $pass passed, $fail failed, $skip skipped (container $(($(date +%s) - boot)) s, all $(($(date +%s) - start)) s)"
if [ "$rc" -ne 0 ]; then
	echo "test-systemd: systemd-nspawn exited $rc (124: the checks took over ${timeout_s}s); console: $work/console.log" >&2
	tail -30 "$work/console.log" >&2
	exit 1
fi
if ! grep -q '^END' "$out/results"; then
	echo "test-systemd: the checks did not finish; console: $work/console.log, journal: $out/journal.txt" >&2
	tail -30 "$work/console.log" >&2
	exit 1
fi
if [ "$fail" -ne 0 ]; then
	echo "test-systemd: failures above; the container's journal is in $out/journal.txt" >&2
	exit 1
fi
