#!/usr/bin/env bash
# Installs, through apt-get, what the cross builds, the qemu tests and the
# packages need and this machine lacks. Idempotent: with everything present
# it installs nothing and needs no network.
# Usage: cross/toolchain.sh TARGET... [--deb]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/targets.sh"

want=()
for arg in "$@"; do
	case "$arg" in
	--deb)
		# dpkg-deb builds the packages; lintian checks them; binutils' readelf
		# reads the NEEDED libraries and symbol versions for Depends.
		command -v lintian >/dev/null || want+=(lintian)
		command -v readelf >/dev/null || want+=(binutils)
		;;
	*)
		target_env "$arg"
		command -v "$CC" >/dev/null || want+=($(echo "$APT_PKGS" | tr ' ' '\n' | grep -v qemu | grep -- '^gcc'))
		command -v "$CXX" >/dev/null || want+=($(echo "$APT_PKGS" | tr ' ' '\n' | grep -- 'g++'))
		if [ -n "$QEMU" ]; then
			command -v "$QEMU" >/dev/null || want+=(qemu-user-static)
		fi
		;;
	esac
done
[ ${#want[@]} -eq 0 ] && exit 0
mapfile -t want < <(printf '%s\n' "${want[@]}" | sort -u)
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
echo "== apt-get install ${want[*]}"
"${sudo_cmd[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq -o DPkg::Lock::Timeout=600 "${want[@]}"
